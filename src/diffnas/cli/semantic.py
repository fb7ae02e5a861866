"""``diffnas ablation``: Semantic-DARTS' Table VIII ablation in one command.

Runs the five variants of the MIM objective (``cls`` = plain DARTS, ``cls-masked``,
``rec-clean``, ``rec-masked``, ``cls+rec-masked`` = Semantic-DARTS) with the same data,
seed and search settings, and prints a Markdown table (also written to
``OUT/ablation.md``, with ``OUT/ablation.json``). Run it again to resume.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

DEFAULT_ABLATION_PRESET = "semantic-cpu"


def cmd_ablation(args: argparse.Namespace) -> int:
    from ..engine.ablation import ablation_markdown, run_ablation
    from ..engine.experiment import json_or_text
    from . import _config, _kv

    cfg = _config(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants \
        else None
    dataset = cfg.dataset.replace("/", "_").replace(":", "-")
    out = args.out or f"runs/ablation-{cfg.space}-{dataset}-seed{cfg.seed}"
    overrides = {k: json_or_text(v) for k, v in _kv(args.retrain_set, "--retrain-set").items()}
    rows = run_ablation(cfg, out, variants, retrain=args.retrain, retrain_overrides=overrides,
                        progress=not args.no_progress,
                        echo=(lambda _line: None) if args.json else print)
    if args.json:
        print(json.dumps({"out": str(out), "rows": [asdict(r) for r in rows]}))
    else:
        print()
        print(ablation_markdown(rows, cfg), end="")
        print(f"\nrun folders and ablation.md / ablation.json in {out}")
    return 0


def register(sub: Any) -> None:
    """Add ``ablation`` to the ``diffnas`` parser."""
    from . import _add_search_options

    p = sub.add_parser("ablation", help="Semantic-DARTS ablation (Table VIII): one search per "
                       "MIM variant on the same data and seed, and a Markdown table")
    _add_search_options(p)
    p.set_defaults(preset=DEFAULT_ABLATION_PRESET)
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of cls, cls-masked, rec-clean, rec-masked, "
                        "cls+rec-masked (default: all five)")
    p.add_argument("--out", help="ablation folder (default: runs/ablation-<space>-<dataset>-"
                   "seed<N>); one run folder per variant inside")
    p.add_argument("--retrain", metavar="TRAIN_PRESET",
                   help="also retrain each variant's genotype with this train preset (e.g. cpu) "
                        "and add its test accuracy to the table")
    p.add_argument("--retrain-set", action="append", metavar="KEY=VALUE",
                   help="retraining config override, e.g. --retrain-set epochs=2")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    p.set_defaults(func=cmd_ablation)
