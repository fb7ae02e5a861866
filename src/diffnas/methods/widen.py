"""Widening the ops of a partial-channel supernet between two search stages (DrNAS'
progressive learning: Chen et al., "DrNAS: Dirichlet Neural Architecture Search", ICLR 2021,
§3.3; reference xiangning-chen/DrNAS ``net2wider.py`` and the ``wider`` methods of
``DARTS-space/operations.py``).

When a stage switch lowers the partial-channel divisor K (6 → 4), each edge's ops grow from
C/K_old to C/K_new channels. The finished stage's weights are carried into the new, wider
supernet in the manner of Net2WiderNet (Chen, Goodfellow & Shlens, ICLR 2016) as the reference
does it: every grown dimension keeps its old channels in place and fills the new ones with
copies of randomly drawn old channels (no rescaling, so the widened op is not exactly the old
function: the reference does not rescale either). A copy is tied through an op: the pointwise
conv of a (dilated or separable) conv block takes the input columns of the depthwise channels
that were copied, and a BN takes the statistics of the conv rows that were copied.

Everything else (stem, preprocessing, classifier, α, β) has the same shape in both supernets
and is copied as it is. :func:`widen_state` returns the index plans, so that the SGD momentum
buffers can be grown with the same copies (the reference's ``configure_optimizer``).

Deviation (one line): the reference's FactorizedReduce widening appends the BN statistics of
both half-convs after the old ones, out of line with the convs' rows; here each half's BN
statistics follow its own conv rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DiffnasError
from ..spaces.base import MixedEdge, Supernet
from ..spaces.ops import DilConv, FactorizedReduce, Identity, Pool, ReLUConvBN, SepConv, Zero

#: state entry name -> [(dim, source index)]: entry' = entry.index_select(dim, source) in turn
Plan = dict[str, list[tuple[int, torch.Tensor]]]


def sources(old: int, new: int) -> torch.Tensor:
    """For ``new`` channels grown from ``old``: the old channels in place, then ``new − old``
    channels drawn uniformly from the old ones (torch's global generator)."""
    if new < old:
        raise DiffnasError(f"cannot widen {old} channels to {new}: a stage switch may only keep "
                           "or lower the partial-channel divisor K (e.g. 6 → 4)")
    return torch.cat([torch.arange(old), torch.randint(0, old, (new - old,))])


def _bn(prefix: str, bn: nn.BatchNorm2d | None, src: torch.Tensor) -> Plan:
    if bn is None:
        return {}
    names = ["running_mean", "running_var"] + (["weight", "bias"] if bn.affine else [])
    return {f"{prefix}{n}": [(0, src)] for n in names}


def _conv_block(prefix: str, op: DilConv, c_old: int, c_new: int) -> Plan:
    """ReLU → depthwise → pointwise → BN: depthwise rows, then the pointwise columns tied to
    them, the pointwise rows, and the BN tied to those rows."""
    dw = sources(c_old, c_new)
    pw = sources(c_old, c_new)
    return {f"{prefix}dw.weight": [(0, dw)], f"{prefix}pw.weight": [(1, dw), (0, pw)],
            **_bn(f"{prefix}bn.", op.bn, pw)}


def op_plan(op: nn.Module, c_old: int, c_new: int) -> Plan:
    """How to grow the state of one candidate op built for ``c_old`` channels to ``c_new``."""
    if isinstance(op, SepConv):
        return {**_conv_block("first.", op.first, c_old, c_new),
                **_conv_block("second.", op.second, c_old, c_new)}
    if isinstance(op, DilConv):
        return _conv_block("", op, c_old, c_new)
    if isinstance(op, ReLUConvBN):
        rows = sources(c_old, c_new)
        return {"conv.weight": [(1, sources(c_old, c_new)), (0, rows)],
                **_bn("bn.", op.bn, rows)}
    if isinstance(op, FactorizedReduce):
        if c_old % 2 or c_new % 2:
            raise DiffnasError(f"cannot widen a FactorizedReduce from {c_old} to {c_new} "
                               "channels: both must be even")
        h = c_old // 2
        r1, r2 = sources(h, c_new // 2), sources(h, c_new // 2)
        return {"conv_1.weight": [(1, sources(c_old, c_new)), (0, r1)],
                "conv_2.weight": [(1, sources(c_old, c_new)), (0, r2)],
                **_bn("bn.", op.bn, torch.cat([r1, h + r2]))}
    if isinstance(op, Pool):
        return _bn("bn.", op.bn, sources(c_old, c_new))
    if isinstance(op, Identity | Zero):
        return {}
    raise DiffnasError(f"cannot widen a {type(op).__name__} op between stages; widening knows "
                       "SepConv, DilConv, ReLUConvBN, FactorizedReduce, Pool, Identity, Zero")


def grow(t: torch.Tensor, plan: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``t`` with every ``(dim, source)`` of ``plan`` applied in turn."""
    for dim, src in plan:
        t = t.index_select(dim, src.to(t.device))
    return t


@torch.no_grad()
def widen_state(old: Supernet, new: Supernet) -> Plan:
    """Copy ``old``'s state into ``new``, growing the ops of every mixed edge from the old
    edge's C/K to the new edge's C/K channels. Ops that ``new`` does not build (``none``
    placeholders of pruned ops) are skipped. Returns the plans of the grown entries (full
    state names). Raises :class:`DiffnasError` if the two supernets differ otherwise."""
    plans: Plan = {}
    for name, edge in new.named_modules():
        if not isinstance(edge, MixedEdge):
            continue
        prev = old.get_submodule(name)
        if not isinstance(prev, MixedEdge) or prev.c != edge.c:
            raise DiffnasError(f"the supernets of two stages differ at edge {name}: widening "
                               "needs the same cells and channels, only K may change")
        c_old, c_new = prev.c // prev.partial_channels, edge.c // edge.partial_channels
        for i, (a, b) in enumerate(zip(prev.ops, edge.ops, strict=True)):
            if next(iter(b.state_dict()), None) is None:  # nothing to carry (pruned, param-free)
                continue
            if type(a) is not type(b):
                raise DiffnasError(f"op {i} of edge {name} is a {type(a).__name__} in one stage "
                                   f"and a {type(b).__name__} in the next")
            for key, p in op_plan(a, c_old, c_new).items():
                plans[f"{name}.ops.{i}.{key}"] = p
    src = old.state_dict()
    for key, t in new.state_dict().items():
        if key not in src:
            raise DiffnasError(f"the next stage's supernet has {key}, which the finished "
                               "stage's does not")
        value = grow(src[key], plans.get(key, []))
        if value.shape != t.shape:
            raise DiffnasError(f"cannot carry {key} from {tuple(src[key].shape)} to "
                               f"{tuple(t.shape)} between stages")
        t.copy_(value)
    return plans
