#!/usr/bin/env python3
"""STC-NAS vs first-order DARTS, and STC-NAS at target depth vs the fixed target network.

Two comparisons (issue 5's targets), every measurement in its own fresh process, one at a
time, the variants alternating (A B, B A, A B, ...) so that a change in the machine's load
hits both alike:

1. ``supernet``: ``diffnas profile --json`` of ``--method darts`` (first order) and
   ``--method stc`` at the same config and batch (default: DARTS space, 8 cells, 16 channels,
   batch 64, 32×32×3): median s/iteration, peak RSS, FLOPs per iteration. A third process
   per repeat builds the same search and stops before the first step (``--child baseline``):
   its peak RSS (interpreter, libraries, model, optimisers) is subtracted to give the memory
   of the iteration itself.
2. ``target``: an STC iteration at the target depth (20 cells, 36 channels; ``--child stc``:
   noise 0 and α pinned well apart, so every step runs the same genotype) vs one SGD
   training step (forward, backward, clip, step; no auxiliary head, no drop-path) of the
   fixed network of that genotype, built by ``diffnas.nets.build_network`` (``--child
   fixed``).

Each process runs with ``--threads`` OpenMP/MKL threads (default 1: on a shared machine,
spinning OpenMP threads make multi-threaded timings erratic). After every process the runner
rewrites ``benchmarks/results/stc_vs_darts.json`` (a part that is not run keeps its old
results) and the section ``## STC-NAS vs DARTS`` of ``BENCHMARKS.md`` (only that section)::

    .venv/bin/python benchmarks/stc_vs_darts.py                      # both, 3 repeats
    .venv/bin/python benchmarks/stc_vs_darts.py --parts supernet --batch-size 32
    .venv/bin/python benchmarks/stc_vs_darts.py --parts target --batch-size 16 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import REPO, fmt, load_range, machine, med, ratio, run_json, write_section

SECTION = "## STC-NAS vs DARTS"
PY = sys.executable


# --------------------------------------------------------------------------- child processes
def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(kind: str, a: argparse.Namespace) -> dict:
    """``baseline``: build the search and stop; ``stc``: time STC iterations on a pinned
    genotype; ``fixed``: time SGD steps of the fixed network of that genotype."""
    import torch

    from diffnas.config import resolve_config
    from diffnas.engine.profile import count_flops
    from diffnas.engine.search import build_search
    from diffnas.methods.stc import subcell
    from diffnas.nets import build_network

    cfg = resolve_config(None, method=a.method, channels=a.channels, layers=a.layers,
                         batch_size=a.batch_size, device="cpu",
                         method_args={"noise": 0.0} if a.method == "stc" else {})
    net, objective, method = build_search(cfg, 3, a.input_size, 10, 1, torch.device("cpu"))
    g = torch.Generator().manual_seed(cfg.seed)
    batches = [objective.prepare(torch.randn(cfg.batch_size, 3, a.input_size, a.input_size,
                                             generator=g),
                                 torch.randint(0, 10, (cfg.batch_size,), generator=g), g)
               for _ in range(2)]
    if kind == "baseline":
        return {"kind": kind, "peak_rss_gib": _rss_gib()}
    # pin the genotype: α well separated (0.9 on the derived sub-cell, 0.1 elsewhere), so the
    # few α updates of the timed STC steps cannot change which ops run (noise is 0)
    genotype = method.derive()
    with torch.no_grad():
        for k, t in subcell(net, genotype).target.items():
            net.alphas[k].copy_(0.1 + 0.8 * t)
    method.begin_epoch(0)
    net.train()
    if kind == "stc":
        def step() -> None:
            method.step(*batches)
    else:
        fixed = build_network(genotype, channels=cfg.channels, layers=cfg.layers,
                              num_classes=10, input_size=a.input_size, auxiliary=False)
        fixed.train()
        opt = torch.optim.SGD(fixed.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                              weight_decay=cfg.w_weight_decay)
        x, y = batches[0].x, batches[0].y

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(fixed(x), y).backward()
            torch.nn.utils.clip_grad_norm_(fixed.parameters(), cfg.grad_clip)
            opt.step()
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    flops = count_flops(step)
    stable = subcell(net, method.derive()).active == subcell(net, genotype).active
    return {"kind": kind, "genotype": str(genotype), "genotype_stable": stable,
            "median_s": statistics.median(times), "times_s": times, "peak_rss_gib": _rss_gib(),
            "flops_per_iter": flops, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- runner
def profile_cmd(method: str, a: argparse.Namespace, channels: int, layers: int,
                extra: list[str]) -> list[str]:
    return [PY, "-m", "diffnas.cli", "profile", "--method", method, "--space", "darts",
            "--channels", str(channels), "--layers", str(layers), "--batch-size",
            str(a.batch_size), "--input-size", str(a.input_size), "--in-channels", "3",
            "--iters", str(a.iters), "--warmup", str(a.warmup), "--device", "cpu", "--json",
            *extra]


def child_cmd(kind: str, method: str, a: argparse.Namespace, channels: int,
              layers: int) -> list[str]:
    return [PY, __file__, "--child", kind, "--method", method, "--channels", str(channels),
            "--layers", str(layers), "--batch-size", str(a.batch_size), "--input-size",
            str(a.input_size), "--iters", str(a.iters), "--warmup", str(a.warmup)]


def alternate(jobs: dict[str, list[str]], a: argparse.Namespace, out: dict[str, list],
              save: Callable[[], None]) -> None:
    """Run ``jobs`` ``repeats`` times, alternating their order; append each record to ``out``
    and ``save()`` after every process, so an interrupted sweep keeps what it measured."""
    out.update({k: [] for k in jobs})
    names = list(jobs)
    for r in range(a.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            rec = run_json(jobs[name], a.timeout, a.threads)
            print(f"[{r + 1}/{a.repeats}] {name}: "
                  + (rec["error"] if "error" in rec else
                     f"{rec.get('median_s', 0):.2f} s, {rec['peak_rss_gib']:.2f} GiB "
                     f"(load {rec['loadavg_before']})"), file=sys.stderr, flush=True)
            out[name].append(rec)
            save()


# --------------------------------------------------------------------------- report
def render(data: dict) -> str:
    m = data["machine"]
    lines = [SECTION, "",
             "Generated by `benchmarks/stc_vs_darts.py` (raw data: "
             "`benchmarks/results/stc_vs_darts.json`). CPU only, synthetic batches, "
             "every number from its own fresh process, variants alternating; medians over "
             "repeats of each process's median iteration; load average before the runs "
             f"{load_range([data.get('supernet'), data.get('target')])} (per run in the JSON); "
             "FLOPs (`diffnas.engine.profile.count_flops`) are exact and load-free.",
             "", f"- Machine: {m['cpu']}, {m['nproc']} CPUs; torch {m['torch']}; "
             f"{data['updated']}", ""]
    s = data.get("supernet")
    if s:
        c = s["config"]
        d, t, b = s["runs"]["darts"], s["runs"]["stc"], s["runs"]["baseline"]
        base = med(b, "peak_rss_gib")
        dm, tm = med(d, "peak_rss_gib"), med(t, "peak_rss_gib")
        di = None if dm is None or base is None else dm - base
        ti = None if tm is None or base is None else tm - base
        dt_, tt = med(d, "median_s"), med(t, "median_s")
        df, tf = med(d, "flops_per_iter"), med(t, "flops_per_iter")
        lines += [
            f"### Search iteration: STC-NAS vs first-order DARTS "
            f"({c['layers']} cells, {c['channels']} channels, batch {c['batch_size']} × "
            f"{c['input_size']}²×3, {len(d)} repeats, {c['iters']} timed iterations each, "
            f"{c.get('threads', '?')} thread(s))", "",
            "| | DARTS (1st order) | STC-NAS | STC / DARTS | target |", "|---|---|---|---|---|",
            f"| s / iteration | {fmt(dt_)} | {fmt(tt)} | {ratio(tt, dt_)} | ≤ 0.35× |",
            f"| GFLOP / iteration | {fmt(df and df / 1e9, 1)} | {fmt(tf and tf / 1e9, 1)} "
            f"| {ratio(tf, df)} | |",
            f"| peak RSS, GiB (whole process) | {fmt(dm)} | {fmt(tm)} | {ratio(tm, dm)} | |",
            f"| peak RSS above the built search ({fmt(base)} GiB), GiB | {fmt(di)} | {fmt(ti)} "
            f"| {ratio(ti, di)} | ≤ 0.3× |", ""]
    f = data.get("target")
    if f:
        c = f["config"]
        st, fx = f["runs"]["stc"], f["runs"]["fixed"]
        s_t, f_t = med(st, "median_s"), med(fx, "median_s")
        s_f, f_f = med(st, "flops_per_iter"), med(fx, "flops_per_iter")
        lines += [
            f"### STC-NAS at target depth vs a training step of the target network "
            f"({c['layers']} cells, {c['channels']} channels, batch {c['batch_size']} × "
            f"{c['input_size']}²×3, {len(st)} repeats, {c['iters']} timed iterations each, "
            f"{c.get('threads', '?')} thread(s))", "",
            "Both sides run the same genotype: STC with noise 0 and α pinned (0.9 on the "
            "genotype's ops, 0.1 elsewhere, as late in a search; the genotype was "
            f"{'unchanged' if all(r.get('genotype_stable') for r in st) else 'NOT unchanged'}"
            " after the timed steps), the fixed network (`diffnas.nets.build_network`, "
            "contiguous layout as `diffnas train` uses on CPU, affine BN, no auxiliary head, "
            "no drop-path) built from it: "
            f"`{fx[0].get('genotype', '?') if fx else '?'}`.", "",
            "| | fixed network, 1 SGD step | STC-NAS iteration | STC / fixed | target |",
            "|---|---|---|---|---|",
            f"| s / iteration | {fmt(f_t)} | {fmt(s_t)} | {ratio(s_t, f_t)} | ≤ 1.5× |",
            f"| GFLOP / iteration | {fmt(f_f and f_f / 1e9, 1)} | {fmt(s_f and s_f / 1e9, 1)} "
            f"| {ratio(s_f, f_f)} | |",
            f"| peak RSS, GiB | {fmt(med(fx, 'peak_rss_gib'))} | {fmt(med(st, 'peak_rss_gib'))} "
            "| | |", ""]
    lines += data.get("notes", [])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="supernet,target")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--channels", type=int, default=16, help="supernet comparison")
    p.add_argument("--layers", type=int, default=8, help="supernet comparison")
    p.add_argument("--target-channels", type=int, default=36)
    p.add_argument("--target-layers", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--threads", type=int, default=1,
                   help="OMP/MKL threads per process (default 1: on a shared machine, spinning "
                        "OpenMP threads make multi-threaded timings erratic)")
    p.add_argument("--results", default=str(REPO / "benchmarks/results/stc_vs_darts.json"))
    p.add_argument("--markdown", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--note", action="append", default=[], help="a line under the tables")
    p.add_argument("--child", choices=("baseline", "stc", "fixed"), help=argparse.SUPPRESS)
    p.add_argument("--method", default="stc", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a)))
        return 0

    res_path = Path(a.results)
    data = json.loads(res_path.read_text()) if res_path.exists() else {}
    parts = a.parts.split(",")
    common = {"batch_size": a.batch_size, "input_size": a.input_size, "iters": a.iters,
              "warmup": a.warmup, "threads": a.threads}
    data["machine"] = machine()
    data["notes"] = a.note or data.get("notes", [])

    def save() -> None:
        data["updated"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        res_path.parent.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps(data, indent=1) + "\n")
        write_section(Path(a.markdown), SECTION, render(data))

    if "supernet" in parts:
        jobs = {"darts": profile_cmd("darts", a, a.channels, a.layers, []),
                "stc": profile_cmd("stc", a, a.channels, a.layers, []),
                "baseline": child_cmd("baseline", "darts", a, a.channels, a.layers)}
        data["supernet"] = {"config": {"channels": a.channels, "layers": a.layers, **common},
                            "runs": {}}
        alternate(jobs, a, data["supernet"]["runs"], save)
    if "target" in parts:
        c, n = a.target_channels, a.target_layers
        jobs = {"stc": child_cmd("stc", "stc", a, c, n),
                "fixed": child_cmd("fixed", "stc", a, c, n)}
        data["target"] = {"config": {"channels": c, "layers": n, **common}, "runs": {}}
        alternate(jobs, a, data["target"]["runs"], save)
    save()
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
