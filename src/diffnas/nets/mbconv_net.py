"""The fixed network of an ``mbconv`` genotype (ProxylessNAS' ``ProxylessNASNets`` layout).

Same skeleton as the search network of :mod:`diffnas.spaces.mbconv` — stem 3×3 conv-BN-ReLU6
(``channels``, 32 in the paper), the fixed MBConv1 3×3 block (16), the genotype's layers
stage by stage, 1×1 conv-BN-ReLU6 to 1280, global average pooling, dropout, linear — with the
same module names: layer ``i`` of the chain is ``edges.{i}`` (its op's parameters directly,
where the supernet has ``edges.{i}.ops.{o}``), and a ``skip_connect`` layer has no module
parameters. The strides follow the input size as in the search network (the stride rule of
:mod:`diffnas.spaces.mbconv`), so a genotype searched on 28² images trains on 28² images with
the shapes it was searched with, and at 224² it is ProxylessNAS' network.

There is no auxiliary head and no drop-path (ProxylessNAS trains without either);
``dropout`` before the classifier is ProxylessNAS' (0.1 for its Mobile model, 0.3 for GPU).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DiffnasError
from ..spaces.mbconv import (
    STEM,
    MBConvGenotype,
    MBConvSkeleton,
    StageTable,
    mbconv_op,
)


class MBConvNetwork(MBConvSkeleton):
    """The network of ``genotype`` for ``in_channels × input_size²`` images (defaults: the
    paper's 32-channel stem, 224², 1000 classes)."""

    def __init__(self, genotype: MBConvGenotype, channels: int = STEM, num_classes: int = 1000,
                 in_channels: int = 3, input_size: int = 224, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(genotype, MBConvGenotype):
            raise DiffnasError(f"an mbconv network needs an mbconv genotype, got a "
                               f"{getattr(genotype, 'space', type(genotype).__name__)} one")
        if num_classes < 1 or in_channels < 1:
            raise DiffnasError(f"classes and input channels must be positive, got "
                               f"{num_classes}, {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise DiffnasError(f"dropout must be in [0, 1), got {dropout}")
        self.genotype = genotype
        self.channels, self.layers = channels, len(genotype.ops)
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        table = StageTable.build(channels, genotype.widths, input_size)
        ops = genotype.ops

        def make_layer(i: int, c_in: int, c_out: int, stride: int, skippable: bool) -> nn.Module:
            return mbconv_op(ops[i], c_in, c_out, stride, skippable)

        self._build_skeleton(table, genotype.depths, in_channels, num_classes, make_layer,
                             dropout)
        self.drop_path_prob = 0.0  # set by the training loop; unused (no drop-path here)
        self.auxiliary_head = None

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps before each stride-2 layer, and the head conv's output (as the
        supernet's :meth:`~diffnas.spaces.mbconv.MBConvSupernet.forward_stages`)."""
        return self._run_stages(x, lambda i, h: self.edges[i](h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Logits and None (no auxiliary head)."""
        return self.forward(x), None

    def parameters_without_aux(self) -> list[nn.Parameter]:
        """All parameters (there is no auxiliary head)."""
        return list(self.parameters())
