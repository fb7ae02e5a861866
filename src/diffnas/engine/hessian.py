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


def dominant_eigenvalue(loss: torch.Tensor, params: Sequence[torch.Tensor], *,
                        iters: int = 50, tol: float = 1e-4, seed: int = 0) -> float:
    """The dominant (largest-magnitude) eigenvalue of the Hessian of ``loss`` w.r.t.
    ``params``, by power iteration on Hessian-vector products; the Rayleigh quotient of the
    last iterate, stopped when it changes by less than ``tol`` (relative). 0 when the loss
    does not depend on ``params``."""
    params = list(params)
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True)
             if g is not None and g.requires_grad]
    if not pairs:
        return 0.0
    ps, gs = [p for p, _ in pairs], [g for _, g in pairs]
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in ps]
    eig = 0.0
    for i in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        dot = sum((g * x).sum() for g, x in zip(gs, v, strict=True))
        hv = torch.autograd.grad(dot, ps, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(ps, hv, strict=True)]
        new = float(sum((h * x).sum() for h, x in zip(hv, v, strict=True)))
        if float(torch.sqrt(sum((h * h).sum() for h in hv))) == 0.0:
            return 0.0
        converged = i > 0 and abs(new - eig) <= tol * max(abs(new), 1e-12)
        eig, v = new, hv
        if converged:
            break
    return eig


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
