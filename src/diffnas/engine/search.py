"""The search loop: epochs, steps, evaluation, logging, checkpoints and resume.

It knows nothing of any particular method: it builds the supernet of the
chosen space, the objective and the method, and calls the method's hooks.
Randomness is re-seeded at the start of every epoch from (seed, epoch), and
the checkpoint holds every other piece of state, so a resumed run continues
exactly as the uninterrupted one would have (on CPU).
"""

from __future__ import annotations

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
from ..spaces import Genotype, Supernet, build_supernet
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
                 ) -> tuple[Supernet, Any, SearchMethod]:
    """Supernet, objective and method for ``cfg`` (shared by search and profile).

    ``stats``: the data's normalisation ``(mean, std)``, for objectives that work in pixel
    space (reconstruction range, colour bins); None means pixels in [0, 1]."""
    torch.manual_seed(cfg.seed)
    method_cls = get_method(cfg.method)
    net = build_supernet(cfg.space, cfg.channels, cfg.layers, num_classes, in_channels,
                         **method_cls.supernet_options(cfg)).to(device)
    mean, std = stats if stats is not None else (None, None)
    objective = build_objective(cfg.objective or method_cls.default_objective, net, in_channels,
                                image_size, cfg.objective_args, mean=mean, std=std).to(device)
    method = method_cls(cfg, net, objective, steps_per_epoch)
    return net, objective, method


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
    run = RunFolder.open(out or Path("runs") / f"{cfg.method}-{cfg.space}-{dataset_name}-"
                         f"seed{cfg.seed}", resume)

    data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size,
                        class_fraction=cfg.class_fraction, seed=cfg.seed)
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
    aug = BatchAugment(data.mean, data.std, crop_padding=cfg.crop_padding,
                       flip=data.flip if cfg.flip is None else cfg.flip, cutout=cfg.cutout)
    net, objective, method = build_search(cfg, data.in_channels, data.image_size,
                                          data.num_classes, steps, device, (data.mean, data.std))

    state, start, elapsed, history = run.begin(cfg, resume)
    if state is not None:
        net.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        method.load_state_dict(state["method"])
    else:
        run.log(f"search: {cfg.method} in {cfg.space} on {cfg.dataset} "
                f"({len(train_idx)} train / {len(val_idx)} val images, "
                f"{tuple(images.shape[1:])}), {cfg.epochs} epochs × {steps} steps, device {device}")

    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=not progress,
               desc=f"{cfg.method}/{cfg.space}", unit="step", dynamic_ncols=True, leave=True)
    genotype = method.derive()
    record: dict[str, Any] = history[-1] if history else {}
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 1)
            method.begin_epoch(epoch)
            net.train()
            objective.train()
            meter = _Meter()
            for (xt, yt), (xv, yv) in zip(train.epoch(epoch), val.epoch(epoch), strict=False):
                bt = objective.prepare(aug(xt, gen), yt, gen)
                bv = objective.prepare(aug(xv, gen), yv, gen)
                stats = method.step(bt, bv)
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
            evals = evaluate_views(net, evaluation, aug, objective.eval_views, cfg.seed)
            eval_loss, eval_acc = evals.pop("")
            genotype = method.derive()
            weights = method.alpha_weights()
            betas = net.beta_weights()  # edge normalisation (PC-DARTS), when on
            elapsed += time.perf_counter() - t0
            record = {
                "epoch": epoch, "lr": method.w_opt.param_groups[0]["lr"],
                **{f"train_{k}" if not k.startswith("val") else f"search_{k}": v
                   for k, v in meter.means().items()},
                "val_loss": eval_loss, "val_acc": eval_acc,
                **{f"val_{v}_{k}": x for v, (loss, acc) in evals.items()
                   for k, x in (("loss", loss), ("acc", acc))},
                "genotype": genotype.to_dict(), "genotype_str": str(genotype),
                "skip_count": genotype.skip_count, "param_free_count": genotype.param_free_count,
                "alpha_std": alpha_std(weights), "alpha_std_normal": alpha_std_normal(weights),
                "alpha": {k: [[round(float(v), 5) for v in row] for row in w.cpu()]
                          for k, w in weights.items()},
                **({"beta": {k: [round(float(v), 5) for v in b.cpu()] for k, b in betas.items()}}
                   if betas else {}),
                "epoch_time_s": time.perf_counter() - t0, "elapsed_s": elapsed,
                "peak_mem_gib": peak_memory_gib(device),
                **extra_epoch_metrics(cfg.space, genotype, run),
                **method.epoch_metrics(),
            }
            run.end_epoch(cfg, epoch, elapsed, record, model=net.state_dict(),
                          objective=objective.state_dict(), method=method.state_dict())
            run.write_json("genotype.json", genotype.to_dict())
            trained = (f"train loss {record['train_loss']:.4f} acc "
                       f"{record.get('train_acc', 0):.4f} | " if "train_loss" in record
                       else "")  # an epoch may train other modules only (CDARTS' E)
            views = "".join(f", {v} {acc:.4f}" for v, (_, acc) in evals.items())
            line = (f"epoch {epoch + 1}/{cfg.epochs}: {trained}val loss {eval_loss:.4f} acc "
                    f"{eval_acc:.4f}{views} | skips {genotype.skip_count} | {genotype}")
            run.log(line)
            if progress:
                bar.write(line)
            history.append(record)
            if on_epoch is not None:
                on_epoch(run.path, record)
    finally:
        bar.close()
    summary = {"genotype": genotype.to_dict(), "genotype_str": str(genotype),
               "epochs": cfg.epochs, "final_val_acc": record.get("val_acc"),
               "final_val_loss": record.get("val_loss"),
               **{f"final_{k}": v for k, v in record.items() if k.startswith("val_")
                  and k not in ("val_acc", "val_loss")},  # the objective's views (masked)
               **method.epoch_metrics(), "search_time_s": elapsed,
               "peak_mem_gib": peak_memory_gib(device), "run_dir": str(run.path)}
    run.write_json("genotype.json", genotype.to_dict())
    run.write_json("result.json", summary)
    return SearchResult(genotype, run.path, record, history)


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
    for x, y in stream.epoch(0):
        clean = aug(x, train=False)
        inputs = {"": clean, **(views(clean, gen) if views is not None else {})}
        for name, inp in inputs.items():
            logits = net(inp)
            sums[name][0] += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            sums[name][1] += accuracy(logits, y) * len(y)
        total += len(y)
    net.train()
    n = max(1, total)
    return {name: (loss / n, correct / n) for name, (loss, correct) in sums.items()}


def evaluate(net: torch.nn.Module, stream: BatchStream, aug: BatchAugment) -> tuple[float, float]:
    """Loss and accuracy of the supernet (eval mode) over a whole split of clean images."""
    return evaluate_views(net, stream, aug)[""]
