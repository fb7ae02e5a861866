"""Derivation parts: how the search's genotype is read off the (weighted) α.

- ``argmax``: the space's own rule on the weighting's deterministic weights (the supernet
  ranks edges by its edge strengths: × softmax(β) with edge normalisation): DARTS §2.4
  (per node the two strongest incoming edges, each with its strongest non-``none`` op) in the
  DARTS space, the per-edge argmax in NAS-Bench-201.
- ``threshold``: FairDARTS (Chu et al., ECCV 2020) and its reference's default
  ``parse_method=threshold_sparse`` (xiaomi-automl/FairDARTS ``fairdarts/utils.py parse``): per
  node the two edges whose strongest op is strongest, and an edge keeps its strongest op only
  if σ(α) ≥ ``op_threshold`` (0.85); the threshold applies to the weighting's weights.

Deviation: the DARTS-space genotype holds exactly two inputs per node, so in the DARTS space
an edge under the threshold is kept (the genotype equals ``argmax``'s) and counted in the
logged ``below_threshold`` (edges of the derived cells that FairDARTS would drop); in
NAS-Bench-201 an edge whose strongest op is under the threshold becomes ``none``, unless that
leaves no path from the cell's input to its output: then the cell is ``argmax``'s too (a cell
that outputs zeros is no architecture; a short search of σ(α) from 0.5 leaves every op under
0.85).
In the mbconv chain (one op per layer, no ``none``) the genotype is ``argmax``'s, as in the
DARTS space, and the layers under the threshold are counted in ``below_threshold``.
"""

from __future__ import annotations

import torch

from ..errors import DiffnasError
from ..spaces import Genotype, MBConvGenotype, NB201Genotype
from ..spaces.nb201 import connected
from .parts import Derivation, register_part


@register_part
class Argmax(Derivation):
    name = "argmax"
    paper = ("DARTS (Liu et al., ICLR 2019) §2.4: the space's rule (DARTS: top-2 edges per node, "
             "strongest op; NAS-Bench-201: per-edge argmax)")

    def derive(self) -> Genotype:
        return self.method.net.genotype(self.method.alpha_weights())


@register_part
class Threshold(Derivation):
    name = "threshold"
    paper = ("FairDARTS (Chu et al., ECCV 2020): keep an op only if its σ(α) ≥ "
             "op_threshold (reference parse_method threshold_sparse)")
    options = {"op_threshold": 0.85}

    def __init__(self, method, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(method, opts)
        t = float(self.opts["op_threshold"])
        if not 0.0 < t < 1.0:
            raise DiffnasError(f"op_threshold must be in (0, 1), got {t}")
        self.threshold = t

    def below(self, genotype: Genotype, weights: dict[str, torch.Tensor]) -> int:
        """How many edges of ``genotype`` carry an op whose weight is under the threshold."""
        net = self.method.net
        n = 0
        for kind, w in weights.items():
            edges = net.edge_index[kind]
            for op, e in genotype_edges(genotype, kind, edges):
                n += int(float(w[e, net.op_names.index(op)]) < self.threshold)
        return n

    def derive(self) -> Genotype:
        net = self.method.net
        weights = self.method.alpha_weights()
        genotype = net.genotype(weights)
        if isinstance(genotype, NB201Genotype):  # the format has `none` even if the net has not
            ops = list(genotype.ops)
            w = weights["cell"]
            for e, op in enumerate(ops):
                if op != "none" and float(w[e, net.op_names.index(op)]) < self.threshold:
                    ops[e] = "none"
            thresholded = NB201Genotype(tuple(ops))
            if connected(thresholded):  # else the argmax cell, as in the DARTS space
                genotype = thresholded
        return genotype

    def stats(self) -> dict[str, float]:
        return {"below_threshold": float(self.below(self.derive(), self.method.alpha_weights()))}


def genotype_edges(genotype: Genotype, kind: str,
                   edges: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """``(op, edge index)`` of every non-``none`` edge the genotype keeps in cell kind ``kind``."""
    if isinstance(genotype, NB201Genotype | MBConvGenotype):  # one op per edge
        return [(op, e) for e, op in enumerate(genotype.ops) if op != "none"]
    where = {pair: e for e, pair in enumerate(edges)}
    return [(op, where[(src, 2 + i // 2)]) for i, (op, src) in enumerate(getattr(genotype, kind))]
