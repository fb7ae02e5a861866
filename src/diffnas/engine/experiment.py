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
is measured per run; ``jobs`` of them run at once. Before the first run starts every run's
supernet, objective and method are built once (:func:`check_runs`), so a bad option stops the
grid at once instead of after hours. ``launcher="submitit"`` runs each cell as its own submitit
job instead (Slurm, or submitit's local executor; :mod:`diffnas.engine.cluster`).
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
def json_or_text(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, null, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _label(text: str) -> str:
    """A folder-safe label."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return out.strip("-") or "x"


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` cut at each ``sep`` outside brackets, braces and double-quoted strings, so
    JSON values keep their commas: ``a=1,b={"x":1,"y":2}`` → ``a=1``, ``b={"x":1,"y":2}``."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if quoted:
            quoted = not (c == '"' and text[i - 1] != "\\")
        elif c == '"':
            quoted = True
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


#: Config fields that hold option dicts: layered (preset < ``--set`` < method spec) key by key.
OPTION_FIELDS = ("method_args", "objective_args")


def _options_dict(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DiffnasError(f"{where}: {key} must be a JSON object such as "
                           f"{key}={{\"name\":1}}, got {value!r}")
    return value


@dataclass(frozen=True)
class MethodSpec:
    """``NAME[:key=value,...]``: config fields (e.g. ``darts:order=2``,
    ``semantic:objective_args={"mask_ratio":0.4,"patch_size":4}``) or method options (the rest;
    given as text, converted by the method like ``--opt``). Commas inside a JSON value or a
    double-quoted one (``darts:regularisers="a,b"``) do not separate items."""

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
        for item in filter(None, (s.strip() for s in split_top_level(rest))):
            if "=" not in item:
                raise DiffnasError(f"method spec {spec!r}: {item!r} is not key=value (quote a "
                                   'value that holds commas: key="a,b")')
            k, v = (s.strip() for s in item.split("=", 1))
            k = k.replace("-", "_")
            if k in OPTION_FIELDS:
                config[k] = _options_dict(json_or_text(v), f"method spec {spec!r}", k)
            elif k in SEARCH_FIELDS:
                config[k] = json_or_text(v)
            else:  # text, as --opt gives it (a quoted value loses its quotes)
                options[k] = json_or_text(v) if v.startswith('"') else v
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
    threads: int | None = None    # torch threads per run (None: see run_threads)
    jobs: int = 1                 # runs at once, each in its own process
    launcher: str = "machine"     # machine (this one) | submitit (a job per run; engine.cluster)
    launcher_opts: dict[str, Any] = field(default_factory=dict)   # --launcher-opt KEY=VALUE

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
            # option dicts merge key by key: preset < --set < method spec (its KEY=VALUE last)
            given = {k: _options_dict(v, "--set", k) for k, v in spec.overrides.items()
                     if k in OPTION_FIELDS}
            merged = {k: {**given.get(k, {}), **m.config.get(k, {})} for k in OPTION_FIELDS}
            merged["method_args"].update(m.options)
            axes = {k: v for k, v in (("space", space), ("dataset", dataset)) if v}
            values = {k: v for k, v in {**spec.overrides, **axes, **m.config}.items()
                      if k not in OPTION_FIELDS}
            for seed in spec.seeds:
                cfg = resolve_config(preset, **values, **merged, method=m.method,
                                     seed=int(seed), device=spec.device)
                get_method(cfg.method)  # an unknown method fails before anything runs
                run_dir = Path(out) / "runs" / setting / m.label / f"seed{seed}"
                cells.append(Cell(setting, m.label, int(seed), cfg, run_dir))
    return cells


def _data_shape(cfg: SearchConfig) -> tuple[Any, ...] | None:
    """(channels, size, classes, (mean, std), images) of a run's data, or None when it cannot
    be read here without downloading (the run itself then fetches it or reports the problem).
    With ``class_fraction`` only that share is read, as the run reads it (an image folder's
    other files are not opened)."""
    from ..data import load_dataset

    try:
        data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir,
                            image_size=cfg.image_size, download=False,
                            class_fraction=cfg.class_fraction, seed=cfg.seed)
    except (DiffnasError, OSError):
        return None
    return data.in_channels, data.image_size, data.num_classes, (data.mean, data.std), len(data)


def check_runs(cells: Sequence[Cell]) -> None:
    """Build every run's supernet, objective and method (on the CPU, for its data's shape)
    before any run starts, so a bad method or objective option stops the grid at once with
    one line naming the run. Runs that differ only in their seed are checked once."""
    import torch

    from .search import build_search

    shapes: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}
    checked: set[str] = set()
    for cell in cells:
        cfg = cell.cfg.replace(device="cpu")
        key = json.dumps({**cfg.to_dict(), "seed": None}, sort_keys=True, default=str)
        if key in checked:
            continue
        checked.add(key)
        where = (cfg.dataset, cfg.data_dir, cfg.image_size, cfg.class_fraction)
        if where not in shapes:
            shapes[where] = _data_shape(cfg)
        shape = shapes[where]
        if shape is None:
            continue
        channels, size, classes, stats, images = shape
        n = min(cfg.subset or images, images)
        steps = max(1, int(n * min(cfg.train_portion, 1 - cfg.train_portion)) // cfg.batch_size)
        try:
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
                build_search(cfg, channels, size, classes, steps, torch.device("cpu"), stats)
        except Exception as e:  # noqa: BLE001 - any failure here is the run's, named in one line
            msg = str(e) if isinstance(e, DiffnasError) else f"{type(e).__name__}: {e}"
            raise DiffnasError(f"run {cell.setting}/{cell.method}/seed{cell.seed} cannot "
                               f"start: {msg}") from None


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


def run_threads(spec: ExperimentSpec) -> int:
    """Torch threads each run uses: ``spec.threads``, else the machine's cores shared out
    among the ``spec.jobs`` runs at once (torch's own default when one run at a time)."""
    import os

    import torch

    if spec.threads:
        return spec.threads
    if spec.jobs > 1:
        return max(1, (os.cpu_count() or 1) // spec.jobs)
    return torch.get_num_threads()


def _run_cell(spec: ExperimentSpec, cell: Cell, head: str, isolate: bool, progress: bool,
              echo: Callable[[str], None], log: RunFolder, threads: int) -> None:
    """One cell: its search (skipped when finished, resumed when interrupted), then its
    retraining when the grid asks for one."""
    state = _state(cell.run_dir)
    if state == "done":
        echo(f"{head}: finished earlier, skipped")
    else:
        echo(f"{head}: {'resuming' if state == 'resume' else 'starting'} search "
             f"({cell.run_dir})")
        t0 = time.perf_counter()
        err = _execute("search", (cell.cfg.to_dict(), str(cell.run_dir), state == "resume",
                                  progress), cell.run_dir, isolate, threads)
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
                                       progress), rdir, isolate, threads)
            msg = "ok" if err is None else f"FAILED: {err.strip().splitlines()[-1]}"
            echo(f"{head}: retrain {msg}")
            log.log(f"{head}: retrain {rstate} -> {msg}")


def run_experiment(spec: ExperimentSpec, out: str | Path, *, isolate: bool = True,
                   progress: bool = True, echo: Callable[[str], None] = print,
                   plot: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell of the grid, ``spec.jobs`` at a time, then write the results
    and summaries (and the plots, unless ``plot`` is False). Every run's config and its
    method/objective options are checked before the first run starts."""
    out = Path(out)
    if spec.jobs < 1:
        raise DiffnasError(f"jobs must be at least 1, got {spec.jobs}")
    from .cluster import check_launcher

    spec.launcher_opts = check_launcher(spec.launcher, spec.launcher_opts)
    if spec.launcher == "submitit" and not isolate:
        raise DiffnasError("--in-process does not go with --launcher submitit (every run is its "
                           "own job); drop one of them")
    if spec.launcher == "submitit":
        from .cluster import resolve_cluster

        resolve_cluster(spec.launcher_opts)  # submitit installed, Slurm there if asked for
    elif spec.jobs > 1 and not isolate:
        raise DiffnasError("several runs at once (jobs > 1) need a process per run; "
                           "drop --in-process or use --jobs 1")
    cells = plan(spec, out)
    if spec.retrain:
        from .train import TrainConfig  # noqa: F401 - fail early if retraining is unavailable
    for cell in cells:
        _check_config(cell.run_dir, cell.cfg, SearchConfig)
    check_runs(cells)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "experiment.json", json.dumps(spec.to_dict(), indent=2) + "\n")
    log = RunFolder(out)
    threads = run_threads(spec)
    log.log(f"experiment: {len(cells)} runs ({len(spec.methods)} methods × {len(spec.seeds)} "
            f"seeds × {len(cells) // (len(spec.methods) * len(spec.seeds))} settings), "
            f"{spec.jobs} at once, {threads} threads each")
    heads = [f"[{n}/{len(cells)}] {c.setting} {c.method} seed {c.seed}"
             for n, c in enumerate(cells, 1)]
    progress = progress and spec.jobs == 1  # bars of parallel runs would overwrite each other
    if spec.launcher == "submitit":  # a job per run; this process waits for them
        from .cluster import run_jobs

        run_jobs(spec, cells, heads, out, echo, log)
    elif spec.jobs == 1:
        for cell, head in zip(cells, heads, strict=True):
            _run_cell(spec, cell, head, isolate, progress, echo, log, threads)
    else:
        from concurrent.futures import ThreadPoolExecutor

        # each worker thread only waits on its run's process; the runs compute in parallel
        pool = ThreadPoolExecutor(max_workers=spec.jobs)
        try:
            futures = [pool.submit(_run_cell, spec, cell, head, isolate, progress, echo, log,
                                   threads) for cell, head in zip(cells, heads, strict=True)]
            for f in futures:
                f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return report(out, cells, plot=plot, spec=spec)


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


def decision(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How decided a search ended: ``stable_epochs``, the last epochs over which the derived
    cell stayed the same (1: it changed in the last epoch), and ``alpha_std_growth``, the
    final α-std over the α-std after the first epoch."""
    if not history:
        return {}
    cells = [rec.get("genotype_str") for rec in history]
    stable = next((n for n in range(1, len(cells)) if cells[-1 - n] != cells[-1]), len(cells))
    first, last = history[0].get("alpha_std"), history[-1].get("alpha_std")
    growth = last / first if first and last is not None else None
    return {"stable_epochs": stable, "alpha_std_growth": growth}


def collect_run(cell: Cell, table: Any = None) -> dict[str, Any]:
    """One results row for a cell's run folder (``status`` tells whether it finished)."""
    from ..spaces import genotype_from_dict
    from ..spaces.nb201 import connected, none_count

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
        # collapse to `none` (issue 12): the result's none edges, and whether it computes
        "none_count": none_count(genotype), "connected_pct": 100.0 * connected(genotype),
        "alpha_std": last.get("alpha_std"), **decision(history),
        "search_time_min": result.get("search_time_s", 0.0) / 60.0,
        "peak_mem_gib": result.get("peak_mem_gib"), "table_acc_curve": curve,
    })
    retrain = run.path / "retrain" / "result.json"
    if retrain.exists():  # final-epoch and best-epoch test accuracy (top-5 beyond 10 classes)
        res = json.loads(retrain.read_text())
        for key, name in RETRAIN_KEYS.items():
            if res.get(name) is not None:
                row[key] = 100.0 * float(res[name])
    return row


#: summary column -> the ``diffnas train`` result.json field it shows (as %)
RETRAIN_KEYS = {"retrain_acc": "test_acc", "retrain_best_acc": "best_test_acc",
                "retrain_top5": "test_top5", "retrain_best_top5": "best_test_top5"}


# ----------------------------------------------------------------------------- aggregation
METRICS: tuple[tuple[str, str, int], ...] = (
    ("search_acc", "Search val acc (%)", 2),
    ("table_acc", "NB201 table acc (%)", 2),
    ("params_m", "Params (M)", 3),
    ("skip_count", "Skips", 1),
    ("none_count", "None edges", 1),
    ("connected_pct", "Connected (% of runs)", 0),
    ("alpha_std", "α-std", 3),
    ("alpha_std_growth", "α-std ÷ epoch 1", 1),
    ("stable_epochs", "Cell stable (epochs)", 1),
    ("search_time_min", "Search time (min)", 1),
    ("peak_mem_gib", "Peak mem (GiB)", 2),
    ("retrain_acc", "Retrained acc, final epoch (%)", 2),
    ("retrain_best_acc", "Retrained acc, best epoch (%)", 2),
    ("retrain_top5", "Retrained top-5, final (%)", 2),
    ("retrain_best_top5", "Retrained top-5, best (%)", 2),
)


@dataclass(frozen=True)
class Published:
    """A method's published NAS-Bench-201 CIFAR-10 test accuracy (%, mean ± std over its
    paper's searches), where it is printed and how the search ran."""

    paper_name: str
    mean: float
    std: float | None
    source: str
    protocol: str = "searched on CIFAR-10"
    std_digits: int = 2   # as printed in the source

    def text(self) -> str:
        std = "" if self.std is None else f" ± {self.std:.{self.std_digits}f}"
        return f"{self.mean:.2f}{std}"


#: Published NAS-Bench-201 CIFAR-10 test accuracies of the methods, by method name (a method
#: spec with options or config changes is another protocol and shows "—"). Each value was
#: looked up in the source named, except where the source says it could not be.
PUBLISHED: dict[str, Published] = {
    "darts": Published("DARTS-V1 (first order)", 54.30, 0.00,
                       "NAS-Bench-201 paper (Dong & Yang, ICLR 2020) Table 5; the DrNAS README's "
                       "NAS-Bench-201 table prints the same 54.30 ± 0.00"),
    "gdas": Published("GDAS", 93.61, 0.09,
                      "NAS-Bench-201 paper (Dong & Yang, ICLR 2020) Table 5 (not found in a "
                      "source the search tools reach; quoted from issue 11)"),
    "snas": Published("SNAS", 92.77, 0.83,
                      "DrNAS' re-run (Chen et al., ICLR 2021; README of xiangning-chen/DrNAS)"),
    "pcdarts": Published("PC-DARTS", 93.41, 0.30,
                         "DrNAS' re-run (Chen et al., ICLR 2021; README of xiangning-chen/DrNAS)"),
    "drnas": Published("DrNAS", 94.36, 0.00,
                       "DrNAS (Chen et al., ICLR 2021; README of xiangning-chen/DrNAS)"),
    "betadarts": Published("β-DARTS", 94.36, 0.00,
                           "β-DARTS (Ye et al., CVPR 2022) Table 1 (its Papers with Code entry "
                           "lists 94.36; the repository README prints no table)"),
    "dartsminus": Published("DARTS-", 93.80, None,
                            "DARTS- (Chu et al., ICLR 2021) NAS-Bench-201 table (its Papers with "
                            "Code entry lists 93.80; the std is not given there)"),
    "semantic": Published("Semantic-DARTS", 94.30, 0.13,
                          "Semantic-DARTS (Guo et al., IEEE IoT J. 2025) Table III (not found "
                          "in a source the search tools reach: the reference repository prints "
                          "no results; quoted from issue 11)",
                          "searched on CIFAR-10 without labels (masked-image modelling)"),
    "cdarts": Published("CDARTS", 94.02, 0.31,
                        "CDARTS (Yu et al., TPAMI 2023) Table 2; the Cream README's NATS-Bench "
                        "cells score 94.37, 94.09, 93.62 (mean 94.03, population std 0.31)"),
    "stc": Published("STC-NAS", 93.41, 0.2,
                     "STC-NAS (Neurocomputing 2022) Table 6 (not found in a source the search "
                     "tools reach: no public code; quoted from issue 11)", std_digits=1),
}
#: The best CIFAR-10 test accuracy in NAS-Bench-201's own table (DrNAS README, "optimal").
NB201_OPTIMUM = 94.37
PUBLISHED_TITLE = "Published C10 (%)"


def published_refs(summary: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Footnote numbers of the published column: the methods with a published number, in the
    order they first appear in the settings whose table shows a table accuracy."""
    settings = {e["setting"] for e in summary if "table_acc" in e}
    refs: dict[str, int] = {}
    for e in summary:
        if e["setting"] in settings and e["method"] in PUBLISHED and e["method"] not in refs:
            refs[e["method"]] = len(refs) + 1
    return refs


def published_cell(method: str, refs: dict[str, int]) -> str:
    """The published column's text for a method label: value and footnote mark, or "—"."""
    return f"{PUBLISHED[method].text()} [{refs[method]}]" if method in refs else "—"


def published_notes(refs: dict[str, int], table_best: float | None = None) -> list[str]:
    """Footnotes of the published column (empty when no method shown has a number)."""
    if not refs:
        return []
    best = "" if table_best is None else f"; the best cell of the table used here scores " \
                                            f"{table_best:.2f}"
    out = [f"{PUBLISHED_TITLE}: the paper's NAS-Bench-201 CIFAR-10 test accuracy, scored with "
           f"NAS-Bench-201's own table (optimum {NB201_OPTIMUM:.2f}{best}) after the paper's "
           "full-size search — another search protocol than the runs above; read it as the "
           "reference point, not as a number these runs should reach."]
    for m, n in refs.items():
        p = PUBLISHED[m]
        out.append(f"[{n}] {p.paper_name}: {p.text()}, {p.protocol}; {p.source}.")
    return out


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


def _cell(v: dict[str, Any] | None, digits: int) -> str:
    if v is None:
        return "—"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if v["n"] > 1 \
        else f"{v['mean']:.{digits}f}"


def markdown_table(summary: Sequence[dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """Mean ± std per method, one Markdown table per setting; columns with no values are left
    out, and beside a measured NAS-Bench-201 table accuracy stands the method's published one
    (:data:`PUBLISHED`). ``notes``: a line under each setting's heading."""
    lines: list[str] = []
    refs = published_refs(summary)
    for setting in dict.fromkeys(s["setting"] for s in summary):
        entries = [s for s in summary if s["setting"] == setting]
        cols = [(k, title, d) for k, title, d in METRICS if any(k in e for e in entries)]
        lines += [f"**{setting}**" + (f" — {notes[setting]}" if notes and setting in notes
                                      else ""), ""]
        heads = [t for _, t, _ in cols]
        rows = [[_cell(e.get(key), d) for key, _, d in cols] for e in entries]
        keys = [k for k, _, _ in cols]
        if "table_acc" in keys:  # the published number beside the measured table accuracy
            at = keys.index("table_acc") + 1
            heads.insert(at, PUBLISHED_TITLE)
            for e, row in zip(entries, rows, strict=True):
                row.insert(at, published_cell(e["method"], refs))
        lines.append("| Method | Runs | " + " | ".join(heads) + " |")
        lines.append("|---|---|" + "---|" * len(heads))
        for e, row in zip(entries, rows, strict=True):
            runs = f"{e['finished']}/{e['runs']}"
            lines.append(f"| {e['method']} | {runs} | " + " | ".join(row) + " |")
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


def report(out: str | Path, cells: Sequence[Cell], plot: bool = True,
           spec: ExperimentSpec | None = None) -> dict[str, Any]:
    """Collect the runs of ``cells`` and write results.{csv,json}, summary.{json,md}, plots;
    ``spec`` (the grid) adds how the runs were scheduled to the summary."""
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
    if any("stable_epochs" in e for e in summary):
        foot.append("α-std: Σ over edges of the std of the edge's op weights after the last "
                    "epoch; α-std ÷ epoch 1: that over its value after the first epoch; Cell "
                    "stable: the last epochs over which the derived cell stayed the same (1: it "
                    "changed in the last epoch). Both say how decided a search ended.")
    if any("retrain_best_acc" in e for e in summary):
        foot.append("Retrained acc: test accuracy of the retrained genotype after the last "
                    "epoch (final) and the best over its evaluated epochs (best, what the "
                    "reference codes log and most DARTS papers report).")
    if table_note:
        foot.append(f"NB201 table acc: {table_note}; it is CIFAR-10 accuracy of the derived "
                    "cell, whatever data the search ran on (a transfer protocol unless that was "
                    "CIFAR-10).")
    if table is not None:
        import numpy as np

        best = float(np.nanmax(np.asarray(table.accuracies, dtype=float)))
        foot += published_notes(published_refs(summary), best)
    if spec is not None and spec.launcher == "submitit":
        from .cluster import describe

        foot.append(describe(spec, out))
    elif spec is not None:
        foot.append(f"Runs: {spec.jobs} at once (--jobs {spec.jobs}), {run_threads(spec)} "
                    f"torch thread(s) each, device {spec.device}.")
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
