"""Candidate operations shared by the search spaces and the fixed networks.

Operations that begin with a ReLU expose ``pre_relu = True`` and a ``body``
method that takes the already-rectified input. A mixed edge applies the ReLU
once and feeds every such operation from it (all DARTS convolutions start with
ReLU on the same edge input), instead of once per operation; ``forward``
applies the ReLU itself, so an operation used alone behaves as in the papers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def scaled_bn(bn: nn.BatchNorm2d, y: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``scale · bn(y)`` in one batch-norm call: the scale joins BN's affine weight.

    A mixed edge multiplies each op's output by its weight; for ops ending in BN
    folding it in here saves one full pass over the output forward and backward.
    """
    if scale is None:
        return bn(y)
    if getattr(bn, "syncs_batch_stats", False):  # --sync-bn (engine.distributed): its own call
        return bn(y) * scale
    momentum = bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(bn.num_batches_tracked)
    # contiguous: torch's CPU batch-norm backward on channels-last inputs misreads a stride-0
    # (expanded) weight once C >= 16: wrong, run-to-run different (NaN) gradients
    weight = (scale.expand(bn.num_features).contiguous() if bn.weight is None
              else bn.weight * scale)
    bias = None if bn.bias is None else bn.bias * scale
    use_batch_stats = bn.training or not bn.track_running_stats
    return F.batch_norm(y, bn.running_mean, bn.running_var, weight, bias, use_batch_stats,
                        momentum if momentum is not None else 0.0, bn.eps)


class Op(nn.Module):
    """Base of candidate operations.

    ``pre_relu``: the op starts with a ReLU of its input, and ``body`` takes the
    rectified input. ``scalable``: the op ends in BN, and ``body(x, scale)``
    returns ``scale · op(x)`` by folding the scale into that BN.
    """

    pre_relu = False
    scalable = False

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.relu(x) if self.pre_relu else x)


class ReLUConvBN(Op):
    """ReLU → conv k×k → BN (DARTS preprocessing; NAS-Bench-201 nor_conv)."""

    pre_relu = scalable = True

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def body(self, xr: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return scaled_bn(self.bn, self.conv(xr), scale)


def to_phases(x: torch.Tensor, d: int) -> torch.Tensor:
    """``[B, C, H, W] → [d²·B, C, ⌈H/d⌉, ⌈W/d⌉]``: the d×d polyphase components as a batch
    (zero-padded to multiples of d), laid out channels-last."""
    b, c, h, w = x.shape
    ph, pw = -h % d, -w % d
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hh, ww = (h + ph) // d, (w + pw) // d
    t = x.permute(0, 2, 3, 1).reshape(b, hh, d, ww, d, c).permute(2, 4, 0, 1, 3, 5)
    return t.reshape(d * d * b, hh, ww, c).permute(0, 3, 1, 2)


def from_phases(y: torch.Tensor, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_phases`, cropped back to ``h × w``."""
    n, c, hh, ww = y.shape
    b = n // (d * d)
    t = y.permute(0, 2, 3, 1).reshape(d, d, b, hh, ww, c).permute(2, 3, 0, 4, 1, 5)
    t = t.reshape(b, hh * d, ww * d, c).permute(0, 3, 1, 2)
    return t[:, :, :h, :w] if (hh * d, ww * d) != (h, w) else t


class DilConv(Op):
    """DARTS dil_conv: ReLU → depthwise k×k (dilation d) → pointwise 1×1 → BN.

    A dilated depthwise convolution is computed as the undilated one on the d×d
    polyphase components of its input (stride 1), or on the even-indexed grid
    (stride 2 = d): the same numbers, but CPU kernels for dilated depthwise
    convolutions (especially their backward) are several times slower.
    """

    pre_relu = scalable = True

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, dilation: int,
                 affine: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)
        d = dilation
        self._polyphase = d > 1 and stride in (1, d) and pad == d * (k - 1) // 2 and k % 2 == 1

    def depthwise(self, xr: torch.Tensor) -> torch.Tensor:
        if not self._polyphase:
            return self.dw(xr)
        d, k = self.dw.dilation[0], self.dw.kernel_size[0]
        if self.dw.stride[0] == d:  # only the grid of multiples of d is ever read
            return F.conv2d(subsample(xr, (0,), d)[0], self.dw.weight, None, 1, k // 2, 1,
                            self.dw.groups)
        h, w = xr.shape[-2:]
        y = F.conv2d(to_phases(xr, d), self.dw.weight, None, 1, k // 2, 1, self.dw.groups)
        return from_phases(y, d, h, w)

    def body(self, xr: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return scaled_bn(self.bn, self.pw(self.depthwise(xr)), scale)

    def phase_domain(self, xr: torch.Tensor) -> bool:
        """Whether :meth:`phase_body` applies to ``xr``: a stride-1 polyphase convolution on
        sizes that are multiples of d (no padding pixel enters BN's batch statistics)."""
        d = self.dw.dilation[0]
        return (self._polyphase and self.dw.stride[0] == 1 and xr.shape[-2] % d == 0
                and xr.shape[-1] % d == 0)

    def phase_body(self, phases: torch.Tensor, scale: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """:meth:`body` on ``phases = to_phases(xr, d)``, output left in the polyphase domain:
        the 1×1 conv and BN act per pixel, and BN's statistics see the same pixels, so
        ``from_phases`` of the result is ``body(xr)``. A mixed edge sums its dilated ops
        there and converts once (:meth:`diffnas.spaces.base.MixedEdge.mix`)."""
        k = self.dw.kernel_size[0]
        y = F.conv2d(phases, self.dw.weight, None, 1, k // 2, 1, self.dw.groups)
        return scaled_bn(self.bn, self.pw(y), scale)


class SepConv(Op):
    """DARTS sep_conv: two stacked (ReLU → depthwise k×k → pointwise → BN), stride on the first."""

    pre_relu = scalable = True

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool) -> None:
        super().__init__()
        self.first = DilConv(c_in, c_in, k, stride, pad, 1, affine)
        self.second = DilConv(c_in, c_out, k, 1, pad, 1, affine)

    def body(self, xr: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.second.body(F.relu(self.first.body(xr)), scale)


class FactorizedReduce(Op):
    """ReLU → two stride-2 1×1 convs on offset grids, concatenated → BN (halves H and W).

    The offset branch reads ``x[1:, 1:]``; for odd sizes (7×7 after two
    reductions of 28×28) its output is one row/column short and is zero-padded,
    which equals padding the input first: both branches give ⌈H/2⌉.
    """

    pre_relu = scalable = True

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {c_out}")
        # stride-1 convs applied to the subsampled grids (= stride-2 1×1 convs, see body)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def body(self, xr: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        # A stride-2 1×1 conv is a stride-1 one on the even grid. Subsampling first is also a
        # workaround: torch 2.13's CPU backward of a stride-2 1×1 conv in channels-last
        # layout corrupts memory when run on one thread.
        if min(xr.shape[-2:]) < 2:  # the offset grid is all padding
            a = self.conv_1(subsample(xr, (0,))[0])
            return scaled_bn(self.bn, torch.cat([a, torch.zeros_like(a)], dim=1), scale)
        g0, g1 = subsample(xr, (0, 1))
        a, b = self.conv_1(g0), self.conv_2(g1)
        dh, dw = a.shape[-2] - b.shape[-2], a.shape[-1] - b.shape[-1]
        if dh or dw:
            b = F.pad(b, (0, dw, 0, dh))
        return scaled_bn(self.bn, torch.cat([a, b], dim=1), scale)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


class _Subsample(torch.autograd.Function):
    """The grids ``x[:, :, o::step, o::step]`` for each offset ``o``, as dense tensors in
    ``x``'s memory layout, with a backward that keeps that layout: autograd's own slice
    backward scatters into a *contiguous* zero tensor, and a contiguous gradient meeting a
    channels-last ReLU output sends ``threshold_backward`` to a strided path ~30× slower
    (torch 2.13 CPU). One zero tensor takes the gradients of all grids."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, offsets: tuple[int, ...], step: int
                ) -> tuple[torch.Tensor, ...]:
        fmt = _layout(x)
        ctx.shape, ctx.fmt, ctx.offsets, ctx.step = x.shape, fmt, offsets, step
        ctx.dtype, ctx.device = x.dtype, x.device
        return tuple(x[:, :, o::step, o::step].contiguous(memory_format=fmt) for o in offsets)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        gx = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device,
                         memory_format=ctx.fmt).zero_()  # zeros made in the layout, not copied
        s = ctx.step
        for o, g in zip(ctx.offsets, grads, strict=True):
            if g is not None:
                gx[:, :, o::s, o::s] += g
        return gx, None, None


def subsample(x: torch.Tensor, offsets: tuple[int, ...], step: int = 2
              ) -> tuple[torch.Tensor, ...]:
    """Every ``step``-th row and column of ``x`` from each offset (see :class:`_Subsample`;
    plain slices where no gradient is taken, and when traced for export)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or not (
            torch.is_grad_enabled() and x.requires_grad):
        fmt = _layout(x)
        return tuple(x[:, :, o::step, o::step].contiguous(memory_format=fmt) for o in offsets)
    return _Subsample.apply(x, offsets, step)


class Pool(Op):
    """3×3 max or average pooling, optionally followed by a non-affine BN (DARTS search edges)."""

    def __init__(self, kind: str, c: int, stride: int, bn: bool, affine: bool = False) -> None:
        super().__init__()
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(c, affine=affine) if bn else None
        self.scalable = bn

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.pool(x)
        return scaled_bn(self.bn, y, scale) if self.bn is not None else y


class Identity(Op):
    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return x


class Zero(Op):
    """The ``none`` operation: zeros of the (strided) output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


# --------------------------------------------------------------------------- factories
def darts_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """The 8 DARTS primitives (Liu et al., 2019, §3.1; pools get a BN in search as in its code)."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return Pool("max", c, stride, bn=not affine)
    if name == "avg_pool_3x3":
        return Pool("avg", c, stride, bn=not affine)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    if name == "sep_conv_7x7":
        return SepConv(c, c, 7, stride, 3, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise KeyError(name)


def nb201_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """The 5 NAS-Bench-201 operations (Dong & Yang, 2020, §2.1)."""
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, stride, 0, affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, stride, 1, affine)
    if name == "avg_pool_3x3":
        return Pool("avg", c, stride, bn=False)
    raise KeyError(name)


PARAMETER_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each sample of ``x`` with probability ``p`` and scale the rest by ``1/(1-p)``
    (DARTS ``utils.drop_path``; the fixed network's cells and, with the ``drop_path`` part,
    the supernet's edges)."""
    if p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)
