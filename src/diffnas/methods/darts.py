"""DARTS (Liu, Simonyan & Yang, ICLR 2019): softmax-relaxed edges (Eq. 2), alternating
bilevel updates, first order (ξ = 0) or second order (Eq. 6-8, ``--order 2``).

Everything DARTS does is the default behaviour of :class:`SearchMethod`; this
module only names it, so the other methods can be read as differences from it.
"""

from __future__ import annotations

from .base import SearchMethod


class DARTS(SearchMethod):
    name = "darts"
    paper = "DARTS: Differentiable Architecture Search (Liu et al., ICLR 2019)"
