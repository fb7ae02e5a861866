"""Commands ``diffnas bench`` (NAS-Bench-201 table lookups and black-box baselines),
``diffnas experiment`` (method × seed grids with summary tables) and ``diffnas rank``
(ranking correlation of a trained NAS-Bench-201 supernet)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import DiffnasError


def _kv_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    from ..engine.experiment import json_or_text
    from . import _kv

    return {k: json_or_text(v) for k, v in _kv(items, flag).items()}


def _table(args: argparse.Namespace) -> Any:
    from ..bench.nb201_table import cached_table

    return cached_table(args.table)


# ------------------------------------------------------------------------------------ bench
def cmd_query(args: argparse.Namespace) -> int:
    from ..bench.nb201_table import as_genotype

    genotype = as_genotype(args.arch)  # bad input fails before the (slow) table load
    t0 = time.perf_counter()
    table = _table(args)
    t1 = time.perf_counter()
    entry = table.query(genotype)
    t2 = time.perf_counter()
    if args.json:
        print(json.dumps(entry))
    else:
        print(f"{entry['arch']}  (cell {entry['index']} of 15625)")
        print(f"table: {table.source} — accuracies are on {table.dataset}, whatever data a "
              "search ran on")
        width = max(len(k) for k in entry["values"])
        for k, v in entry["values"].items():
            mark = " *" if k == table.primary else "  "
            val = "—" if v is None else f"{v:.4f}"
            print(f"{mark}{k:<{width}}  {val:>9}  {table.descriptions.get(k, '')}")
        print(f"(* the accuracy diffnas reports: {table.primary})")
    if args.timing:
        print(f"load {1e3 * (t1 - t0):.1f} ms, query {1e3 * (t2 - t1):.3f} ms", file=sys.stderr)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from ..bench.baselines import run_baseline
    from ..engine.experiment import mean_std

    table = _table(args)
    opts = {}
    if args.baseline == "evolution":
        opts = {"population": args.population, "sample_size": args.sample_size}
    if args.repeat < 1:
        raise DiffnasError(f"--repeat must be at least 1, got {args.repeat}")
    results = [run_baseline(args.baseline, table, args.budget, args.seed + r, **opts)
               for r in range(args.repeat)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results]))
        return 0
    for r in results:
        print(f"{r.method} seed {r.seed}: best {r.best_acc:.2f}% after {len(r.queried)} queries "
              f"— {r.best_arch}")
    if len(results) > 1:
        m, s = mean_std([r.best_acc for r in results])
        print(f"{args.baseline}: {m:.2f} ± {s:.2f}% over {len(results)} seeds "
              f"(budget {args.budget})")
    print(f"accuracies: {table.primary} on {table.dataset} ({table.source})")
    return 0


# ------------------------------------------------------------------------------ experiment
def cmd_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.experiment import ExperimentSpec, load_spec, plan, report, run_experiment
    from . import _kv

    grid_args = (args.methods, args.seeds, args.presets, args.spaces, args.datasets, args.set,
                 args.retrain, args.retrain_set)
    saved = (Path(args.out) / "experiment.json").exists()
    if args.report_only or (saved and all(a is None for a in grid_args)):
        spec = load_spec(args.out)  # `diffnas experiment --out DIR` resumes the saved grid
        if args.report_only:
            res = report(args.out, plan(spec, args.out), spec=spec)
            print(res["markdown"])
            return 0
        spec.device = args.device or spec.device
        spec.threads = args.threads or spec.threads
        spec.jobs = args.jobs or spec.jobs
        if args.launcher and args.launcher != spec.launcher:
            spec.launcher_opts = {}  # the saved options were the other launcher's
        spec.launcher = args.launcher or spec.launcher
        spec.launcher_opts = {**spec.launcher_opts,
                              **_kv(args.launcher_opt, "--launcher-opt")}
    else:
        spec = ExperimentSpec(
            methods=args.methods or ["darts"], seeds=args.seeds or [0, 1, 2],
            presets=args.presets or ["nb201-cpu"], spaces=args.spaces or [None],
            datasets=args.datasets or [None], overrides=_kv_values(args.set, "--set"),
            retrain=args.retrain, retrain_overrides=_kv_values(args.retrain_set, "--retrain-set"),
            device=args.device or "auto", threads=args.threads, jobs=args.jobs or 1,
            launcher=args.launcher or "machine",
            launcher_opts=_kv(args.launcher_opt, "--launcher-opt"))
    res = run_experiment(spec, args.out, isolate=not args.in_process,
                         progress=not args.no_progress)
    print()
    print(res["markdown"])
    print(f"results: {args.out}/results.csv, results.json, summary.md"
          + (f"; plots: {', '.join(res['plots'])}" if res["plots"] else ""))
    failed = [r for r in res["rows"] if r.get("status") != "done"]
    return 1 if failed else 0


# ------------------------------------------------------------------------------------- rank
def cmd_rank(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench.ranking import rank_supernet
    from ..engine.runfolder import atomic_write_text

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    reference: Any = args.reference
    if reference == "table":
        reference = _table(args)
    res = rank_supernet(args.run_dir, samples=args.samples, seed=args.seed, reference=reference,
                        max_eval=args.max_eval, calib_batches=args.calib_batches,
                        include_disconnected=args.include_disconnected, device=args.device)
    out = Path(args.out) if args.out else Path(args.run_dir) / "ranking.json"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['samples']} architectures sampled (seed {res['seed']}) from {res['run_dir']}; "
          f"supernet evaluated on {res['eval_images']} held-out {res['search_data']} images")
    print(f"reference: {res['reference']}")
    for score in ("supernet_acc", "alpha_strength"):
        print(f"  {score:<15} Kendall τ {res['kendall_tau'][score]:+.3f}   "
              f"Spearman ρ {res['spearman_rho'][score]:+.3f}")
    print(f"per-architecture scores: {out}")
    return 0


# --------------------------------------------------------------------------------- parsers
def register(sub: Any) -> None:
    """Add ``bench``, ``experiment`` and ``rank`` to the ``diffnas`` command line."""
    bench = sub.add_parser("bench", help="NAS-Bench-201 table lookups and black-box baselines")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    table_help = ("benchmark file: analog-nasbench data.anb, NAS-Bench-201 .pth or NATS-Bench "
                  ".pickle.pbz2 (default: $DIFFNAS_NB201_TABLE or the installed analog-nasbench)")

    p = bsub.add_parser("query", help="print a cell's table entries (CIFAR-10 accuracies)")
    p.add_argument("arch", help="NAS-Bench-201 string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|, "
                                "genotype JSON or a run folder")
    p.add_argument("--table", help=table_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timing", action="store_true", help="print load and query times (stderr)")
    p.set_defaults(func=cmd_query)

    for name, desc in (("random", "random search over the table"),
                       ("evolution", "regularised evolution (Real et al. 2019) over the table")):
        p = bsub.add_parser(name, help=desc)
        p.add_argument("--budget", type=int, default=100, help="table queries (default 100)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--repeat", type=int, default=1,
                       help="run seeds seed..seed+R-1 and report mean ± std")
        if name == "evolution":
            p.add_argument("--population", type=int, default=10)
            p.add_argument("--sample-size", type=int, default=3, help="tournament size")
        p.add_argument("--table", help=table_help)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_baseline, baseline=name)

    p = sub.add_parser("experiment", help="run a grid of methods × seeds × settings (resumable) "
                                          "and write mean ± std tables")
    p.add_argument("--out", required=True, help="experiment folder (re-run to resume)")
    p.add_argument("--methods", nargs="+",
                   help="NAME[:key=value,...] each, e.g. darts darts:order=2 (default darts)")
    p.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2")
    p.add_argument("--presets", nargs="+", help="search presets (default nb201-cpu)")
    p.add_argument("--spaces", nargs="+", help="override the presets' search space")
    p.add_argument("--datasets", nargs="+", help="override the presets' dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="search config override for every run, e.g. --set epochs=4")
    p.add_argument("--retrain", metavar="TRAIN_PRESET",
                   help="also retrain each found cell with this train preset (e.g. cpu)")
    p.add_argument("--retrain-set", action="append", metavar="KEY=VALUE",
                   help="retraining config override, e.g. --retrain-set epochs=2")
    p.add_argument("--device", help="cpu, cuda[:N] or auto")
    p.add_argument("--threads", type=int,
                   help="torch threads per run (1 is fastest on a CPU shared with others)")
    p.add_argument("--jobs", type=int,
                   help="runs at once, each its own process (default 1); with --threads T "
                        "the grid uses jobs × T cores (default T: cores / jobs)")
    p.add_argument("--in-process", action="store_true",
                   help="run searches in this process (faster start; shared peak memory)")
    p.add_argument("--launcher", choices=("machine", "submitit"),
                   help="machine (default): the runs on this machine, --jobs at once; "
                        "submitit: every run its own submitit job — Slurm when its srun is on "
                        "PATH, else submitit's LocalExecutor on this machine — with OUT on "
                        "storage every node sees; this process waits and then writes the "
                        "summary (needs pip install 'diffnas[cluster]')")
    from ..engine.cluster import options_help

    p.add_argument("--launcher-opt", action="append", metavar="KEY=VALUE",
                   help=f"submitit job option, repeatable: {options_help()}")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild the results and tables from the run folders")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("rank", help="Kendall τ / Spearman ρ of a NAS-Bench-201 supernet's "
                                    "architecture ranking against the table")
    p.add_argument("run_dir", help="a NAS-Bench-201-space search run folder")
    p.add_argument("--samples", type=int, default=50, help="architectures to sample (K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default="table",
                   help="'table' or a JSON file {architecture: accuracy} (e.g. retrained)")
    p.add_argument("--table", help=table_help)
    p.add_argument("--max-eval", type=int, default=2000, help="held-out images per evaluation")
    p.add_argument("--calib-batches", type=int, default=4,
                   help="training batches to re-estimate BN statistics per architecture")
    p.add_argument("--include-disconnected", action="store_true",
                   help="also sample cells with no input→output path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--out", help="JSON file for the scores (default RUN_DIR/ranking.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rank)
