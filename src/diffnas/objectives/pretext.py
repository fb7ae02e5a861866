"""Self-supervised pretext objectives, the baselines of Semantic-DARTS' Table VII.

Each objective transforms the batch once in ``prepare`` (so a second-order step sees
the same transformed batch), runs the supernet's cells on it and trains a small head
on the last cell's features for its pretext label. Alone (default) the pretext loss is
the whole search loss; with ``--obj-opt with_cls=true`` the classifier is trained on
the same transformed images and the two losses are balanced as in Eq. (7) of
Semantic-DARTS (λ = L_cls / L_pretext, without gradient), like the MIM objective.

* ``rotation`` (Gidaris et al., ICLR 2018): every image is rotated by a random multiple
  of 90° (label k: ``torch.rot90(x, k, dims=(-2, -1))``, k ∈ {0, 1, 2, 3}); a linear head
  on the globally pooled features predicts k.
* ``colorization`` (after Zhang et al., ECCV 2016, colour prediction as classification):
  the network sees the greyscale image (BT.601 luma, repeated to every channel and
  normalised like the data); a dense head (the MIM decoder, without its clamp) predicts,
  per pixel, the bin of the pixel's chroma on a ``bins × bins`` grid over (Cb, Cr) in
  [0, 1] (BT.601 YCbCr; Zhang et al. use 313 in-gamut Lab ab bins). The default, 7 bins
  per axis, is odd so that neutral colours (Cb = Cr = 0.5) sit in the middle of a bin,
  not on a boundary where rounding noise would split them. Colour images only.
* ``jigsaw`` (after Noroozi & Favaro, ECCV 2016): the image is cut into a ``grid × grid``
  grid of tiles and the tiles are shuffled by one of a fixed set of permutations; a
  linear head on the features pooled to the grid predicts which. The set holds every
  permutation when it is small enough, else it is chosen greedily for a large minimum
  Hamming distance (Noroozi & Favaro's Alg. 1 maximises the mean distance), seeded.
  One whole-image network sees the shuffled image (not their per-tile siamese network).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import coerce_options
from ..errors import DiffnasError
from .base import Batch, LossOutput, Objective, register_objective
from .mim import ReconstructionDecoder, channel_stats, equal_weight, feature_geometry


class PretextObjective(Objective):
    """Base of the pretext objectives: subclasses set ``name``, ``term``, ``task_defaults`` and
    implement :meth:`build`, :meth:`transform` and :meth:`pretext_loss`."""

    term: ClassVar[str] = "pretext"
    task_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, supernet: nn.Module | None = None, image_channels: int = 3,
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__()
        self.options = coerce_options(f"objective {self.name!r}",
                                      {"with_cls": False, **self.task_defaults}, options)
        self.with_cls = bool(self.options["with_cls"])
        self.build(supernet, image_channels, image_size, mean, std)

    # -- hooks ---------------------------------------------------------------------------------
    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Check the data fits the task and build the head (raise DiffnasError otherwise)."""
        raise NotImplementedError  # pragma: no cover

    def transform(self, x: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input and the pretext labels for a normalised batch."""
        raise NotImplementedError  # pragma: no cover

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    # -- objective -------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        xt, target = self.transform(x, generator)
        return Batch(xt, y, {"pretext": target})

    def forward(self, model: nn.Module, batch: Batch) -> LossOutput:
        feats = model.forward_features(batch.x)
        task = self.pretext_loss(feats, batch)
        terms = {self.term: task.detach()}
        if not self.with_cls:
            return LossOutput(task, None, terms)
        logits = model.head(feats)
        ce = F.cross_entropy(logits, batch.y)
        lam = equal_weight(ce, task)
        terms.update(ce=ce.detach(), **{"lambda": lam})
        return LossOutput(ce + lam * task, logits, terms)


def _pooled(features: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(features, 1).flatten(1)


@register_objective
class RotationObjective(PretextObjective):
    """Predict which multiple of 90° each image was rotated by (4 classes)."""

    name = "rotation"
    term = "rot"

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        channels, _ = feature_geometry(supernet, "the rotation objective")
        self.head = nn.Linear(channels, 4)

    def transform(self, x: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        if h != w:
            raise DiffnasError(f"rotation needs square images, got {h}×{w}")
        k = torch.randint(0, 4, (b,), generator=generator).to(x.device)
        rotated = torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])  # [4, B, ...]
        return rotated[k, torch.arange(b, device=x.device)], k

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.head(_pooled(features)), batch.extra["pretext"])


def rgb_to_luma_chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BT.601 (JPEG) YCbCr of RGB in [0, 1]: ``(Y, Cb, Cr)``, each ``[B, 1, H, W]`` in [0, 1]."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return y, cb, cr


@register_objective
class ColorizationObjective(PretextObjective):
    """From the greyscale image, predict every pixel's chroma bin (``bins²`` classes)."""

    name = "colorization"
    term = "color"
    task_defaults = {"bins": 7}

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        if image_channels != 3:
            raise DiffnasError(f"colorization needs 3-channel colour images; this data has "
                               f"{image_channels} channel(s): use the rotation or jigsaw "
                               "objective for greyscale data")
        self.bins = int(self.options["bins"])
        if self.bins < 2:
            raise DiffnasError(f"colorization bins must be at least 2, got {self.bins}")
        m, s = channel_stats(mean, std, image_channels)
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)
        channels, reductions = feature_geometry(supernet, "the colorization objective")
        self.head = ReconstructionDecoder(channels, self.bins * self.bins, reductions)

    def color_bins(self, rgb: torch.Tensor) -> torch.Tensor:
        """Per pixel of RGB ``[B, 3, H, W]`` in [0, 1], its class ``cb_bin · bins + cr_bin``."""
        _, cb, cr = rgb_to_luma_chroma(rgb)
        qb = (cb * self.bins).long().clamp_(0, self.bins - 1)
        qr = (cr * self.bins).long().clamp_(0, self.bins - 1)
        return (qb * self.bins + qr).squeeze(1)

    def transform(self, x: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = (x * self.std + self.mean).clamp(0.0, 1.0)
        luma, _, _ = rgb_to_luma_chroma(rgb)
        grey = (luma.expand_as(rgb) - self.mean) / self.std
        return grey, self.color_bins(rgb)

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        logits = self.head(features, batch.x.shape[-2:])
        return F.cross_entropy(logits, batch.extra["pretext"])


def permutation_set(tiles: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct permutations of ``range(tiles)`` (int64 ``[count, tiles]``): all of
    them, in lexicographic order, when ``count`` is ``tiles!``; else a greedy pick, each new one
    the candidate farthest (minimum Hamming distance) from those already chosen, starting at
    the identity; candidates are all permutations up to 8 tiles, else 20,000 seeded ones."""
    total = math.factorial(tiles)
    if not 2 <= count <= total:
        raise DiffnasError(f"jigsaw permutations must be between 2 and {total} for {tiles} "
                           f"tiles, got {count}")
    if count == total or tiles <= 8:
        cands = torch.tensor(list(itertools.permutations(range(tiles))), dtype=torch.int64)
        if count == total:
            return cands
    else:
        g = torch.Generator().manual_seed(seed)
        cands = torch.stack([torch.randperm(tiles, generator=g) for _ in range(20_000)])
        cands = torch.unique(torch.cat([torch.arange(tiles)[None], cands]), dim=0)
    chosen = [int((cands == torch.arange(tiles)).all(dim=1).nonzero()[0])]
    dist = (cands != cands[chosen[0]]).sum(dim=1)  # min Hamming distance to the chosen set
    for _ in range(count - 1):
        j = int(dist.argmax())
        chosen.append(j)
        dist = torch.minimum(dist, (cands != cands[j]).sum(dim=1))
    return cands[chosen]


def shuffle_tiles(x: torch.Tensor, grid: int, perms: torch.Tensor) -> torch.Tensor:
    """Cut every image of ``x`` into ``grid × grid`` tiles (row-major) and put input tile
    ``perms[i, j]`` at position ``j`` of image ``i``."""
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    tiles = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(b, grid * grid, c, th, tw)
    out = tiles[torch.arange(b, device=x.device)[:, None], perms]
    out = out.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, c, h, w)


@register_objective
class JigsawObjective(PretextObjective):
    """Predict which of a fixed set of tile permutations shuffled the image."""

    name = "jigsaw"
    term = "jigsaw"
    task_defaults = {"grid": 2, "permutations": 24, "seed": 0}

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.grid = int(self.options["grid"])
        if self.grid < 2 or image_size % self.grid:
            ok = [g for g in range(2, image_size + 1) if image_size % g == 0]
            raise DiffnasError(f"jigsaw grid {self.grid} does not cut {image_size}×{image_size} "
                               f"images into equal tiles; use one of {', '.join(map(str, ok))}")
        perms = permutation_set(self.grid ** 2, int(self.options["permutations"]),
                                int(self.options["seed"]))
        self.register_buffer("perms", perms)
        channels, _ = feature_geometry(supernet, "the jigsaw objective")
        self.head = nn.Linear(channels * self.grid ** 2, len(perms))

    def transform(self, x: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h, w = x.shape
        if h % self.grid or w % self.grid:
            raise DiffnasError(f"jigsaw grid {self.grid} does not divide {h}×{w} images")
        label = torch.randint(0, len(self.perms), (x.shape[0],), generator=generator)
        label = label.to(x.device)
        return shuffle_tiles(x, self.grid, self.perms[label]), label

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(features, self.grid).flatten(1)
        return F.cross_entropy(self.head(pooled), batch.extra["pretext"])
