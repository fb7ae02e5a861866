"""Search spaces: each builds its supernet and owns its genotype format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DiffnasError, unknown
from .base import EdgePolicy, EdgeWeights, MixedEdge, Supernet
from .darts import DartsGenotype, DartsImageNetSupernet, DartsSupernet
from .mbconv import MBConvGenotype, MBConvSupernet
from .nb201 import NB201Genotype, NB201ImageNetSupernet, NB201Supernet

SPACES = {"darts": DartsSupernet, "darts-imagenet": DartsImageNetSupernet,
          "nb201": NB201Supernet, "nb201-imagenet": NB201ImageNetSupernet,
          "mbconv": MBConvSupernet}
#: spaces whose supernet takes the input size (``image_size``): their strides depend on it
SIZED_SPACES = frozenset({"mbconv"})
Genotype = DartsGenotype | NB201Genotype | MBConvGenotype

__all__ = ["SPACES", "DartsGenotype", "DartsImageNetSupernet", "DartsSupernet", "EdgePolicy",
           "EdgeWeights", "Genotype", "MBConvGenotype", "MBConvSupernet", "MixedEdge",
           "NB201Genotype", "NB201ImageNetSupernet", "NB201Supernet", "SIZED_SPACES", "Supernet",
           "build_supernet", "genotype_from_dict", "parse_genotype"]


def build_supernet(space: str, channels: int, layers: int, num_classes: int,
                   in_channels: int, image_size: int | None = None, **options: Any) -> Supernet:
    """The search supernet of ``space``; ``options`` are construction options every space takes
    (``partial_channels``, ``edge_norm``: see :mod:`diffnas.spaces.base`; ``aux_skip``: DARTS-'
    auxiliary skip on every edge, :meth:`Supernet.add_aux_skip`; ``edge_ops``: the kept ops
    of every edge, :meth:`Supernet.keep_ops`; ``bn_batch_stats``:
    :meth:`Supernet.bn_batch_stats`), usually a method's
    :meth:`~diffnas.methods.base.SearchMethod.supernet_options`. ``image_size``: the input's
    height = width, passed to the spaces in :data:`SIZED_SPACES` (``mbconv`` sets its strides
    from it) and ignored by the others."""
    if space not in SPACES:
        raise unknown("search space", space, SPACES)
    if image_size is not None and space in SIZED_SPACES:
        options["image_size"] = int(image_size)
    aux_skip = bool(options.pop("aux_skip", False))
    edge_ops = options.pop("edge_ops", None)
    batch_stats = bool(options.pop("bn_batch_stats", False))
    net = SPACES[space](channels=channels, layers=layers, num_classes=num_classes,
                        in_channels=in_channels, **options)
    if aux_skip:
        net.add_aux_skip()
    if edge_ops is not None:  # a stage with fewer candidate ops per edge (P-DARTS)
        net.keep_ops(edge_ops)
    if batch_stats:
        net.bn_batch_stats()
    return net


def genotype_from_dict(d: dict) -> Genotype:
    space = d.get("space", "darts" if "normal" in d else "nb201")
    if space == "darts":
        return DartsGenotype.from_dict(d)
    if space == "nb201":
        return NB201Genotype.from_dict(d)
    if space == "mbconv":
        return MBConvGenotype.from_dict(d)
    # darts-imagenet / nb201-imagenet: darts / nb201 cells
    raise unknown("genotype space", space, ("darts", "nb201", "mbconv"))


def parse_genotype(text: str) -> Genotype:
    """A genotype from a registry name (``diffnas.nets.registry``), DARTS text, a NAS-Bench-201
    string, an mbconv string (``mbconv:...``), JSON text, a JSON file path or a run folder (its
    genotype.json)."""
    from ..nets.registry import REGISTRY, lookup  # lazy: diffnas.nets imports this package

    text = text.strip()
    entry = lookup(text)
    if entry is not None:
        return entry.genotype
    if text.startswith("Genotype("):
        return DartsGenotype.parse(text)
    if text.startswith("|"):
        return NB201Genotype.parse(text)
    if text.startswith("mbconv:"):
        return MBConvGenotype.parse(text)
    if text.startswith("{"):
        try:
            return genotype_from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DiffnasError(f"genotype JSON does not parse at line {e.lineno} column "
                               f"{e.colno}: {e.msg}") from None
    path = Path(text)
    if path.is_dir():
        path = path / "genotype.json"
    if path.is_file():
        return parse_genotype(path.read_text())
    raise DiffnasError(f"cannot read genotype {text!r}: expected a published genotype name "
                       f"({', '.join(REGISTRY)}), Genotype(...) text, a NAS-Bench-201 string "
                       "|op~0|+..., an mbconv string mbconv:op,.../..., JSON, or a path to "
                       "genotype.json or its run folder")
