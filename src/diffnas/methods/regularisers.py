"""Regularisers on the architecture parameters, and the schedules of their coefficients.

Pure functions of α (or of the method's op weights): each takes the per-cell-kind tensors
(``[edges, ops]``) and returns a scalar tensor that carries gradient to them. The parts that
add them to a method's losses live in :mod:`diffnas.methods.parts_reg`.

The formulas follow the reference code of each paper (the equation numbers of the papers
could not be checked against their text here, so the comments name the term instead):

* β-DARTS (Ye et al., CVPR 2022; Sunshine-Ye/Beta-DARTS ``optimizers/darts/architect.py``
  ``mlc_loss``): the Beta-Decay loss, the mean over edges of ``logsumexp(α_e)``;
  coefficient ``λ(epoch) = 50 · epoch / 100`` (hard-coded; 0-based epochs).
* FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS ``fairdarts/separate_loss.py``):
  the zero-one loss ``−mean((σ(α) − 0.5)²)`` over every (edge, op) of both cell kinds
  (``ConvSeparateLoss``, the default ``--sep_loss l2``) or ``−mean|σ(α) − 0.5|``
  (``TriSeparateLoss``), weight 10.
* DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS ``model_search.py`` ``_get_kl_reg``):
  ``Σ_e KL(Dir(ELU(α_e) + 1) ‖ Dir(1))``; its ``l2`` variant is Adam's weight decay on α.
* CDARTS (Yu et al., 2022) Eq. (11): ``‖α_skip‖₁`` on the raw α of chosen ops.
* DARTS- (Chu et al., ICLR 2021; Meituan-AutoML/DARTS- ``src/utils.py`` ``DecayScheduler``):
  the auxiliary-skip coefficient ``β(epoch) = β₀ · (T − epoch) / T`` ("linear").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence


def _rows(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """All edges of all cell kinds as one ``[edges, ops]`` tensor."""
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], dim=0)


def beta_decay(alphas: Iterable[torch.Tensor]) -> torch.Tensor:
    """β-DARTS' Beta-Decay loss: mean over every edge (of every cell kind) of logsumexp(α_e).

    Its gradient w.r.t. α_e is softmax(α_e), so it pulls the α of strong ops down hardest and
    keeps the softmaxed weights from running away (β-DARTS §3). The reference applies it to
    NAS-Bench-201's single ``[6, 5]`` α; with two cell kinds (DARTS) we average over all 28
    edges, which gives every edge the same weight as there.
    """
    return torch.logsumexp(_rows(alphas), dim=-1).mean()


def linear_ramp(epoch: int, peak: float, span: int) -> float:
    """``peak · epoch / span`` (0-based ``epoch``): β-DARTS' λ schedule, ``50 · epoch / 100``
    in the reference, which reaches 49.5 in the last of its 100 NAS-Bench-201 epochs."""
    return peak * epoch / max(1, span)


def zero_one_loss(weights: Iterable[torch.Tensor], norm: str = "l2") -> torch.Tensor:
    """FairDARTS' zero-one loss on the op weights (σ(α) in FairDARTS): ``−mean((w − ½)²)``
    (``norm="l2"``) or ``−mean|w − ½|`` (``"l1"``) over every (edge, op); it is smallest when
    every weight sits at 0 or 1."""
    w = _rows(weights)
    half = torch.full_like(w, 0.5)
    if norm == "l2":
        return -F.mse_loss(w, half)
    if norm == "l1":
        return -F.l1_loss(w, half)
    raise ValueError(f"zero-one loss norm must be l1 or l2, got {norm!r}")


def dirichlet_kl(alphas: Iterable[torch.Tensor], prior: float = 1.0) -> torch.Tensor:
    """DrNAS' KL regulariser: Σ over edges of KL(Dir(ELU(α_e) + 1) ‖ Dir(prior · 1))."""
    conc = F.elu(_rows(alphas)) + 1
    return kl_divergence(Dirichlet(conc), Dirichlet(torch.full_like(conc, prior))).sum()


def l2_anchor(alphas: Iterable[torch.Tensor]) -> torch.Tensor:
    """½‖α‖²: its gradient α is what Adam's (coupled) ``weight_decay`` adds, DrNAS' ``l2``."""
    return 0.5 * _rows(alphas).pow(2).sum()


def l1_on_ops(alphas: Iterable[torch.Tensor], index: Sequence[int]) -> torch.Tensor:
    """‖α_op‖₁ over the op columns ``index`` of every cell kind (CDARTS Eq. 11 on skip)."""
    rows = _rows(alphas)
    if not index:
        return rows.new_zeros(())
    return rows[:, list(index)].abs().sum()


def linear_decay(epoch: int, start: float, span: int) -> float:
    """DARTS-' β_skip: ``start · (span − epoch) / span`` for ``epoch ≤ span``, then held (the
    reference's ``DecayScheduler(decay_type="linear")`` with T_start 0, T_stop = T_max =
    span). Over 50 epochs it runs 1, 0.98, ..., 0.02: zero would come at epoch 50, which is
    never trained."""
    span = max(1, span)
    return start * (span - min(epoch, span)) / span
