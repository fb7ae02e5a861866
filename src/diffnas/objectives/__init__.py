"""Search objectives (loss terms) that compose with any search method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import unknown
from .base import OBJECTIVES, Batch, LossOutput, Objective, register_objective
from .mim import MIMObjective
from .pretext import ColorizationObjective, JigsawObjective, RotationObjective

__all__ = ["OBJECTIVES", "Batch", "ColorizationObjective", "JigsawObjective", "LossOutput",
           "MIMObjective", "Objective", "RotationObjective", "build_objective",
           "register_objective"]


def build_objective(name: str, supernet: nn.Module, image_channels: int, image_size: int,
                    options: dict[str, Any] | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> Objective:
    """Objective ``name`` for ``supernet``; ``mean``/``std`` is the data's normalisation
    (None: batches hold pixels in [0, 1])."""
    if name not in OBJECTIVES:
        raise unknown("objective", name, OBJECTIVES)
    return OBJECTIVES[name](supernet, image_channels=image_channels, image_size=image_size,
                            mean=mean, std=std, **(options or {}))
