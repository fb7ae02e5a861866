"""Work that several mixed edges of one cell compute identically, done once per forward.

In a DARTS or NAS-Bench-201 cell every node's output feeds one mixed edge into each later
node (DARTS: the two cell inputs feed all four intermediate nodes). The parameter-free pools
of those edges compute the same tensor from the same input, and the BN after a DARTS search
pool is non-affine: normalising with the batch's statistics (training, or a BN without
running averages) gives the same tensor on every such edge too. :class:`SharedWork` (one per
cell forward) computes ``bn(pool(x))`` once per input tensor, pool kind and stride; each edge
then multiplies it by its own op weight (``w · bn(pool(x))``, where the unshared path folds
``w`` into BN's affine weight: the same numbers up to float rounding). Each edge's BN still
updates its own running averages as if it had run: the first edge's BN call updates its
buffers from the batch statistics ``μ, σ²``; the others apply the same update,
``r ← (1 − m)·r + m·μ`` with ``m·μ`` recovered from the first edge's buffers before and after.

The ReLU that every convolution starts with, and the polyphase components of that ReLU's
output which the dilated convolutions read (:func:`diffnas.spaces.ops.to_phases`), are the
same on every edge leaving a node too, and are also computed once (:meth:`SharedWork.relu`,
:meth:`SharedWork.phases`; exact: autograd sums the edges' gradients before the one backward).

Pools not shared (the edge computes its op itself, as before): a BN that normalises with its running
averages (evaluation), one with momentum ``None`` (cumulative averages differ per edge with
their batch counts), an affine or synchronised BN, and inputs that are not the same tensor
(PC-DARTS' partial channels hand each edge its own copy of the channel share).
Measured in BENCHMARKS.md ("CPU speed", issue 16).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Pool, to_phases

#: off: every edge computes its pools itself (tests and benchmarks compare the two)
ENABLED = True


class SharedWork:
    """Results that edges reading the same input tensor compute alike, for one cell forward.

    Entries hold their input tensor, so an ``id`` cannot be reused while the object lives."""

    def __init__(self) -> None:
        self._pools: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, Any]] = {}
        self._maps: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _map(self, key: tuple[Any, ...], x: torch.Tensor, fn: Any) -> torch.Tensor:
        if not ENABLED:
            return fn(x)
        hit = self._maps.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        y = fn(x)
        self._maps[key] = (x, y)
        return y

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        """``F.relu(x)``, once per input tensor."""
        return self._map(("relu", id(x)), x, F.relu)

    def phases(self, xr: torch.Tensor, d: int) -> torch.Tensor:
        """``to_phases(xr, d)``, once per input tensor and ``d``."""
        return self._map(("phases", id(xr), d), xr, lambda t: to_phases(t, d))

    def pool(self, op: Pool, x: torch.Tensor) -> torch.Tensor | None:
        """``op(x)`` before its op weight (``bn(pool(x))``, or ``pool(x)`` without BN), computed
        once per input tensor and pool; None where it cannot be shared (see module docstring)."""
        if not ENABLED:
            return None
        bn = op.bn
        updating = False
        if bn is not None:
            if (type(bn) is not nn.BatchNorm2d or bn.affine
                    or getattr(bn, "syncs_batch_stats", False)
                    or not (bn.training or not bn.track_running_stats)):
                return None
            updating = bn.training and bn.track_running_stats and bn.running_mean is not None
            if updating and bn.momentum is None:
                return None
        pool = op.pool
        key = (id(x), type(pool).__name__, pool.kernel_size, pool.stride, pool.padding,
               pool.ceil_mode, getattr(pool, "count_include_pad", None), bn is None,
               None if bn is None else bn.eps, updating, bn.momentum if updating else None)
        hit = self._pools.get(key)
        if hit is not None and hit[0] is x:
            _, out, deltas = hit
            if deltas is not None:  # this edge's running averages, updated as its BN would
                m = float(bn.momentum)
                with torch.no_grad():
                    bn.running_mean.mul_(1 - m).add_(deltas[0])
                    bn.running_var.mul_(1 - m).add_(deltas[1])
                    if bn.num_batches_tracked is not None:
                        bn.num_batches_tracked.add_(1)
            return out
        y = pool(x)
        deltas = None
        if bn is not None:
            if updating:
                m = float(bn.momentum)
                with torch.no_grad():
                    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
                y = F.batch_norm(y, bn.running_mean, bn.running_var, None, None, True, m, bn.eps)
                with torch.no_grad():
                    if bn.num_batches_tracked is not None:
                        bn.num_batches_tracked.add_(1)
                    deltas = (bn.running_mean - (1 - m) * mean0,
                              bn.running_var - (1 - m) * var0)
            else:
                y = F.batch_norm(y, None, None, None, None, True, 0.0, bn.eps)
        self._pools[key] = (x, y, deltas)
        return y
