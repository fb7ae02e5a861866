"""Edge-computation parts: which ops an edge computes, with which weights.

- ``all``: every op of the edge, weighted (DARTS Eq. 2 and every relaxation of it); ``none``
  is skipped, which changes neither the output nor any gradient (it outputs zeros).
- ``one``: one op per edge (GDAS, Dong & Yang, CVPR 2019; SNAS' hard variant):
  the op ``k = argmax_o w_o`` of the weighting's sample w (with ``weighting=gumbel`` the
  Gumbel-max draw), and only that op is computed. Its weight is the straight-through
  ``h_k = 1 − sg(w_k) + w_k``: the forward value is exactly 1, the backward is ∂w_k/∂α, which
  for softmax-type weightings reaches every α of the edge. An edge that draws ``none``
  computes nothing, and its α get no gradient from that forward.

Deviation: GDAS' reference forward (AutoDL-Projects ``forward_gdas``) also adds the other ops'
hard weights h_o (value 0) to the edge output, which adds Σ∂L/∂y to their gradients; we add
nothing, so ∂L/∂α_j = ⟨∂L/∂y, op_k(x)⟩·∂w_k/∂α_j (the straight-through estimator as such).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..spaces.base import EdgeWeights
from .parts import EdgeComputation, register_part

if TYPE_CHECKING:
    from ..spaces import Supernet


@register_part
class AllOps(EdgeComputation):
    name = "all"
    paper = "DARTS (Liu et al., ICLR 2019) Eq. (2): every op of an edge, weighted"

    def policy(self, supernet: Supernet, kind: str, weights: torch.Tensor) -> EdgeWeights:
        return EdgeWeights(weights, supernet.useful_ops(kind))


def straight_through_one_hot(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the argmax index and the straight-through one-hot ``onehot − sg(w) + w`` (value
    exactly one-hot, gradient that of ``w``)."""
    index = weights.detach().argmax(dim=-1)
    one_hot = F.one_hot(index, weights.shape[-1]).to(weights.dtype)
    return index, one_hot - weights.detach() + weights


@register_part
class OneOp(EdgeComputation):
    name = "one"
    paper = ("GDAS (Dong & Yang, CVPR 2019): one op per edge, the argmax of the "
             "sample, straight-through weight; only that op is computed")

    def policy(self, supernet: Supernet, kind: str, weights: torch.Tensor) -> EdgeWeights:
        index, hard = straight_through_one_hot(weights)
        names = supernet.op_names
        active = [() if names[i] == "none" else (i,) for i in index.tolist()]
        return EdgeWeights(hard, active)
