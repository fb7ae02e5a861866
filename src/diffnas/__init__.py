"""diffnas: differentiable neural architecture search (DARTS family) in PyTorch."""

from __future__ import annotations

from typing import Any

from .config import PRESETS, SearchConfig, resolve_config
from .errors import DiffnasError
from .spaces import DartsGenotype, NB201Genotype, parse_genotype

__version__ = "0.1.0"
__all__ = ["PRESETS", "DartsGenotype", "DiffnasError", "NB201Genotype", "SearchConfig",
           "parse_genotype", "resolve_config", "search"]


def search(*args: Any, **kwargs: Any) -> Any:
    """Run a search; see :func:`diffnas.engine.search.search`."""
    from .engine.search import search as _search

    return _search(*args, **kwargs)
