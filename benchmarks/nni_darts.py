"""Time one search iteration of Microsoft NNI 3.0's DARTS one-shot strategy.

Runs inside the separate venv made by ``benchmarks/setup_nni_venv.sh``
(``bench-venvs/nni/bin/python benchmarks/nni_darts.py ...``), never in the repo's
main venv: NNI 3.0 needs pytorch-lightning 2.0.x and setuptools<81.

What is built
-------------
* Search space: ``nni.nas.hub.pytorch.DARTS`` (an ``NDS`` space with the 7 DARTS
  operations, 4 nodes per cell, ``merge_op='all'``, CIFAR stem), at a fixed
  ``width=C`` and ``num_cells=L``.
* Strategy: ``nni.nas.strategy.DARTS``; its ``mutate_model`` turns the space into
  the differentiable supernet and its ``mutate_evaluator`` wraps the evaluator's
  Lightning module into ``DartsLightningModule`` and fuses the train/val loaders
  into the ``{'train': ..., 'val': ...}`` batches that module expects.  These are
  the very two calls ``OneShotStrategy._initialize`` makes when NNI runs the
  strategy, and ``Lightning.evaluate`` is what its sequential execution engine
  then calls; only the experiment/NNI-manager layer around them is skipped.
* Evaluator: a ``Lightning`` evaluator with NNI's ``ClassificationModule``
  (cross entropy + torchmetrics accuracy logged every step, exactly what
  ``nni.nas.evaluator.pytorch.Classification`` uses), whose optimizer is the
  DARTS paper's weight optimizer: SGD(lr 0.025, momentum 0.9, wd 3e-4).  The
  strategy adds its own architecture optimizer, Adam(3e-4, betas (0.5, 0.999),
  wd 1e-3), i.e. the DARTS paper's, and gradient clipping at 5 like DARTS.

One "search iteration" is one ``DartsLightningModule.training_step``: an
architecture step (forward + backward on a val batch, Adam step on the alphas)
and a weight step (forward + backward on a train batch, clip, SGD step).  It is
timed with ``time.perf_counter`` from Lightning's ``on_train_batch_start`` to
``on_train_batch_end`` callback hooks (so it excludes data loading; the batch is
already on the device), in a plain ``Trainer.fit`` of one epoch with exactly
``warmup + iters`` batches.  The median of the last ``iters`` is reported.
Driving ``DartsLightningModule.training_step`` by hand without a Trainer is not
practical: it calls ``self.optimizers()``, ``self.manual_backward``,
``self.log`` and reads ``self.trainer.current_epoch`` / ``is_last_batch``, all
of which need an attached Trainer.

How this supernet compares with the DARTS search network (Liu et al., 2019)
---------------------------------------------------------------------------
Same: 8 candidates per edge (the 7 ops + ``none``), 14 edges per cell (4 nodes,
each connected to both cell inputs and all earlier nodes), output = concat of
the 4 nodes, stem conv 3x3 to 3*C channels, L cells with reductions at L//3 and
2L//3 (NNI splits the cells into 3 stages of sizes ``(i+1)L//3 - iL//3`` whose
first cell in stages 2 and 3 is a reduction: e.g. L=8 -> 2,3,3 -> reductions
at cells 2 and 5; L=5 -> 1,2,2 -> cells 1 and 3, same as DARTS), channels
doubled at each reduction, one alpha vector shared by all normal cells and one
by all reduction cells, global average pooling + linear classifier.
Differences (all are NNI's, left as NNI does them):
* ``none`` is not a module: NNI appends an all-zeros tensor to the stacked op
  outputs (``torch.stack`` + ``torch.cat`` + weighted sum), so each edge keeps a
  (8, B, C, H, W) tensor alive for backward; DARTS's ``sum(w * op(x))`` does
  not.  This costs NNI memory and some time, and is part of what is measured.
* BatchNorm in the candidate ops and the cell preprocessors is ``affine=True``
  (the DARTS search network uses ``affine=False``): a few extra parameters.
* The CIFAR stem is hard-wired to 3 input channels and the classifier to 10
  classes; for ``--in-channels`` != 3 this script swaps the stem conv for one
  with K input channels (``--num-classes`` != 10: swaps the classifier), before
  the strategy builds the supernet.
* Second-order (unrolled) DARTS is not implemented in NNI 3.0 (the docstring of
  ``nni.nas.strategy.DARTS`` says "Second order ... is not supported yet");
  with ``--second-order`` this script prints a JSON line with ``median_s: null``
  and ``supported: false`` and exits 0.
* Per-step Lightning overhead (hooks, ``self.log`` of loss/accuracy and, every
  10 steps, of all 2x14x8 alpha probabilities) is included, as for any user.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
import warnings


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=16, help="initial channels C")
    p.add_argument("--layers", type=int, default=8, help="number of cells L")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32, help="square input side S")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--second-order", action="store_true",
                   help="ask for unrolled DARTS (NNI 3.0 does not have it)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print supernet summary to stderr")
    return p.parse_args(argv)


def _peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2)


def _config(args) -> dict:
    return {
        "channels": args.channels,
        "layers": args.layers,
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "in_channels": args.in_channels,
        "num_classes": args.num_classes,
    }


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _describe_supernet(model, oneshot_module) -> dict:
    """Count cells / edges / candidates so that the space can be checked."""
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

    cells = [m for m in model.modules() if isinstance(m, DifferentiableMixedCell)]
    reductions = [i for i, c in enumerate(cells) if c.label == "reduce"]
    edges = [len(c._arch_alpha) for c in cells]
    cand = sorted({len(a) for c in cells for a in c._arch_alpha.values()})
    ops_per_edge = sorted({len(d) for c in cells for node in c.ops for d in node})
    arch = oneshot_module.arch_parameters()
    arch_ids = {id(p) for p in arch}
    weights = [p for p in model.parameters() if id(p) not in arch_ids]
    return {
        "cells": len(cells),
        "reduction_cells": reductions,
        "edges_per_cell": sorted(set(edges)),
        "candidates_per_edge": cand,          # 7 ops + the zero ("none") slot
        "op_modules_per_edge": ops_per_edge,  # 7: none is a zeros tensor
        "op_names": list(cells[0].op_names) if cells else [],
        "arch_param_tensors": len(arch),
        "arch_params": sum(p.numel() for p in arch),
        "weight_params": sum(p.numel() for p in weights),
    }


def main(argv=None) -> int:
    load_start = os.getloadavg()[0]
    args = _parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    import torch

    torch.set_num_threads(args.threads if args.threads else 2)

    import nni
    import pytorch_lightning as pl

    base = {
        "impl": "nni-3.0",
        "order": 2 if args.second_order else 1,
        "config": _config(args),
        "nni_version": nni.__version__,
        "torch_version": torch.__version__,
        "lightning_version": pl.__version__,
        "python_version": platform.python_version(),
        # 1-min load average when the process started (includes whatever ran
        # just before it, e.g. the previous benchmark process).
        "loadavg_start": round(load_start, 2),
    }

    if args.second_order:
        _emit({**base, "median_s": None, "iters": 0, "supported": False,
               "reason": "NNI 3.0 DARTS strategy is first-order only "
                         "(nni.nas.strategy.DARTS: 'Second order ... is not supported yet')",
               "peak_rss_gib": round(_peak_rss_gib(), 3),
               "torch_threads": torch.get_num_threads()})
        return 0

    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.evaluator.pytorch.lightning import ClassificationModule
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.nn.pytorch import MutableConv2d, MutableLinear
    from nni.nas.strategy import DARTS as DartsStrategy
    from torch.utils.data import TensorDataset

    for name in ("pytorch_lightning", "lightning_fabric", "nni"):
        logging.getLogger(name).setLevel(logging.ERROR)

    torch.manual_seed(args.seed)
    C, L = args.channels, args.layers
    B, S, K, N = args.batch_size, args.input_size, args.in_channels, args.num_classes

    # ---- search space ------------------------------------------------------
    model = DartsSpace(width=C, num_cells=L, dataset="cifar")
    if K != 3:
        # NNI's CIFAR stem is hard-wired to RGB; same conv, K input channels.
        model.stem[0] = MutableConv2d(K, 3 * C, 3, padding=1, bias=False)
    if N != model.num_labels:
        model.classifier = MutableLinear(model.classifier.in_features, N)
        model.num_labels = N

    # ---- evaluator (what a user writes) -------------------------------------
    class DartsClassification(ClassificationModule):
        """NNI's classification module with the DARTS paper's weight optimizer."""

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.025, momentum=0.9,
                                   weight_decay=3e-4)

    n_batches = args.warmup + args.iters
    g = torch.Generator().manual_seed(args.seed)

    def synthetic_loader():
        x = torch.randn(n_batches * B, K, S, S, generator=g)
        y = torch.randint(0, N, (n_batches * B,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=B, shuffle=False,
                          num_workers=0, drop_last=True)

    times: list[float] = []
    cpu_times: list[float] = []  # process CPU seconds per iteration (all threads)

    class IterTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._c0 = time.process_time()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            dt = time.perf_counter() - self._t0
            cpu_times.append(time.process_time() - self._c0)
            times.append(dt)
            if args.verbose:
                print(f"[nni_darts] iter {batch_idx}: {dt:.3f}s "
                      f"rss_peak={_peak_rss_gib():.2f}GiB", file=sys.stderr, flush=True)

    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[IterTimer()],
    )
    evaluator = Lightning(
        DartsClassification(num_classes=N, export_onnx=False),
        trainer,
        train_dataloaders=synthetic_loader(),
        val_dataloaders=synthetic_loader(),
    )

    # ---- strategy: exactly OneShotStrategy._initialize + _run ---------------
    strategy = DartsStrategy(gradient_clip_val=5.0)
    supernet = strategy.mutate_model(model)
    oneshot_eval = strategy.mutate_evaluator(evaluator)
    oneshot_eval.module.set_model(supernet)
    summary = _describe_supernet(supernet, oneshot_eval.module)
    if args.verbose:
        print(f"[nni_darts] supernet: {json.dumps(summary)}", file=sys.stderr, flush=True)

    oneshot_eval.evaluate(supernet)  # trainer.fit(DartsLightningModule, {'train', 'val'})

    if len(times) != n_batches:
        raise RuntimeError(f"expected {n_batches} timed batches, got {len(times)}")
    timed = times[args.warmup:]
    _emit({
        **base,
        "median_s": round(statistics.median(timed), 4),
        "mean_s": round(statistics.fmean(timed), 4),
        "min_s": round(min(timed), 4),
        "iters": len(timed),
        "warmup": args.warmup,
        "times_s": [round(t, 4) for t in timed],
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "torch_threads": torch.get_num_threads(),
        "loadavg_end": round(os.getloadavg()[0], 2),
        # CPU seconds / wall seconds over the timed iterations: ~threads when the
        # machine was ours alone; well below it means the cores were shared.
        "cpu_util": round(sum(cpu_times[args.warmup:]) / sum(timed), 2),
        "supported": True,
        "supernet": summary,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
