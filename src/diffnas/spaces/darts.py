"""The DARTS cell search space (Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019).

A cell has two input nodes (the outputs of the two previous cells) and four
intermediate nodes; every intermediate node sums one mixed edge from each
earlier node (2+3+4+5 = 14 edges); the cell outputs the concatenation of the
intermediate nodes. Reduction cells (at 1/3 and 2/3 of the depth) apply stride
2 on the edges leaving the input nodes and double the channels.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from .base import EdgeWeights, MixedEdge, Supernet, sum_inputs
from .ops import PARAMETER_FREE, FactorizedReduce, ReLUConvBN, darts_op
from .sharing import SharedWork
from .stems import imagenet_stem0, imagenet_stem1

PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
STEPS = 4
N_EDGES = sum(2 + i for i in range(STEPS))  # 14


def edge_index(steps: int = STEPS) -> list[tuple[int, int]]:
    """``(src, dst)`` of every edge in DARTS order: node 2 ← 0, 1; node 3 ← 0, 1, 2; ..."""
    return [(src, 2 + i) for i in range(steps) for src in range(2 + i)]


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: at 1/3 and 2/3 of the depth (DARTS §3.1)."""
    if layers < 3:
        return ()
    return (layers // 3, 2 * layers // 3)


# ------------------------------------------------------------------------------------ genotype
@dataclass(frozen=True)
class DartsGenotype:
    """A derived DARTS cell pair: per intermediate node, two ``(op, input node)`` pairs."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...] = (2, 3, 4, 5)
    reduce: tuple[tuple[str, int], ...] = ()
    reduce_concat: tuple[int, ...] = (2, 3, 4, 5)
    space: str = field(default="darts", init=False)

    def __post_init__(self) -> None:
        for kind in ("normal", "reduce"):
            pairs = getattr(self, kind)
            if len(pairs) % 2:
                raise DiffnasError(f"genotype {kind} cell has {len(pairs)} (op, input) pairs; "
                                   "expected two per intermediate node")
            for i, (op, src) in enumerate(pairs):
                node = 2 + i // 2
                if not 0 <= src < node:
                    raise DiffnasError(f"genotype {kind}[{i}] takes input {src}, but node {node} "
                                       f"can only take inputs 0..{node - 1}")
                if op not in PRIMITIVES or op == "none":
                    valid = [p for p in PRIMITIVES if p != "none"]
                    raise DiffnasError(f"genotype {kind}[{i}] has op {op!r}, which is not in the "
                                       f"DARTS space; valid: {', '.join(valid)}")
            concat = getattr(self, f"{kind}_concat")
            last = 1 + len(pairs) // 2
            if pairs and (not concat or not all(2 <= n <= last for n in concat)):
                raise DiffnasError(f"genotype {kind}_concat {list(concat)} must list intermediate "
                                   f"nodes of the {kind} cell, 2..{last}")

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {"space": "darts",
                "normal": [list(p) for p in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(p) for p in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: dict) -> DartsGenotype:
        try:
            return cls(normal=tuple((str(o), int(i)) for o, i in d["normal"]),
                       normal_concat=tuple(int(i) for i in d.get("normal_concat", (2, 3, 4, 5))),
                       reduce=tuple((str(o), int(i)) for o, i in d["reduce"]),
                       reduce_concat=tuple(int(i) for i in d.get("reduce_concat", (2, 3, 4, 5))))
        except (KeyError, TypeError, ValueError) as e:
            raise DiffnasError(f"not a DARTS genotype dict ({e!r}); expected keys normal, "
                               "normal_concat, reduce, reduce_concat") from None

    def __str__(self) -> str:
        def pairs(ps: Sequence[tuple[str, int]]) -> str:
            return "[" + ", ".join(f"('{o}', {i})" for o, i in ps) + "]"
        return (f"Genotype(normal={pairs(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={pairs(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    @classmethod
    def parse(cls, text: str) -> DartsGenotype:
        """Parse the ``Genotype(normal=[...], ...)`` text of DARTS repositories, without eval."""
        return cls.from_dict(_parse_genotype_text(text))

    def count(self, ops: frozenset[str] | set[str]) -> int:
        """How many of the cell pair's edges use one of ``ops``."""
        return sum(o in ops for o, _ in (*self.normal, *self.reduce))

    @property
    def skip_count(self) -> int:
        return self.count({"skip_connect"})

    @property
    def param_free_count(self) -> int:
        return self.count(PARAMETER_FREE)


def _parse_genotype_text(text: str) -> dict:
    text = text.strip()
    multiline = "\n" in text

    def at(line: int | None, col: int | None) -> str:
        return f" at line {line} column {col}" if multiline else f" at column {col}"

    def fail(node: ast.AST | None, why: str) -> DiffnasError:
        where = at(node.lineno, node.col_offset + 1) if node is not None else ""
        return DiffnasError(f"cannot parse genotype{where}: {why}; expected "
                            "Genotype(normal=[('op', input), ...], normal_concat=[2, 3, 4, 5], "
                            "reduce=[...], reduce_concat=[...])")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise DiffnasError(f"cannot parse genotype{at(e.lineno, e.offset)}: {e.msg}") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
            and tree.func.id == "Genotype"):
        raise fail(tree, "text does not start with Genotype(")
    if tree.args:
        raise fail(tree.args[0], "use keyword arguments")

    def ints(node: ast.AST) -> list[int]:
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "range" and not node.keywords):
            try:
                nodes = range(*[ast.literal_eval(a) for a in node.args])
            except (ValueError, TypeError):
                raise fail(node, "expected range(a, b) with integer bounds") from None
            if len(nodes) > 64:
                raise fail(node, f"range of {len(nodes)} nodes; a cell has far fewer")
            return list(nodes)
        try:
            v = ast.literal_eval(node)
        except ValueError:
            raise fail(node, "expected a list of node indices or range(a, b)") from None
        if not isinstance(v, list | tuple) or not all(isinstance(i, int) for i in v):
            raise fail(node, "expected a list of integers")
        return list(v)

    def pairs(node: ast.AST) -> list[tuple[str, int]]:
        try:
            v = ast.literal_eval(node)
        except ValueError:
            raise fail(node, "expected a list of ('op', input) pairs") from None
        if not isinstance(v, list | tuple) or not all(
                isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], int) for p in v):
            raise fail(node, "expected a list of ('op', input) pairs")
        return [(p[0], p[1]) for p in v]

    out: dict = {}
    for kw in tree.keywords:
        if kw.arg in ("normal", "reduce"):
            out[kw.arg] = pairs(kw.value)
        elif kw.arg in ("normal_concat", "reduce_concat"):
            out[kw.arg] = ints(kw.value)
        else:
            raise fail(kw, f"unknown field {kw.arg!r}")
    for need in ("normal", "reduce"):
        if need not in out:
            raise fail(None, f"missing field {need!r}")
    return out


def derive_cell(w: torch.Tensor, op_names: Sequence[str] = PRIMITIVES, steps: int = STEPS,
                k: int = 2) -> tuple[tuple[str, int], ...]:
    """DARTS derivation (§2.4): per node keep the ``k`` incoming edges whose strongest non-``none``
    op is strongest, each with that op. ``w`` is ``[edges, ops]`` (after the method's weighting)."""
    w = w.detach().float().cpu()
    none = op_names.index("none") if "none" in op_names else None
    if none is not None:
        w = w.clone()
        w[:, none] = -float("inf")
    gene: list[tuple[str, int]] = []
    start = 0
    for i in range(steps):
        n_in = 2 + i
        block = w[start:start + n_in]
        strength = block.max(dim=1).values
        # sort by strength, ties by lower input index (stable)
        order = sorted(range(n_in), key=lambda j: (-float(strength[j]), j))[:k]
        for j in order:
            gene.append((op_names[int(block[j].argmax())], j))
        start += n_in
    return tuple(gene)


# ------------------------------------------------------------------------------------ supernet
class SearchCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 op_names: Sequence[str], steps: int = STEPS, multiplier: int = 4,
                 partial_channels: int = 1) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps, self.multiplier = steps, multiplier
        self.pre0 = (FactorizedReduce(c_pp, c, affine=False) if reduction_prev
                     else ReLUConvBN(c_pp, c, 1, 1, 0, affine=False))
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(op_names, darts_op, c, 2 if reduction and src < 2 else 1, affine=False,
                      partial_channels=partial_channels)
            for src, _ in edge_index(steps))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, ew: EdgeWeights) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        shared = SharedWork()  # pools of edges that leave the same node, computed once
        e = 0
        for _ in range(self.steps):
            parts = [self.edges[e + j](h, ew.weights[e + j], ew.active[e + j],
                                       ew.bypass_scale(e + j), shared)
                     for j, h in enumerate(states)]
            e += len(states)
            node = sum_inputs(parts)
            if node is None:  # every incoming edge switched off (single-path methods)
                h = states[0]
                hw = [(n + 1) // 2 if self.reduction else n for n in h.shape[-2:]]
                node = h.new_zeros(h.shape[0], h.shape[1], *hw)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(Supernet):
    """The DARTS search network: stem, ``layers`` search cells, global pooling, classifier.

    ``partial_channels``, ``edge_norm``: PC-DARTS' partial channels and edge normalisation
    (:mod:`diffnas.spaces.base`)."""

    space = "darts"

    def __init__(self, channels: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, op_names: Sequence[str] = PRIMITIVES,
                 stem_multiplier: int = 3, partial_channels: int = 1,
                 edge_norm: bool = False) -> None:
        super().__init__(partial_channels, edge_norm)
        if channels < 1 or layers < 1:
            raise DiffnasError(f"channels and layers must be positive, got {channels}, {layers}")
        self.op_names = tuple(op_names)
        self.channels, self.layers = channels, layers
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        reductions = reduction_layers(layers)
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, self.op_names,
                              partial_channels=partial_channels)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self._feature_channels = c_p
        self._n_reductions = len(reductions)
        self.classifier = nn.Linear(c_p, num_classes)
        for kind in ("normal", "reduce"):
            self.edge_index[kind] = edge_index()
        self._init_alphas(("normal", "reduce"), N_EDGES)
        self._channels_last()

    @property
    def feature_channels(self) -> int:
        return self._feature_channels

    @property
    def feature_stride(self) -> int:
        return 2 ** self._n_reductions

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s0, s1)``: the two inputs of the first cell (here both the stem's output)."""
        s = self.stem(x)
        return s, s

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage: the stages split at the reduction cells (stage ``k``
        ends just before reduction cell ``k``; the last one is :meth:`forward_features`)."""
        x = x.contiguous(memory_format=torch.channels_last)
        ew = self.edge_weights()
        s0, s1 = self.stem_forward(x)
        stages: list[torch.Tensor] = []
        for cell in self.cells:
            if cell.reduction:
                stages.append(s1)
            s0, s1 = s1, cell(s0, s1, ew["reduce" if cell.reduction else "normal"])
        stages.append(s1)
        return stages

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each :meth:`forward_stages` output."""
        chans, c, prev = [], self.channels, 0
        for cell in self.cells:
            if cell.reduction:
                chans.append(prev)
                c *= 2
            prev = cell.multiplier * c
        return [*chans, prev]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def genotype(self, weights: dict[str, torch.Tensor]) -> DartsGenotype:
        """Derive from the method's op weights (× the β-weights with edge normalisation)."""
        weights = self.edge_strengths(weights)
        concat = tuple(range(2, 2 + STEPS))
        return DartsGenotype(normal=derive_cell(weights["normal"], self.op_names),
                             normal_concat=concat,
                             reduce=derive_cell(weights["reduce"], self.op_names),
                             reduce_concat=concat)


class DartsImageNetSupernet(DartsSupernet):
    """The DARTS search network with the ImageNet (mobile-setting) stem of
    :class:`diffnas.nets.NetworkImageNet` (DARTS §A.2; CDARTS' ImageNet search, Cream
    ``imagenet_stem`` with ``--stem_multiplier 1``): ``stem0`` = two stride-2 3×3 convs to
    ``C/2`` then ``C`` channels, ``stem1`` = a third, 224→28; the first cell takes both (its
    ``s0`` through a factorized reduction). Any number of cells, reductions at 1/3 and 2/3."""

    space = "darts-imagenet"
    imagenet_stem = True  # evaluation networks of its genotypes: build_network(imagenet=True)

    def __init__(self, channels: int = 16, layers: int = 8, num_classes: int = 1000,
                 in_channels: int = 3, op_names: Sequence[str] = PRIMITIVES,
                 **kwargs: Any) -> None:
        if channels < 2 or channels % 2:
            raise DiffnasError(f"the ImageNet stem halves the channels and the first cell "
                               f"factorizes them in two: channels must be even and at least 2, "
                               f"got {channels}")
        super().__init__(channels, layers, num_classes, in_channels, op_names, stem_multiplier=1,
                         **kwargs)
        del self.stem
        self.stem0 = imagenet_stem0(in_channels, channels)  # diffnas.spaces.stems, shared
        self.stem1 = imagenet_stem1(channels)
        self.cells[0].pre0 = FactorizedReduce(channels, channels, affine=False)  # s0 at 56×56
        self._channels_last()

    @property
    def feature_stride(self) -> int:
        return 8 * super().feature_stride

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)
