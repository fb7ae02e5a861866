"""ImageNet-style image folders (``train/`` and ``val/``, one subfolder per class) streamed from
disk, for datasets too large to hold in memory.

Training batches use the augmentation of the DARTS ImageNet recipe (Liu et al., 2019, §A.2;
``quark0/darts`` ``train_imagenet.py``): a random-resized crop (area 8–100 %, aspect ratio
3/4–4/3, as torchvision's ``RandomResizedCrop``) and a horizontal flip; evaluation batches are
resized to 256/224 of the crop size on the short side and centre-cropped. Decoding is per image
by necessity (Pillow, in a thread pool: decoding and resampling release the GIL); the crop is
folded into that one resize call (``Image.resize(box=...)``), and the crop boxes are drawn for
the whole batch at once. The flip and normalisation are batched tensor operations
(:class:`~diffnas.data.BatchAugment` with ``flip=True``), so streams yield unflipped uint8
crops. So is the recipes' ``ColorJitter(0.4, 0.4, 0.4, 0.2)``, after the flip
(``BatchAugment(color_jitter=...)``; the ImageNet train presets switch it on).

Every random draw comes from a generator seeded by ``(seed, epoch)``, so a resumed epoch sees
the same batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from diffnas.data.readers import _class_files, _image_extensions, _open_error
from diffnas.errors import DiffnasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # evaluation: short side to 256 for a 224 crop (DARTS, torchvision)


def draw_crops(batch: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """The random numbers of a batch's random-resized crops, ``[B, 2·tries + 2]``: per try an
    area fraction (uniform in ``scale``) and a log aspect ratio (uniform in log ``ratio``),
    then two uniforms for the crop's position."""
    area = torch.empty(batch, tries, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_r = torch.empty(batch, tries, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    pos = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    return torch.cat([area, log_r, pos], dim=1)


def crop_boxes(sizes: torch.Tensor, draws: torch.Tensor,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop boxes ``[B, 4]`` (left, top, right, bottom) for images of
    ``sizes[b] = (width, height)`` from :func:`draw_crops` numbers (vectorised over the batch).

    As torchvision's ``RandomResizedCrop``: the first try whose crop fits the image is used;
    if none fits, the whole image cropped to the nearest allowed aspect ratio, centred."""
    tries = (draws.shape[1] - 2) // 2
    w, h = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    target = w * h * draws[:, :tries]
    ar = torch.exp(draws[:, tries:2 * tries])
    cw = torch.sqrt(target * ar).round()
    ch = torch.sqrt(target / ar).round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    use = ok.any(dim=1)
    first = ok.double().argmax(dim=1, keepdim=True)
    w, h = w[:, 0], h[:, 0]
    in_r = w / h
    fw = torch.where(in_r > ratio[1], (h * ratio[1]).round(), w)
    fh = torch.where(in_r < ratio[0], (w / ratio[0]).round(), h)
    cw = torch.where(use, cw.gather(1, first)[:, 0], fw)
    ch = torch.where(use, ch.gather(1, first)[:, 0], fh)
    u = draws[:, -2:]
    left = torch.where(use, ((w - cw + 1) * u[:, 0]).floor(), ((w - cw) / 2).floor())
    top = torch.where(use, ((h - ch + 1) * u[:, 1]).floor(), ((h - ch) / 2).floor())
    return torch.stack([left, top, left + cw, top + ch], dim=1).long()


def centre_boxes(sizes: torch.Tensor, crop_fraction: float = 1 / RESIZE_RATIO) -> torch.Tensor:
    """Evaluation boxes: the centred square of side ``crop_fraction`` × the short side (what
    "resize the short side to 256, centre-crop 224" reads from the original image)."""
    w, h = sizes[:, 0].double(), sizes[:, 1].double()
    side = (torch.minimum(w, h) * crop_fraction).round().clamp(min=1)
    left = ((w - side) / 2).floor()
    top = ((h - side) / 2).floor()
    return torch.stack([left, top, left + side, top + side], dim=1).long()


def decode_crop(path: Path, draws: torch.Tensor | None, size: int) -> np.ndarray:
    """Open one image, pick its crop box (``draws``: one row of :func:`draw_crops`; None: the
    evaluation centre crop) and return the box resized to ``size × size`` RGB, ``[H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            orig = torch.tensor([img.size], dtype=torch.int64)
            box = (crop_boxes(orig, draws[None]) if draws is not None
                   else centre_boxes(orig))[0].tolist()
            bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
            # JPEG: decode at a reduced scale as long as the crop keeps at least `size` pixels
            img.draft("RGB", (math.ceil(img.size[0] * size / bw),
                              math.ceil(img.size[1] * size / bh)))
            sx, sy = img.size[0] / orig[0, 0].item(), img.size[1] / orig[0, 1].item()
            img = img.convert("RGB")
            fbox = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=fbox)
            return np.asarray(out, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _open_error(path, exc) from exc


class ImageFolderStream:
    """Seeded batches of one split of an ImageNet-style folder, decoded on the fly.

    ``root`` holds ``train/`` and ``val/`` (one subfolder per class, the same class names);
    ``split`` is ``"train"`` (random-resized crops, shuffled) or ``"test"`` (the ``val/``
    folder, centre crops, in order). Batches are ``(uint8 [B, 3, size, size], int64 [B])`` on
    ``device``.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, batch_size: int, size: int = 224,
                 seed: int = 0, workers: int | None = None, device: str | torch.device = "cpu",
                 subset: int | None = None) -> None:
        root = Path(root).expanduser()
        folder = root / ("train" if split == "train" else "val")
        if not folder.is_dir():
            raise DiffnasError(f"ImageNet-style folder {root} has no {folder.name}/ subfolder; "
                               "expected train/ and val/, each with one subfolder per class")
        if batch_size < 1 or size < 1:
            raise DiffnasError(f"batch size and image size must be positive, got {batch_size}, "
                               f"{size}")
        exts = _image_extensions()
        classes = list(_class_files(root / "train", exts)) if (root / "train").is_dir() else []
        by_class = _class_files(folder, exts)
        if not classes:
            classes = list(by_class)
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise DiffnasError(f"{folder} has class folders missing from {root / 'train'}: "
                               f"{', '.join(extra[:5])}")
        label = {c: i for i, c in enumerate(classes)}
        self.files = [f for c, fs in by_class.items() for f in fs]
        self.labels = torch.tensor([label[c] for c, fs in by_class.items() for _ in fs],
                                   dtype=torch.int64)
        if not self.files:
            raise DiffnasError(f"{folder} holds no readable image files (.jpg, .png, ...)")
        if subset is not None and subset < len(self.files):
            g = torch.Generator().manual_seed(seed)
            keep = torch.sort(torch.randperm(len(self.files), generator=g)[:subset]).values
            self.files = [self.files[i] for i in keep.tolist()]
            self.labels = self.labels[keep]
        self.classes = classes
        self.train = split == "train"
        self.batch_size, self.size, self.seed = batch_size, size, seed
        self.device = torch.device(device)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.in_channels, self.num_classes, self.flip = 3, len(classes), True
        #: ``(rank, ranks)`` of a data-parallel run (set by the retraining loop): the train
        #: split decodes this rank's equal share of every batch (the crops drawn for the whole
        #: batch, so the generator runs as in one process), the test split every ranks-th batch
        self.shard: tuple[int, int] | None = None

    def __len__(self) -> int:
        n = len(self.files)
        return max(1, n // self.batch_size) if self.train else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.files)

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of epoch ``e``; the next batch is decoded while this one is used."""
        from diffnas.data import epoch_seed

        g = torch.Generator().manual_seed(epoch_seed(self.seed, e))
        n = len(self.files)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        with ThreadPoolExecutor(self.workers) as pool:
            pending = None
            for i in range(len(self)):
                idx = order[i * self.batch_size: min(n, (i + 1) * self.batch_size)]
                if self.shard is not None and not self.train and i % self.shard[1] != \
                        self.shard[0]:
                    continue  # another rank's test batch
                job = self._submit(pool, idx, g)
                if self.shard is not None and self.train:  # this rank's rows only
                    k = len(idx) // self.shard[1]
                    keep = slice(self.shard[0] * k, (self.shard[0] + 1) * k)
                    job, idx = job[keep], idx[keep]
                if pending is not None:
                    yield self._collect(*pending)
                pending = (job, idx)
            if pending is not None:
                yield self._collect(*pending)

    def _submit(self, pool: ThreadPoolExecutor, idx: torch.Tensor, g: torch.Generator) -> list:
        files = [self.files[j] for j in idx.tolist()]
        draws = draw_crops(len(files), g) if self.train else None
        keep = range(len(files))
        if self.shard is not None and self.train:  # the draws of all, the decoding of a share
            k = len(files) // self.shard[1]
            keep = range(self.shard[0] * k, (self.shard[0] + 1) * k)
        return [pool.submit(decode_crop, files[j], None if draws is None else draws[j],
                            self.size) if j in keep else None for j in range(len(files))]

    def _collect(self, job: list, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = np.stack([f.result() for f in job])  # [B, H, W, 3]
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
        pin = self.device.type == "cuda"
        y = self.labels[idx]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
