"""Search objectives (loss terms) that compose with any search method."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import unknown
from .base import OBJECTIVES, Batch, LossOutput, Objective, register_objective

__all__ = ["OBJECTIVES", "Batch", "LossOutput", "Objective", "build_objective",
           "register_objective"]


def build_objective(name: str, supernet: nn.Module, image_channels: int, image_size: int,
                    options: dict[str, Any] | None = None) -> Objective:
    if name not in OBJECTIVES:
        raise unknown("objective", name, OBJECTIVES)
    return OBJECTIVES[name](supernet, image_channels=image_channels, image_size=image_size,
                            **(options or {}))
