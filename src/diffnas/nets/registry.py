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
Semantic-DARTS' 642 M (Table IV, the seed-9999 CIFAR-10 cell) is neither: that network counts
632.23 M (conv + linear) and 649.56 M (ptflops). It is the count of thop 0.0.31, the counter the
reference ``train_imagenet_dist.py`` imports, run on the reference ``model.py``: 642.30 M =
conv + linear + two operations per BN element (ReLU and max-pooling count nothing).
The published parameter counts are all reproduced to ±0.05 M; for the Semantic-DARTS cells,
whose Table II prints only the mean ± std over four search seeds, the four CIFAR-10 cells give
4.052 ± 0.228 M (4.05 ± 0.23 printed) and the four CIFAR-100 cells 3.607 ± 0.241 M in the
10-class network (3.61 ± 0.24 printed; 3.659 M with the 100-class classifier).

Names are matched case-insensitively, with ``-`` and ``_`` interchangeable
(``pc-darts`` = ``PC_DARTS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import unknown
from ..spaces.darts import DartsGenotype
from ..spaces.mbconv import MBConvGenotype
from ..spaces.nb201 import NB201Genotype

Genotype = DartsGenotype | NB201Genotype | MBConvGenotype


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
# Semantic-DARTS (Guo et al., IEEE Internet of Things Journal 2025): the cells Table II averages,
# four search seeds each, from the reference genotypes.py — CIFAR-10 searches at mask ratio 0.6
# and CIFAR-100 searches at 0.7, patch size 8 (the names' r6p8 / r7p8)
_SEMANTIC_REPO = "AlbertiPot/Semantic-DARTS genotypes.py (commit d525eed)"
_SEMANTIC_CELLS = {
    ("C10", 2): "normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                "('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 3), "
                "('sep_conv_3x3', 1), ('sep_conv_3x3', 0)], reduce=[('max_pool_3x3', 0), "
                "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 2), "
                "('skip_connect', 0), ('sep_conv_5x5', 3), ('dil_conv_5x5', 2), "
                "('dil_conv_5x5', 3)]",
    ("C10", 5555): "normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                   "('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3), "
                   "('sep_conv_3x3', 1), ('skip_connect', 0)], reduce=[('max_pool_3x3', 0), "
                   "('max_pool_3x3', 1), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), "
                   "('sep_conv_3x3', 2), ('dil_conv_5x5', 3), ('sep_conv_5x5', 4), "
                   "('sep_conv_3x3', 2)]",
    ("C10", 7777): "normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
                   "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                   "('dil_conv_5x5', 3), ('dil_conv_5x5', 2)], reduce=[('max_pool_3x3', 0), "
                   "('skip_connect', 1), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), "
                   "('sep_conv_3x3', 3), ('max_pool_3x3', 0), ('dil_conv_5x5', 4), "
                   "('dil_conv_5x5', 3)]",
    ("C10", 9999): "normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                   "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), "
                   "('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], reduce=[('max_pool_3x3', 0), "
                   "('skip_connect', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), "
                   "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 4), "
                   "('sep_conv_3x3', 1)]",
    ("C100", 2): "normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), "
                 "('skip_connect', 0), ('skip_connect', 0), ('dil_conv_5x5', 3), "
                 "('sep_conv_3x3', 4), ('dil_conv_3x3', 0)], reduce=[('max_pool_3x3', 0), "
                 "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_3x3', 2), "
                 "('sep_conv_3x3', 3), ('skip_connect', 0), ('max_pool_3x3', 0), "
                 "('dil_conv_5x5', 2)]",
    ("C100", 5555): "normal=[('sep_conv_3x3', 1), ('dil_conv_5x5', 0), ('sep_conv_3x3', 0), "
                    "('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('dil_conv_5x5', 3), "
                    "('sep_conv_3x3', 1), ('dil_conv_3x3', 4)], reduce=[('skip_connect', 1), "
                    "('max_pool_3x3', 0), ('dil_conv_5x5', 2), ('skip_connect', 1), "
                    "('dil_conv_5x5', 3), ('max_pool_3x3', 0), ('sep_conv_3x3', 2), "
                    "('skip_connect', 1)]",
    ("C100", 7777): "normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
                    "('dil_conv_5x5', 0), ('sep_conv_3x3', 2), ('skip_connect', 0), "
                    "('dil_conv_5x5', 4), ('sep_conv_3x3', 0)], reduce=[('skip_connect', 1), "
                    "('max_pool_3x3', 0), ('skip_connect', 0), ('skip_connect', 1), "
                    "('dil_conv_5x5', 3), ('max_pool_3x3', 0), ('dil_conv_5x5', 4), "
                    "('skip_connect', 1)]",
    ("C100", 9999): "normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_5x5', 2), "
                    "('sep_conv_3x3', 1), ('dil_conv_5x5', 3), ('sep_conv_3x3', 1), "
                    "('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce=[('max_pool_3x3', 0), "
                    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_3x3', 2), "
                    "('max_pool_3x3', 0), ('dil_conv_5x5', 2), ('dil_conv_5x5', 4), "
                    "('dil_conv_5x5', 3)]",
}
#: Semantic-DARTS Table II: parameters (M, CIFAR network 36 × 20) as mean ± std over the four
#: cells of each search dataset. The CIFAR-100 figure is of the 10-class network: with the
#: 100-class classifier each network has 51,930 more parameters (576 · 90 + 90), 3.66 M on average.
SEMANTIC_DARTS_TABLE_II = {"C10": (4.05, 0.23), "C100": (3.61, 0.24)}
for (_data, _seed), _cells in _SEMANTIC_CELLS.items():
    _ratio = "r6p8" if _data == "C10" else "r7p8"
    register(Published(
        f"SEMANTIC_DARTS_{_data}_S{_seed}",
        _darts(f"Genotype({_cells.replace('], reduce=', '], normal_concat=range(2, 6), reduce=')}"
               ", reduce_concat=range(2, 6))"),
        f"Guo et al., Semantic-DARTS (Table II; searched on {_data.replace('C', 'CIFAR-')}, "
        f"seed {_seed}); {_SEMANTIC_REPO} 'cls_maskv1{_data.lower()}seed{_seed}{_ratio}'",
        "cifar10" if _data == "C10" else "cifar100",
        # Table IV: the ImageNet network of the seed-9999 CIFAR-10 cell
        {"imagenet": {"params_m": 5.8, "madds_m": 642}} if (_data, _seed) == ("C10", 9999)
        else {},
        "Table II prints only the mean ± std of the four cells "
        f"({SEMANTIC_DARTS_TABLE_II[_data][0]} ± {SEMANTIC_DARTS_TABLE_II[_data][1]} M)"
        + ("; Table IV's 642 M mult-adds are thop 0.0.31's count (see the module docstring)"
           if (_data, _seed) == ("C10", 9999) else "")))

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

register(Published(
    "PROXYLESSNAS_MOBILE",
    MBConvGenotype.parse(
        "mbconv:k5_e3,k3_e3,skip_connect,skip_connect/k7_e3,k3_e3,k5_e3,k5_e3/"
        "k7_e6,k5_e3,k5_e3,k5_e3/k5_e6,k5_e3,k5_e3,k5_e3/k7_e6,k7_e6,k7_e3,k7_e3/k7_e6"
        ";widths=32,40,80,96,192,320"),
    "Cai, Zhu & Han, ProxylessNAS, ICLR 2019 (the mobile model); layers, kernels, "
    "expansions and widths as transcribed from its net.config in osmr/imgclsmob "
    "pytorch/pytorchcv/models/proxylessnas.py (commit 86c1d36), whose test pins 4,080,512 "
    "parameters",
    "imagenet",
    note="the mbconv space at 224² with 1000 classes reproduces the 4,080,512 parameters "
         "(320.4 M multiply-adds in convolutions and linear layers); the paper's tables print "
         "latency, not parameters"))


def _key(name: str) -> str:
    return name.strip().upper().replace("-", "_")


_ALIASES = {"DARTS": "DARTS_V2", "PC_DARTS": "PC_DARTS_CIFAR", "PCDARTS": "PC_DARTS_CIFAR",
            "P_DARTS": "PDARTS", "CDARTS": "CDARTS_CIFAR", "NB201_BEST": "NB201_OPTIMUM",
            "NB201_RESNET_LIKE": "NB201_RESNET", "PROXYLESS_MOBILE": "PROXYLESSNAS_MOBILE"}


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
