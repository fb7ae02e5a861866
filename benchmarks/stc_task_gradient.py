"""Which way does STC-NAS' architecture gradient push each op? A diagnostic for a finished
NAS-Bench-201 STC run folder (BENCHMARKS.md, "STC-NAS at the nb201-compare scale").

For random sub-cells (ε ~ U(0, ``--noise``) on the run's final α, or on the initial supernet
with ``--init``) and one validation batch each, it prints per op the task-loss derivative
∂L_val/∂α_n of the op n each edge runs (Eq. 5: only the sampled op's α gets one; < 0: the
loss asks for more of that op) and the JS term's derivative (Eq. 9, λ = 1) for sampled and
unsampled ops, then checks the architecture loss' autograd gradient (the one the α step
descends) against central differences on one sub-cell and batch.

    .venv/bin/python benchmarks/stc_task_gradient.py RUN_DIR [--init] [--noise 2.0]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from diffnas.config import SearchConfig
from diffnas.data import BatchAugment, BatchStream, load_dataset, split_indices
from diffnas.engine.search import build_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--init", action="store_true", help="the initial supernet, not the run's")
    ap.add_argument("--noise", type=float, default=2.0,
                    help="ε range of the sub-cells (2.0: near-uniform over the ops)")
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()

    torch.set_num_threads(1)
    cfg = SearchConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    if cfg.method != "stc" or cfg.space != "nb201":
        raise SystemExit(f"{args.run}: an STC run in nb201 is needed, got {cfg.method}/{cfg.space}")
    data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size,
                        class_fraction=cfg.class_fraction, seed=cfg.seed)
    if cfg.subset is not None and cfg.subset < len(data.labels):
        data = data.subset(cfg.subset, cfg.seed)
    _, val_idx = split_indices(len(data.labels), cfg.train_portion, cfg.seed)
    val = BatchStream(data.images, data.labels, val_idx, cfg.batch_size, seed=cfg.seed + 1)
    aug = BatchAugment(data.mean, data.std, crop_padding=cfg.crop_padding,
                       flip=data.flip if cfg.flip is None else cfg.flip, cutout=cfg.cutout)
    net, objective, method = build_search(cfg, data.in_channels, data.image_size,
                                          data.num_classes, len(val), torch.device("cpu"),
                                          (data.mean, data.std))
    if not args.init:
        state = torch.load(args.run / "checkpoint.pt", weights_only=True)
        net.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        method.load_state_dict(state["method"])
    ops, alpha = net.op_names, net.alphas["cell"]
    task: dict[str, list[float]] = defaultdict(list)
    js: dict[tuple[str, bool], list[float]] = defaultdict(list)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net.train()
    for k in range(args.samples):
        x, y = next(iter(val.epoch(k)))
        batch = objective.prepare(aug(x, gen), y, gen)
        method.current = method.sample(args.noise)
        target = method.current.target["cell"]
        loss = objective(net, batch).loss
        g = (torch.autograd.grad(loss, alpha, allow_unused=True)[0]
             if loss.requires_grad else None)  # every edge drew `none`: no gradient
        gj = torch.autograd.grad(method.js_term(), alpha)[0]
        for e in range(target.shape[0]):
            n = int(target[e].argmax())
            if g is not None:
                task[ops[n]].append(float(g[e, n]))
            for o in range(len(ops)):
                js[(ops[o], o == n)].append(float(gj[e, o]))
    print(f"{args.run} ({'initial supernet' if args.init else 'end of the search'}), "
          f"{args.samples} sub-cells with ε ~ U(0, {args.noise}):")
    print("task loss ∂L/∂α_n of the op each edge runs (< 0: the loss wants more of it)")
    for o in ops:
        v = torch.tensor(task[o] or [0.0])
        print(f"  {o:<14} n={len(task[o]):4d}  mean {v.mean():+.4f}  share < 0: "
              f"{(v < 0).float().mean():.2f}")
    print("JS term ∂JS/∂α (λ = 1), mean")
    for o in ops:
        print(f"  {o:<14} sampled {torch.tensor(js[(o, True)] or [0.0]).mean():+.4f}   "
              f"not sampled {torch.tensor(js[(o, False)] or [0.0]).mean():+.4f}")
    # the gradient the α step descends, against central differences of the architecture loss
    x, y = next(iter(val.epoch(0)))
    batch = objective.prepare(aug(x, gen), y, gen)
    method.current = method.sample(args.noise)
    target = method.current.target["cell"]
    saved = {k: v.clone() for k, v in net.state_dict().items()}  # BN statistics
    grad = torch.autograd.grad(method.arch_loss(batch).loss, alpha)[0]
    h, worst = 1e-3, 0.0
    for e in range(target.shape[0]):
        n = int(target[e].argmax())
        diffs = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                alpha[e, n] += sign * h
                diffs.append(float(method.arch_loss(batch).loss))
                alpha[e, n] -= sign * h
            net.load_state_dict(saved)
        fd = (diffs[0] - diffs[1]) / (2 * h)
        worst = max(worst, abs(fd - float(grad[e, n])))
        print(f"  edge {e} {ops[n]:<14} autograd {float(grad[e, n]):+.5f}  "
              f"central difference {fd:+.5f}")
    print(f"largest |autograd − central difference|: {worst:.2e} (the α optimiser minimises "
          "with the autograd gradient)")

if __name__ == "__main__":
    main()
