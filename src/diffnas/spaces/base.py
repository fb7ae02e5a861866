"""What every search space shares: the mixed edge, the supernet base class and
the edge-policy hook through which a search method decides how α weights ops.

A supernet owns its architecture parameters (``alphas``, one ``[edges, ops]``
tensor per cell kind) as ordinary module parameters, so DDP all-reduces them
like any weight. On every forward it asks its ``policy`` (the search method)
for an :class:`EdgeWeights` per cell kind: a weight per (edge, op) and, per
edge, which ops to run at all. DARTS runs every op but ``none``; single-path
methods (GDAS, STC-NAS) run one op; an edge with no active op contributes
nothing. The supernet never knows which method drives it.

Two construction options of every supernet come from PC-DARTS (Xu et al., "PC-DARTS:
Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020) and
combine with any method: ``partial_channels=K`` (ops see the first C/K channels of an
edge's input, the rest bypass them, Eq. 2) and ``edge_norm`` (edge weights β, softmaxed per
node over its incoming edges, Eq. 3, and used in derivation, §3.3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from .ops import DilConv, Pool, drop_path, from_phases, to_phases
from .sharing import SharedWork


@dataclass
class EdgeWeights:
    """Per cell kind: ``weights[e, o]`` multiplies op ``o`` on edge ``e``; ``active[e]`` lists
    the op indices edge ``e`` computes (ops not listed are skipped entirely). ``edge_scale[e]``
    (edge normalisation only; set by the supernet, which has already multiplied it into
    ``weights``) scales the channels of edge ``e`` that bypass its ops."""

    weights: torch.Tensor
    active: Sequence[Sequence[int]]
    edge_scale: torch.Tensor | None = None

    def bypass_scale(self, e: int) -> torch.Tensor | None:
        return None if self.edge_scale is None else self.edge_scale[e]


class EdgePolicy:
    """Default policy: softmax over each edge's α and every op but ``none`` (DARTS, Eq. 2).

    ``none`` outputs zeros, so leaving it out changes neither the output nor any
    gradient; its α still gets its gradient through the softmax normalisation.
    """

    def edge_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return F.softmax(alpha, dim=-1)

    def edge_policy(self, supernet: Supernet, kind: str) -> EdgeWeights:
        return EdgeWeights(self.edge_weights(supernet.alphas[kind]), supernet.useful_ops(kind))


#: off: a mixed edge converts each dilated op back from the polyphase domain itself
#: (tests compare the two)
phase_sum_enabled = True


class MixedEdge(nn.Module):
    """All candidate ops of one edge; computes ``Σ_{o ∈ active} w_o · op_o(x)``.

    Work saved against the textbook sum (all exact): ops not in ``active``
    (always ``none``) are skipped; the ReLU every convolution starts with is
    computed once per edge; ``w_o`` is folded into the op's final BN; outputs
    are accumulated in place (see :mod:`diffnas.spaces.ops`).

    With ``partial_channels = K > 1`` (PC-DARTS Eq. 2) the ops are built for C/K channels
    and see only the first C/K channels of ``x``; the other channels bypass them (through a
    2×2 max-pool on a stride-2 edge), and the two parts are concatenated and channel-shuffled
    with K groups (:func:`shuffle_cat`), so the next edge sees a different share of channels.

    :meth:`add_aux_skip` gives the edge DARTS-' auxiliary skip (Chu et al., ICLR 2021): the
    space's ``skip_connect`` op on all channels (identity, or a FactorizedReduce with its own
    weights on a stride-2 edge), added as ``aux_scale · skip(x)`` outside the op weights.
    """

    def __init__(self, op_names: Sequence[str], factory: Callable[..., nn.Module], c: int,
                 stride: int, affine: bool, partial_channels: int = 1) -> None:
        super().__init__()
        k = partial_channels
        if k < 1 or c % k:
            raise DiffnasError(f"partial_channels={k} must be a positive divisor of every "
                               f"edge's channel count; an edge here has {c} channels")
        self.op_names = tuple(op_names)
        self.partial_channels, self.stride = k, stride
        self.ops = nn.ModuleList(factory(name, c // k, stride, affine) for name in self.op_names)
        self._factory, self.c, self.affine = factory, c, affine
        self.aux: nn.Module | None = None  # DARTS-' auxiliary skip (add_aux_skip)
        self.aux_scale = 1.0
        #: dropout on the stride-1 skip_connect's output in training (P-DARTS §3.3)
        self.skip_dropout = 0.0
        #: drop-path on the edge's output in training (RobustDARTS' R-DARTS(DP))
        self.drop_path = 0.0

    def drop_ops(self, keep: Sequence[int]) -> None:
        """Keep only the ops with index in ``keep``; the others become parameter-free ``none``
        placeholders (a supernet stage with fewer candidate ops, P-DARTS)."""
        for i in range(len(self.op_names)):
            if i not in keep:
                self.ops[i] = self._factory("none", self.c // self.partial_channels,
                                            self.stride, self.affine)

    def add_aux_skip(self) -> None:
        """Add DARTS-' auxiliary skip: the space's ``skip_connect`` on the edge's full input."""
        self.aux = self._factory("skip_connect", self.c, self.stride, self.affine)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, active: Sequence[int],
            shared: SharedWork | None = None) -> torch.Tensor | None:
        """``Σ_{o ∈ active} w_o · op_o(x)`` over the ops' channels (None if none is active).

        The pools, the ReLU and its polyphase components, which other edges of the cell also
        compute from ``x``, come from ``shared``; the dilated convs are summed in the
        polyphase domain and converted back once (:meth:`DilConv.phase_body`)."""
        out = None
        xr = None
        phased: dict[int, list[torch.Tensor]] = {}  # d: [to_phases(xr, d), Σ dilated ops]
        for i in active:
            op = self.ops[i]
            if isinstance(op, DilConv) and op.pre_relu and phase_sum_enabled:
                if xr is None:
                    xr = F.relu(x) if shared is None else shared.relu(x)
                if op.phase_domain(xr):  # summed in the polyphase domain, converted once
                    d = op.dw.dilation[0]
                    if d not in phased:
                        phased[d] = [to_phases(xr, d) if shared is None
                                     else shared.phases(xr, d)]
                    y = op.phase_body(phased[d][0], weights[i])
                    if len(phased[d]) == 1:
                        phased[d].append(y)
                    else:
                        phased[d][1].add_(y)
                    continue
            if shared is not None and isinstance(op, Pool):
                p = shared.pool(op, x)
                if p is not None:
                    y = p * weights[i]
                    out = y if out is None else out.add_(y)
                    continue
            if op.pre_relu:
                if xr is None:
                    xr = F.relu(x) if shared is None else shared.relu(x)
                inp = xr
            else:
                inp = x
            y = op.body(inp, weights[i]) if op.scalable else weights[i] * op.body(inp)
            if (self.skip_dropout > 0 and self.training and self.stride == 1
                    and self.op_names[i] == "skip_connect"):
                y = F.dropout(y, self.skip_dropout, training=True)
            out = y if out is None else out.add_(y)
        for d, (_, acc) in phased.items():
            y = from_phases(acc, d, *x.shape[-2:])
            out = y if out is None else out.add_(y)
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: Sequence[int],
                bypass_scale: torch.Tensor | None = None,
                shared: SharedWork | None = None) -> torch.Tensor | None:
        """The edge's output; ``shared`` (one per cell forward, :mod:`.sharing`) lets edges
        that read the same tensor compute their pools and ReLU once."""
        k = self.partial_channels
        if k == 1:
            return self.dropped(self.add_aux(x, self.mix(x, weights, active, shared)))
        c = x.shape[1] // k
        # a dense channels-last copy of the ops' share (a channel slice of a channels-last
        # tensor is strided, and the ops' kernels would each copy it again)
        out = self.mix(x[:, :c].contiguous(memory_format=torch.channels_last), weights, active)
        rest = x[:, c:]
        if self.stride > 1:  # PC-DARTS' 2×2 max-pool; ceil_mode: the ops' ⌈H/2⌉ on odd sizes
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
        if bypass_scale is not None:
            rest = rest * bypass_scale
        if out is None:  # no op active: the op channels are zeros, the bypass still passes
            out = rest.new_zeros(rest.shape[0], c, *rest.shape[-2:])
        return self.dropped(self.add_aux(x, shuffle_cat(out, rest, k)))

    def dropped(self, out: torch.Tensor | None) -> torch.Tensor | None:
        """``out`` under drop-path (:attr:`drop_path`, in training only)."""
        if out is None or not self.training or self.drop_path <= 0:
            return out
        return drop_path(out, self.drop_path)

    def add_aux(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor | None:
        """``out + aux_scale · aux(x)`` with the auxiliary skip (DARTS-), else ``out``."""
        if self.aux is None or self.aux_scale == 0:
            return out
        y = self.aux_scale * self.aux(x)
        return y if out is None else out + y


def shuffle_cat(head: torch.Tensor, rest: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' ``channel_shuffle(cat([head, rest]), groups)`` in one copy, channels-last.

    With ``c = head``'s channels and ``rest`` holding ``(groups - 1) · c``, output channel
    ``i · groups + g`` is channel ``g · c + i`` of the concatenation: the ops' outputs land on
    every ``groups``-th channel, and each later group of the bypass fills the slots between."""
    c = head.shape[1]
    tail = rest.permute(0, 2, 3, 1).unflatten(-1, (groups - 1, c)).transpose(-1, -2)
    y = torch.cat([head.permute(0, 2, 3, 1).unsqueeze(-1), tail], dim=-1)  # [B, H, W, c, g]
    return y.flatten(-2).permute(0, 3, 1, 2)


def node_softmax(beta: torch.Tensor, edges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Softmax of the edge parameters ``beta[e]`` over the edges entering the same node
    (PC-DARTS Eq. 3): per node, the returned weights of its incoming edges sum to 1."""
    groups: dict[int, list[int]] = {}
    for e, (_, dst) in enumerate(edges):
        groups.setdefault(dst, []).append(e)
    order = [e for g in groups.values() for e in g]
    parts = torch.cat([F.softmax(beta[g], dim=0) for g in groups.values()])
    if order == list(range(len(edges))):
        return parts
    return parts[torch.tensor(order).argsort()]


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

    def __init__(self, partial_channels: int = 1, edge_norm: bool = False) -> None:
        super().__init__()
        if not isinstance(partial_channels, int) or partial_channels < 1:
            raise DiffnasError(f"partial_channels must be a positive integer (1 = off), got "
                               f"{partial_channels!r}")
        self.partial_channels, self.edge_norm = partial_channels, bool(edge_norm)
        self.alphas = nn.ParameterDict()
        self.betas = nn.ParameterDict()  # edge normalisation (PC-DARTS Eq. 3), when on
        self.policy: EdgePolicy = EdgePolicy()
        self.edge_index: dict[str, list[tuple[int, int]]] = {}

    # -- α ------------------------------------------------------------------------------------
    def _init_alphas(self, kinds: Sequence[str], n_edges: int, scale: float = 1e-3) -> None:
        for kind in kinds:
            self.alphas[kind] = nn.Parameter(scale * torch.randn(n_edges, len(self.op_names)))
        if self.edge_norm:  # drawn after every α, as PC-DARTS' _initialize_alphas does
            for kind in kinds:
                self.betas[kind] = nn.Parameter(scale * torch.randn(n_edges))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.alphas.keys())

    def arch_parameters(self) -> list[nn.Parameter]:
        """α of every cell kind, then β (edge normalisation) of every kind."""
        return [*self.alphas.values(), *self.betas.values()]

    def edge_norm_weights(self, kind: str) -> torch.Tensor | None:
        """Per edge of ``kind``, softmax(β) over the edges entering its node (None when edge
        normalisation is off)."""
        if not self.edge_norm:
            return None
        return node_softmax(self.betas[kind], self.edge_index[kind])

    @torch.no_grad()
    def beta_weights(self) -> dict[str, torch.Tensor]:
        """Per cell kind, the edge-normalisation weights softmax(β) (empty when off)."""
        return {k: self.edge_norm_weights(k) for k in self.betas}

    @torch.no_grad()
    def edge_strengths(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Op weights ``[edges, ops]`` per kind as derivation ranks them: with edge
        normalisation each edge's row times its β-weight (PC-DARTS §3.3, "multiply the
        normalised coefficients together"); unchanged otherwise."""
        if not self.edge_norm:
            return weights
        return {k: w * self.edge_norm_weights(k).to(w)[:, None] for k, w in weights.items()}

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def mixed_edges(self) -> list[MixedEdge]:
        return [m for m in self.modules() if isinstance(m, MixedEdge)]

    def add_aux_skip(self) -> None:
        """Give every edge DARTS-' auxiliary skip (:meth:`MixedEdge.add_aux_skip`); its
        weights (stride-2 edges) are weight parameters like any op's."""
        device = next(self.parameters()).device
        for edge in self.mixed_edges():
            edge.add_aux_skip()
            edge.aux.to(device)  # type: ignore[union-attr]
        self._channels_last()

    def bn_batch_stats(self) -> None:
        """Make every batch norm of the supernet normalise with the batch's statistics in
        evaluation too (``track_running_stats=False``; NAS-Bench-201's reference search scripts
        do so for the cells' ops with ``BN=0``). Running averages taken while each forward
        trains a drawn subset of ops (GDAS) describe neither the argmax cell that evaluation
        runs nor, downstream of the cells, the features it gives the stem-to-head BNs."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None

    def set_aux_scale(self, scale: float) -> None:
        """β_skip of DARTS-' auxiliary skips (the same on every edge)."""
        for edge in self.mixed_edges():
            edge.aux_scale = float(scale)

    def useful_ops(self, kind: str) -> list[tuple[int, ...]]:
        """Per edge, every op index except ``none`` (what a full mixed edge computes), among
        the edge's kept ops when :meth:`keep_ops` restricted them."""
        keep = tuple(i for i, n in enumerate(self.op_names) if n != "none")
        kept = getattr(self, "edge_ops", None)
        if kept is None:
            return [keep] * len(self.edge_index[kind])
        return [tuple(i for i in keep if i in ops) for ops in kept[kind]]

    def keep_ops(self, edge_ops: dict[str, Sequence[Sequence[int]]]) -> None:
        """Restrict every edge to some candidate ops: ``edge_ops[kind][e]`` lists the op
        indices edge ``e`` of cells of ``kind`` keeps (P-DARTS' search space approximation).
        The other ops are not built; :meth:`op_mask` tells the method which weights to zero."""
        if set(edge_ops) != set(self.kinds) or any(
                len(edge_ops[k]) != len(self.edge_index[k]) for k in self.kinds):
            raise DiffnasError(f"edge_ops must list the kept ops of every edge of the cell kinds "
                               f"{', '.join(self.kinds)}")
        self.edge_ops = {k: [tuple(int(i) for i in ops) for ops in v] for k, v in edge_ops.items()}
        for kind, cell in self.search_cells():
            for edge, ops in zip(cell.edges, self.edge_ops[kind], strict=True):
                edge.drop_ops(ops)
        self._channels_last()

    def search_cells(self) -> list[tuple[str, nn.Module]]:
        """``(kind, cell)`` of every cell with mixed edges (``cell.edges`` in α's edge order)."""
        other = [k for k in self.kinds if k != "reduce"][0]
        return [("reduce" if getattr(m, "reduction", False) and "reduce" in self.kinds
                 else other, m) for m in self.modules()
                if isinstance(getattr(m, "edges", None), nn.ModuleList)
                and all(isinstance(e, MixedEdge) for e in m.edges)]

    def op_mask(self, kind: str) -> torch.Tensor | None:
        """``[edges, ops]`` True where an edge keeps the op (None: every edge keeps all)."""
        kept = getattr(self, "edge_ops", None)
        if kept is None:
            return None
        mask = torch.zeros(len(kept[kind]), len(self.op_names), dtype=torch.bool)
        for e, ops in enumerate(kept[kind]):
            mask[e, list(ops)] = True
        return mask

    def set_skip_dropout(self, p: float) -> None:
        """Dropout rate on every stride-1 ``skip_connect`` in training (P-DARTS)."""
        for edge in self.mixed_edges():
            edge.skip_dropout = float(p)

    def edge_weights(self) -> dict[str, EdgeWeights]:
        """The policy's :class:`EdgeWeights` per kind; with edge normalisation each edge's op
        weights times its β-weight, which also scales its bypass channels (Eq. 3)."""
        out = {}
        for kind in self.kinds:
            ew = self.policy.edge_policy(self, kind)
            s = self.edge_norm_weights(kind)
            if s is not None:
                ew = dataclasses.replace(ew, weights=ew.weights * s[:, None], edge_scale=s)
            out[kind] = ew
        return out

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
