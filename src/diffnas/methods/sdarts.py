"""SDARTS (Chen & Hsieh, "Stabilizing Differentiable Architecture Search via
Perturbation-based Regularization", ICML 2020; code: xiangning-chen/SmoothDARTS).

First-order DARTS whose weight step runs on perturbed op weights softmax(α) + δ, mapped back
onto the simplex, with ‖δ‖∞ ≤ ε and ε = 0.03 + (0.3 − 0.03)·epoch/epochs (the part
``regularisers=sdarts``, :mod:`diffnas.methods.perturb`, where the deviations are listed):

* ``sdarts-rs`` (random smoothing, ``--perturb_alpha random``): δ ~ U[−ε, ε];
* ``sdarts-adv`` (adversarial, ``--perturb_alpha pgd_linf``): δ from a 7-step L∞ PGD attack
  (random start, step 2ε/7) on the weight-step loss; kept only if it raises that loss.

The α step and evaluation use the unperturbed softmax(α). Any method takes the perturbation:
``--opt regularisers=sdarts,sdarts_mode=adv``.

Presets (both follow the reference's argparse defaults, which its README commands use):

* ``sdarts-{rs,adv}-cifar10`` (``sota/cnn/train_search.py``, DARTS space ``s5``): 50 epochs,
  batch 64, SGD 0.025 → 0.001 cosine, momentum 0.9, wd 3e-4, grad clip 5, Adam 3e-4 (betas
  0.5, 0.999; wd 1e-3), 8 cells, 16 channels, 50/50 split, ε_max 0.3;
* ``sdarts-{rs,adv}-nb201-cifar10`` (``nasbench201/train_search.py``): the same optimisers,
  100 epochs, N = 5 cells per stage, 16 channels, ε_max 0.3;
* ``sdarts-{rs,adv}-cpu`` / ``-nb201-cpu``: the ``cpu`` / ``nb201-cpu`` data, network and
  epochs with these optimisers (ADV costs about 4× a DARTS step: 7 extra forward-backward
  passes and 2 forwards per step).
"""

from __future__ import annotations

from typing import Any

from .base import SearchMethod
from .betadarts import REFERENCE_STEP
from .presets import register_method_presets


class SDARTSRS(SearchMethod):
    name = "sdarts-rs"
    paper = ("SDARTS-RS: Stabilizing Differentiable Architecture Search via Perturbation-based "
             "Regularization (Chen & Hsieh, ICML 2020)")
    parts = {**SearchMethod.parts, "regularisers": "sdarts"}
    part_options: dict[str, Any] = {"sdarts_mode": "rs", "sdarts_eps": 0.3,
                                    "sdarts_eps_min": 0.03}


class SDARTSADV(SDARTSRS):
    name = "sdarts-adv"
    paper = SDARTSRS.paper.replace("SDARTS-RS", "SDARTS-ADV")
    part_options = {**SDARTSRS.part_options, "sdarts_mode": "adv", "sdarts_steps": 7}


for _cls, _how in ((SDARTSRS, "uniform δ"), (SDARTSADV, "7-step L∞ PGD δ, step 2ε/7")):
    register_method_presets(
        _cls.name,
        darts=(f"{_cls.name.upper()} CIFAR-10 search in the DARTS space (reference sota/cnn/"
               f"train_search.py): 50 epochs, batch 64, 8 cells × 16, SGD 0.025→0.001, wd 3e-4, "
               f"Adam 3e-4 (wd 1e-3), {_how}, ε 0.03→0.3",
               {**REFERENCE_STEP, "epochs": 50, "channels": 16, "layers": 8}),
        nb201=(f"{_cls.name.upper()} NAS-Bench-201 CIFAR-10 search (reference nasbench201/"
               f"train_search.py): 100 epochs, batch 64, N=5 × 16, SGD 0.025→0.001, wd 3e-4, "
               f"Adam 3e-4 (wd 1e-3), {_how}, ε 0.03→0.3",
               {**REFERENCE_STEP, "epochs": 100}),
    )
