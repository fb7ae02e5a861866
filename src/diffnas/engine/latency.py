"""Latency tables: every candidate op of a search space timed at every shape its supernet uses,
and the whole-network latency a table predicts for a genotype (``diffnas latency``).

The shapes come from the supernet of a search config: one forward of a batch of the config's
image size records, with forward pre-hooks on every mixed edge
(:meth:`~diffnas.spaces.base.Supernet.search_cells`, ``cell.edges``), the input its ops see
(channels after PC-DARTS' partial-channel split, height, width) and its stride. Each distinct
``(op, C_in, H, W, stride, C_out)`` is then timed alone, built as a fixed network builds it
(:func:`fixed_op`), in eval mode (random weights; latency does not depend on them), on a random
batch of ``batch`` images: with PyTorch (contiguous memory format, as ``diffnas export``
measures the fixed network) or exported to ONNX and run by an onnxruntime
``InferenceSession``. Timing reuses :func:`diffnas.engine.export._median_latency`; every entry
is timed in ``rounds`` interleaved rounds (warm-up excluded), so load that comes and goes on a
shared machine falls on all entries alike, and the table keeps the median and the
interquartile range of all runs. ``none`` is never timed: the fixed networks drop a ``none``
edge (NAS-Bench-201) or never derive one (DARTS), so its latency is 0 by definition.

To predict a deployable network, make the table with a config whose supernet has that
network's shapes (its channels and cells; no PC-DARTS partial channels, whose ops see C/K
channels): a search uses any table whose ops and edges per kind match its own supernet.

The table works for any space whose supernet exposes its mixed edges; α is shared by the cells
of a kind, so ``edges`` lists every (kind, cell, edge) with its shape, and a latency term or a
prediction sums over the cells of each kind (:mod:`diffnas.objectives.latency`).

Fixed parts: a network's latency is more than its ops' (stem, the cells' preprocessing,
node sums and concatenations, pooling, classifier, and per-call framework overhead). They are
measured once per table (:func:`calibrate`), as the measured latency of the fixed network of
the cheapest genotype (a short call, so the least disturbed by other processes) minus that
genotype's op sum in the table; a prediction is ``fixed + Σ`` over the derived cells' ops
(monotone in every entry). An op inside a network can run slower than alone in a loop (the
other ops evict its weights and activations from the caches), which the table does not model:
the dearest genotype's network is measured too and its prediction error recorded.
:func:`check_prediction` measures other genotypes' fixed networks and reports the error, by
the medians and by the fastest runs (``min_ms``, every entry's and the network's): on a
loaded machine a call longer than a scheduler slice is preempted, so the medians of whole
networks drift apart from their ops' while the fastest runs still compare like with like.
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import SearchConfig
from ..errors import DiffnasError
from ..spaces import Genotype, Supernet, build_supernet
from .export import _median_latency, _require, export_onnx

RUNTIMES = ("torch", "onnxruntime")

#: (image channels, image size, classes) of the built-in datasets, without loading them
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "fashion-mnist": (1, 28, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
    "digits": (1, 8, 10)}


def input_shape(cfg: SearchConfig, in_channels: int | None = None, image_size: int | None = None,
                num_classes: int | None = None) -> tuple[int, int, int]:
    """``(in_channels, image_size, num_classes)`` of ``cfg``'s data (explicit values win)."""
    known = DATASET_SHAPES.get(cfg.dataset)
    if known is None and None in (in_channels, num_classes) + ((image_size or cfg.image_size),):
        raise DiffnasError(f"dataset {cfg.dataset!r} has no known image shape; pass "
                           "--in-channels, --input-size and --num-classes (built-in: "
                           f"{', '.join(DATASET_SHAPES)})")
    c, s, n = known or (0, 0, 0)
    return (in_channels or c, image_size or cfg.image_size or s, num_classes or n)


def supernet_for(cfg: SearchConfig, in_channels: int, num_classes: int,
                 image_size: int) -> Supernet:
    """The search supernet ``cfg`` builds (with its method's supernet options), on CPU."""
    from ..methods import get_method

    torch.manual_seed(cfg.seed)
    opts = get_method(cfg.method).supernet_options(cfg)
    return build_supernet(cfg.space, cfg.channels, cfg.layers, num_classes, in_channels,
                          image_size=image_size, **opts)


def record_edges(net: Supernet, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per mixed edge (kind, cell, edge order of α), the input its ops see and its stride,
    recorded by forward pre-hooks during one eval-mode forward of ``x``."""
    where: dict[int, tuple[str, int, int]] = {}
    for ci, (kind, cell) in enumerate(net.search_cells()):
        for e, edge in enumerate(cell.edges):
            where[id(edge)] = (kind, ci, e)
    seen: dict[tuple[str, int, int], dict[str, Any]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        kind, ci, e = where[id(module)]
        _, c, h, w = args[0].shape
        seen[(kind, ci, e)] = {"kind": kind, "cell": ci, "edge": e, "stride": module.stride,
                               "c_in": int(c) // module.partial_channels, "h": int(h),
                               "w": int(w)}

    handles = [m.register_forward_pre_hook(hook) for m in net.mixed_edges()]
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        for hd in handles:
            hd.remove()
    missing = sorted(set(where.values()) - set(seen))
    if missing:
        raise DiffnasError(f"{len(missing)} mixed edges of the {net.space} supernet did not run "
                           f"in a forward (first: kind {missing[0][0]}, cell {missing[0][1]}, "
                           f"edge {missing[0][2]}); cannot record their shapes")
    return [seen[k] for k in sorted(seen, key=lambda k: (k[1], k[2]))]


def entry_key(op: str, c_in: int, h: int, w: int, stride: int, c_out: int) -> str:
    """``sep_conv_3x3|16x32x32|s1|16``: one table entry."""
    return f"{op}|{c_in}x{h}x{w}|s{stride}|{c_out}"


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = None
    try:
        load = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "loadavg": load}


class _Timer:
    """Times callables on one runtime/device/thread setting (the export timing helper)."""

    def __init__(self, runtime: str, device: torch.device, threads: int, workdir: Path) -> None:
        if runtime not in RUNTIMES:
            raise DiffnasError(f"unknown latency runtime {runtime!r}; valid: "
                               f"{', '.join(RUNTIMES)}")
        if runtime == "onnxruntime" and device.type != "cpu":
            raise DiffnasError("--runtime onnxruntime measures on --device cpu only (its CPU "
                               "execution provider); use --runtime torch for CUDA")
        self.runtime, self.device, self.threads, self.workdir = runtime, device, threads, workdir
        self.ort = _require("onnxruntime") if runtime == "onnxruntime" else None
        self.n = 0

    def version(self) -> str:
        if self.ort is not None:
            return f"onnxruntime {self.ort.__version__}"
        return f"torch {torch.__version__}"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Any:
        """A no-argument callable running ``module`` on ``x`` in this runtime."""
        module = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)
        if self.ort is not None:
            self.n += 1
            path = self.workdir / f"op{self.n}.onnx"
            export_onnx(module.cpu(), x.cpu(), path)
            opts = self.ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            session = self.ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.cpu().numpy()}
            return lambda: session.run(None, feed)
        module = module.to(self.device)
        xd = x.to(self.device)
        if self.device.type == "cuda":
            def run() -> None:
                with torch.no_grad():
                    module(xd)
                torch.cuda.synchronize(self.device)
            return run

        def run_cpu() -> None:
            with torch.no_grad():
                module(xd)
        return run_cpu


def fixed_op(edge: nn.Module, name: str, op: nn.Module) -> nn.Module:
    """Op ``name`` of a mixed edge as a fixed network builds it: the edge's op factory with
    ``affine=True`` (the DARTS and NAS-Bench-201 networks do so; a DARTS search pool carries a
    BN that the fixed network's pool lacks), on the channels the edge's ops see; the edge's
    own module when it has no factory."""
    factory = getattr(edge, "_factory", None)
    if factory is None:
        return op
    torch.manual_seed(0)
    return factory(name, edge.c // edge.partial_channels, edge.stride, True)


def _quartiles(times_ms: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return q1, statistics.median(times_ms), q3


def time_callables(fns: dict[str, Any], repeats: int, warmup: int,
                   rounds: int) -> dict[str, dict[str, float]]:
    """``{name: {median_ms, iqr_ms, q1_ms, q3_ms, runs}}``: each callable timed ``repeats``
    times in all, in ``rounds`` interleaved rounds, after ``warmup`` untimed calls."""
    rounds = max(1, min(rounds, repeats))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        n = repeats // rounds + (1 if r < repeats % rounds else 0)
        for k, fn in fns.items():
            _, ts = _median_latency(fn, n, warmup if r == 0 else 1)
            times[k] += [t * 1e3 for t in ts]
    out = {}
    for k, ts in times.items():
        q1, med, q3 = _quartiles(ts) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        out[k] = {"median_ms": med, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3,
                  "min_ms": min(ts), "runs": len(ts)}
    return out


def fixed_network(cfg: SearchConfig, genotype: Genotype, in_channels: int, image_size: int,
                  num_classes: int) -> nn.Module:
    """The evaluation network of ``genotype`` at the table's config (channels, layers, input)."""
    from ..nets import build_network

    torch.manual_seed(cfg.seed)
    return build_network(genotype, imagenet=cfg.space.endswith("imagenet"),
                         channels=cfg.channels, layers=cfg.layers, num_classes=num_classes,
                         in_channels=in_channels, input_size=image_size, auxiliary=False)


def measure_network(net: nn.Module, timer: _Timer, batch: int, in_channels: int,
                    image_size: int, repeats: int, warmup: int,
                    rounds: int = 3) -> dict[str, float]:
    """Latency of a fixed network on ``timer``'s runtime, as ``diffnas export`` runs it (a
    contiguous eval-mode copy, or its exported ONNX graph in onnxruntime): median, quartiles
    and the fastest run (ms)."""
    sample = torch.randn(batch, in_channels, image_size, image_size,
                         generator=torch.Generator().manual_seed(0))
    fn = timer.prepare(net, sample)
    return time_callables({"net": fn}, repeats, warmup, rounds)["net"]


def build_table(cfg: SearchConfig, *, device: str = "cpu", runtime: str = "torch",
                threads: int | None = None, batch: int = 1, repeats: int = 30, warmup: int = 5,
                rounds: int = 3, in_channels: int | None = None, image_size: int | None = None,
                num_classes: int | None = None, fixed: bool = True,
                progress: Any = None) -> dict[str, Any]:
    """The latency table of ``cfg``'s supernet (see the module docstring); JSON-able."""
    from ..objectives.latency import FORMAT, VERSION, LatencyTable
    from .search import resolve_device

    if batch < 1 or repeats < 1 or warmup < 0:
        raise DiffnasError(f"latency needs batch >= 1, repeats >= 1 and warmup >= 0, got "
                           f"{batch}, {repeats}, {warmup}")
    dev = resolve_device(device)
    c_img, size, n_cls = input_shape(cfg, in_channels, image_size, num_classes)
    net = supernet_for(cfg, c_img, n_cls, size)
    x = torch.randn(2, c_img, size, size, generator=torch.Generator().manual_seed(0))
    edges = record_edges(net, x)
    n_threads = threads or torch.get_num_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="diffnas-latency-") as tmp:
            timer = _Timer(runtime, dev, n_threads, Path(tmp))
            fns: dict[str, Any] = {}
            modules = {id(m): m for m in net.mixed_edges()}
            cells = net.search_cells()
            for rec in edges:
                edge = cells[rec["cell"]][1].edges[rec["edge"]]
                assert id(edge) in modules
                rec["ops"] = {}
                for name, op in zip(edge.op_names, edge.ops, strict=True):
                    if name == "none":
                        rec["ops"][name] = None
                        continue
                    op = fixed_op(edge, name, op)
                    xin = torch.randn(batch, rec["c_in"], rec["h"], rec["w"],
                                      generator=torch.Generator().manual_seed(1))
                    with torch.no_grad():
                        c_out = int(copy.deepcopy(op).eval()(xin).shape[1])
                    key = entry_key(name, rec["c_in"], rec["h"], rec["w"], rec["stride"], c_out)
                    rec["ops"][name] = key
                    if key not in fns:
                        fns[key] = timer.prepare(op, xin)
            if progress:
                progress(f"timing {len(fns)} op entries ({len(edges)} edges) with "
                         f"{timer.version()}, {n_threads} threads, batch {batch}")
            stats = time_callables(fns, repeats, warmup, rounds)
            entries = {}
            for key, st in stats.items():
                op, shape, stride, c_out = key.split("|")
                c, h, w = (int(v) for v in shape.split("x"))
                entries[key] = {"op": op, "c_in": c, "h": h, "w": w, "stride": int(stride[1:]),
                                "c_out": int(c_out), **st}
            table: dict[str, Any] = {
                "format": FORMAT, "version": VERSION, "space": net.space,
                "op_names": list(net.op_names),
                "kinds": {k: len(net.edge_index[k]) for k in net.kinds},
                "config": {**{k: v for k, v in cfg.to_dict().items()
                              if k in ("method", "space", "channels", "layers", "dataset",
                                       "image_size", "seed", "method_args")},
                           "in_channels": c_img, "input_size": size, "num_classes": n_cls},
                "measure": {"device": str(dev), "runtime": runtime,
                            "runtime_version": timer.version(), "torch": torch.__version__,
                            "threads": n_threads, "batch": batch, "repeats": repeats,
                            "warmup": warmup, "rounds": rounds, "machine": _machine(),
                            "date": datetime.datetime.now(datetime.timezone.utc)
                            .isoformat(timespec="seconds")},
                "entries": entries, "edges": edges}
            if fixed:
                table["fixed"] = calibrate(LatencyTable(table, "<new table>"), net, cfg, timer,
                                           batch, (c_img, size, n_cls), repeats, warmup, rounds)
    finally:
        torch.set_num_threads(old)
    return table


def calibrate(tab: Any, net: Supernet, cfg: SearchConfig, timer: _Timer, batch: int,
              shape: tuple[int, int, int], repeats: int, warmup: int,
              rounds: int) -> dict[str, Any]:
    """The table's ``fixed`` entry: the fixed network of the cheapest genotype
    (:meth:`LatencyTable.reference_genotypes`) measured, minus its ops' sum in the table, per
    statistic (``ms``: medians, ``min_ms``: fastest runs); the dearest genotype's network is
    measured too and its prediction error recorded (``dearest_error``, ``dearest_error_min``)."""
    c_img, size, n_cls = shape
    refs = []
    for g in tab.reference_genotypes(net):
        meas = measure_network(fixed_network(cfg, g, c_img, size, n_cls), timer, batch, c_img,
                               size, repeats, warmup, rounds)
        refs.append({"genotype": g.to_dict(), "measured_ms": meas["median_ms"],
                     "measured_min_ms": meas["min_ms"], "ops_ms": tab.ops_ms(net, g),
                     "ops_min_ms": tab.ops_ms(net, g, "min_ms")})
    cheap, dear = refs
    out: dict[str, Any] = {"ms": cheap["measured_ms"] - cheap["ops_ms"],
                           "min_ms": cheap["measured_min_ms"] - cheap["ops_min_ms"],
                           "references": refs}
    for suffix, fixed_key in (("", "ms"), ("_min", "min_ms")):
        pred = out[fixed_key] + dear[f"ops{suffix}_ms"]
        out[f"dearest_error{suffix}"] = pred / dear[f"measured{suffix}_ms"] - 1
    return out


def check_prediction(table_path: str | Path, genotypes: Sequence[Genotype], *,
                     repeats: int | None = None, warmup: int | None = None) -> list[dict[str, Any]]:
    """For each genotype: the table's predicted latency, the measured latency of its fixed
    network (same runtime, device, threads and batch as the table) and the relative error."""
    from ..objectives.latency import LatencyTable

    tab = LatencyTable.load(table_path)
    cfg = tab.search_config()
    m = tab.data["measure"]
    c_img, size, n_cls = (tab.data["config"][k] for k in ("in_channels", "input_size",
                                                          "num_classes"))
    net = supernet_for(cfg, c_img, n_cls, size)
    tab.check_supernet(net)
    from .search import resolve_device

    old = torch.get_num_threads()
    torch.set_num_threads(int(m["threads"]))
    out = []
    try:
        with tempfile.TemporaryDirectory(prefix="diffnas-latency-") as tmp:
            timer = _Timer(m["runtime"], resolve_device(m["device"]), int(m["threads"]),
                           Path(tmp))
            for g in genotypes:
                pred = tab.predict(net, g)
                meas = measure_network(fixed_network(cfg, g, c_img, size, n_cls), timer,
                                       int(m["batch"]), c_img, size,
                                       repeats or int(m["repeats"]), warmup or int(m["warmup"]),
                                       int(m.get("rounds", 3)))
                pred_min = tab.predict(net, g, "min_ms")
                out.append({"genotype": str(g), "predicted_ms": pred,
                            "measured_ms": meas["median_ms"], "measured_iqr_ms": meas["iqr_ms"],
                            "error": (pred - meas["median_ms"]) / meas["median_ms"],
                            "predicted_min_ms": pred_min, "measured_min_ms": meas["min_ms"],
                            "error_min": (pred_min - meas["min_ms"]) / meas["min_ms"]})
    finally:
        torch.set_num_threads(old)
    return out
