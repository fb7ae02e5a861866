"""SNAS (Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019;
reference: the authors' SNAS-Series/SNAS-Series, directory ``SNAS``).

Parts: ``weighting=gumbel`` + ``edges=all``: every op of an edge is weighted by a soft
Gumbel-softmax sample w = softmax((α + g)/τ), g ~ Gumbel(0, 1), drawn afresh per forward
(reference ``_get_categ_mask``), and τ is annealed linearly from 1 to 0.03 over the epochs
(``--temp 1 --temp_min 0.03 --temp_annealing``, ``utils.Temp_Scheduler``). ``--opt
edges=one`` gives the hard (one-hot, straight-through) variant. The reference trains
single-level: one loss on a training batch updates both w and α (``single_level``), and clips
the α gradient at norm 10 (``arch_grad_clip``).

Resource constraint (§2.4): the ``resource`` part (:mod:`.resource`), η·cost (parameters,
FLOPs, memory access) of the sampled child, ``--opt regularisers=resource``. It is not a
default of the method (a bare ``--method snas`` is SNAS without it, as the NAS-Bench-201
re-runs that report SNAS numbers ran it), but the DARTS-space presets use it as the
reference's README search commands do: ``--resource_efficient --method reparametrization
--log_penalty --resource_lambda 1.5e-3`` (cost ``all``: the mean of log parameters, log FLOPs,
log MAC per edge).

Reference settings (``SNAS/README.md`` 8-cell command and ``train_search.py`` defaults): 150
epochs, batch 64, 8 cells × 16, SGD 0.025 → 0.001 cosine, momentum 0.9, decay 3e-4, clipping 5;
α: plain SGD, lr 3e-4, no decay (the single-GPU branch of ``init_optimizer``; its multi-GPU
branch uses Adam 3e-4, betas (0.5, 0.999), decay 1e-3: ``--opt arch_optimizer=adam``).

Deviations (one line each):
- the reference's linear τ scheduler is stepped once before the first epoch (τ starts one
  step below 1) and hard-codes 150 epochs; ours runs τ_max → τ_min over the
  first to the last epoch.
- the reference runs one forward/backward for w and α together; ours two (a fresh sample each).
- the reference uses all 50k training images for both; the loop's single level uses the train
  half (the loop's val half is then only evaluated).
- α starts at N(1, 0.01²) there (a constant shift is invisible to the softmax); here N(0, 1e-3²).
- the reference's search-time drop-path (0.3 on every edge, constant) is not built.
- the NAS-Bench-201 preset is ours (SNAS has no NAS-Bench-201 run): its DARTS-space settings.
- the reference samples when validating too; ours validates softmax(α), with batch statistics
  in every BN (``bn_batch_stats``): running averages of near-one-hot draws (τ → 0.03) misfit
  that mixture (an nb201-compare checkpoint: 11.4 % val acc with them, 58.6 % without).
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import resource  # noqa: F401  (registers the resource part)
from .base import SearchMethod
from .presets import register_method_presets


class SNAS(SearchMethod):
    name = "snas"
    paper = "SNAS: Stochastic Neural Architecture Search (Xie et al., ICLR 2019)"
    parts: ClassVar[dict[str, str]] = {"weighting": "gumbel", "edges": "all",
                                       "derivation": "argmax", "regularisers": ""}
    part_options: ClassVar[dict[str, Any]] = {"tau_max": 1.0, "tau_min": 0.03,
                                              "tau_schedule": "linear", "single_level": True,
                                              "arch_optimizer": "sgd", "arch_grad_clip": 10.0,
                                              "bn_batch_stats": True}


_REF: dict[str, Any] = dict(epochs=150, batch_size=64, w_lr=0.025, w_lr_min=0.001,
                            w_momentum=0.9, w_weight_decay=3e-4, grad_clip=5.0, a_lr=3e-4,
                            a_weight_decay=0.0)
register_method_presets(
    "snas",
    darts=("SNAS DARTS-space CIFAR-10 search (SNAS-Series SNAS/README 8-cell command, "
           "train_search.py): 150 epochs, batch 64, 8 cells × 16, single level, τ 1 → 0.03, SGD "
           "0.025 (decay 3e-4), α SGD 3e-4 (gradient clipped at 10); the resource constraint "
           "(reparametrised, log cost, λ 1.5e-3)",
           {**_REF, "channels": 16, "layers": 8,
            "method_args": {"regularisers": "resource", "resource_weight": 1.5e-3}}),
    nb201=("SNAS in NAS-Bench-201 on CIFAR-10 (not in the reference: its DARTS-space settings): "
           "150 epochs, batch 64, N=5 × 16, single level, τ 1 → 0.03; no resource term (DrNAS' "
           "NAS-Bench-201 re-run of SNAS, the number compared against, has none)",
           dict(_REF)),
)
