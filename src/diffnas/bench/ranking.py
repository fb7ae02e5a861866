"""How well a trained NAS-Bench-201 supernet ranks architectures (CDARTS §4.5, STC-NAS §5.2).

From a search's run folder (its config and checkpoint) we sample K cells and score each

* by **α strength**: Σ over edges of the chosen op's share of its edge's weights (the method's
  own weighting of α — softmax for DARTS — normalised per edge);
* by **inherited-weight accuracy**: the supernet evaluated with one op per edge
  (:class:`FixedArchPolicy`), on the search's held-out half of the data, after re-estimating
  the batch-norm statistics of that single path on a few training batches (BN statistics
  gathered while training the mixture do not fit any one path);

and compare both with a reference — the NAS-Bench-201 table's accuracy (by default; CIFAR-10)
or accuracies in a JSON file (e.g. retrained ones) — by Kendall τ-b and Spearman ρ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import SearchConfig
from ..errors import DiffnasError
from ..spaces.base import EdgePolicy, EdgeWeights, Supernet
from ..spaces.nb201 import NB201Genotype
from .nb201_table import NB201Table, arch_from_index, connected_mask


# ------------------------------------------------------------------------------ correlations
def rankdata(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    x = np.asarray(a, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0          # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _check_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DiffnasError(f"correlation needs two equally long lists, got {a.shape}, {b.shape}")
    return a, b


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the (tie-averaged) ranks; NaN if undefined."""
    a, b = _check_pair(x, y)
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b = Σ_{i<j} s_ij t_ij / √(Σ s_ij² · Σ t_ij²), s = sign(x_i − x_j),
    t = sign(y_i − y_j) (ties count in neither numerator nor their own factor); NaN if undefined.
    O(n²) memory: fine for the few hundred architectures a ranking study samples."""
    a, b = _check_pair(x, y)
    s = np.sign(a[:, None] - a[None, :])
    t = np.sign(b[:, None] - b[None, :])
    den = math.sqrt(float((s * s).sum() * (t * t).sum()))
    return float((s * t).sum() / den) if den > 0 else float("nan")


# ---------------------------------------------------------------------- one-path evaluation
class FixedArchPolicy(EdgePolicy):
    """Edge policy that runs one fixed op per edge with weight 1 (``none``: nothing at all)."""

    def __init__(self, genotype: NB201Genotype, op_names: Sequence[str]) -> None:
        self.genotype = genotype
        self.op_idx = [list(op_names).index(op) for op in genotype.ops]
        self.active = [() if op == "none" else (i,)
                       for op, i in zip(genotype.ops, self.op_idx, strict=True)]

    def edge_policy(self, supernet: Supernet, kind: str) -> EdgeWeights:
        alpha = supernet.alphas[kind]
        w = torch.zeros_like(alpha, requires_grad=False)
        w[torch.arange(len(self.op_idx)), torch.tensor(self.op_idx)] = 1.0
        return EdgeWeights(w, self.active)


def _bn_modules(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate every BN's running mean/var as the plain average over ``batches``
    (momentum 1/(k+1) at batch k, which also works for the supernet's folded-scale BN)."""
    bns = _bn_modules(net)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    was = net.training
    net.train()
    try:
        for k, x in enumerate(batches):
            for m in bns:
                m.momentum = 1.0 / (k + 1)
            net(x)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        net.train(was)


def alpha_strength(weights: torch.Tensor, genotype: NB201Genotype,
                   op_names: Sequence[str]) -> float:
    """Σ_e p_e[o_e] with p_e the edge's (method-weighted) α normalised to sum 1."""
    w = weights.detach().float().cpu().clamp_min(0)
    p = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    idx = [list(op_names).index(op) for op in genotype.ops]
    return float(p[torch.arange(len(idx)), torch.tensor(idx)].sum())


# ------------------------------------------------------------------------------- the study
def _reference(reference: str | NB201Table | None) -> tuple[str, dict[int, float] | None,
                                                            NB201Table | None]:
    """(description, {cell index: accuracy} from a JSON file or None, table or None)."""
    if isinstance(reference, NB201Table):
        return reference.describe(), None, reference
    if reference is None or reference == "table":
        from .nb201_table import cached_table

        table = cached_table()
        return table.describe(), None, table
    path = Path(reference)
    if not path.is_file():
        raise DiffnasError(f"reference {reference!r} is neither 'table' nor a JSON file "
                           "mapping NAS-Bench-201 architecture strings to accuracies")
    from .nb201_table import arch_index

    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DiffnasError(f"reference {path} is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict) or not raw:
        raise DiffnasError(f"reference {path} must be a JSON object {{architecture: accuracy}}")
    try:
        accs = {arch_index(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise DiffnasError(f"reference {path}: every value must be a number") from None
    return f"accuracies from {path} ({len(accs)} architectures)", accs, None


def _load_run(run_dir: str | Path, device: torch.device) -> tuple[SearchConfig, Any, Any, Any]:
    from ..data import BatchAugment, load_dataset
    from ..engine.runfolder import RunFolder
    from ..engine.search import build_search

    run = RunFolder(run_dir)
    cfg_file = run.path / "config.json"
    if not cfg_file.is_file() or not run.checkpoint.is_file():
        raise DiffnasError(f"{run.path} is not a search run folder with a checkpoint (needs "
                           "config.json and checkpoint.pt)")
    cfg = SearchConfig.from_dict(json.loads(cfg_file.read_text()))
    if cfg.space != "nb201":
        raise DiffnasError(f"ranking needs a NAS-Bench-201-space run; {run.path} searched the "
                           f"{cfg.space!r} space")
    data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size,
                        class_fraction=cfg.class_fraction, seed=cfg.seed)
    if cfg.subset is not None and cfg.subset < len(data.labels):
        data = data.subset(cfg.subset, cfg.seed)
    net, _, method = build_search(cfg, data.in_channels, data.image_size, data.num_classes, 1,
                                  device, (data.mean, data.std))
    state = run.load_checkpoint(cfg)
    net.load_state_dict(state["model"])
    aug = BatchAugment(data.mean, data.std, crop_padding=0, flip=False)
    return cfg, net, method, (data, aug)


def rank_supernet(run_dir: str | Path, samples: int = 50, seed: int = 0,
                  reference: str | NB201Table | None = None, *, max_eval: int = 2000,
                  calib_batches: int = 4, batch_size: int = 128, include_disconnected: bool = False,
                  device: str = "cpu") -> dict[str, Any]:
    """Sample ``samples`` cells, score them by the supernet of ``run_dir`` and correlate.

    Returns a dict with every cell's scores and Kendall τ / Spearman ρ of each score against
    the reference. Cells with no input→output path are left out unless
    ``include_disconnected`` (they would make ranking look easier than it is)."""
    from ..data import BatchStream, split_indices
    from ..engine.search import evaluate, resolve_device

    if samples < 2:
        raise DiffnasError(f"ranking needs at least 2 samples, got {samples}")
    desc, ref_accs, table = _reference(reference)
    dev = resolve_device(device)
    cfg, net, method, (data, aug) = _load_run(run_dir, dev)

    if ref_accs is not None:
        pool = np.array(sorted(ref_accs))
    else:
        assert table is not None
        pool = table.available()
    if not include_disconnected:
        pool = pool[connected_mask()[pool]]
    if len(pool) < 2:
        raise DiffnasError("fewer than 2 reference architectures to rank")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(samples, len(pool)), replace=False)

    images, labels = data.images.to(dev), data.labels.to(dev)
    train_idx, val_idx = split_indices(len(labels), cfg.train_portion, cfg.seed)
    evaluation = BatchStream(images, labels, val_idx[:max_eval], batch_size, seed=0,
                             drop_last=False, device=dev)
    calib_stream = BatchStream(images, labels, train_idx, batch_size, seed=cfg.seed, device=dev)
    calib = [aug(x, train=False) for (x, _), _ in zip(calib_stream.epoch(0),
                                                      range(calib_batches), strict=False)]
    weights = method.alpha_weights()["cell"]
    original = net.policy
    rows = []
    try:
        for i in chosen:
            g = arch_from_index(int(i))
            net.policy = FixedArchPolicy(g, net.op_names)
            recalibrate_bn(net, calib)
            _, acc = evaluate(net, evaluation, aug)
            ref = ref_accs[int(i)] if ref_accs is not None else table.accuracy(g)  # type: ignore
            rows.append({"arch": str(g), "reference": ref, "supernet_acc": acc,
                         "alpha_strength": alpha_strength(weights, g, net.op_names)})
    finally:
        net.policy = original
    ref_v = [r["reference"] for r in rows]
    out: dict[str, Any] = {
        "run_dir": str(run_dir), "samples": len(rows), "seed": seed, "reference": desc,
        "search_data": cfg.dataset, "eval_images": evaluation.num_samples,
        "include_disconnected": include_disconnected,
        "kendall_tau": {}, "spearman_rho": {}, "archs": rows,
    }
    for score in ("supernet_acc", "alpha_strength"):
        v = [r[score] for r in rows]
        out["kendall_tau"][score] = kendall_tau(v, ref_v)
        out["spearman_rho"][score] = spearman_rho(v, ref_v)
    return out

