"""P-DARTS (Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the
Depth Gap between Search and Evaluation", ICCV 2019; reference chenxin061/pdarts
``train_search.py``, ``model_search.py``).

The search runs in stages (§3.2, the loop's generic stages): stage s trains a supernet of
``layers + add_layers[s]`` cells (5 → 11 → 17) from scratch, first-order DARTS with α frozen for
the first 10 epochs of the stage (``eps_no_archs``); between stages every edge keeps its
``num_to_keep[s]`` ops with the largest softmax(α) over its current ops (8 → 5 → 3; the
reference's ``get_min_k`` drops the smallest, ties to the lower index), the search space
approximation of §3.2. Nothing else is carried over: each stage builds new weights, α and
optimisers (``for sp in range(len(num_to_keep))``). Search space regularisation (§3.3):
dropout on every stride-1 skip-connect of rate ``dropout_rate[s]`` (0.1/0.4/0.7, the README's
command), decayed within the stage as the reference does: ``rate · (E − e − 1)/E`` while α is
frozen, then ``rate · exp(−0.2 (e − 10))``. The derivation after the last stage: each edge's
strongest non-``none`` op, two strongest edges per node (DARTS), then in the normal cell at most
``max_skip`` (2) skip-connects: while there are more, the kept skip edge with the smallest
skip weight has it set to 0 and the cell is derived again (``delete_min_sk_prob``,
``keep_1_on``, ``keep_2_branches``). α gradients are clipped at 5 (``train``: clip_grad_norm_
on the arch parameters with ``args.grad_clip``).

NAS-Bench-201 (the reference has no such variant): a stage means op pruning only, no depth
growth (``add_layers`` 0,0,0; 5 → 4 → 3 ops per edge, ``num_to_keep`` 4,3,1); the skip limit
does not apply (every NAS-Bench-201 edge is kept).

Deviations (one line each):
- the reference steps its cosine schedule before each epoch (epoch e uses the lr of e + 1); we
  use DARTS' lr of epoch e, as every method here.
- the reference logs genotypes for every skip limit 8 … 0; we return the one of ``max_skip``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..config import SearchConfig
from ..errors import DiffnasError
from ..spaces import DartsGenotype, Genotype
from ..spaces.darts import derive_cell
from .base import SearchMethod
from .parts import split_list
from .presets import register_method_presets


def _numbers(value: Any, kind: type, name: str) -> list[Any]:
    try:
        return [kind(v) for v in split_list(value)]
    except ValueError:
        raise DiffnasError(f"pdarts option {name}={value!r} must be a comma-separated list of "
                           f"{kind.__name__}s") from None


class PDARTS(SearchMethod):
    name = "pdarts"
    paper = "P-DARTS: Progressive Differentiable Architecture Search (Chen et al., ICCV 2019)"
    defaults: ClassVar[dict[str, Any]] = {
        "num_to_keep": "5,3,1",         # ops per edge after each stage (the last: derivation)
        "add_layers": "0,6,12",         # cells added to `layers` in each stage
        "add_width": "0,0,0",           # channels added to `channels` in each stage
        "dropout_rate": "0.1,0.4,0.7",  # skip-connect dropout of each stage
        "dropout_decay": 0.2,           # the reference's scale_factor
        "max_skip": 2,                  # skip-connects allowed in the final normal cell
    }
    part_options: ClassVar[dict[str, Any]] = {"arch_warmup_epochs": 10, "arch_grad_clip": 5.0}

    @classmethod
    def schedule(cls, opts: dict[str, Any]) -> dict[str, list[Any]]:
        keep = _numbers(opts["num_to_keep"], int, "num_to_keep")
        out = {"num_to_keep": keep,
               **{k: _numbers(opts[k], int, k) for k in ("add_layers", "add_width")},
               "dropout_rate": _numbers(opts["dropout_rate"], float, "dropout_rate")}
        if len({len(v) for v in out.values()}) != 1:
            raise DiffnasError("pdarts options num_to_keep, add_layers, add_width and "
                               "dropout_rate need one entry per stage each, got "
                               + ", ".join(f"{k}={opts[k]!r}" for k in out))
        return out

    @classmethod
    def stage_epochs(cls, cfg: SearchConfig) -> list[int]:
        """``cfg.epochs`` split evenly over the stages (the reference: 25 each)."""
        n = len(cls.schedule(cls.resolve_options(cfg.method_args)[0])["num_to_keep"])
        if cfg.epochs < n:
            raise DiffnasError(f"pdarts has {n} stages, so it needs at least {n} epochs, got "
                               f"{cfg.epochs}")
        return [cfg.epochs // n + (1 if i >= n - cfg.epochs % n else 0) for i in range(n)]

    # -- stages --------------------------------------------------------------------------------
    def next_stage(self, stage: int) -> dict[str, Any]:
        """Stage ``stage``'s space: its depth and width, and per edge the ``num_to_keep`` ops of
        the finished stage's with the largest softmax(α)."""
        sched = self.schedule(self.opts)
        keep = sched["num_to_keep"][stage - 1]
        if self.net.space == "mbconv" and sched["add_layers"][stage] != sched["add_layers"][
                self.stage]:
            raise DiffnasError(f"pdarts deepens the supernet between stages (add_layers="
                               f"{self.opts['add_layers']}), but in the mbconv chain every "
                               "layer has its own α, so the added layers would have none: use "
                               "--opt add_layers=0,0,0 (the op pruning still runs)")
        weights = self.alpha_weights()
        mask = {k: self.net.op_mask(k) for k in self.net.kinds}
        edge_ops: dict[str, list[list[int]]] = {}
        for kind, w in weights.items():
            rows = []
            for e in range(w.shape[0]):
                ops = [o for o in range(w.shape[1]) if mask[kind] is None or mask[kind][e, o]]
                if keep > len(ops):
                    raise DiffnasError(f"pdarts num_to_keep {keep} at stage {stage + 1} is more "
                                       f"than the {len(ops)} ops an edge has")
                ranked = sorted(ops, key=lambda o: (float(w[e, o]), o))  # smallest first
                rows.append(sorted(ranked[len(ops) - keep:]))
            edge_ops[kind] = rows
        base_layers = self.cfg.layers - sched["add_layers"][self.stage]
        base_channels = self.cfg.channels - sched["add_width"][self.stage]
        return {"layers": base_layers + sched["add_layers"][stage],
                "channels": base_channels + sched["add_width"][stage],
                "supernet": {"edge_ops": edge_ops}}

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        rate = self.schedule(self.opts)["dropout_rate"][self.stage]
        warm, epochs = int(self.opts["arch_warmup_epochs"]), self.cfg.epochs
        if epoch < warm:
            p = rate * (epochs - epoch - 1) / epochs
        else:
            p = rate * math.exp(-(epoch - warm) * float(self.opts["dropout_decay"]))
        self.net.set_skip_dropout(p)
        self.skip_dropout = p

    def epoch_metrics(self) -> dict[str, Any]:
        return {"skip_dropout": getattr(self, "skip_dropout", 0.0)}

    # -- derivation ------------------------------------------------------------------------------
    def derive(self) -> Genotype:
        """DARTS' derivation, then at most ``max_skip`` skip-connects in the normal cell."""
        genotype = super().derive()
        if not isinstance(genotype, DartsGenotype):
            return genotype
        return limit_skips(genotype, self.alpha_weights()["normal"], self.net.op_mask("normal"),
                           self.net.op_names, int(self.opts["max_skip"]))


def limit_skips(genotype: DartsGenotype, weights: torch.Tensor, mask: torch.Tensor | None,
                op_names: tuple[str, ...], max_skip: int) -> DartsGenotype:
    """P-DARTS' skip-connect restriction of the normal cell (``train_search.py``): while the
    cell has more than ``max_skip`` skips, zero the skip weight of the kept skip edge where it
    is smallest and derive the cell again from the edges' kept ops."""
    if "skip_connect" not in op_names:
        return genotype
    skip = op_names.index("skip_connect")
    w = weights.detach().float().cpu().clone()
    if mask is not None:
        w[~mask] = -math.inf  # an edge's argmax is among its kept ops only (keep_1_on)
    normal = genotype.normal
    starts = [sum(2 + j for j in range(i)) for i in range(genotype.steps)]
    while sum(op == "skip_connect" for op, _ in normal) > max_skip:
        edges = [starts[i // 2] + src for i, (op, src) in enumerate(normal)
                 if op == "skip_connect"]
        e = min(edges, key=lambda x: (float(w[x, skip]), x))  # delete_min_sk_prob
        w[e, skip] = 0.0
        normal = derive_cell(w, op_names, genotype.steps)
    return DartsGenotype(normal=normal, normal_concat=genotype.normal_concat,
                         reduce=genotype.reduce, reduce_concat=genotype.reduce_concat)


_REF: dict[str, Any] = dict(batch_size=96, channels=16, layers=5, w_lr=0.025, w_lr_min=0.0,
                            w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0, a_lr=6e-4,
                            a_betas=(0.5, 0.999), a_weight_decay=1e-3, train_portion=0.5)
register_method_presets(
    "pdarts",
    darts=("P-DARTS CIFAR-10 search (chenxin061/pdarts train_search.py and its README command): "
           "3 stages × 25 epochs, 5 → 11 → 17 cells × 16, ops 8 → 5 → 3, α frozen 10 epochs "
           "per stage, skip dropout 0.1/0.4/0.7, batch 96, SGD 0.025 → 0, α Adam 6e-4, at most "
           "2 skips", {**_REF, "epochs": 75}),
    nb201=("P-DARTS in NAS-Bench-201 (no reference run): 3 stages × 25 epochs of op pruning "
           "5 → 4 → 3 ops per edge, no depth growth, the reference's optimisers",
           {**{k: v for k, v in _REF.items() if k not in ("channels", "layers")}, "epochs": 75,
            "method_args": {"num_to_keep": "4,3,1", "add_layers": "0,0,0"}}),
    cpu=(", 3 stages of 2 epochs (5 → 7 → 9 cells), α frozen for the first epoch of each",
         {"epochs": 6, "method_args": {"add_layers": "0,2,4", "arch_warmup_epochs": 1}}),
    nb201_cpu=(", 3 stages over its 8 epochs, α frozen for the first epoch of each",
               {"method_args": {"num_to_keep": "4,3,1", "add_layers": "0,0,0",
                                "arch_warmup_epochs": 1}}),
)
