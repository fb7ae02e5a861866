"""Masked image modelling in the search objective: the Semantic-DARTS objective.

Guo et al., "Semantic-DARTS: Elevating Semantic Learning for Mobile Differentiable
Architecture Search", IEEE Internet of Things Journal, 2025 (reference code, partly
released: github.com/AlbertiPot/Semantic-DARTS). The supernet's cells are the encoder
(Eq. 4); a light decoder (Eq. 5) reconstructs the image from the last cell's features;
the loss adds the masked reconstruction error (Eq. 6) to the classification loss with an
equal-weighting factor (Eq. 7). Masking (Eq. 3) is drawn once per batch in
:meth:`MIMObjective.prepare`, so both the α step and the w step, and every forward of a
second-order step, see the same masked batch (Algorithm 1).

Conventions, checked against the reference code:

* Masking happens after augmentation and normalisation, so "zero" (Eq. 3) is zero in
  normalised space, i.e. the dataset's mean colour (the MAE/SimMIM convention). The
  reference code fills masked patches with 1.0 in normalised space instead; ``fill``
  selects the value (the ``semantic-ref`` preset uses 1.0).
* Per image exactly ``round(ratio·N)`` patches (half rounded up) are masked, chosen
  uniformly without replacement (argsort of uniform noise). The reference keeps
  ``int(N·(1-ratio))`` patches, which masks one more patch when ``N·(1-ratio)`` is not
  an integer (e.g. N=64, ratio 0.8: 52 instead of 51).
* The reconstruction target is the clean normalised image; the decoder ends in a
  per-channel clamp (HardTanh) to the range normalised pixels can take,
  ``[-mean/std, (1-mean)/std]`` (the reference hard-codes one range for all channels,
  (-1.99, 2.13) on CIFAR-10, which is that range's envelope).
* Eq. 6 is the mean squared error over the masked pixels (all channels); equal to the
  reference's mean over masked patches of the per-patch mean.

The decoder is much lighter than the reference code's, which holds 4.0 M parameters at
the DARTS CIFAR config (2.1× the 1.93 M supernet; its first 3×3 convolution, 256→1024
channels, alone 2.36 M): here the 3×3 "spread" convolution is depthwise and the 1×1
convolution reduces the channels to ``decoder_width`` (default: feature channels / 8,
at least 8), keeping the decoder at 1.7 % of the supernet's parameters (32,619).

The ablation variants of Table VIII are options of this objective (``variant``); each
computes exactly its own loss terms:

===================  =================  ======================================
variant              input              loss (terms)
===================  =================  ======================================
``cls``              clean              CE (``ce``) -- plain DARTS
``cls-masked``       masked             CE (``ce``)
``rec-clean``        clean              MSE over all pixels (``rec``)
``rec-masked``       masked             MSE over masked pixels (``mim``)
``cls+rec-masked``   masked             CE + λ·MSE_masked (``ce``, ``mim``,
                                        ``lambda``) -- the method
===================  =================  ======================================

Every variant draws the same patch noise from the batch generator, whether it masks or
not, so runs of different variants with one seed see identical augmented batches.
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
    """What one ablation variant computes."""

    classify: bool
    reconstruct: bool
    masked: bool


#: Table VIII's ablation variants, by name.
VARIANTS: dict[str, Variant] = {
    "cls": Variant(classify=True, reconstruct=False, masked=False),
    "cls-masked": Variant(classify=True, reconstruct=False, masked=True),
    "rec-clean": Variant(classify=False, reconstruct=True, masked=False),
    "rec-masked": Variant(classify=False, reconstruct=True, masked=True),
    "cls+rec-masked": Variant(classify=True, reconstruct=True, masked=True),
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


def masked_count(ratio: float, n: int) -> int:
    """How many of ``n`` patches a masking ratio hides: ``round(ratio·n)``, halves rounded up."""
    return min(n, int(math.floor(ratio * n + 0.5)))


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
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool ``[batch, n]`` (on the CPU): per row exactly :func:`masked_count` patches, chosen
    uniformly without replacement (the ``k`` smallest of uniform noise)."""
    noise = torch.rand(batch, n, generator=generator)
    k = masked_count(ratio, n)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    return mask.scatter_(1, noise.argsort(dim=1)[:, :k], True)


def patch_mask_to_pixels(mask: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Bool ``[B, N]`` patch mask → bool ``[B, 1, H, W]`` pixel mask m (True: masked)."""
    b = mask.shape[0]
    gh, gw = height // patch, width // patch
    m = mask.reshape(b, 1, gh, 1, gw, 1).expand(b, 1, gh, patch, gw, patch)
    return m.reshape(b, 1, height, width)


def mask_images(x: torch.Tensor, patch: int, ratio: float,
                generator: torch.Generator | None = None,
                fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (3) on a whole batch: hide ``round(ratio·N)`` random patches of every image (set
    them to ``fill``). Returns the masked batch and the pixel mask ``[B, 1, H, W]``."""
    b, _, h, w = x.shape
    check_patch_size(patch, h, w)
    pm = random_patch_mask(b, (h // patch) * (w // patch), ratio, generator).to(x.device)
    pixels = patch_mask_to_pixels(pm, patch, h, w)
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
    encoder's size before it (``ceil(s/2)`` reductions make odd sizes: 7 ← 14 ← 28)."""

    def __init__(self, c: int, c_out: int | None) -> None:
        super().__init__()
        self.filter = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.up = None if c_out is None else nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=False)
        self.bn = None if c_out is None else nn.BatchNorm2d(c_out)

    def forward(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.filter(h)
        if self.up is None:
            return h
        h = self.up(h)[..., :size[0], :size[1]]  # 2s ≥ target: drop the padded last row/col
        return F.relu(self.bn(h), inplace=True)


class ReconstructionDecoder(nn.Module):
    """The light, fixed decoder of Eq. (5): a depthwise 3×3 convolution spreads information
    spatially, a 1×1 convolution mixes (and reduces) the channels, then one upsampling stage
    per reduction of the encoder (a learned filter, BN, ReLU, a ×2 transposed convolution),
    and a final 3×3 convolution to ``out_channels``, clamped per channel to
    ``[low, high]`` (HardTanh) when a range is given.

    ``forward(features, size)`` returns exactly ``size`` whatever the input size and number of
    reductions: the encoder's feature sizes are ``ceil(s/2)`` per reduction, and each stage
    crops its doubled output back to the size the encoder had there."""

    def __init__(self, in_channels: int, out_channels: int, upsamplings: int, width: int = 0,
                 out_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        if upsamplings < 0:
            raise ValueError(f"upsamplings must be >= 0, got {upsamplings}")
        width = width or max(8, in_channels // 8)
        self.upsamplings = upsamplings
        self.spread = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                bias=False)
        self.mix = nn.Conv2d(in_channels, width, 1, bias=False)
        stages, c = [], width
        for i in range(max(1, upsamplings)):
            c_out = max(8, c // 2) if i < upsamplings else None
            stages.append(_UpStage(c, c_out))
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
    #: Option defaults: the reference code's (patch 4, ratio 0.8; both divide every built-in
    #: dataset's size); the paper's settings are the ``semantic-*`` presets.
    defaults: dict[str, Any] = {"variant": "cls+rec-masked", "patch_size": 4, "mask_ratio": 0.8,
                                "fill": 0.0, "decoder_width": 0}

    def __init__(self, supernet: nn.Module | None = None, image_channels: int = 3,
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__()
        o = coerce_options(f"objective {self.name!r}", self.defaults, options)
        if o["variant"] not in VARIANTS:
            raise unknown("mim variant", o["variant"], VARIANTS)
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
        self.options = o
        self.decoder: ReconstructionDecoder | None = None
        if self.mode.reconstruct:
            channels, reductions = feature_geometry(supernet, "the mim objective")
            self.decoder = ReconstructionDecoder(
                channels, image_channels, reductions, int(o["decoder_width"]),
                out_range=normalised_range(mean, std, image_channels))

    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        b, _, h, w = x.shape
        p = self.patch_size
        check_patch_size(p, h, w)
        # drawn for every variant, so all variants consume the generator alike (same data)
        pm = random_patch_mask(b, (h // p) * (w // p), self.mask_ratio, generator)
        if not self.mode.masked:
            return Batch(x, y)
        pixels = patch_mask_to_pixels(pm.to(x.device), p, h, w)
        return Batch(x.masked_fill(pixels, self.fill), y, {"target": x, "mask": pixels})

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
