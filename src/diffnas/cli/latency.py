"""``diffnas latency``: measure a search space's latency table (every candidate op at every
shape a config's supernet uses), and check the whole-network latency it predicts for
genotypes against their measured fixed networks (:mod:`diffnas.engine.latency`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import DiffnasError


def register(sub: Any) -> None:
    from . import _add_search_options

    p = sub.add_parser("latency", help="latency table of a space's ops at a config's shapes; "
                       "predicted vs measured latency of genotypes")
    _add_search_options(p)
    p.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"),
                   help="time with PyTorch eval mode (default) or an exported ONNX graph in "
                        "onnxruntime (extra: pip install 'diffnas[latency]')")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's current number)")
    p.add_argument("--batch", type=int, default=1, help="images per timed call (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per entry (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds the repeats are split into (default 3)")
    p.add_argument("--input-size", type=int, help="image size (default: the dataset's)")
    p.add_argument("--in-channels", type=int, help="image channels (default: the dataset's)")
    p.add_argument("--num-classes", type=int, help="classes (default: the dataset's)")
    p.add_argument("--no-fixed", action="store_true",
                   help="skip measuring the fixed parts (stem, preprocessing, head): the table "
                        "then drives a search but cannot predict a network's latency")
    p.add_argument("--out", help="write the table here (JSON)")
    p.add_argument("--table", help="use this table instead of measuring one (with --genotype)")
    p.add_argument("--genotype", action="append", metavar="RUN_OR_FILE",
                   help="also predict this genotype's latency from the table and measure its "
                        "fixed network (repeatable; a run folder, genotype.json, name or text)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_latency)


def cmd_latency(args: argparse.Namespace) -> int:
    from ..engine.latency import build_table, check_prediction
    from ..engine.runfolder import atomic_write_text
    from ..spaces import parse_genotype
    from . import _config

    if args.table is None and args.out is None:
        raise DiffnasError("diffnas latency needs --out TABLE.json (to measure a table) or "
                           "--table TABLE.json with --genotype (to check predictions)")
    if args.table is not None and not args.genotype:
        raise DiffnasError("--table checks predictions: give one or more --genotype RUN_OR_FILE")
    genotypes = [parse_genotype(g) for g in args.genotype or []]
    report: dict[str, Any] = {}
    table_path = args.table
    if table_path is None:
        cfg = _config(args)
        say = None if args.json else print
        table = build_table(cfg, device=args.device or "cpu", runtime=args.runtime,
                            threads=args.threads, batch=args.batch, repeats=args.repeats,
                            warmup=args.warmup, rounds=args.rounds, in_channels=args.in_channels,
                            image_size=args.input_size, num_classes=args.num_classes,
                            fixed=not args.no_fixed, progress=say)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(table, indent=1) + "\n")
        table_path = str(out)
        meds = sorted(e["median_ms"] for e in table["entries"].values())
        report["table"] = {"path": table_path, "entries": len(meds), "edges": len(table["edges"]),
                           "min_ms": meds[0], "max_ms": meds[-1],
                           "fixed_ms": table.get("fixed", {}).get("ms")}
        if not args.json:
            m = table["measure"]
            fixed = (f"; fixed parts {table['fixed']['ms']:.3f} ms (dearest network predicted "
                     f"{100 * table['fixed']['dearest_error']:+.1f} %, fastest runs "
                     f"{100 * table['fixed']['dearest_error_min']:+.1f} %)" if "fixed" in table
                     else "")
            print(f"{table_path}: {len(meds)} entries over {len(table['edges'])} edges of the "
                  f"{table['space']} supernet, {meds[0]:.4f}–{meds[-1]:.4f} ms (median of "
                  f"{m['repeats']}, {m['runtime_version']}, {m['threads']} threads, batch "
                  f"{m['batch']}, {m['device']}){fixed}")
    if genotypes:
        rows = check_prediction(table_path, genotypes)
        report["predictions"] = rows
        if not args.json:
            print(f"{'predicted':>10} {'measured':>10} {'error':>7}   (fastest runs: "
                  f"{'predicted':>9} {'measured':>9} {'error':>7})  genotype")
            for r in rows:
                print(f"{r['predicted_ms']:8.3f}ms {r['measured_ms']:8.3f}ms "
                      f"{100 * r['error']:+6.1f}%   {'':15}{r['predicted_min_ms']:7.3f}ms "
                      f"{r['measured_min_ms']:7.3f}ms {100 * r['error_min']:+6.1f}%   "
                      f"{r['genotype']}")
    if args.json:
        print(json.dumps(report))
    return 0
