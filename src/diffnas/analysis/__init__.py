"""The papers' figures from run folders (``diffnas plot | draw | cam | landscape``).

One module per figure kind: :mod:`.curves` (α heatmaps and per-epoch curves of a search run
or an experiment), :mod:`.cells` (cell drawings with Graphviz), :mod:`.cam` (Grad-CAM and
LayerCAM of a trained network) and :mod:`.landscape` (loss landscapes). They read run folders
only; nothing here runs a search. Every figure is written as PNG (drawings also as SVG and PDF)
with the numbers behind it beside it (same stem, ``.json`` or ``.csv``).

matplotlib and graphviz come with the optional extra ``diffnas[plot]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DiffnasError

PLOT_EXTRA = "pip install 'diffnas[plot]'"
DPI = 100


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a one-line error naming the
    extra."""
    try:
        import matplotlib
    except ImportError:
        raise DiffnasError(f"figures need matplotlib, which is not installed: {PLOT_EXTRA}"
                           ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` in pixels -> ``(W, H)``; a one-line error otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DiffnasError(f"size takes WIDTHxHEIGHT in pixels (e.g. 1200x800), got {text!r}"
                           ) from None
    if min(w, h) < 50:
        raise DiffnasError(f"size {text!r} is too small; give at least 50x50 pixels")
    return w, h


def figure(size: tuple[int, int], **kw: Any) -> tuple[Any, Any]:
    """A matplotlib figure of exactly ``size`` pixels and its axes (``plt.subplots`` kw)."""
    plt = pyplot()
    return plt.subplots(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, **kw)


def save(fig: Any, path: Path, data: Any) -> Path:
    """Write ``fig`` to ``path`` (PNG, at the figure's pixel size) and ``data`` to the same stem
    with ``.json``; close the figure. Returns the PNG path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    return path


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a search or train run folder's ``metrics.jsonl``."""
    file = Path(run) / "metrics.jsonl"
    if not file.is_file():
        raise DiffnasError(f"{run} is not a run folder (it has no metrics.jsonl)")
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not records:
        raise DiffnasError(f"{file} holds no epoch yet")
    return records
