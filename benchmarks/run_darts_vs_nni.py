#!/usr/bin/env python3
"""DARTS search iteration: diffnas vs Microsoft NNI 3.0, same machine and config.

Runs, one after the other and each in a fresh process (never two at once: the
standard config needs ~10 GB per process and all the cores), for every config:

  (a) ``.venv/bin/diffnas profile --method darts --space darts ... --device cpu --json``
      first order, then with ``--order 2``;
  (b) ``bench-venvs/nni/bin/python benchmarks/nni_darts.py ...`` (NNI 3.0's
      DARTS strategy, first order; NNI 3.0 has no second order, the script
      reports that).

Each run prints one JSON line; the runner merges them into
``benchmarks/results/darts_vs_nni.json`` (keyed by config/impl/order, so a run
of one config keeps the others) and regenerates the section
"## DARTS search iteration vs NNI 3.0" of ``BENCHMARKS.md`` from that file.

Python standard library only; run it with the repo's main venv or any python3:

    .venv/bin/python benchmarks/run_darts_vs_nni.py --configs small
    .venv/bin/python benchmarks/run_darts_vs_nni.py --configs small,standard --iters 3
    .venv/bin/python benchmarks/run_darts_vs_nni.py --skip-nni

Set up the NNI venv first with ``bash benchmarks/setup_nni_venv.sh``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import subprocess
import sys
from pathlib import Path

from common import REPO, fmt, machine, ratio, run_json, write_section

SECTION = "## DARTS search iteration vs NNI 3.0"

# name -> (config, default timed iters, default warm-up iters)
CONFIGS: dict[str, dict] = {
    "small": {
        "config": {"channels": 8, "layers": 5, "batch_size": 32, "input_size": 28,
                   "in_channels": 1, "num_classes": 10},
        "iters": 5, "warmup": 2,
    },
    "standard": {
        "config": {"channels": 16, "layers": 8, "batch_size": 64, "input_size": 32,
                   "in_channels": 3, "num_classes": 10},
        "iters": 3, "warmup": 1,
    },
}


# --------------------------------------------------------------------------- #
# machine / environment
# --------------------------------------------------------------------------- #
def python_version_of(python: Path, code: str) -> str | None:
    try:
        out = subprocess.run([str(python), "-W", "ignore", "-c", code], capture_output=True,
                             text=True, timeout=300, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# --------------------------------------------------------------------------- #
# running one benchmark process
# --------------------------------------------------------------------------- #
def config_flags(cfg: dict) -> list[str]:
    return ["--channels", str(cfg["channels"]), "--layers", str(cfg["layers"]),
            "--batch-size", str(cfg["batch_size"]), "--input-size", str(cfg["input_size"]),
            "--in-channels", str(cfg["in_channels"])]


def diffnas_cmd(diffnas: Path, cfg: dict, iters: int, warmup: int, order: int) -> list[str]:
    cmd = [str(diffnas), "profile", "--method", "darts", "--space", "darts",
           *config_flags(cfg), "--num-classes", str(cfg["num_classes"]),
           "--iters", str(iters), "--warmup", str(warmup), "--device", "cpu", "--json"]
    if order == 2:
        cmd += ["--order", "2"]
    return cmd


def nni_cmd(python: Path, cfg: dict, iters: int, warmup: int, order: int,
            threads: int | None) -> list[str]:
    cmd = [str(python), str(REPO / "benchmarks" / "nni_darts.py"), *config_flags(cfg),
           "--num-classes", str(cfg["num_classes"]), "--iters", str(iters),
           "--warmup", str(warmup)]
    if order == 2:
        cmd.append("--second-order")
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


# --------------------------------------------------------------------------- #
# results file + markdown
# --------------------------------------------------------------------------- #
def run_key(r: dict) -> str:
    return f"{r['config_name']}/{r['impl']}/order{r['order']}"


def load_results(path: Path) -> dict:
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("runs"), list):
                return data
        except (OSError, json.JSONDecodeError):
            pass
    return {"runs": []}


def render_section(data: dict) -> str:
    runs = {run_key(r): r for r in data["runs"]}
    m = data.get("machine", {})
    env = data.get("env", {})
    lines = [SECTION, ""]
    lines.append(
        "Time of one DARTS search iteration (architecture step on a val batch + weight "
        "step on a train batch) and peak resident memory of the whole process, diffnas "
        "vs [NNI](https://github.com/microsoft/nni) 3.0's `nni.nas.strategy.DARTS` on the "
        "same DARTS supernet (8 candidates incl. `none`, 14 edges/cell, reductions at "
        "L/3 and 2L/3), synthetic data, CPU. Each number comes from its "
        "own fresh process, run one at a time. Median over the timed iterations after "
        "warm-up. Generated by `benchmarks/run_darts_vs_nni.py` (see `benchmarks/README.md`); "
        "raw data in `benchmarks/results/darts_vs_nni.json`."
    )
    lines.append("")
    lines.append(f"- Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs, "
                 f"{m.get('mem_gib', '?')} GiB RAM, {m.get('os', '')}")
    lines.append(f"- diffnas: torch {env.get('diffnas_torch') or '?'} (`.venv`); "
                 f"NNI {env.get('nni_version', '?')}: torch {env.get('nni_torch', '?')}, "
                 f"pytorch-lightning {env.get('nni_lightning', '?')} (`bench-venvs/nni`)")
    lines.append(f"- Last updated: {data.get('updated', '?')}")
    lines.append("")
    lines.append("| config | C | L | batch | input | order | diffnas s/iter | NNI s/iter "
                 "| NNI/diffnas time | diffnas peak GiB | NNI peak GiB | NNI/diffnas mem "
                 "| iters (diffnas/NNI) | threads (diffnas/NNI) | date |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes: list[str] = []
    names = [n for n in CONFIGS] + sorted({r["config_name"] for r in data["runs"]} - set(CONFIGS))
    for name in names:
        for order in (1, 2):
            d = runs.get(f"{name}/diffnas/order{order}")
            n = runs.get(f"{name}/nni-3.0/order{order}")
            if d is None and n is None:
                continue
            cfg = CONFIGS.get(name, {}).get("config") or (d or n).get("config") or {}
            d_ok = d is not None and "error" not in d
            n_ok = n is not None and "error" not in n
            d_t = d.get("median_s") if d_ok else None
            n_t = n.get("median_s") if n_ok else None
            d_m = d.get("peak_rss_gib") if d_ok else None
            n_m = n.get("peak_rss_gib") if n_ok else None
            n_t_s = fmt(n_t)
            if n_ok and n.get("supported") is False:
                n_t_s = "n/a (not in NNI 3.0)"
                n_m = None
            elif n is not None and not n_ok:
                n_t_s = "failed"
                notes.append(f"NNI {name} order {order}: {n.get('error')}")
            elif n is None:
                n_t_s = "not run"
            d_t_s = fmt(d_t) if d_ok else ("failed" if d is not None else "not run")
            if d is not None and not d_ok:
                notes.append(f"diffnas {name} order {order}: {d.get('error')}")
            dates = sorted({r.get("date", "")[:10] for r in (d, n) if r is not None} - {""})
            its = f"{d.get('iters', '—') if d_ok else '—'}/" \
                  f"{n.get('iters', '—') if n_ok and n.get('supported', True) else '—'}"
            thr = f"{d.get('torch_threads', d.get('threads', '?')) if d_ok else '—'}/" \
                  f"{n.get('torch_threads', '?') if n_ok else '—'}"
            shape = f"{cfg.get('input_size', '?')}²×{cfg.get('in_channels', '?')}"
            lines.append(
                f"| {name} | {cfg.get('channels', '?')} | {cfg.get('layers', '?')} "
                f"| {cfg.get('batch_size', '?')} | {shape} | {order} | {d_t_s} | {n_t_s} "
                f"| {ratio(n_t, d_t)} | {fmt(d_m)} | {fmt(n_m)} | {ratio(n_m, d_m)} "
                f"| {its} | {thr} | {', '.join(dates) or '—'} |")
            for r, who in ((d, "diffnas"), (n, "NNI")):
                if r is None or "error" in r:
                    continue
                cu = r.get("cpu_util")
                lb = r.get("loadavg_before")
                if isinstance(cu, (int, float)) and cu < 1.5 and r.get("median_s") is not None:
                    notes.append(f"{who} {name} order {order}: process got only {cu:.2f} "
                                 f"CPU-s per s over the timed iterations (load avg before "
                                 f"{lb}) — the cores were probably shared; timing suspect.")
                ts = [t for t in (r.get("times_s") or []) if isinstance(t, (int, float)) and t > 0]
                if len(ts) >= 2 and max(ts) / min(ts) > 1.5:
                    notes.append(f"{who} {name} order {order}: timed iterations ranged "
                                 f"{min(ts):.2f}–{max(ts):.2f} s — probably disturbed by "
                                 f"other load; re-run on an idle machine.")
    lines.append("")
    lines.append("NNI 3.0 implements first-order DARTS only (its `DARTS` strategy docstring: "
                 "\"Second order (unrolled 2nd-order derivatives) is not supported yet\"). "
                 "NNI's supernet stacks the 7 op outputs plus a zeros tensor for `none` per "
                 "edge and uses affine BatchNorm; its per-step time includes Lightning's "
                 "hooks and metric logging, as for any NNI user.")
    targets = []
    for name in names:
        one = runs.get(f"{name}/diffnas/order1", {})
        two = runs.get(f"{name}/diffnas/order2", {})
        nni = runs.get(f"{name}/nni-3.0/order1", {})
        t1, t2, tn = (r.get("median_s") for r in (one, two, nni))
        if t1 is not None and (t2 is not None or tn is not None):
            targets.append(f"{name}: NNI/diffnas first order {ratio(tn, t1)} (target ≥ 2×), "
                           f"second/first order {ratio(t2, t1)} (target ≤ 2.8×), first-order "
                           f"peak {fmt(one.get('peak_rss_gib'))} GiB")
    if targets:
        lines.append("")
        lines.append("Targets (issue 2; peak ≤ 9 GiB applies to the standard config):")
        lines.extend(f"- {x}" for x in targets)
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {x}" for x in notes)
    lines.append("")
    return "\n".join(lines)


def run_one(cmd: list[str], timeout: float, label: str) -> dict:
    """One measurement in its own process, logged to stderr."""
    print(f"[run] {label}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rec = run_json(cmd, timeout, key="median_s")
    if "error" in rec:
        print(f"[run] {label} FAILED ({rec['error']}); stderr tail:\n"
              f"{rec.get('stderr_tail', '')}", file=sys.stderr, flush=True)
    else:
        print(f"[run] {label}: median {rec['median_s']} s/iter, peak {rec.get('peak_rss_gib')} "
              f"GiB (process {rec['process_s']} s)", file=sys.stderr, flush=True)
    return rec


# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="small,standard",
                   help=f"comma-separated, from {','.join(CONFIGS)} (default: all)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per run (default: small 5, standard 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up iterations (default: small 2, standard 1)")
    p.add_argument("--skip-nni", action="store_true", help="run only the diffnas half")
    p.add_argument("--skip-diffnas", action="store_true", help="run only the NNI half")
    p.add_argument("--orders", default="1,2", help="DARTS orders to run (default 1,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="pass --threads to the NNI script (default: its own, 2)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per process")
    p.add_argument("--diffnas", default=str(REPO / ".venv" / "bin" / "diffnas"))
    p.add_argument("--nni-python", default=str(REPO / "bench-venvs" / "nni" / "bin" / "python"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "darts_vs_nni.json"))
    p.add_argument("--markdown", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--no-markdown", action="store_true", help="only write the JSON")
    args = p.parse_args(argv)

    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    orders = sorted({int(o) for o in args.orders.split(",") if o.strip()})
    if not set(orders) <= {1, 2}:
        p.error("--orders must be from 1,2")

    diffnas = Path(args.diffnas)
    nni_python = Path(args.nni_python)
    if not args.skip_nni and not nni_python.exists():
        print(f"NNI venv missing ({nni_python}); run: bash benchmarks/setup_nni_venv.sh",
              file=sys.stderr)
        return 2
    if not args.skip_diffnas and not diffnas.exists():
        print(f"diffnas entry point missing ({diffnas}); install the repo into .venv",
              file=sys.stderr)
        return 2

    results_path = Path(args.results)
    data = load_results(results_path)
    data["machine"] = machine()
    env = dict(data.get("env", {}))
    main_python = diffnas.parent / "python"
    if not args.skip_diffnas:
        env["diffnas_torch"] = python_version_of(
            main_python, "import torch; print(torch.__version__)") or env.get("diffnas_torch")
    if not args.skip_nni:
        v = python_version_of(
            nni_python, "import nni, torch, pytorch_lightning as pl; "
                        "print(nni.__version__, torch.__version__, pl.__version__)")
        if v:
            env["nni_version"], env["nni_torch"], env["nni_lightning"] = v.split()
    data["env"] = env

    by_key = {run_key(r): r for r in data["runs"]}
    failures = 0
    for name in names:
        spec = CONFIGS[name]
        cfg = spec["config"]
        iters = args.iters or spec["iters"]
        warmup = spec["warmup"] if args.warmup is None else args.warmup
        jobs: list[tuple[str, int, list[str]]] = []
        if not args.skip_diffnas:
            for order in orders:
                jobs.append(("diffnas", order, diffnas_cmd(diffnas, cfg, iters, warmup, order)))
        if not args.skip_nni:
            for order in orders:
                jobs.append(("nni-3.0", order,
                             nni_cmd(nni_python, cfg, iters, warmup, order, args.threads)))
        for impl, order, cmd in jobs:  # strictly one process at a time
            rec = run_one(cmd, args.timeout, f"{name} {impl} order {order}")
            rec.update({"config_name": name, "impl": impl, "order": order,
                        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})
            if rec.get("config") not in (None, cfg):
                rec["reported_config"] = rec["config"]
            rec["config"] = cfg  # the runner's config is the authoritative one
            if "error" in rec:
                failures += 1
            by_key[run_key(rec)] = rec
            data["runs"] = sorted(by_key.values(), key=run_key)
            data["updated"] = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
            # write after every run, so an interrupted sweep keeps what it measured
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(data, indent=2) + "\n")
            if not args.no_markdown:
                write_section(Path(args.markdown), SECTION, render_section(data))

    if not args.no_markdown:  # also re-renders when nothing ran (--skip-nni --skip-diffnas)
        write_section(Path(args.markdown), SECTION, render_section(data))
    print(f"[run] results: {results_path}" +
          ("" if args.no_markdown else f", table: {args.markdown}"), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
