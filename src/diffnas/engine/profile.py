"""Measure one search iteration: median time, peak memory, FLOPs, and the epoch/search
time they imply. Synthetic tensors of the requested shape unless a dataset is named."""

from __future__ import annotations

import statistics
import time
from math import prod
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..config import SearchConfig
from .search import build_search, peak_memory_gib, resolve_device

aten = torch.ops.aten


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """Each of ∂x and ∂w of a convolution costs what its forward costs, whatever the groups.

    torch's own formula builds the ∂w count from transposed shapes that ignore groups, which
    overcounts a depthwise convolution's weight gradient by its channel count."""
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Any) -> int:
    """FLOPs (2 per multiply-add) of ``fn()``, convolution backward counted correctly."""
    mode = FlopCounterMode(display=False,
                           custom_mapping={aten.convolution_backward: _conv_backward_flop})
    with mode:
        fn()
    return int(mode.get_total_flops())


def profile(cfg: SearchConfig, input_size: int = 32, in_channels: int = 3,
            num_classes: int = 10, iters: int = 5, warmup: int = 2,
            train_images: int | None = None) -> dict[str, Any]:
    """Profile ``cfg``'s search step on random tensors ``[batch, in_channels, size, size]``.

    ``train_images`` (default: CIFAR-10's 50,000) sets the steps per epoch estimate."""
    device = resolve_device(cfg.device)
    n_train = train_images if train_images is not None else 50_000
    steps = max(1, int(n_train * min(cfg.train_portion, 1 - cfg.train_portion)) // cfg.batch_size)
    torch.manual_seed(cfg.seed)
    net, objective, method = build_search(cfg, in_channels, input_size, num_classes, steps, device)
    g = torch.Generator().manual_seed(cfg.seed)

    def batch() -> Any:
        x = torch.randn(cfg.batch_size, in_channels, input_size, input_size, generator=g)
        y = torch.randint(0, num_classes, (cfg.batch_size,), generator=g)
        return objective.prepare(x.to(device), y.to(device), g)

    batches = [(batch(), batch()) for _ in range(2)]
    method.begin_epoch(0)
    net.train()

    def one(i: int) -> None:
        method.step(*batches[i % 2])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        one(i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        one(i)
        times.append(time.perf_counter() - t0)
    peak = peak_memory_gib(device)
    flops = count_flops(lambda: one(0))
    med = statistics.median(times)
    return {
        "method": cfg.method, "space": cfg.space, "order": cfg.order,
        "objective": cfg.objective or type(method).default_objective,
        "config": {"channels": cfg.channels, "layers": cfg.layers, "batch_size": cfg.batch_size,
                   "input_size": input_size, "in_channels": in_channels,
                   "num_classes": num_classes, "method_args": cfg.method_args,
                   "objective_args": cfg.objective_args},
        "device": str(device), "threads": torch.get_num_threads(),
        "iters": iters, "warmup": warmup, "median_s": med, "times_s": times,
        "peak_rss_gib" if device.type == "cpu" else "peak_cuda_gib": peak,
        "flops_per_iter": flops, "gflops_per_s": flops / med / 1e9,
        "supernet_params": sum(p.numel() for p in net.weight_parameters()),
        "objective_params": sum(p.numel() for p in objective.parameters()),
        "steps_per_epoch": steps, "est_epoch_s": med * steps,
        "est_search_s": med * steps * cfg.epochs, "epochs": cfg.epochs,
        "input_elems": prod((cfg.batch_size, in_channels, input_size, input_size)),
    }
