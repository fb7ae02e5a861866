"""The ImageNet (mobile-setting) stem, shared by every space that searches or trains at 224².

DARTS' ImageNet network (Liu et al., ICLR 2019, §A.2; ``quark0/darts`` ``cnn/model.py``
``NetworkImageNet``), which CDARTS, P-DARTS, PC-DARTS and STC-NAS reuse for their ImageNet
searches and retraining: ``stem0`` = 3×3 conv (stride 2) to ``C/2`` → BN → ReLU → 3×3 conv
(stride 2) to ``C`` → BN; ``stem1`` = ReLU → 3×3 conv (stride 2) → BN. Together they take
224×224 to 28×28 (8× fewer rows), where the CIFAR skeletons start at 32×32.

Users: :class:`diffnas.spaces.darts.DartsImageNetSupernet` and
:class:`diffnas.nets.NetworkImageNet` (a cell takes both outputs), and the ``nb201-imagenet``
space and the NAS-Bench-201 network with ``imagenet=True`` (:class:`ImageNetStem`: the two in
sequence, one output). The ``mbconv`` space has its own ImageNet stem, ProxylessNAS' (see
:mod:`diffnas.spaces.mbconv`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DiffnasError

#: stride-2 convolutions of the stem (224 → 28)
STEM_REDUCTIONS = 3


def check_stem_channels(channels: int) -> None:
    """The stem halves the channels in its first conv: ``channels`` must be even, ≥ 2."""
    if channels < 2 or channels % 2:
        raise DiffnasError(f"the ImageNet stem halves the channels in its first convolution: "
                           f"channels must be even and at least 2, got {channels}")


def imagenet_stem0(in_channels: int, channels: int) -> nn.Sequential:
    """``stem0``: two stride-2 3×3 convs, to ``channels/2`` then ``channels`` (224 → 56)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels // 2), nn.ReLU(),
        nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels))


def imagenet_stem1(channels: int) -> nn.Sequential:
    """``stem1``: ReLU → stride-2 3×3 conv → BN (56 → 28)."""
    return nn.Sequential(nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(channels))


class ImageNetStem(nn.Module):
    """``stem1(stem0(x))``: the ImageNet stem for a skeleton whose first block takes one input
    (NAS-Bench-201): ``in_channels`` × H × W → ``channels`` × ⌈H/8⌉ × ⌈W/8⌉."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        check_stem_channels(channels)
        self.stem0 = imagenet_stem0(in_channels, channels)
        self.stem1 = imagenet_stem1(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem1(self.stem0(x))
