"""Batch-wise data augmentation on tensors (no per-image Python loops).

All random numbers are drawn on the CPU from a ``torch.Generator`` and then moved to the batch's
device, so a CPU run and a CUDA run with the same seed augment identically.

Colour jitter is torchvision's ``ColorJitter(brightness, contrast, saturation, hue)``, which the
DARTS-family ImageNet recipes apply after the crop and flip (DARTS, P-DARTS, PC-DARTS, CDARTS and
Semantic-DARTS all use ``ColorJitter(0.4, 0.4, 0.4, 0.2)``): per image, factors drawn uniformly
from [max(0, 1 − b), 1 + b] (brightness, contrast, saturation) and [−h, h] (hue shift), and the
four adjustments applied in a random order. Here the whole batch is adjusted as tensors: for
each of the four positions in the order, each adjustment runs once on the samples that have it
there. Deviation: the reference applies it to PIL images, rounding to uint8 after each step; we
compute in float on [0, 1] as torchvision's tensor implementation does (no rounding), because
the batch stays on its device as one float tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffnas.errors import DiffnasError


@dataclass
class AugmentParams:
    """The random draws for one batch (all CPU tensors; ``None`` when that step is off)."""

    offsets: torch.Tensor | None  # int64 [B, 2]: (dy, dx) crop origin in the padded image, 0..2p
    flip: torch.Tensor | None  # bool [B]: which samples are mirrored
    centres: torch.Tensor | None  # int64 [B, 2]: (cy, cx) cutout centre, uniform over the image
    jitter: torch.Tensor | None = None  # float32 [B, 4]: brightness, contrast, saturation factors
    #                                     and hue shift (columns of an op that is off: identity)
    jitter_order: torch.Tensor | None = None  # int64 [B, 4]: each sample's order of the 4 ops


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
GREY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (a 1-channel batch is its own grey image)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor · x + (1 − factor) · other``, clamped to [0, 1] (factor: [B])."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` turns ([B]), through HSV."""
    v, _ = x.max(dim=1)  # [B, H, W]
    delta = v - x.min(dim=1).values
    sat = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = ((v.unsqueeze(1) - x) / safe.unsqueeze(1)).unbind(1)
    r, g, _ = x.unbind(1)
    hue = torch.where(v == r, bc - gc, torch.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel n (r: 5, g: 3, b: 1) = v − v·s·clamp(min(k, 4 − k), 0, 1),
    # k = (n + 6·hue) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def check_color_jitter(strengths: Sequence[float]) -> tuple[float, float, float, float]:
    """``strengths`` as four floats (brightness, contrast, saturation, hue), or an error."""
    jitter = tuple(float(v) for v in strengths)
    if len(jitter) != 4 or any(v < 0 for v in jitter) or jitter[3] > 0.5:
        raise DiffnasError(
            "colour jitter needs four strengths (brightness, contrast, saturation, hue), "
            f"each >= 0 and hue <= 0.5, got {tuple(strengths)}"
        )
    return jitter  # type: ignore[return-value]


def adjust(x: torch.Tensor, op: str, factor: torch.Tensor) -> torch.Tensor:
    """One colour adjustment of float images in [0, 1] ``[B, C, H, W]``, a factor per sample:
    brightness (blend with black), contrast (blend with the image's mean luma), saturation
    (blend with the luma image), hue (shift in turns), as torchvision's tensor functions."""
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if op == "contrast":
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == "saturation":
        return _blend(x, _grey(x), factor)
    return _shift_hue(x, factor)


class BatchAugment:
    """Augments a whole uint8 batch as tensors on its device: random crop with zero padding,
    horizontal flip, colour jitter, normalisation, cutout; per-sample randomness from a
    torch.Generator. ``color_jitter``: (brightness, contrast, saturation, hue) strengths as
    torchvision's ``ColorJitter`` (0 switches an adjustment off)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        color_jitter: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    ) -> None:
        if len(mean) != len(std) or not mean:
            raise DiffnasError(
                f"mean and std need one value per channel, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise DiffnasError(f"std values must be positive, got {tuple(std)}")
        if crop_padding < 0 or cutout < 0:
            raise DiffnasError(
                f"crop padding and cutout must be >= 0, got {crop_padding} and {cutout}"
            )
        jitter = check_color_jitter(color_jitter)
        if len(mean) != 3 and (jitter[2] > 0 or jitter[3] > 0):
            raise DiffnasError(
                f"saturation and hue jitter need RGB images, these have {len(mean)} channel(s)"
            )
        self.color_jitter = jitter
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"BatchAugment(mean={self.mean}, std={self.std}, crop_padding={self.crop_padding}, "
            f"flip={self.flip}, cutout={self.cutout}, color_jitter={self.color_jitter})"
        )

    # ------------------------------------------------------------------ randomness

    def draw(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw the per-sample random numbers for a batch on the CPU (crop, flip, cutout, colour
        jitter order; nothing is drawn for a step that is off)."""
        offsets = flip = centres = jitter = order = None
        if self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (batch, 2), generator=generator)
        if self.flip:
            flip = torch.rand(batch, generator=generator) < 0.5
        if self.cutout > 0:
            cy = torch.randint(0, height, (batch,), generator=generator)
            cx = torch.randint(0, width, (batch,), generator=generator)
            centres = torch.stack([cy, cx], dim=1)
        if any(self.color_jitter):
            u = torch.rand(batch, 4, generator=generator)
            s = torch.tensor(self.color_jitter)
            low = torch.cat([(1 - s[:3]).clamp(min=0), -s[3:]])
            high = torch.cat([1 + s[:3], s[3:]])
            jitter = low + (high - low) * u
            order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)
        return AugmentParams(offsets=offsets, flip=flip, centres=centres, jitter=jitter,
                             jitter_order=order)

    # ------------------------------------------------------------------ application

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32 ``(x / 255 - mean) / std`` on the same device."""
        self._check(x)
        scale, shift = self._affine_on(x.device)
        return torch.addcmul(shift, x.to(torch.float32), scale)

    def _affine_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 / (255 · std), −mean / std)`` as [1, C, 1, 1] tensors on ``device`` (cached)."""
        affine = self._affine.get(device)
        if affine is None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            affine = ((1.0 / (255.0 * std)).to(device), (-mean / std).to(device))
            self._affine[device] = affine
        return affine

    def _normalise_unit(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, C, H, W] in [0, 1] -> ``(x - mean) / std``."""
        scale, shift = self._affine_on(x.device)
        return torch.addcmul(shift, x, scale * 255.0)

    def jitter(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Colour-jitter float images in [0, 1] with drawn ``params``: at each of the four
        positions of the per-sample order, each active adjustment runs once, on the samples
        that have it at that position (batched; the sample indices are known on the CPU)."""
        assert params.jitter is not None and params.jitter_order is not None
        factors = params.jitter.to(x.device, x.dtype)
        for pos in range(4):
            for j, op in enumerate(JITTER_OPS):
                if self.color_jitter[j] == 0:
                    continue
                idx = torch.nonzero(params.jitter_order[:, pos] == j)[:, 0]
                if len(idx) == 0:
                    continue
                idx = idx.to(x.device)
                x = x.index_copy(0, idx, adjust(x.index_select(0, idx), op, factors[idx, j]))
        return x

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply previously drawn ``params`` to a uint8 batch; returns normalised float32."""
        self._check(x)
        b, c, h, w = x.shape
        dev = x.device
        if params.offsets is not None and self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))  # zero padding
            off = params.offsets.to(dev)
            rows = off[:, 0:1] + torch.arange(h, device=dev)  # [B, H]
            cols = off[:, 1:2] + torch.arange(w, device=dev)  # [B, W]
            bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
            ci = torch.arange(c, device=dev).view(1, c, 1, 1)
            x = padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
        if params.flip is not None:
            mask = params.flip.to(dev).view(b, 1, 1, 1)
            x = torch.where(mask, x.flip(3), x)
        if params.jitter is not None and any(self.color_jitter):
            out = self._normalise_unit(self.jitter(x.to(torch.float32) / 255.0, params))
        else:
            out = self.normalise(x)
        if params.centres is not None and self.cutout > 0:
            centres = params.centres.to(dev)
            top = centres[:, 0:1] - self.cutout // 2  # [B, 1]
            left = centres[:, 1:2] - self.cutout // 2
            ys = torch.arange(h, device=dev).view(1, h)
            xs = torch.arange(w, device=dev).view(1, w)
            in_rows = (ys >= top) & (ys < top + self.cutout)  # [B, H]
            in_cols = (xs >= left) & (xs < left + self.cutout)  # [B, W]
            square = in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)
            out = out.masked_fill(square, 0.0)
        return out

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, train: bool = True
    ) -> torch.Tensor:
        """Augment (when ``train``) and normalise a uint8 [B, C, H, W] batch on its device."""
        if not train:
            return self.normalise(x)
        self._check(x)
        params = self.draw(x.shape[0], x.shape[2], x.shape[3], generator)
        return self.apply(x, params)

    def _check(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DiffnasError(
                f"BatchAugment expects a uint8 [B, C, H, W] batch, got {x.dtype} {tuple(x.shape)}"
            )
        if x.shape[1] != len(self.mean):
            raise DiffnasError(
                f"batch has {x.shape[1]} channels but mean/std have {len(self.mean)} values"
            )
