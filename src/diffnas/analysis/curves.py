"""Figures of a search run's ``metrics.jsonl``: per cell kind the method-weighted α (edge ×
op) at selected epochs and its evolution, skip / parameter-free counts, both α-std measures,
losses and accuracies (masked views where logged), NAS-Bench-201 table accuracy and the
α-Hessian eigenvalue when logged; for an experiment folder the same curves as mean ± std bands
per method over its seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DiffnasError
from . import figure, read_metrics, save

# (file stem, y label, metric keys or key prefixes/suffixes matched by _curve_keys)
CURVES: tuple[tuple[str, str], ...] = (
    ("loss", "loss"), ("acc", "accuracy"), ("counts", "ops in the derived cells"),
    ("alpha_std", "α std (Σ over edges)"), ("table_acc", "NAS-Bench-201 table accuracy (%)"),
    ("hessian_eig", "dominant eigenvalue of ∇²_α L_val"),
)


def _curve_keys(stem: str, record: dict[str, Any]) -> list[str]:
    """The metric keys of ``record`` that figure ``stem`` plots."""
    numeric = [k for k, v in record.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"]
    if stem == "loss":
        return [k for k in numeric if k.endswith("_loss")]
    if stem == "acc":
        return [k for k in numeric if k.endswith("_acc") and k != "table_acc"]
    if stem == "counts":
        return [k for k in ("skip_count", "param_free_count") if k in numeric]
    if stem == "alpha_std":
        return [k for k in ("alpha_std", "alpha_std_normal") if k in numeric]
    return [stem] if stem in numeric else []


def op_and_edge_names(space: str, kind: str, rows: Sequence[Sequence[float]]
                      ) -> tuple[list[str], list[str]]:
    """Column (op) and row (edge ``src→dst``) labels of a cell kind's α table in ``space``;
    ``op<i>`` when the table has another number of ops than the space (a pruned op set)."""
    if space == "nb201":
        from ..spaces.nb201 import EDGES, OPS
        ops, edges = list(OPS), [f"{i}→{j}" for i, j in EDGES]
    else:
        from ..spaces.darts import PRIMITIVES, edge_index
        names = {0: "c_{k-2}", 1: "c_{k-1}"}
        ops = list(PRIMITIVES)
        edges = [f"{names.get(s, s)}→{d}" for s, d in edge_index()]
    n_ops = len(rows[0]) if rows else 0
    if n_ops != len(ops):
        ops = [f"op{i}" for i in range(n_ops)]
    if len(rows) != len(edges):
        edges = [f"edge{i}" for i in range(len(rows))]
    return ops, edges


def pick_epochs(available: Sequence[int], wanted: Sequence[int] | None, n: int = 4) -> list[int]:
    """``wanted`` (each must be logged), else ``n`` evenly spaced logged epochs incl. the first
    and the last."""
    if wanted:
        bad = [e for e in wanted if e not in available]
        if bad:
            raise DiffnasError(f"epoch(s) {', '.join(map(str, bad))} not in the run's metrics; "
                               f"logged: {available[0]}..{available[-1]}")
        return list(wanted)
    if len(available) <= n:
        return list(available)
    return sorted({available[round(i * (len(available) - 1) / (n - 1))] for i in range(n)})


def _space(run: Path) -> str:
    try:
        return json.loads((run / "config.json").read_text()).get("space", "darts")
    except (OSError, ValueError):
        return "darts"


def alpha_figures(run: Path, records: list[dict[str, Any]], out: Path, size: tuple[int, int],
                  epochs: Sequence[int] | None = None) -> list[Path]:
    """Per cell kind ``alpha_<kind>.png`` (heatmaps at the selected epochs) and
    ``alpha_evolution_<kind>.png`` (each edge's op weights over the epochs); the JSON beside
    each holds the plotted α exactly as logged."""
    with_alpha = [r for r in records if isinstance(r.get("alpha"), dict)]
    if not with_alpha:
        return []
    space = _space(run)
    logged = [int(r["epoch"]) for r in with_alpha]
    chosen = pick_epochs(logged, epochs)
    by_epoch = {int(r["epoch"]): r["alpha"] for r in with_alpha}
    paths = []
    for kind in with_alpha[-1]["alpha"]:
        rows = by_epoch[chosen[-1]][kind]
        shown = [v for e in chosen for row in by_epoch[e][kind] for v in row]
        ops, edges = op_and_edge_names(space, kind, rows)
        fig, axes = figure(size, ncols=len(chosen), squeeze=False, sharey=True)
        for ax, e in zip(axes[0], chosen, strict=True):
            im = ax.imshow(by_epoch[e][kind], cmap="Blues", vmin=min(shown),
                           vmax=max(shown), aspect="auto")
            ax.set_title(f"epoch {e + 1}", fontsize=9)
            ax.set_xticks(range(len(ops)), ops, rotation=90, fontsize=7)
            ax.set_yticks(range(len(edges)), edges, fontsize=7)
        fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03)
        fig.suptitle(f"{kind} cell: method-weighted α (edge × op)", fontsize=10)
        fig.subplots_adjust(left=0.12, bottom=0.25, right=0.88, top=0.88, wspace=0.08)
        paths.append(save(fig, out / f"alpha_{kind}.png",
                          {"kind": kind, "ops": ops, "edges": edges, "epochs": chosen,
                           "alpha": {str(e): by_epoch[e][kind] for e in chosen}}))
        series = [r["alpha"][kind] for r in with_alpha]
        cols = min(len(edges), 5 if len(edges) > 6 else 3)
        nrows = -(-len(edges) // cols)
        fig, axes = figure(size, nrows=nrows, ncols=cols, squeeze=False, sharex=True, sharey=True)
        for i, ax in enumerate(axes.flat):
            if i >= len(edges):
                ax.axis("off")
                continue
            for o, op in enumerate(ops):
                ax.plot([e + 1 for e in logged], [s[i][o] for s in series], label=op, lw=1,
                        marker="." if len(logged) < 12 else None)
            ax.set_title(edges[i], fontsize=8)
            ax.tick_params(labelsize=6)
        axes.flat[0].legend(fontsize=5, loc="upper left")
        fig.suptitle(f"{kind} cell: α per edge over the epochs", fontsize=10)
        fig.tight_layout()
        paths.append(save(fig, out / f"alpha_evolution_{kind}.png",
                          {"kind": kind, "ops": ops, "edges": edges, "epochs": logged,
                           "alpha": series}))
    return paths


def _plot_series(stem: str, ylabel: str, series: dict[str, dict[str, list[float | None]]],
                 out: Path, size: tuple[int, int], title: str) -> Path:
    """One curve figure: ``series[label] = {"epoch", "mean", "std"?}`` (std: a ± band)."""
    fig, ax = figure(size)
    for label, s in series.items():
        xs = [e + 1 for e in s["epoch"]]
        (line,) = ax.plot(xs, s["mean"], marker="o" if len(xs) < 12 else None, ms=3,
                          label=label)
        if s.get("std"):
            lo = [m - d for m, d in zip(s["mean"], s["std"], strict=True)]
            hi = [m + d for m, d in zip(s["mean"], s["std"], strict=True)]
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out / f"{stem}.png", series)


def curve_figures(records: list[dict[str, Any]], out: Path, size: tuple[int, int],
                  title: str = "") -> list[Path]:
    """The per-epoch curves of one run (every figure of :data:`CURVES` it has data for)."""
    paths = []
    for stem, ylabel in CURVES:
        keys = sorted({k for r in records for k in _curve_keys(stem, r)})
        series = {}
        for k in keys:
            pts = [(int(r["epoch"]), float(r[k])) for r in records
                   if isinstance(r.get(k), int | float)]
            series[k] = {"epoch": [e for e, _ in pts], "mean": [v for _, v in pts]}
        if series:
            paths.append(_plot_series(stem, ylabel, series, out, size, title))
    return paths


def plot_search_run(run: str | Path, out: str | Path | None = None,
                    size: tuple[int, int] = (1200, 700),
                    epochs: Sequence[int] | None = None) -> list[Path]:
    """Every figure of one search run folder into ``out`` (default ``RUN/figures``)."""
    run = Path(run)
    records = read_metrics(run)
    out = Path(out) if out else run / "figures"
    return (alpha_figures(run, records, out, size, epochs)
            + curve_figures(records, out, size, title=run.name))


def experiment_runs(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """``{setting: {method: [seed run folders with metrics]}}`` of an experiment folder."""
    grid: dict[str, dict[str, list[Path]]] = {}
    for m in sorted((folder / "runs").glob("*/*/seed*/metrics.jsonl")):
        seed_dir = m.parent
        grid.setdefault(seed_dir.parent.parent.name, {}).setdefault(
            seed_dir.parent.name, []).append(seed_dir)
    return grid


def plot_experiment(folder: str | Path, out: str | Path | None = None,
                    size: tuple[int, int] = (1200, 700)) -> list[Path]:
    """Per setting and metric one figure with a mean ± std (over seeds) band per method, over
    the epochs every seed of the method has logged; into ``out`` (default ``FOLDER/figures``)."""
    folder = Path(folder)
    grid = experiment_runs(folder)
    if not grid:
        raise DiffnasError(f"{folder} is an experiment folder without any run metrics yet "
                           "(runs/<setting>/<method>/seed<S>/metrics.jsonl)")
    out = Path(out) if out else folder / "figures"
    paths = []
    for setting, methods in grid.items():
        runs = {m: [read_metrics(d) for d in dirs] for m, dirs in methods.items()}
        for stem, ylabel in CURVES:
            series: dict[str, dict[str, list[Any]]] = {}
            for method, seeds in runs.items():
                keys = sorted({k for recs in seeds for r in recs for k in _curve_keys(stem, r)})
                for k in keys:
                    per = [{int(r["epoch"]): float(r[k]) for r in recs
                            if isinstance(r.get(k), int | float)} for recs in seeds]
                    common = sorted(set.intersection(*(set(p) for p in per)))
                    if not common:
                        continue
                    vals = [[p[e] for p in per] for e in common]
                    series[f"{method} {k}" if len(keys) > 1 else method] = {
                        "epoch": common, "mean": [statistics.fmean(v) for v in vals],
                        "std": [statistics.pstdev(v) for v in vals], "seeds": len(per)}
            if series:
                paths.append(_plot_series(f"{stem}_{setting}", ylabel, series, out, size,
                                          f"{setting}: mean ± std over seeds"))
    return paths


def plot(run: str | Path, out: str | Path | None = None, size: tuple[int, int] = (1200, 700),
         epochs: Sequence[int] | None = None) -> list[Path]:
    """``diffnas plot``: an experiment folder (``experiment.json``) or a search run folder."""
    run = Path(run)
    if (run / "experiment.json").is_file():
        return plot_experiment(run, out, size)
    return plot_search_run(run, out, size, epochs)
