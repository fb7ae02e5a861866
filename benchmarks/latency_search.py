"""Latency-aware search on Fashion-MNIST (CPU): the `cpu` preset search without the latency
term and with it at two targets; each found cell retrained briefly, exported and timed at
batch 1; accuracy vs measured latency, and the table's predicted latency vs the measured one.

    flock /tmp/diffnas-heavy.lock nice -n 5 .venv/bin/python benchmarks/latency_search.py \\
        --out runs/latency-bench --retrain-subset 10000

Steps (each a fresh process, from the repository root):

1. ``diffnas latency --preset cpu --threads 1`` — the table, at the shapes of the `cpu` search
   supernet, which are the retrained `cpu` network's (8 channels × 5 cells, 28×28).
2. ``diffnas search --preset cpu`` — the unconstrained search; its network's predicted
   latency ``L0`` and the floor ``Lmin`` (the cheapest op on every edge) set the two targets,
   ``Lmin + 0.6 (L0 − Lmin)`` and ``Lmin + 0.3 (L0 − Lmin)``.
3. The same search with ``--latency table.json --lat-target T --lat-form hinge
   --lat-estimate derived --lat-stat min --lat-weight W`` for each target.
4. ``diffnas train --preset cpu --subset N`` on each genotype (N = --retrain-subset images
   instead of the preset's 45,000, to fit a loaded machine), then ``diffnas export`` (PyTorch
   and ONNX latency at batch 1, 1 thread) and the table's prediction against the measured
   latency of the same network (:func:`diffnas.engine.latency.check_prediction`).

Writes benchmarks/results/latency_search.json, a markdown table on stdout and, with
matplotlib, benchmarks/results/latency_search.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "latency-bench")
    p.add_argument("--retrain-subset", type=int, default=10_000)
    p.add_argument("--lat-weight", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2, help="threads of searches and retrains")
    p.add_argument("--fractions", default="0.6,0.3",
                   help="targets as Lmin + f·(L0 − Lmin), comma-separated")
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
    rec = run_json(diffnas("latency", "--preset", "cpu", "--threads", "1", "--repeats", "30",
                           "--warmup", "5", "--out", str(table), "--json"), 1800, threads=1)
    results["table"] = rec
    print("table:", json.dumps(rec.get("table", rec)), flush=True)
    save()

    def run(name: str, extra: list[str]) -> None:
        s_dir, t_dir = out / f"search-{name}", out / f"train-{name}"
        r: dict = {"search": run_json(diffnas("search", "--preset", "cpu", "--out", str(s_dir),
                                              "--no-progress", "--json", *extra),
                                      3600, threads=args.threads)}
        if "error" in r["search"]:
            results["runs"][name] = r
            save()
            return
        last = json.loads((s_dir / "metrics.jsonl").read_text().splitlines()[-1])
        r["search_derived_latency_ms"] = last.get("derived_latency_ms")
        r["predicted"] = predicted(table, s_dir)
        r["train"] = run_json(diffnas("train", str(s_dir), "--preset", "cpu", "--subset",
                                      str(args.retrain_subset), "--out", str(t_dir),
                                      "--no-progress", "--json"), 3600, threads=args.threads)
        r["export"] = run_json(diffnas("export", str(t_dir), "--threads", "1", "--repeats", "100",
                                       "--json"), 1800, threads=1)
        from diffnas.engine.latency import check_prediction
        from diffnas.spaces import parse_genotype

        r["check"] = check_prediction(table, [parse_genotype(str(s_dir))], repeats=60)[0]
        r["loadavg_after"] = os.getloadavg()
        results["runs"][name] = r
        print(name, json.dumps({k: r[k] for k in ("predicted", "check")}), flush=True)
        save()

    run("none", [])
    base = results["runs"]["none"]["predicted"]
    l0, floor = base["min_ms"], base["floor_min_ms"]
    for f in (float(v) for v in args.fractions.split(",")):
        target = round(floor + f * (l0 - floor), 3)
        results.setdefault("targets", {})[f"{f:g}"] = target
        run(f"t{target:g}", ["--latency", str(table), "--lat-target", f"{target}",
                             "--lat-form", "hinge", "--lat-estimate", "derived",
                             "--lat-stat", "min", "--lat-weight", f"{args.lat_weight}"])
    results["loadavg_end"] = os.getloadavg()
    save()
    report(results)


def report(results: dict) -> None:
    rows = []
    for name, r in results["runs"].items():
        if "check" not in r:
            rows.append(f"| {name} | failed: {r['search'].get('error')} | | | | | | |")
            continue
        target = next((t for f, t in results.get("targets", {}).items()
                       if name == f"t{t:g}"), None)
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
