"""Self-supervised pretext objectives, the baselines of Semantic-DARTS' Table VII, run as the
UnNAS protocol (Liu et al., "Are labels necessary for neural architecture search?", ECCV 2020;
reference code facebookresearch/unnas and its fork AlbertiPot/unnas, which Semantic-DARTS
used: ``pycls/datasets/prepare.py``, ``loader.py``, ``models/common.py``).

Each objective transforms the batch once in ``prepare`` (so a second-order step sees the same
transformed batch), runs the supernet's cells on it and trains the reference's head on the
last cell's features for its pretext label. Alone (default, the reference) the pretext loss is
the whole search loss; ``--obj-opt with_cls=true`` (ours) adds the classifier, trained on the
same transformed images, the two losses balanced as in Eq. (7) of Semantic-DARTS (λ =
L_cls / L_pretext, without gradient), like the MIM objective.

* ``rotation`` (Gidaris et al., ICLR 2018): every image is fed in all four rotations
  (``torch.rot90(x, k, dims=(-2, -1))``, k = 0..3, the four of an image side by side), so a
  step sees 4× the batch; a linear head on the globally pooled features predicts k.
* ``colorization`` (Zhang et al., ECCV 2016): the network sees the L channel of CIE Lab
  (D65, the formulas of skimage's ``rgb2lab``), normalised as the reference (L/100, minus the
  mean of the data's channel means, over the mean of its stds); per pixel, a 1×1 conv on the
  last cell, upsampled bilinearly (corners aligned) to the image, predicts which of the 313
  quantised in-gamut ab bins the pixel's (a, b) is nearest to (:func:`ab_bins`).
* ``jigsaw`` (Noroozi & Favaro, ECCV 2016): each image is cut into a 2×2 grid of patches;
  from each patch a tile of ⌊0.76·patch⌋ pixels is cropped at a random offset and normalised
  by its own mean and std; the tiles are put in the order of one of the 24 permutations of 4,
  and every tile runs through the network on its own; the pooled features of the four tiles,
  concatenated in tile order, feed a linear head that predicts the permutation. 30 % of the
  images are turned grey first (the reference's ``GRAY_PERCENTAGE`` 0.3).

Where we differ from the reference (paper text and code agree on the tasks themselves):

- Input channels: the reference's colorization network has a 1-channel stem; the search
  supernet is built for the data's channels (its classifier is validated on colour images),
  so the normalised L channel is repeated into each of them. A conv on a repeated input is a
  1-channel conv with the summed kernel: the same functions, other init scale and decay.
- Augmentation: the reference flips CIFAR images for colorization and jigsaw but does not
  pad-crop them (it does for rotation); here the search's augmentation (``crop_padding``,
  ``flip``) runs before every objective, so set ``crop_padding=0`` for its exact inputs.
- Colour bins: the reference loads Zhang et al.'s ``pts_in_hull.npy``; :func:`ab_bins`
  computes the same 313 centres (the file's, in its order) from the sRGB gamut. The nearest
  bin is an exact argmin; ties (a pixel exactly between two centres) go to the lower index,
  where the reference's scikit-learn neighbour search leaves the choice to its tree.
- Jigsaw tiles: a constant tile (std 0) is NaN in the reference; we divide by max(std, 1e-5).
  ``grid`` and ``permutations`` are options (the reference asserts 2 and 24); for a larger
  grid the set is chosen greedily for a large minimum Hamming distance, seeded.
- Search hyperparameters are the config's: the reference's CIFAR searches use DARTS'
  first-order settings with batch 32 and w lr 0.0125 (rotation, jigsaw) or 64 and 0.025
  (colorization), and update α only from the second epoch (``ARCH_EPOCH`` 1.0).
"""

from __future__ import annotations

import functools
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
from .mim import channel_stats, equal_weight, feature_geometry


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
        m, s = channel_stats(mean, std, image_channels)
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)
        self.build(supernet, image_channels, image_size)

    # -- hooks ---------------------------------------------------------------------------------
    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int) -> None:
        """Check the data fits the task and build the head (raise DiffnasError otherwise)."""
        raise NotImplementedError  # pragma: no cover

    def transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The network's input, the class labels that go with it and the batch's extras (the
        pretext labels under ``"pretext"``), for a normalised batch."""
        raise NotImplementedError  # pragma: no cover

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def classify(self, model: nn.Module, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Class logits for ``with_cls``: the supernet's classifier on the same features."""
        return model.head(features)

    # -- objective -------------------------------------------------------------------------------
    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised batch back in [0, 1] pixel units."""
        return (x * self.std + self.mean).clamp(0.0, 1.0)

    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        xt, yt, extra = self.transform(x, y, generator)
        return Batch(xt, yt, extra)

    def forward(self, model: nn.Module, batch: Batch) -> LossOutput:
        feats = model.forward_features(batch.x)
        task = self.pretext_loss(feats, batch)
        terms = {self.term: task.detach()}
        if not self.with_cls:
            return LossOutput(task, None, terms)
        logits = self.classify(model, feats, batch)
        ce = F.cross_entropy(logits, batch.y)
        lam = equal_weight(ce, task)
        terms.update(ce=ce.detach(), **{"lambda": lam})
        return LossOutput(ce + lam * task, logits, terms)


def _pooled(features: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(features, 1).flatten(1)


# ------------------------------------------------------------------------------------ rotation
def all_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``x`` ``[B, C, S, S]`` rotated by 0, 90, 180 and 270°: ``[4B, C, S, S]``,
    image i's four at rows 4i..4i+3 (the reference's collate order), and their labels k."""
    rotated = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=1)
    k = torch.arange(4, device=x.device).repeat(x.shape[0])
    return rotated.flatten(0, 1), k


@register_objective
class RotationObjective(PretextObjective):
    """Predict by which multiple of 90° each image was rotated (4 classes; every image in all
    four rotations)."""

    name = "rotation"
    term = "rot"

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int) -> None:
        channels, _ = feature_geometry(supernet, "the rotation objective")
        self.head = nn.Linear(channels, 4)

    def transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        h, w = x.shape[-2:]
        if h != w:
            raise DiffnasError(f"rotation needs square images, got {h}×{w}")
        rotated, k = all_rotations(x)
        return rotated, y.repeat_interleave(4), {"pretext": k}

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.head(_pooled(features)), batch.extra["pretext"])


# -------------------------------------------------------------------------------- colorization
#: sRGB (D65) → XYZ and the D65 white point of skimage's ``rgb2lab`` (2° observer)
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB values in [0, 1] (channels on dim -3 for images, or the last dim of a
    ``[..., 3]`` table when ``rgb`` is 2-D), with skimage's ``rgb2lab`` formulas (D65)."""
    table = rgb.dim() == 2
    c = rgb if table else rgb.movedim(-3, -1)
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = torch.tensor(_XYZ_FROM_RGB, dtype=c.dtype, device=c.device)
    xyz = lin @ m.T / torch.tensor(_D65, dtype=c.dtype, device=c.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab = torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                       200 * (f[..., 1] - f[..., 2])], dim=-1)
    return lab if table else lab.movedim(-1, -3)


def _inside(points: torch.Tensor, polygon: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Whether each point lies in the convex counter-clockwise ``polygon`` (on its edges
    too), at least ``margin`` inside every edge line (unnormalised cross products)."""
    edge = polygon.roll(-1, dims=0) - polygon
    normal = torch.stack([-edge[:, 1], edge[:, 0]], 1)  # points inwards
    offset = (normal * polygon).sum(1)
    return torch.cat([(part @ normal.T - offset >= margin).all(1)
                      for part in points.split(1 << 15)])


def _convex_hull(points: torch.Tensor) -> list[tuple[float, float]]:
    """Counter-clockwise vertices of the convex hull of 2-D ``points`` (Andrew's monotone
    chain), after dropping the points strictly inside the polygon of the extreme points in
    64 directions (Akl-Toussaint; exact, only for speed)."""
    angle = torch.arange(64, dtype=points.dtype) * (2 * math.pi / 64)
    extreme = points[(points @ torch.stack([angle.cos(), angle.sin()])).argmax(dim=0)]
    inner = extreme[(extreme != extreme.roll(1, dims=0)).any(1)]  # no zero-length edge
    pts = sorted(set(map(tuple, points[~_inside(points, inner, 1e-9)].tolist())))

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return chain(pts) + chain(pts[::-1])


@functools.lru_cache(maxsize=4)
def ab_bins(step: int = 10) -> torch.Tensor:
    """Zhang et al.'s quantised in-gamut ab colours: the centres ``[Q, 2]`` (a, b), a-major
    then b, of the ``step``-grid bins in gamut; Q = 313 for the grid of 10 (their Fig. 3a).

    Computed, as the name of their file (``pts_in_hull``) says, from the convex hull of the
    ab plane's sRGB gamut (all 8-bit colours, every L): a grid point is kept when it, or one
    of its 8 grid neighbours, lies in the hull, i.e. its bin reaches the gamut within one
    grid step. For step 10 this gives exactly the 313 centres of ``pts_in_hull.npy``."""
    if step < 1:
        raise DiffnasError(f"ab bin step must be a positive integer, got {step}")
    # the gamut's outline is the image of the RGB cube's surface: its 6 faces at 8-bit levels
    v = torch.arange(256, dtype=torch.float64) / 255
    u, w = (t.flatten() for t in torch.meshgrid(v, v, indexing="ij"))
    faces = [torch.stack([side, u, w], 1).roll(r, dims=1) for r in range(3)
             for side in (torch.zeros_like(u), torch.ones_like(u))]
    ab = rgb_to_lab(torch.cat(faces))[:, 1:]
    hull = torch.tensor(_convex_hull(ab), dtype=torch.float64)
    lo = (ab.min(0).values / step).floor().long() - 1
    hi = (ab.max(0).values / step).ceil().long() + 1
    ga, gb = torch.meshgrid(torch.arange(int(lo[0]), int(hi[0]) + 1),
                            torch.arange(int(lo[1]), int(hi[1]) + 1), indexing="ij")
    grid = torch.stack([ga.flatten(), gb.flatten()], 1).double() * step
    mask = _inside(grid, hull).view(1, 1, *ga.shape).float()
    near = F.max_pool2d(mask, 3, stride=1, padding=1).flatten() > 0  # one of its 3×3 in hull
    return grid[near].float()


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Index of the nearest centre (Euclidean; ties: the lower index) for every row of ``ab``
    ``[N, 2]``; computed ``chunk`` rows at a time to bound memory."""
    sq = (centres * centres).sum(1)
    parts = [(sq - 2 * part @ centres.T).argmin(1) for part in ab.split(chunk)]
    return torch.cat(parts) if parts else ab.new_zeros(0, dtype=torch.long)


@register_objective
class ColorizationObjective(PretextObjective):
    """From the L channel, predict every pixel's quantised ab colour (313 classes)."""

    name = "colorization"
    term = "color"

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int) -> None:
        if image_channels != 3:
            raise DiffnasError(f"colorization needs 3-channel colour images; this data has "
                               f"{image_channels} channel(s): use the rotation or jigsaw "
                               "objective for greyscale data")
        self.register_buffer("centres", ab_bins(10).clone(), persistent=False)
        channels, _ = feature_geometry(supernet, "the colorization objective")
        self.head = nn.Conv2d(channels, len(self.centres), kernel_size=1)

    def transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(self.pixels(x))
        b, _, h, w = lab.shape
        grey = (lab[:, :1] / 100 - self.mean.mean()) / self.std.mean()  # the reference's L
        bins = nearest_bin(lab[:, 1:].movedim(1, -1).reshape(-1, 2), self.centres)
        return grey.expand_as(x).contiguous(), y, {"pretext": bins.view(b, h, w)}

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        logits = F.interpolate(self.head(features), size=batch.x.shape[-2:], mode="bilinear",
                               align_corners=True)
        return F.cross_entropy(logits, batch.extra["pretext"])


# -------------------------------------------------------------------------------------- jigsaw
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


def jigsaw_tiles(x: torch.Tensor, grid: int, tile: int, perms: torch.Tensor,
                 offsets: torch.Tensor) -> torch.Tensor:
    """The tiles of every image of ``x`` ``[B, C, H, W]``: patch k (row-major on the
    ``grid × grid`` grid of ``H // grid``-pixel patches) gives the ``tile``-pixel crop at
    ``offsets[i, k] = (dy, dx)``, normalised by its own mean and std, and goes to slot
    ``perms[i, k]``. Returns ``[B · grid², C, tile, tile]``, image i's slots at rows
    ``i·grid² ..``."""
    b, c = x.shape[:2]
    n, size = grid * grid, x.shape[-1] // grid
    patches = x[..., :grid * size, :grid * size].unfold(2, size, size).unfold(3, size, size)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, n, c, size, size)
    rows = offsets[..., 0, None] + torch.arange(tile, device=x.device)  # [B, n, tile]
    cols = offsets[..., 1, None] + torch.arange(tile, device=x.device)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ki = torch.arange(n, device=x.device)[None, :, None, None]
    tiles = patches.permute(0, 1, 3, 4, 2)[bi, ki, rows[..., :, None], cols[..., None, :]]
    tiles = tiles.permute(0, 1, 4, 2, 3)  # [B, n, C, tile, tile]
    flat = tiles.reshape(b, n, -1)
    mu, sigma = flat.mean(-1, keepdim=True), flat.std(-1, unbiased=False, keepdim=True)
    tiles = ((flat - mu) / sigma.clamp_min(1e-5)).view_as(tiles)
    out = torch.empty_like(tiles)
    out[torch.arange(b, device=x.device)[:, None], perms] = tiles
    return out.flatten(0, 1)


#: skimage ``rgb2gray`` weights (the reference's grey images)
_GREY = (0.2125, 0.7154, 0.0721)


@register_objective
class JigsawObjective(PretextObjective):
    """Predict which permutation ordered an image's tiles (each tile through the network on
    its own; 24 classes for the reference's 2×2 grid)."""

    name = "jigsaw"
    term = "jigsaw"
    task_defaults = {"grid": 2, "permutations": 24, "seed": 0, "tile_fraction": 0.76,
                     "grey": 0.3}

    def build(self, supernet: nn.Module | None, image_channels: int, image_size: int) -> None:
        self.grid = int(self.options["grid"])
        frac, self.grey = float(self.options["tile_fraction"]), float(self.options["grey"])
        if not 0 < frac <= 1:
            raise DiffnasError(f"jigsaw tile_fraction must be in (0, 1], got {frac}")
        if not 0 <= self.grey <= 1:
            raise DiffnasError(f"jigsaw grey must be a probability in [0, 1], got {self.grey}")
        self.tile = int(image_size // max(self.grid, 1) * frac)
        if self.grid < 2 or self.tile < 1:
            raise DiffnasError(f"jigsaw grid {self.grid} with tile_fraction {frac} leaves no "
                               f"tile of {image_size}×{image_size} images; use a grid from 2 "
                               f"to {max(2, int(image_size * frac))}")
        perms = permutation_set(self.grid ** 2, int(self.options["permutations"]),
                                int(self.options["seed"]))
        self.register_buffer("perms", perms)
        channels, _ = feature_geometry(supernet, "the jigsaw objective")
        self.head = nn.Linear(channels * self.grid ** 2, len(perms))

    def transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, c, h, w = x.shape
        size = min(h, w) // self.grid
        if int(size * float(self.options["tile_fraction"])) != self.tile:
            raise DiffnasError(f"jigsaw was built for {self.tile}-pixel tiles; these {h}×{w} "
                               "images give another size")
        if c == 3 and self.grey > 0:  # the reference greys 30 % of the images first
            pick = torch.rand(b, generator=generator) < self.grey
            weights = torch.tensor(_GREY, device=x.device).view(1, 3, 1, 1)
            grey = ((self.pixels(x) * weights).sum(1, keepdim=True) - self.mean) / self.std
            x = torch.where(pick.to(x.device).view(b, 1, 1, 1), grey, x)
        label = torch.randint(0, len(self.perms), (b,), generator=generator)
        offsets = torch.randint(0, size - self.tile + 1, (b, self.grid ** 2, 2),
                                generator=generator)
        tiles = jigsaw_tiles(x, self.grid, self.tile, self.perms[label.to(x.device)],
                             offsets.to(x.device))
        return tiles, y, {"pretext": label.to(x.device), "image": x}

    def pretext_loss(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        pooled = _pooled(features).view(-1, self.grid ** 2 * features.shape[1])
        return F.cross_entropy(self.head(pooled), batch.extra["pretext"])

    def classify(self, model: nn.Module, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The classifier sees the whole (possibly greyed) image, not its tiles."""
        return model(batch.extra["image"])
