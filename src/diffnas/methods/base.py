"""The search-method interface, and bilevel DARTS as its default behaviour.

A method is an :class:`~diffnas.spaces.base.EdgePolicy` (how α weights and
selects the ops of every edge, called by the supernet's forward) plus the
update rules of one search step. The search loop only calls::

    method = METHODS[name](cfg, supernet, objective, steps_per_epoch)
    method.begin_epoch(epoch)
    stats = method.step(train_batch, val_batch)   # per step, floats
    method.derive()                                # genotype
    method.state_dict() / load_state_dict()        # resume

Override only what differs: ``edge_weights`` (softmax, sigmoid, ReLU, Gumbel,
Dirichlet...), ``edge_policy`` (which ops run: sampling, partial channels),
``arch_loss``/``weight_loss`` (extra regularisers), ``arch_step``/``weight_step``
(projection, a second network). Defaults implement DARTS (Liu et al., ICLR
2019): Eq. (3)-(4) first order, Eq. (6)-(8) second order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import SearchConfig, coerce_options
from ..objectives import Batch, LossOutput, Objective
from ..spaces import Genotype, Supernet
from ..spaces.base import EdgePolicy


class SearchMethod(EdgePolicy):
    """Bilevel differentiable search; the defaults are DARTS."""

    name: ClassVar[str] = "base"
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    default_objective: ClassVar[str] = "ce"
    #: DARTS Eq. (8): the finite-difference step is ε = fd_radius / ‖∇_{w'} L_val(w', α)‖
    fd_radius: ClassVar[float] = 0.01

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.opts = coerce_options(f"method {self.name!r}", self.defaults, cfg.method_args)
        self.net = supernet
        self.objective = objective
        supernet.policy = self
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epoch = 0
        self.global_step = 0
        self.a_params: list[nn.Parameter] = supernet.arch_parameters()
        self.w_params: list[nn.Parameter] = supernet.weight_parameters() + [
            p for p in objective.parameters() if p.requires_grad]
        self.w_opt = torch.optim.SGD(self.w_params, lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay)
        self.a_opt = torch.optim.Adam(self.a_params, lr=cfg.a_lr, betas=cfg.a_betas,
                                      weight_decay=cfg.a_weight_decay)

    # -- schedules -------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Share of the search done, in [0, 1] (for annealed schedules)."""
        return min(1.0, self.global_step / (self.cfg.epochs * self.steps_per_epoch))

    def w_lr(self, epoch: int) -> float:
        """Cosine annealing from ``w_lr`` to ``w_lr_min`` over the epochs, stepped per epoch."""
        c = self.cfg
        return c.w_lr_min + 0.5 * (c.w_lr - c.w_lr_min) * (1 + math.cos(math.pi * epoch / c.epochs))

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.global_step = epoch * self.steps_per_epoch
        for g in self.w_opt.param_groups:
            g["lr"] = self.w_lr(epoch)

    # -- losses (hooks) ----------------------------------------------------------------------------
    def arch_loss(self, batch: Batch) -> LossOutput:
        """Upper-level loss L_val(w, α); regularisers on α are added here."""
        return self.objective(self.net, batch)

    def weight_loss(self, batch: Batch) -> LossOutput:
        """Lower-level loss L_train(w, α)."""
        return self.objective(self.net, batch)

    # -- one step ---------------------------------------------------------------------------------
    def step(self, train: Batch, val: Batch) -> dict[str, float]:
        """One search step: α on a val batch, then w on a train batch (DARTS Alg. 1)."""
        a_out = self.arch_step(val, train)
        w_out = self.weight_step(train)
        self.global_step += 1
        stats = {"loss": w_out.loss.item(), "val_loss": a_out.loss.item()}
        if w_out.logits is not None:
            stats["acc"] = accuracy(w_out.logits, train.y)
        if a_out.logits is not None:
            stats["val_acc"] = accuracy(a_out.logits, val.y)
        for k, v in {**a_out.terms}.items():
            stats[f"arch_{k}"] = float(v)
        for k, v in w_out.terms.items():
            stats[k] = float(v)
        return stats

    def arch_step(self, val: Batch, train: Batch) -> LossOutput:
        self.a_opt.zero_grad(set_to_none=True)
        if self.cfg.order == 2:
            out, grads = self.unrolled_arch_grads(val, train)
        else:
            with frozen(self.w_params):  # no graph (or saved tensors) for ∂L/∂w
                out = self.arch_loss(val)
                grads = grads_of(out.loss, self.a_params)
        set_grads(self.a_params, grads)
        self.a_opt.step()
        return out

    def weight_step(self, train: Batch) -> LossOutput:
        self.w_opt.zero_grad(set_to_none=True)
        with frozen(self.a_params):
            out = self.weight_loss(train)
            set_grads(self.w_params, grads_of(out.loss, self.w_params))
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_params, self.cfg.grad_clip)
        self.w_opt.step()
        return out

    # -- second order (DARTS Eq. 6-8) --------------------------------------------------------------
    def unrolled_arch_grads(self, val: Batch,
                            train: Batch) -> tuple[LossOutput, list[torch.Tensor]]:
        """∇_α L_val(w', α) − ξ ∇²_{α,w} L_train(w, α) ∇_{w'} L_val(w', α), with
        w' = w − ξ ∇_w L_train(w, α) (one virtual SGD step, momentum and weight decay included)
        and the Hessian-vector product by central finite differences (Eq. 8)."""
        xi = self.w_opt.param_groups[0]["lr"]
        w = self.w_params
        # BN running statistics of the supernet and of the objective's heads (a decoder)
        live = [*self.net.buffers(), *self.objective.buffers()]
        buffers = [b.clone() for b in live]
        saved = [p.detach().clone() for p in w]
        # virtual step w' (Eq. 6)
        with frozen(self.a_params):
            g_train = grads_of(self.weight_loss(train).loss, w)
        mom, wd = self.cfg.w_momentum, self.cfg.w_weight_decay
        with torch.no_grad():
            for p, g in zip(w, g_train, strict=True):
                buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
                d = g + wd * p
                if buf is not None:
                    d = d + mom * buf
                p.sub_(xi * d)
        out = self.arch_loss(val)
        grads = grads_of(out.loss, [*self.a_params, *w])
        g_alpha, g_wp = grads[:len(self.a_params)], grads[len(self.a_params):]
        # finite-difference Hessian-vector product (Eq. 8)
        eps = self.fd_radius / (torch.sqrt(sum((g * g).sum() for g in g_wp)) + 1e-12)
        hvp: list[torch.Tensor] = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, g in zip(w, saved, g_wp, strict=True):
                    p.copy_(p0).add_(sign * eps * g)
            g_a = grads_of(self.weight_loss(train).loss, self.a_params)
            hvp = g_a if not hvp else [h - g for h, g in zip(hvp, g_a, strict=True)]
        with torch.no_grad():
            for p, p0 in zip(w, saved, strict=True):
                p.copy_(p0)
            for b, b0 in zip(live, buffers, strict=True):
                b.copy_(b0)
        final = [ga - xi * h / (2 * eps) for ga, h in zip(g_alpha, hvp, strict=True)]
        return out, final

    # -- results -----------------------------------------------------------------------------------
    @torch.no_grad()
    def alpha_weights(self) -> dict[str, torch.Tensor]:
        """α after this method's weighting (softmax for DARTS), per cell kind."""
        return {k: self.edge_weights(a.detach()) for k, a in self.net.alphas.items()}

    def derive(self) -> Genotype:
        return self.net.genotype(self.alpha_weights())

    def state_dict(self) -> dict[str, Any]:
        return {"w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])


# ---------------------------------------------------------------------------------------- helpers
def grads_of(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Gradients of ``loss`` w.r.t. ``params`` only (zeros for unused ones)."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]


def set_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g


@contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Treat ``params`` as constants (no autograd graph through them) inside the block."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean())
