"""Datasets held in memory as uint8 tensors, seeded batch streams and batch-wise augmentation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch

from diffnas.data.augment import AugmentParams, BatchAugment
from diffnas.data.readers import (
    DATASETS,
    ImageDataset,
    SafeUnpickler,
    channel_stats,
    load_dataset,
    read_idx,
    resize_images,
    safe_unpickle,
    search_locations,
)
from diffnas.errors import DiffnasError

__all__ = [
    "DATASETS",
    "AugmentParams",
    "BatchAugment",
    "BatchStream",
    "ImageDataset",
    "SafeUnpickler",
    "channel_stats",
    "load_dataset",
    "read_idx",
    "resize_images",
    "safe_unpickle",
    "search_locations",
    "split_indices",
]


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)``: the first part has ``round(n * fraction)`` items.

    Both parts are sorted int64 tensors; together they cover ``range(n)`` exactly once. This is
    the DARTS split of the training set into weight-training and architecture-validation halves.
    """
    if n < 0:
        raise DiffnasError(f"cannot split {n} samples")
    if not 0.0 <= fraction <= 1.0:
        raise DiffnasError(f"split fraction must be between 0 and 1, got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    k = round(n * fraction)
    return torch.sort(perm[:k]).values, torch.sort(perm[k:]).values


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit seed derived from ``(seed, epoch)`` (independent of ``PYTHONHASHSEED``)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class BatchStream:
    """Seeded, resumable batches from in-memory tensors.

    For epoch ``e`` the order is a permutation drawn from a ``torch.Generator`` seeded with a
    hash of ``(seed, e)``, so resuming at epoch ``e`` gives the same batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | Sequence[int] | None,
        batch_size: int,
        seed: int,
        drop_last: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DiffnasError(
                f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}"
            )
        if batch_size < 1:
            raise DiffnasError(f"batch size must be at least 1, got {batch_size}")
        if indices is None:
            idx = torch.arange(images.shape[0])
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64).flatten().cpu()
        if idx.numel() == 0:
            raise DiffnasError("no samples to draw batches from (empty index set)")
        if int(idx.min()) < 0 or int(idx.max()) >= images.shape[0]:
            raise DiffnasError(f"sample indices must lie in 0..{images.shape[0] - 1}")
        self.images = images
        self.labels = labels
        self.indices = idx
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device)

    @property
    def num_samples(self) -> int:
        """Number of samples the stream draws from."""
        return int(self.indices.numel())

    def __len__(self) -> int:
        """Batches per epoch (at least one: a short set yields one smaller batch)."""
        n = self.num_samples
        if self.drop_last:
            return max(1, n // self.batch_size)
        return math.ceil(n / self.batch_size)

    def order(self, e: int) -> torch.Tensor:
        """The sample indices of epoch ``e`` in the order they are served."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, e))
        return self.indices[torch.randperm(self.num_samples, generator=g)]

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(uint8 images, int64 labels)`` batches of epoch ``e`` on the stream's device."""
        order = self.order(e)
        n, bs = self.num_samples, self.batch_size
        src = self.images.device
        pin = self.device.type == "cuda" and src.type == "cpu"
        for i in range(len(self)):
            idx = order[i * bs : min(n, (i + 1) * bs)]
            x = self.images[idx.to(src)]
            y = self.labels[idx.to(self.labels.device)].to(torch.int64)
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield (
                x.to(self.device, non_blocking=pin),
                y.to(self.device, non_blocking=pin),
            )
