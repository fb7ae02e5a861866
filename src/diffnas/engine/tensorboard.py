"""TensorBoard output of a search (``diffnas search --tensorboard``; extra
``diffnas[tensorboard]``): every epoch's numeric metrics as scalars and each cell kind's
softmax(α) as a heatmap image, in ``RUN_FOLDER/tensorboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DiffnasError

#: pixels per α entry in the heatmap (one row per edge, one column per op)
CELL_PX = 12


def alpha_heatmap(rows: list[list[float]]) -> torch.Tensor:
    """``[3, H, W]`` image in [0, 1] of an edges × ops weight table, each row scaled to its
    own maximum (white = 0, dark blue = the edge's strongest op)."""
    w = torch.tensor(rows, dtype=torch.float32)
    w = w / w.amax(dim=1, keepdim=True).clamp_min(1e-12)
    w = w.repeat_interleave(CELL_PX, 0).repeat_interleave(CELL_PX, 1)
    white, blue = torch.ones(3), torch.tensor([0.03, 0.19, 0.42])
    return (white[:, None, None] * (1 - w) + blue[:, None, None] * w).clamp(0, 1)


class TensorBoardLogger:
    """``on_epoch`` callback of :func:`diffnas.engine.search.search`: opens its writer in the
    run folder at the first epoch it sees."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DiffnasError("--tensorboard needs the tensorboard package, which is not "
                               "installed: pip install 'diffnas[tensorboard]'") from None
        self._writer_cls = SummaryWriter
        self.writer: Any = None

    def __call__(self, run_dir: Path, record: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = self._writer_cls(log_dir=str(Path(run_dir) / "tensorboard"))
        epoch = int(record["epoch"])
        for key, value in record.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, v in items:  # numbers, and dicts of numbers (e.g. table accuracies)
                if key != "epoch" and isinstance(v, int | float) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{key}/{sub}" if sub else key, v, epoch)
        for kind, rows in record.get("alpha", {}).items():
            self.writer.add_image(f"alpha/{kind}", alpha_heatmap(rows), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
