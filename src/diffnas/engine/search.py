"""The search loop: epochs, steps, evaluation, logging, checkpoints and resume.

It knows nothing of any particular method: it builds the supernet of the
chosen space, the objective and the method, and calls the method's hooks.
Randomness is re-seeded at the start of every epoch from (seed, epoch), and
the checkpoint holds every other piece of state, so a resumed run continues
exactly as the uninterrupted one would have (on CPU).

Two generic phases: *stages* (a method's ``stage_epochs``; at each switch the finished
stage's method describes the next supernet, ``next_stage``, and the new method takes what it
keeps, ``carry_over``; the checkpoint holds every stage's description) and a *selection after
the search* (``--select``, :mod:`.select`), whose epochs are numbered after the search's and
checkpointed like them, so a run resumes exactly inside either.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import SearchConfig, resolve_config
from ..data import BatchAugment, BatchStream, ImageDataset, load_dataset, split_indices
from ..errors import DiffnasError
from ..methods import SearchMethod, get_method
from ..methods.base import accuracy
from ..objectives import build_objective
from ..objectives.latency import with_latency
from ..spaces import Genotype, Supernet, build_supernet, genotype_from_dict
from ..spaces.nb201 import connected, none_count
from . import distributed
from .hessian import method_hessian_eig
from .runfolder import RunFolder


@dataclass
class SearchResult:
    genotype: Genotype
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffnasError(f"device {name!r} was asked for but CUDA is not available; "
                           "use --device cpu or auto")
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_search(cfg: SearchConfig, in_channels: int, image_size: int, num_classes: int,
                 steps_per_epoch: int, device: torch.device,
                 stats: tuple[Sequence[float], Sequence[float]] | None = None,
                 stage: int = 0, spec: dict[str, Any] | None = None,
                 stage_start: int = 0, search_epochs: int | None = None,
                 ) -> tuple[Supernet, Any, SearchMethod]:
    """Supernet, objective and method for ``cfg`` (shared by search and profile).

    ``stats``: the data's normalisation ``(mean, std)``, for objectives that work in pixel
    space (reconstruction range, colour bins); None means pixels in [0, 1]. ``stage``,
    ``spec``: a later search stage and its space description (:func:`stage_config`; its
    ``supernet`` options override the method's), ``stage_start``, ``search_epochs``: the
    stage's first epoch in the search and the search's epochs."""
    torch.manual_seed(cfg.seed + stage)
    method_cls = get_method(cfg.method)
    net = build_supernet(cfg.space, cfg.channels, cfg.layers, num_classes, in_channels,
                         image_size=image_size,
                         **{**method_cls.supernet_options(cfg),
                            **(spec or {}).get("supernet", {})}).to(device)
    mean, std = stats if stats is not None else (None, None)
    objective = build_objective(cfg.objective or method_cls.default_objective, net, in_channels,
                                image_size, cfg.objective_args, mean=mean, std=std).to(device)
    objective = with_latency(objective, net, cfg.latency)  # + the latency term, when asked for
    method = method_cls(cfg, net, objective, steps_per_epoch)
    method.stage, method.stage_start, method.search_epochs = stage, stage_start, search_epochs
    return net, objective, method


def stage_plan(cfg: SearchConfig) -> list[int]:
    """The epochs of each search stage of ``cfg``'s method (one stage for most methods)."""
    plan = get_method(cfg.method).stage_epochs(cfg)
    if sum(plan) != cfg.epochs or min(plan) < 1:
        raise DiffnasError(f"method {cfg.method!r} splits {cfg.epochs} epochs into stages "
                           f"{plan}; every stage needs at least one epoch")
    return plan


def stage_config(cfg: SearchConfig, epochs: int, spec: dict[str, Any]) -> SearchConfig:
    """The config a stage's method sees: the stage's epochs (its schedules restart), and the
    ``layers`` / ``channels`` of the stage's space description ``spec``."""
    return dataclasses.replace(cfg, epochs=epochs, layers=int(spec.get("layers", cfg.layers)),
                               channels=int(spec.get("channels", cfg.channels)))


# Extra per-epoch metrics by search space: "module:function" names, imported when first used;
# each is called as fn(genotype, run_folder) and returns entries for the epoch's metrics record.
EPOCH_METRICS: dict[str, tuple[str, ...]] = {
    "nb201": ("diffnas.bench.nb201_table:epoch_metrics",),  # NAS-Bench-201 table accuracy
}


def extra_epoch_metrics(space: str, genotype: Genotype, run: RunFolder) -> dict[str, Any]:
    """The entries the :data:`EPOCH_METRICS` hooks of ``space`` add to an epoch's record."""
    out: dict[str, Any] = {}
    for ref in EPOCH_METRICS.get(space, ()):
        module, name = ref.split(":")
        out.update(getattr(importlib.import_module(module), name)(genotype, run))
    return out


def alpha_std(weights: dict[str, torch.Tensor]) -> float:
    """Σ over the edges of every cell kind of the std of the edge's op weights (metric
    ``alpha_std``: a collapse measure, larger when α picks clear winners)."""
    return float(sum(w.float().std(dim=1, unbiased=False).sum() for w in weights.values()))


def alpha_std_normal(weights: dict[str, torch.Tensor]) -> float:
    """:func:`alpha_std` over the normal cells only (every kind but ``reduce``; NAS-Bench-201's
    one cell kind): the quantity of Semantic-DARTS Fig. 9 (metric ``alpha_std_normal``)."""
    return alpha_std({k: w for k, w in weights.items() if k != "reduce"})


class _Meter:
    """Per-epoch means of the step stats; each stat is averaged over the steps that reported it
    (a method may report some stats only in some phases, e.g. CDARTS' separate learning)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.n = 0

    def update(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] += v
            self.counts[k] += 1
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def search(cfg: SearchConfig | None = None, *, out: str | Path | None = None, resume: bool = False,
           progress: bool = True, preset: str | None = None,
           on_epoch: Callable[[Path, dict[str, Any]], None] | None = None,
           **overrides: Any) -> SearchResult:
    """Run one architecture search and return its genotype and run folder.

    ``search(preset="cpu", epochs=2)`` or ``search(SearchConfig(...))``; the run folder
    defaults to ``runs/<method>-<space>-<dataset>-seed<seed>``. ``on_epoch(run_dir, record)``
    is called after every epoch's checkpoint with its metrics record (e.g. TensorBoard).
    """
    if cfg is None:
        cfg = resolve_config(preset, **overrides)
    elif overrides or preset:
        raise DiffnasError("pass either a SearchConfig or a preset/overrides, not both")
    cfg.validate()
    device = resolve_device(cfg.device)
    dataset_name = cfg.dataset.replace("/", "_").replace(":", "-")
    with distributed.session(device, cfg.sync_bn) as ddp:  # torchrun: this rank's part
        if ddp is not None:  # only rank 0 shows progress and writes (distributed module doc)
            device, progress = ddp.device, progress and ddp.main
            on_epoch = on_epoch if ddp.main else None
        run = distributed.run_folder(RunFolder.open(
            out or Path("runs") / f"{cfg.method}-{cfg.space}-{dataset_name}-seed{cfg.seed}",
            resume), ddp)

        data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir,
                            image_size=cfg.image_size, class_fraction=cfg.class_fraction,
                            seed=cfg.seed)
        if cfg.subset is not None and cfg.subset < len(data.labels):
            data = data.subset(cfg.subset, cfg.seed)
        return _run(cfg, data, run, resume, progress, device, on_epoch)


def _run(cfg: SearchConfig, data: ImageDataset, run: RunFolder, resume: bool, progress: bool,
         device: torch.device,
         on_epoch: Callable[[Path, dict[str, Any]], None] | None = None) -> SearchResult:
    images, labels = data.images.to(device), data.labels.to(device)
    train_idx, val_idx = split_indices(len(labels), cfg.train_portion, cfg.seed)
    train = BatchStream(images, labels, train_idx, cfg.batch_size, seed=cfg.seed, device=device)
    val = BatchStream(images, labels, val_idx, cfg.batch_size, seed=cfg.seed + 1, device=device)
    evaluation = BatchStream(images, labels, val_idx, max(cfg.batch_size, 256), seed=0,
                             drop_last=False, device=device)
    steps = min(len(train), len(val))
    ddp = distributed.current()  # None in one process
    if ddp is not None:  # the global batch splits evenly (a short split: one smaller batch)
        ddp.check_batch("the global batch (--batch-size)", min(cfg.batch_size, len(train_idx)),
                        min(cfg.batch_size, len(val_idx)))
    # the fixed validation batches of λ_max (--hessian-every): the first of this stream's epoch 0
    hessian_stream = BatchStream(images, labels, val_idx, cfg.batch_size, seed=cfg.seed + 2,
                                 device=device)
    aug = BatchAugment(data.mean, data.std, crop_padding=cfg.crop_padding,
                       flip=data.flip if cfg.flip is None else cfg.flip, cutout=cfg.cutout,
                       color_jitter=cfg.color_jitter)
    plan = stage_plan(cfg)
    first_epoch = [sum(plan[:i]) for i in range(len(plan))]

    def build(stage: int, spec: dict[str, Any]) -> tuple[Supernet, Any, SearchMethod]:
        built = build_search(stage_config(cfg, plan[stage], spec), data.in_channels,
                             data.image_size, data.num_classes, steps, device,
                             (data.mean, data.std), stage, spec, first_epoch[stage], cfg.epochs)
        if ddp is not None:  # --sync-bn
            ddp.prepare_modules(built[:2])
        return built

    stages: list[dict[str, Any]] = [{}]  # the space description of every stage so far
    net, objective, method = build(0, {})
    state, start, elapsed, history = run.begin(cfg, resume)
    distributed.check_resume(ddp, state, start, cfg.sync_bn)
    if state is not None:
        stages = [dict(s) for s in state.get("stages", [{}])]
        if len(stages) > 1:  # a later stage: its own supernet
            net, objective, method = build(len(stages) - 1, stages[-1])
        net.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        method.load_state_dict(state["method"])
    else:
        run.log(f"search: {cfg.method} in {cfg.space} on {cfg.dataset} "
                f"({len(train_idx)} train / {len(val_idx)} val images, "
                f"{tuple(images.shape[1:])}), {cfg.epochs} epochs × {steps} steps, device {device}"
                + (f", stages of {plan} epochs" if len(plan) > 1 else "")
                + (f", {ddp.describe()}" if ddp is not None else ""))
    selection: Any = None  # the post-search phase (--select), built on the final supernet
    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=not progress,
               desc=f"{cfg.method}/{cfg.space}", unit="step", dynamic_ncols=True, leave=True)
    genotype = method.derive()
    record: dict[str, Any] = history[-1] if history else {}

    def finish_epoch(epoch: int, t0: float, meter: _Meter, phase: dict[str, Any]) -> None:
        nonlocal genotype, record, elapsed
        if ddp is not None:  # the ranks' BN running averages, averaged (module doc)
            ddp.average_buffers(distributed.method_modules(net, objective, method))
        evals = evaluate_views(net, evaluation, aug, objective.eval_views, cfg.seed)
        eval_loss, eval_acc = evals.pop("")
        genotype = method.derive()
        weights = method.alpha_weights()
        betas = net.beta_weights()  # edge normalisation (PC-DARTS), when on
        elapsed += time.perf_counter() - t0
        record = {
            "epoch": epoch, "stage": len(stages) - 1, **phase,
            "lr": method.w_opt.param_groups[0]["lr"],
            **{f"train_{k}" if not k.startswith("val") else f"search_{k}": v
               for k, v in meter.means().items()},
            "val_loss": eval_loss, "val_acc": eval_acc,
            **{f"val_{v}_{k}": x for v, (loss, acc) in evals.items()
               for k, x in (("loss", loss), ("acc", acc))},
            "genotype": genotype.to_dict(), "genotype_str": str(genotype),
            "skip_count": genotype.skip_count, "param_free_count": genotype.param_free_count,
            "none_count": none_count(genotype), "connected": connected(genotype),
            "alpha_std": alpha_std(weights), "alpha_std_normal": alpha_std_normal(weights),
            "alpha": {k: [[round(float(v), 5) for v in row] for row in w.cpu()]
                      for k, w in weights.items()},
            **({"beta": {k: [round(float(v), 5) for v in b.cpu()] for k, b in betas.items()}}
               if betas else {}),
            "epoch_time_s": time.perf_counter() - t0, "elapsed_s": elapsed,
            "peak_mem_gib": peak_memory_gib(device),
            **extra_epoch_metrics(cfg.space, genotype, run),
            **method.epoch_metrics(), **objective.epoch_metrics(),
        }
        ckpt_epoch = epoch
        if not phase:  # a search epoch: λ_max (RobustDARTS), then the early-stopping parts
            k = method.hessian_every()
            if k and (method.epoch % k == 0 or method.epoch == method.cfg.epochs - 1):
                record["hessian_eig"] = method_hessian_eig(method, hessian_stream, aug)
                if ddp is not None:  # a decision may read it: rank 0's, bit for bit
                    record["hessian_eig"] = ddp.broadcast_float(record["hessian_eig"])
            record.update(method.end_epoch(record))
            if method.stopped is not None:
                record["early_stop"] = method.stopped
                genotype = genotype_from_dict(method.stopped["genotype"])
            if method.rollback_to is not None:  # the state is that of this earlier epoch
                ckpt_epoch = epoch - method.epoch + method.rollback_to
        extra = {"select": selection.state_dict()} if "select_epoch" in phase else {}
        if ddp is not None:  # every rank holds what rank 0 saves (checked bit for bit)
            record["world_size"] = extra["world_size"] = ddp.world
            ddp.assert_in_sync((f"{i}.{k}", t) for i, m in enumerate(
                distributed.method_modules(net, objective, method))
                for k, t in [*m.named_parameters(), *m.named_buffers()])
        run.end_epoch(cfg, ckpt_epoch, elapsed, record, model=net.state_dict(),
                      objective=objective.state_dict(), method=method.state_dict(),
                      stages=stages, **extra)
        run.write_json("genotype.json", genotype.to_dict())
        trained = (f"train loss {record['train_loss']:.4f} acc "
                   f"{record.get('train_acc', 0):.4f} | " if "train_loss" in record
                   else "")  # an epoch may train other modules only (CDARTS' E)
        views = "".join(f", {v} {acc:.4f}" for v, (_, acc) in evals.items())
        where = (f"select {cfg.select} {phase['select_epoch'] + 1}/{selection.epochs}"
                 if "select_epoch" in phase else f"epoch {epoch + 1}/{cfg.epochs}")
        line = (f"{where}: {trained}val loss {eval_loss:.4f} acc "
                f"{eval_acc:.4f}{views} | skips {genotype.skip_count} | {genotype}"
                + ("" if record["connected"] else " | disconnected (no input→output path)"))
        run.log(line)
        if progress:
            bar.write(line)
        history.append(record)
        if on_epoch is not None:
            on_epoch(run.path, record)

    def train_epoch(epoch: int) -> _Meter:
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 1)
        net.train()
        objective.train()
        meter = _Meter()
        for (xt, yt), (xv, yv) in zip(train.epoch(epoch), val.epoch(epoch), strict=False):
            bt = objective.prepare(aug(xt, gen), yt, gen)
            bv = objective.prepare(aug(xv, gen), yv, gen)
            if ddp is None:
                stats = method.step(bt, bv)
            else:  # this rank's share of the global batches; stats (and NaNs) of all ranks
                ddp.prepare_modules(distributed.method_modules(method))  # a new E (--sync-bn)
                stats = ddp.mean_stats(method.step(ddp.shard(bt, len(yt)),
                                                   ddp.shard(bv, len(yv))))
            bad = [k for k, v in stats.items() if not math.isfinite(v)]
            if bad:
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in "
                        f"{run.checkpoint}" if epoch > 0 else
                        "no checkpoint was written yet (the first epoch did not finish)")
                msg = (f"{', '.join(bad)} became {stats[bad[0]]} at epoch {epoch} step "
                       f"{meter.n}; stopped: {kept}; try a smaller learning rate")
                run.log(msg)
                raise DiffnasError(msg)
            meter.update(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.get('loss', math.nan):.3f}",
                            acc=f"{stats.get('acc', 0):.3f}",
                            epoch=epoch)
        return meter

    try:
        epoch = start
        while epoch < cfg.epochs and method.stopped is None:
            stage = max(i for i, e in enumerate(first_epoch) if e <= epoch)
            if stage == len(stages):  # stage switch: the finished method describes the next
                stages.append(dict(method.next_stage(stage)))
                previous = method
                net, objective, method = build(stage, stages[stage])
                method.carry_over(previous)
                run.write_json("stages.json", [{"stage": i, "first_epoch": first_epoch[i],
                                                "epochs": plan[i], "space": sp}
                                               for i, sp in enumerate(stages)])
                run.log(f"stage {stage + 1}/{len(plan)} from epoch {epoch + 1}: "
                        f"{stage_summary(net)}")
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            method.begin_epoch(epoch - first_epoch[stage])
            finish_epoch(epoch, t0, train_epoch(epoch), {})
            epoch += 1
            if method.rollback_to is not None:  # an early-stopping part restored an earlier epoch
                epoch += method.rollback_to - method.epoch
                method.rollback_to = None
        if cfg.select is not None:  # a post-search phase, epochs numbered after the search's
            from .select import build_selection

            selection = build_selection(cfg.select, method, evaluation, aug)
            bar.total += selection.epochs * steps
            if state is not None and "select" in state:
                selection.load_state_dict(state["select"])
            else:
                selection.begin()
            for k in range(max(0, start - cfg.epochs), selection.epochs):
                epoch = cfg.epochs + k
                t0 = time.perf_counter()
                torch.manual_seed(epoch_seed(cfg.seed, epoch))
                info = selection.run_epoch(k, lambda ep=epoch: train_epoch(ep).means())
                meter = _Meter()
                meter.update(info.pop("train", {}))
                finish_epoch(epoch, t0, meter, {"phase": f"select-{cfg.select}",
                                                "select_epoch": k, **info})
    finally:
        bar.close()
    if selection is not None:  # the selection's genotype (an early stop's is in result.json)
        genotype = method.derive()
    elif method.stopped is not None:
        genotype = genotype_from_dict(method.stopped["genotype"])
    last = result_line(genotype, method.stopped)
    if last:
        run.log(last)
        if progress:
            print(last)
    summary = {"genotype": genotype.to_dict(), "genotype_str": str(genotype),
               "epochs": cfg.epochs, "final_val_acc": record.get("val_acc"),
               "final_val_loss": record.get("val_loss"),
               **{f"final_{k}": v for k, v in record.items() if k.startswith("val_")
                  and k not in ("val_acc", "val_loss")},  # the objective's views (masked)
               **method.epoch_metrics(), **objective.epoch_metrics(), "search_time_s": elapsed,
               **({"stages": len(plan)} if len(plan) > 1 else {}),
               **({"select": cfg.select} if cfg.select else {}),
               "none_count": none_count(genotype), "connected": connected(genotype),
               **({"early_stop": method.stopped} if method.stopped is not None else {}),
               "peak_mem_gib": peak_memory_gib(device), "run_dir": str(run.path)}
    run.write_json("genotype.json", genotype.to_dict())
    run.write_json("result.json", summary)
    return SearchResult(genotype, run.path, record, history)


def result_line(genotype: Genotype, stopped: dict[str, Any] | None) -> str:
    """The search's last log line when the result needs a word: stopped early (and at which
    epoch's genotype), or a cell with no input→output path (``none`` on every path)."""
    notes = [stopped["reason"]] if stopped is not None else []
    if not connected(genotype):
        notes.append(f"the result has {none_count(genotype)} none edges and no input→output "
                     "path: a network built from it outputs the same logits for every image")
    return f"result {genotype}: " + "; ".join(notes) if notes else ""


def stage_summary(net: Supernet) -> str:
    """``11 cells × 16 channels, ops per edge 5`` (for the log)."""
    size = f"{getattr(net, 'layers', '?')} cells × {getattr(net, 'channels', '?')} channels"
    kept = getattr(net, "edge_ops", None)
    if kept is None:
        return f"{size}, all {len(net.op_names)} ops per edge"
    counts = sorted({len(ops) for v in kept.values() for ops in v})
    return f"{size}, ops per edge {'/'.join(map(str, counts))}"


ViewFn = Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]


@torch.no_grad()
def evaluate_views(net: torch.nn.Module, stream: BatchStream, aug: BatchAugment,
                   views: ViewFn | None = None, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Loss and accuracy of the supernet's classifier (eval mode) over a whole split: ``""``
    on the clean images, and on every view ``views(x, generator)`` makes of them (an
    objective's :meth:`~diffnas.objectives.base.Objective.eval_views`, e.g. ``masked``). The
    views draw from one generator seeded with ``seed``, so every call sees the same views."""
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    sums[""] = [0.0, 0.0]  # the clean entry exists even for an empty split
    total = 0
    ddp = distributed.current()  # data parallel: batches round-robin over the ranks
    for i, (x, y) in enumerate(stream.epoch(0)):
        clean = aug(x, train=False)
        inputs = {"": clean, **(views(clean, gen) if views is not None else {})}
        if ddp is not None and not ddp.mine(i):
            for name in inputs:  # every rank knows every view (and drew its generator alike)
                sums[name]  # noqa: B018
            continue
        for name, inp in inputs.items():
            logits = net(inp)
            sums[name][0] += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            sums[name][1] += accuracy(logits, y) * len(y)
        total += len(y)
    net.train()
    if ddp is not None:
        names = sorted(sums)
        flat = ddp.sum_floats([total, *(v for k in names for v in sums[k])])
        total, sums = int(flat[0]), {k: [flat[1 + 2 * j], flat[2 + 2 * j]]
                                     for j, k in enumerate(names)}
    n = max(1, total)
    return {name: (loss / n, correct / n) for name, (loss, correct) in sums.items()}


def evaluate(net: torch.nn.Module, stream: BatchStream, aug: BatchAugment) -> tuple[float, float]:
    """Loss and accuracy of the supernet (eval mode) over a whole split of clean images."""
    return evaluate_views(net, stream, aug)[""]
