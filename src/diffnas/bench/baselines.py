"""Black-box baselines over a NAS-Bench-201 table, as in NAS-Bench-201 §5 (Dong & Yang, 2020).

Both spend a budget of table queries (one query = one "trained" architecture) and keep the best
cell seen so far; both are deterministic for a given seed.

* :func:`random_search`: cells drawn uniformly at random, without repeats (Bergstra & Bengio,
  2012).
* :func:`regularized_evolution`: Real et al., "Regularized Evolution for Image Classifier
  Architecture Search" (AAAI 2019), Alg. 1 — a population of ``population`` cells, each cycle
  a tournament of ``sample_size`` random members picks a parent, its child (one edge's op
  changed) joins the population and the *oldest* member dies (ageing). Defaults are the
  NAS-Bench-201 / NATS-Bench settings: population 10, tournament size 3.

Selection and reporting use the table's primary column (the analog-nasbench table has only a
test accuracy, so this is an oracle protocol; NAS-Bench-201 selects on validation accuracy).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DiffnasError
from ..spaces.nb201 import EDGES, OPS
from .nb201_table import NB201Table, arch_from_index

BASELINES = ("random", "evolution")


@dataclass
class BaselineResult:
    """Outcome of a black-box search: the best cell and the trajectory of its accuracy."""

    method: str
    seed: int
    budget: int
    best_index: int
    best_acc: float
    queried: list[int] = field(default_factory=list)        # cell index of every query
    accs: list[float] = field(default_factory=list)          # its accuracy
    best_so_far: list[float] = field(default_factory=list)   # best accuracy after each query

    @property
    def best_arch(self) -> str:
        return str(arch_from_index(self.best_index))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "budget": self.budget,
                "best_arch": self.best_arch, "best_index": self.best_index,
                "best_acc": self.best_acc, "queries": len(self.queried),
                "best_so_far": [round(a, 4) for a in self.best_so_far]}


class _Oracle:
    """Counts queries against the budget and tracks the best cell."""

    def __init__(self, table: NB201Table, budget: int, method: str, seed: int) -> None:
        if budget < 1:
            raise DiffnasError(f"the query budget must be at least 1, got {budget}")
        self.acc = table.accuracies
        self.res = BaselineResult(method, seed, budget, -1, -np.inf)

    @property
    def left(self) -> int:
        return self.res.budget - len(self.res.queried)

    def __call__(self, index: int) -> float:
        if self.left <= 0:  # pragma: no cover - callers check `left`
            raise RuntimeError("query budget exhausted")
        a = float(self.acc[index])
        r = self.res
        r.queried.append(int(index))
        r.accs.append(a)
        if a > r.best_acc:
            r.best_index, r.best_acc = int(index), a
        r.best_so_far.append(r.best_acc)
        return a


def _candidates(table: NB201Table) -> np.ndarray:
    idx = table.available()
    if len(idx) == 0:
        raise DiffnasError(f"table {table.path or table.source} has no entries")
    return idx


def random_search(table: NB201Table, budget: int, seed: int = 0) -> BaselineResult:
    """Query ``budget`` distinct random cells; the best is the result."""
    oracle = _Oracle(table, budget, "random", seed)
    rng = np.random.default_rng(seed)
    pool = _candidates(table)
    for i in rng.permutation(pool)[:budget]:
        oracle(int(i))
    return oracle.res


def mutate(index: int, rng: np.random.Generator) -> int:
    """Change the op of one random edge to a different random op (Real et al. 2019, §3)."""
    digits = list(np.unravel_index(index, (len(OPS),) * len(EDGES)))
    e = int(rng.integers(len(EDGES)))
    digits[e] = (int(digits[e]) + 1 + int(rng.integers(len(OPS) - 1))) % len(OPS)
    return int(np.ravel_multi_index(tuple(digits), (len(OPS),) * len(EDGES)))


def regularized_evolution(table: NB201Table, budget: int, seed: int = 0, population: int = 10,
                          sample_size: int = 3) -> BaselineResult:
    """Regularised (ageing) evolution, Real et al. 2019 Alg. 1, for ``budget`` queries."""
    if population < 2 or not 1 <= sample_size <= population:
        raise DiffnasError(f"evolution needs population >= 2 and 1 <= sample size <= population, "
                           f"got {population} and {sample_size}")
    oracle = _Oracle(table, budget, "evolution", seed)
    rng = np.random.default_rng(seed)
    have = np.isfinite(table.accuracies)
    pool = _candidates(table)
    alive: collections.deque[tuple[int, float]] = collections.deque()
    for i in rng.choice(pool, size=min(population, budget, len(pool)), replace=False):
        alive.append((int(i), oracle(int(i))))          # Alg. 1: random initial population
    while oracle.left > 0:
        picks = rng.choice(len(alive), size=min(sample_size, len(alive)), replace=False)
        parent = max((alive[int(p)] for p in picks), key=lambda m: m[1])   # tournament
        child = mutate(parent[0], rng)
        for _ in range(100):  # a partial official table: mutate again until it has an entry
            if have[child]:
                break
            child = mutate(parent[0], rng)
        else:
            child = int(rng.choice(pool))
        alive.append((child, oracle(child)))
        if len(alive) > population:
            alive.popleft()                               # ageing: the oldest dies
    return oracle.res


def run_baseline(name: str, table: NB201Table, budget: int, seed: int = 0,
                 **options: Any) -> BaselineResult:
    """:func:`random_search` or :func:`regularized_evolution` by name."""
    if name == "random":
        if options:
            raise DiffnasError(f"random search takes no options, got {', '.join(options)}")
        return random_search(table, budget, seed)
    if name == "evolution":
        return regularized_evolution(table, budget, seed, **options)
    raise DiffnasError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
