"""Semantic-DARTS (Guo et al., "Semantic-DARTS: Elevating Semantic Learning for Mobile
Differentiable Architecture Search", IEEE Internet of Things Journal, 2025).

DARTS whose search loss is the masked-image-modelling objective
(:mod:`diffnas.objectives.mim`): L = L_cls + λ·L_msk with λ = L_cls / L_msk (Eq. 7), on
masked images in both the architecture step (a masked val batch) and the weight step (a
masked train batch), first or second order as in DARTS (Algorithm 1); the genotype is
derived as in DARTS. Everything else is DARTS, so the method is only its default
objective: ``--objective`` swaps it (``--objective ce`` is plain DARTS), and the MIM
objective composes with any other method (``--method stc --objective mim``).

Presets (search settings as in DARTS §3.1.1, which the reference ``train_search.py`` keeps:
50 epochs, batch 64, 8 cells × 16 channels, first order; its ``Architect`` has no second
order). The paper presets use what the reference code did for the published genotypes
(its ``genotypes.py`` names them ``cls_maskv1c10seed*r6p8`` and ``cls_maskv1c100seed*r7p8``):
the reference decoder, masked patches filled with 1.0 in normalised space, N − ⌊N·(1−r)⌋
patches masked (see :mod:`diffnas.objectives.mim`; ``--obj-opt fill=0`` and
``--obj-opt rounding=nearest`` give the paper text's reading):

* ``semantic-cifar10``: patch 8, masking ratio 0.6 (Fig. 13; ``r6p8``): 10 of 16 patches;
* ``semantic-cifar100``: patch 8, ratio 0.7 (Fig. 13; ``r7p8``): 12 of 16 patches;
* ``semantic-ref``: the reference ``train_search.py`` defaults, patch 4, ratio 0.8 (52 of 64);
* ``semantic-cpu``: the ``cpu`` preset (Fashion-MNIST) on 1600 images for 3 epochs (the main
  job's search share of 10 minutes), with patch 7, ratio 0.6 and the light
  decoder: 7 divides 28 and gives the same 4×4 grid of 16 patches, each 1/16 of the image, as
  patch 8 on CIFAR's 32×32, so the paper's CIFAR-10 ratio keeps its meaning (patch 4 would
  give 49 small patches that, at ratio 0.6, leave mostly the black background to guess); the
  light decoder keeps the reconstruction from dominating a 2-core search's cost.

Deviations (paper says X, reference does Y, we do Z because ...): none beyond those of
:mod:`diffnas.objectives.mim`; ``--order 2`` is DARTS' second order, which the reference
lacks (its ``Architect`` raises ``NotImplementedError`` for ``unrolled``).
"""

from __future__ import annotations

from ..config import PRESETS, register_preset
from .darts import DARTS


class SemanticDARTS(DARTS):
    name = "semantic"
    paper = ("Semantic-DARTS: Elevating Semantic Learning for Mobile Differentiable "
             "Architecture Search (Guo et al., IEEE IoT Journal, 2025)")
    default_objective = "mim"


_DARTS_SEARCH = {k: v for k, v in PRESETS["darts-cifar10"].values.items() if k != "dataset"}

#: The reference code's masking and decoder (``utils.random_masking``, ``model_search.Decoder``).
_REFERENCE_MIM = {"decoder": "ref", "fill": 1.0, "rounding": "ref"}

register_preset(
    "semantic-cifar10",
    "Semantic-DARTS CIFAR-10 search: the DARTS search settings, MIM with patch 8, masking "
    "ratio 0.6 (paper Fig. 13), the reference decoder and masking",
    **_DARTS_SEARCH, method="semantic", dataset="cifar10",
    objective_args={"patch_size": 8, "mask_ratio": 0.6, **_REFERENCE_MIM})
register_preset(
    "semantic-cifar100",
    "Semantic-DARTS CIFAR-100 search: the DARTS search settings, MIM with patch 8, masking "
    "ratio 0.7 (paper Fig. 13), the reference decoder and masking",
    **_DARTS_SEARCH, method="semantic", dataset="cifar100",
    objective_args={"patch_size": 8, "mask_ratio": 0.7, **_REFERENCE_MIM})
register_preset(
    "semantic-ref",
    "Semantic-DARTS with the reference code's defaults: CIFAR-10, patch 4, masking ratio 0.8, "
    "the reference decoder and masking",
    **_DARTS_SEARCH, method="semantic", dataset="cifar10",
    objective_args={"patch_size": 4, "mask_ratio": 0.8, **_REFERENCE_MIM})
register_preset(
    "semantic-cpu",
    "Semantic-DARTS on 2 CPU cores (the main job's search, about 2.5 minutes): the cpu preset "
    "(5 cells × 8 channels) on a 1600-image Fashion-MNIST subset for 3 epochs, with patch 7 "
    "(a 4×4 grid, as patch 8 on 32×32), masking ratio 0.6, the light decoder",
    **{**PRESETS["cpu"].values, "subset": 1600, "epochs": 3}, method="semantic",
    objective_args={"patch_size": 7, "mask_ratio": 0.6, **_REFERENCE_MIM, "decoder": "light"})
