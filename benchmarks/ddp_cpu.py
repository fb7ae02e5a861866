"""Data-parallel search on CPU: one process vs two (gloo) for the same global batch.

At the ``cpu`` preset's supernet (DARTS space, 5 cells × 8 channels, batch 64 of 28×28×1
images, first order unless ``--order 2``) on synthetic uint8 images, every variant runs
the search loop's per-step work (augment and prepare the global batch, take this rank's share,
``method.step``, all-reduce the step's stats) in fresh processes:

- ``1×1``: one process, one thread (the batch of 64 on one core);
- ``1×2``: one process, two threads (both cores, one process);
- ``2×1``: two processes of one thread each, as ``torchrun --nproc_per_node=2`` starts them
  (32 images per rank, gradients all-reduced by :mod:`diffnas.engine.distributed`).

It reports the median time per iteration, each process's peak RSS, and the bytes each rank
all-reduces per iteration (the gradient all-reduces counted by ``Dist.grad_bytes`` plus the
step's stats), and writes ``benchmarks/results/ddp_cpu.json`` and the BENCHMARKS.md section.
The variants alternate over ``--repeats`` rounds, so a change of machine load hits all alike.

    flock /tmp/diffnas-heavy.lock nice -n 5 .venv/bin/python benchmarks/ddp_cpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_range, machine, write_section  # noqa: E402

HEADING = "## Data-parallel search on CPU: 1 vs 2 processes (issue 13)"


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time ``args.iters`` loop steps after warm-up."""
    import torch

    from diffnas.config import resolve_config
    from diffnas.data import BatchAugment
    from diffnas.engine import distributed
    from diffnas.engine.search import build_search

    cfg = resolve_config("cpu", device="cpu", order=args.order)
    b, size = cfg.batch_size, 28
    with distributed.session(torch.device("cpu")) as ddp:
        net, objective, method = build_search(cfg, 1, size, 10, 100, torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (4 * b, 1, size, size), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (4 * b,), generator=g)
        aug = BatchAugment((0.5,), (0.25,), crop_padding=cfg.crop_padding, flip=True)
        method.begin_epoch(0)
        net.train()
        gen = torch.Generator().manual_seed(1)

        def step(i: int) -> None:
            k = (2 * i) % 4
            xt, yt = images[k * b:(k + 1) * b], labels[k * b:(k + 1) * b]
            xv, yv = images[(k + 1) * b:(k + 2) * b], labels[(k + 1) * b:(k + 2) * b]
            bt = objective.prepare(aug(xt, gen), yt, gen)
            bv = objective.prepare(aug(xv, gen), yv, gen)
            if ddp is None:
                method.step(bt, bv)
            else:
                stats = method.step(ddp.shard(bt, b), ddp.shard(bv, b))
                ddp.mean_stats(stats)
                nonlocal_stats[0] = len(stats)

        nonlocal_stats = [0]
        for i in range(args.warmup):
            step(i)
        sent0 = ddp.grad_bytes if ddp is not None else 0
        times = []
        for i in range(args.iters):
            t0 = time.perf_counter()
            step(args.warmup + i)
            times.append(time.perf_counter() - t0)
        out = {"rank": ddp.rank if ddp else 0, "world": ddp.world if ddp else 1,
               "threads": torch.get_num_threads(), "median_s": statistics.median(times),
               "times_s": times,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "a_params": sum(p.numel() for p in method.a_params),
               "w_params": sum(p.numel() for p in method.w_params)}
        if ddp is not None:
            out["grad_bytes_per_iter"] = (ddp.grad_bytes - sent0) / args.iters
            out["stats_bytes_per_iter"] = 8 * nonlocal_stats[0]
        print(json.dumps(out), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def variant(world: int, threads: int, args: argparse.Namespace) -> dict:
    """Run one variant in fresh processes; returns rank 0's record with every rank's RSS."""
    port = free_port()
    cmd = [sys.executable, __file__, "--worker", "--iters", str(args.iters), "--warmup",
           str(args.warmup), "--order", str(args.order)]
    load = round(os.getloadavg()[0], 2)
    procs = []
    for r in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env.pop("WORLD_SIZE", None)
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                       LOCAL_RANK=str(r), WORLD_SIZE=str(world))
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    recs = []
    for p in procs:
        out, err = p.communicate(timeout=args.timeout)
        if p.returncode:
            raise SystemExit(f"variant {world}×{threads} failed: {err[-2000:]}")
        recs.append(json.loads(out.strip().splitlines()[-1]))
    rec = dict(recs[0])
    rec.update(loadavg_before=load, peak_rss_gib_per_rank=[r["peak_rss_gib"] for r in recs],
               median_s_per_rank=[r["median_s"] for r in recs])
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--order", type=int, default=1, choices=(1, 2))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-write", action="store_true",
                    help="print the section instead of writing it into BENCHMARKS.md")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    variants = [(1, 1), (1, 2), (2, 1)]
    runs: dict[str, list[dict]] = {f"{w}x{t}": [] for w, t in variants}
    for _ in range(args.repeats):
        for w, t in variants:
            runs[f"{w}x{t}"].append(variant(w, t, args))
    result = {"machine": machine(), "order": args.order, "iters": args.iters,
              "warmup": args.warmup, "repeats": args.repeats, "runs": runs,
              "loadavg_after": round(os.getloadavg()[0], 2)}
    text = report(result)
    print(text)
    (REPO / "benchmarks" / "results" / "ddp_cpu.json").write_text(
        json.dumps(result, indent=1) + "\n")
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", HEADING, text)


def report(res: dict) -> str:
    m, runs = res["machine"], res["runs"]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = med("1x1", "median_s")
    d = runs["2x1"][0]
    grad, stats = d["grad_bytes_per_iter"], d["stats_bytes_per_iter"]
    params = 4 * (d["a_params"] + d["w_params"])
    rows = []
    for name, what in (("1x1", "1 process × 1 thread"), ("1x2", "1 process × 2 threads"),
                       ("2x1", "2 processes × 1 thread (gloo)")):
        rss = max(x for r in runs[name] for x in r["peak_rss_gib_per_rank"])
        rows.append(f"| {what} | {med(name, 'median_s'):.3f} | "
                    f"{base / med(name, 'median_s'):.2f}× | {rss:.2f} |")
    loads = load_range(runs)
    return "\n".join([
        HEADING, "",
        f"`cpu` preset supernet (DARTS space, 5 cells × 8 channels, order {res['order']}), "
        f"global batch 64 of 28×28×1 synthetic images (train and val batch per step); "
        f"{res['iters']} timed steps after {res['warmup']} warm-up per process, "
        f"{res['repeats']} alternating rounds, median over rounds. Machine: {m['cpu']}, "
        f"{m['nproc']} cores, torch {m['torch']}; load average before the processes {loads} "
        f"(after {res['loadavg_after']}; the shared machine's background jobs included). "
        "`benchmarks/ddp_cpu.py`, raw numbers in `benchmarks/results/ddp_cpu.json`.", "",
        "| processes × threads | s / iteration | speed-up vs 1×1 | peak RSS per process (GiB) |",
        "|---|---|---|---|", *rows, "",
        f"Communication per iteration and rank: {grad / 1e6:.3f} MB of gradients all-reduced "
        f"({grad / params:.2f} × the {params / 1e6:.3f} MB of α and w in float32: "
        + ("∇α once in the α step, ∇w once in the w step"
           if res["order"] == 1 else "the virtual step's ∇w, ∇(α, w') at w', ∇α at w ± ε, "
           "then the w step's ∇w")
        + f") plus {stats} bytes of step stats; a ring "
        "all-reduce over N ranks sends 2(N−1)/N of that per rank. Multi-GPU (NCCL) scaling "
        "was not measured here (no GPU on this machine); the GPU-check issue runs the DDP "
        "test on CUDA when a GPU machine is available.", ""])


if __name__ == "__main__":
    main()
