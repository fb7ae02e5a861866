"""Search configuration: one dataclass, plus named presets that match the papers.

Everything a run used is written to its folder as ``config.json``; resuming
compares that file with the requested configuration field by field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import DiffnasError, unknown


class ConfigBase:
    """Shared behaviour of the run configs (:class:`SearchConfig`, ``TrainConfig``): JSON-able
    dicts, checked construction from a dict, and the fields a resume must match."""

    _label = "config"                        # names the config in errors
    _run_neutral: frozenset[str] = frozenset()  # fields that do not change a run's result
    _tuples: tuple[str, ...] = ()            # tuple fields (lists in JSON)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        for k in self._tuples:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        bad = sorted(set(d) - names)
        if bad:
            raise DiffnasError(f"unknown {cls._label} field(s) {', '.join(bad)}; valid: "
                               f"{', '.join(sorted(names))}")
        d = {k: cls._tuple(k, v) if k in cls._tuples else v for k, v in d.items()}
        return cls(**d)

    @classmethod
    def _tuple(cls, name: str, value: Any) -> tuple[Any, ...]:
        """A tuple field from a list, or from the text ``"0.5,0.999"`` (a command line's)."""
        if not isinstance(value, str):
            return tuple(value)
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise DiffnasError(f"{cls._label} field {name} takes comma-separated numbers, "
                               f"got {value!r}") from None

    def replace(self, **changes: Any) -> Any:
        return self.from_dict({**self.to_dict(), **changes})

    def fingerprint_diff(self, other: ConfigBase) -> list[str]:
        """Fields that change the result of a run and differ between the two configs."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self._run_neutral and a[k] != b[k]]

    @staticmethod
    def _check(checks: list[tuple[bool, str]]) -> None:
        for ok, msg in checks:
            if not ok:
                raise DiffnasError(msg)


def device_ok(device: str) -> tuple[bool, str]:
    return (device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
            f"device must be auto, cpu or cuda[:N], got {device!r}")


@dataclass
class SearchConfig(ConfigBase):
    """Every knob of one architecture search (defaults: the DARTS paper's CIFAR-10 search)."""

    method: str = "darts"
    space: str = "darts"
    objective: str | None = None       # None: the method's own (ce for DARTS, mim for semantic)
    dataset: str = "cifar10"
    data_dir: str | None = None
    subset: int | None = None          # use only this many training images (quick runs)
    class_fraction: float | None = None  # per-class subset: this share of every class
    image_size: int | None = None      # resize images (None: the dataset's own size)
    epochs: int = 50
    batch_size: int = 64
    channels: int = 16
    layers: int = 8                    # DARTS: cells in total; NAS-Bench-201: cells per stage
    train_portion: float = 0.5         # share of the training set used for weights (rest: α)
    seed: int = 2
    order: int = 1                     # 1: first-order DARTS, 2: unrolled second order
    # weights: SGD with cosine annealing (DARTS §3.1.1)
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # architecture: Adam
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    # augmentation (whole batches, on the compute device)
    crop_padding: int = 4
    flip: bool | None = None           # None: the dataset's default
    cutout: int = 0
    # torchvision ColorJitter strengths (brightness, contrast, saturation, hue); 0 = off
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # method- and objective-specific options (validated by the method/objective)
    method_args: dict[str, Any] = field(default_factory=dict)
    objective_args: dict[str, Any] = field(default_factory=dict)
    # latency term (objectives/latency.py): table, target_ms, weight, form, estimate, sha256
    latency: dict[str, Any] = field(default_factory=dict)
    select: str | None = None          # a selection after the search: pt (DARTS-PT), or None
    # dominant eigenvalue of ∇²_α L_val (RobustDARTS) every K epochs (0: off, or as the
    # method's early stopping needs), on this many fixed validation batches
    hessian_every: int = 0
    hessian_batches: int = 1
    device: str = "auto"
    sync_bn: bool = False              # torchrun: BN statistics of the global batch (all ranks)

    _run_neutral = frozenset({"device", "data_dir"})
    _tuples = ("a_betas", "color_jitter")

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.channels >= 1, f"channels must be at least 1, got {self.channels}"),
            (self.layers >= 1, f"layers must be at least 1, got {self.layers}"),
            (0 < self.train_portion < 1,
             f"train portion must be in (0, 1), got {self.train_portion}"),
            (self.order in (1, 2), f"order must be 1 or 2, got {self.order}"),
            (self.subset is None or self.subset >= 2,
             f"subset must be at least 2, got {self.subset}"),
            (self.class_fraction is None or 0 < self.class_fraction <= 1,
             f"class fraction must be in (0, 1], got {self.class_fraction}"),
            device_ok(self.device),
            (self.hessian_every >= 0,
             f"hessian every must be 0 (off) or a number of epochs, got {self.hessian_every}"),
            (self.hessian_batches >= 1,
             f"hessian batches must be at least 1, got {self.hessian_batches}"),
        ]
        self._check(checks)
        from .data.augment import check_color_jitter

        check_color_jitter(self.color_jitter)
        # names, checked before any data is loaded (lazy imports: the registries import this)
        from .methods import METHODS
        from .objectives import OBJECTIVES
        from .spaces import SPACES

        if self.method not in METHODS:
            raise unknown("method", self.method, METHODS)
        if self.space not in SPACES:
            raise unknown("search space", self.space, SPACES)
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise unknown("objective", self.objective, OBJECTIVES)
        from .objectives.latency import check_latency_config

        check_latency_config(self.latency)
        if self.select is not None:
            from .engine.select import SELECTIONS

            if self.select not in SELECTIONS:
                raise unknown("selection (--select)", self.select, SELECTIONS)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, **values: Any) -> None:
    """Add a named preset (methods register their paper presets here)."""
    SearchConfig.from_dict(values)  # validates the field names
    PRESETS[name] = Preset(name, description, values)


def resolve_config(preset: str | None = None, **overrides: Any) -> SearchConfig:
    """Start from the defaults, apply a preset, then the explicit overrides (None = unset)."""
    from . import methods  # noqa: F401  (methods register their presets on import)

    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise unknown("preset", preset, PRESETS)
        values.update(PRESETS[preset].values)
    for k, v in overrides.items():
        if v is None:
            continue
        if k in ("method_args", "objective_args", "latency"):
            values[k] = {**values.get(k, {}), **v}
        else:
            values[k] = v
    cfg = SearchConfig.from_dict(values)
    cfg.validate()
    return cfg


def dump_config(cfg: SearchConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


register_preset(
    "darts-cifar10",
    "DARTS paper CIFAR-10 search (§3.1.1): 50 epochs, batch 64, 8 cells, 16 channels, "
    "50/50 train/val split, SGD 0.025→0.001 cosine, Adam 3e-4 for α",
    dataset="cifar10", epochs=50, batch_size=64, channels=16, layers=8, crop_padding=4,
    flip=True)
register_preset(
    "nb201-cifar10",
    "NAS-Bench-201 DARTS search on CIFAR-10: 50 epochs, batch 64, N=5 cells per stage, "
    "16 channels",
    space="nb201", dataset="cifar10", epochs=50, batch_size=64, channels=16, layers=5,
    crop_padding=4, flip=True)
register_preset(
    "cpu",
    "The main job on 2 CPU cores (about 6 minutes): DARTS space on a 2000-image "
    "Fashion-MNIST subset (1000 for w, 1000 for α), 5 cells × 8 channels, 4 epochs",
    dataset="fashion-mnist", subset=2000, epochs=4, batch_size=64, channels=8, layers=5,
    crop_padding=2, flip=True)
register_preset(
    "nb201-cpu",
    "NAS-Bench-201 space on a 6000-image Fashion-MNIST subset, N=2 cells per stage, "
    "8 channels, 8 epochs",
    space="nb201", dataset="fashion-mnist", subset=6000, epochs=8, batch_size=64, channels=8,
    layers=2, crop_padding=2, flip=True)
register_preset(
    "nb201-compare",
    "Method comparison on one CPU core (README, 'Comparing methods'): NAS-Bench-201 space on a "
    "2000-image Fashion-MNIST subset resized to 16×16, N=2 cells per stage, 8 channels, batch "
    "64, 30 epochs; first-order DARTS takes about 2 CPU-minutes, and its cell has settled "
    "(unchanged over the last 3 epochs, α-std ≥ 5× its first-epoch value)",
    space="nb201", dataset="fashion-mnist", subset=2000, image_size=16, epochs=30,
    batch_size=64, channels=8, layers=2, crop_padding=2, flip=True)
register_preset(
    "tiny",
    "Seconds-long smoke test on scikit-learn digits (16×16): 2 epochs, 3 cells × 4 channels",
    dataset="digits", image_size=16, epochs=2, batch_size=32, channels=4, layers=3,
    crop_padding=1)
register_preset(
    "mbconv-cpu",
    "The mbconv (ProxylessNAS chain) space on 2 CPU cores: a 2000-image Fashion-MNIST subset "
    "(28², strides for 28², 4×4 at the end), stem 8 channels (width ×0.25), 2 layers per "
    "stage (11 searched layers), batch 64, 5 epochs",
    space="mbconv", dataset="fashion-mnist", subset=2000, epochs=5, batch_size=64, channels=8,
    layers=2, crop_padding=2, flip=True)
register_preset(
    "mbconv-imagenet",
    "ProxylessNAS' ImageNet search space and schedule (mit-han-lab/proxylessnas "
    "search/imagenet_arch_search.py defaults): 224², stem 32, 4 layers per stage, batch 256, "
    "SGD 0.025 cosine to 0 with Nesterov momentum 0.9, weight decay 4e-5, 40 warm-up epochs "
    "(α fixed) then 120, α Adam 1e-3 betas (0, 0.999) without decay; its 50,000 validation "
    "images held out of ImageNet's 1.28 M (train portion 0.961); pass --dataset folder:PATH. "
    "Not reproduced: α updated every 5 weight steps, binarised paths (each method brings its "
    "own edge policy)",
    space="mbconv", dataset="folder:", image_size=224, epochs=160, batch_size=256, channels=32,
    layers=4, train_portion=0.961, w_lr=0.025, w_lr_min=0.0, w_momentum=0.9,
    w_weight_decay=4e-5, a_lr=1e-3, a_betas=(0.0, 0.999), a_weight_decay=0.0, crop_padding=0,
    flip=True, method_args={"arch_warmup_epochs": 40, "nesterov": True})


def coerce_options(owner: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Merge ``given`` into ``defaults``: unknown keys are an error; strings from the command
    line are converted to the type of the default value."""
    bad = sorted(set(given) - set(defaults))
    if bad:
        valid = ", ".join(sorted(defaults)) or "none"
        raise DiffnasError(f"{owner} has no option {', '.join(bad)}; valid: {valid}")
    out = dict(defaults)
    for k, v in given.items():
        d = defaults[k]
        if isinstance(v, str) and not isinstance(d, str):
            try:
                if isinstance(d, bool):
                    if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(v)
                    v = v.lower() in ("1", "true", "yes")
                elif isinstance(d, int):
                    v = int(v)
                elif isinstance(d, float):
                    v = float(v)
                elif isinstance(d, tuple | list):
                    v = tuple(float(s) for s in v.split(","))
            except ValueError:
                raise DiffnasError(f"{owner} option {k}={v!r}: expected a value of type "
                                   f"{type(d).__name__} like {d!r}") from None
        out[k] = v
    return out
