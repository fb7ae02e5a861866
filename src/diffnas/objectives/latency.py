"""Latency as a search objective: the expected latency of the network a search derives,
under the method's op weights, from a measured table (:mod:`diffnas.engine.latency`).

The expected latency follows ProxylessNAS (Cai, Zhu & Han, ICLR 2019, §3.3, "Handling
non-differentiable hardware metrics": ``E[latency_i] = Σ_j p_j^i · F(o_j^i)`` per mixed op,
summed over the mixed ops, F a latency lookup) and FBNet's lookup-table latency (Wu et al.,
CVPR 2019, §3.2: ``LAT(a) = Σ_l Σ_i m_{l,i} · LAT(b_{l,i})``)::

    E[lat] = fixed + Σ_kinds Σ_edges keep_e · Σ_ops q_{e,o} · Σ_{cells of the kind} lat_{c,e,o}

with ``fixed`` the table's fixed parts (stem, preprocessing, head: :mod:`diffnas.engine.latency`)
and ``q`` the method's op
weights (:meth:`~diffnas.methods.base.SearchMethod.op_weights`: the weighting of α,
restricted to kept ops) renormalised over the ops the space's derivation can pick. It enters
the α loss as ``λ·log(E[lat]/target)`` (``form=log``: FBNet's Eq. (2) loss
``CE · α·log(LAT)^β`` made additive with β = 1, so the target only shifts the loss) or
``λ·max(0, E[lat]/target − 1)`` (``form=hinge``: no pull once under the target).

Deviations (paper says X, reference does Y, we do Z because ...):

* FBNet multiplies CE by ``α·log(LAT)^β``; we add ``λ·log(E/target)``, because the term must
  compose with every method's α loss (MIM reconstruction, CDARTS' distillation, STC-NAS' JS
  pull), which a product with CE would rescale.
* FBNet weights the table by the Gumbel-softmax sample ``m``; ProxylessNAS by the path
  probabilities ``p``; we use the method's deterministic op weights (``p`` for softmax
  methods, ReLU(α)/sigmoid(α) normalised per edge for STC-NAS/FairDARTS), because they are
  defined for every method, sampling or not.
* Both papers search chains (one op per layer). In cell spaces the derivation keeps only some
  edges (DARTS: 2 of the 2+i inputs of node i) and never picks some ops (DARTS: ``none``), which
  a sum over all edges and ops would ignore. We probe the space's own derivation on random op
  weights once: an edge counts with its chance to be kept (the mean over the edges into its
  node, 2/(2+i) in DARTS), and ``q`` is renormalised over the ops the derivation ever picks.
  Which edges are kept is not made differentiable.
* ``stat=min`` (default ``median``): the table's fastest run per entry (and the fixed parts'
  by the fastest runs), for tables measured on a loaded machine (see :mod:`diffnas.engine.latency`).
* ``estimate=derived`` (diffnas' own; default ``expected``): the term's value is the table's
  latency of the genotype derived from the current α, and its gradient that of ``E[lat]``
  (straight-through). A short search moves α little, so the soft expectation stays near the
  uniform mixture while the argmax network can already be under the target; the hinge then
  stops exactly when the derived network is fast enough.
* The keep chances, the derivable ops and ``estimate=derived`` use the space's derivation
  (``net.genotype``), not a method's own derivation part (FairDARTS' threshold, CDARTS'
  discretisation), because the space's rule is the one every method shares.

The term composes with every method and objective because it wraps the objective
(:class:`WithArchTerms`): every method's α loss calls the objective, and the term is added
whenever α is being differentiated (α requires grad, grad enabled), so the weight step (α
frozen) and evaluation (no grad) never see it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from .base import Batch, LossOutput, Objective

FORMAT = "diffnas-latency-table"
VERSION = 1
FORMS = ("log", "hinge")
ESTIMATES = ("expected", "derived")
#: the table statistic the term reads: each entry's median, or its fastest run
STATS = {"median": "median_ms", "min": "min_ms"}
#: the ``latency`` config entry: its keys and defaults (``table`` and ``target_ms`` required)
LATENCY_DEFAULTS: dict[str, Any] = {"table": "", "target_ms": 0.0, "weight": 1.0, "form": "log",
                                    "estimate": "expected", "stat": "median", "sha256": ""}


def check_latency_config(d: dict[str, Any]) -> None:
    """Refuse a bad ``latency`` config entry (empty: no latency term) with one clear line."""
    if not d:
        return
    bad = sorted(set(d) - set(LATENCY_DEFAULTS))
    if bad:
        raise DiffnasError(f"latency config has unknown key(s) {', '.join(bad)}; valid: "
                           f"{', '.join(LATENCY_DEFAULTS)}")
    c = {**LATENCY_DEFAULTS, **d}
    if not c["table"]:
        raise DiffnasError("the latency term needs a table: --latency TABLE.json (made by "
                           "`diffnas latency`)")
    try:
        target, weight = float(c["target_ms"]), float(c["weight"])
    except (TypeError, ValueError):
        raise DiffnasError(f"latency target and weight must be numbers, got "
                           f"{c['target_ms']!r}, {c['weight']!r}") from None
    if not (math.isfinite(target) and target > 0):
        raise DiffnasError(f"--latency needs --lat-target MS > 0 (the latency to aim for, in "
                           f"milliseconds), got {c['target_ms']!r}")
    if not (math.isfinite(weight) and weight >= 0):
        raise DiffnasError(f"--lat-weight must be a number >= 0, got {c['weight']!r}")
    if c["form"] not in FORMS:
        raise DiffnasError(f"unknown --lat-form {c['form']!r}; valid: {', '.join(FORMS)}")
    if c["stat"] not in STATS:
        raise DiffnasError(f"unknown latency statistic {c['stat']!r}; valid: "
                           f"{', '.join(STATS)}")
    if c["estimate"] not in ESTIMATES:
        raise DiffnasError(f"unknown latency estimate {c['estimate']!r}; valid: "
                           f"{', '.join(ESTIMATES)}")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------- genotype -> edges
def genotype_ops(net: nn.Module, genotype: Any) -> dict[str, torch.Tensor]:
    """Per cell kind, ``[edges, ops]`` one-hot of the op each edge of ``genotype`` uses (a zero
    row for an edge the genotype drops), in the supernet ``net``'s α order.

    DARTS and NAS-Bench-201 genotypes map by their rule (STC-NAS' :func:`subcell`). For any
    other space the map is found from the space's own derivation (``net.genotype``): one op
    per edge, chosen edge by edge so that the genotype derived from the one-hot weights agrees
    with ``genotype`` in most tokens of its JSON, until it equals it (this finds chain spaces'
    genotypes, one op name per layer)."""
    from ..methods.stc import subcell  # lazy: methods import the objectives

    try:
        return {k: t.detach().cpu() for k, t in subcell(net, genotype).target.items()}
    except TypeError:
        pass
    want = _leaves(genotype.to_dict())
    n_ops = len(net.op_names)
    onehot = {k: torch.zeros(len(net.edge_index[k]), n_ops) for k in net.kinds}
    for w in onehot.values():
        w[:, 0] = 1.0

    def score(w: dict[str, torch.Tensor]) -> int:
        got = _leaves(net.genotype(w).to_dict())
        return sum(a == b for a, b in zip(got, want, strict=False)) - abs(len(got) - len(want))

    for _ in range(3):
        for w in onehot.values():
            for e in range(w.shape[0]):
                best, best_o = None, 0
                for o in range(n_ops):
                    w[e] = 0.0
                    w[e, o] = 1.0
                    s = score(onehot)
                    if best is None or s > best:
                        best, best_o = s, o
                w[e] = 0.0
                w[e, best_o] = 1.0
        if net.genotype(onehot).to_dict() == genotype.to_dict():
            return onehot
    raise DiffnasError(f"cannot map the genotype {genotype} onto the edges of the "
                       f"{getattr(net, 'space', '?')} supernet (no one-hot op choice derives it)")


def _leaves(d: Any) -> list[str]:
    """The word tokens of a genotype's JSON (field names, op names, indices), in order."""
    return re.findall(r"[\w.]+", json.dumps(d, sort_keys=True))


def derivation_probe(net: nn.Module, draws: int = 64,
                     seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(keep, derivable)`` per kind: each edge's chance to be kept by the space's derivation
    under random op weights, averaged over the edges into the same node (``[edges]``), and
    the ops the derivation ever picks (``[ops]`` bool), from ``draws`` random derivations."""
    g = torch.Generator().manual_seed(seed)
    counts = {k: torch.zeros(len(net.edge_index[k]), len(net.op_names)) for k in net.kinds}
    for _ in range(draws):
        w = {k: F.softmax(torch.randn(c.shape, generator=g), dim=-1) for k, c in counts.items()}
        for k, t in genotype_ops(net, net.genotype(w)).items():
            counts[k] += t
    keep, derivable = {}, {}
    for k, c in counts.items():
        raw = c.sum(dim=1) / draws
        dst = [d for _, d in net.edge_index[k]]
        keep[k] = torch.tensor([float(raw[[j for j, dj in enumerate(dst) if dj == d]].mean())
                                for d in dst])
        derivable[k] = c.sum(dim=0) > 0
    return keep, derivable


# ------------------------------------------------------------------------------------- table
class LatencyTable:
    """A table written by ``diffnas latency`` (checked on construction)."""

    def __init__(self, data: Any, source: str) -> None:
        self.source = source
        self.data = data
        where = f"latency table {source}"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DiffnasError(f"{where} is not a diffnas latency table (no \"format\": "
                               f"\"{FORMAT}\"); make one with `diffnas latency`")
        if data.get("version") != VERSION:
            raise DiffnasError(f"{where} has version {data.get('version')!r}; this diffnas "
                               f"reads version {VERSION}: remake it with `diffnas latency`")
        for key in ("space", "op_names", "kinds", "entries", "edges", "config", "measure"):
            if key not in data:
                raise DiffnasError(f"{where} lacks its {key!r} field; remake it with "
                                   "`diffnas latency`")
        entries = data["entries"]
        for key, e in entries.items():
            ms = e.get("median_ms") if isinstance(e, dict) else None
            if not isinstance(ms, int | float) or not math.isfinite(ms) or ms <= 0:
                raise DiffnasError(f"{where}: entry {key!r} has no positive median_ms "
                                   f"(got {ms!r})")
        ops = set(data["op_names"])
        for i, edge in enumerate(data["edges"]):
            if not isinstance(edge, dict) or edge.get("kind") not in data["kinds"]:
                raise DiffnasError(f"{where}: edge record {i} has no valid kind (valid: "
                                   f"{', '.join(data['kinds'])})")
            e = edge.get("edge")
            if not isinstance(e, int) or not 0 <= e < data["kinds"][edge["kind"]]:
                raise DiffnasError(f"{where}: edge record {i} has edge index {e!r}, outside "
                                   f"the {data['kinds'][edge['kind']]} edges of kind "
                                   f"{edge['kind']}")
            named = edge.get("ops", {})
            if set(named) != ops:
                raise DiffnasError(f"{where}: edge record {i} (kind {edge['kind']}, cell "
                                   f"{edge.get('cell')}, edge {e}) lists ops "
                                   f"{sorted(named)}, not the table's {sorted(ops)}")
            for op, key in named.items():
                if key is None and op != "none":
                    raise DiffnasError(f"{where}: edge record {i} has no entry for op {op!r}")
                if key is not None and key not in entries:
                    raise DiffnasError(f"{where}: missing entry {key!r} (op {op} of kind "
                                       f"{edge['kind']}, cell {edge.get('cell')}, edge {e})")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise DiffnasError(f"latency table {path}: no such file (make one with "
                               "`diffnas latency --out TABLE.json`)")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DiffnasError(f"latency table {path} is not valid JSON ({e})") from None
        return cls(data, str(path))

    @property
    def fixed_ms(self) -> float:
        """The fixed parts' latency (0 when the table was made without them)."""
        return float(self.data.get("fixed", {}).get("ms", 0.0))

    def fixed_of(self, stat: str) -> float:
        """The fixed parts by statistic ``median_ms`` (:attr:`fixed_ms`) or ``min_ms``."""
        fixed = self.data.get("fixed", {})
        return float(fixed.get("ms", 0.0) if stat == "median_ms" else fixed.get(stat, 0.0))

    def search_config(self) -> Any:
        """The search config whose supernet the table measured (its recorded fields)."""
        from ..config import SearchConfig

        keep = {k: v for k, v in self.data["config"].items()
                if k in ("method", "space", "channels", "layers", "dataset", "image_size",
                         "seed", "method_args")}
        return SearchConfig.from_dict(keep)

    def check_supernet(self, net: nn.Module) -> None:
        """Refuse a supernet whose ops or edges the table does not describe."""
        d = self.data
        if tuple(d["op_names"]) != tuple(net.op_names):
            raise DiffnasError(f"latency table {self.source} is for the ops "
                               f"{', '.join(d['op_names'])} (space {d['space']}); this "
                               f"search's supernet has {', '.join(net.op_names)}")
        mine = {k: len(net.edge_index[k]) for k in net.kinds}
        if mine != d["kinds"]:
            raise DiffnasError(f"latency table {self.source} is for cell kinds/edges "
                               f"{d['kinds']} (space {d['space']}); this search's supernet "
                               f"has {mine}")

    def edge_matrix(self, stat: str = "median_ms") -> dict[str, torch.Tensor]:
        """Per kind, ``[edges, ops]`` milliseconds summed over the table's cells of that kind
        (0 for ``none``): the cost of choosing op o on edge e in every cell of the kind (by the
        entries' ``stat``: ``median_ms``, or ``min_ms``, the fastest run)."""
        d = self.data
        out = {k: torch.zeros(n, len(d["op_names"]), dtype=torch.float64)
               for k, n in d["kinds"].items()}
        for edge in d["edges"]:
            for o, op in enumerate(d["op_names"]):
                key = edge["ops"][op]
                if key is not None:
                    out[edge["kind"]][edge["edge"], o] += float(d["entries"][key][stat])
        return out

    def ops_ms(self, net: nn.Module, genotype: Any, stat: str = "median_ms") -> float:
        """The table's sum over the ops ``genotype`` uses in every cell."""
        lat = self.edge_matrix(stat)
        chosen = genotype_ops(net, genotype)
        return float(sum((chosen[k].double() * lat[k]).sum() for k in lat))

    def predict(self, net: nn.Module, genotype: Any, stat: str = "median_ms") -> float:
        """Predicted latency (ms) of ``genotype``'s fixed network: fixed parts + its ops."""
        if "fixed" not in self.data:
            raise DiffnasError(f"latency table {self.source} was made without the fixed "
                               "parts (--no-fixed), so it cannot predict a network's latency")
        return self.fixed_of(stat) + self.ops_ms(net, genotype, stat)

    def reference_genotypes(self, net: nn.Module) -> tuple[Any, Any]:
        """The genotypes the space derives from op weights −latency and +latency: the
        cheapest network (the fixed parts' reference) and the dearest (a check)."""
        lat = self.edge_matrix()
        return (net.genotype({k: -m.float() for k, m in lat.items()}),
                net.genotype({k: m.float() for k, m in lat.items()}))


# -------------------------------------------------------------------------------------- term
def method_op_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """The supernet's current op weights per kind as its method gives them, with gradient."""
    policy = net.policy
    if hasattr(policy, "op_weights"):
        return policy.op_weights()
    return {k: policy.edge_weights(a) for k, a in net.alphas.items()}


class LatencyTerm:
    """``λ·log(E/target)`` or ``λ·max(0, E/target − 1)`` of the expected latency E (ms)."""

    name = "latency"

    def __init__(self, table: LatencyTable, net: nn.Module, target_ms: float,
                 weight: float = 1.0, form: str = "log", estimate: str = "expected",
                 stat: str = "median") -> None:
        check_latency_config({"table": table.source, "target_ms": target_ms, "weight": weight,
                              "form": form, "estimate": estimate, "stat": stat})
        table.check_supernet(net)
        self.table, self.net = table, net
        self.target, self.weight, self.form, self.estimate = (float(target_ms), float(weight),
                                                              form, estimate)
        self.stat = STATS[stat]
        if self.stat != "median_ms" and any(self.stat not in e
                                            for e in table.data["entries"].values()):
            raise DiffnasError(f"latency table {table.source} has no {self.stat} per entry; "
                               "remake it with `diffnas latency` or use the median")
        self.fixed = table.fixed_of(self.stat)
        self.lat = {k: v.float() for k, v in table.edge_matrix(self.stat).items()}
        self.keep, self.derivable = derivation_probe(net)

    def expected_ms(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """E[lat] (ms) under op weights ``weights`` (``[edges, ops]`` per kind)."""
        total: torch.Tensor | None = None
        for k, w in weights.items():
            q = w * self.derivable[k].to(w)
            q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            part = (self.keep[k].to(w)[:, None] * q * self.lat[k].to(w)).sum()
            total = part if total is None else total + part
        assert total is not None
        return total + self.fixed

    def derived_ms(self, weights: dict[str, torch.Tensor]) -> float:
        """The table's latency of the genotype derived from ``weights``."""
        with torch.no_grad():
            g = self.net.genotype({k: w.detach() for k, w in weights.items()})
        return self.table.predict(self.net, g, self.stat) if "fixed" in self.table.data else \
            self.table.ops_ms(self.net, g, self.stat)

    def value_ms(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The latency the loss sees: E[lat], or (``derived``) the derived genotype's latency
        carrying E[lat]'s gradient."""
        e = self.expected_ms(weights)
        if self.estimate == "derived":
            e = e + (self.derived_ms(weights) - e.detach())
        return e

    def loss(self, lat_ms: torch.Tensor) -> torch.Tensor:
        ratio = lat_ms / self.target
        if self.form == "log":
            return self.weight * torch.log(ratio)
        return self.weight * F.relu(ratio - 1)

    def terms(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({"latency": the scaled term}, {"e_latency_ms": the latency it saw, detached})``
        at the current α."""
        lat = self.value_ms(method_op_weights(self.net))
        return {"latency": self.loss(lat)}, {"e_latency_ms": lat.detach()}

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        w = {k: v.detach() for k, v in method_op_weights(self.net).items()}
        return {"e_latency_ms": float(self.expected_ms(w)),
                "derived_latency_ms": self.derived_ms(w), "lat_target_ms": self.target}


def build_latency_term(cfg_latency: dict[str, Any], net: nn.Module) -> LatencyTerm:
    """The term of a search config's ``latency`` entry (the table's hash checked if recorded)."""
    c = {**LATENCY_DEFAULTS, **cfg_latency}
    check_latency_config(c)
    table = LatencyTable.load(c["table"])
    if c["sha256"] and file_sha256(c["table"]) != c["sha256"]:
        raise DiffnasError(f"latency table {c['table']} changed since this run started "
                           f"(sha256 {c['sha256'][:12]}… recorded); a resumed search must see "
                           "the same table: restore it or start a new run")
    return LatencyTerm(table, net, c["target_ms"], c["weight"], c["form"], c["estimate"],
                       c["stat"])


class WithArchTerms(Objective):
    """An objective plus terms on α alone (the latency term): the inner objective's loss,
    plus every term whenever α is being differentiated. Delegates batches, views and state
    to the inner objective, so its checkpoint entries are the inner objective's."""

    def __init__(self, inner: Objective, net: nn.Module, terms: Sequence[LatencyTerm]) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self._net = [net]  # not a submodule: the supernet is the method's, not the objective's
        self.arch_terms = list(terms)

    def prepare(self, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> Batch:
        return self.inner.prepare(x, y, generator)

    def eval_views(self, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return self.inner.eval_views(x, generator)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    def alpha_live(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self._net[0].arch_parameters())

    def forward(self, model: nn.Module, batch: Batch) -> LossOutput:
        out = self.inner(model, batch)
        if not self.alpha_live():
            return out
        loss, logged = out.loss, dict(out.terms)
        for term in self.arch_terms:
            scaled, extra = term.terms()
            for k, v in scaled.items():
                loss = loss + v
                logged[k] = v.detach()
            logged.update(extra)
        return LossOutput(loss, out.logits, logged)

    def epoch_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for term in self.arch_terms:
            out.update(term.metrics())
        return out


def with_latency(objective: Objective, net: nn.Module,
                 cfg_latency: dict[str, Any]) -> Objective:
    """``objective`` with the latency term of ``cfg_latency`` (unchanged when it is empty)."""
    if not cfg_latency:
        return objective
    return WithArchTerms(objective, net, [build_latency_term(cfg_latency, net)])
