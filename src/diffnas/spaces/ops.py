"""Candidate operations shared by the search spaces and the fixed networks.

Operations that begin with a ReLU expose ``pre_relu = True`` and a ``body``
method that takes the already-rectified input. A mixed edge applies the ReLU
once and feeds every such operation from it (all DARTS convolutions start with
ReLU on the same edge input), instead of once per operation; ``forward``
applies the ReLU itself, so an operation used alone behaves as in the papers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreReLU(nn.Module):
    """Base of operations whose first layer is a ReLU on the input."""

    pre_relu = True

    def body(self, xr: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.relu(x))


class ReLUConvBN(PreReLU):
    """ReLU → conv k×k → BN (DARTS preprocessing; NAS-Bench-201 nor_conv)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def body(self, xr: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(xr))


class DilConv(PreReLU):
    """DARTS dil_conv: ReLU → depthwise k×k (dilation d) → pointwise 1×1 → BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, dilation: int,
                 affine: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def body(self, xr: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pw(self.dw(xr)))


class SepConv(PreReLU):
    """DARTS sep_conv: two stacked (ReLU → depthwise k×k → pointwise → BN), stride on the first."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool) -> None:
        super().__init__()
        self.first = DilConv(c_in, c_in, k, stride, pad, 1, affine)
        self.second = DilConv(c_in, c_out, k, 1, pad, 1, affine)

    def body(self, xr: torch.Tensor) -> torch.Tensor:
        return self.second(self.first.body(xr))


class FactorizedReduce(PreReLU):
    """ReLU → two stride-2 1×1 convs on offset grids, concatenated → BN (halves H and W).

    The offset branch pads one row/column first, so odd sizes (7×7 after two
    reductions of 28×28) give matching shapes: ceil(H/2) on both branches.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {c_out}")
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def body(self, xr: torch.Tensor) -> torch.Tensor:
        shifted = F.pad(xr, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(xr), self.conv_2(shifted)], dim=1))


class Pool(nn.Module):
    """3×3 max or average pooling, optionally followed by a non-affine BN (DARTS search edges)."""

    pre_relu = False

    def __init__(self, kind: str, c: int, stride: int, bn: bool, affine: bool = False) -> None:
        super().__init__()
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(c, affine=affine) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        return self.bn(y) if self.bn is not None else y


class Identity(nn.Module):
    pre_relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation: zeros of the (strided) output shape."""

    pre_relu = False

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
