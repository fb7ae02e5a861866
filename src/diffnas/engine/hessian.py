"""The dominant eigenvalue of the α-Hessian ∇²_α L_val (RobustDARTS, Zela et al., ICLR 2020,
§4: it grows as DARTS heads for a degenerate, skip-heavy architecture).

Power iteration on Hessian-vector products by double backpropagation: one forward over a
fixed set of validation batches builds ∇_α L_val with its graph, and every iteration
differentiates ⟨∇_α L_val, v⟩ once more (Pearlmutter's trick), so the Hessian is never
formed. The batches, the start vector and any randomness of the forward (a stochastic
weighting's sample) are drawn from fixed seeds, so every evaluation sees the same function
of α; the supernet's BN running statistics are restored afterwards, so the search itself is
unchanged (the loop logs the value as ``hessian_eig`` every ``--hessian-every K`` epochs).

Deviations from the reference (automl/RobustDARTS ``src/search/analyze.py``), one line each:

* It builds the full Hessian of one validation batch and takes ``max(eigvals(H + wd·I))``
  (wd: α's weight decay, 1e-3); we return the largest-magnitude eigenvalue of ∇²_α L_val by
  power iteration (the same value when it is the largest and positive, as in their plots),
  without the constant wd shift, over ``--hessian-batches`` fixed batches (default 1).
* Its batch is the last α-step batch of the epoch (a fresh random one each time, with the
  training augmentation); ours are the same clean batches at every evaluation, so the
  trajectory measures the supernet, not the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..data import BatchAugment, BatchStream
    from ..methods import SearchMethod


def dominant_eigenpair(loss: torch.Tensor, params: Sequence[torch.Tensor], *,
                       iters: int = 50, tol: float = 1e-4, seed: int = 0
                       ) -> tuple[list[torch.Tensor], float]:
    """The dominant (largest-magnitude) eigenvalue of the Hessian of ``loss`` w.r.t. ``params``
    and its unit eigenvector (split like ``params``; zeros for parameters the loss does not use),
    by power iteration on Hessian-vector products (double backpropagation): the Rayleigh
    quotient of the iterate, stopped when it changes by less than ``tol`` (relative). Zeros and
    0 when the loss does not depend on ``params``."""
    params = list(params)
    zeros = [torch.zeros_like(p) for p in params]
    if not loss.requires_grad:
        return zeros, 0.0
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not used:
        return zeros, 0.0
    gen = torch.Generator().manual_seed(seed)
    v = {i: torch.randn(params[i].shape, generator=gen).to(params[i]) for i in used}
    eig = 0.0
    for step in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v.values())).clamp_min(1e-30)
        v = {i: x / norm for i, x in v.items()}
        dot = sum((grads[i] * v[i]).sum() for i in used)
        hv = torch.autograd.grad(dot, [params[i] for i in used], retain_graph=True,
                                 allow_unused=True)
        hv = {i: torch.zeros_like(params[i]) if h is None else h.detach()
              for i, h in zip(used, hv, strict=True)}
        if all(float(h.abs().max()) == 0.0 for h in hv.values()):
            return zeros, 0.0
        new = float(sum((hv[i] * v[i]).sum() for i in used))
        done = step > 0 and abs(new - eig) <= tol * max(abs(new), 1e-12)
        eig = new
        if done:
            break
        v = hv
    vec = [v[i].detach() if i in v else z for i, z in enumerate(zeros)]
    norm = torch.sqrt(sum((x * x).sum() for x in vec)).clamp_min(1e-30)
    return [x / norm for x in vec], eig


def dominant_eigenvalue(loss: torch.Tensor, params: Sequence[torch.Tensor], *,
                        iters: int = 50, tol: float = 1e-4, seed: int = 0) -> float:
    """The eigenvalue of :func:`dominant_eigenpair`."""
    return dominant_eigenpair(loss, params, iters=iters, tol=tol, seed=seed)[1]


def supernet_hessian_eig(net: torch.nn.Module, alphas: Sequence[torch.Tensor],
                         loss_fn: Callable[[int], torch.Tensor], n_batches: int, *,
                         seed: int = 0, iters: int = 50, tol: float = 1e-4) -> float:
    """:func:`dominant_eigenvalue` of the mean of ``loss_fn(i)`` over ``i < n_batches`` w.r.t.
    ``alphas``, in training mode (as the search's α step sees it), with torch's global RNG
    forked and seeded by ``seed`` and every buffer of ``net`` (BN statistics) restored."""
    buffers = [b.clone() for b in net.buffers()]
    modes = [(m, m.training) for m in net.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            net.train()
            loss = sum(loss_fn(i) for i in range(n_batches)) / n_batches
            return dominant_eigenvalue(loss, alphas, iters=iters, tol=tol, seed=seed)
    finally:
        with torch.no_grad():
            for b, b0 in zip(net.buffers(), buffers, strict=True):
                b.copy_(b0)
        for m, mode in modes:
            m.training = mode


def method_hessian_eig(method: SearchMethod, stream: BatchStream, aug: BatchAugment) -> float:
    """λ_max of ∇²_α L_val for a search method: the objective's loss on the first
    ``cfg.hessian_batches`` batches of ``stream``'s epoch 0 (clean images; the same batches at
    every call), w.r.t. the supernet's α (not PC-DARTS' β), seeded by the run's seed."""
    cfg, net = method.cfg, method.net
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = []
    for x, y in stream.epoch(0):
        if len(batches) == cfg.hessian_batches:
            break
        batches.append(method.objective.prepare(aug(x, train=False), y, gen))
    holder = _Both(net, method.objective)
    return supernet_hessian_eig(holder, list(net.alphas.values()),
                                lambda i: method.objective(net, batches[i]).loss, len(batches),
                                seed=cfg.seed, iters=LOOP_ITERS, tol=LOOP_TOL)


#: the loop's power iteration: at most 20 Hessian-vector products, stopped at 0.1 % change
#: (a logged indicator; each product costs about two forward-backward passes)
LOOP_ITERS, LOOP_TOL = 20, 1e-3


class _Both(torch.nn.Module):
    """The supernet and the objective as one module (their buffers and modes together)."""

    def __init__(self, net: torch.nn.Module, objective: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.objective = net, objective
