"""Weighting / sampling parts: how the α of an edge become its op weights.

Every part gives ``weights(α)`` (deterministic: derivation, logging, evaluation) and
``sample(α)`` (what a training forward uses; a fresh draw per forward for the stochastic
ones, from torch's global generator, which the search loop re-seeds every epoch).

- ``softmax``: DARTS (Liu et al., ICLR 2019) Eq. (2).
- ``sigmoid``: FairDARTS (Chu et al., ECCV 2020): each op's weight σ(α_o) on its own, so
  ops do not compete ("no exclusive competition").
- ``relu``: STC-NAS (Neurocomputing 2022) Eq. (3): ReLU(α_o).
- ``gumbel``: Gumbel-softmax of softmax(α): GDAS (Dong & Yang, CVPR 2019) and SNAS (Xie et
  al., ICLR 2019); the sample is ``softmax((log softmax(α) + g) / τ)``,
  g ~ Gumbel(0, 1). With ``edges=one`` its argmax is the Gumbel-max draw and the edge runs
  that op with a straight-through weight (GDAS' hard sample); with ``edges=all`` every op is
  weighted by the soft sample (SNAS). τ follows a per-epoch schedule from ``tau_max`` to
  ``tau_min``: ``linear`` is τ_e = τ_max − (τ_max − τ_min)·e/(E − 1), GDAS'
  (AutoDL-Projects exps/NAS-Bench-201-algos/GDAS.py) and, up to a one-epoch shift, SNAS'
  (SNAS-Series SNAS/utils.py ``Temp_Scheduler``); ``exp`` is the geometric alternative
  τ_e = τ_max·(τ_min/τ_max)^{e/(E − 1)}.
- ``dirichlet``: DrNAS (Chen et al., ICLR 2021): θ ~ Dir(β), β = ELU(α) + 1,
  sampled with the pathwise (implicit reparameterisation) gradient ``rsample``; ``weights``
  is the mean β / Σβ, whose argmax is that of α (the reference derives from softmax(α):
  the same argmax).

Equation numbers are given where they were checked against the paper (DARTS, STC-NAS); for
the others the formula is written out with the reference file it was read from
(FairDARTS ``fairdarts/model_search.py``: ``F.sigmoid(alphas)``; GDAS
``xautodl/models/cell_searchs/search_model_gdas.py``; SNAS ``SNAS/model_search.py
_get_categ_mask``; DrNAS ``utils.py process_step_vector``).

Deviation: the GDAS and DrNAS reference forwards sample in evaluation too; here evaluation
(``net.eval()``) uses the deterministic ``weights``, so the loop's validation accuracy is that
of the expected architecture, not of one draw.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DiffnasError
from .parts import Weighting, register_part


@register_part
class Softmax(Weighting):
    name = "softmax"
    paper = "DARTS (Liu et al., ICLR 2019) Eq. (2): softmax over the ops of an edge"

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return F.softmax(alpha, dim=-1)


@register_part
class Sigmoid(Weighting):
    name = "sigmoid"
    paper = "FairDARTS (Chu et al., ECCV 2020): independent sigmoid σ(α) per op"

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(alpha)


@register_part
class ReLU(Weighting):
    name = "relu"
    paper = "STC-NAS (Neurocomputing 2022) Eq. (3): ReLU(α) per op"

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        # derivative 1 at 0, as STC-NAS (methods/stc.py): an α projected onto 0 can come back
        return alpha.clamp_min(0.0)


TAU_SCHEDULES = ("linear", "exp")


@register_part
class Gumbel(Weighting):
    name = "gumbel"
    paper = ("GDAS (Dong & Yang, CVPR 2019), SNAS (Xie et al., ICLR 2019): "
             "Gumbel-softmax sample of softmax(α) at temperature τ, annealed per epoch")
    options = {"tau_max": 10.0, "tau_min": 0.1, "tau_schedule": "linear"}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        hi, lo = float(self.opts["tau_max"]), float(self.opts["tau_min"])
        if not (hi > 0 and lo > 0):
            raise DiffnasError(f"tau_max and tau_min must be > 0, got {hi} and {lo}")
        if self.opts["tau_schedule"] not in TAU_SCHEDULES:
            raise DiffnasError(f"tau_schedule {self.opts['tau_schedule']!r} is unknown; valid: "
                               f"{', '.join(TAU_SCHEDULES)}")
        self.tau = hi

    def tau_at(self, epoch: int) -> float:
        """τ of epoch ``epoch`` (0-based) of ``epochs``: τ_max at the first, τ_min at the last."""
        hi, lo = float(self.opts["tau_max"]), float(self.opts["tau_min"])
        t = epoch / max(1, self.method.cfg.epochs - 1)
        if self.opts["tau_schedule"] == "exp":
            return hi * math.exp(t * math.log(lo / hi))
        return hi - (hi - lo) * t

    def begin_epoch(self, epoch: int) -> None:
        self.tau = self.tau_at(epoch)

    def stats(self) -> dict[str, float]:
        return {"tau": self.tau}

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return F.softmax(alpha, dim=-1)

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(alpha, dim=-1)
        for _ in range(100):  # as GDAS' reference: redraw the (vanishingly rare) infinite noise
            with torch.no_grad():
                g = -torch.empty_like(alpha).exponential_().log()
            probs = F.softmax((logp + g) / self.tau, dim=-1)
            if torch.isfinite(g).all() and torch.isfinite(probs).all():
                return probs
        raise DiffnasError(f"Gumbel sampling gave non-finite weights 100 times (τ = {self.tau}); "
                           "try a larger tau_min")


@register_part
class Dirichlet(Weighting):
    name = "dirichlet"
    paper = ("DrNAS (Chen et al., ICLR 2021): θ ~ Dir(ELU(α) + 1), pathwise "
             "gradient (rsample)")

    @staticmethod
    def concentration(alpha: torch.Tensor) -> torch.Tensor:
        """β = ELU(α) + 1 > 0, the Dirichlet concentration (DrNAS ``process_step_vector``)."""
        return F.elu(alpha) + 1.0

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        beta = self.concentration(alpha)
        return beta / beta.sum(dim=-1, keepdim=True)

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Dirichlet(self.concentration(alpha)).rsample()
