"""Retraining a genotype from scratch: the evaluation recipe of the DARTS papers.

``train(preset="darts-cifar", genotype="DARTS_V2")`` builds the genotype's evaluation network
(:mod:`diffnas.nets`), trains it with SGD and the recipe's learning-rate schedule, auxiliary
loss, drop-path, cutout and gradient clipping, evaluates on the dataset's test split and writes
a run folder: ``config.json``, ``genotype.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic, every epoch), ``log.txt`` and ``result.json`` (parameters without
the auxiliary head, multiply-adds, and the test accuracy twice: ``test_acc`` is the final
epoch's, ``best_test_acc`` the best over the evaluated epochs, at ``best_epoch`` (0-based) —
the figure the reference codes log as ``best_acc`` and most DARTS papers report; with more
than 10 classes also top-5, ``test_top5`` (final) and ``best_test_top5`` (the best over the
epochs, tracked apart from top-1 as Semantic-DARTS' and PC-DARTS' ImageNet scripts do)).
Every epoch re-seeds its randomness from
``(seed, epoch)`` and the checkpoint holds the rest, so ``resume=True`` continues exactly as the
uninterrupted run would have (on CPU). It trains in channels-last layout; on CUDA with mixed
precision (bf16 where supported, else fp16 with loss scaling).

Recipes (``TRAIN_PRESETS``), from the papers' reference code:

* ``darts-cifar`` — DARTS §A.1.2 / ``train.py``: 600 epochs, batch 96, SGD lr 0.025 cosine to
  0 (stepped per epoch), momentum 0.9, weight decay 3e-4, cutout 16, drop-path 0.2 (ramped
  linearly from 0 over the epochs), auxiliary weight 0.4, gradient clipping 5; 36 × 20 cells.
* ``darts-imagenet`` — DARTS §A.2 / ``train_imagenet.py``: 250 epochs, batch 128, lr 0.1 decayed
  ×0.97 per epoch, weight decay 3e-5, label smoothing 0.1, auxiliary 0.4, clipping 5, no
  drop-path; 48 × 14 cells, 224×224 random-resized crops + flips.
* ``pdarts-imagenet`` — P-DARTS / PC-DARTS ``train_imagenet.py``: as above but batch 256 and the
  learning rate decayed linearly to 0 over 250 epochs (its last 5 epochs on a 5× smaller slope,
  as PC-DARTS' ``adjust_lr``); their code adds a 5-epoch linear warm-up only for batches above
  256 (``--warmup-epochs 5`` with ``--batch-size 1024 --lr 0.5`` for that variant).
* ``semantic-imagenet`` — Semantic-DARTS ``train_imagenet_dist.py`` (AlbertiPot/Semantic-DARTS,
  commit d525eed): 250 epochs, batch 1024, lr 0.5 decayed linearly (``adjust_lr``, as
  PC-DARTS) with a 5-epoch warm-up ((epoch + 1)/5 of the decayed rate), wd 3e-5, label
  smoothing 0.1, no auxiliary head, no drop-path, clipping 5.
* ``cdarts-cifar`` — CDARTS retraining (``scripts/run_retrain_cifar_1gpu.sh`` of CVPR-2020/CDARTS,
  commit baaf64a, with ``retrain.py`` / ``lib/config.py`` of microsoft/Cream CDARTS): 600
  epochs, batch 128, lr 0.025 cosine to 0, no warm-up, wd 5e-4, drop-path 0.3, auxiliary
  0.4, cutout 16, no label smoothing, clipping 5; 36 × 20 cells.
* ``cdarts-imagenet`` — CDARTS ``scripts/run_retrain_imagenet.sh``: 250 epochs, 8 GPUs × 128 =
  batch 1024 (synchronised BN), lr 0.5 cosine with a 5-epoch warm-up (``retrain.py`` warms up
  when the total batch exceeds 256), wd 3e-5, label smoothing 0.1, auxiliary 0.4, no
  drop-path, clipping 5; 48 × 14 cells. (The search preset of the same name is the search.)
* ``cpu`` — Fashion-MNIST in minutes on 2 CPU cores (the main job's retrain): a small network
  (8 × 5 cells) on 45,000 images for 3 epochs, one-cycle lr and label smoothing (the
  schedule for a budget of a few passes), no regularisers meant for 600-epoch runs.

Every ImageNet recipe above applies ``ColorJitter(0.4, 0.4, 0.4, 0.2)`` after the crop and flip,
as all five reference scripts do (``color_jitter``, batched: :mod:`diffnas.data.augment`).

Deviations (paper/reference says X, we do Z because ...):

* Semantic-DARTS ImageNet splits its batch of 1024 over GPUs with DDP and per-GPU BN
  statistics; one device here normalises over the whole batch (per-GPU batch unknown).
* CDARTS ``retrain.py`` overrides the script's CIFAR wd/drop-path by network size (< 3.0 M:
  3e-4/0.2; 3.0–3.5 M: 3e-4/0.3; else 5e-4/0.3); ``cdarts-cifar`` holds the values for its
  published cell (3.86 M): pass ``--weight-decay``/``--drop-path`` for a smaller cell.
* CDARTS builds its ImageNet network with its own stem (stem multiplier 1); ``cdarts-imagenet``
  trains the DARTS mobile skeleton, so the genotypes of all methods are compared alike.
* CDARTS ``retrain.py`` reads the rate with ``CosineAnnealingLR.get_lr()`` and overwrites it in
  the warm-up; with torch >= 1.4's chainable schedulers the factors then compound (0.1, 0.04,
  0.024, 0.0192, then cosine from 0.0192, checked with torch 2.13), with the closed form of
  torch 1.2–1.3 (its SETUP.md asks for >= 1.2) they do not. We follow the intended schedule,
  cosine from 0.5 with the 5-epoch warm-up that the script's arguments ask for.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigBase, device_ok
from ..data import BatchAugment, BatchStream, load_dataset
from ..data.augment import check_color_jitter
from ..data.imagenet import ImageFolderStream
from ..errors import DiffnasError, unknown
from ..methods.base import accuracy
from ..nets import build_network, count_cost
from ..nets.registry import lookup
from ..spaces import parse_genotype
from . import distributed
from .runfolder import RunFolder
from .search import epoch_seed, peak_memory_gib, resolve_device

SCHEDULES = ("cosine", "exponential", "linear", "onecycle")
#: one-cycle (Smith & Topin 2019; torch OneCycleLR defaults): share of the steps rising from
#: lr/25 to lr, then cosine to lr/(25·1e4), both halves cosine-shaped, stepped per batch
ONECYCLE_PCT, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4
NETWORKS = ("auto", "cifar", "imagenet")


@dataclass
class TrainConfig(ConfigBase):
    """Every knob of one retraining run (defaults: the DARTS CIFAR-10 recipe)."""

    genotype: str = "DARTS_V2"          # registry name, JSON, run folder or genotype text
    genotype_source: str | None = None  # what the user passed (``genotype`` is then its text)
    dataset: str = "cifar10"            # a built-in dataset, folder:PATH or imagenet:PATH
    data_dir: str | None = None
    subset: int | None = None           # train on this many images only (quick runs)
    test_subset: int | None = None      # evaluate on this many test images only
    image_size: int | None = None       # resize (in-memory datasets) / crop size (imagenet:)
    network: str = "auto"               # cifar, imagenet, or auto (imagenet for imagenet:)
    channels: int | None = None         # None: the skeleton's default (36 / 48 / 16)
    layers: int | None = None           # None: the skeleton's default (20 / 14 / 5)
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    schedule: str = "cosine"
    lr_gamma: float = 0.97              # exponential schedule: lr × gamma per epoch
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    auxiliary_weight: float = 0.4       # 0: no auxiliary head
    drop_path: float = 0.2              # final drop-path probability (linear ramp from 0)
    cutout: int = 16
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # b, c, s, hue
    crop_padding: int = 4
    flip: bool | None = None            # None: the dataset's default
    eval_every: int = 1                 # evaluate every N epochs (and always after the last)
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    amp: bool = True                    # mixed precision (CUDA only)
    channels_last: bool = True          # channels-last layout (see Trainer)
    workers: int = 8                    # decoding threads for imagenet: folders
    sync_bn: bool = False               # torchrun: BN statistics of the global batch (all ranks)

    _label = "train config"
    _tuples = ("color_jitter",)
    # what does not change the result: device, data location, threads, labels
    _run_neutral = frozenset({"device", "data_dir", "workers", "genotype_source",
                              "eval_batch_size"})

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.schedule in SCHEDULES,
             f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.network in NETWORKS,
             f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}"),
            (0 <= self.drop_path < 1, f"drop-path must be in [0, 1), got {self.drop_path}"),
            (0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.auxiliary_weight >= 0,
             f"auxiliary weight must be >= 0, got {self.auxiliary_weight}"),
            (self.channels is None or self.channels >= 2,
             f"channels must be at least 2, got {self.channels}"),
            (self.layers is None or self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1, got {self.subset}"),
            (self.test_subset is None or self.test_subset >= 1,
             f"test subset must be >= 1, got {self.test_subset}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            device_ok(self.device),
        ]
        self._check(checks)
        check_color_jitter(self.color_jitter)


TRAIN_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
IMAGENET_JITTER = (0.4, 0.4, 0.4, 0.2)  # ColorJitter of every DARTS-family ImageNet script


def register_train_preset(name: str, description: str, **values: Any) -> None:
    """Add a named retraining recipe (the field names are checked)."""
    TrainConfig.from_dict(values)
    TRAIN_PRESETS[name] = (description, values)


register_train_preset(
    "darts-cifar",
    "DARTS CIFAR-10 evaluation (Liu et al. 2019, §A.1.2): 36×20 cells, 600 epochs, batch 96, "
    "SGD 0.025 cosine, wd 3e-4, cutout 16, drop-path 0.2, auxiliary 0.4, clip 5",
    dataset="cifar10", epochs=600, batch_size=96, lr=0.025, lr_min=0.0, schedule="cosine",
    momentum=0.9, weight_decay=3e-4, grad_clip=5.0, cutout=16, drop_path=0.2,
    auxiliary_weight=0.4, crop_padding=4, flip=True, network="cifar")
register_train_preset(
    "darts-imagenet",
    "DARTS ImageNet mobile setting (§A.2, train_imagenet.py): 48×14 cells, 224², 250 epochs, "
    "batch 128, lr 0.1 ×0.97/epoch, wd 3e-5, label smoothing 0.1, auxiliary 0.4, clip 5, "
    "ColorJitter(0.4, 0.4, 0.4, 0.2); pass --dataset imagenet:PATH",
    dataset="imagenet:", network="imagenet", image_size=224, epochs=250, batch_size=128,
    lr=0.1, schedule="exponential", lr_gamma=0.97, momentum=0.9, weight_decay=3e-5,
    label_smoothing=0.1, auxiliary_weight=0.4, drop_path=0.0, grad_clip=5.0, cutout=0,
    crop_padding=0, flip=True, color_jitter=IMAGENET_JITTER)
register_train_preset(
    "pdarts-imagenet",
    "P-DARTS/PC-DARTS ImageNet (train_imagenet.py): as darts-imagenet but batch 256 and a "
    "linear decay to 0 (last 5 epochs at 1/5 slope); pass --dataset imagenet:PATH",
    dataset="imagenet:", network="imagenet", image_size=224, epochs=250, batch_size=256,
    lr=0.1, schedule="linear", momentum=0.9, weight_decay=3e-5, label_smoothing=0.1,
    auxiliary_weight=0.4, drop_path=0.0, grad_clip=5.0, cutout=0, crop_padding=0, flip=True,
    color_jitter=IMAGENET_JITTER)
register_train_preset(
    "semantic-imagenet",
    "Semantic-DARTS ImageNet (AlbertiPot/Semantic-DARTS train_imagenet_dist.py, commit d525eed): "
    "48×14 cells, 224², 250 epochs, batch 1024, lr 0.5 linear decay (last 5 epochs at 1/5 "
    "slope) after 5 warm-up epochs, wd 3e-5, label smoothing 0.1, no auxiliary head, clip 5, "
    "ColorJitter(0.4, 0.4, 0.4, 0.2); pass --dataset imagenet:PATH",
    dataset="imagenet:", network="imagenet", image_size=224, epochs=250, batch_size=1024,
    lr=0.5, schedule="linear", warmup_epochs=5, momentum=0.9, weight_decay=3e-5,
    label_smoothing=0.1, auxiliary_weight=0.0, drop_path=0.0, grad_clip=5.0, cutout=0,
    crop_padding=0, flip=True, color_jitter=IMAGENET_JITTER)
register_train_preset(
    "cdarts-cifar",
    "CDARTS CIFAR retraining (CVPR-2020/CDARTS scripts/run_retrain_cifar_1gpu.sh, commit "
    "baaf64a; microsoft/Cream CDARTS retrain.py): 36×20 cells, 600 epochs, batch 128, lr 0.025 "
    "cosine, wd 5e-4, drop-path 0.3, auxiliary 0.4, cutout 16, no label smoothing, clip 5",
    dataset="cifar10", network="cifar", epochs=600, batch_size=128, lr=0.025, lr_min=0.0,
    schedule="cosine", warmup_epochs=0, momentum=0.9, weight_decay=5e-4, grad_clip=5.0,
    cutout=16, drop_path=0.3, auxiliary_weight=0.4, label_smoothing=0.0, crop_padding=4,
    flip=True)
register_train_preset(
    "cdarts-imagenet",
    "CDARTS ImageNet retraining (CVPR-2020/CDARTS scripts/run_retrain_imagenet.sh, commit "
    "baaf64a; microsoft/Cream CDARTS retrain.py): 48×14 cells, 224², 250 epochs, batch 1024 "
    "(8 GPUs × 128), lr 0.5 cosine after 5 warm-up epochs, wd 3e-5, label smoothing 0.1, "
    "auxiliary 0.4, clip 5, ColorJitter(0.4, 0.4, 0.4, 0.2); pass --dataset imagenet:PATH",
    dataset="imagenet:", network="imagenet", image_size=224, epochs=250, batch_size=1024,
    lr=0.5, lr_min=0.0, schedule="cosine", warmup_epochs=5, momentum=0.9, weight_decay=3e-5,
    label_smoothing=0.1, auxiliary_weight=0.4, drop_path=0.0, grad_clip=5.0, cutout=0,
    crop_padding=0, flip=True, color_jitter=IMAGENET_JITTER)
register_train_preset(
    "cpu",
    "Fashion-MNIST on 2 CPU cores in about 4.5 minutes: 8×5 cells, 45,000 training images, "
    "3 epochs, batch 128, one-cycle lr (peak 0.2, per batch), label smoothing 0.1, no cutout, "
    "drop-path or auxiliary head (too short a run to need them); tested once, after the last "
    "epoch, on the 10,000 test images",
    dataset="fashion-mnist", subset=45_000, network="cifar", channels=8, layers=5, epochs=3,
    batch_size=128, lr=0.2, schedule="onecycle", weight_decay=3e-4, label_smoothing=0.1,
    cutout=0, drop_path=0.0, auxiliary_weight=0.0, crop_padding=2, flip=True, eval_every=3,
    eval_batch_size=500)
register_train_preset(
    "tiny",
    "Seconds-long smoke test on scikit-learn digits: 4×3 cells, 2 epochs",
    dataset="digits", network="cifar", channels=4, layers=3, epochs=2, batch_size=32,
    lr=0.05, cutout=2, crop_padding=1, drop_path=0.1)


def resolve_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the preset, then explicit overrides (``None`` = not given)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in TRAIN_PRESETS:
            raise unknown("train preset", preset, TRAIN_PRESETS)
        values.update(TRAIN_PRESETS[preset][1])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig.from_dict(values)
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------- schedule
def lr_at(cfg: TrainConfig, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The learning rate of ``epoch`` (stepped per epoch, as the DARTS-family code does); the
    ``onecycle`` schedule is stepped per batch: ``step`` of the epoch's ``steps``."""
    e, n = epoch, cfg.epochs
    if cfg.schedule == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR, anneal "cos"
        i, total = e * steps + step, n * steps
        lo, hi = cfg.lr / ONECYCLE_DIV, cfg.lr
        rise_end = float(ONECYCLE_PCT * total) - 1
        if i <= rise_end:
            a, b, u = lo, hi, i / rise_end
        else:
            a, b = hi, lo / ONECYCLE_FINAL_DIV
            u = (i - rise_end) / max(total - 1 - rise_end, 1e-12)
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * u))
    if cfg.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs), eta_min = lr_min
        lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * e / n))
    elif cfg.schedule == "exponential":  # StepLR(step=1, gamma)
        lr = cfg.lr * cfg.lr_gamma ** e
    else:  # PC-DARTS adjust_lr: linear to 0, the last 5 epochs on a 5× smaller slope
        tail = min(5, n - 1)
        if n - e > tail:
            lr = cfg.lr * (n - tail - e) / (n - tail)
        else:
            lr = cfg.lr * (n - e) / ((n - tail) * 5)
    if e < cfg.warmup_epochs:
        lr *= (e + 1) / cfg.warmup_epochs
    return lr


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Optimiser, schedule, mixed precision and the training step of one network."""

    def __init__(self, cfg: TrainConfig, net: nn.Module, device: torch.device) -> None:
        self.cfg, self.net, self.device = cfg, net, device
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        cuda = device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if cuda and cfg.amp:
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        self.scaler = (torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16
                       else None)
        # channels-last on CPU too (~1.5× fewer CPU-seconds per step, BENCHMARKS.md): the ops
        # avoid torch 2.13's corrupting CPU backward of a stride-2 1×1 conv in that layout
        # (FactorizedReduce subsamples first) and keep gradients channels-last (ops.subsample)
        self.memory_format = (torch.channels_last if cfg.channels_last
                              else torch.contiguous_format)
        net.to(memory_format=self.memory_format)

    def begin_epoch(self, epoch: int, steps: int = 1) -> float:
        """Set the epoch's learning rate (its first step's, for ``onecycle``) and drop-path."""
        lr = self.set_lr(epoch, 0, steps)
        self.net.drop_path_prob = self.cfg.drop_path * epoch / self.cfg.epochs  # DARTS ramp
        return lr

    def set_lr(self, epoch: int, step: int = 0, steps: int = 1) -> float:
        lr = lr_at(self.cfg, epoch, step, steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x.contiguous(memory_format=self.memory_format)
        if self.amp_dtype is None:
            return self.net.forward_with_aux(x)
        with torch.autocast("cuda", dtype=self.amp_dtype):
            return self.net.forward_with_aux(x)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One SGD step on an augmented batch; returns (loss, accuracy)."""
        cfg = self.cfg
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        logits, aux = self._forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        total = loss
        if aux is not None and cfg.auxiliary_weight > 0:
            total = total + cfg.auxiliary_weight * F.cross_entropy(
                aux.float(), y, label_smoothing=cfg.label_smoothing)
        ddp = distributed.current()  # torchrun: the gradients averaged over the ranks
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            if ddp is not None:
                ddp.average_param_grads(self.net.parameters())
            self.scaler.unscale_(self.opt)
        else:
            total.backward()
            if ddp is not None:
                ddp.average_param_grads(self.net.parameters())
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return float(total.detach()), accuracy(logits.detach(), y)

    @torch.no_grad()
    def evaluate(self, stream: Any, aug: BatchAugment) -> tuple[float, float, float]:
        """Cross-entropy, top-1 and top-5 accuracy over a whole split (eval mode, no
        augmentation; top-5 is 1 with 5 classes or fewer)."""
        self.net.eval()
        total, loss_sum, correct, correct5 = 0, 0.0, 0, 0
        ddp = distributed.current()  # torchrun: batches round-robin over the ranks
        for i, (x, y) in enumerate(stream.epoch(0)):
            if ddp is not None and getattr(stream, "shard", None) is None and not ddp.mine(i):
                continue  # (a sharded stream yields this rank's batches only)
            x = aug(x, train=False).contiguous(memory_format=self.memory_format)
            if self.amp_dtype is None:
                logits = self.net(x)
            else:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    logits = self.net(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct += int((top5[:, 0] == y).sum())
            correct5 += int((top5 == y[:, None]).any(dim=1).sum())
            total += len(y)
        self.net.train()
        if ddp is not None:
            total, loss_sum, correct, correct5 = ddp.sum_floats(
                [total, loss_sum, correct, correct5])
        n = max(1, total)
        return loss_sum / n, correct / n, correct5 / n

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.opt.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


# ------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    """Train and test batch streams plus what the network needs to know about the images."""

    train: Any
    test: Any
    aug: BatchAugment
    in_channels: int
    image_size: int
    num_classes: int
    n_train: int
    n_test: int


def load_train_data(cfg: TrainConfig, device: torch.device) -> TrainData:
    """Streams for ``cfg.dataset``: in-memory datasets (``load_dataset``) or an ImageNet-style
    folder streamed from disk (``imagenet:PATH``)."""
    if cfg.dataset.startswith("imagenet:"):
        root = cfg.dataset[len("imagenet:"):]
        if not root:
            raise DiffnasError("dataset 'imagenet:' needs the folder holding train/ and val/, "
                               "e.g. --dataset imagenet:/data/imagenet")
        size = cfg.image_size or 224
        train = ImageFolderStream(root, "train", cfg.batch_size, size, cfg.seed, cfg.workers,
                                  device, cfg.subset)
        test = ImageFolderStream(root, "test", cfg.eval_batch_size, size, cfg.seed, cfg.workers,
                                 device, cfg.test_subset)
        aug = BatchAugment(train.mean, train.std, crop_padding=0,
                           flip=True if cfg.flip is None else cfg.flip, cutout=cfg.cutout,
                           color_jitter=cfg.color_jitter)
        return TrainData(train, test, aug, 3, size, train.num_classes, train.num_samples,
                         test.num_samples)
    tr = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size)
    te = load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, image_size=cfg.image_size)
    if cfg.subset is not None and cfg.subset < len(tr):
        tr = tr.subset(cfg.subset, cfg.seed)
    if cfg.test_subset is not None and cfg.test_subset < len(te):
        te = te.subset(cfg.test_subset, cfg.seed)
    images = tr.images.to(device)
    labels = tr.labels.to(device)
    train = BatchStream(images, labels, None, cfg.batch_size, seed=cfg.seed, device=device)
    test = BatchStream(te.images.to(device), te.labels.to(device), None, cfg.eval_batch_size,
                       seed=0, drop_last=False, device=device)
    aug = BatchAugment(tr.mean, tr.std, crop_padding=cfg.crop_padding,
                       flip=tr.flip if cfg.flip is None else cfg.flip, cutout=cfg.cutout,
                       color_jitter=cfg.color_jitter)
    return TrainData(train, test, aug, tr.in_channels, tr.image_size, tr.num_classes, len(tr),
                     len(te))


def network_args(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """The :func:`~diffnas.nets.build_network` arguments of ``cfg``'s network for ``data``
    (written to the run folder as ``network.json``)."""
    imagenet = cfg.network == "imagenet" or (cfg.network == "auto"
                                             and cfg.dataset.startswith("imagenet:"))
    return {"genotype": cfg.genotype, "imagenet": imagenet, "channels": cfg.channels,
            "layers": cfg.layers, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "input_size": data.image_size,
            "auxiliary": cfg.auxiliary_weight > 0}


def network_from_args(args: dict[str, Any]) -> nn.Module:
    """Rebuild a network from :func:`network_args`."""
    kw = dict(args)
    return build_network(parse_genotype(kw.pop("genotype")), **kw)


def load_trained(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a ``diffnas train`` run folder with its latest checkpoint's weights (CPU,
    eval mode), and the folder's ``network.json``."""
    run = RunFolder(run_dir)
    spec = run.path / "network.json"
    if not spec.is_file() or not run.checkpoint.is_file():
        raise DiffnasError(f"{run.path} is not a diffnas train run folder (it needs network.json "
                           "and checkpoint.pt)")
    args = json.loads(spec.read_text())
    cfg = TrainConfig.from_dict(json.loads((run.path / "config.json").read_text()))
    state = run.load_checkpoint(cfg)
    net = network_from_args(args)
    net.load_state_dict(state["model"])
    return net.eval(), args


# ---------------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    run_dir: Path
    test_acc: float
    result: dict[str, Any]
    history: list[dict[str, Any]]


def _canonical(cfg: TrainConfig) -> TrainConfig:
    """Replace the genotype spec by its text, so the run does not depend on a file or folder
    that may change (the spec is kept in ``genotype_source``)."""
    genotype = parse_genotype(cfg.genotype)
    text = str(genotype)
    if text == cfg.genotype:
        return cfg
    return cfg.replace(genotype=text, genotype_source=cfg.genotype_source or cfg.genotype)


def default_run_dir(cfg: TrainConfig) -> Path:
    src = cfg.genotype_source or cfg.genotype
    entry = lookup(src)
    name = entry.name.lower() if entry is not None else "genotype"
    dataset = cfg.dataset.rstrip("/").replace("/", "_").replace(":", "-")
    return Path("runs") / f"train-{name}-{dataset}-seed{cfg.seed}"


TOP5_MIN_CLASSES = 11  # top-5 is reported with more than 10 classes (CIFAR-100, ImageNet)


def _test_record(trainer: Trainer, data: TrainData) -> dict[str, float]:
    loss, top1, top5 = trainer.evaluate(data.test, data.aug)
    rec = {"test_loss": loss, "test_acc": top1}
    if data.num_classes >= TOP5_MIN_CLASSES:
        rec["test_top5"] = top5
    return rec


def best_test(history: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    """The best test accuracy over the evaluated epochs (``best_test_acc``, the first epoch that
    reached it as ``best_epoch``) and, where recorded, the best top-5 (``best_test_top5``, over
    the epochs independently of top-1)."""
    evaluated = [r for r in [*history, final] if "test_acc" in r]
    best = max(evaluated, key=lambda r: r["test_acc"])  # max keeps the first of equals
    out = {"best_test_acc": best["test_acc"], "best_epoch": best["epoch"]}
    if "test_top5" in final:
        out.update(test_top5=final["test_top5"],
                   best_test_top5=max(r.get("test_top5", 0.0) for r in evaluated))
    return out


def train(cfg: TrainConfig | None = None, *, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, preset: str | None = None, **overrides: Any) -> TrainResult:
    """Retrain a genotype from scratch and evaluate it on the test split.

    ``train(preset="cpu", genotype="runs/main")`` or ``train(TrainConfig(...))``; the run
    folder defaults to ``runs/train-<genotype>-<dataset>-seed<seed>``."""
    if cfg is None:
        cfg = resolve_train_config(preset, **overrides)
    elif overrides or preset:
        raise DiffnasError("pass either a TrainConfig or a preset/overrides, not both")
    cfg.validate()
    cfg = _canonical(cfg)
    device = resolve_device(cfg.device)
    with distributed.session(device, cfg.sync_bn) as ddp:  # torchrun: this rank's part
        if ddp is not None:  # only rank 0 shows progress and writes (distributed module doc)
            device, progress = ddp.device, progress and ddp.main
        run = distributed.run_folder(RunFolder.open(out or default_run_dir(cfg), resume), ddp)
        return _train(cfg, run, resume, progress, device, ddp)


def _train(cfg: TrainConfig, run: RunFolder, resume: bool, progress: bool,
           device: torch.device, ddp: distributed.Dist | None) -> TrainResult:
    data = load_train_data(cfg, device)
    local = False  # the train stream yields this rank's share (imagenet: folders)
    if ddp is not None:  # the global batch splits evenly (a short set: one smaller batch)
        ddp.check_batch("the global batch (--batch-size)", min(cfg.batch_size, data.n_train))
        for stream in (data.train, data.test):
            if hasattr(stream, "shard"):  # decodes only this rank's images
                stream.shard = (ddp.rank, ddp.world)
        local = getattr(data.train, "shard", None) is not None
    torch.manual_seed(cfg.seed)
    net_args = network_args(cfg, data)
    net = network_from_args(net_args).to(device)
    cost = count_cost(net)
    if ddp is not None:  # --sync-bn
        ddp.prepare_modules([net])
    trainer = Trainer(cfg, net, device)

    state, start, elapsed, history = run.begin(cfg, resume)
    distributed.check_resume(ddp, state, start, cfg.sync_bn)
    if state is not None:
        net.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
    else:
        run.write_json("genotype.json", parse_genotype(cfg.genotype).to_dict())
        run.write_json("network.json", net_args)
        run.log(f"train: {cfg.genotype_source or cfg.genotype} on {cfg.dataset} "
                f"({data.n_train} train / {data.n_test} test images, {data.in_channels}×"
                f"{data.image_size}²), {type(net).__name__}, {cost.params_m:.3f} M params "
                f"(+{cost.params_aux / 1e6:.3f} M auxiliary), {cost.madds_m:.1f} M mult-adds, "
                f"{cfg.epochs} epochs × {len(data.train)} steps, device {device}"
                + (f", {ddp.describe()}" if ddp is not None else ""))

    steps = len(data.train)
    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=not progress,
               desc="train", unit="step", dynamic_ncols=True, leave=True)
    record: dict[str, Any] = history[-1] if history else {}
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(cfg.seed, epoch))  # drop-path masks
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # augmentation
            lr = trainer.begin_epoch(epoch, steps)
            loss_sum, acc_sum, n_img, n_steps = 0.0, 0.0, 0, 0
            for x, y in data.train.epoch(epoch):
                if cfg.schedule == "onecycle":
                    trainer.set_lr(epoch, n_steps, steps)
                if ddp is None:
                    n = len(y)
                    loss, acc = trainer.step(data.aug(x, gen), y)
                else:  # this rank's share of the global batch; the ranks' mean loss (NaN: all)
                    n = len(y) * ddp.world if local else len(y)
                    share = ddp.share(n)
                    x, y = (x, y) if local else (x[share], y[share])
                    stats = ddp.mean_stats(dict(zip(("loss", "acc"), trainer.step(
                        ddp.augment(data.aug, x, gen, n, share), y), strict=True)))
                    loss, acc = stats["loss"], stats["acc"]
                if not math.isfinite(loss):
                    raise DiffnasError(f"training loss became {loss} at epoch {epoch} step "
                                       f"{n_steps}; stopped. The last good checkpoint is kept in "
                                       f"{run.path}; try a smaller learning rate")
                loss_sum += loss
                acc_sum += acc
                n_img += n  # the global batch
                n_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", epoch=epoch)
            train_time = time.perf_counter() - t0
            record = {"epoch": epoch, "lr": lr, "drop_path_prob": net.drop_path_prob,
                      "train_loss": loss_sum / max(1, n_steps),
                      "train_acc": acc_sum / max(1, n_steps),
                      "images_per_s": n_img / max(train_time, 1e-9)}
            if ddp is not None:  # BN running averages of the ranks, averaged; world size
                ddp.average_buffers([net])
                record["world_size"] = ddp.world
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                record.update(_test_record(trainer, data))
            elapsed += time.perf_counter() - t0
            record.update(epoch_time_s=time.perf_counter() - t0, elapsed_s=elapsed,
                          peak_mem_gib=peak_memory_gib(device))
            if ddp is not None:  # every rank holds what rank 0 saves (checked bit for bit)
                ddp.assert_in_sync([*net.named_parameters(), *net.named_buffers()])
            run.end_epoch(cfg, epoch, elapsed, record, model=net.state_dict(),
                          trainer=trainer.state_dict(),
                          **({"world_size": ddp.world} if ddp is not None else {}))
            line = (f"epoch {epoch + 1}/{cfg.epochs}: lr {lr:.4g} train loss "
                    f"{record['train_loss']:.4f} acc {record['train_acc']:.4f}"
                    + (f" | test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}"
                       + (f" top-5 {record['test_top5']:.4f}" if "test_top5" in record else "")
                       if "test_acc" in record else "")
                    + f" | {record['images_per_s']:.0f} img/s")
            run.log(line)
            if progress:
                bar.write(line)
            history.append(record)
    finally:
        bar.close()
    if "test_acc" not in record:  # resumed after the last epoch had finished
        record.update(_test_record(trainer, data))
    genotype = parse_genotype(cfg.genotype)
    result = {"genotype": genotype.to_dict(), "genotype_str": str(genotype),
              "genotype_source": cfg.genotype_source, "dataset": cfg.dataset,
              "network": type(net).__name__, "epochs": cfg.epochs,
              "test_acc": record["test_acc"], "test_loss": record["test_loss"],
              **best_test(history, record), "test_images": data.n_test, **cost.to_dict(),
              "train_time_s": elapsed, "device": str(device), "run_dir": str(run.path)}
    run.write_json("result.json", result)
    return TrainResult(run.path, float(record["test_acc"]), result, history)
