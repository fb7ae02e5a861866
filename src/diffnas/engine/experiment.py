"""Experiments: a grid of methods × seeds × settings (preset, space, dataset), one search run
folder per cell, and the tables the papers report — mean ± std over seeds per method.

Layout of an experiment folder::

    experiment.json                 the grid (updated when the grid is extended)
    runs/<setting>/<method>/seed<S>/  one search run folder per cell (+ retrain/ when asked)
    results.csv, results.json       one row per run (results.json adds per-epoch curves)
    summary.json, summary.md        mean ± std per (setting, method)
    table_acc_<setting>.png         NAS-Bench-201 table accuracy vs epoch (mean, ± std band)
    log.txt

Re-running the same command resumes: finished runs (``result.json`` present) are skipped, an
interrupted one continues from its checkpoint (the search's own resume), a failed one is retried.
By default each run is its own process, so a crash cannot take the grid down and peak memory
is measured per run.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import SearchConfig, resolve_config
from ..errors import DiffnasError
from .runfolder import RunFolder, atomic_write_text

SEARCH_FIELDS = {f.name for f in fields(SearchConfig)}


# ----------------------------------------------------------------------------------- the grid
def _coerce(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, null, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _label(text: str) -> str:
    """A folder-safe label."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return out.strip("-") or "x"


@dataclass(frozen=True)
class MethodSpec:
    """``NAME[:key=value,...]``: config fields (e.g. ``darts:order=2``) or method options."""

    spec: str
    method: str
    config: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> MethodSpec:
        name, _, rest = spec.partition(":")
        if not name.strip():
            raise DiffnasError(f"method spec {spec!r} has no method name; expected "
                               "NAME[:key=value,...], e.g. darts:order=2")
        config: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            if "=" not in item:
                raise DiffnasError(f"method spec {spec!r}: {item!r} is not key=value")
            k, v = (s.strip() for s in item.split("=", 1))
            k = k.replace("-", "_")
            if k in SEARCH_FIELDS:
                config[k] = _coerce(v)
            else:
                options[k] = v
        return cls(spec, name.strip(), config, options)

    @property
    def label(self) -> str:
        return _label(self.spec.replace(":", "_").replace("=", "").replace(",", "_"))


@dataclass
class ExperimentSpec:
    """The grid: every method × seed × (preset, space, dataset) combination is one run."""

    methods: list[str] = field(default_factory=lambda: ["darts"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    presets: list[str] = field(default_factory=lambda: ["nb201-cpu"])
    spaces: list[str | None] = field(default_factory=lambda: [None])
    datasets: list[str | None] = field(default_factory=lambda: [None])
    overrides: dict[str, Any] = field(default_factory=dict)   # search config fields, all runs
    retrain: str | None = None                                # train preset, or no retraining
    retrain_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None    # torch threads per run (None: torch's default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentSpec:
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise DiffnasError(f"unknown experiment field(s) {', '.join(bad)}; valid: "
                               f"{', '.join(sorted(names))}")
        return cls(**d)


@dataclass
class Cell:
    setting: str
    method: str
    seed: int
    cfg: SearchConfig
    run_dir: Path


def setting_label(preset: str, space: str | None, dataset: str | None) -> str:
    return _label("-".join([preset] + [x for x in (space, dataset) if x]))


def plan(spec: ExperimentSpec, out: str | Path) -> list[Cell]:
    """Every cell of the grid with its resolved config (all configs are validated first)."""
    from ..methods import get_method

    if not spec.methods or not spec.seeds or not spec.presets:
        raise DiffnasError("an experiment needs at least one method, one seed and one preset")
    bad = sorted(set(spec.overrides) - SEARCH_FIELDS - {"method", "seed"})
    if bad or {"method", "seed"} & set(spec.overrides):
        raise DiffnasError(f"cannot override {', '.join(bad) or 'method/seed'} for all runs; "
                           f"valid: {', '.join(sorted(SEARCH_FIELDS - {'method', 'seed'}))} "
                           "(methods and seeds are the grid's axes)")
    methods = [MethodSpec.parse(m) for m in spec.methods]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise DiffnasError(f"methods {', '.join(spec.methods)} repeat a method")
    cells = []
    for preset, space, dataset in itertools.product(spec.presets, spec.spaces, spec.datasets):
        setting = setting_label(preset, space, dataset)
        for m in methods:
            for seed in spec.seeds:
                axes = {k: v for k, v in (("space", space), ("dataset", dataset)) if v}
                cfg = resolve_config(preset, **{**spec.overrides, **axes, **m.config},
                                     method=m.method, seed=int(seed), device=spec.device,
                                     method_args=m.options or None)
                get_method(cfg.method)  # an unknown method fails before anything runs
                run_dir = Path(out) / "runs" / setting / m.label / f"seed{seed}"
                cells.append(Cell(setting, m.label, int(seed), cfg, run_dir))
    return cells


# --------------------------------------------------------------------------------- running
def _search_cell(cfg_dict: dict[str, Any], run_dir: str, resume: bool, progress: bool) -> None:
    from .search import search

    search(SearchConfig.from_dict(cfg_dict), out=run_dir, resume=resume, progress=progress)


def _retrain_cell(train_dict: dict[str, Any], run_dir: str, resume: bool, progress: bool) -> None:
    from .train import TrainConfig, train

    train(TrainConfig.from_dict(train_dict), out=run_dir, resume=resume, progress=progress)


def _child(target: str, args: tuple[Any, ...], error_file: str, threads: int | None) -> None:
    """Entry of an isolated run: any failure is written to ``error_file`` and exits 1."""
    import sys

    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        {"search": _search_cell, "retrain": _retrain_cell}[target](*args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as e:  # noqa: BLE001 - report every failure to the parent
        msg = str(e) if isinstance(e, DiffnasError) else traceback.format_exc()
        Path(error_file).parent.mkdir(parents=True, exist_ok=True)
        Path(error_file).write_text(msg)
        sys.exit(1)


def _execute(target: str, args: tuple[Any, ...], run_dir: Path, isolate: bool,
             threads: int | None = None) -> str | None:
    """Run one search/retrain; None on success, else the error text."""
    error_file = run_dir / f"error-{target}.txt"
    error_file.unlink(missing_ok=True)
    if not isolate:
        import torch

        saved = torch.get_num_threads()
        try:
            if threads:
                torch.set_num_threads(threads)
            {"search": _search_cell, "retrain": _retrain_cell}[target](*args)
            return None
        except DiffnasError as e:
            msg = str(e)
        except Exception:  # noqa: BLE001 - unattended grids record the failure and go on
            msg = traceback.format_exc()
        finally:
            torch.set_num_threads(saved)
        run_dir.mkdir(parents=True, exist_ok=True)
        error_file.write_text(msg)
        return msg
    proc = mp.get_context("spawn").Process(target=_child,
                                           args=(target, args, str(error_file), threads))
    proc.start()
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.join()
        raise
    if proc.exitcode == 130:
        raise KeyboardInterrupt
    if proc.exitcode == 0:
        return None
    if error_file.exists():
        return error_file.read_text()
    return f"the run's process ended with exit code {proc.exitcode}"


def _check_config(run_dir: Path, cfg: Any, cls: Any) -> None:
    saved = run_dir / "config.json"
    if not saved.exists():
        return
    old = cls.from_dict(json.loads(saved.read_text()))
    diff = old.fingerprint_diff(cfg)
    if diff:
        raise DiffnasError(f"{run_dir} was made with another config ({', '.join(diff)} differ); "
                           "use a new experiment folder, or delete that run to redo it")


def _state(run_dir: Path) -> str:
    if (run_dir / "result.json").exists():
        return "done"
    if (run_dir / "checkpoint.pt").exists():
        return "resume"
    return "new"


def _train_config(spec: ExperimentSpec, cell: Cell) -> Any:
    try:
        from .train import resolve_train_config
    except ImportError as e:
        raise DiffnasError(f"retraining needs diffnas.engine.train, which cannot be imported "
                           f"here ({e})") from None
    genotype = json.loads((cell.run_dir / "result.json").read_text())["genotype_str"]
    values = {"dataset": cell.cfg.dataset, "data_dir": cell.cfg.data_dir,
              "image_size": cell.cfg.image_size, "seed": cell.seed, "device": spec.device,
              **spec.retrain_overrides, "genotype": genotype}
    cfg = resolve_train_config(spec.retrain, **values)
    return cfg.replace(genotype=genotype, genotype_source=str(cell.run_dir))


def run_experiment(spec: ExperimentSpec, out: str | Path, *, isolate: bool = True,
                   progress: bool = True, echo: Callable[[str], None] = print,
                   plot: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell of the grid, then write the results and summaries (and the
    plots, unless ``plot`` is False)."""
    out = Path(out)
    cells = plan(spec, out)
    if spec.retrain:
        from .train import TrainConfig  # noqa: F401 - fail early if retraining is unavailable
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "experiment.json", json.dumps(spec.to_dict(), indent=2) + "\n")
    log = RunFolder(out)
    for cell in cells:
        _check_config(cell.run_dir, cell.cfg, SearchConfig)
    log.log(f"experiment: {len(cells)} runs ({len(spec.methods)} methods × {len(spec.seeds)} "
            f"seeds × {len(cells) // (len(spec.methods) * len(spec.seeds))} settings)")
    for n, cell in enumerate(cells, 1):
        head = f"[{n}/{len(cells)}] {cell.setting} {cell.method} seed {cell.seed}"
        state = _state(cell.run_dir)
        if state == "done":
            echo(f"{head}: finished earlier, skipped")
        else:
            echo(f"{head}: {'resuming' if state == 'resume' else 'starting'} search "
                 f"({cell.run_dir})")
            t0 = time.perf_counter()
            err = _execute("search", (cell.cfg.to_dict(), str(cell.run_dir), state == "resume",
                                      progress), cell.run_dir, isolate, spec.threads)
            msg = "ok" if err is None else f"FAILED: {err.strip().splitlines()[-1]}"
            echo(f"{head}: search {msg} ({time.perf_counter() - t0:.0f} s)")
            log.log(f"{head}: search {state} -> {msg}")
        if spec.retrain and _state(cell.run_dir) == "done":
            rdir = cell.run_dir / "retrain"
            tcfg = _train_config(spec, cell)
            from .train import TrainConfig

            _check_config(rdir, tcfg, TrainConfig)
            rstate = _state(rdir)
            if rstate != "done":
                echo(f"{head}: retraining ({rdir})")
                err = _execute("retrain", (tcfg.to_dict(), str(rdir), rstate == "resume",
                                           progress), rdir, isolate, spec.threads)
                msg = "ok" if err is None else f"FAILED: {err.strip().splitlines()[-1]}"
                echo(f"{head}: retrain {msg}")
                log.log(f"{head}: retrain {rstate} -> {msg}")
    return report(out, cells, plot=plot)


# ----------------------------------------------------------------------------- collecting
def _params_m(genotype: Any) -> float:
    """Parameters (M, auxiliary head excluded) of the genotype's evaluation network at the
    paper's size (CIFAR-10: DARTS 36 channels × 20 cells; NAS-Bench-201 16 × 5)."""
    from ..nets import build_network

    net = build_network(genotype)
    params = net.parameters_without_aux() if hasattr(net, "parameters_without_aux") \
        else net.parameters()
    return sum(p.numel() for p in params) / 1e6


def _table_acc(table: Any, genotype: Any) -> float | None:
    if table is None or getattr(genotype, "space", None) != "nb201":
        return None
    try:
        return table.accuracy(genotype)
    except DiffnasError:
        return None


def collect_run(cell: Cell, table: Any = None) -> dict[str, Any]:
    """One results row for a cell's run folder (``status`` tells whether it finished)."""
    from ..spaces import genotype_from_dict

    run = RunFolder(cell.run_dir)
    row: dict[str, Any] = {"setting": cell.setting, "method": cell.method, "seed": cell.seed,
                           "space": cell.cfg.space, "dataset": cell.cfg.dataset,
                           "epochs": cell.cfg.epochs, "run_dir": str(cell.run_dir)}
    result_file = run.path / "result.json"
    err = run.path / "error-search.txt"
    if not result_file.exists():
        row["status"] = "failed" if err.exists() else "incomplete"
        if err.exists():
            row["error"] = err.read_text().strip().splitlines()[-1][:200]
        return row
    result = json.loads(result_file.read_text())
    history = run.read_metrics()
    last = history[-1] if history else {}
    genotype = genotype_from_dict(result["genotype"])
    curve = []
    for rec in history:
        acc = rec.get("table_acc")
        if table is not None and cell.cfg.space == "nb201":
            acc = _table_acc(table, genotype_from_dict(rec["genotype"]))
        curve.append(acc)
    val = result.get("final_val_acc")
    row.update({
        "status": "done", "genotype": result.get("genotype_str", str(genotype)),
        "search_acc": None if val is None else 100.0 * val,
        "table_acc": _table_acc(table, genotype) if table is not None else (
            curve[-1] if curve else None),
        "params_m": _params_m(genotype), "skip_count": last.get("skip_count"),
        "alpha_std": last.get("alpha_std"),
        "search_time_min": result.get("search_time_s", 0.0) / 60.0,
        "peak_mem_gib": result.get("peak_mem_gib"), "table_acc_curve": curve,
    })
    retrain = run.path / "retrain" / "result.json"
    if retrain.exists():
        row["retrain_acc"] = 100.0 * float(json.loads(retrain.read_text())["test_acc"])
    return row


# ----------------------------------------------------------------------------- aggregation
METRICS: tuple[tuple[str, str, int], ...] = (
    ("search_acc", "Search val acc (%)", 2),
    ("table_acc", "NB201 table acc (%)", 2),
    ("params_m", "Params (M)", 3),
    ("skip_count", "Skips", 1),
    ("alpha_std", "α-std", 3),
    ("search_time_min", "Search time (min)", 1),
    ("peak_mem_gib", "Peak mem (GiB)", 2),
    ("retrain_acc", "Retrained acc (%)", 2),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, method), in first-seen order: run counts and mean/std of each metric over
    the finished runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    out = []
    for (setting, method), rs in groups.items():
        done = [r for r in rs if r.get("status") == "done"]
        entry: dict[str, Any] = {"setting": setting, "method": method, "runs": len(rs),
                                 "finished": len(done), "seeds": [r["seed"] for r in done]}
        for key, _, _ in METRICS:
            vals = [float(r[key]) for r in done if r.get(key) is not None]
            if vals:
                m, s = mean_std(vals)
                entry[key] = {"mean": m, "std": s, "n": len(vals)}
        curves = [r["table_acc_curve"] for r in done
                  if r.get("table_acc_curve") and None not in r["table_acc_curve"]]
        if curves and len({len(c) for c in curves}) == 1:
            per_epoch = [mean_std(list(v)) for v in zip(*curves, strict=True)]
            entry["table_acc_curve"] = {"mean": [m for m, _ in per_epoch],
                                        "std": [s for _, s in per_epoch], "n": len(curves)}
        out.append(entry)
    return out


def markdown_table(summary: Sequence[dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """Mean ± std per method, one Markdown table per setting; columns with no values are left
    out. ``notes``: a line under each setting's heading."""
    lines: list[str] = []
    for setting in dict.fromkeys(s["setting"] for s in summary):
        entries = [s for s in summary if s["setting"] == setting]
        cols = [(k, title, d) for k, title, d in METRICS if any(k in e for e in entries)]
        lines += [f"**{setting}**" + (f" — {notes[setting]}" if notes and setting in notes
                                      else ""), ""]
        lines.append("| Method | Runs | " + " | ".join(t for _, t, _ in cols) + " |")
        lines.append("|---|---|" + "---|" * len(cols))
        for e in entries:
            cells = []
            for key, _, d in cols:
                v = e.get(key)
                cells.append("—" if v is None else (f"{v['mean']:.{d}f} ± {v['std']:.{d}f}"
                                                    if v["n"] > 1 else f"{v['mean']:.{d}f}"))
            runs = f"{e['finished']}/{e['runs']}"
            lines.append(f"| {e['method']} | {runs} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(summary: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per setting: table accuracy vs epoch per method (mean line, ± std band).
    Needs matplotlib (the ``bench`` extra); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for setting in dict.fromkeys(s["setting"] for s in summary):
        entries = [s for s in summary if s["setting"] == setting and "table_acc_curve" in s]
        if not entries:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for e in entries:
            c = e["table_acc_curve"]
            x = list(range(1, len(c["mean"]) + 1))
            lo = [m - s for m, s in zip(c["mean"], c["std"], strict=True)]
            hi = [m + s for m, s in zip(c["mean"], c["std"], strict=True)]
            (line,) = ax.plot(x, c["mean"], marker="o", ms=3, label=f"{e['method']} (n={c['n']})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("search epoch")
        ax.set_ylabel("NAS-Bench-201 table accuracy (%, CIFAR-10)")
        ax.set_title(f"{setting}: derived cell's table accuracy (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"table_acc_{setting}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    keys = ["setting", "method", "seed", "status", "space", "dataset", "epochs",
            *[k for k, _, _ in METRICS], "genotype", "run_dir", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _table_or_none(cells: Sequence[Cell]) -> tuple[Any, str | None]:
    if not any(c.cfg.space == "nb201" for c in cells):
        return None, None
    try:
        from ..bench.nb201_table import cached_table

        table = cached_table()
        return table, table.describe()
    except DiffnasError as e:
        return None, f"no table accuracies: {e}"


def report(out: str | Path, cells: Sequence[Cell], plot: bool = True) -> dict[str, Any]:
    """Collect the runs of ``cells`` and write results.{csv,json}, summary.{json,md}, plots."""
    out = Path(out)
    table, table_note = _table_or_none(cells)
    rows = [collect_run(c, table) for c in cells]
    summary = aggregate(rows)
    notes = {}
    for c in cells:
        if c.setting not in notes:
            cfg = c.cfg
            size = f" ({cfg.subset} images)" if cfg.subset else ""
            per = "cells/stage" if cfg.space == "nb201" else "cells"
            notes[c.setting] = (f"{cfg.space} space, searched on {cfg.dataset}{size}, "
                                f"{cfg.epochs} epochs, {cfg.channels} channels × {cfg.layers} "
                                f"{per}, batch {cfg.batch_size}")
    md = markdown_table(summary, notes)
    foot = ["Mean ± sample std over the finished seeds; Runs = finished/planned. Search val acc: "
            "the supernet on the search's held-out half."]
    if table_note:
        foot.append(f"NB201 table acc: {table_note}; it is CIFAR-10 accuracy of the derived "
                    "cell, whatever data the search ran on (a transfer protocol unless that was "
                    "CIFAR-10).")
    md = md + "\n" + "\n".join(foot) + "\n"  # a blank line: text right after a table joins it
    plots: list[str] = []
    try:
        plots = [str(p) for p in plot_curves(summary, out)] if plot else []
    except ImportError:
        md += "\n(no plot: matplotlib is not installed; pip install 'diffnas[bench]')\n"
    atomic_write_text(out / "results.csv", _csv(rows))
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "summary.md", md)
    return {"rows": rows, "summary": summary, "markdown": md, "plots": plots}


def load_spec(out: str | Path) -> ExperimentSpec:
    """The grid saved in an experiment folder."""
    path = Path(out) / "experiment.json"
    if not path.is_file():
        raise DiffnasError(f"{out} is not an experiment folder (no experiment.json)")
    return ExperimentSpec.from_dict(json.loads(path.read_text()))
