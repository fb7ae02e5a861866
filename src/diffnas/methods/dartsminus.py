"""DARTS- (Chu, Wang, Zhang, Lu, Wei & Yan, "DARTS-: Robustly Stepping out of Performance
Collapse Without Indicators", ICLR 2021; code: Meituan-AutoML/DARTS-).

First-order DARTS on a supernet whose every edge also adds an auxiliary skip connection,
``Σ_o softmax(α)_o · o(x) + β_skip · skip(x)``, outside the softmax (the part
``regularisers=aux_skip``, :mod:`diffnas.methods.regularisers`; supernet side
:meth:`diffnas.spaces.base.Supernet.add_aux_skip`). The skip is an identity, or on a stride-2
edge a FactorizedReduce (non-affine BN) with its own weights, as the reference's ``MixedOp``
builds it; β_skip decays linearly per epoch, β = (T − epoch)/T (``DecayScheduler``,
``--decay linear``, T = ``decay_max_epoch`` = 50 = the epochs): 1, 0.98, ..., 0.02. The aux
skip takes part in every forward (α step, w step, evaluation) but not in the genotype. Any
method takes it: ``--opt regularisers=aux_skip``.

Presets:

* ``dartsminus-cifar10`` (``scripts/run_darts_minus.sh`` with ``--space s5``, the DARTS space,
  and ``src/search/args.py`` defaults): 50 epochs, batch 64, SGD 0.025 → 0.001 cosine, momentum
  0.9, wd 3e-4, grad clip 5, Adam 3e-4 (betas 0.5, 0.999; wd 1e-3), 8 cells, 16 channels, 50/50
  split, β_skip 1 → 0 linearly over the 50 epochs.
* ``dartsminus-nb201-cifar10``: the reference has no NAS-Bench-201 code; the preset is the
  benchmark's own DARTS protocol the paper compares against (AutoDL-Projects ``DARTS-V1.sh`` with
  ``configs/nas-benchmark/algos/DARTS.config``: 50 epochs, batch 64, SGD 0.025 → 0.001 with
  Nesterov momentum 0.9, wd 5e-4; Adam 3e-4, wd 1e-3; N = 5, 16 channels) plus the aux skip.
* ``dartsminus-cpu`` / ``dartsminus-nb201-cpu``: the ``cpu`` / ``nb201-cpu`` data, network and
  epochs with these optimisers; β_skip 1 → 0 over the run.

Deviation: the reference keeps running its (non-affine BN) FactorizedReduce when β_skip is 0;
we skip the auxiliary branch at β = 0, which changes no output and is never reached in
training (β = 0 would be epoch T, after the last one).
"""

from __future__ import annotations

from typing import Any

from .base import SearchMethod
from .betadarts import REFERENCE_STEP
from .presets import register_method_presets


class DARTSMinus(SearchMethod):
    name = "dartsminus"
    paper = ("DARTS-: Robustly Stepping out of Performance Collapse Without Indicators "
             "(Chu et al., ICLR 2021)")
    parts = {**SearchMethod.parts, "regularisers": "aux_skip"}
    part_options: dict[str, Any] = {"aux_skip_beta": 1.0, "aux_skip_span": 0}


register_method_presets(
    "dartsminus",
    darts=("DARTS- CIFAR-10 search in the DARTS space (reference run_darts_minus.sh, space s5, "
           "args.py defaults): 50 epochs, batch 64, 8 cells × 16, SGD 0.025→0.001, wd 3e-4, Adam "
           "3e-4 (wd 1e-3), auxiliary skip β 1→0 linearly over the 50 epochs",
           {**REFERENCE_STEP, "epochs": 50, "channels": 16, "layers": 8}),
    nb201=("DARTS- on NAS-Bench-201 CIFAR-10 (no reference code; the benchmark's DARTS-V1 "
           "protocol, AutoDL-Projects DARTS.config): 50 epochs, batch 64, N=5 × 16, Nesterov SGD "
           "0.025→0.001, wd 5e-4, Adam 3e-4 (wd 1e-3), auxiliary skip β 1→0 linearly",
           {**REFERENCE_STEP, "w_weight_decay": 5e-4, "epochs": 50,
            "method_args": {"nesterov": True}}),
)
