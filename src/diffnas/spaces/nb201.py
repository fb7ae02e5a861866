"""The NAS-Bench-201 search space (Dong & Yang, "NAS-Bench-201: Extending the
Scope of Reproducible Neural Architecture Search", ICLR 2020).

A cell is a DAG of 4 nodes with one edge from every node to every later one (6
edges), each edge one of 5 operations; node j sums its incoming edges and node
3 is the cell's output. The skeleton: 3×3 conv stem (16 channels) → N cells →
residual reduction block → N cells (32) → reduction → N cells (64) → BN-ReLU →
global pooling → linear.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from .base import EdgeWeights, MixedEdge, Supernet, sum_inputs
from .ops import PARAMETER_FREE, ReLUConvBN, nb201_op
from .sharing import SharedWork
from .stems import STEM_REDUCTIONS, ImageNetStem

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
N_NODES = 4
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for j in range(1, N_NODES) for i in range(j))
# (0→1), (0→2), (1→2), (0→3), (1→3), (2→3): the order of the architecture string


@dataclass(frozen=True)
class NB201Genotype:
    """One NAS-Bench-201 cell: an op per edge, in :data:`EDGES` order."""

    ops: tuple[str, ...]
    space: str = field(default="nb201", init=False)

    def __post_init__(self) -> None:
        if len(self.ops) != len(EDGES):
            raise DiffnasError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(self.ops)}")
        for (i, j), op in zip(EDGES, self.ops, strict=True):
            if op not in OPS:
                raise DiffnasError(f"op {op!r} on edge {i}->{j} is not a NAS-Bench-201 op; "
                                   f"valid: {', '.join(OPS)}")

    def __str__(self) -> str:
        nodes = []
        for j in range(1, N_NODES):
            nodes.append("|" + "|".join(f"{self.ops[EDGES.index((i, j))]}~{i}"
                                        for i in range(j)) + "|")
        return "+".join(nodes)

    @classmethod
    def parse(cls, text: str) -> NB201Genotype:
        """Parse ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``; errors say which node/entry is wrong."""
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != N_NODES - 1:
            raise DiffnasError(f"NAS-Bench-201 string {text!r} has {len(nodes)} node groups "
                               f"separated by '+', expected {N_NODES - 1}")
        ops: dict[tuple[int, int], str] = {}
        for j, group in enumerate(nodes, start=1):
            if not (group.startswith("|") and group.endswith("|")):
                raise DiffnasError(f"NAS-Bench-201 string: node {j} group {group!r} must be "
                                   "enclosed in '|'")
            entries = group[1:-1].split("|")
            if len(entries) != j:
                raise DiffnasError(f"NAS-Bench-201 string: node {j} group {group!r} needs {j} "
                                   f"entries op~input, got {len(entries)}")
            for entry in entries:
                m = re.fullmatch(r"([a-z0-9_]+)~(\d+)", entry)
                if not m or int(m.group(2)) >= j:
                    raise DiffnasError(f"NAS-Bench-201 string: bad entry {entry!r} in node {j}; "
                                       f"expected op~i with i < {j}")
                ops[(int(m.group(2)), j)] = m.group(1)
        if len(ops) != len(EDGES):
            raise DiffnasError(f"NAS-Bench-201 string {text!r} repeats an input node")
        return cls(tuple(ops[e] for e in EDGES))

    def to_dict(self) -> dict:
        return {"space": "nb201", "arch": str(self)}

    @classmethod
    def from_dict(cls, d: dict) -> NB201Genotype:
        if "arch" not in d:
            raise DiffnasError("not a NAS-Bench-201 genotype dict; expected key 'arch'")
        return cls.parse(d["arch"])

    @property
    def skip_count(self) -> int:
        return sum(o == "skip_connect" for o in self.ops)

    @property
    def param_free_count(self) -> int:
        return sum(o in PARAMETER_FREE for o in self.ops)


def _paths(node: int) -> list[list[int]]:
    """Every path from the input node 0 to ``node``, as indices into :data:`EDGES` (shorter
    paths first)."""
    if node == 0:
        return [[]]
    return [p + [EDGES.index((i, node))] for i in range(node) for p in _paths(i)]


#: the input→output paths of a cell: 0→3, 0→1→3, 0→2→3, 0→1→2→3
PATHS: tuple[tuple[int, ...], ...] = tuple(tuple(p) for p in _paths(N_NODES - 1))


def connected(genotype: object) -> bool:
    """Whether the cell passes its input to its output: some input→output path has no
    ``none`` edge (a DARTS genotype never holds ``none`` and every node feeds the output)."""
    if not isinstance(genotype, NB201Genotype):
        return True
    return any(all(genotype.ops[e] != "none" for e in p) for p in PATHS)


def none_count(genotype: object) -> int:
    """``none`` edges of a derived cell (0 for a DARTS genotype, which never holds one)."""
    return sum(o == "none" for o in genotype.ops) if isinstance(genotype, NB201Genotype) else 0


def derive_cell(w: torch.Tensor, op_names: Sequence[str] = OPS) -> NB201Genotype:
    """NAS-Bench-201's DARTS-style derivation: argmax over all ops (``none`` included) per edge."""
    idx = w.detach().float().cpu().argmax(dim=1).tolist()
    return NB201Genotype(tuple(op_names[i] for i in idx))


class ResidualReduction(nn.Module):
    """NAS-Bench-201's basic residual block with stride 2 between stages."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1, affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, affine)
        self.down = nn.Sequential(nn.AvgPool2d(2, stride=2, ceil_mode=True),
                                  nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x) + self.conv_b(self.conv_a(x))


class NB201SearchCell(nn.Module):
    def __init__(self, c: int, op_names: Sequence[str], partial_channels: int = 1) -> None:
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(op_names, nb201_op, c, 1, affine=False,
                                             partial_channels=partial_channels)
                                   for _ in EDGES)

    def forward(self, x: torch.Tensor, ew: EdgeWeights) -> torch.Tensor:
        nodes = [x]
        shared = SharedWork()  # pools of edges that leave the same node, computed once
        for j in range(1, N_NODES):
            parts = [self.edges[e](nodes[i], ew.weights[e], ew.active[e], ew.bypass_scale(e),
                                   shared)
                     for e, (i, jj) in enumerate(EDGES) if jj == j]
            node = sum_inputs(parts)
            nodes.append(node if node is not None else torch.zeros_like(x))
        return nodes[-1]


class NB201Skeleton(nn.Module):
    """The NAS-Bench-201 macro skeleton, shared by the search network and the fixed network
    (:class:`diffnas.nets.NB201Network`): 3×3 conv stem with C channels, N cells, residual
    reduction block, N cells (2C), residual reduction, N cells (4C), BN-ReLU, global average
    pooling, linear (Dong & Yang, ICLR 2020, §2.1 and Fig. 1)."""

    #: the ImageNet stem of :mod:`diffnas.spaces.stems` (224 → 28) instead of the 3×3 conv
    imagenet_stem = False

    def _build_skeleton(self, in_channels: int, channels: int, layers: int, num_classes: int,
                        make_cell: Callable[[int], nn.Module], affine: bool) -> None:
        self.channels, self.layers = channels, layers
        self.stem: nn.Module = (
            ImageNetStem(in_channels, channels) if self.imagenet_stem
            else nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                               nn.BatchNorm2d(channels)))
        blocks: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                blocks.append(ResidualReduction(c, 2 * c, affine=affine))
                c *= 2
            blocks.extend(make_cell(c) for _ in range(layers))
        self.blocks = nn.ModuleList(blocks)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)

    def _run_stages(self, x: torch.Tensor, run_cell: Callable[[nn.Module, torch.Tensor],
                                                              torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps after each stage: the stages split at the residual reductions; the
        last one is taken after the final BN-ReLU."""
        h = self.stem(x)
        stages: list[torch.Tensor] = []
        for block in self.blocks:
            if isinstance(block, ResidualReduction):
                stages.append(h)
                h = block(h)
            else:
                h = run_cell(block, h)
        stages.append(self.lastact(h))
        return stages

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each stage's output (C, 2C, 4C)."""
        return [self.channels, 2 * self.channels, 4 * self.channels]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(features, 1).flatten(1))


class NB201Supernet(NB201Skeleton, Supernet):
    """The NAS-Bench-201 search network; ``layers`` is N, the cells per stage (5 in the paper).

    ``partial_channels``, ``edge_norm``: PC-DARTS' partial channels and edge normalisation
    (:mod:`diffnas.spaces.base`); the residual reduction blocks are not search edges and see
    all channels."""

    space = "nb201"

    def __init__(self, channels: int = 16, layers: int = 5, num_classes: int = 10,
                 in_channels: int = 3, op_names: Sequence[str] = OPS, partial_channels: int = 1,
                 edge_norm: bool = False) -> None:
        super().__init__(partial_channels, edge_norm)
        if channels < 1 or layers < 1:
            raise DiffnasError(f"channels and layers must be positive, got {channels}, {layers}")
        self.op_names = tuple(op_names)
        self._build_skeleton(in_channels, channels, layers, num_classes,
                             lambda c: NB201SearchCell(c, self.op_names, partial_channels),
                             affine=True)
        self.edge_index["cell"] = list(EDGES)
        self._init_alphas(("cell",), len(EDGES))
        self._channels_last()

    @property
    def feature_channels(self) -> int:
        return 4 * self.channels

    @property
    def feature_stride(self) -> int:
        return 4 * (2 ** STEM_REDUCTIONS if self.imagenet_stem else 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)
        ew = self.edge_weights()["cell"]
        return self._run_stages(x, lambda cell, h: cell(h, ew))

    def genotype(self, weights: dict[str, torch.Tensor]) -> NB201Genotype:
        """Derive from the method's op weights (× the β-weights with edge normalisation, which
        cannot change a per-edge argmax: every edge of a NAS-Bench-201 cell is kept)."""
        return derive_cell(self.edge_strengths(weights)["cell"], self.op_names)


class NB201ImageNetSupernet(NB201Supernet):
    """The NAS-Bench-201 search network with the ImageNet stem (``nb201-imagenet``): the three
    stride-2 convolutions of :mod:`diffnas.spaces.stems` take 224×224 to 28×28, then the
    three stages of N cells run at 28, 14 and 7 (the DARTS mobile setting's shapes), so a
    search on an ImageNet-style folder runs at the paper's resolution. ``channels`` (C, even)
    is the stem's output and the first stage's width. The genotype is a NAS-Bench-201 one; its
    network with the same stem is ``build_network(genotype, imagenet=True)``.

    Deviation: NAS-Bench-201 has no 224² setting (its ImageNet16-120 is 16×16 through the 3×3
    stem); this stem is DARTS', as for ``darts-imagenet``."""

    space = "nb201-imagenet"
    imagenet_stem = True
