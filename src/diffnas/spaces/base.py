"""What every search space shares: the mixed edge, the supernet base class and
the edge-policy hook through which a search method decides how α weights ops.

A supernet owns its architecture parameters (``alphas``, one ``[edges, ops]``
tensor per cell kind) as ordinary module parameters, so DDP all-reduces them
like any weight. On every forward it asks its ``policy`` (the search method)
for an :class:`EdgeWeights` per cell kind: a weight per (edge, op) and, per
edge, which ops to run at all. DARTS runs every op but ``none``; single-path
methods (GDAS, STC-NAS) run one op; an edge with no active op contributes
nothing. The supernet never knows which method drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EdgeWeights:
    """Per cell kind: ``weights[e, o]`` multiplies op ``o`` on edge ``e``; ``active[e]`` lists
    the op indices edge ``e`` computes (ops not listed are skipped entirely)."""

    weights: torch.Tensor
    active: Sequence[Sequence[int]]


class EdgePolicy:
    """Default policy: softmax over each edge's α and every op but ``none`` (DARTS, Eq. 2).

    ``none`` outputs zeros, so leaving it out changes neither the output nor any
    gradient; its α still gets its gradient through the softmax normalisation.
    """

    def edge_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return F.softmax(alpha, dim=-1)

    def edge_policy(self, supernet: Supernet, kind: str) -> EdgeWeights:
        return EdgeWeights(self.edge_weights(supernet.alphas[kind]), supernet.useful_ops(kind))


class MixedEdge(nn.Module):
    """All candidate ops of one edge; computes ``Σ_{o ∈ active} w_o · op_o(x)``.

    Work saved against the textbook sum (all exact): ops not in ``active``
    (always ``none``) are skipped; the ReLU every convolution starts with is
    computed once per edge; ``w_o`` is folded into the op's final BN; outputs
    are accumulated in place (see :mod:`diffnas.spaces.ops`).
    """

    def __init__(self, op_names: Sequence[str], factory: Callable[..., nn.Module], c: int,
                 stride: int, affine: bool) -> None:
        super().__init__()
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleList(factory(name, c, stride, affine) for name in self.op_names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                active: Sequence[int]) -> torch.Tensor | None:
        out = None
        xr = None
        for i in active:
            op = self.ops[i]
            if op.pre_relu:
                if xr is None:
                    xr = F.relu(x)
                inp = xr
            else:
                inp = x
            y = op.body(inp, weights[i]) if op.scalable else weights[i] * op.body(inp)
            out = y if out is None else out.add_(y)
        return out


def sum_inputs(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Sum edge outputs, skipping edges that computed nothing (None); None if all did."""
    out = None
    for p in parts:
        if p is not None:
            out = p if out is None else out.add_(p)  # edge outputs are fresh tensors
    return out


class Supernet(nn.Module):
    """Base of search supernets.

    Subclasses set ``op_names``, ``kinds`` (cell kinds, each with its own α),
    ``edge_index`` (per kind, the ``(src, dst)`` node pair of each edge) and
    implement :meth:`forward_features` and :meth:`head`.
    """

    op_names: tuple[str, ...]
    space: str

    def __init__(self) -> None:
        super().__init__()
        self.alphas = nn.ParameterDict()
        self.policy: EdgePolicy = EdgePolicy()
        self.edge_index: dict[str, list[tuple[int, int]]] = {}

    # -- α ------------------------------------------------------------------------------------
    def _init_alphas(self, kinds: Sequence[str], n_edges: int, scale: float = 1e-3) -> None:
        for kind in kinds:
            self.alphas[kind] = nn.Parameter(scale * torch.randn(n_edges, len(self.op_names)))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.alphas.keys())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def useful_ops(self, kind: str) -> list[tuple[int, ...]]:
        """Per edge, every op index except ``none`` (what a full mixed edge computes)."""
        keep = tuple(i for i, n in enumerate(self.op_names) if n != "none")
        return [keep] * len(self.edge_index[kind])

    def edge_weights(self) -> dict[str, EdgeWeights]:
        return {kind: self.policy.edge_policy(self, kind) for kind in self.kinds}

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def _channels_last(self) -> None:
        """Lay weights and activations out channels-last: on CPU the depthwise convolutions
        (and their backward) run several times faster so (benchmarks/README.md)."""
        self.to(memory_format=torch.channels_last)

    @property
    def feature_channels(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def feature_stride(self) -> int:
        """How many times the input's height is divided by 2 up to the features."""
        raise NotImplementedError  # pragma: no cover
