"""Subcommands for evaluation networks: ``diffnas train``, ``diffnas info``, ``diffnas export``.

Every genotype argument takes a published name (``diffnas info`` lists them), a JSON file, a
run folder (its genotype.json) or DARTS / NAS-Bench-201 genotype text.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import DiffnasError

DEFAULT_TRAIN_PRESET = "cpu"
# (in_channels, image size, classes) of the datasets `diffnas info --dataset` knows by name
DATASET_SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "fashion-mnist": (1, 28, 10),
                  "digits": (1, 8, 10), "imagenet": (3, 224, 1000)}


def register(sub: Any) -> None:
    """Add ``train``, ``info`` and ``export`` to the ``diffnas`` parser."""
    p = sub.add_parser("train", help="retrain a genotype from scratch and test it")
    p.add_argument("genotype", nargs="?", default=None,
                   help="published name, JSON file, run folder or genotype text "
                        "(default: the preset's, DARTS_V2)")
    p.add_argument("--preset", default=None, help=f"recipe (default: {DEFAULT_TRAIN_PRESET}): "
                   "darts-cifar, darts-imagenet, pdarts-imagenet, semantic-imagenet, "
                   "cdarts-cifar, cdarts-imagenet, cpu, tiny")
    p.add_argument("--dataset", help="fashion-mnist, cifar10, cifar100, digits, folder:PATH or "
                   "imagenet:PATH (train/ and val/ class folders, streamed from disk)")
    p.add_argument("--data-dir", help="where dataset files are (also $DIFFNAS_DATA)")
    p.add_argument("--subset", type=int, help="train on this many images only")
    p.add_argument("--test-subset", type=int, help="test on this many images only")
    p.add_argument("--image-size", type=int, help="resize images (imagenet: the crop size)")
    p.add_argument("--network", choices=("auto", "cifar", "imagenet"))
    p.add_argument("--channels", type=int, help="initial channels (default 36 / 48 / 16)")
    p.add_argument("--layers", type=int, help="cells (default 20 / 14; NB201: cells per stage)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=("cosine", "exponential", "linear", "onecycle"))
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--auxiliary-weight", type=float, help="0 removes the auxiliary head")
    p.add_argument("--drop-path", type=float, help="final drop-path probability")
    p.add_argument("--cutout", type=int)
    p.add_argument("--color-jitter", type=_jitter, metavar="B,C,S,H",
                   help="ColorJitter strengths (brightness, contrast, saturation, hue), e.g. "
                        "0.4,0.4,0.4,0.2; 0,0,0,0 switches it off")
    p.add_argument("--eval-every", type=int, help="test every N epochs (always after the last)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda[:N] or auto")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: batch norm over the global batch, not each rank's "
                        "share (README: data-parallel runs)")
    p.add_argument("--workers", type=int, help="image decoding threads (imagenet:)")
    p.add_argument("--out", help="run folder (default: runs/train-<genotype>-<dataset>-seed<N>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--config", metavar="FILE",
                   help="start from a recorded configuration: a train run folder (its "
                        "config.json) or a JSON/YAML file of train config fields; flags "
                        "override it")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="parameters and multiply-adds of a genotype's network; "
                       "without a genotype, the published genotypes")
    p.add_argument("genotype", nargs="?", default=None,
                   help="published name, JSON file, run folder or genotype text")
    _add_shape_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a trained network (or a genotype's untrained one) "
                       "to TorchScript and ONNX, check it and time it on the CPU")
    p.add_argument("source", help="a `diffnas train` run folder (trained weights), or a "
                   "genotype (untrained network, for latency)")
    _add_shape_options(p)
    p.add_argument("--out", help="output folder (default: SOURCE/export for a run folder, "
                   "else export-<name>)")
    p.add_argument("--format", choices=("all", "torchscript", "onnx"), default="all")
    p.add_argument("--repeats", type=int, default=50, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)


def _jitter(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected four comma-separated numbers B,C,S,H, got {text!r}") from None


def _add_shape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagenet", action="store_true",
                   help="ImageNet mobile setting: 14 cells × 48 channels, 224², 1000 classes")
    p.add_argument("--layers", type=int, help="cells (default 20, ImageNet 14; NB201 5/stage)")
    p.add_argument("--channels", type=int, help="initial channels (default 36, ImageNet 48)")
    p.add_argument("--dataset", help="image shape and classes of " + ", ".join(DATASET_SHAPES))
    p.add_argument("--input-size", type=int, help="image height = width")
    p.add_argument("--in-channels", type=int)
    p.add_argument("--num-classes", type=int)


def _dataset_key(args: argparse.Namespace) -> str | None:
    if not args.dataset:
        return None
    return args.dataset.strip().lower().replace("_", "-").replace("fashionmnist", "fashion-mnist")


def _imagenet(args: argparse.Namespace) -> bool:
    """The ImageNet mobile network: ``--imagenet``, or implied by ``--dataset imagenet`` (as
    ``train --network auto`` does)."""
    return bool(args.imagenet) or _dataset_key(args) == "imagenet"


def _shape(args: argparse.Namespace) -> tuple[int, int, int]:
    chans, size, classes = DATASET_SHAPES["imagenet" if _imagenet(args) else "cifar10"]
    if args.dataset:
        key = _dataset_key(args)
        if key not in DATASET_SHAPES:
            raise DiffnasError(f"diffnas info/export knows the shape of datasets "
                               f"{', '.join(DATASET_SHAPES)}, not {args.dataset!r}; give "
                               "--input-size, --in-channels and --num-classes instead")
        chans, size, classes = DATASET_SHAPES[key]
    return (args.in_channels or chans, args.input_size or size, args.num_classes or classes)


def _network(args: argparse.Namespace, spec: str) -> tuple[Any, Any]:
    from ..nets import build_network
    from ..spaces import parse_genotype

    genotype = parse_genotype(spec)
    if genotype.space == "mbconv" and not (args.dataset or args.input_size):
        args.imagenet = True  # a mobile network: ImageNet's 224² and 1000 classes by default
    chans, size, classes = _shape(args)
    net = build_network(genotype, imagenet=_imagenet(args), channels=args.channels,
                        layers=args.layers, num_classes=classes, in_channels=chans,
                        input_size=size)
    return genotype, net


def cmd_info(args: argparse.Namespace) -> int:
    from ..nets import count_cost
    from ..nets.registry import REGISTRY, lookup

    if args.genotype is None:
        if args.json:
            print(json.dumps({n: {"space": e.genotype.space, "source": e.source,
                                  "searched_on": e.searched_on, "reported": e.reported,
                                  "genotype": str(e.genotype)} for n, e in REGISTRY.items()}))
            return 0
        width = max(map(len, REGISTRY))
        for name, e in REGISTRY.items():
            rep = "; ".join(f"{k}: " + ", ".join(f"{m} {v}" for m, v in r.items())
                            for k, r in e.reported.items())
            print(f"{name:<{width}} {e.genotype.space:<6} {e.source}"
                  + (f"  [{rep}]" if rep else ""))
        return 0
    genotype, net = _network(args, args.genotype)
    cost = count_cost(net)
    entry = lookup(args.genotype)
    out: dict[str, Any] = {"genotype": str(genotype), "network": type(net).__name__,
                           "channels": getattr(net, "channels", None),
                           "layers": getattr(net, "layers", None),
                           "num_classes": getattr(net, "num_classes", None), **cost.to_dict()}
    if entry is not None:
        out["name"] = entry.name
        out["source"] = entry.source
        setting = "imagenet" if _imagenet(args) else "cifar10"
        default = (args.channels is None and args.layers is None
                   and _dataset_key(args) in (None, setting)
                   and args.input_size is None and args.num_classes is None)
        if default and setting in entry.reported:
            out["reported"] = entry.reported[setting]
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out.get('name', 'genotype')}: {genotype}")
    why = (" (ImageNet mobile setting, implied by --dataset imagenet)"
           if _imagenet(args) and not args.imagenet else "")
    unit = "layers" if genotype.space == "mbconv" else "cells"
    print(f"  counted: {out['network']}{why}: {out['channels']} channels, {out['layers']} "
          f"{unit}, {cost.in_channels}×{cost.input_size}² input, {out['num_classes']} classes")
    print(f"  parameters {cost.params_m:.3f} M (auxiliary head excluded; it adds "
          f"{cost.params_aux / 1e6:.3f} M)")
    print(f"  multiply-adds (one image) {cost.madds_m:.1f} M in convolutions and linear layers; "
          f"{cost.madds_all_m:.1f} M also counting BN, ReLU, pooling and biases (as ptflops)")
    if "reported" in out:
        print("  published: " + ", ".join(f"{k} {v}" for k, v in out["reported"].items())
              + f" ({entry.source.split(';')[0]})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.train import TrainConfig, resolve_train_config, train
    from . import with_config_file

    flags = dict(
        genotype=args.genotype, dataset=args.dataset,
        data_dir=args.data_dir, subset=args.subset, test_subset=args.test_subset,
        image_size=args.image_size, network=args.network, channels=args.channels,
        layers=args.layers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        auxiliary_weight=args.auxiliary_weight, drop_path=args.drop_path, cutout=args.cutout,
        color_jitter=args.color_jitter, eval_every=args.eval_every, seed=args.seed,
        device=args.device, amp=False if args.no_amp else None, workers=args.workers,
        sync_bn=args.sync_bn)
    preset, values = with_config_file(args.config, TrainConfig, args.preset,
                                      DEFAULT_TRAIN_PRESET, flags)
    if args.genotype is not None:
        values.pop("genotype_source", None)  # a new genotype: the recorded source is not its
    cfg = resolve_train_config(preset, **values)
    res = train(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    from ..engine.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 prints the result
        return 0
    r = res.result
    if args.json:
        print(json.dumps(r))
    else:
        top5 = f", top-5 {r['test_top5']:.4f}" if "test_top5" in r else ""
        print(f"test accuracy {r['test_acc']:.4f}{top5} on {r['test_images']} {r['dataset']} "
              f"test images after {r['epochs']} epochs (best {r['best_test_acc']:.4f}, epoch "
              f"{r['best_epoch'] + 1}); {r['params_m']:.3f} M parameters, "
              f"{r['madds_m']:.1f} M multiply-adds")
        print(f"run folder: {res.run_dir} (result.json, metrics.jsonl, checkpoint.pt)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.export import FORMATS, export_network
    from ..engine.train import load_trained

    src = Path(args.source)
    if (src / "network.json").is_file():
        net, _ = load_trained(src)
        trained = True
        out = Path(args.out) if args.out else src / "export"
    else:
        _, net = _network(args, args.source)
        trained = False
        name = src.name if src.exists() else args.source
        out = Path(args.out) if args.out else Path(f"export-{name.lower()[:40]}")
    formats = FORMATS if args.format == "all" else (args.format,)
    rep = export_network(net, out, formats=formats, repeats=args.repeats, warmup=args.warmup,
                         threads=args.threads)
    rep["trained"] = trained
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{'trained' if trained else 'untrained (random weights)'} network, input "
          f"{rep['input_shape']}, CPU latency at batch 1 (median of {rep['repeats']}, "
          f"{rep['threads']} threads):")
    print(f"  pytorch      {rep['pytorch']['latency_ms']:8.2f} ms")
    for f in formats:
        r = rep[f]
        print(f"  {f:<12} {r['latency_ms']:8.2f} ms  {r['path']}  (max |Δ| vs PyTorch "
              f"{r['max_abs_diff']:.2e})")
    return 0
