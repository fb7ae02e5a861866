"""Evaluation networks of the DARTS cell space, built from a :class:`DartsGenotype`.

Two skeletons, as in the DARTS paper (Liu et al., ICLR 2019, §3.2 and §A.2) and its
reference code (``quark0/darts``, ``cnn/model.py``):

* :class:`NetworkCIFAR` — 3×3 conv stem to ``3C`` channels, ``L`` cells (20), ``C`` initial
  channels (36), reduction cells at ``L//3`` and ``2L//3`` (channels doubled), an optional
  auxiliary head on the output of cell ``2L//3`` (weighted 0.4 in the loss), global average
  pooling and a linear classifier.
* :class:`NetworkImageNet` — the mobile setting: two stems (two stride-2 3×3 convs, then a
  third) take 224×224 to 28×28, 14 cells, 48 channels, auxiliary head, 1000 classes.

Every op is the shared primitive of :mod:`diffnas.spaces.ops` with affine BN; pools have no
BN in the fixed network (``darts_op(..., affine=True)``). Drop-path (DARTS ``utils.drop_path``)
zeroes a whole sample's edge output with probability ``drop_path_prob`` (set by the training
loop, ramped linearly over the epochs) on every edge whose op is not the identity.

**Parameter names are stable**: the op on the edge from node ``j`` to intermediate node ``n``
(``n`` counted from 0, i.e. DARTS node ``n + 2``) of cell ``i`` is the module
``cells.{i}.nodes.{n}.{j}.{op}`` (a second identical ``(op, j)`` pair in one node gets the
suffix ``__1``). Two networks of the same skeleton built from different genotypes therefore
name their shared edges identically; :func:`shared_parameters` / :func:`load_shared` map
parameters between them (used by CDARTS' evaluation network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from ..spaces.darts import DartsGenotype, reduction_layers
from ..spaces.ops import FactorizedReduce, Identity, ReLUConvBN, darts_op, drop_path
from ..spaces.stems import imagenet_stem0, imagenet_stem1


class FixedCell(nn.Module):
    """One cell of a derived genotype: two preprocessed inputs, two ops per intermediate node,
    output the concatenation of the nodes in ``concat`` (DARTS ``model.Cell``)."""

    def __init__(self, pairs: Sequence[tuple[str, int]], concat: Sequence[int], c_pp: int,
                 c_p: int, c: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0 = (FactorizedReduce(c_pp, c, affine=True) if reduction_prev
                     else ReLUConvBN(c_pp, c, 1, 1, 0, affine=True))
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=True)
        self.steps = len(pairs) // 2
        self.concat = tuple(concat)
        if any(not 0 <= k < 2 + self.steps for k in self.concat):
            raise DiffnasError(f"genotype concat {list(self.concat)} names a node outside "
                               f"0..{1 + self.steps}")
        self.multiplier = len(self.concat)
        self.nodes = nn.ModuleList()
        # per node: the (input, input key, op key) of its edges, in genotype order
        self.edges: list[list[tuple[int, str, str]]] = []
        for n in range(self.steps):
            node = nn.ModuleDict()
            edges: list[tuple[int, str, str]] = []
            for op_name, src in pairs[2 * n: 2 * n + 2]:
                stride = 2 if reduction and src < 2 else 1
                by_op = node[str(src)] if str(src) in node else nn.ModuleDict()
                key = op_name if op_name not in by_op else f"{op_name}__1"
                by_op[key] = darts_op(op_name, c, stride, affine=True)
                node[str(src)] = by_op
                edges.append((src, str(src), key))
            self.nodes.append(node)
            self.edges.append(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node, edges in zip(self.nodes, self.edges, strict=True):
            out: torch.Tensor | None = None
            for src, jkey, okey in edges:
                op = node[jkey][okey]
                h = op(states[src])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                out = h if out is None else out + h
            assert out is not None
            states.append(out)
        return torch.cat([states[k] for k in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier: ReLU → 5×5 avg-pool → 1×1 conv (128) → BN → ReLU → 2×2 conv
    (768) [→ BN] → ReLU → linear.

    DARTS pools 8×8 CIFAR maps with stride 3 and 7×7 ImageNet maps with stride 2, both to 2×2;
    a map of another size (``in_size``) is pooled adaptively to 2×2 instead. The ImageNet head
    has no BN after the 2×2 conv (as in the DARTS experiments; see its ``model.py``)."""

    def __init__(self, c: int, num_classes: int, in_size: int, stride: int, bn: bool) -> None:
        super().__init__()
        pooled = (in_size - 5) // stride + 1 if in_size >= 5 else 0
        pool: nn.Module = (nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
                           if pooled == 2 else nn.AdaptiveAvgPool2d(2))
        layers: list[nn.Module] = [nn.ReLU(), pool, nn.Conv2d(c, 128, 1, bias=False),
                                   nn.BatchNorm2d(128), nn.ReLU(),
                                   nn.Conv2d(128, 768, 2, bias=False)]
        if bn:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _check_size(kind: str, input_size: int, strides: int, what: str) -> None:
    need = 2 ** strides
    if input_size < need:
        raise DiffnasError(f"image size {input_size} is too small for a {kind} network: its "
                           f"{what} halve the feature map {strides} times, so the input must be "
                           f"at least {need}×{need}")


class DartsNetwork(nn.Module):
    """Base of the fixed DARTS-space networks: stems (subclass), cells, optional aux head.

    ``forward(x)`` returns the logits; ``forward_with_aux(x)`` returns ``(logits, aux_logits)``
    (``aux_logits`` is None unless the network has an auxiliary head and is training);
    ``forward_stages(x)`` returns the feature map after each stage (the stages are split at the
    reduction cells: stage ``k`` ends just before reduction cell ``k``, the last stage at the
    final cell). ``drop_path_prob`` is set by the training loop.
    """

    genotype: DartsGenotype
    auxiliary_head: AuxiliaryHead | None

    def _build_cells(self, genotype: DartsGenotype, channels: int, layers: int, c_pp: int,
                     c_p: int, reduction_prev: bool, reductions: Sequence[int]) -> int:
        if not isinstance(genotype, DartsGenotype):
            raise DiffnasError(f"a DARTS-space network needs a DARTS genotype, got a "
                               f"{getattr(genotype, 'space', type(genotype).__name__)} one")
        if not genotype.reduce:
            raise DiffnasError("the genotype has no reduction cell; expected reduce=[...]")
        self.genotype = genotype
        self.layers, self.channels = layers, channels
        self.reductions = tuple(reductions)
        self.aux_index = 2 * layers // 3
        self.drop_path_prob = 0.0
        self.cells = nn.ModuleList()
        c_curr = channels
        self._aux_channels = c_p
        self._cell_channels: list[int] = []
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                c_curr *= 2
            pairs, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                             else (genotype.normal, genotype.normal_concat))
            cell = FixedCell(pairs, concat, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
            self._cell_channels.append(c_p)
            if i == self.aux_index:
                self._aux_channels = c_p
        return c_p

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s0, s1)``: the two inputs of the first cell."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _run(self, x: torch.Tensor, want_aux: bool, stages: list[torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self.stem_forward(x)
        aux = None
        for i, cell in enumerate(self.cells):
            if stages is not None and i in self.reductions:
                stages.append(s1)
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if want_aux and i == self.aux_index and self.auxiliary_head is not None:
                aux = self.auxiliary_head(s1)
        if stages is not None:
            stages.append(s1)
        return s1, aux

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling and the linear classifier."""
        return self.classifier(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._run(x, False, None)[0])

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, when training with an auxiliary head, the auxiliary logits."""
        feats, aux = self._run(x, self.training, None)
        return self.head(feats), aux

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage (one more than the number of reduction cells)."""
        stages: list[torch.Tensor] = []
        self._run(x, False, stages)
        return stages

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each :meth:`forward_stages` output."""
        return [c for i, c in enumerate(self._cell_channels) if i + 1 in self.reductions] + [
            self._cell_channels[-1]]

    def parameters_without_aux(self) -> list[nn.Parameter]:
        """The parameters the DARTS papers count (all but the auxiliary head's)."""
        return [p for n, p in self.named_parameters() if not n.startswith("auxiliary_head.")]


class NetworkCIFAR(DartsNetwork):
    """The DARTS CIFAR evaluation network (defaults: 20 cells, 36 channels, 10 classes).

    ``input_size`` (32) only validates the size and shapes the auxiliary head's pooling; any
    ``in_channels`` works (1 for Fashion-MNIST)."""

    def __init__(self, genotype: DartsGenotype, channels: int = 36, layers: int = 20,
                 num_classes: int = 10, auxiliary: bool = True, in_channels: int = 3,
                 input_size: int = 32, stem_multiplier: int = 3) -> None:
        super().__init__()
        if channels < 1 or layers < 1 or num_classes < 1 or in_channels < 1:
            raise DiffnasError(f"channels, layers, classes and input channels must be positive, "
                               f"got {channels}, {layers}, {num_classes}, {in_channels}")
        reductions = reduction_layers(layers)
        _check_size("CIFAR-style", input_size, len(reductions),
                    f"{len(reductions)} reduction cells")
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_out = self._build_cells(genotype, channels, layers, c_stem, c_stem, False, reductions)
        n_red_to_aux = sum(r <= self.aux_index for r in reductions)
        aux_size = -(-input_size // 2 ** n_red_to_aux)
        self.auxiliary_head = (AuxiliaryHead(self._aux_channels, num_classes, aux_size, 3, True)
                               if auxiliary else None)
        self.classifier = nn.Linear(c_out, num_classes)
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(DartsNetwork):
    """The DARTS ImageNet (mobile setting) network: defaults 14 cells, 48 channels, 1000
    classes, 224×224 input, auxiliary head after cell ``2L//3``."""

    def __init__(self, genotype: DartsGenotype, channels: int = 48, layers: int = 14,
                 num_classes: int = 1000, auxiliary: bool = True, in_channels: int = 3,
                 input_size: int = 224) -> None:
        super().__init__()
        if channels < 2 or layers < 1 or num_classes < 1 or in_channels < 1:
            raise DiffnasError(f"channels (at least 2), layers, classes and input channels must "
                               f"be positive, got {channels}, {layers}, {num_classes}, "
                               f"{in_channels}")
        reductions = reduction_layers(layers)
        _check_size("ImageNet-style", input_size, 3 + len(reductions),
                    f"3 stride-2 stem convolutions and {len(reductions)} reduction cells")
        self.stem0 = imagenet_stem0(in_channels, channels)  # diffnas.spaces.stems, shared
        self.stem1 = imagenet_stem1(channels)
        c_out = self._build_cells(genotype, channels, layers, channels, channels, True,
                                  reductions)
        n_red_to_aux = sum(r <= self.aux_index for r in reductions)
        aux_size = -(-input_size // 2 ** (3 + n_red_to_aux))
        self.auxiliary_head = (AuxiliaryHead(self._aux_channels, num_classes, aux_size, 2, False)
                               if auxiliary else None)
        self.classifier = nn.Linear(c_out, num_classes)
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# ----------------------------------------------------------------------- parameter sharing
def shared_parameters(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of the parameters and buffers that ``a`` and ``b`` both hold with equal shapes
    (for two DARTS-space networks: stems, preprocessing, classifier and the edges whose
    ``(cell, node, input, op)`` coincide)."""
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k, v in sa.items() if k in sb and sb[k].shape == v.shape]


@torch.no_grad()
def load_shared(dst: nn.Module, src: nn.Module | dict[str, torch.Tensor]) -> list[str]:
    """Copy into ``dst`` every parameter/buffer of ``src`` (a module or a state dict) that has
    the same name and shape; returns the copied names."""
    state = src.state_dict() if isinstance(src, nn.Module) else src
    own = dst.state_dict()
    copied = []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape:
            own[k].copy_(v)
            copied.append(k)
    return copied
