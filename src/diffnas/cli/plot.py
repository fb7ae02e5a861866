"""Figure subcommands: ``diffnas plot``, ``draw``, ``cam`` and ``landscape`` (extra
``diffnas[plot]``); they read run folders (:mod:`diffnas.analysis`) and never run a search."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import DiffnasError


def _epochs(text: str) -> list[int]:
    try:
        return [int(v) - 1 for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 1,10,50, got {text!r}") from None


def register(sub: Any) -> None:
    """Add ``plot``, ``draw``, ``cam`` and ``landscape`` to the ``diffnas`` parser."""
    p = sub.add_parser("plot", help="figures of a search run (α heatmaps and evolution, counts, "
                       "α-std, losses, accuracies) or an experiment (mean ± std per method)")
    p.add_argument("run", help="search run folder or experiment folder")
    p.add_argument("--out", help="output folder (default: RUN/figures)")
    p.add_argument("--epochs", type=_epochs, help="epochs of the α heatmaps, 1-based, e.g. "
                   "1,25,50 (default: four spread over the run)")
    p.add_argument("--size", default="1200x700", help="PNG size WIDTHxHEIGHT in pixels")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("draw", help="draw a genotype's cells with Graphviz (PNG, SVG, PDF)")
    p.add_argument("genotype", help="published name, JSON file, run folder or genotype text")
    p.add_argument("--out", help="output file stem (default: cell-<name>); DARTS cells add "
                   "_normal / _reduce")
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("cam", help="Grad-CAM and LayerCAM heatmaps of a trained network")
    p.add_argument("run", help="a `diffnas train` run folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files")
    src.add_argument("--dataset", help="take test images of this dataset")
    p.add_argument("--n", type=int, default=8, help="test images with --dataset (default 8)")
    p.add_argument("--data-dir", help="where dataset files are")
    p.add_argument("--layer", help="module name to explain (default: the last cell), e.g. "
                   "cells.7")
    p.add_argument("--class", dest="target", type=int,
                   help="class index to explain (default: the predicted class)")
    p.add_argument("--seed", type=int, default=0, help="which test images (--dataset)")
    p.add_argument("--size", help="PNG size WIDTHxHEIGHT (default: 660 × 200 per image)")
    p.add_argument("--out", help="PNG file (default: RUN/figures/cam.png)")
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("landscape", help="loss landscape of a trained network or a search's "
                       "supernet along two filter-normalised directions (+ 1-D along α)")
    p.add_argument("run", help="a train run folder or a search run folder")
    p.add_argument("--grid", type=int, default=21, help="points per axis (default 21)")
    p.add_argument("--range", dest="span", type=float, default=1.0,
                   help="coordinates from -R to R (default 1)")
    p.add_argument("--batches", type=int, default=2, help="fixed training batches (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="directions and batches")
    p.add_argument("--alpha-direction", default="auto", choices=("auto", "hessian", "random"),
                   help="1-D α landscape direction; auto: the Hessian's dominant eigenvector "
                        "when the run logged hessian_eig, else random")
    p.add_argument("--alpha-range", type=float, default=1.0, help="t from -R to R along α")
    p.add_argument("--vmax", type=float, default=10.0,
                   help="draw the loss clipped at this value (default 10, as Li et al.)")
    p.add_argument("--size", default="1400x600", help="PNG size WIDTHxHEIGHT in pixels")
    p.add_argument("--out", help="output folder (default: RUN/figures)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_landscape)


def _written(paths: Any) -> None:
    for path in paths:
        print(f"wrote {path} (+ {path.with_suffix('.json').name})")


def cmd_plot(args: argparse.Namespace) -> int:
    from ..analysis import parse_size, pyplot
    from ..analysis.curves import plot

    pyplot()
    paths = plot(args.run, args.out, parse_size(args.size), args.epochs)
    if not paths:
        raise DiffnasError(f"{args.run}: its metrics hold nothing to plot")
    _written(paths)
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    from ..analysis.cells import draw

    for path in draw(args.genotype, args.out):
        print(f"wrote {path} (+ .svg, .pdf, .gv, .json)")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from ..analysis import parse_size, pyplot
    from ..analysis.cam import cam_run

    pyplot()
    if args.n < 1:
        raise DiffnasError(f"--n needs at least 1 image, got {args.n}")
    path = cam_run(args.run, args.out, args.images or (), args.dataset, args.n, args.layer,
                   args.target, parse_size(args.size) if args.size else None, args.data_dir,
                   args.seed)
    _written([path])
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from ..analysis import parse_size, pyplot
    from ..analysis.landscape import landscape

    pyplot()
    res = landscape(args.run, args.out, args.grid, args.span, args.batches, args.batch_size,
                    args.seed, args.alpha_direction, args.alpha_range, parse_size(args.size),
                    progress=not args.no_progress, vmax=args.vmax)
    _written([res["landscape"]])
    if "alpha" in res:
        _written([res["alpha"]["path"]])
        print(f"α landscape direction: {res['alpha']['describe']}")
    return 0
