"""Batch-wise data augmentation on tensors (no per-image Python loops).

All random numbers are drawn on the CPU from a ``torch.Generator`` and then moved to the batch's
device, so a CPU run and a CUDA run with the same seed augment identically.
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


class BatchAugment:
    """Augments a whole uint8 batch as tensors on its device: random crop with zero padding,
    horizontal flip, cutout, normalisation; per-sample randomness from a torch.Generator."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
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
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"BatchAugment(mean={self.mean}, std={self.std}, crop_padding={self.crop_padding}, "
            f"flip={self.flip}, cutout={self.cutout})"
        )

    # ------------------------------------------------------------------ randomness

    def draw(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw the per-sample random numbers for a batch on the CPU (crop, flip, cutout order)."""
        offsets = flip = centres = None
        if self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (batch, 2), generator=generator)
        if self.flip:
            flip = torch.rand(batch, generator=generator) < 0.5
        if self.cutout > 0:
            cy = torch.randint(0, height, (batch,), generator=generator)
            cx = torch.randint(0, width, (batch,), generator=generator)
            centres = torch.stack([cy, cx], dim=1)
        return AugmentParams(offsets=offsets, flip=flip, centres=centres)

    # ------------------------------------------------------------------ application

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32 ``(x / 255 - mean) / std`` on the same device."""
        self._check(x)
        affine = self._affine.get(x.device)
        if affine is None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            affine = ((1.0 / (255.0 * std)).to(x.device), (-mean / std).to(x.device))
            self._affine[x.device] = affine
        scale, shift = affine
        return torch.addcmul(shift, x.to(torch.float32), scale)

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
