"""Latency-aware search on Fashion-MNIST (CPU): the `cpu` preset search without the latency
term and with it at two targets; each found cell retrained briefly, exported and timed at
batch 1; accuracy vs measured latency, and the table's predicted latency vs the measured one.

    flock /tmp/diffnas-heavy.lock nice -n 5 .venv/bin/python benchmarks/latency_search.py \\
        --out runs/latency-bench --retrain-subset 10000 --targets 2.4,1.6

Steps:

1. ``diffnas latency --preset cpu --threads 1`` — the table, at the shapes of the `cpu` search
   supernet, which are the retrained `cpu` network's (8 channels × 5 cells, 28×28).
2. In parallel (one thread each): ``diffnas search --preset cpu`` without the term, and with
   ``--latency table.json --lat-target T --lat-form hinge --lat-estimate derived --lat-stat
   min --lat-weight W`` for each ``--targets`` T (ms, the table's fastest-run statistic).
3. ``diffnas train --preset cpu --subset N`` on each genotype as its search ends (N =
   --retrain-subset images instead of the preset's 45,000, to fit a loaded machine).
4. Last, one at a time: ``diffnas export`` of each trained network (PyTorch and ONNX latency
   at batch 1, 1 thread) and the table's prediction against the measured latency of the same
   network (:func:`diffnas.engine.latency.check_prediction`, fastest and median of 60 runs).

Finished pieces in ``--out`` are reused (a search folder with a log but no result.json is
waited for), so an interrupted benchmark continues.

Writes benchmarks/results/latency_search.json, a markdown table on stdout and, with
matplotlib, benchmarks/results/latency_search.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, run_json  # noqa: E402

PY = sys.executable


def diffnas(*args: str) -> list[str]:
    return [PY, "-m", "diffnas", *args]


def predicted(table: Path, genotype_dir: Path) -> dict:
    """The table's predicted latency (median and fastest-run statistics) of a search's result,
    and the floor (the cheapest op on every edge)."""
    from diffnas.engine.latency import supernet_for
    from diffnas.objectives.latency import LatencyTable
    from diffnas.spaces import parse_genotype

    tab = LatencyTable.load(table)
    c = tab.data["config"]
    net = supernet_for(tab.search_config(), c["in_channels"], c["num_classes"], c["input_size"])
    g = parse_genotype(str(genotype_dir))
    cheapest = tab.reference_genotypes(net)[0]
    return {"median_ms": tab.predict(net, g), "min_ms": tab.predict(net, g, "min_ms"),
            "floor_min_ms": tab.predict(net, cheapest, "min_ms"), "floor": str(cheapest)}


def wait_for(path: Path, timeout: float) -> bool:
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            return False
        time.sleep(10)
    return True


def start(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(["nice", "-n", "5", *cmd], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "latency-bench")
    p.add_argument("--retrain-subset", type=int, default=10_000)
    p.add_argument("--lat-weight", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="threads of each search and retrain")
    p.add_argument("--targets", default="2.4,1.6",
                   help="latency targets (ms, the table's fastest-run statistic)")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    res_path = REPO / "benchmarks" / "results" / "latency_search.json"
    results: dict = {"machine": machine(), "loadavg_start": os.getloadavg(),
                     "retrain_subset": args.retrain_subset, "lat_weight": args.lat_weight,
                     "runs": {}}

    def save() -> None:
        res_path.write_text(json.dumps(results, indent=1) + "\n")

    table = out / "table.json"
    if not table.exists():
        rec = run_json(diffnas("latency", "--preset", "cpu", "--threads", "1", "--repeats",
                               "30", "--warmup", "5", "--out", str(table), "--json"), 1800,
                       threads=1)
        results["table"] = rec
    results["table_fixed"] = {k: v for k, v in json.loads(table.read_text())["fixed"].items()
                              if k != "references"}
    save()
    targets = {f"t{t}": float(t) for t in args.targets.split(",")}
    results["targets"] = targets
    searches = {"none": []}
    for name, t in targets.items():
        searches[name] = ["--latency", str(table), "--lat-target", f"{t}", "--lat-form", "hinge",
                          "--lat-estimate", "derived", "--lat-stat", "min", "--lat-weight",
                          f"{args.lat_weight}"]
    # the searches in parallel (a folder with a log but no result.json is a search already
    # running: it is waited for), then each one's retrain as soon as it is done
    procs = {}
    for name, extra in searches.items():
        s_dir = out / f"search-{name}"
        if not (s_dir / "log.txt").exists():
            procs[name] = start(diffnas("search", "--preset", "cpu", "--out", str(s_dir),
                                        "--no-progress", "--json", *extra),
                                out / f"search-{name}.log", args.threads)
    trains = {}
    for name in searches:
        s_dir, t_dir = out / f"search-{name}", out / f"train-{name}"
        if name in procs:
            procs[name].wait()
        if not wait_for(s_dir / "result.json", 7200):
            results["runs"][name] = {"error": "search did not finish"}
            continue
        if not (t_dir / "log.txt").exists():  # else started elsewhere: waited for below
            trains[name] = start(diffnas("train", str(s_dir), "--preset", "cpu", "--subset",
                                         str(args.retrain_subset), "--out", str(t_dir),
                                         "--no-progress", "--json"),
                                 out / f"train-{name}.log", args.threads)
    for proc in trains.values():
        proc.wait()
    for name in searches:
        if (out / f"train-{name}" / "log.txt").exists():
            wait_for(out / f"train-{name}" / "result.json", 7200)
    # measurements last, one at a time (nothing else of this benchmark running)
    from diffnas.engine.latency import check_prediction
    from diffnas.spaces import parse_genotype

    for name in searches:
        s_dir, t_dir = out / f"search-{name}", out / f"train-{name}"
        if not (t_dir / "result.json").exists():
            results["runs"].setdefault(name, {"error": "retrain did not finish"})
            continue
        last = json.loads((s_dir / "metrics.jsonl").read_text().splitlines()[-1])
        r: dict = {"search_s": json.loads((s_dir / "result.json").read_text())["search_time_s"],
                   "search_derived_latency_ms": last.get("derived_latency_ms"),
                   "search_e_latency_ms": last.get("e_latency_ms"),
                   "genotype": last["genotype_str"], "predicted": predicted(table, s_dir),
                   "train": json.loads((t_dir / "result.json").read_text())}
        r["export"] = run_json(diffnas("export", str(t_dir), "--threads", "1", "--repeats",
                                       "100", "--json"), 1800, threads=1)
        r["check"] = check_prediction(table, [parse_genotype(str(s_dir))], repeats=60)[0]
        r["loadavg_after"] = os.getloadavg()
        results["runs"][name] = r
        print(name, json.dumps({k: r[k] for k in ("predicted", "check")}), flush=True)
        save()
    results["loadavg_end"] = os.getloadavg()
    save()
    report(results)


def report(results: dict) -> None:
    rows = []
    for name, r in results["runs"].items():
        if "check" not in r:
            rows.append(f"| {name} | failed: {r['search'].get('error')} | | | | | | |")
            continue
        target = results.get("targets", {}).get(name)
        ck, ex, tr = r["check"], r["export"], r["train"]
        meas = ck["measured_min_ms"]
        hit = f"{100 * (meas / target - 1):+.1f} %" if target else "–"
        rows.append(f"| {name} | {target if target else '–'} | {ck['predicted_min_ms']:.3f} | "
                    f"{meas:.3f} | {hit} | {ck['measured_ms']:.3f} | "
                    f"{ex.get('onnx', {}).get('latency_ms', float('nan')):.3f} | "
                    f"{100 * tr.get('test_acc', float('nan')):.2f} |")
    print("| search | target ms | predicted ms (fastest) | measured ms (fastest) | vs target | "
          "measured ms (median) | ONNX ms (median) | test acc % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results["runs"].items():
        if "check" in r:
            ax.scatter(r["check"]["measured_min_ms"], 100 * r["train"]["test_acc"])
            ax.annotate(name, (r["check"]["measured_min_ms"], 100 * r["train"]["test_acc"]))
    for t in results.get("targets", {}).values():
        ax.axvline(t, ls=":", c="gray")
    ax.set_xlabel("measured batch-1 latency, fastest of 60 runs (ms)")
    ax.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(REPO / "benchmarks" / "results" / "latency_search.png", dpi=120)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--report":
        report(json.loads(Path(sys.argv[2]).read_text()))
    else:
        main()
