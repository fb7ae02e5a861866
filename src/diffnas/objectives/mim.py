"""Masked image modelling in the search objective: the Semantic-DARTS objective.

Guo et al., "Semantic-DARTS: Elevating Semantic Learning for Mobile Differentiable
Architecture Search", IEEE Internet of Things Journal, 2025; reference code
github.com/AlbertiPot/Semantic-DARTS (commit d525eed: ``model_search.py``,
``train_search.py``, ``utils.py``). The supernet's cells are the encoder (Eq. 4); a decoder
(Eq. 5) reconstructs the image from the last cell's features; the loss adds the masked
reconstruction error (Eq. 6) to the classification loss with an equal-weighting factor
(Eq. 7). Masking (Eq. 3) is drawn once per batch in :meth:`MIMObjective.prepare`, for the
weight step's train batch and the α step's val batch alike (the reference's
``train_search.train`` calls ``utils.mask_imgs`` on both), so every forward of a step, also of
a second-order step, sees the same masked batch (Algorithm 1). The search's validation pass
reports the classifier on masked val images (``val_masked_acc``, the reference's
``infer``) beside clean ones (``val_acc``), see :meth:`MIMObjective.eval_views`.

The option defaults, and the paper presets ``semantic-cifar10``/``-cifar100``/``-ref``,
follow the reference code, which produced the published genotypes:

* ``decoder=ref``: the reference ``Decoder`` (a 3×3 convolution C→4C and a 1×1 convolution
  4C→C, then per reduction of the encoder a 3×3 convolution + BN + ReLU and a ×2 transposed
  convolution (k4, s2, p1) halving the channels + BN + ReLU, then a 3×3 convolution to the
  image channels and a HardTanh); its two stages generalise to one per reduction, so it fits
  any input size and number of reductions; 4,018,819 parameters at the DARTS CIFAR search
  config (16 channels × 8 cells, 32×32×3), 2.1× the 1.93 M supernet.
  ``decoder=light`` is diffnas' own (a depthwise 3×3 and a 1×1 reduction to
  ``decoder_width``, default C/8; 32,619 parameters, 1.7 % of the supernet there).
* ``fill=1.0``: masked patches are set to 1.0 after normalisation (``random_masking``'s
  ``mask_tokens = torch.ones``); ``fill=0`` is Eq. (3)'s zero (the dataset's mean colour).
* ``rounding=ref``: N − ⌊N·(1−r)⌋ of N patches are masked (``len_keep = int(L * (1 -
  mask_ratio))``; CIFAR-100, patch 8, r = 0.7: 12 of 16); ``rounding=nearest`` masks
  round(r·N), halves up (11 of 16), the paper text's "ratio r of the patches".
* Patches are chosen per image uniformly without replacement (argsort of uniform noise).
* The reconstruction-only variants (``rec-clean``, ``rec-masked``) search without crop/flip
  (``utils._data_transforms_cifar*`` give ``rec`` tasks ToTensor + Normalize only); the
  variant declares it (:attr:`Variant.augment`, :func:`variant_config_changes`) and the
  ablation writes it into each variant's config.
* Eq. 6 is the mean squared error over the masked pixels (all channels), equal to the
  reference ``MaskMSE`` (mean over masked patches of the per-patch mean).

Deviations (paper says X, reference does Y, we do Z because ...):

* Reference: the decoder's HardTanh clamps all channels to one range, hard-coded per
  dataset ((-1.99, 2.13) on CIFAR-10); we clamp each channel to the range its normalised
  pixels can take, ``[-mean/std, (1-mean)/std]`` (that envelope per channel), because any
  dataset's statistics are known here and the hard-coded pair is CIFAR-only.
* Reference: its validation queue draws from the training set with the training transform,
  so its search accuracy is on cropped/flipped images; we evaluate un-augmented val images,
  the DARTS convention, because an accuracy on random crops varies from epoch to epoch.
* Reference: the masks are drawn with the global CUDA RNG; we draw them from the loop's
  per-epoch generator (and a fixed-seed one for validation), because that makes a resumed
  run identical and gives all ablation variants the same batches.

The ablation variants of Table VIII are options of this objective (``variant``); each
computes exactly its own loss terms:

===================  =================  ===================================  =========
variant              input              loss (terms)                         crop/flip
===================  =================  ===================================  =========
``cls``              clean              CE (``ce``) -- plain DARTS           yes
``cls-masked``       masked             CE (``ce``)                          yes
``rec-clean``        clean              MSE over all pixels (``rec``)        no
``rec-masked``       masked             MSE over masked pixels (``mim``)     no
``cls+rec-masked``   masked             CE + λ·MSE_masked (``ce``, ``mim``,  yes
                                        ``lambda``) -- the method
===================  =================  ===================================  =========

(``cls``, ``rec``, ``mask_rec`` and ``cls_mask`` are the reference's ``--task`` values for
the rows other than ``cls-masked``, which has no reference task.) Every variant draws the
same patch noise from the batch generator, whether it masks or not, so runs of different
variants with one seed and the same augmentation see identical batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import coerce_options
from ..errors import DiffnasError, unknown
from .base import Batch, LossOutput, Objective, register_objective


class Variant(NamedTuple):
    """What one ablation variant computes, and whether it searches with crop/flip."""

    classify: bool
    reconstruct: bool
    masked: bool
    augment: bool = True


#: Table VIII's ablation variants, by name; the reference searches its reconstruction-only
#: tasks without crop/flip (``utils._data_transforms_cifar10``: crop/flip only if 'cls' in task).
VARIANTS: dict[str, Variant] = {
    "cls": Variant(classify=True, reconstruct=False, masked=False),
    "cls-masked": Variant(classify=True, reconstruct=False, masked=True),
    "rec-clean": Variant(classify=False, reconstruct=True, masked=False, augment=False),
    "rec-masked": Variant(classify=False, reconstruct=True, masked=True, augment=False),
    "cls+rec-masked": Variant(classify=True, reconstruct=True, masked=True),
}

#: The search-config fields of a search without augmentation.
NO_AUGMENTATION: dict[str, Any] = {"crop_padding": 0, "flip": False, "cutout": 0}


def variant_config_changes(variant: str) -> dict[str, Any]:
    """The search-config fields ``variant`` sets (none, or :data:`NO_AUGMENTATION`)."""
    if variant not in VARIANTS:
        raise unknown("mim variant", variant, VARIANTS)
    return {} if VARIANTS[variant].augment else dict(NO_AUGMENTATION)


#: How many of N patches a masking ratio r hides (option ``rounding``).
ROUNDING: dict[str, str] = {
    "ref": "N - floor(N·(1-r)), the reference's random_masking (len_keep = int(N·(1-r)))",
    "nearest": "round(r·N), halves up (the paper text's ratio r of the patches)",
}

#: The decoder layouts of Eq. (5) (option ``decoder``).
DECODERS: dict[str, str] = {
    "ref": "the reference model_search.Decoder (4.0 M parameters at the DARTS CIFAR config)",
    "light": "diffnas' light decoder (depthwise 3×3, 1×1 to decoder_width; 33 k there)",
}


# ----------------------------------------------------------------------------- pixel space
def channel_stats(mean: Sequence[float] | None, std: Sequence[float] | None,
                  channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` as float tensors ``[channels]``; None means (0, 1),
    i.e. the batches hold pixels in [0, 1]."""
    m = torch.zeros(channels) if mean is None else torch.tensor([float(v) for v in mean])
    s = torch.ones(channels) if std is None else torch.tensor([float(v) for v in std])
    if m.numel() != channels or s.numel() != channels:
        raise DiffnasError(f"normalisation has {m.numel()} means and {s.numel()} stds for "
                           f"{channels}-channel images; expected one of each per channel")
    return m, s


def normalised_range(mean: Sequence[float] | None, std: Sequence[float] | None,
                     channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the lowest and highest value a normalised pixel can take:
    ``-mean/std`` (black) and ``(1-mean)/std`` (white)."""
    m, s = channel_stats(mean, std, channels)
    return -m / s, (1 - m) / s


def check_patch_size(patch: int, height: int, width: int | None = None) -> None:
    """Raise a :class:`DiffnasError` unless ``patch`` divides the image's height and width."""
    width = height if width is None else width
    if patch < 1 or height % patch or width % patch:
        size = f"{height}×{width}"
        divisors = [d for d in range(1, math.gcd(height, width) + 1)
                    if height % d == 0 and width % d == 0]
        raise DiffnasError(f"patch size {patch} does not divide the {size} images; use one of "
                           f"{', '.join(map(str, divisors))}")


def masked_count(ratio: float, n: int, rounding: str = "ref") -> int:
    """How many of ``n`` patches a masking ratio hides, by rule ``rounding`` (:data:`ROUNDING`):
    ``ref`` masks ``n - int(n·(1-ratio))`` (the reference's float arithmetic, so CIFAR's 16
    patches at 0.7 give 12), ``nearest`` ``round(ratio·n)`` with halves up (11)."""
    if rounding == "ref":
        return n - int(n * (1 - ratio))
    if rounding == "nearest":
        return min(n, int(math.floor(ratio * n + 0.5)))
    raise unknown("mask rounding rule", rounding, ROUNDING)


# ---------------------------------------------------------------------------- Eq. (3)
def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, N, C·P·P]``: non-overlapping P×P patches in row-major order."""
    b, c, h, w = x.shape
    check_patch_size(patch, h, w)
    gh, gw = h // patch, w // patch
    t = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b, gh * gw, c * patch * patch)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, C·P·P]`` → ``[B, C, H, W]``."""
    b, n, d = patches.shape
    gh, gw = height // patch, width // patch
    c = d // (patch * patch)
    if gh * gw != n or c * patch * patch != d:
        raise ValueError(f"{n} patches of {d} values do not tile a {height}×{width} image "
                         f"with patch size {patch}")
    t = patches.reshape(b, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, height, width)


def random_patch_mask(batch: int, n: int, ratio: float,
                      generator: torch.Generator | None = None,
                      rounding: str = "ref") -> torch.Tensor:
    """Bool ``[batch, n]`` (on the CPU): per row exactly :func:`masked_count` patches, chosen
    uniformly without replacement (the ``k`` smallest of uniform noise)."""
    k = masked_count(ratio, n, rounding)
    noise = torch.rand(batch, n, generator=generator)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    return mask.scatter_(1, noise.argsort(dim=1)[:, :k], True)


def patch_mask_to_pixels(mask: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Bool ``[B, N]`` patch mask → bool ``[B, 1, H, W]`` pixel mask m (True: masked)."""
    b = mask.shape[0]
    gh, gw = height // patch, width // patch
    m = mask.reshape(b, 1, gh, 1, gw, 1).expand(b, 1, gh, patch, gw, patch)
    return m.reshape(b, 1, height, width)


def mask_images(x: torch.Tensor, patch: int, ratio: float,
                generator: torch.Generator | None = None, fill: float = 1.0,
                rounding: str = "ref") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (3) on a whole batch: hide :func:`masked_count` random patches of every image (set
    them to ``fill``; the reference's 1.0 by default). Returns the masked batch and the pixel
    mask ``[B, 1, H, W]``."""
    b, _, h, w = x.shape
    check_patch_size(patch, h, w)
    pm = random_patch_mask(b, (h // patch) * (w // patch), ratio, generator, rounding)
    pixels = patch_mask_to_pixels(pm.to(x.device), patch, h, w)
    return x.masked_fill(pixels, fill), pixels


# ---------------------------------------------------------------------------- Eq. (6), (7)
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (6): mean squared error over the masked pixels only (``mask`` ``[B, 1, H, W]``,
    every channel of a masked pixel counts); 0 when nothing is masked."""
    m = mask.to(pred.dtype)
    total = ((pred - target).square() * m).sum()
    return total / (m.sum() * pred.shape[1]).clamp_min(1.0)


def equal_weight(main: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    """Eq. (7)'s λ = L_cls / L_aux as a constant (no gradient), so λ·L_aux equals L_cls in value
    and both terms weigh the same (paper §III-C)."""
    return (main / aux.clamp_min(1e-12)).detach()


# ---------------------------------------------------------------------------- Eq. (5)
class _UpStage(nn.Module):
    """A learned 3×3 filter (conv → BN → ReLU), then, if ``c_out`` is given, a ×2 transposed
    convolution (k4, s2, p1 as in the reference code) → BN → ReLU, cropped to the
    encoder's size before it (``ceil(s/2)`` reductions make odd sizes: 7 ← 14 ← 28).
    ``bias``: the convolutions carry biases (the reference's do, though BN follows)."""

    def __init__(self, c: int, c_out: int | None, bias: bool = False) -> None:
        super().__init__()
        self.filter = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=bias),
                                    nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.up = None if c_out is None else nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=bias)
        self.bn = None if c_out is None else nn.BatchNorm2d(c_out)

    def forward(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.filter(h)
        if self.up is None:
            return h
        h = self.up(h)[..., :size[0], :size[1]]  # 2s ≥ target: drop the padded last row/col
        return F.relu(self.bn(h), inplace=True)


class ReconstructionDecoder(nn.Module):
    """The decoder of Eq. (5): a 3×3 convolution ``spread`` and a 1×1 convolution ``mix`` on the
    last cell's features, then one upsampling stage per reduction of the encoder (a learned
    3×3 filter, BN, ReLU, a ×2 transposed convolution halving the channels, BN, ReLU), and a
    final 3×3 convolution to ``out_channels``, clamped per channel to ``[low, high]``
    (HardTanh) when a range is given. ``layout`` (:data:`DECODERS`):

    * ``"ref"``: the reference ``model_search.Decoder``: ``spread`` C→4C, ``mix`` 4C→C, every
      convolution with a bias, the stages C → C/2 → C/4 → ... (its two stages at two
      reductions; one per reduction in general);
    * ``"light"``: ``spread`` depthwise, ``mix`` C→``width`` (default C/8, at least 8), no
      biases before BN, stage widths halving down to 8.

    ``forward(features, size)`` returns exactly ``size`` whatever the input size and number of
    reductions: the encoder's feature sizes are ``ceil(s/2)`` per reduction, and each stage
    crops its doubled output back to the size the encoder had there."""

    def __init__(self, in_channels: int, out_channels: int, upsamplings: int, width: int = 0,
                 out_range: tuple[torch.Tensor, torch.Tensor] | None = None,
                 layout: str = "light") -> None:
        super().__init__()
        if upsamplings < 0:
            raise ValueError(f"upsamplings must be >= 0, got {upsamplings}")
        if layout not in DECODERS:
            raise unknown("decoder", layout, DECODERS)
        self.upsamplings = upsamplings
        ref = layout == "ref"
        if ref:
            if width:
                raise DiffnasError("decoder_width applies to decoder=light only (the reference "
                                   "decoder's widths are fixed by the feature channels)")
            self.spread = nn.Conv2d(in_channels, 4 * in_channels, 3, padding=1)
            self.mix = nn.Conv2d(4 * in_channels, in_channels, 1)
            c = in_channels
        else:
            c = width or max(8, in_channels // 8)
            self.spread = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                    bias=False)
            self.mix = nn.Conv2d(in_channels, c, 1, bias=False)
        stages = []
        for i in range(max(1, upsamplings)):
            c_out = (max(1, c // 2) if ref else max(8, c // 2)) if i < upsamplings else None
            stages.append(_UpStage(c, c_out, bias=ref))
            c = c_out or c
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(c, out_channels, 3, padding=1)
        if out_range is not None:
            low, high = (t.reshape(1, -1, 1, 1).float() for t in out_range)
            self.register_buffer("low", low, persistent=False)
            self.register_buffer("high", high, persistent=False)
        else:
            self.low = self.high = None

    def encoder_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The spatial size after 0, 1, ..., ``upsamplings`` stride-2 reductions (ceil mode)."""
        sizes = [tuple(size)]
        for _ in range(self.upsamplings):
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        return sizes  # type: ignore[return-value]

    def forward(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        sizes = self.encoder_sizes((int(size[0]), int(size[1])))
        if tuple(features.shape[-2:]) != sizes[-1]:
            raise DiffnasError(f"the decoder expects {sizes[-1][0]}×{sizes[-1][1]} features for "
                               f"{sizes[0][0]}×{sizes[0][1]} images ({self.upsamplings} "
                               f"reductions), got {tuple(features.shape[-2:])}")
        h = self.mix(self.spread(features))
        targets = sizes[-2::-1] or [sizes[0]]
        for stage, target in zip(self.stages, targets, strict=True):
            h = stage(h, target)
        y = self.out(h)
        if self.low is not None:
            y = torch.clamp(y, self.low, self.high)
        return y


# ---------------------------------------------------------------------------- the objective
def feature_geometry(supernet: nn.Module | None, owner: str) -> tuple[int, int]:
    """``(feature_channels, reductions)`` of a supernet (its last cell's output)."""
    if supernet is None or not hasattr(supernet, "feature_channels"):
        raise DiffnasError(f"{owner} needs a supernet with feature_channels and feature_stride "
                           "to size its head")
    stride = int(supernet.feature_stride)
    n = max(0, round(math.log2(stride)))
    if 2 ** n != stride:
        raise DiffnasError(f"{owner}: feature stride {stride} is not a power of 2")
    return int(supernet.feature_channels), n


@register_objective
class MIMObjective(Objective):
    """Semantic-DARTS' objective: CE on the masked image + λ · masked reconstruction error
    (Eq. 3-7), or one of Table VIII's ablation variants (``variant``, see :data:`VARIANTS`)."""

    name = "mim"
    #: Option defaults: the reference code's (``train_search.py``: patch 4, ratio 0.8; its
    #: decoder, fill value and rounding); the paper's settings are the ``semantic-*`` presets.
    defaults: dict[str, Any] = {"variant": "cls+rec-masked", "patch_size": 4, "mask_ratio": 0.8,
                                "fill": 1.0, "rounding": "ref", "decoder": "ref",
                                "decoder_width": 0}

    def __init__(self, supernet: nn.Module | None = None, image_channels: int = 3,
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__()
        o = coerce_options(f"objective {self.name!r}", self.defaults, options)
        if o["variant"] not in VARIANTS:
            raise unknown("mim variant", o["variant"], VARIANTS)
        if o["rounding"] not in ROUNDING:
            raise unknown("mim rounding rule", o["rounding"], ROUNDING)
        if o["decoder"] not in DECODERS:
            raise unknown("mim decoder", o["decoder"], DECODERS)
        ratio = float(o["mask_ratio"])
        if not 0.0 <= ratio < 1.0:
            raise DiffnasError(f"mask ratio must be in [0, 1), got {ratio}")
        self.patch_size = int(o["patch_size"])
        check_patch_size(self.patch_size, image_size)
        if int(o["decoder_width"]) < 0:
            raise DiffnasError(f"decoder_width must be >= 0 (0: automatic), "
                               f"got {o['decoder_width']}")
        self.variant = o["variant"]
        self.mode = VARIANTS[self.variant]
        self.mask_ratio = ratio
        self.fill = float(o["fill"])
        self.rounding = o["rounding"]
        self.options = o
        self.decoder: ReconstructionDecoder | None = None
        if self.mode.reconstruct:
            channels, reductions = feature_geometry(supernet, "the mim objective")
            self.decoder = ReconstructionDecoder(
                channels, image_channels, reductions, int(o["decoder_width"]),
                out_range=normalised_range(mean, std, image_channels), layout=o["decoder"])

    def _pixel_mask(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw one patch mask per image (Eq. 3) as a pixel mask ``[B, 1, H, W]``."""
        b, _, h, w = x.shape
        p = self.patch_size
        check_patch_size(p, h, w)
        pm = random_patch_mask(b, (h // p) * (w // p), self.mask_ratio, generator, self.rounding)
        return patch_mask_to_pixels(pm.to(x.device), p, h, w)

    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        # drawn for every variant, so all variants consume the generator alike (same data)
        pixels = self._pixel_mask(x, generator)
        if not self.mode.masked:
            return Batch(x, y)
        return Batch(x.masked_fill(pixels, self.fill), y, {"target": x, "mask": pixels})

    def eval_views(self, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The masked variants also validate on masked images (``masked``), as the reference's
        ``infer`` does (it masks the val batch with the search's patch size and ratio)."""
        if not self.mode.masked:
            return {}
        return {"masked": x.masked_fill(self._pixel_mask(x, generator), self.fill)}

    def forward(self, model: nn.Module, batch: Batch) -> LossOutput:
        feats = model.forward_features(batch.x)
        terms: dict[str, torch.Tensor] = {}
        logits = ce = rec = None
        if self.mode.classify:
            logits = model.head(feats)
            ce = F.cross_entropy(logits, batch.y)
            terms["ce"] = ce.detach()
        if self.decoder is not None:
            recon = self.decoder(feats, batch.x.shape[-2:])
            if self.mode.masked:  # Eq. (6)
                rec = masked_mse(recon, batch.extra["target"], batch.extra["mask"])
                terms["mim"] = rec.detach()
            else:
                rec = F.mse_loss(recon, batch.x)
                terms["rec"] = rec.detach()
        if ce is not None and rec is not None:  # Eq. (7)
            lam = equal_weight(ce, rec)
            terms["lambda"] = lam
            loss = ce + lam * rec
        elif ce is not None:
            loss = ce
        else:
            loss = rec
        return LossOutput(loss, logits, terms)
