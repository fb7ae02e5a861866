"""The chain-structured MBConv search space ``mbconv`` (ProxylessNAS: Cai, Zhu & Han,
"ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware", ICLR 2019;
the space CDARTS' §4.6 chain-structured search and FBNet/TF-NAS use).

One chain of layers; every searchable layer is one mixed edge whose candidates are the
MBConv blocks (MobileNetV2's inverted bottleneck: 1×1 expansion conv → BN → ReLU6 → k×k
depthwise conv → BN → ReLU6 → 1×1 projection → BN, no activation after the projection) with
expansion e ∈ {3, 6} × kernel k ∈ {3, 5, 7}, plus ``skip_connect`` (the identity) on every
layer but the first of a stage, which changes the width and carries the stage's stride.

Stage table (ProxylessNAS reference search code, mit-han-lab/proxylessnas commit 80c1c37,
``search/imagenet_arch_search.py`` defaults ``--width_stages 24,40,80,96,192,320
--n_cell_stages 4,4,4,4,4,1 --stride_stages 2,2,2,1,2,1`` and
``search/models/super_nets/super_proxyless.py``), at 224×224:

====================  ========  ======  ======  ==========================================
block                 channels  layers  stride  output (224² input)
====================  ========  ======  ======  ==========================================
stem 3×3 conv-BN-ReLU6    32       1       2     112²
MBConv1 3×3 (fixed)       16       1       1     112²  (expansion 1: no 1×1 expansion conv)
stage 1 (searched)        24       4       2     56²
stage 2 (searched)        40       4       2     28²
stage 3 (searched)        80       4       2     14²
stage 4 (searched)        96       4       1     14²
stage 5 (searched)       192       4       2     7²
stage 6 (searched)       320       1       1     7²
1×1 conv-BN-ReLU6       1280       1       1     7²
global avg pool, linear  classes
====================  ========  ======  ======  ==========================================

21 searched layers, 21 − 6 = 15 of them skippable: 6^6 · 7^15 ≈ 2.2·10^17 architectures.
A skippable MBConv layer adds its input (the residual of MobileNetV2, ProxylessNAS'
``MobileInvertedResidualBlock`` with an identity shortcut where stride = 1 and the width is
kept); the first layer of a stage and the fixed MBConv1 have no residual. CDARTS §4.6 states
it follows this ProxylessNAS space; its own stage table was not reachable to check here.

The ``SearchConfig`` knobs: ``channels`` is the stem width (32 in the paper); every width is
scaled by ``channels / 32`` and rounded with ProxylessNAS' ``make_divisible(w · m, 8)`` (its
``--width_mult``; the 1280-channel head is only scaled for m > 1, as there); the stem itself
is ``channels`` wide. Every other width is at least 8, so below ``channels = 8`` only the stem
narrows (the tiny test configs). ``layers`` caps the depth of every stage
(``min(depth, layers)``; 4 or more: the paper's 4, 4, 4, 4, 4, 1).

Small inputs: the stride rule. At 224² five stride-2 convolutions take the map to 7×7. For an
image of size S the supernet (and the network built from a genotype) keeps the largest number
r ≤ 5 of them with ⌈S / 2^r⌉ ≥ 4 and gives stride 1 to the first 5 − r (stem first, then
stage 1, stage 2, ...): 224² → all five (7×7 at the end), CIFAR 32² → the last three (4×4,
MobileNetV2's usual CIFAR adaptation: stem and first stage at stride 1), Fashion-MNIST 28² →
three (4×4), 16² → two, digits 8² → one. The layers that remain at a given resolution are
those the paper's network runs there. Skippability depends on neither strides nor widths: a
stage's first layer is never skippable (at the paper's widths it always changes the width;
below ``channels = 8`` the rounding can keep it, e.g. 8 → 8, and it is still not skippable).

Genotype: :class:`MBConvGenotype` — the op of every searched layer, grouped by stage, and the
six stage widths (the paper's table unless a published network used other widths:
ProxylessNAS-Mobile's first stage is 32 wide). JSON ``{"space": "mbconv", "stages": [[op,
...], ...], "widths": [...]}``; text ``mbconv:k5_e3,k3_e3,skip_connect,skip_connect/...``
(stages separated by ``/``, layers by ``,``; ``;widths=32,40,80,96,192,320`` appended when
not the default). Derivation: per layer the argmax of the method's op weights over the ops the
layer has (ProxylessNAS' ``chosen_op``, ``argmax`` of its path probabilities).

Deviations (paper/reference says X, we do Z because ...):

* ProxylessNAS' supernet puts a ``Zero`` op in the mixed edge and the identity shortcut
  outside it (layer = x + Σ_o w_o op_o(x)); we make the skip an identity candidate and every
  skippable MBConv candidate carry its own residual (layer = Σ_o w_o op_o(x), each op a whole
  block, FBNet's formulation, Wu et al. CVPR 2019). With weights summing to 1
  (softmax, Gumbel, Dirichlet) the two are the same function; with ReLU/sigmoid weights
  (STC-NAS, FairDARTS) ours scales the whole block, and a sampled skip passes its input with
  a gradient for its α, where a sampled ``Zero`` gives its α none.
* ProxylessNAS trains binarised paths (one or two sampled ops per step); here every method
  brings its own edge policy (DARTS: all ops weighted), as the issue asks.
* BN: ProxylessNAS' ``bn_param`` momentum 0.1 and eps 1e-3 are kept; search-edge BN is affine
  (ProxylessNAS' candidates are whole trained layers), not DARTS' non-affine search BN.
* ``partial_channels`` (PC-DARTS) is refused: most layers change the width, so the bypassed
  channels would have nowhere to go.
* Initialisation: ProxylessNAS draws convolutions with ``he_fout`` (``--model_init``); we keep
  torch's defaults, as every other space here does.
* Retraining: ``diffnas train`` has no dropout knob, so the network trains without the
  classifier dropout ProxylessNAS uses (0.1 Mobile, 0.3 GPU); :class:`MBConvNetwork` takes
  ``dropout`` from Python.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from .base import EdgeWeights, MixedEdge, Supernet
from .ops import Op, scaled_bn

#: candidate ops of a layer: MBConv kernel k × expansion e, then the identity
CONV_OPS: tuple[str, ...] = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
OPS: tuple[str, ...] = (*CONV_OPS, "skip_connect")
STEM, FIRST, HEAD = 32, 16, 1280
WIDTHS: tuple[int, ...] = (24, 40, 80, 96, 192, 320)
DEPTHS: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
STRIDES: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
BN_MOMENTUM, BN_EPS = 0.1, 1e-3  # ProxylessNAS bn_param
#: stride-2 convolutions at 224²: the stem and the stages with stride 2
MAX_REDUCTIONS = 1 + sum(s == 2 for s in STRIDES)  # 5
MIN_FINAL = 4  # the stride rule keeps the last feature map at least this wide


def op_shape(name: str) -> tuple[int, int]:
    """``(kernel, expansion)`` of an MBConv op name ``k{k}_e{e}``."""
    m = re.fullmatch(r"k(\d+)_e(\d+)", name)
    if not m:
        raise KeyError(name)
    return int(m.group(1)), int(m.group(2))


def make_divisible(v: float, divisor: int = 8) -> int:
    """ProxylessNAS' (MobileNet's) ``make_divisible``: ``v`` rounded to a multiple of
    ``divisor``, at least ``divisor``, never more than 10 % below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def reductions_kept(image_size: int) -> int:
    """How many of the five stride-2 convolutions an ``image_size``² input keeps (the stride
    rule of the module docstring): the most, up to 5, that leave a last map ≥ 4×4."""
    if image_size < 1:
        raise DiffnasError(f"image size must be positive, got {image_size}")
    r = MAX_REDUCTIONS
    while r > 0 and math.ceil(image_size / 2 ** r) < MIN_FINAL:
        r -= 1
    return r


def strides_for(image_size: int) -> tuple[int, tuple[int, ...]]:
    """``(stem stride, stage strides)`` for an ``image_size``² input: the first
    ``5 − reductions_kept`` stride-2 convolutions become stride 1."""
    drop = MAX_REDUCTIONS - reductions_kept(image_size)
    strides = [2, *STRIDES]
    for i, s in enumerate(strides):
        if drop and s == 2:
            strides[i], drop = 1, drop - 1
    return strides[0], tuple(strides[1:])


@dataclass(frozen=True)
class StageTable:
    """The widths of one network: stem, fixed MBConv1, stages, head (after the width
    multiplier ``channels / 32``), and its strides for one input size."""

    stem: int
    first: int
    widths: tuple[int, ...]
    head: int
    stem_stride: int
    strides: tuple[int, ...]

    @classmethod
    def build(cls, channels: int, widths: Sequence[int], image_size: int) -> StageTable:
        if channels < 1:
            raise DiffnasError(f"the mbconv space's channels (the stem width, 32 in "
                               f"ProxylessNAS) must be positive, got {channels}")
        m = channels / STEM
        stem_stride, strides = strides_for(image_size)
        return cls(stem=channels, first=make_divisible(FIRST * m),
                   widths=tuple(make_divisible(w * m) for w in widths),
                   head=make_divisible(HEAD * m) if m > 1 else HEAD,
                   stem_stride=stem_stride, strides=strides)

    def layers(self, depths: Sequence[int]) -> list[tuple[int, int, int, bool]]:
        """``(c_in, c_out, stride, skippable)`` of every searched layer."""
        out, c = [], self.first
        for width, depth, stride in zip(self.widths, depths, self.strides, strict=True):
            for i in range(depth):
                out.append((c, width, stride if i == 0 else 1, i > 0))
                c = width
        return out


# ------------------------------------------------------------------------------------ genotype
@dataclass(frozen=True)
class MBConvGenotype:
    """A derived chain: the op of every searched layer, per stage, and the stage widths."""

    stages: tuple[tuple[str, ...], ...]
    widths: tuple[int, ...] = WIDTHS
    space: str = field(default="mbconv", init=False)

    def __post_init__(self) -> None:
        if len(self.stages) != len(STRIDES):
            raise DiffnasError(f"an mbconv genotype has {len(STRIDES)} stages, got "
                               f"{len(self.stages)}")
        if len(self.widths) != len(STRIDES) or not all(
                isinstance(w, int) and w >= 1 for w in self.widths):
            raise DiffnasError(f"an mbconv genotype's widths are {len(STRIDES)} positive "
                               f"integers (one per stage), got {list(self.widths)}")
        for s, ops in enumerate(self.stages, start=1):
            if not ops:
                raise DiffnasError(f"mbconv genotype stage {s} has no layer; every stage has "
                                   "at least one")
            for i, op in enumerate(ops, start=1):
                if op not in OPS:
                    raise DiffnasError(f"mbconv genotype stage {s} layer {i}: op {op!r} is "
                                       f"not an mbconv op; valid: {', '.join(OPS)}")
            if ops[0] == "skip_connect":
                raise DiffnasError(f"mbconv genotype stage {s} layer 1 is skip_connect, but "
                                   f"the first layer of a stage changes the width and cannot "
                                   f"be skipped; valid there: {', '.join(CONV_OPS)}")

    @property
    def ops(self) -> tuple[str, ...]:
        """Every searched layer's op, in chain order."""
        return tuple(op for ops in self.stages for op in ops)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(ops) for ops in self.stages)

    def to_dict(self) -> dict:
        return {"space": "mbconv", "stages": [list(ops) for ops in self.stages],
                "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> MBConvGenotype:
        stages = d.get("stages")
        if not isinstance(stages, list) or not all(
                isinstance(ops, list) and all(isinstance(o, str) for o in ops) for ops in stages):
            raise DiffnasError("not an mbconv genotype dict: expected key 'stages' holding one "
                               "list of op names per stage (and optionally 'widths')")
        widths = d.get("widths", list(WIDTHS))
        if not isinstance(widths, list) or not all(type(w) is int for w in widths):
            raise DiffnasError(f"mbconv genotype 'widths' must be a list of integers, got "
                               f"{widths!r}")
        return cls(tuple(tuple(ops) for ops in stages), tuple(widths))

    def __str__(self) -> str:
        text = "mbconv:" + "/".join(",".join(ops) for ops in self.stages)
        if self.widths != WIDTHS:
            text += ";widths=" + ",".join(map(str, self.widths))
        return text

    @classmethod
    def parse(cls, text: str) -> MBConvGenotype:
        """Parse ``mbconv:op,op,.../op,.../...[;widths=w1,...,w6]``; errors say which part."""
        form = ("expected mbconv:op,op,.../op,.../... (6 stages separated by '/', layers by "
                "',') with an optional ;widths=w1,...,w6")
        text = text.strip()
        if not text.startswith("mbconv:"):
            raise DiffnasError(f"cannot parse mbconv genotype {text[:40]!r}: {form}")
        body, *options = text[len("mbconv:"):].split(";")
        widths = WIDTHS
        for opt in options:
            key, eq, value = opt.strip().partition("=")
            if key != "widths" or not eq:
                raise DiffnasError(f"cannot parse mbconv genotype: unknown part {opt.strip()!r} "
                                   f"after ';' (only widths=...); {form}")
            try:
                widths = tuple(int(w) for w in value.split(","))
            except ValueError:
                raise DiffnasError(f"cannot parse mbconv genotype: widths={value!r} must be "
                                   "comma-separated integers") from None
        stages = [part.strip() for part in body.split("/")]
        if len(stages) != len(STRIDES):
            raise DiffnasError(f"cannot parse mbconv genotype: {len(stages)} stage(s) separated "
                               f"by '/', expected {len(STRIDES)}; {form}")
        ops: list[tuple[str, ...]] = []
        for s, part in enumerate(stages, start=1):
            names = tuple(o.strip() for o in part.split(","))
            if any(not n for n in names):
                raise DiffnasError(f"cannot parse mbconv genotype: stage {s} ({part!r}) has an "
                                   f"empty layer; {form}")
            ops.append(names)
        return cls(tuple(ops), widths)

    @property
    def skip_count(self) -> int:
        return sum(o == "skip_connect" for o in self.ops)

    @property
    def param_free_count(self) -> int:
        return self.skip_count


# --------------------------------------------------------------------------------------- ops
def conv_bn_act(c_in: int, c_out: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) → BN → ReLU6 (ProxylessNAS ``ConvLayer``, ``weight_bn_act``)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM, eps=BN_EPS), nn.ReLU6())


class MBConv(Op):
    """MobileNetV2's inverted bottleneck (ProxylessNAS ``MBInvertedConvLayer``): [1×1 conv to
    ``round(c_in · e)`` → BN → ReLU6] (absent for e = 1) → k×k depthwise conv (stride) → BN →
    ReLU6 → 1×1 conv to ``c_out`` → BN, plus the input when ``residual``. Without the residual
    the op ends in BN and a mixed edge folds its weight into it (``scalable``)."""

    def __init__(self, c_in: int, c_out: int, k: int, e: int, stride: int,
                 residual: bool) -> None:
        super().__init__()
        mid = round(c_in * e)
        self.expand = conv_bn_act(c_in, mid, 1, 1) if e != 1 else None
        self.depthwise = conv_bn_act(mid, mid, k, stride, groups=mid)
        self.project = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.residual = bool(residual)
        self.scalable = not self.residual
        self.kernel, self.expansion, self.stride = k, e, stride

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        if self.residual:
            return x + self.bn(h)
        return scaled_bn(self.bn, h, scale)


class Skip(Op):
    """``skip_connect``: the identity (only where stride = 1 and the width is kept)."""

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return x


class Unavailable(Op):
    """Placeholder for an op a layer does not have (``skip_connect`` on the first layer of a
    stage; ``none`` of a dropped op): outputs zeros of the layer's output shape. The supernet
    masks it out (:meth:`Supernet.op_mask`), so it never runs in a search."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def body(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h, w = (-(-n // self.stride) for n in x.shape[-2:])
        return x.new_zeros(x.shape[0], self.c_out, h, w)


def mbconv_op(name: str, c_in: int, c_out: int, stride: int, skippable: bool) -> nn.Module:
    """The candidate ``name`` of a layer ``c_in → c_out`` with ``stride``."""
    if name == "skip_connect":
        return Skip() if skippable else Unavailable(c_out, stride)
    if name == "none":
        return Unavailable(c_out, stride)
    k, e = op_shape(name)
    return MBConv(c_in, c_out, k, e, stride, residual=skippable)


def layer_factory(c_in: int, c_out: int, stride: int,
                  skippable: bool) -> Callable[..., nn.Module]:
    """A :class:`MixedEdge` op factory for one layer (the edge's ``c`` is its input width)."""
    def factory(name: str, c: int, s: int, affine: bool) -> nn.Module:
        return mbconv_op(name, c_in, c_out, stride, skippable)
    return factory


# ---------------------------------------------------------------------------------- skeleton
class MBConvSkeleton(nn.Module):
    """Stem, fixed MBConv1, searched/derived layers, 1×1 head conv, pooling, classifier: shared
    by the supernet and :class:`diffnas.nets.MBConvNetwork` (same module names outside the
    layers)."""

    def _build_skeleton(self, table: StageTable, depths: Sequence[int], in_channels: int,
                        num_classes: int,
                        make_layer: Callable[[int, int, int, int, bool], nn.Module],
                        dropout: float = 0.0) -> None:
        self.table, self.depths = table, tuple(depths)
        self.stem = conv_bn_act(in_channels, table.stem, 3, table.stem_stride)
        self.first = MBConv(table.stem, table.first, 3, 1, 1, residual=False)
        self.layer_shapes = table.layers(depths)
        self.edges = nn.ModuleList(make_layer(i, *shape)
                                   for i, shape in enumerate(self.layer_shapes))
        self.head_conv = conv_bn_act(table.widths[-1], table.head, 1, 1)
        self.dropout = float(dropout)
        self.classifier = nn.Linear(table.head, num_classes)

    @property
    def stage_ends(self) -> list[int]:
        """Index of the last layer before each stride-2 layer (the stage split of
        :meth:`forward_stages`; -1: before the first layer)."""
        return [i - 1 for i, (_, _, s, _) in enumerate(self.layer_shapes) if s == 2]

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each :meth:`forward_stages` output (the last: the head conv's)."""
        chans = [self.layer_shapes[i][1] if i >= 0 else self.table.first
                 for i in self.stage_ends]
        return [*chans, self.table.head]

    def _run_stages(self, x: torch.Tensor,
                    run_layer: Callable[[int, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        ends = set(self.stage_ends)
        h = self.first(self.stem(x))
        stages = [h] if -1 in ends else []
        for i in range(len(self.edges)):
            h = run_layer(i, h)
            if i in ends:
                stages.append(h)
        stages.append(self.head_conv(h))
        return stages

    @property
    def feature_channels(self) -> int:
        return self.table.head

    @property
    def feature_stride(self) -> int:
        return self.table.stem_stride * math.prod(self.table.strides)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(features, 1).flatten(1)
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        return self.classifier(h)


class MBConvSupernet(MBConvSkeleton, Supernet):
    """The ``mbconv`` search network: one α row per searched layer (kind ``layer``, edge
    ``i`` from chain node ``i`` to ``i + 1``); the first layer of every stage keeps only the
    six MBConv ops (:meth:`Supernet.op_mask`), so methods renormalise their weights over them.

    ``channels``: stem width (32 = ProxylessNAS); ``layers``: cap on every stage's depth;
    ``image_size``: the input size the strides are set for (module docstring)."""

    space = "mbconv"

    def __init__(self, channels: int = 32, layers: int = 4, num_classes: int = 1000,
                 in_channels: int = 3, op_names: Sequence[str] = OPS, image_size: int = 224,
                 partial_channels: int = 1, edge_norm: bool = False,
                 widths: Sequence[int] = WIDTHS) -> None:
        super().__init__(1, edge_norm)
        if partial_channels != 1:
            raise DiffnasError(f"partial_channels={partial_channels}: the mbconv space does not "
                               "take PC-DARTS' partial channels (most of its layers change the "
                               "width, so the bypassed channels have nowhere to go); use 1")
        if layers < 1:
            raise DiffnasError(f"layers (the cap on every stage's depth) must be positive, got "
                               f"{layers}")
        bad = [o for o in op_names if o not in OPS]
        if bad or not any(o in CONV_OPS for o in op_names):
            raise DiffnasError(f"mbconv op names {list(op_names)} must be among "
                               f"{', '.join(OPS)} and include an MBConv op")
        self.op_names = tuple(op_names)
        self.channels, self.layers, self.image_size = channels, layers, image_size
        #: the stage widths at multiplier 1 (the genotype's ``widths``)
        self.base_widths = tuple(int(w) for w in widths)
        table = StageTable.build(channels, widths, image_size)
        depths = [min(d, layers) for d in DEPTHS]

        def make_layer(i: int, c_in: int, c_out: int, stride: int, skippable: bool) -> MixedEdge:
            return MixedEdge(self.op_names, layer_factory(c_in, c_out, stride, skippable), c_in,
                             stride, affine=True)

        self._build_skeleton(table, depths, in_channels, num_classes, make_layer)
        self.skippable = [s for *_, s in self.layer_shapes]
        self.edge_index["layer"] = [(i, i + 1) for i in range(len(self.edges))]
        self._init_alphas(("layer",), len(self.edges))
        kept = [tuple(j for j, o in enumerate(self.op_names)
                      if skippable or o != "skip_connect")
                for skippable in self.skippable]
        if any(len(k) < len(self.op_names) for k in kept):
            self.edge_ops = {"layer": kept}
        self._channels_last()

    def add_aux_skip(self) -> None:
        """DARTS-' auxiliary skip on the skippable layers only (the others change the width
        or stride, and the space has no op that would carry the input there)."""
        device = next(self.parameters()).device
        for edge, skippable in zip(self.edges, self.skippable, strict=True):
            if skippable:
                edge.add_aux_skip()
                edge.aux.to(device)  # type: ignore[union-attr]
        self._channels_last()

    def _layer(self, ew: EdgeWeights) -> Callable[[int, torch.Tensor], torch.Tensor]:
        def run(i: int, h: torch.Tensor) -> torch.Tensor:
            out = self.edges[i](h, ew.weights[i], ew.active[i], ew.bypass_scale(i))
            if out is None:  # no op active (a sampled sub-network without this layer)
                c_in, c_out, stride, skippable = self.layer_shapes[i]
                out = h if skippable else Unavailable(c_out, stride)(h)
            return out
        return run

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps before each stride-2 layer, and the head conv's output."""
        x = x.contiguous(memory_format=torch.channels_last)
        return self._run_stages(x, self._layer(self.edge_weights()["layer"]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def genotype(self, weights: dict[str, torch.Tensor]) -> MBConvGenotype:
        """Per layer the op with the largest weight among the ops the layer has."""
        w = self.edge_strengths(weights)["layer"].detach().float().cpu().clone()
        mask = self.op_mask("layer")
        if mask is not None:
            w[~mask] = -float("inf")
        idx = w.argmax(dim=1).tolist()
        ops = [self.op_names[i] for i in idx]
        stages, start = [], 0
        for d in self.depths:
            stages.append(tuple(ops[start:start + d]))
            start += d
        return MBConvGenotype(tuple(stages), self.base_widths)
