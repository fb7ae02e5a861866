"""GDAS (Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR
2019; reference D-X-Y/AutoDL-Projects): a differentiable architecture *sampler*.

Parts: ``weighting=gumbel`` + ``edges=one``. Per forward and edge, g ~ Gumbel(0, 1),
w = softmax((log softmax(α) + g)/τ), k = argmax w (a Gumbel-max draw from softmax(α)); the
edge computes op k only, weighted by the straight-through h_k = 1 − sg(w_k) + w_k, so every
α of the edge gets a gradient while one op runs. τ decays linearly from 10 to 0.1 over the
epochs (τ_e = 10 − 9.9·e/(E − 1)). Derivation: the space's argmax rule on softmax(α).

Reference settings (checked in AutoDL-Projects; sources in the preset descriptions):
``scripts-search/NAS-Bench-201-algos/GDAS.sh`` + ``configs/nas-benchmark/algos/GDAS.config``
(NAS-Bench-201: 250 epochs, batch 64, Nesterov SGD 0.025 → 0.001 cosine, momentum 0.9, decay
5e-4; α Adam 3e-4, betas (0.5, 0.999), decay 1e-3; τ 10 → 0.1; N=5, C=16),
``scripts-search/NASNet-space-search-by-GDAS.sh`` + ``configs/search-opts/GDAS-NASNet-CIFAR
.config`` + ``configs/search-archs/GDAS-NASNet-CIFAR.config`` (DARTS space: the same but batch
256, C=16, N=2 cells per stage = 8 cells); ``exps/NAS-Bench-201-algos/GDAS.py`` (w step then α
step, each on its own batch; gradient clipping 5).

Deviations (one line each):
- the reference adds the unchosen ops' zero-valued hard weights to the edge output (extra α
  gradient Σ∂L/∂y); we do not (see :mod:`.edges`), so α's gradient is the plain straight-through.
- the reference anneals the learning rate per iteration; the loop steps it per epoch.
- the reference samples in its validation pass too; our validation uses argmax softmax(α).
- every batch norm uses batch statistics in evaluation too (``bn_batch_stats``); the reference's
  NB201 run (GDAS.sh, BN=0) does so in the cells only, and tracks elsewhere, but it also samples
  when validating; averages over drawn ops misfit the argmax cell ours runs (val acc at chance).
- GDAS' FRC variant (a fixed hand-designed reduction cell) is not built; both cells are searched
  as in ``GDAS-NASNet-CIFAR.config``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import SearchMethod
from .presets import register_method_presets


class GDAS(SearchMethod):
    name = "gdas"
    paper = "Searching for A Robust Neural Architecture in Four GPU Hours (Dong & Yang, CVPR 2019)"
    parts: ClassVar[dict[str, str]] = {"weighting": "gumbel", "edges": "one",
                                       "derivation": "argmax", "regularisers": ""}
    part_options: ClassVar[dict[str, Any]] = {"tau_max": 10.0, "tau_min": 0.1,
                                              "tau_schedule": "linear", "w_first": True,
                                              "nesterov": True, "bn_batch_stats": True}


_OPT: dict[str, Any] = dict(w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=5e-4,
                            grad_clip=5.0, a_lr=3e-4, a_betas=(0.5, 0.999), a_weight_decay=1e-3,
                            epochs=250)
register_method_presets(
    "gdas",
    darts=("GDAS DARTS-space CIFAR-10 search (AutoDL-Projects NASNet-space-search-by-GDAS.sh, "
           "GDAS-NASNet-CIFAR configs): 250 epochs, batch 256, 8 cells × 16, Nesterov SGD 0.025 "
           "(decay 5e-4), α Adam 3e-4, τ 10 → 0.1",
           {**_OPT, "batch_size": 256, "channels": 16, "layers": 8}),
    nb201=("GDAS NAS-Bench-201 CIFAR-10 search (AutoDL-Projects NAS-Bench-201-algos/GDAS.sh, "
           "GDAS.config): 250 epochs, batch 64, N=5 × 16, Nesterov SGD 0.025 (decay 5e-4), α Adam "
           "3e-4, τ 10 → 0.1",
           {**_OPT, "batch_size": 64}),
)
