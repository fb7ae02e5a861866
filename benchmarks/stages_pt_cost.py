#!/usr/bin/env python3
"""Cost of P-DARTS' stages and of DARTS-PT's selection against a DARTS search, same config.

Three searches, each in its own fresh process (``--child``), alternating (darts, pdarts,
darts+pt, then the reverse order on the next repeat), on the same data and base network:

- ``darts``: first-order DARTS, 3 epochs;
- ``pdarts``: 3 epochs = 1 per stage (5 → 11 → 17 cells as the reference's ``add_layers``,
  ops per edge 8 → 5 → 3);
- ``pt``: 1 DARTS epoch, then ``--select pt`` with ``proj_intv`` 1 (a decision every epoch:
  14 op decisions and 3 topology decisions per cell kind in the DARTS space).

Per search the epoch wall times from its metrics (``epoch_time_s``: training steps plus the
epoch's validation pass; for PT epochs the decision's evaluations plus one fine-tuning epoch).
Writes ``benchmarks/results/stages_pt_cost_<space>.json`` and the section ``## P-DARTS stages
and DARTS-PT selection vs DARTS (<space>)`` of BENCHMARKS.md::

    flock /tmp/diffnas-heavy.lock .venv/bin/python benchmarks/stages_pt_cost.py --repeats 1
    .venv/bin/python benchmarks/stages_pt_cost.py --space nb201 --layers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import REPO, machine, run_json, write_section  # type: ignore[import-not-found]

SECTION = "## P-DARTS stages and DARTS-PT selection vs DARTS"
SUB = {"darts": f"{SECTION} (DARTS space)", "nb201": f"{SECTION} (NAS-Bench-201 space)"}
VARIANTS = ("darts", "pdarts", "pt")


def child(variant: str, args: argparse.Namespace) -> None:
    import torch

    from diffnas.config import resolve_config
    from diffnas.engine.search import search

    torch.set_num_threads(1)
    base = dict(dataset=args.dataset, subset=args.subset, batch_size=args.batch_size,
                channels=args.channels, layers=args.layers, device="cpu", crop_padding=2,
                space=args.space)
    if variant == "darts":
        cfg = resolve_config(None, method="darts", epochs=3, **base)
    elif variant == "pdarts":
        nb201 = {"num_to_keep": "4,3,1", "add_layers": "0,0,0"} if args.space == "nb201" else {}
        cfg = resolve_config(None, method="pdarts", epochs=3, **base,
                             method_args={"arch_warmup_epochs": 0, **nb201})
    else:
        cfg = resolve_config(None, method="darts", epochs=1, select="pt", **base,
                             method_args={"proj_intv": 1})
    with tempfile.TemporaryDirectory() as d:
        result = search(cfg, out=Path(d) / "run", progress=False)
    rows = [{"stage": r["stage"], "phase": r.get("phase", "search"),
             "s": round(r["epoch_time_s"], 2)} for r in result.history]
    print(json.dumps({"variant": variant, "epochs": rows}))


def summarise(runs: list[dict]) -> dict[str, float]:
    """Median epoch seconds per (variant, stage/phase) over the repeats."""
    acc: dict[str, list[float]] = {}
    for r in runs:
        if "error" in r:
            continue
        for e in r["epochs"]:
            key = (f"{r['variant']} {e['phase']}" if r["variant"] != "pdarts"
                   else f"pdarts stage {e['stage'] + 1}")
            acc.setdefault(key, []).append(e["s"])
    return {k: round(statistics.median(v), 2) for k, v in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--space", default="darts", choices=("darts", "nb201"))
    args = p.parse_args()
    if args.child:
        child(args.child, args)
        return
    flags = ["--dataset", args.dataset, "--subset", str(args.subset), "--batch-size",
             str(args.batch_size), "--channels", str(args.channels), "--layers",
             str(args.layers), "--space", args.space]
    runs = []
    for rep in range(args.repeats):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for v in order:
            r = run_json([sys.executable, __file__, "--child", v, *flags], timeout=3000,
                         threads=1, key="variant")
            print(json.dumps(r)[:300], flush=True)
            runs.append(r)
    med = summarise(runs)
    mach = machine()
    out = {"config": vars(args), "median_epoch_s": med, "runs": runs, "machine": mach}
    (REPO / "benchmarks" / "results" / f"stages_pt_cost_{args.space}.json").write_text(
        json.dumps(out, indent=1) + "\n")
    d = med.get("darts search")
    pt = med.get("pt select-pt")
    loads = [r.get("loadavg_before") for r in runs]
    lines = [SUB[args.space], "",
             f"{args.space} space, {args.dataset} {args.subset} images (half for w, half for α), "
             f"batch {args.batch_size}, {args.channels} channels, base {args.layers} cells, "
             f"1 thread, each search a fresh process, {args.repeats} repeat(s) alternating; "
             f"load average before each: {loads}. {mach['cpu']}, {mach['nproc']} cores, torch "
             f"{mach['torch']}. Median seconds per epoch "
             "(training steps + the epoch's validation pass; a PT epoch is one decision's "
             "evaluations + one fine-tuning epoch). `benchmarks/stages_pt_cost.py`.", "",
             "| run | s / epoch | × DARTS epoch |", "|---|---|---|"]
    for k, v in med.items():
        lines.append(f"| {k} | {v} | {v / d:.2f} |" if d else f"| {k} | {v} | |")
    if pt and d and args.space == "darts":
        n = 17
        lines += ["", f"A full PT phase in the DARTS space at the reference's `proj_intv` 5 "
                  f"is 81 epochs with 17 decisions: ≈ {n} × {pt:.1f} s + 64 fine-tuning "
                  "epochs, i.e. more than the 50-epoch search itself (the reference: PT "
                  "costs about as much as the search)."]
    write_section(REPO / "BENCHMARKS.md", SUB[args.space], "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
