"""DrNAS (Chen, Wang, Cheng, Tang & Hsieh, "DrNAS: Dirichlet Neural Architecture Search",
ICLR 2021; reference xiangning-chen/DrNAS).

Parts: ``weighting=dirichlet``: each edge's op weights are a sample θ ~ Dir(β), β = ELU(α) + 1,
drawn per forward with the pathwise gradient (``rsample``; reference ``utils.py
process_step_vector``); every op is weighted by θ (``edges=all``); the genotype is the argmax of
α (the reference's softmax(α); the Dirichlet mean has the same argmax). The regulariser is the
option ``reg_type`` (reference ``--reg_type``, scale ``--reg_scale`` 1e-3): ``l2`` (default)
is Adam's weight decay on α, 1e-3 (``architect.py``), i.e. ``a_weight_decay``; ``kl`` adds
helper R's ``dirichlet_kl`` part (reg_scale · Σ KL(Dir(β) ‖ Dir(1)), ``search_model.py
_get_kl_reg``) and sets Adam's weight decay on α to 0, as ``architect.py`` does.

Reference settings: NAS-Bench-201 ``201-space/train_search.py`` defaults (100 epochs, batch 64,
N=5 × 16, SGD 0.025 → 0.001 cosine, momentum 0.9, decay 3e-4, clipping 5; α Adam 3e-4, betas
(0.5, 0.999), decay 1e-3; no partial channels, k=1); DARTS space ``DARTS-space/train_search.py``
(20 cells × 36, batch 64, SGD 0.1 → 0 cosine, decay 3e-4; α Adam 6e-4, decay 1e-3; partial
channels K=6 then 4, two stages of 25 epochs with pruning to 4 ops per edge in between).

Progressive learning: op pruning between the stages is the ``prune`` part
(:mod:`.pruning`; ``--opt regularisers=prune --opt prune_epoch=E --opt prune_keep=N``), and
partial channels the generic ``partial_channels`` option.

Deviations (one line each):
- the progressive scheme's widening (partial channels K 6 → 4 by net2wider at the stage switch)
  is not built: the DARTS-space preset keeps K = 6 for both 25-epoch stages, pruning as there.
- the reference samples in its validation pass too; our validation uses the Dirichlet mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..config import SearchConfig
from ..errors import DiffnasError
from ..objectives import Objective
from ..spaces import Supernet
from .base import SearchMethod
from .parts import split_list
from .presets import register_method_presets

REG_TYPES = ("l2", "kl")


class DrNAS(SearchMethod):
    name = "drnas"
    paper = "DrNAS: Dirichlet Neural Architecture Search (Chen et al., ICLR 2021)"
    defaults: ClassVar[dict[str, Any]] = {"reg_type": "l2"}
    parts: ClassVar[dict[str, str]] = {"weighting": "dirichlet", "edges": "all",
                                       "derivation": "argmax", "regularisers": ""}

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``reg_type=kl`` adds the ``dirichlet_kl`` part to the regularisers."""
        reg = str(given.get("reg_type", cls.defaults["reg_type"]))
        if reg not in REG_TYPES:
            raise DiffnasError(f"method 'drnas' option reg_type={reg!r} is unknown; valid: "
                               f"{', '.join(REG_TYPES)}")
        regs = split_list(given.get("regularisers", cls.parts["regularisers"]))
        if reg == "kl" and "dirichlet_kl" not in regs:
            given = {**given, "regularisers": ",".join([*regs, "dirichlet_kl"])}
        return super().resolve_options(given)

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        super().__init__(cfg, supernet, objective, steps_per_epoch)
        if self.opts["reg_type"] == "kl":  # architect.py: weight_decay = 0 unless reg_type l2
            for g in self.a_opt.param_groups:
                g["weight_decay"] = 0.0


_REF: dict[str, Any] = dict(batch_size=64, w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0,
                            a_betas=(0.5, 0.999), a_weight_decay=1e-3)
register_method_presets(
    "drnas",
    darts=("DrNAS DARTS-space CIFAR-10 search (xiangning-chen/DrNAS DARTS-space/train_search.py): "
           "2 × 25 epochs, batch 64, 20 cells × 36, partial channels K=6 (its widening to K=4 "
           "is not built), pruning to 4 ops per edge at epoch 25, SGD 0.1 → 0, α Adam 6e-4",
           {**_REF, "epochs": 50, "channels": 36, "layers": 20, "w_lr": 0.1, "w_lr_min": 0.0,
            "a_lr": 6e-4, "method_args": {"partial_channels": 6, "regularisers": "prune",
                                          "prune_epoch": 25, "prune_keep": 4}}),
    nb201=("DrNAS NAS-Bench-201 CIFAR-10 search (xiangning-chen/DrNAS 201-space/train_search.py): "
           "100 epochs, batch 64, N=5 × 16, SGD 0.025 → 0.001, α Adam 3e-4 with decay 1e-3 (its "
           "l2 regulariser)",
           {**_REF, "epochs": 100, "w_lr": 0.025, "w_lr_min": 0.001, "a_lr": 3e-4}),
    cpu=(", but all channels (K=6 does not divide the 8-channel cells), pruning at epoch 2",
         {"method_args": {"regularisers": "prune", "prune_epoch": 2, "prune_keep": 4}}),
)
