"""FairDARTS (Chu, Zhou, Zhang & Li, "Fair DARTS: Eliminating Unfair Advantages in
Differentiable Architecture Search", ECCV 2020; reference xiaomi-automl/FairDARTS, directory
``fairdarts``).

Parts: ``weighting=sigmoid`` (each op weighted by σ(α_o) independently: no exclusive
competition, so skip connections lose their unfair advantage), no ``none`` op
(``drop_none``: the reference's PRIMITIVES lack it), ``regularisers=zero_one`` (helper R's
part: L_01 = −mean (σ(α) − 0.5)², weight w = 10, added to the α loss; ``separate_loss.py
ConvSeparateLoss``) and ``derivation=threshold`` (``parse_method=threshold_sparse``: per node
the two strongest edges, an op kept only if σ(α) ≥ 0.85).

Reference settings (``fairdarts/train_search.py`` defaults): 50 epochs, batch 128, 8 cells × 16,
SGD 0.005 → 0.001 cosine, momentum 0.9, decay 3e-4, clipping 5, train portion 0.5; α Adam 3e-3,
betas (0.9, 0.999), decay 1e-3; bilevel (``--single_level`` is an option there and here).

Deviations (one line each):
- α starts at exactly 0 there (σ = 0.5); here at N(0, 1e-3²), as every supernet here.
- the DARTS-space genotype format needs two inputs per node, so sub-threshold edges are kept
  and counted (``below_threshold``); see :mod:`.derivation`.
- the NAS-Bench-201 preset is ours (FairDARTS has no NAS-Bench-201 run): its DARTS-space
  settings; a sub-threshold edge becomes ``none`` there unless the cell would be disconnected.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import SearchMethod
from .presets import register_method_presets


class FairDARTS(SearchMethod):
    name = "fairdarts"
    paper = ("Fair DARTS: Eliminating Unfair Advantages in Differentiable Architecture Search "
             "(Chu et al., ECCV 2020)")
    parts: ClassVar[dict[str, str]] = {"weighting": "sigmoid", "edges": "all",
                                       "derivation": "threshold", "regularisers": "zero_one"}
    part_options: ClassVar[dict[str, Any]] = {"drop_none": True, "zero_one_weight": 10.0,
                                              "zero_one_norm": "l2", "op_threshold": 0.85}


_REF: dict[str, Any] = dict(epochs=50, batch_size=128, w_lr=0.005, w_lr_min=0.001,
                            w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0, a_lr=3e-3,
                            a_betas=(0.9, 0.999), a_weight_decay=1e-3)
register_method_presets(
    "fairdarts",
    darts=("FairDARTS DARTS-space CIFAR-10 search (xiaomi-automl/FairDARTS fairdarts/"
           "train_search.py): 50 epochs, batch 128, 8 cells × 16, SGD 0.005 (decay 3e-4), α Adam "
           "3e-3 betas (0.9, 0.999), zero-one loss w=10, threshold 0.85",
           {**_REF, "channels": 16, "layers": 8}),
    nb201=("FairDARTS in NAS-Bench-201 on CIFAR-10 (not in the reference: its DARTS-space "
           "settings): 50 epochs, batch 128, N=5 × 16, zero-one w=10, threshold 0.85",
           dict(_REF)),
)
