"""Search methods by name. A new method is one module with a :class:`SearchMethod` subclass
added to :data:`METHODS`: usually just its ``parts``, ``part_options`` and presets (see
:mod:`.parts` for the parts and how to add one, :mod:`.gdas` for a method made of them)."""

from __future__ import annotations

from ..errors import unknown
from . import dartsplus, perturb, regularisers  # noqa: F401  (register the parts)
from .base import SearchMethod
from .betadarts import BetaDARTS
from .cdarts import CDARTS
from .darts import DARTS
from .dartsminus import DARTSMinus
from .drnas import DrNAS
from .fairdarts import FairDARTS
from .gdas import GDAS
from .pcdarts import PCDARTS
from .pdarts import PDARTS
from .robustdarts import DARTSADA, DARTSES
from .sdarts import SDARTSADV, SDARTSRS
from .semantic import SemanticDARTS
from .snas import SNAS
from .stc import STC

METHODS: dict[str, type[SearchMethod]] = {m.name: m for m in (DARTS, SemanticDARTS, STC, CDARTS,
                                                         PCDARTS, BetaDARTS, DARTSMinus,
                                                         SDARTSRS, SDARTSADV, GDAS, SNAS,
                                                         FairDARTS, DrNAS, PDARTS, DARTSES,
                                                         DARTSADA)}

__all__ = ["METHODS", "SearchMethod", "get_method"]

from ..engine.select import register_pt_presets  # noqa: E402  (needs the methods above)

register_pt_presets()


def get_method(name: str) -> type[SearchMethod]:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]
