"""DARTS+ early stopping (Liang, Zhang, Sun, He, Huang, Zhuang & Li, "DARTS+: Improved
Differentiable Architecture Search with Early Stopping", arXiv:1909.06035, 2019, §3.3), as the
part ``early_stop=dartsplus`` any method takes (``--opt early_stop=dartsplus``).

§3.3 states two criteria (paraphrased): stop when there are two or more skip-connects in one
normal cell (Criterion 1), or when the ranking of the architecture parameters α of the
learnable operations has been stable for a determined number of epochs, 10 in its example
(Criterion 2, the general one: it needs no skip-connect in the space). After every epoch the
search stops, with the genotype derived at that epoch, when

* Criterion 1 (``dartsplus_skips`` = 2; 0 = off): the normal cell *of the derived genotype*
  (each node's two strongest edges, ``none`` excluded) holds at least that many
  ``skip_connect`` edges; the reduction cell does not count (NAS-Bench-201: its one cell);
* Criterion 2 (``dartsplus_stable_epochs`` = 10, the paper's example; 0 = off): on every edge
  of every cell kind (normal and reduction), the order of the learnable ops by α (the
  convolutions: ``none``, ``skip_connect`` and the pools are left out; ties by op index) is
  the one of the epoch before, for that many epochs in a row: the ranking at the end of
  epoch e equals those of epochs e−1, ..., e−10, so the earliest stop is epoch 10 (0-based).
  α is compared raw: a method's weighting (softmax, sigmoid, ReLU) keeps its order per edge.

Deviations (one line each):

* DARTS+ has no public reference code; the criteria follow the paper text. Which criterion
  its CIFAR-10 and CIFAR-100 searches used is not pinned here (the text at hand gives the
  criteria, not a per-dataset choice): both are on by default and the first to fire stops the
  search; ``--opt dartsplus_skips=0`` or ``dartsplus_stable_epochs=0`` keeps one of them.
* Without a stop the search runs the config's ``epochs`` (the last epoch's genotype).
"""

from __future__ import annotations

from typing import Any

from ..spaces.ops import PARAMETER_FREE
from .parts import Part, register_part


def normal_skip_count(genotype: Any) -> int:
    """``skip_connect`` edges of the normal cell (a NAS-Bench-201 genotype: its one cell)."""
    ops = ([o for o, _ in genotype.normal] if hasattr(genotype, "normal")
           else list(genotype.ops))
    return sum(o == "skip_connect" for o in ops)


def learnable_ranking(alphas: dict[str, Any], op_names: list[str]) -> list[list[list[int]]]:
    """Per cell kind and edge, the learnable ops' indices ordered by decreasing α."""
    learn = [i for i, o in enumerate(op_names) if o not in PARAMETER_FREE]
    return [[sorted(learn, key=lambda i, r=row: (-float(r[i]), i)) for row in a]
            for _, a in sorted(alphas.items())]


@register_part
class DartsPlusStop(Part):
    """DARTS+: stop at ≥ 2 skips in the normal cell, or when α's ranking is stable."""

    slot = "early_stop"
    name = "dartsplus"
    paper = "DARTS+ early stopping (Liang et al., arXiv:1909.06035, §3.3)"
    options = {"dartsplus_skips": 2, "dartsplus_stable_epochs": 10}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        self.ranking: list[list[list[int]]] | None = None
        self.stable = 0  # epochs in a row with an unchanged ranking

    def end_epoch(self, record: dict[str, Any]) -> dict[str, Any]:
        from ..spaces import genotype_from_dict

        m = self.method
        genotype = genotype_from_dict(record["genotype"])
        ranking = learnable_ranking({k: a.detach() for k, a in m.net.alphas.items()},
                                    list(m.net.op_names))
        self.stable = self.stable + 1 if ranking == self.ranking else 0
        self.ranking = ranking
        skips, need = normal_skip_count(genotype), int(self.opts["dartsplus_skips"])
        stable_for = int(self.opts["dartsplus_stable_epochs"])
        if need > 0 and skips >= need:
            why = f"{skips} skip connections in the normal cell (criterion 1: ≥ {need})"
        elif stable_for > 0 and self.stable >= stable_for:
            why = f"the ranking of α over learnable ops unchanged for {self.stable} epochs"
        else:
            return {"dartsplus_stable_epochs": self.stable}
        m.stop_early(m.epoch, record["genotype"],
                     f"DARTS+ early stop at epoch {m.epoch + 1}: {why}")
        return {"dartsplus_stable_epochs": self.stable}

    def state_dict(self) -> dict[str, Any]:
        return {"ranking": self.ranking, "stable": self.stable}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranking, self.stable = state["ranking"], int(state["stable"])
