"""Cost of the batched colour jitter: ``BatchAugment`` (flip + normalisation) with and without
the ImageNet presets' ``ColorJitter(0.4, 0.4, 0.4, 0.2)``, interleaved rounds in one process.

    .venv/bin/python benchmarks/color_jitter.py --threads 1 --batch-size 64 [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from diffnas.data import BatchAugment
from diffnas.data.imagenet import IMAGENET_MEAN, IMAGENET_STD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    x = torch.randint(0, 256, (a.batch_size, 3, a.size, a.size), dtype=torch.uint8).to(dev)
    augs = {"flip + normalise": BatchAugment(IMAGENET_MEAN, IMAGENET_STD, flip=True),
            "+ colour jitter": BatchAugment(IMAGENET_MEAN, IMAGENET_STD, flip=True,
                                            color_jitter=(0.4, 0.4, 0.4, 0.2))}
    times: dict[str, list[float]] = {k: [] for k in augs}
    for r in range(a.rounds):
        for name, aug in augs.items():
            t = time.perf_counter()
            aug(x, torch.Generator().manual_seed(r))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    print(f"load average {os.getloadavg()[0]:.1f}; {a.batch_size} × 3×{a.size}², {dev}, "
          f"{torch.get_num_threads()} thread(s), {a.rounds} rounds (mean of the middle ones)")
    for name, ts in times.items():
        mid = sorted(ts)[1:-1] or ts
        print(f"{name}: {1000 * sum(mid) / len(mid):.1f} ms per batch")


if __name__ == "__main__":
    main()
