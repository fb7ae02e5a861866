"""CPU speed of this tree against an older commit (default c520754, the start of issue 16),
measured side by side in alternating fresh processes:

* ``search``: one first-order DARTS search iteration (α step + weight step) at the small
  config, 8 channels × 5 cells, batch 32, 28×28×1 (synthetic tensors);
* ``train``: one retraining step of the ``cpu`` evaluation network (DARTS_V2 cell, 8 × 5 cells,
  28×28×1) with the same recipe in both trees (the old ``cpu`` preset: batch 64, auxiliary
  head 0.4, drop-path), each tree's own Trainer (layout, ops);
* ``train-preset``: a step of each tree's own ``cpu`` train preset (images per CPU-second).

Each child runs on one thread and reports CPU-seconds per step (``time.process_time``): on a
loaded 2-core machine wall times (and two-thread runs, whose OpenMP threads spin while their
partner is descheduled) are dominated by the other jobs, CPU time much less. The old tree is
a ``git worktree`` (``--old-tree``, created when missing) put first on ``PYTHONPATH``.

    flock /tmp/diffnas-heavy.lock .venv/bin/python benchmarks/cpu_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_range, machine, run_json, write_section  # noqa: E402

OLD_COMMIT = "c520754"
MODES = ("search", "train", "train-preset")
HEADING = "## CPU speed: this tree vs c520754 (issue 16)"


def child(mode: str, iters: int, warmup: int) -> dict:
    import torch

    import diffnas

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if mode == "search":
        from diffnas.config import resolve_config
        from diffnas.engine.search import build_search

        cfg = resolve_config("cpu", batch_size=32, channels=8, layers=5, device="cpu")
        net, objective, method = build_search(cfg, 1, 28, 10, 100, torch.device("cpu"))

        def batch() -> object:
            x = torch.randn(32, 1, 28, 28, generator=g)
            return objective.prepare(x, torch.randint(0, 10, (32,), generator=g), g)

        batches = [(batch(), batch()) for _ in range(2)]
        method.begin_epoch(0)
        net.train()
        images = 64

        def step(i: int) -> None:
            method.step(*batches[i % 2])
    else:
        from diffnas.engine.train import Trainer, resolve_train_config
        from diffnas.nets import build_network
        from diffnas.spaces import parse_genotype

        if mode == "train":  # the old cpu preset's recipe, in both trees
            cfg = resolve_train_config("cpu", subset=4000, epochs=3, batch_size=64, lr=0.05,
                                       schedule="cosine", cutout=8, drop_path=0.1,
                                       auxiliary_weight=0.4, label_smoothing=0.0)
        else:
            cfg = resolve_train_config("cpu")
        net = build_network(parse_genotype("DARTS_V2"), channels=cfg.channels,
                            layers=cfg.layers, num_classes=10, in_channels=1, input_size=28,
                            auxiliary=cfg.auxiliary_weight > 0)
        trainer = Trainer(cfg, net, torch.device("cpu"))
        trainer.begin_epoch(1)
        images = cfg.batch_size
        xs = [torch.randn(images, 1, 28, 28, generator=g) for _ in range(2)]
        ys = [torch.randint(0, 10, (images,), generator=g) for _ in range(2)]

        def step(i: int) -> None:
            trainer.step(xs[i % 2], ys[i % 2])

    for i in range(warmup):
        step(i)
    cpu, wall = [], []
    for i in range(iters):
        c0, w0 = time.process_time(), time.perf_counter()
        step(i)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    cpu_s = statistics.median(cpu)
    return {"mode": mode, "cpu_s": round(cpu_s, 4), "wall_s": round(statistics.median(wall), 4),
            "images": images, "images_per_cpu_s": round(images / cpu_s, 1),
            "threads": torch.get_num_threads(), "diffnas": str(Path(diffnas.__file__).parent)}


def ensure_old_tree(path: Path, commit: str) -> None:
    if not (path / "src" / "diffnas").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO,
                       check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--repeats", type=int, default=3, help="alternating old/new pairs")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--old-tree", default="/tmp/old")
    ap.add_argument("--old-commit", default=OLD_COMMIT)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (2: the issue's wall-time setting on an "
                         "idle 2-core machine)")
    ap.add_argument("--no-write", action="store_true",
                    help="print only (no BENCHMARKS.md section, no results JSON)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iters, args.warmup)))
        return
    old = Path(args.old_tree)
    ensure_old_tree(old, args.old_commit)
    trees = {"old": old / "src", "new": REPO / "src"}
    runs: dict[str, dict[str, list[dict]]] = {m: {"old": [], "new": []} for m in args.modes}
    for r in range(args.repeats):
        for mode in args.modes:
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                os.environ["PYTHONPATH"] = str(trees[name])
                rec = run_json([sys.executable, __file__, "--child", mode, "--iters",
                                str(args.iters), "--warmup", str(args.warmup)], timeout=900,
                               threads=args.threads)
                if "error" in rec:
                    raise SystemExit(f"{name} {mode}: {rec}")
                if Path(rec["diffnas"]) != trees[name] / "diffnas":
                    raise SystemExit(f"{name} imported diffnas from {rec['diffnas']}")
                runs[mode][name].append(rec)
                print(f"{mode:<13} {name}: {rec['cpu_s']:.3f} CPU-s/step, {rec['wall_s']:.3f} s "
                      f"({rec['images_per_cpu_s']:.0f} img/CPU-s), load {rec['loadavg_before']}",
                      flush=True)
    rows = []
    for mode, by in runs.items():
        o = statistics.median(r["cpu_s"] for r in by["old"])
        n = statistics.median(r["cpu_s"] for r in by["new"])
        pairs = [a["cpu_s"] / b["cpu_s"] for a, b in zip(by["old"], by["new"], strict=True)]
        wo = statistics.median(r["wall_s"] for r in by["old"])
        wn = statistics.median(r["wall_s"] for r in by["new"])
        rows.append((mode, o, n, o / n, min(pairs), max(pairs), wo / wn, by))
    result = {"machine": machine(), "old_commit": args.old_commit, "runs": runs,
              "threads": args.threads,
              "summary": {m: {"old_cpu_s": o, "new_cpu_s": n, "speedup": s, "wall_speedup": w}
                          for m, o, n, s, _, _, w, _ in rows}}
    if not args.no_write:
        out = REPO / "benchmarks" / "results" / "cpu_speed.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [HEADING, "",
             f"`benchmarks/cpu_speed.py --repeats {args.repeats} --threads {args.threads}`: "
             f"{m.get('cpu')}, torch {m.get('torch')}, {args.threads} thread(s) per process, "
             f"old and new in alternating fresh processes, load average {load_range(runs)} "
             f"before them. CPU-seconds per step, median of {args.iters} steps after "
             f"{args.warmup} warm-up, median over the repeats; speed-up = old / new (range over "
             "the interleaved pairs); wall = the same ratio of wall times.", "",
             "| step | c520754 CPU-s | this tree CPU-s | speed-up | pairs | wall |",
             "|---|---|---|---|---|---|"]
    labels = {"search": "first-order DARTS search iteration, 8 ch × 5 cells, batch 32, 28²×1",
              "train": "retrain step, cpu network, old cpu recipe (batch 64, aux, drop-path)",
              "train-preset": "retrain step of each tree's own `cpu` preset (per image)"}
    for mode, o, n, s, lo, hi, w, by in rows:
        if mode == "train-preset":  # batch sizes differ: compare per image
            o_img = statistics.median(r["images_per_cpu_s"] for r in by["old"])
            n_img = statistics.median(r["images_per_cpu_s"] for r in by["new"])
            lines.append(f"| {labels[mode]} | {o_img:.0f} img/CPU-s | {n_img:.0f} img/CPU-s | "
                         f"{n_img / o_img:.2f}× | | |")
        else:
            lines.append(f"| {labels[mode]} | {o:.3f} | {n:.3f} | {s:.2f}× | "
                         f"{lo:.2f}–{hi:.2f}× | {w:.2f}× |")
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", HEADING, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
