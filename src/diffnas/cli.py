"""The ``diffnas`` command line: a thin front over the Python API."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .errors import DiffnasError

DEFAULT_PRESET = "cpu"
# Modules that add subcommands: each has ``register(subparsers)`` which adds its parser(s)
# with ``set_defaults(func=...)``; the function takes the parsed args and returns an exit code.
EXTRA_COMMANDS: tuple[str, ...] = ("diffnas.cli_bench", "diffnas.cli_eval", "diffnas.cli_semantic")


def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DiffnasError(f"{flag} takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help=f"named configuration (default: {DEFAULT_PRESET}); "
                        "`diffnas list` shows all")
    p.add_argument("--method", help="search method (default: darts)")
    p.add_argument("--space", help="search space: darts or nb201")
    p.add_argument("--objective", help="search objective (default: ce)")
    p.add_argument("--dataset", help="fashion-mnist, cifar10, cifar100, digits or folder:PATH")
    p.add_argument("--data-dir", help="where dataset files are (also $DIFFNAS_DATA)")
    p.add_argument("--subset", type=int, help="use only this many training images")
    p.add_argument("--class-fraction", type=float,
                   help="use only this share of every class's training images (0.1: 10 %%)")
    p.add_argument("--image-size", type=int, help="resize images to this size")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--channels", type=int, help="initial channels of the supernet")
    p.add_argument("--layers", type=int,
                   help="cells (DARTS space) or cells per stage (NAS-Bench-201 space)")
    p.add_argument("--order", type=int, choices=(1, 2), help="DARTS order (1 or 2)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda[:N] or auto")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="method option (repeatable), e.g. --opt noise=0.3")
    p.add_argument("--obj-opt", action="append", metavar="KEY=VALUE",
                   help="objective option (repeatable), e.g. --obj-opt mask_ratio=0.6")


def _config(args: argparse.Namespace) -> Any:
    from .config import resolve_config

    return resolve_config(
        args.preset or DEFAULT_PRESET, method=args.method, space=args.space,
        objective=args.objective, dataset=args.dataset, data_dir=args.data_dir,
        subset=args.subset, class_fraction=args.class_fraction, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, channels=args.channels,
        layers=args.layers, order=args.order, seed=args.seed, device=args.device,
        method_args=_kv(args.opt, "--opt") or None,
        objective_args=_kv(args.obj_opt, "--obj-opt") or None)


def cmd_search(args: argparse.Namespace) -> int:
    from .engine.search import search

    cfg = _config(args)
    result = search(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print(json.dumps({"genotype": result.genotype.to_dict(), "run_dir": str(result.run_dir),
                          "val_acc": result.metrics.get("val_acc")}))
    else:
        print(f"genotype: {result.genotype}")
        print(f"run folder: {result.run_dir} (genotype.json, metrics.jsonl, checkpoint.pt)")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .engine.profile import profile

    cfg = _config(args)
    res = profile(cfg, input_size=args.input_size, in_channels=args.in_channels,
                  num_classes=args.num_classes, iters=args.iters, warmup=args.warmup)
    if args.json:
        print(json.dumps(res))
        return 0
    mem = res.get("peak_rss_gib", res.get("peak_cuda_gib"))
    print(f"{res['method']} (order {res['order']}, objective {res['objective']}) in "
          f"{res['space']}: {res['config']}")
    print(f"  median {res['median_s']:.3f} s/iteration over {res['iters']} "
          f"(after {res['warmup']} warm-up), {res['threads']} threads, {res['device']}")
    print(f"  peak memory {mem:.2f} GiB, {res['flops_per_iter'] / 1e9:.1f} GFLOP/iteration "
          f"({res['gflops_per_s']:.1f} GFLOP/s)")
    print(f"  parameters: supernet {res['supernet_params']:,} + objective "
          f"{res['objective_params']:,} ({res['objective']})")
    print(f"  estimated {res['est_epoch_s'] / 60:.1f} min/epoch ({res['steps_per_epoch']} steps), "
          f"{res['est_search_s'] / 3600:.2f} h for {res['epochs']} epochs")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .data import DATASETS
    from .methods import METHODS
    from .methods.parts import describe_parts
    from .objectives import OBJECTIVES
    from .spaces import SPACES

    print("methods:")
    for name, m in sorted(METHODS.items()):
        print(f"  {name:<12} {m.describe_parts()}  ({m.paper})")
    print("parts (any method: --opt SLOT=NAME, then the part's options as --opt KEY=VALUE):")
    for line in describe_parts():
        print(f"  {line}")
    print("spaces:     " + ", ".join(sorted(SPACES)))
    print("objectives: " + ", ".join(sorted(OBJECTIVES)))
    print("datasets:   " + ", ".join(DATASETS) + ", folder:PATH")
    print("presets:")
    for p in PRESETS.values():
        print(f"  {p.name:<16} {p.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffnas",
                                     description="Differentiable neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run an architecture search")
    _add_search_options(p)
    p.add_argument("--out", help="run folder (default: runs/<method>-<space>-<dataset>-seed<N>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("profile", help="time one search iteration on synthetic tensors")
    _add_search_options(p)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("list", help="list methods, spaces, objectives, datasets and presets")
    p.set_defaults(func=cmd_list)
    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DiffnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if out and not (Path(out) / "checkpoint.pt").exists():
            print(f"\ninterrupted before the first epoch finished: {out} holds no checkpoint "
                  "yet; run the same command again", file=sys.stderr)
        else:
            where = f" in {out}" if out else ""
            print(f"\ninterrupted; the last epoch's checkpoint{where} is intact: "
                  "continue with the same command plus --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
