"""The fixed NAS-Bench-201 network of one cell (Dong & Yang, ICLR 2020, §2.1 and Fig. 1).

Same skeleton as the search network of :mod:`diffnas.spaces.nb201` — 3×3 conv stem (C
channels), N cells, residual reduction block, N cells (2C), residual reduction, N cells (4C),
BN-ReLU, global average pooling, linear — with affine BN everywhere (as in the benchmark's
training). With ``imagenet=True`` the stem is the ImageNet one of :mod:`diffnas.spaces.stems`
(224 → 28), as in the ``nb201-imagenet`` search space. Each cell computes only the ops of
its genotype; ``none`` edges are omitted. The op on edge ``i → j`` of block ``b`` is the
module ``blocks.{b}.edges.{i}~{j}_{op}``, so two networks of different genotypes share the
names of their common (edge, op) pairs, and an edge whose op changed shares nothing (not even
a BN of the same shape).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DiffnasError
from ..spaces.nb201 import EDGES, N_NODES, NB201Genotype, NB201Skeleton
from ..spaces.ops import nb201_op


class NB201Cell(nn.Module):
    """One cell: node ``j`` sums op(node ``i``) over its non-``none`` incoming edges."""

    def __init__(self, genotype: NB201Genotype, c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        self.inputs: list[list[tuple[int, str]]] = [[] for _ in range(N_NODES)]
        for (i, j), op in zip(EDGES, genotype.ops, strict=True):
            if op == "none":
                continue
            key = f"{i}~{j}_{op}"
            self.edges[key] = nb201_op(op, c, 1, affine=True)
            self.inputs[j].append((i, key))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, N_NODES):
            out: torch.Tensor | None = None
            for i, key in self.inputs[j]:
                h = self.edges[key](nodes[i])
                out = h if out is None else out + h
            nodes.append(out if out is not None else torch.zeros_like(x))
        return nodes[-1]


class NB201Network(NB201Skeleton):
    """NAS-Bench-201's evaluation network (defaults: C=16, N=5 cells per stage, 10 classes)."""

    def __init__(self, genotype: NB201Genotype, channels: int = 16, layers: int = 5,
                 num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                 imagenet: bool = False) -> None:
        super().__init__()
        self.imagenet_stem = bool(imagenet)  # the ImageNet stem (224 → 28), diffnas.spaces.stems
        if not isinstance(genotype, NB201Genotype):
            raise DiffnasError(f"a NAS-Bench-201 network needs a NAS-Bench-201 genotype, got a "
                               f"{getattr(genotype, 'space', type(genotype).__name__)} one")
        if channels < 1 or layers < 1 or num_classes < 1 or in_channels < 1:
            raise DiffnasError(f"channels, layers, classes and input channels must be positive, "
                               f"got {channels}, {layers}, {num_classes}, {in_channels}")
        need = 32 if imagenet else 4
        if input_size < need:
            stem = " and the 3 stride-2 convolutions of its ImageNet stem" if imagenet else ""
            raise DiffnasError(f"image size {input_size} is too small for a NAS-Bench-201 "
                               f"network: its 2 residual reduction blocks{stem} halve the "
                               f"feature map, so the input must be at least {need}×{need}")
        self.genotype = genotype
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self._build_skeleton(in_channels, channels, layers, num_classes,
                             lambda c: NB201Cell(genotype, c), affine=True)
        self.drop_path_prob = 0.0  # NAS-Bench-201 trains without drop-path
        self.auxiliary_head = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage, as :meth:`DartsNetwork.forward_stages`."""
        return self._run_stages(x, lambda cell, h: cell(h))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Logits and None (the NAS-Bench-201 network has no auxiliary head)."""
        return self.forward(x), None

    def parameters_without_aux(self) -> list[nn.Parameter]:
        """All parameters (there is no auxiliary head)."""
        return list(self.parameters())
