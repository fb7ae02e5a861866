"""Published genotypes by name, each with its source and the cost figures its paper reports.

Genotypes are facts copied from the papers' reference repositories (the file and commit are
recorded in ``source``); the published parameter counts (millions, auxiliary head excluded)
and multiply-adds (millions, one 224×224 image) are what the papers' tables print, and the
tests check that :func:`diffnas.nets.cost` reproduces them.

Multiply-adds: counting only convolutions and linear layers (``NetCost.madds``) gives
530 M for DARTS_V2, 582 M for PC_DARTS_IMAGENET and 543 M for PDARTS, 2.5–7.7 % below the
printed figures. Counting also one operation per BN (two when affine), ReLU, pooling and bias
element, as the ptflops counter (sovrasov/flops-counter.pytorch) does (``NetCost.madds_all``),
gives 597.2 M for PC_DARTS_IMAGENET (597 printed) and 557.4 M for PDARTS (557 printed): within
0.1 %. For DARTS_V2 it gives 544.59 M — the figure a user measured with ptflops in
quark0/darts issue #46, where another measured 523 M counting conv + fc — against the 574 M
DARTS printed; DARTS never published its counter, and no convention we know reproduces it.
The published parameter counts are all reproduced to ±0.05 M.

Names are matched case-insensitively, with ``-`` and ``_`` interchangeable
(``pc-darts`` = ``PC_DARTS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import unknown
from ..spaces.darts import DartsGenotype
from ..spaces.nb201 import NB201Genotype

Genotype = DartsGenotype | NB201Genotype


@dataclass(frozen=True)
class Published:
    """A genotype from the literature.

    ``reported`` maps a setting (``"cifar10"``: the CIFAR network, 20 cells × 36 channels;
    ``"imagenet"``: the mobile setting, 14 cells × 48 channels, 224×224) to the paper's
    figures: ``params_m`` (millions, without the auxiliary head) and ``madds_m`` (millions).
    """

    name: str
    genotype: Genotype
    source: str
    searched_on: str
    reported: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""


def _darts(text: str) -> DartsGenotype:
    return DartsGenotype.parse(text)


_DARTS_REPO = "quark0/darts cnn/genotypes.py (commit 8876e79)"
_PC_REPO = "yuhuixu1993/PC-DARTS genotypes.py (commit 283b086)"
_CREAM = "microsoft/Cream CDARTS/CDARTS/cells/"

REGISTRY: dict[str, Published] = {}


def register(entry: Published) -> Published:
    """Add a published genotype (its name is the registry key)."""
    REGISTRY[entry.name] = entry
    return entry


register(Published(
    "DARTS_V1",
    _darts("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
           "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
           "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
           "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
           "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
           "reduce_concat=[2, 3, 4, 5])"),
    f"Liu et al., DARTS, ICLR 2019, first order; {_DARTS_REPO} 'DARTS' (= DARTS_V1 in "
    "PC-DARTS/P-DARTS genotypes.py)",
    "cifar10", {},
    "DARTS Table 1 prints 3.3 M for the first-order cell too, but this genotype counts 3.17 M "
    "(DARTS_V2's cell has one more dil_conv_3x3 per normal cell, 3.35 M); not pinned"))
register(Published(
    "DARTS_V2",
    _darts("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
           "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
           "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
           "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
           "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
           "reduce_concat=[2, 3, 4, 5])"),
    f"Liu et al., DARTS, ICLR 2019, second order (Tables 1-2); {_PC_REPO} 'DARTS_V2'",
    "cifar10", {"cifar10": {"params_m": 3.3}, "imagenet": {"params_m": 4.7, "madds_m": 574}}))
register(Published(
    "PC_DARTS_CIFAR",
    _darts("Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), "
           "('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
           "('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
           "('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
           "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
           "reduce_concat=range(2, 6))"),
    f"Xu et al., PC-DARTS, ICLR 2020 (Table 1); {_PC_REPO} 'PC_DARTS_cifar'",
    "cifar10", {"cifar10": {"params_m": 3.6}}))
register(Published(
    "PC_DARTS_IMAGENET",
    _darts("Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), "
           "('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
           "('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), "
           "('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), "
           "('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], "
           "reduce_concat=range(2, 6))"),
    f"Xu et al., PC-DARTS, ICLR 2020 (Table 2, searched on ImageNet); {_PC_REPO} "
    "'PC_DARTS_image'",
    "imagenet", {"imagenet": {"params_m": 5.3, "madds_m": 597}}))
register(Published(
    "PDARTS",
    _darts("Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), "
           "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), "
           "('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), "
           "('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), "
           "('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], "
           "reduce_concat=range(2, 6))"),
    "Chen et al., P-DARTS, ICCV 2019 (Tables 1 and 3; the CIFAR-10 cell, also used for "
    "ImageNet); chenxin061/pdarts genotypes.py (commit b1575e1) 'PDARTS'",
    "cifar10", {"cifar10": {"params_m": 3.4}, "imagenet": {"params_m": 4.9, "madds_m": 557}}))
register(Published(
    "CDARTS_CIFAR",
    _darts("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), "
           "('sep_conv_3x3', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
           "('skip_connect', 2)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
           "('max_pool_3x3', 0), ('dil_conv_5x5', 2), ('skip_connect', 0), ('sep_conv_3x3', 0), "
           "('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2)], "
           "reduce_concat=range(2, 6))"),
    "Yu et al., Cyclic Differentiable Architecture Search, TPAMI 2022; "
    f"{_CREAM}cifar_genotype.json (commit a733e2c; the same cell for all three stages)",
    "cifar10", {},
    "the older CVPR-2020/CDARTS repository holds two other CIFAR cells in its history "
    "(commits f090bfb and 032105f); the paper's own parameter counts could not be read here, "
    "so none are pinned"))
register(Published(
    "CDARTS_IMAGENET",
    _darts("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), "
           "('sep_conv_5x5', 2), ('sep_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), "
           "('sep_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
           "('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('dil_conv_5x5', 2), ('sep_conv_5x5', 1), "
           "('dil_conv_5x5', 2), ('sep_conv_3x3', 3), ('dil_conv_3x3', 4)], "
           "reduce_concat=range(2, 6))"),
    "Yu et al., Cyclic Differentiable Architecture Search, TPAMI 2022; "
    f"{_CREAM}imagenet_genotype.json (commit 6fb89a2; the same cell for all three stages)",
    "imagenet", {},
    "CDARTS trains its ImageNet network with stem multiplier 1 and its own stem; the figures "
    "here are for the DARTS mobile skeleton, and the paper's could not be read here"))
register(Published(
    "NB201_OPTIMUM",
    NB201Genotype.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                        "+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"),
    "Dong & Yang, NAS-Bench-201, ICLR 2020: the best CIFAR-10 cell of the benchmark (the fixed "
    "topology of NATS-Bench's size search space); D-X-Y/AutoDL-Projects "
    "exps/NATS-Bench/main-sss.py",
    "cifar10"))
register(Published(
    "NB201_RESNET",
    NB201Genotype.parse("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|"
                        "+|skip_connect~0|none~1|skip_connect~2|"),
    "Dong & Yang, NAS-Bench-201, ICLR 2020: the ResNet-like cell (two 3×3 convs in series plus "
    "a skip); D-X-Y/AutoDL-Projects xautodl/models/cell_searchs/genotypes.py ResNet_CODE "
    "(commit 94a149b)",
    "cifar10"))


def _key(name: str) -> str:
    return name.strip().upper().replace("-", "_")


_ALIASES = {"DARTS": "DARTS_V2", "PC_DARTS": "PC_DARTS_CIFAR", "PCDARTS": "PC_DARTS_CIFAR",
            "P_DARTS": "PDARTS", "CDARTS": "CDARTS_CIFAR", "NB201_BEST": "NB201_OPTIMUM",
            "NB201_RESNET_LIKE": "NB201_RESNET"}


def lookup(name: str) -> Published | None:
    """The registry entry called ``name`` (case-insensitive, ``-``≡``_``, aliases), or None."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    return REGISTRY.get(key)


def get(name: str) -> Published:
    """Like :func:`lookup`, but an unknown name is an error that lists the registry."""
    entry = lookup(name)
    if entry is None:
        raise unknown("genotype name", name, REGISTRY)
    return entry


def genotype(name: str) -> Genotype:
    """The published genotype called ``name``."""
    return get(name).genotype
