"""Regularisers on the architecture parameters, and the schedules of their coefficients.

Pure functions of α (or of the method's op weights): each takes the per-cell-kind tensors
(``[edges, ops]``) and returns a scalar tensor that carries gradient to them. Below them, the
parts (``--opt regularisers=NAME[,NAME...]``, :mod:`diffnas.methods.parts`) that add them to
any method's α loss, and DARTS-' auxiliary skip.

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
  ``Σ_e KL(Dir(ELU(α_e) + 1) ‖ Dir(1))``; its ``l2`` variant (the default) is no term but
  Adam's weight decay on α, ``reg_scale`` = 1e-3, which is the config's ``a_weight_decay``.
* CDARTS (Yu, Peng et al., IEEE TPAMI 2023) Eq. (11): ``‖α_skip‖₁`` on the raw α of chosen ops.
* DARTS- (Chu et al., ICLR 2021; Meituan-AutoML/DARTS- ``src/utils.py`` ``DecayScheduler``):
  the auxiliary-skip coefficient ``β(epoch) = β₀ · (T − epoch) / T`` ("linear").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from ..errors import DiffnasError
from .parts import Part, register_part


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


# ------------------------------------------------------------------------------------ parts
def choice_option(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` of option ``name`` if it is one of ``valid``, else a one-line error."""
    if value not in valid:
        raise DiffnasError(f"option {name}={value!r} is unknown; valid: {', '.join(valid)}")
    return str(value)


def _span(part: Part, key: str) -> int:
    """The part's option ``key`` in epochs; 0 means the run's epochs."""
    return int(part.opts[key]) or part.method.cfg.epochs


def _non_negative(opts: dict[str, Any], *names: str) -> None:
    for n in names:
        if float(opts[n]) < 0:
            raise DiffnasError(f"option {n} must be >= 0, got {opts[n]}")


class AlphaTerm(Part):
    """A regulariser on α, added to the α step's loss with a coefficient of the epoch."""

    slot = "regularisers"
    term = ""  # the logged name (``arch_<term>``)

    def coefficient(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def arch_terms(self, batch: Any, out: Any) -> dict[str, torch.Tensor]:
        return {self.term: self.coefficient(self.method.epoch) * self.value()}


@register_part
class BetaDecay(AlphaTerm):
    name = term = "beta_decay"
    paper = ("β-DARTS (Ye et al., CVPR 2022): λ·mean_e logsumexp(α_e), λ rising linearly from 0 "
             "to beta_decay_weight over beta_decay_span epochs (0: the run's)")
    options = {"beta_decay_weight": 50.0, "beta_decay_span": 0}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        _non_negative(self.opts, "beta_decay_weight", "beta_decay_span")

    def coefficient(self, epoch: int) -> float:
        return linear_ramp(epoch, float(self.opts["beta_decay_weight"]),
                           _span(self, "beta_decay_span"))

    def value(self) -> torch.Tensor:
        return beta_decay(self.method.net.alphas.values())

    def stats(self) -> dict[str, float]:
        return {"beta_decay_lambda": self.coefficient(self.method.epoch)}


@register_part
class ZeroOne(AlphaTerm):
    name = term = "zero_one"
    paper = ("FairDARTS (Chu et al., ECCV 2020): zero_one_weight · zero-one loss, "
             "−mean((w − ½)²) (l2) or −mean|w − ½| (l1) of the method's op weights (σ(α) there)")
    options = {"zero_one_weight": 10.0, "zero_one_norm": "l2"}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        _non_negative(self.opts, "zero_one_weight")
        self.norm = choice_option("zero_one_norm", self.opts["zero_one_norm"], ("l1", "l2"))

    def coefficient(self, epoch: int) -> float:
        return float(self.opts["zero_one_weight"])

    def value(self) -> torch.Tensor:
        m = self.method
        return zero_one_loss([m.edge_weights(a) for a in m.net.alphas.values()], self.norm)


@register_part
class DirichletKL(AlphaTerm):
    name = term = "dirichlet_kl"
    paper = ("DrNAS (Chen et al., ICLR 2021): dirichlet_kl_scale · Σ_e KL(Dir(ELU(α_e)+1) ‖ "
             "Dir(1)) (its reg_type=kl; the reference then sets Adam's weight decay on α to 0)")
    options = {"dirichlet_kl_scale": 1e-3}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        _non_negative(self.opts, "dirichlet_kl_scale")

    def coefficient(self, epoch: int) -> float:
        return float(self.opts["dirichlet_kl_scale"])

    def value(self) -> torch.Tensor:
        return dirichlet_kl(self.method.net.alphas.values())


@register_part
class L1Skip(AlphaTerm):
    name = term = "l1_skip"
    paper = ("CDARTS (Yu, Peng et al., TPAMI 2023) Eq. (11): λ'·‖α_op‖₁ on the raw α of "
             "l1_skip_ops, λ' decaying linearly from l1_skip_weight to 0 over l1_skip_ratio of "
             "the epochs")
    options = {"l1_skip_weight": 5.0, "l1_skip_ratio": 2 / 3, "l1_skip_ops": "skip_connect"}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        _non_negative(self.opts, "l1_skip_weight")
        ratio = float(self.opts["l1_skip_ratio"])
        if ratio <= 0:
            raise DiffnasError(f"option l1_skip_ratio must be > 0, got {ratio}")
        names = method.net.op_names
        ops = [s.strip() for s in str(self.opts["l1_skip_ops"]).split(",") if s.strip()]
        for op in ops:
            if op not in names:
                raise DiffnasError(f"option l1_skip_ops names {op!r}, which is not an op of this "
                                   f"supernet; valid: {', '.join(names)}")
        self.index = [names.index(op) for op in ops]

    def coefficient(self, epoch: int) -> float:
        from .cdarts import l1_schedule  # lazy: cdarts imports the method base

        return l1_schedule(epoch, self.method.cfg.epochs, float(self.opts["l1_skip_weight"]),
                           float(self.opts["l1_skip_ratio"]))

    def value(self) -> torch.Tensor:
        return l1_on_ops(self.method.net.alphas.values(), self.index)


@register_part
class AuxSkip(Part):
    """DARTS-' auxiliary skip: every edge also adds β_skip · skip(x), outside the op weights
    (the supernet side is :meth:`diffnas.spaces.base.Supernet.add_aux_skip`)."""

    slot = "regularisers"
    name = "aux_skip"
    paper = ("DARTS- (Chu et al., ICLR 2021): an auxiliary skip per edge scaled by β_skip, "
             "decaying linearly from aux_skip_beta to 0 over aux_skip_span epochs (0: the run's)")
    options = {"aux_skip_beta": 1.0, "aux_skip_span": 0}

    @classmethod
    def supernet_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        return {"aux_skip": True}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        _non_negative(self.opts, "aux_skip_beta", "aux_skip_span")
        if not any(e.aux is not None for e in method.net.mixed_edges()):
            raise DiffnasError("the aux_skip part needs a supernet built with aux_skip=True "
                               "(build it with the method's supernet_options)")
        self.beta = float(self.opts["aux_skip_beta"])
        method.net.set_aux_scale(self.beta)

    def begin_epoch(self, epoch: int) -> None:
        self.beta = linear_decay(epoch, float(self.opts["aux_skip_beta"]),
                                 _span(self, "aux_skip_span"))
        self.method.net.set_aux_scale(self.beta)

    def stats(self) -> dict[str, float]:
        return {"beta_skip": self.beta}
