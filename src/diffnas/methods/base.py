"""The search-method interface: a bilevel search built from exchangeable parts.

A method is an :class:`~diffnas.spaces.base.EdgePolicy` (how α weights and selects the ops
of every edge, called by the supernet's forward) plus the update rules of one search step.
The search loop only calls::

    method = METHODS[name](cfg, supernet, objective, steps_per_epoch)
    method.begin_epoch(epoch)
    stats = method.step(train_batch, val_batch)   # per step, floats
    method.derive()                                # genotype
    method.epoch_metrics()                         # extra metrics (JSON)
    method.state_dict() / load_state_dict()        # resume
    METHODS[name].stage_epochs(cfg)                # stages (P-DARTS): between two,
    method.next_stage(s) / new.carry_over(method)  # the supernet is rebuilt

What differs between the DARTS-family methods lives in *parts* (:mod:`.parts`, which also
says how to add one): a weighting (softmax, gumbel, dirichlet, sigmoid, relu), an edge
computation (all ops, one sampled op), regularisers/perturbations and a derivation. A named
method is ``parts`` plus paper values of their options (``part_options``); every slot and
option can be changed per run with ``--opt``. Beside the parts every method takes the
generic step options of :data:`GENERIC_OPTIONS`.

A method with its own mechanics overrides hooks instead: ``edge_weights`` / ``edge_policy``
(STC-NAS), ``arch_loss`` / ``weight_loss``, ``arch_step`` / ``weight_step`` / ``step``
(CDARTS' second network), ``derive``. Defaults implement DARTS (Liu et al., ICLR 2019):
Eq. (3)-(4) first order, Eq. (6)-(8) second order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import SearchConfig
from ..errors import DiffnasError
from ..objectives import Batch, LossOutput, Objective
from ..spaces import SPACES, Genotype, Supernet
from ..spaces.base import EdgePolicy, EdgeWeights
from . import derivation, pruning  # noqa: F401  (register the parts)
from .edges import AllOps
from .parts import Derivation, EdgeComputation, Part, Weighting, resolve_options
from .weighting import Softmax

#: Options every method takes (``--opt KEY=VALUE``), beside its own and its parts' options.
GENERIC_OPTIONS: dict[str, Any] = {
    "w_first": False,          # update w before α in a step (GDAS' reference order)
    "nesterov": False,         # Nesterov momentum for the weights' SGD (GDAS' configs)
    "arch_warmup_epochs": 0,   # epochs at the start in which α is not updated
    "arch_optimizer": "adam",  # adam (betas a_betas) or sgd (no momentum; SNAS' 1-GPU code)
    "single_level": False,     # the α step uses the train batch too (SNAS; a FairDARTS option)
    "drop_none": False,        # build the supernet without the `none` op (FairDARTS)
    "partial_channels": 1,     # ops on C/K channels of each edge, K > 1 (PC-DARTS Eq. 2)
    "edge_norm": False,        # β per edge, softmaxed per node (PC-DARTS Eq. 3)
    "bn_batch_stats": False,  # all BNs use batch statistics in eval too (NB201 BN=0; GDAS)
    "arch_grad_clip": 0.0,     # clip ‖∇α‖ to this (0 = off; P-DARTS clips at 5)
    "fix_alpha": False,        # α is never updated: uniform α (DARTS-PT's "fix α" supernet)
    "proj_intv": 5,            # --select pt: fine-tuning epochs between decisions (DARTS-PT)
    "pt_crit": "acc",          # --select pt: rank ops/edges by val accuracy (acc) or loss
}


class SearchMethod(EdgePolicy):
    """Bilevel differentiable search made of parts; the defaults are DARTS."""

    name: ClassVar[str] = "base"
    paper: ClassVar[str] = ""
    #: the method's own options (not parts'), with defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: the part in each slot (``regularisers``: a comma-separated list, may be empty)
    parts: ClassVar[dict[str, str]] = {"weighting": "softmax", "edges": "all",
                                       "derivation": "argmax", "regularisers": ""}
    #: the method's values for options of its parts and for :data:`GENERIC_OPTIONS`
    part_options: ClassVar[dict[str, Any]] = {}
    default_objective: ClassVar[str] = "ce"
    #: DARTS Eq. (8): the finite-difference step is ε = fd_radius / ‖∇_{w'} L_val(w', α)‖
    fd_radius: ClassVar[float] = 0.01
    #: the DARTS parts until ``__init__`` binds this run's (so a bare instance is DARTS' policy)
    weighting: Weighting = Softmax(None, {})
    edges: EdgeComputation = AllOps(None, {})
    regularisers: tuple[Part, ...] | list[Part] = ()

    #: the search stage this instance trains (set by the loop; see :meth:`stage_epochs`)
    stage: int = 0
    #: where the stage sits in the whole search (set by the loop): its first epoch there, and
    #: the search's epochs (None: the stage is the whole search, ``cfg.epochs``)
    stage_start: int = 0
    search_epochs: int | None = None

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.opts, chosen = self.resolve_options(cfg.method_args)
        self.net = supernet
        self.objective = objective
        supernet.policy = self
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epoch = 0
        self.global_step = 0
        #: which step's forward runs: "arch", "weight" or "eval" (read by perturbation parts)
        self.phase = "eval"
        self.a_params: list[nn.Parameter] = supernet.arch_parameters()
        self.w_params: list[nn.Parameter] = supernet.weight_parameters() + [
            p for p in objective.parameters() if p.requires_grad]
        if self.opts["nesterov"] and cfg.w_momentum <= 0:
            raise DiffnasError(f"method {self.name!r} option nesterov needs a momentum > 0, "
                               f"got {cfg.w_momentum}")
        self.w_opt = torch.optim.SGD(self.w_params, lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay,
                                     nesterov=bool(self.opts["nesterov"]))
        self.a_opt: torch.optim.Optimizer
        if self.opts["arch_optimizer"] == "sgd":
            self.a_opt = torch.optim.SGD(self.a_params, lr=cfg.a_lr,
                                         weight_decay=cfg.a_weight_decay)
        elif self.opts["arch_optimizer"] == "adam":
            self.a_opt = torch.optim.Adam(self.a_params, lr=cfg.a_lr, betas=cfg.a_betas,
                                          weight_decay=cfg.a_weight_decay)
        else:
            raise DiffnasError(f"method {self.name!r} option arch_optimizer="
                               f"{self.opts['arch_optimizer']!r} is unknown; valid: adam, sgd")
        # parts last: they may read (and adjust) everything above
        self.weighting: Weighting = chosen["weighting"][0](self, self.opts)  # type: ignore[assignment]
        self.edges: EdgeComputation = chosen["edges"][0](self, self.opts)  # type: ignore[assignment]
        self.derivation: Derivation = chosen["derivation"][0](self, self.opts)  # type: ignore[assignment]
        self.regularisers: list[Part] = [p(self, self.opts) for p in chosen["regularisers"]]
        self.early_stop: list[Part] = [p(self, self.opts) for p in chosen["early_stop"]]
        self.all_parts: list[Part] = [self.weighting, self.edges, self.derivation,
                                      *self.regularisers, *self.early_stop]
        #: set by :meth:`stop_early`: the stop's ``epoch``, ``genotype`` (dict), ``reason``
        self.stopped: dict[str, Any] | None = None
        #: set by :meth:`roll_back`: the epoch whose end state the search continues from
        self.rollback_to: int | None = None

    # -- options and parts -----------------------------------------------------------------------
    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """This method's options under ``given`` (``--opt``), and the part classes per slot."""
        own = cls.own_slots()
        if own & set(given):
            raise DiffnasError(f"method {cls.name!r} has its own edge policy, so the "
                               f"{' and '.join(sorted(own & set(given)))} part does not apply to "
                               "it; choose the parts on a method built from them (e.g. darts)")
        return resolve_options(cls.name, cls.defaults, GENERIC_OPTIONS, cls.parts,
                               cls.part_options, given)

    @classmethod
    def own_slots(cls) -> set[str]:
        """Slots this method replaces by overriding the hook that uses them (STC-NAS' sub-cells
        replace the weighting and edge parts)."""
        if cls.edge_policy is not SearchMethod.edge_policy:
            return {"weighting", "edges"}
        return set()

    @classmethod
    def describe_parts(cls) -> str:
        """``weighting=softmax, edges=all, ...`` (for ``diffnas list``)."""
        own = cls.own_slots()
        shown = [f"{k}=({cls.name}'s own)" if k in own else f"{k}={v}"
                 for k, v in cls.parts.items() if v or k in own]
        extra = [f"{k}={v}" for k, v in cls.part_options.items()]
        return ", ".join(shown + extra)

    @classmethod
    def supernet_options(cls, cfg: SearchConfig) -> dict[str, Any]:
        """Keyword arguments for ``build_supernet`` that this method's options ask for."""
        opts, chosen = cls.resolve_options(cfg.method_args)
        out: dict[str, Any] = {}
        if opts["drop_none"]:
            ops = inspect.signature(SPACES[cfg.space]).parameters["op_names"].default
            out["op_names"] = tuple(o for o in ops if o != "none")
        if opts["partial_channels"] != 1:  # only non-defaults: other supernets stay as they were
            out["partial_channels"] = int(opts["partial_channels"])
        if opts["edge_norm"]:
            out["edge_norm"] = True
        if opts["bn_batch_stats"]:
            out["bn_batch_stats"] = True
        for ps in chosen.values():
            for p in ps:
                out.update(p.supernet_options(opts))
        return out

    # -- stages (a generic phase of the loop) -----------------------------------------------------
    @classmethod
    def stage_epochs(cls, cfg: SearchConfig) -> list[int]:
        """Epochs of each search stage (summing to ``cfg.epochs``); one stage by default.

        Between stages the loop asks the finishing stage's method for the next stage's space
        (:meth:`next_stage`), builds a new supernet, objective and method from it (whose
        ``cfg.epochs`` is the stage's epochs, so schedules restart; one that runs on over the
        stages reads ``stage_start`` and ``search_epochs``), sets its ``stage`` and calls
        :meth:`carry_over` on it with the finished method."""
        return [cfg.epochs]

    def next_stage(self, stage: int) -> dict[str, Any]:
        """The space description of stage ``stage`` (JSON-able): ``layers`` and ``channels`` of
        the supernet, ``supernet``: extra ``build_supernet`` options (e.g. ``edge_ops``)."""
        raise DiffnasError(f"method {self.name!r} declares stages but no next_stage")

    def carry_over(self, previous: SearchMethod) -> None:
        """Take what this method keeps across a stage switch from ``previous`` (nothing by
        default: P-DARTS trains every stage's supernet from scratch)."""

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
        for part in self.all_parts:
            part.begin_epoch(epoch)

    # -- edge policy (weighting, regulariser and edge parts) ---------------------------------------
    def edge_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        """The weighting's deterministic op weights f(α) (derivation, logging, evaluation)."""
        return self.weighting.weights(alpha)

    def sample_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        """The op weights of a training forward (a fresh sample for stochastic weightings)."""
        return self.weighting.sample(alpha)

    def edge_policy(self, supernet: Supernet, kind: str) -> EdgeWeights:
        alpha = supernet.alphas[kind]
        w = self.sample_weights(alpha) if supernet.training else self.edge_weights(alpha)
        w = kept_ops(w, supernet.op_mask(kind))
        for part in self.regularisers:
            w = part.adjust_weights(kind, part.restrict(kind, w))
        return self.edges.policy(supernet, kind, w)

    # -- losses (hooks) ----------------------------------------------------------------------------
    def arch_loss(self, batch: Batch) -> LossOutput:
        """Upper-level loss L_val(w, α) plus the parts' α terms."""
        out = self.objective(self.net, batch)
        return add_terms(out, [p.arch_terms(batch, out) for p in self.regularisers])

    def weight_loss(self, batch: Batch) -> LossOutput:
        """Lower-level loss L_train(w, α) plus the parts' w terms."""
        out = self.objective(self.net, batch)
        return add_terms(out, [p.weight_terms(batch, out) for p in self.regularisers])

    # -- one step ---------------------------------------------------------------------------------
    def arch_frozen(self) -> bool:
        """True while α is not updated (``arch_warmup_epochs``; always with ``fix_alpha``)."""
        return bool(self.opts["fix_alpha"]) or self.epoch < int(self.opts["arch_warmup_epochs"])

    def step(self, train: Batch, val: Batch) -> dict[str, float]:
        """One search step: α on a val batch, then w on a train batch (DARTS Alg. 1); w first
        with ``w_first``, α on the train batch with ``single_level``, w only during
        ``arch_warmup_epochs``."""
        a_out: LossOutput | None = None
        a_batch = train if self.opts["single_level"] else val
        if self.opts["w_first"]:
            w_out = self.weight_step(train)
            if not self.arch_frozen():
                a_out = self.arch_step(a_batch, train)
        else:
            if not self.arch_frozen():
                a_out = self.arch_step(a_batch, train)
            w_out = self.weight_step(train)
        self.global_step += 1
        stats = {"loss": w_out.loss.item()}
        if w_out.logits is not None:
            stats["acc"] = accuracy(w_out.logits, train.y)
        if a_out is not None:
            stats["val_loss"] = a_out.loss.item()
            if a_out.logits is not None:
                stats["val_acc"] = accuracy(a_out.logits, val.y)
            for k, v in a_out.terms.items():
                stats[f"arch_{k}"] = float(v)
        for k, v in w_out.terms.items():
            stats[k] = float(v)
        for part in self.all_parts:
            stats.update(part.stats())
        return stats

    def arch_step(self, val: Batch, train: Batch) -> LossOutput:
        self.phase = "arch"
        self.a_opt.zero_grad(set_to_none=True)
        if self.cfg.order == 2:
            out, grads = self.unrolled_arch_grads(val, train)
        else:
            with frozen(self.w_params):  # no graph (or saved tensors) for ∂L/∂w
                out = self.arch_loss(val)
                grads = grads_of(out.loss, self.a_params)
        set_grads(self.a_params, grads)
        if self.opts["arch_grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self.a_params, float(self.opts["arch_grad_clip"]))
        self.a_opt.step()
        for part in self.all_parts:
            part.after_arch_step()
        self.phase = "eval"
        return out

    def weight_step(self, train: Batch) -> LossOutput:
        self.phase = "weight"
        for part in self.all_parts:
            part.before_weight_step(train)
        self.w_opt.zero_grad(set_to_none=True)
        with frozen(self.a_params):
            out = self.weight_loss(train)
            set_grads(self.w_params, grads_of(out.loss, self.w_params))
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_params, self.cfg.grad_clip)
        self.w_opt.step()
        self.phase = "eval"
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
        """α after this method's weighting (softmax for DARTS), per cell kind (restricted to the
        ops a pruning part keeps)."""
        return self.op_weights()

    def op_weights(self) -> dict[str, torch.Tensor]:
        """:meth:`alpha_weights` with gradient to α (the latency term's weights)."""
        out = {}
        for kind, a in self.net.alphas.items():
            w = kept_ops(self.edge_weights(a), self.net.op_mask(kind))
            for part in self.regularisers:
                w = part.restrict(kind, w)
            out[kind] = w
        return out

    def derive(self) -> Genotype:
        """The derivation part's genotype (DARTS: the space's argmax rule)."""
        return self.derivation.derive()

    # -- early stopping and rollback (slot ``early_stop``) -----------------------------------------
    def hessian_every(self) -> int:
        """Epochs between evaluations of ``hessian_eig`` (0: never): ``--hessian-every``, else
        what the early-stopping parts need."""
        return self.cfg.hessian_every or max((p.hessian_every() for p in self.early_stop),
                                             default=0)

    def end_epoch(self, record: dict[str, Any]) -> dict[str, Any]:
        """Called by the loop after every epoch (``self.epoch``) with its metrics record;
        returns the early-stopping parts' entries for it. Afterwards :attr:`stopped` says the
        search stops (with that genotype) and :attr:`rollback_to` that it continues after
        that earlier epoch (the parts have restored the state)."""
        out: dict[str, Any] = {}
        for part in self.early_stop:
            if self.stopped is None:
                out.update(part.end_epoch({**record, **out}))
        return out

    def stop_early(self, epoch: int, genotype: Genotype | dict[str, Any], reason: str) -> None:
        """Stop the search after this epoch; its result is ``genotype`` (that of ``epoch``)."""
        g = genotype if isinstance(genotype, dict) else genotype.to_dict()
        self.stopped = {"epoch": int(epoch), "at_epoch": self.epoch, "genotype": g,
                        "reason": reason}

    def roll_back(self, epoch: int) -> None:
        """Continue the search after ``epoch`` (the caller has restored that epoch's state)."""
        self.rollback_to = int(epoch)

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra JSON entries for each epoch's metrics record and, from the end of the search,
        result.json (CDARTS: its evaluation network's genotype); none by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"w_opt": self.w_opt.state_dict(),
                                 "a_opt": self.a_opt.state_dict()}
        parts = {f"{p.slot}={p.name}": p.state_dict() for p in self.all_parts}
        parts = {k: v for k, v in parts.items() if v}
        if parts:
            state["parts"] = parts
        if self.stopped is not None:
            state["stopped"] = self.stopped
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.stopped = state.get("stopped")
        saved = state.get("parts", {})
        for p in self.all_parts:
            if f"{p.slot}={p.name}" in saved:
                p.load_state_dict(saved[f"{p.slot}={p.name}"])


# ---------------------------------------------------------------------------------------- helpers
def kept_ops(weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``weights`` renormalised over each edge's kept ops (``mask``; unchanged when None): for a
    softmax, the softmax over the kept ops' α, as P-DARTS' smaller supernets compute it."""
    if mask is None:
        return weights
    w = weights * mask.to(weights.device)
    return w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


def add_terms(out: LossOutput, terms: list[dict[str, torch.Tensor]]) -> LossOutput:
    """``out`` with the (already scaled) ``terms`` added to its loss and logged by name."""
    extra = {k: v for t in terms for k, v in t.items()}
    if not extra:
        return out
    loss = out.loss + sum(extra.values())
    return LossOutput(loss, out.logits, {**out.terms, **{k: v.detach() for k, v in extra.items()}})


#: Set by :func:`diffnas.engine.distributed.session` for a data-parallel run: averages the
#: gradients :func:`grads_of` returns over the ranks (None: one process, gradients as taken).
GRAD_REDUCER: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None


def grads_of(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Gradients of ``loss`` w.r.t. ``params`` only (zeros for unused ones, and for all when the
    loss does not depend on any: e.g. a sampled sub-network whose every path draws ``none``);
    under data parallelism averaged over the ranks (:data:`GRAD_REDUCER`)."""
    if not loss.requires_grad:
        grads = [torch.zeros_like(p) for p in params]
    else:
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]
    return grads if GRAD_REDUCER is None else GRAD_REDUCER(grads)


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
