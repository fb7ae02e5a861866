"""The ``diffnas`` command line: a thin front over the Python API.

This module has ``main``, the shared option helpers and the search commands (``search``,
``profile``, ``list``); each other command group is a module of this package with a
``register(subparsers)``: :mod:`.train` (train, info, export), :mod:`.bench` (bench,
experiment, rank), :mod:`.semantic` (ablation), :mod:`.plot` (plot, draw, cam, landscape),
:mod:`.latency` (latency)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import DiffnasError

DEFAULT_PRESET = "cpu"
# Modules that add subcommands: each has ``register(subparsers)`` which adds its parser(s)
# with ``set_defaults(func=...)``; the function takes the parsed args and returns an exit code.
EXTRA_COMMANDS: tuple[str, ...] = ("diffnas.cli.bench", "diffnas.cli.train", "diffnas.cli.semantic",
                                   "diffnas.cli.plot", "diffnas.cli.latency")


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
    p.add_argument("--space", help="search space: darts, nb201, mbconv (ProxylessNAS chain), "
                                   "darts-imagenet or nb201-imagenet (224→28 ImageNet stem)")
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
                   help="cells (DARTS space), cells per stage (NAS-Bench-201 space) or the "
                        "cap on layers per stage (mbconv: 4 = ProxylessNAS)")
    p.add_argument("--order", type=int, choices=(1, 2), help="DARTS order (1 or 2)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda[:N] or auto")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: batch norm over the global batch, not each rank's "
                        "share (README: data-parallel runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any search config field (JSON values; tuples as 0.5,0.99), e.g. "
                        "--set a_betas=0.5,0.99 or --set cutout=16; the flags above win")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="method option (repeatable), e.g. --opt noise=0.3")
    p.add_argument("--select", help="selection after the search: pt (DARTS-PT; options "
                                    "--opt proj_intv=N, --opt pt_crit=acc|loss)")
    p.add_argument("--hessian-every", type=int, metavar="K",
                   help="log the dominant eigenvalue of the α-Hessian (hessian_eig) every K "
                        "epochs (RobustDARTS; 0 = off, the default)")
    p.add_argument("--hessian-batches", type=int, metavar="N",
                   help="fixed validation batches of --hessian-every (default 1)")
    p.add_argument("--obj-opt", action="append", metavar="KEY=VALUE",
                   help="objective option (repeatable), e.g. --obj-opt mask_ratio=0.6")


def _add_latency_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency", metavar="TABLE.json",
                   help="add the expected latency from this table (`diffnas latency`) to the α "
                        "loss (needs --lat-target)")
    p.add_argument("--lat-target", type=float, metavar="MS",
                   help="latency to aim for, in milliseconds (the table's runtime and batch)")
    p.add_argument("--lat-weight", type=float, metavar="λ", help="weight of the term (default 1)")
    p.add_argument("--lat-form", choices=("log", "hinge"),
                   help="λ·log(E/target) (default) or λ·max(0, E/target − 1)")
    p.add_argument("--lat-estimate", choices=("expected", "derived"),
                   help="the latency the loss sees: E[lat] under the op weights (default) or "
                        "the derived genotype's, with E[lat]'s gradient")
    p.add_argument("--lat-stat", choices=("median", "min"),
                   help="table statistic: each entry's median (default) or fastest run")


def _latency_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``latency`` config entry from the search's latency flags (None: none given); the
    table's sha256 is recorded so a resumed search sees the same table."""
    given = {k: getattr(args, a, None) for k, a in
             (("table", "latency"), ("target_ms", "lat_target"), ("weight", "lat_weight"),
              ("form", "lat_form"), ("estimate", "lat_estimate"), ("stat", "lat_stat"))}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if "table" in given and Path(given["table"]).is_file():
        from ..objectives.latency import file_sha256

        given["sha256"] = file_sha256(given["table"])
    return given


def read_config_file(path: str, cls: Any) -> dict[str, Any]:
    """The fields of a recorded configuration for ``--config``: a run folder (its
    ``config.json``), a JSON file or a YAML file (PyYAML) holding fields of ``cls``
    (:class:`~diffnas.config.SearchConfig` or ``TrainConfig``); unknown fields are an error."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise DiffnasError(f"--config {path}: no such file (give a run folder, a .json or a "
                           ".yaml file)")
    text = file.read_text()
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DiffnasError(f"--config {file} is YAML, which needs PyYAML, and PyYAML is not "
                               "installed (pip install pyyaml, or give a JSON file)") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DiffnasError(f"--config {file} is not valid YAML "
                               f"({str(e).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise DiffnasError(f"--config {file} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise DiffnasError(f"--config {file} must hold one mapping of field: value")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - names)
    if bad:
        raise DiffnasError(f"--config {file}: unknown {cls._label} field(s) {', '.join(bad)}; "
                           f"valid: {', '.join(sorted(names))}")
    return values


def with_config_file(path: str | None, cls: Any, preset: str | None, default_preset: str,
                     flags: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The preset and field values of a run: ``--config`` file values under the command-line
    flags (``None`` = not given; option dicts merge), on top of ``--preset`` when given. Without
    a file the preset defaults to ``default_preset``."""
    if path is None:
        return preset or default_preset, flags
    values = read_config_file(path, cls)
    for k, v in flags.items():
        if v is None:
            continue
        values[k] = ({**values.get(k, {}), **v}
                     if k in ("method_args", "objective_args", "latency") and isinstance(v, dict)
                     else v)
    return preset, values


def _config(args: argparse.Namespace) -> Any:
    from ..config import SearchConfig, resolve_config

    flags = dict(method=args.method, space=args.space,
                 objective=args.objective, dataset=args.dataset, data_dir=args.data_dir,
                 subset=args.subset, class_fraction=args.class_fraction,
                 image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                 channels=args.channels, layers=args.layers, order=args.order, seed=args.seed,
                 device=args.device, select=args.select, sync_bn=args.sync_bn,
                 hessian_every=args.hessian_every, hessian_batches=args.hessian_batches,
                 method_args=_kv(args.opt, "--opt") or None,
                 objective_args=_kv(args.obj_opt, "--obj-opt") or None,
                 latency=_latency_flags(args))
    from ..engine.experiment import json_or_text

    for k, text in _kv(args.set, "--set").items():  # under the dedicated flags
        value, given = json_or_text(text), flags.get(k)
        if k in ("method_args", "objective_args", "latency"):
            if not isinstance(value, dict):
                raise DiffnasError(f"--set {k} takes a JSON object, got {text!r}")
            flags[k] = {**value, **(given or {})}
        elif given is None:
            flags[k] = value
    preset, values = with_config_file(getattr(args, "config", None), SearchConfig, args.preset,
                                      DEFAULT_PRESET, flags)
    return resolve_config(preset, **values)


def cmd_search(args: argparse.Namespace) -> int:
    from ..engine.search import search

    cfg = _config(args)
    on_epoch = None
    if args.tensorboard:
        from ..engine.tensorboard import TensorBoardLogger

        on_epoch = TensorBoardLogger()  # checks for the package before the search starts
    try:
        result = search(cfg, out=args.out, resume=args.resume, progress=not args.no_progress,
                        on_epoch=on_epoch)
    finally:
        if on_epoch is not None:
            on_epoch.close()
    from ..engine.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 prints the result
        return 0
    if args.json:
        print(json.dumps({"genotype": result.genotype.to_dict(), "run_dir": str(result.run_dir),
                          "val_acc": result.metrics.get("val_acc")}))
    else:
        print(f"genotype: {result.genotype}")
        print(f"run folder: {result.run_dir} (genotype.json, metrics.jsonl, checkpoint.pt)")
        from ..engine.search import result_line

        last = result_line(result.genotype, result.metrics.get("early_stop"))
        if last:
            print(last)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..engine.profile import profile

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
    from ..config import PRESETS
    from ..data import DATASETS
    from ..methods import METHODS
    from ..methods.parts import describe_parts
    from ..objectives import OBJECTIVES
    from ..spaces import SPACES

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
    from .. import __version__

    parser = argparse.ArgumentParser(prog="diffnas",
                                     description="Differentiable neural architecture search.")
    parser.add_argument("--version", action="version", version=f"diffnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("search", help="run an architecture search")
    _add_search_options(p)
    _add_latency_options(p)
    p.add_argument("--out", help="run folder (default: runs/<method>-<space>-<dataset>-seed<N>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--config", metavar="FILE",
                   help="start from a recorded configuration: a run folder (its config.json) "
                        "or a JSON/YAML file of config fields; flags override it")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each epoch's scalars and α heatmaps for TensorBoard to "
                        "RUN_FOLDER/tensorboard (extra: pip install 'diffnas[tensorboard]')")
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


def command_lines(parser: argparse.ArgumentParser) -> list[str]:
    """One line per subcommand: its name and help text."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    width = max(len(a.dest) for a in sub._choices_actions)
    return [f"  {a.dest:<{width}}  {a.help}" for a in sub._choices_actions]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print("usage: diffnas COMMAND [options]   (diffnas COMMAND --help for its options; "
              "diffnas --version)\n\ncommands:")
        print("\n".join(command_lines(parser)))
        return 0
    try:
        return args.func(args)
    except DiffnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(args)}", file=sys.stderr)
        return 130


def interrupted_message(args: argparse.Namespace) -> str:
    """What a Ctrl-C leaves behind and how to continue: ``search`` and ``train`` continue with
    ``--resume``; a grid (``experiment``, ``ablation``) by running the same command again."""
    out = getattr(args, "out", None)
    where = f" in {out}" if out else ""
    if hasattr(args, "resume"):
        if out and not (Path(out) / "checkpoint.pt").exists():
            return (f"interrupted before the first epoch finished: {out} holds no checkpoint "
                    "yet; run the same command again")
        return (f"interrupted; the last epoch's checkpoint{where} is intact: continue with the "
                "same command plus --resume")
    if args.command in ("experiment", "ablation"):
        return (f"interrupted; the finished runs{where} are kept and the unfinished one "
                "continues from its last checkpoint: run the same command again")
    return "interrupted"
