"""Op pruning as a part (``--opt regularisers=prune``): DrNAS' progressive scheme (Chen et al.,
ICLR 2021, §3.3; reference xiangning-chen/DrNAS ``utils.py prune`` and the ``mask`` of
``process_step_vector``), usable with any part-built method.

At the start of epoch ``prune_epoch`` every edge keeps the ``prune_keep`` ops with the largest
α; the α of the others are set to 0 (the kept ones keep their values, as the reference's
``prune``) and masked out: from then on each edge's op weights, sampled or deterministic, are
zero on pruned ops and renormalised over the kept ones, so derivation never picks a pruned op.
Pruned ops stay in the supernet and are still computed, with weight exactly 0. DrNAS' full
progressive scheme (pruning at a stage switch together with the widening of the partial
channels, K 6 → 4) is the drnas option ``progressive_k`` (:mod:`.drnas`), which prunes the same
way but builds the next stage's supernet without the pruned ops.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import DiffnasError
from .parts import Part, register_part


@register_part
class Prune(Part):
    slot = "regularisers"
    name = "prune"
    paper = ("DrNAS (Chen et al., ICLR 2021) progressive learning: at epoch prune_epoch keep "
             "the prune_keep largest α per edge, renormalise over them")
    options = {"prune_epoch": 1, "prune_keep": 4}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        self.epoch, self.keep = int(self.opts["prune_epoch"]), int(self.opts["prune_keep"])
        n_ops = len(method.net.op_names)
        if self.epoch < 0 or not 1 <= self.keep <= n_ops:
            raise DiffnasError(f"prune_epoch must be >= 0 and prune_keep in 1..{n_ops} (the ops "
                               f"of an edge), got {self.epoch} and {self.keep}")
        self.mask: dict[str, torch.Tensor] | None = None

    def begin_epoch(self, epoch: int) -> None:
        if epoch >= self.epoch and self.mask is None:
            self.prune()

    @torch.no_grad()
    def prune(self) -> None:
        self.mask = {}
        for kind, a in self.method.net.alphas.items():
            top = a.topk(self.keep, dim=-1)
            self.mask[kind] = torch.zeros_like(a, dtype=torch.bool).scatter_(1, top.indices, True)
            a.copy_(torch.zeros_like(a).scatter_(1, top.indices, top.values))

    def restrict(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return weights
        w = weights * self.mask[kind].to(weights.device)
        return w / w.sum(dim=-1, keepdim=True)

    def stats(self) -> dict[str, float]:
        return {"pruned": float(self.mask is not None)}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.mask is None else {"mask": dict(self.mask)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask = dict(state["mask"]) if "mask" in state else None
