"""Benchmarks for the NAS-Bench-201 cell space: lookup tables (CIFAR-10 accuracies of all
15,625 cells), black-box baselines over them, and supernet ranking correlation.

The tables describe the benchmark's dataset (CIFAR-10), not the data a search ran on.
"""

from __future__ import annotations

from .baselines import BASELINES, BaselineResult, random_search, regularized_evolution, run_baseline
from .nb201_table import (
    NUM_ARCHS,
    NB201Table,
    analog_key,
    arch_from_index,
    arch_index,
    as_genotype,
    cached_table,
    connected_mask,
    default_table_path,
    from_analog_key,
    is_connected,
    load_table,
)
from .ranking import FixedArchPolicy, kendall_tau, rank_supernet, spearman_rho

__all__ = ["BASELINES", "NUM_ARCHS", "BaselineResult", "FixedArchPolicy", "NB201Table",
           "analog_key", "arch_from_index", "arch_index", "as_genotype", "cached_table",
           "connected_mask", "default_table_path", "from_analog_key", "is_connected",
           "kendall_tau", "load_table", "random_search", "rank_supernet",
           "regularized_evolution", "run_baseline", "spearman_rho"]
