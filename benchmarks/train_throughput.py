"""Retraining throughput: ``diffnas train``'s step against a plain torchvision-style loop over
the same evaluation network, side by side in one process (alternating rounds, so both see the
same machine load).

* ``diffnas``: :class:`diffnas.engine.train.Trainer` steps on batches from
  :class:`~diffnas.data.BatchStream` with :class:`~diffnas.data.BatchAugment` (random crop,
  flip, cutout and normalisation on the whole uint8 batch) — what ``diffnas train`` runs on CPU.
* ``diffnas-cl``: the same in channels-last layout (what it runs on CUDA).
* ``plain``: a ``DataLoader`` over a dataset whose ``__getitem__`` augments one image at a time
  (pad-and-crop, flip, normalise, cutout: torchvision's ``RandomCrop(32, 4)``,
  ``RandomHorizontalFlip``, ``Normalize`` and the DARTS ``Cutout``, written with torch ops since
  torchvision is not a dependency), then the usual ``zero_grad / forward / CE + 0.4·aux /
  backward / clip / step`` — the DARTS ``train.py`` loop.

All three train identical copies of the DARTS_V2 network (auxiliary head, drop-path) on the
same synthetic CIFAR-shaped uint8 images. Prints one JSON object and a Markdown table.

    .venv/bin/python benchmarks/train_throughput.py --channels 16 --layers 8 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from diffnas.data import BatchAugment, BatchStream
from diffnas.engine.train import Trainer, resolve_train_config
from diffnas.nets import build_network
from diffnas.spaces import parse_genotype

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PerImageDataset(torch.utils.data.Dataset):
    """torchvision-style: every ``__getitem__`` augments one image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int, cutout: int,
                 seed: int) -> None:
        self.images, self.labels, self.pad, self.cutout = images, labels, pad, cutout
        self.g = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        _, h, w = img.shape
        p = self.pad
        padded = F.pad(img, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=self.g).tolist()
        img = padded[:, dy:dy + h, dx:dx + w]
        if torch.rand(1, generator=self.g).item() < 0.5:
            img = img.flip(2)
        x = (img.float() / 255 - self.mean) / self.std
        cy, cx = torch.randint(0, h, (1,), generator=self.g).item(), torch.randint(
            0, w, (1,), generator=self.g).item()
        half = self.cutout // 2
        x[:, max(0, cy - half):min(h, cy + half), max(0, cx - half):min(w, cx + half)] = 0
        return x, self.labels[i]


def plain_steps(net: nn.Module, opt: torch.optim.Optimizer, loader_iter, steps: int,
                aux_weight: float, clip: float) -> int:
    n = 0
    net.train()
    for _ in range(steps):
        x, y = next(loader_iter)
        opt.zero_grad()
        logits, aux = net.forward_with_aux(x)
        loss = F.cross_entropy(logits, y)
        if aux is not None:
            loss = loss + aux_weight * F.cross_entropy(aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        n += len(y)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genotype", default="DARTS_V2")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = resolve_train_config("darts-cifar", batch_size=args.batch_size, device="cpu",
                               channels=args.channels, layers=args.layers)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.images,))
    base = build_network(parse_genotype(args.genotype), channels=args.channels,
                         layers=args.layers, num_classes=10)
    base.drop_path_prob = cfg.drop_path * 0.5  # mid-training

    variants = {}
    # diffnas: Trainer + BatchStream + BatchAugment (contiguous and channels-last)
    for name, cl in (("diffnas", False), ("diffnas-cl", True)):
        net = copy.deepcopy(base)
        trainer = Trainer(cfg, net, torch.device("cpu"))
        if cl:  # Trainer uses channels-last on CUDA only (a torch CPU bug, see its comment)
            net.to(memory_format=torch.channels_last)
            trainer.memory_format = torch.channels_last
        stream = BatchStream(images, labels, None, args.batch_size, seed=0)
        aug = BatchAugment(MEAN, STD, crop_padding=4, flip=True, cutout=16)
        gen = torch.Generator().manual_seed(1)

        def batches(stream=stream):
            e = 0
            while True:
                yield from stream.epoch(e)
                e += 1

        it = batches()

        def run(steps, trainer=trainer, it=it, aug=aug, gen=gen):
            n = 0
            for _ in range(steps):
                x, y = next(it)
                trainer.step(aug(x, gen), y)
                n += len(y)
            return n

        variants[name] = run
    # plain: DataLoader with per-image transforms, the DARTS train.py loop
    pnet = copy.deepcopy(base)
    opt = torch.optim.SGD(pnet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    ds = PerImageDataset(images, labels, pad=4, cutout=16, seed=2)

    def loader_forever():
        while True:
            yield from torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                                   drop_last=True, num_workers=0)

    pit = loader_forever()
    variants["plain"] = lambda steps: plain_steps(pnet, opt, pit, steps, cfg.auxiliary_weight,
                                                  cfg.grad_clip)

    for run in variants.values():  # warm-up
        run(1)
    # per round and variant: images per wall-clock second and per CPU second of this process
    # (on a shared machine the CPU-time rate is the steadier one); the per-round ratio to the
    # plain loop compares runs made moments apart
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n = run(args.steps)
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.process_time() - c0))
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(wall[k], wall["plain"], strict=True))
             for k in wall}
    out = {"genotype": args.genotype, "channels": args.channels, "layers": args.layers,
           "batch_size": args.batch_size, "input": [3, 32, 32], "threads": args.threads,
           "steps_per_round": args.steps, "rounds": args.rounds,
           "images_per_s_median": med, "images_per_cpu_s_median": med_cpu,
           "median_round_ratio_vs_plain": ratio, "images_per_s_rounds": wall,
           "images_per_cpu_s_rounds": cpu,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    print(json.dumps(out))
    if args.markdown:
        cells = " | ".join(f"{med[k]:.1f} / {med_cpu[k]:.1f} ({ratio[k]:.2f}×)"
                           for k in ("diffnas", "diffnas-cl"))
        print(f"| {args.genotype} C={args.channels} L={args.layers}, batch {args.batch_size}, "
              f"3×32², {args.threads} threads, {args.rounds}×{args.steps} steps | "
              f"{med['plain']:.1f} / {med_cpu['plain']:.1f} | {cells} |")


if __name__ == "__main__":
    main()
