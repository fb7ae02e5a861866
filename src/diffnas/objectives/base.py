"""Search objectives: what a step's loss is made of.

An objective turns an augmented batch into a :class:`Batch` once (``prepare``:
masking, rotations, ... drawn there, so a second-order step can evaluate the
same batch at several weights), then computes the loss of a supernet on it.
Objectives are modules: their own parameters (a decoder, a pretext head) are
trained with the supernet's weights. They compose with any search method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    loss: torch.Tensor
    logits: torch.Tensor | None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base: plain classification cross-entropy (the DARTS objective)."""

    name = "ce"

    def __init__(self, supernet: nn.Module | None = None, image_channels: int = 3,
                 image_size: int = 32, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **options: Any) -> None:
        """``mean``/``std``: the per-channel normalisation the batches went through
        (``x = (pixel / 255 - mean) / std``); None means un-normalised pixels in [0, 1]."""
        super().__init__()
        if options:
            raise DiffnasError(f"objective {self.name!r} takes no options "
                               f"(got {', '.join(sorted(options))})")

    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        return Batch(x, y)

    def eval_views(self, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Other views of clean validation images ``x`` on which the search also validates the
        supernet's classifier, by name (logged as ``val_<name>_acc``/``val_<name>_loss``
        beside the clean ``val_acc``/``val_loss``); none by default."""
        return {}

    def epoch_metrics(self) -> dict[str, Any]:
        """Entries for each search epoch's metrics record and result.json (the latency term's
        ``e_latency_ms``); none by default."""
        return {}

    def forward(self, model: nn.Module, batch: Batch) -> LossOutput:
        logits = model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return LossOutput(loss, logits, {"ce": loss.detach()})


OBJECTIVES: dict[str, type[Objective]] = {"ce": Objective}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls
