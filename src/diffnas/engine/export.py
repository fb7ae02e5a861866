"""Export a (trained) evaluation network for deployment: TorchScript and ONNX, each checked
against PyTorch on a sample, plus its CPU latency at batch 1.

The exported graphs take one fixed-size image batch ``[1, C, H, W]`` (the training size) and
return the logits; the auxiliary head and drop-path are training-only and are not part of them
(the network is exported in eval mode). ONNX needs the optional packages of the ``export``
extra (``pip install 'diffnas[export]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DiffnasError
from ..spaces.base import MixedEdge, Supernet
from .runfolder import atomic_write_text

FORMATS = ("torchscript", "onnx")


def check_exportable(net: nn.Module) -> None:
    """Refuse networks with pieces that have no fixed deployable graph, naming them."""
    bad = [name or type(net).__name__ for name, m in net.named_modules()
           if isinstance(m, Supernet | MixedEdge)]
    if bad:
        raise DiffnasError(f"cannot export: {', '.join(bad[:3])} "
                           f"{'is a' if len(bad) == 1 else 'are'} search supernet piece(s) whose "
                           "ops depend on α at run time; derive the genotype and export its "
                           "evaluation network (diffnas train / diffnas export GENOTYPE)")


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise DiffnasError(f"ONNX export needs the Python package {module!r}, which is not "
                           "installed; pip install 'diffnas[export]' (onnx, onnxscript, "
                           "onnxruntime), or pass --format torchscript") from None


def _median_latency(fn: Any, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def export_torchscript(net: nn.Module, sample: torch.Tensor, path: Path) -> torch.jit.ScriptModule:
    """Trace ``net`` (eval mode) on ``sample`` and save it; returns the reloaded module."""
    with warnings.catch_warnings():
        # shape arithmetic is traced as constants (the graph is for one input size), and
        # torch >= 2.10 marks TorchScript deprecated; neither is news to the caller
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            traced = torch.jit.trace(net, sample, check_trace=False)
        except Exception as e:  # noqa: BLE001 - tracing errors name the unsupported op
            raise DiffnasError(f"cannot export to TorchScript: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}") from None
        traced.save(str(path))
        return torch.jit.load(str(path), map_location="cpu")


def export_onnx(net: nn.Module, sample: torch.Tensor, path: Path, opset: int = 18) -> None:
    """Export ``net`` (eval mode) to ONNX with torch's exporter (``torch.export`` based)."""
    _require("onnx")
    _require("onnxscript")
    quiet = io.StringIO()
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot register
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (sample,), str(path), dynamo=True, opset_version=opset,
                              input_names=["image"], output_names=["logits"], verbose=False)
        except Exception as e:  # noqa: BLE001 - the exporter names the unsupported op
            msg = str(e).strip().splitlines()
            raise DiffnasError(f"cannot export to ONNX: {type(e).__name__}: "
                               f"{(msg[0] if msg else '')[:200]}") from None
        finally:
            log.setLevel(level)


def export_network(net: nn.Module, out: str | Path, sample: torch.Tensor | None = None,
                   formats: tuple[str, ...] = FORMATS, repeats: int = 50, warmup: int = 5,
                   threads: int | None = None, atol: float = 1e-4) -> dict[str, Any]:
    """Export ``net`` to ``out/model.pt`` (TorchScript) and ``out/model.onnx``; check each on
    ``sample`` (default: a seeded random image of the network's input size) against PyTorch;
    measure CPU latency at batch 1 (median of ``repeats`` after ``warmup``) with ``threads``
    (default: torch's current number, restored afterwards). Outputs agree when the largest
    difference is at most ``atol × max(1, max |logit|)``. ``net`` itself is left as it was (a
    CPU copy in eval mode is exported). Returns (and writes ``out/export.json``) the report."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise DiffnasError(f"unknown export format(s) {', '.join(bad)}; valid: "
                           f"{', '.join(FORMATS)}")
    check_exportable(net)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(net).cpu().eval().to(memory_format=torch.contiguous_format)
    if sample is None:
        size = int(getattr(net, "input_size", 32))
        chans = int(getattr(net, "in_channels", 3))
        sample = torch.randn(1, chans, size, size, generator=torch.Generator().manual_seed(0))
    sample = sample.cpu().float()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = _export_and_time(net, out, sample, formats, repeats, warmup, atol)
    finally:
        torch.set_num_threads(old_threads)
    atomic_write_text(out / "export.json", json.dumps(report, indent=2) + "\n")
    failed = [f for f in formats if not report[f]["ok"]]
    if failed:
        what = "; ".join(f"{f} differs by {report[f]['max_abs_diff']:.3g}" for f in failed)
        raise DiffnasError(f"exported model disagrees with PyTorch beyond {report['tolerance']:.3g}"
                           f": {what} "
                           f"(report in {out / 'export.json'})")
    return report


def _export_and_time(net: nn.Module, out: Path, sample: torch.Tensor, formats: tuple[str, ...],
                     repeats: int, warmup: int, atol: float) -> dict[str, Any]:
    n_threads = torch.get_num_threads()
    with torch.no_grad():
        reference = net(sample)
        pt_lat, _ = _median_latency(lambda: net(sample), repeats, warmup)
    tol = atol * max(1.0, float(reference.abs().max()))  # relative for large logits
    report: dict[str, Any] = {
        "input_shape": list(sample.shape), "threads": n_threads, "repeats": repeats,
        "warmup": warmup, "tolerance": tol,
        "pytorch": {"latency_ms": pt_lat * 1e3},
    }
    if "torchscript" in formats:
        path = out / "model.pt"
        loaded = export_torchscript(net, sample, path)
        with torch.no_grad():
            diff = float((loaded(sample) - reference).abs().max())
            lat, _ = _median_latency(lambda: loaded(sample), repeats, warmup)
        report["torchscript"] = {"path": str(path), "max_abs_diff": diff, "ok": diff <= tol,
                                 "latency_ms": lat * 1e3}
    if "onnx" in formats:
        path = out / "model.onnx"
        export_onnx(net, sample, path)
        ort = _require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: sample.numpy()}
        got = torch.from_numpy(session.run(None, feed)[0])
        diff = float((got - reference).abs().max())
        lat, _ = _median_latency(lambda: session.run(None, feed), repeats, warmup)
        report["onnx"] = {"path": str(path), "max_abs_diff": diff, "ok": diff <= tol,
                          "latency_ms": lat * 1e3, "runtime": f"onnxruntime {ort.__version__}"}
    return report
