"""DrNAS (Chen, Wang, Cheng, Tang & Hsieh, "DrNAS: Dirichlet Neural Architecture Search",
ICLR 2021; reference xiangning-chen/DrNAS).

Parts: ``weighting=dirichlet``: each edge's op weights are a sample θ ~ Dir(β), β = ELU(α) + 1,
drawn per forward with the pathwise gradient (``rsample``; reference ``utils.py
process_step_vector``); every op is weighted by θ (``edges=all``); the genotype is the argmax of
α (the reference's softmax(α); the Dirichlet mean has the same argmax). The regulariser is the
option ``reg_type`` (reference ``--reg_type``, scale ``--reg_scale`` 1e-3): ``l2`` (default)
is Adam's weight decay on α, 1e-3 (``architect.py``), i.e. ``a_weight_decay``; ``kl`` adds
helper R's ``dirichlet_kl`` part (reg_scale · Σ KL(Dir(β) ‖ Dir(1)), ``search_model.py
_get_kl_reg``) and sets Adam's weight decay on α to 0, as ``architect.py`` does.

Progressive learning (§3.3; reference ``DARTS-space/train_search.py``: ``ks = [6, 4]``,
``num_keeps = [7, 4]``, ``train_epochs = [25, 25]``), on the loop's generic stages: options
``progressive_k`` (the partial-channel divisor K of each stage, e.g. ``6,4``) and
``progressive_keep`` (ops kept per edge at each stage switch, one entry fewer, e.g. ``4``). The
epochs are split evenly over the stages. At a switch every edge keeps its ``keep`` ops with the
largest α among the ops it still has (``model.pruning`` → ``utils.prune``: the kept α keep
their values, the others are set to 0 and masked out), and the ops are widened from C/K_old to
C/K_new channels (``model.wider``; :mod:`.widen`): the new stage's supernet is built with the
new K and only the kept ops, and takes every weight of the finished one (grown ops: old channels
in place, new ones copies of random old channels), α, β, the BN statistics, the SGD momentum
buffers (grown alike, ``net2wider.configure_optimizer``) and the α optimiser's Adam state (the
reference keeps its architect). The weights' cosine learning rate runs on over all stages (the
reference loads the old scheduler's state into the new one), and α is frozen for the first
``arch_warmup_epochs`` of *each* stage (``if epoch >= 10`` on the stage's epoch counter).
Without ``progressive_k``, op pruning inside one supernet is the ``prune`` part
(:mod:`.pruning`) and partial channels the generic ``partial_channels`` option.

Reference settings: NAS-Bench-201 ``201-space/train_search.py`` defaults (100 epochs, batch 64,
N=5 × 16, SGD 0.025 → 0.001 cosine, momentum 0.9, decay 3e-4, clipping 5; α Adam 3e-4, betas
(0.5, 0.999), decay 1e-3; no partial channels, k=1); DARTS space ``DARTS-space/train_search.py``
(its 7 primitives without ``none``, 20 cells × 36, batch 64, SGD 0.1 → 0 cosine, decay 3e-4;
α Adam 6e-4, decay 1e-3, frozen for 10 epochs per stage; progressive K 6 → 4, 7 → 4 ops).

Deviations (one line each):
- the reference samples in its validation pass too; our validation uses the Dirichlet mean.
- the reference's new SGD after widening starts at the initial lr 0.1 (loading the scheduler's
  state does not set it), so its first stage-2 epoch trains at 0.1 instead of the cosine's 0.05
  (all of stage 2 near 2× the cosine with torch ≥ 1.4's recursive scheduler); ours stays on it.
- the reference keeps the pruned ops in the supernet (skipped, their weight is exactly 0);
  ours does not build them (the same numbers, less memory).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..config import SearchConfig
from ..errors import DiffnasError
from ..objectives import Objective
from ..spaces import Supernet
from .base import SearchMethod
from .parts import split_list
from .presets import register_method_presets
from .widen import grow, widen_state

REG_TYPES = ("l2", "kl")


def _ints(value: Any, name: str) -> list[int]:
    try:
        return [int(v) for v in split_list(value)]
    except ValueError:
        raise DiffnasError(f"drnas option {name}={value!r} must be a comma-separated list of "
                           "integers") from None


class DrNAS(SearchMethod):
    name = "drnas"
    paper = "DrNAS: Dirichlet Neural Architecture Search (Chen et al., ICLR 2021)"
    defaults: ClassVar[dict[str, Any]] = {
        "reg_type": "l2",
        "progressive_k": "",     # partial-channel K of each stage ("6,4"; empty: one stage)
        "progressive_keep": "",  # ops kept per edge at each stage switch ("4")
    }
    parts: ClassVar[dict[str, str]] = {"weighting": "dirichlet", "edges": "all",
                                       "derivation": "argmax", "regularisers": ""}

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``reg_type=kl`` adds the ``dirichlet_kl`` part to the regularisers."""
        reg = str(given.get("reg_type", cls.defaults["reg_type"]))
        if reg not in REG_TYPES:
            raise DiffnasError(f"method 'drnas' option reg_type={reg!r} is unknown; valid: "
                               f"{', '.join(REG_TYPES)}")
        regs = split_list(given.get("regularisers", cls.parts["regularisers"]))
        if reg == "kl" and "dirichlet_kl" not in regs:
            given = {**given, "regularisers": ",".join([*regs, "dirichlet_kl"])}
        return super().resolve_options(given)

    # -- progressive learning: stages -------------------------------------------------------------
    @classmethod
    def progression(cls, opts: dict[str, Any]) -> tuple[list[int], list[int]]:
        """(K per stage, ops kept at each switch) of ``progressive_k`` / ``progressive_keep``;
        ``([], [])`` without progressive learning."""
        ks = _ints(opts["progressive_k"], "progressive_k")
        keep = _ints(opts["progressive_keep"], "progressive_keep")
        if not ks and not keep:
            return [], []
        if len(ks) < 2 or len(keep) != len(ks) - 1:
            raise DiffnasError("drnas progressive learning needs progressive_k with one K per "
                               "stage (at least 2, e.g. 6,4) and progressive_keep with the ops "
                               "kept at each switch (one fewer, e.g. 4); got progressive_k="
                               f"{opts['progressive_k']!r}, progressive_keep="
                               f"{opts['progressive_keep']!r}")
        if min(ks) < 1 or any(b > a for a, b in zip(ks, ks[1:], strict=False)):
            raise DiffnasError(f"drnas progressive_k={opts['progressive_k']!r}: each K must be "
                               ">= 1 and no larger than the one before (widening: 6,4)")
        if min(keep) < 1 or any(b > a for a, b in zip(keep, keep[1:], strict=False)):
            raise DiffnasError(f"drnas progressive_keep={opts['progressive_keep']!r}: each count "
                               "must be >= 1 and no larger than the one before")
        if int(opts["partial_channels"]) not in (1, ks[0]):
            raise DiffnasError(f"drnas: partial_channels={opts['partial_channels']} and "
                               f"progressive_k={opts['progressive_k']!r} disagree; with "
                               "progressive learning set K per stage in progressive_k only")
        return ks, keep

    @classmethod
    def stage_epochs(cls, cfg: SearchConfig) -> list[int]:
        """One stage without ``progressive_k``, else ``cfg.epochs`` split evenly over its stages
        (the reference: 25 + 25)."""
        ks, _ = cls.progression(cls.resolve_options(cfg.method_args)[0])
        n = max(1, len(ks))
        if cfg.epochs < n:
            raise DiffnasError(f"drnas progressive_k has {n} stages, so it needs at least {n} "
                               f"epochs, got {cfg.epochs}")
        return [cfg.epochs // n + (1 if i >= n - cfg.epochs % n else 0) for i in range(n)]

    @classmethod
    def supernet_options(cls, cfg: SearchConfig) -> dict[str, Any]:
        """The first stage's K from ``progressive_k`` (later stages: :meth:`next_stage`)."""
        out = super().supernet_options(cfg)
        ks, _ = cls.progression(cls.resolve_options(cfg.method_args)[0])
        if ks:
            out.pop("partial_channels", None)
            if ks[0] != 1:
                out["partial_channels"] = ks[0]
        return out

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        super().__init__(cfg, supernet, objective, steps_per_epoch)
        if self.opts["reg_type"] == "kl":  # architect.py: weight_decay = 0 unless reg_type l2
            for g in self.a_opt.param_groups:
                g["weight_decay"] = 0.0
        ks, keep = self.progression(self.opts)
        if ks and any(p.name == "prune" for p in self.regularisers):
            raise DiffnasError("drnas: progressive_k prunes ops at its stage switches; the prune "
                               "part would prune again inside a stage; use one of the two")
        if keep and keep[0] > len(supernet.op_names):
            raise DiffnasError(f"drnas progressive_keep={self.opts['progressive_keep']!r} keeps "
                               f"more ops than an edge has ({len(supernet.op_names)})")

    def next_stage(self, stage: int) -> dict[str, Any]:
        """Stage ``stage``'s supernet: the next K, and per edge its ``keep`` ops with the largest
        α among those it has (``utils.prune``: top-k of the raw α; ties to the lower index)."""
        ks, keeps = self.progression(self.opts)
        keep = keeps[stage - 1]
        edge_ops: dict[str, list[list[int]]] = {}
        for kind, alpha in self.net.alphas.items():
            a, mask = alpha.detach(), self.net.op_mask(kind)
            rows = []
            for e in range(a.shape[0]):
                ops = [o for o in range(a.shape[1]) if mask is None or bool(mask[e, o])]
                if keep > len(ops):
                    raise DiffnasError(f"drnas progressive_keep {keep} at stage {stage + 1} is "
                                       f"more than the {len(ops)} ops an edge has")
                ranked = sorted(ops, key=lambda o: (-float(a[e, o]), o))
                rows.append(sorted(ranked[:keep]))
            edge_ops[kind] = rows
        return {"supernet": {"partial_channels": ks[stage], "edge_ops": edge_ops}}

    @torch.no_grad()
    def carry_over(self, previous: SearchMethod) -> None:
        """Everything of the finished stage, its ops widened to this stage's K (see the module
        docstring); the α of pruned ops are set to 0, as the reference's ``prune``."""
        plans = widen_state(previous.net, self.net)
        for kind, a in self.net.alphas.items():
            mask = self.net.op_mask(kind)
            if mask is not None:
                a.masked_fill_(~mask.to(a.device), 0.0)
        self.objective.load_state_dict(previous.objective.state_dict())
        self.a_opt.load_state_dict(previous.a_opt.state_dict())
        old = dict(previous.net.named_parameters())
        pairs = [(name, old[name], p) for name, p in self.net.named_parameters()]
        pairs += [("", a, b) for a, b in zip(
            [p for p in previous.objective.parameters() if p.requires_grad],
            [p for p in self.objective.parameters() if p.requires_grad], strict=True)]
        mine = {id(p) for p in self.w_params}
        for name, p_old, p in pairs:
            buf = previous.w_opt.state.get(p_old, {}).get("momentum_buffer")
            if id(p) in mine and buf is not None:
                self.w_opt.state[p] = {"momentum_buffer": grow(buf, plans.get(name, [])).clone()}

    def w_lr(self, epoch: int) -> float:
        """DARTS' cosine, over the whole search when it runs in stages (the reference's one
        scheduler over ``sum(train_epochs)``, carried across the switch)."""
        if self.search_epochs is None:
            return super().w_lr(epoch)
        c, t = self.cfg, (self.stage_start + epoch) / self.search_epochs
        return c.w_lr_min + 0.5 * (c.w_lr - c.w_lr_min) * (1 + math.cos(math.pi * t))


_REF: dict[str, Any] = dict(batch_size=64, w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0,
                            a_betas=(0.5, 0.999), a_weight_decay=1e-3)
register_method_presets(
    "drnas",
    darts=("DrNAS DARTS-space CIFAR-10 search (xiangning-chen/DrNAS DARTS-space/train_search.py): "
           "progressive, 2 stages × 25 epochs: partial channels K=6, then the 7 ops (no none) "
           "pruned to 4 per edge and widened to K=4; α frozen for the first 10 epochs of each "
           "stage; batch 64, 20 cells × 36, SGD 0.1 → 0 cosine over both stages, α Adam 6e-4",
           {**_REF, "epochs": 50, "channels": 36, "layers": 20, "w_lr": 0.1, "w_lr_min": 0.0,
            "a_lr": 6e-4, "method_args": {"drop_none": True, "progressive_k": "6,4",
                                          "progressive_keep": "4", "arch_warmup_epochs": 10}}),
    nb201=("DrNAS NAS-Bench-201 CIFAR-10 search (xiangning-chen/DrNAS 201-space/train_search.py): "
           "100 epochs, batch 64, N=5 × 16, SGD 0.025 → 0.001, α Adam 3e-4 with decay 1e-3 (its "
           "l2 regulariser)",
           {**_REF, "epochs": 100, "w_lr": 0.025, "w_lr_min": 0.001, "a_lr": 3e-4}),
    cpu=(", but K=4 then 2 (6 does not divide the 8-channel cells), 2 stages of 2 epochs, α "
         "frozen for the first epoch of each",
         {"method_args": {"drop_none": True, "progressive_k": "4,2", "progressive_keep": "4",
                          "arch_warmup_epochs": 1}}),
)
