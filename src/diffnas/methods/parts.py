"""The parts a search method is made of, and how a method names its combination.

A method (``methods/base.py``) fills four *slots* with parts; each part is one small class
with its paper and equations cited in its own module:

==============  ======================================  =================================
slot            what it decides                         parts
==============  ======================================  =================================
weighting       how α becomes op weights (and samples)  softmax, gumbel, dirichlet,
                                                        sigmoid, relu  (weighting.py)
edges           which ops an edge computes, and how     all, one  (edges.py)
derivation      how α becomes a genotype                argmax, threshold  (derivation.py)
regularisers    loss terms / perturbations on α or w,   (a comma-separated list, may be
                op pruning                              empty; regularisers.py,
                                                        perturb.py, pruning.py)
early_stop      when the search stops early (or rolls   (a list, may be empty; robustdarts.py,
                back), from each epoch's metrics        dartsplus.py)
==============  ======================================  =================================

A named method is a preset of parts (``parts``) plus paper values of their options
(``part_options``); ``--opt weighting=gumbel`` (any slot) and ``--opt tau_max=5`` (any
option of a chosen part) override them for any method built on :class:`SearchMethod`.

How to add a part
-----------------
1. Subclass :class:`Part` in the module of its family (or a new module under
   ``methods/``), set ``slot``, ``name`` (what ``--opt SLOT=NAME`` selects), ``paper`` and
   ``options`` (its own options with defaults; option names are shared by all parts, so pick
   specific ones, e.g. ``tau_max``, ``zero_one_weight``).
2. Decorate the class with :func:`register_part` and make sure ``methods/__init__.py``
   imports its module.
3. Override only the hooks it needs. Every hook gets the method (``self.method``), so a part
   reads ``method.epoch``, ``method.progress`` (share of the search done), ``method.phase``
   ("arch", "weight" or "eval": which step's forward is running), ``method.net`` and
   ``self.opts`` (its resolved options).
4. A method picks it with ``parts = {"regularisers": "zero_one"}`` and paper values with
   ``part_options = {"zero_one_weight": 10.0}``; a test in ``tests/test_methods.py``.

Randomness: draw from torch's global generator (the loop re-seeds it every epoch, so resume
is exact); anything else a part keeps between steps goes into :meth:`Part.state_dict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..config import coerce_options
from ..errors import DiffnasError, unknown

if TYPE_CHECKING:
    from ..objectives import Batch, LossOutput
    from ..spaces import Genotype, Supernet
    from ..spaces.base import EdgeWeights
    from .base import SearchMethod

#: The slots, in the order they are shown; ``regularisers`` takes a comma-separated list.
SLOTS: tuple[str, ...] = ("weighting", "edges", "derivation", "regularisers", "early_stop")
LIST_SLOTS = frozenset({"regularisers", "early_stop"})

#: slot -> part name -> part class (filled by :func:`register_part`).
PARTS: dict[str, dict[str, type[Part]]] = {slot: {} for slot in SLOTS}


class Part:
    """One exchangeable piece of a search method. All hooks default to doing nothing."""

    slot: ClassVar[str] = ""
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: the part's own options and their defaults (typed: strings from ``--opt`` are converted)
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, method: SearchMethod, opts: dict[str, Any]) -> None:
        self.method = method
        self.opts = {k: opts[k] for k in self.options}

    # -- lifetime ---------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Called by the method at the start of every epoch (schedules)."""

    def stats(self) -> dict[str, float]:
        """Values logged with every step (e.g. the current temperature)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def supernet_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments this part needs at supernet construction (e.g. partial channels)."""
        return {}

    # -- regularisers and perturbations (any part may use them) -----------------------------------
    def adjust_weights(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        """Change the op weights of cell kind ``kind`` before the edges use them (a perturbation;
        ``self.method.phase`` says whether the α step, the w step or evaluation is running)."""
        return weights

    def restrict(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        """Restrict the op weights of cell kind ``kind`` to some ops (pruning), in every forward
        and in derivation (unlike :meth:`adjust_weights`, which only the forward sees)."""
        return weights

    def arch_terms(self, batch: Batch, out: LossOutput) -> dict[str, torch.Tensor]:
        """Terms added to the α step's loss (already scaled), by name (logged as ``arch_NAME``)."""
        return {}

    def weight_terms(self, batch: Batch, out: LossOutput) -> dict[str, torch.Tensor]:
        """Terms added to the w step's loss (already scaled), by name."""
        return {}

    def before_weight_step(self, batch: Batch) -> None:
        """Called before the w step's forward (e.g. to find an adversarial perturbation; the
        method's ``weight_loss(batch)`` evaluates the loss under the current weights)."""

    def after_arch_step(self) -> None:
        """Called after every α update (e.g. a projection of α)."""

    # -- early stopping (slot ``early_stop``; any part may use them) ------------------------------
    def hessian_every(self) -> int:
        """Epochs between evaluations of the α-Hessian's dominant eigenvalue this part needs
        (0: none); the loop logs it as ``hessian_eig`` (``--hessian-every`` overrides it)."""
        return 0

    def end_epoch(self, record: dict[str, Any]) -> dict[str, Any]:
        """Called after every epoch with its metrics record (``hessian_eig`` when evaluated);
        returns entries to add to it. A part stops the search with
        :meth:`~.base.SearchMethod.stop_early` or rolls it back with
        :meth:`~.base.SearchMethod.roll_back`."""
        return {}


class Weighting(Part):
    """How α of one edge becomes op weights: ``weights`` (deterministic, used for derivation,
    logging and evaluation) and ``sample`` (the training forward; the same unless stochastic)."""

    slot = "weighting"

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.weights(alpha)


class EdgeComputation(Part):
    """Which ops each edge computes and with which weights, from the weighted α of one cell kind."""

    slot = "edges"

    def policy(self, supernet: Supernet, kind: str,
               weights: torch.Tensor) -> EdgeWeights:  # pragma: no cover - abstract
        raise NotImplementedError


class Derivation(Part):
    """How the search's result (a genotype) is read off α."""

    slot = "derivation"

    def derive(self) -> Genotype:  # pragma: no cover - abstract
        raise NotImplementedError


def register_part(cls: type[Part]) -> type[Part]:
    """Class decorator: make ``cls`` selectable as ``--opt <slot>=<name>``."""
    if cls.slot not in PARTS or not cls.name:
        raise TypeError(f"part {cls.__name__} needs a slot in {SLOTS} and a name")
    PARTS[cls.slot][cls.name] = cls
    return cls


def split_list(value: Any) -> list[str]:
    """``"a, b"`` or ``("a", "b")`` -> ``["a", "b"]`` (an empty string is the empty list)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(s).strip() for s in items if str(s).strip()]


def chosen_parts(method_name: str, parts: dict[str, Any],
                 given: dict[str, Any]) -> dict[str, list[type[Part]]]:
    """Per slot, the part classes a method with default ``parts`` uses under options ``given``."""
    out: dict[str, list[type[Part]]] = {}
    for slot in SLOTS:
        value = given.get(slot, parts.get(slot, ""))
        names = split_list(value) if slot in LIST_SLOTS else [str(value).strip()]
        for n in names:
            if n not in PARTS[slot]:
                raise unknown(f"{slot} part (method {method_name!r} option {slot}=)", n,
                              PARTS[slot])
        if slot not in LIST_SLOTS and len(names) != 1:
            raise DiffnasError(f"method {method_name!r} option {slot} takes one part name; "
                               f"valid: {', '.join(sorted(PARTS[slot]))}")
        if len(set(names)) != len(names):
            raise DiffnasError(f"method {method_name!r} option {slot}={value!r} names a part "
                               "twice")
        out[slot] = [PARTS[slot][n] for n in names]
    return out


def resolve_options(method_name: str, own: dict[str, Any], generic: dict[str, Any],
                    parts: dict[str, Any], part_options: dict[str, Any],
                    given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[type[Part]]]]:
    """The method's options: its ``own`` ones, the ``generic`` ones every method takes, the
    slots (``parts`` as defaults) and the options of the chosen parts (part defaults), the
    generic and part ones set to the method's ``part_options``, all overridden by ``given``.
    Unknown keys and options of parts that are not chosen are errors."""
    chosen = chosen_parts(method_name, parts, given)
    defaults: dict[str, Any] = {k: part_options.get(k, v) for k, v in generic.items()}
    defaults.update(own)
    for slot in SLOTS:
        names = ",".join(p.name for p in chosen[slot])
        defaults[slot] = names
        for p in chosen[slot]:
            for k, v in p.options.items():
                defaults[k] = part_options.get(k, v)
    bad = sorted(set(given) - set(defaults))
    if bad:
        owners = {k: f"{p.slot}={p.name}" for ps in PARTS.values() for p in ps.values()
                  for k in p.options}
        for k in bad:
            if k in owners:
                raise DiffnasError(f"method {method_name!r} option {k} belongs to the part "
                                   f"{owners[k]}, which this run does not use; add --opt "
                                   f"{owners[k]}")
        mine = ", ".join(sorted(own)) or "none of its own"
        extra = sorted(set(defaults) - set(own))
        raise DiffnasError(f"method {method_name!r} has no option {', '.join(bad)}; valid: "
                           f"{mine}; parts and their options: {', '.join(extra)} "
                           "(`diffnas list` shows the parts)")
    return coerce_options(f"method {method_name!r}", defaults, given), chosen


def describe_parts() -> list[str]:
    """One line per part (for ``diffnas list``): slot, name, options, paper."""
    lines = []
    for slot in SLOTS:
        for name, p in sorted(PARTS[slot].items()):
            opts = ", ".join(f"{k}={v}" for k, v in p.options.items())
            lines.append(f"{slot + '=' + name:<26} {p.paper}" + (f" [{opts}]" if opts else ""))
    return lines
