"""SNAS' resource constraint as a part (``--opt regularisers=resource``): Xie, Zheng, Liu & Lin,
"SNAS: Stochastic Neural Architecture Search", ICLR 2019, §2.4; reference SNAS-Series
``SNAS/model_search.py`` (``forward``: the ``resource_*`` terms), ``SNAS/operations.py`` (each
op's ``size``, ``flops``, ``mac``) and ``SNAS/train_search.py`` (``--resource_efficient``).

The search objective gets a cost of the sampled child network, E_{Z∼p_α(Z)}[L(Z)] + η·E[C(Z)]
(§2.4; only the paper's abstract could be read here, so no equation numbers are cited and the
terms follow the reference code). C is locally decomposable (the abstract's word): a sum over
the edges (i, j) of each cell of the cost of the op that the edge's one-hot Z_{i,j} selects,
C_{i,j}(Z) = Σ_o c_{i,j,o}·Z_{i,j,o}, where c counts the op's parameters ("size"), FLOPs and
memory access cost (MAC), the reference's three resources. Per cell kind the term is the mean
over that kind's cells of the sum over their edges (the reference divides the sums by its
8-cell network's 6 normal and 2 reduction cells), both kinds added; with ``resource_log`` (the
reference's ``--log_penalty``) each edge contributes ``log`` of its cost instead. The gradient
of E[C(Z)] can be taken three ways (``resource_estimator``; the reference's ``--method``):

* ``reparam`` (``reparametrization``; the README's search commands): C evaluated at the soft
  Gumbel-softmax sample Z of the same forward, differentiated through Z (pathwise);
* ``policy`` (``policy_gradient``; §2.4's form): Σ_e log p_α(Z_e)·sg(C_e(Z)), the
  score-function estimator with the Concrete density of the sample (Maddison et al., ICLR
  2017), log p_α(z) = log (n−1)! + (n−1) log τ + Σ_o log α_o − (τ+1) Σ_o log z_o
  − n log Σ_o α_o z_o^{−τ}, log α = the edge's logits (z and the inner sum floored at 1e-4 as
  in the reference);
* ``expected`` (``discrete``): C at the expectation of the one-hot draw, softmax(α).

``resource_cost``: ``all`` (the reference's ``--separation all``: 0.43·(2·size + FLOPs/4000 +
MAC/100) per op, or with ``resource_log`` the mean of the three logs), ``size``, ``flops`` or
``mac``. Under the log a per-edge cost below 1 counts as 1 (log 0), as in the reference. The
counts follow ``SNAS/operations.py`` for C channels (the op's share with partial channels),
input size h and output size y (h, or ⌈h/2⌉ on stride 2): sep_conv k×k has 2Ck² + 2C²
parameters, FLOPs = parameters·y², MAC y²·8C + parameters (y²·11C on stride 2); dil_conv
Ck² + C², MAC y²·4C (7C) + parameters; nor_conv (ReLU-conv-BN) C²k², MAC y²·2C (5C) +
parameters; pools 0 parameters, 9Cy² FLOPs, MAC 2Cy² (5Cy²); skip 0, 0, 2Ch²; the stride-2
skip (FactorizedReduce) C² parameters, C²y² FLOPs, MAC 2y²(4C + C/2) + C²; none 0. The
spatial sizes are read from the first forward (a hook on every mixed edge, removed once every
edge has been seen).

Deviations (one line each):
- the reference's policy-gradient log-density is not detached from the sample (its gradient
  also runs through Z); ours is the score function ∇_α log p_α(z) at the drawn z.
- the reference divides by 6 and 2 cells whatever the depth; ours by the network's own counts.
- the reference adds the term to its single loss (w and α); it depends on α only, so ours adds
  it to the α step's loss, with the α step's own sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DiffnasError
from ..spaces.base import MixedEdge
from ..spaces.ops import DilConv, FactorizedReduce, Identity, Pool, ReLUConvBN, SepConv, Zero
from .parts import Part, register_part
from .regularisers import choice_option

ESTIMATORS = ("reparam", "policy", "expected")
COSTS = ("all", "size", "flops", "mac")


def op_cost(op: torch.nn.Module, c: int, h: int, stride: int) -> tuple[float, float, float]:
    """(parameters, FLOPs, MAC) of one candidate op on ``c`` channels and ``h × h`` inputs
    (the counting of SNAS-Series ``SNAS/operations.py``)."""
    y = h if stride == 1 else -(-h // stride)
    if isinstance(op, Zero):
        return 0.0, 0.0, 0.0
    if isinstance(op, Identity):
        return 0.0, 0.0, 2.0 * c * h * h
    if isinstance(op, Pool):
        return 0.0, 9.0 * c * y * y, (2.0 if stride == 1 else 5.0) * c * y * y
    if isinstance(op, FactorizedReduce):
        size = 2.0 * c * (c // 2)
        return size, size * y * y, 2.0 * y * y * (4 * c + c // 2) + size
    if isinstance(op, SepConv):
        k = op.first.dw.kernel_size[0]
        size = 2.0 * c * k * k + 2.0 * c * c
        return size, size * y * y, y * y * ((7 if stride == 1 else 10) * c + c) + size
    if isinstance(op, DilConv):
        k = op.dw.kernel_size[0]
        size = float(c * k * k + c * c)
        return size, size * y * y, y * y * ((3 if stride == 1 else 6) * c + c) + size
    if isinstance(op, ReLUConvBN):
        k = op.conv.kernel_size[0]
        size = float(c * c * k * k)
        return size, size * y * y, y * y * ((1 if stride == 1 else 4) * c + c) + size
    raise DiffnasError(f"the resource part has no cost for a {type(op).__name__} op; it counts "
                       "SepConv, DilConv, ReLUConvBN, FactorizedReduce, Pool, Identity, Zero")


def edge_costs(costs: torch.Tensor, weights: torch.Tensor, which: str,
               log: bool) -> torch.Tensor:
    """Per (cell, edge): the cost of the op choice ``weights`` (``[edges, ops]``, one sample
    shared by the cells of a kind) under ``costs`` (``[cells, edges, ops, 3]``: parameters,
    FLOPs, MAC), combined as the reference's ``--separation`` ``which``; with ``log`` the log of
    each resource (a value below 1 counts as 1, log 0), for ``all`` their mean."""
    r = (costs * weights.unsqueeze(-1)).sum(dim=-2)  # [cells, edges, 3]
    if log:
        r = torch.log(torch.where(r.abs() < 1, torch.ones_like(r), r.abs()))
        if which == "all":
            return r.mean(dim=-1)
    elif which == "all":
        return 0.43 * (2 * r[..., 0] + r[..., 1] / 4000 + r[..., 2] / 100)
    return r[..., COSTS.index(which) - 1]


def concrete_log_prob(logits: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """Per row: log density of the Concrete (Gumbel-softmax) distribution at ``z`` with
    location exp(``logits``) and temperature ``tau`` (Maddison et al., ICLR 2017; the reference's
    ``Network.logp``, its 1e-4 floors included)."""
    n = logits.shape[-1]
    z = z.clamp_min(1e-4)
    inner = (z.pow(-tau) * logits.exp()).clamp_min(1e-4).sum(dim=-1)
    return (math.lgamma(n) + (n - 1) * math.log(tau) + logits.sum(dim=-1)
            - (tau + 1) * z.log().sum(dim=-1) - n * inner.log())


@register_part
class Resource(Part):
    slot = "regularisers"
    name = "resource"
    paper = ("SNAS (Xie et al., ICLR 2019) §2.4: resource_weight · cost (parameters, FLOPs, MAC) "
             "of the sampled child, per cell kind the mean over its cells of the edge sum; "
             "estimator reparam, policy (score function) or expected")
    options = {"resource_weight": 1.5e-3, "resource_estimator": "reparam", "resource_log": True,
               "resource_cost": "all"}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        if float(self.opts["resource_weight"]) < 0:
            raise DiffnasError(f"option resource_weight must be >= 0, got "
                               f"{self.opts['resource_weight']}")
        self.estimator = choice_option("resource_estimator", self.opts["resource_estimator"],
                                       ESTIMATORS)
        self.which = choice_option("resource_cost", self.opts["resource_cost"], COSTS)
        if self.estimator == "policy" and not hasattr(method.weighting, "tau"):
            raise DiffnasError("resource_estimator=policy needs the Concrete density of a "
                               f"Gumbel-softmax sample (weighting=gumbel), not weighting="
                               f"{method.weighting.name}")
        #: per cell kind: [cells, edges, ops, 3] costs, once every edge's input size is known
        self.costs: dict[str, torch.Tensor] | None = None
        self.samples: dict[str, torch.Tensor] = {}
        self._sizes: dict[int, int] = {}
        edges = [e for _, cell in method.net.search_cells() for e in cell.edges]
        self._hooks = [e.register_forward_pre_hook(self._seen) for e in edges]

    def _seen(self, edge: MixedEdge, args: tuple[Any, ...]) -> None:
        self._sizes[id(edge)] = int(args[0].shape[-1])
        if len(self._sizes) == len(self._hooks):
            for h in self._hooks:
                h.remove()
            self._hooks = []
            self.costs = self.cost_table()

    def cost_table(self) -> dict[str, torch.Tensor]:
        """Per cell kind: ``[cells, edges, ops, 3]`` (parameters, FLOPs, MAC) of every op."""
        rows: dict[str, list[list[list[tuple[float, float, float]]]]] = {}
        for kind, cell in self.method.net.search_cells():
            rows.setdefault(kind, []).append([
                [op_cost(op, e.c // e.partial_channels, self._sizes[id(e)], e.stride)
                 for op in e.ops] for e in cell.edges])
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}

    def adjust_weights(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        if self.method.phase == "arch":  # the α step's sample: what the term is evaluated at
            self.samples[kind] = weights
        return weights

    def value(self) -> torch.Tensor:
        """Σ over cell kinds of the mean over that kind's cells of Σ_edges cost (or log cost)."""
        if self.costs is None:
            raise DiffnasError("the resource part needs a forward of the supernet before its "
                               "cost can be evaluated (the edges' input sizes are read from it)")
        m, log = self.method, bool(self.opts["resource_log"])
        total: torch.Tensor | None = None
        for kind, alpha in m.net.alphas.items():
            costs = self.costs[kind].to(alpha.device, alpha.dtype)
            if self.estimator == "expected":
                w = F.softmax(alpha, dim=-1)
            else:
                w = self.samples.get(kind)
                if w is None:
                    w = m.sample_weights(alpha)
            per_edge = edge_costs(costs, w, self.which, log)  # [cells, edges]
            if self.estimator == "policy":
                logp = concrete_log_prob(alpha, w.detach(), float(m.weighting.tau))
                term = (logp.unsqueeze(0) * per_edge.detach()).sum(dim=-1).mean()
            else:
                term = per_edge.sum(dim=-1).mean()
            total = term if total is None else total + term
        self.samples = {}
        assert total is not None
        return total

    def arch_terms(self, batch: Any, out: Any) -> dict[str, torch.Tensor]:
        weight = float(self.opts["resource_weight"])
        if weight == 0:
            return {}
        return {"resource": weight * self.value()}
