"""PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections
for Memory-Efficient Architecture Search", ICLR 2020; code: yuhuixu1993/PC-DARTS).

First-order DARTS on a supernet built with two options (implemented in the search spaces,
:mod:`diffnas.spaces.base`, so any method can use them with ``--opt``):

* partial channels, Eq. (2): an edge's ops see only C/K of its input channels (K = 4), the
  rest bypass them (a 2×2 max-pool on stride-2 edges), and the concatenation is channel
  shuffled, so the ops' memory and compute shrink by about K;
* edge normalisation, Eq. (3): x_j = Σ_{i<j} softmax_i(β_{·j})_i · f_{i,j}(x_i), one β per
  edge, softmaxed over the edges entering node j; β are architecture parameters (updated by
  the α optimiser, all-reduced by DDP, checkpointed) and derivation ranks edges by the
  product of the β-weight and the op weight (§3.3).

The architecture parameters are frozen for the first 15 of the 50 search epochs (the paper's
warm-up; ``if epoch>=15: architect.step(...)`` in the reference's train_search.py). Without an
explicit ``--opt arch_warmup_epochs=N`` the warm-up is that share of the run, 30 % of the
epochs rounded (15 of 50; 1 of the ``cpu`` preset's 4; 2 of ``nb201-cpu``'s 8), so short runs
still update α.

Presets (``pcdarts-cpu`` / ``pcdarts-nb201-cpu``: the ``cpu`` / ``nb201-cpu`` data and network
with these optimiser settings and options; ``pcdarts-cpu`` keeps the warm-up as a share):

* ``pcdarts-cifar10`` (the reference's train_search.py, last revision): batch 256, SGD lr 0.1
  cosine-annealed to 0.0, momentum 0.9, wd 3e-4, grad clip 5; Adam 6e-4, betas (0.5, 0.999),
  wd 1e-3 (its architect.py); 50 epochs, α frozen for 15; 8 cells, 16 channels, K = 4, edge
  normalisation on; 50/50 train/val split of the CIFAR-10 training set.
* ``pcdarts-nb201-cifar10``: PC-DARTS' code has no NAS-Bench-201 search; the number quoted
  for it there (93.41 ± 0.30) is DrNAS' re-run, and the closest code we found is DrNAS'
  201-space train_search.py with ``--method darts --k 4``: partial channels K = 4 *without*
  edge normalisation (its NAS-Bench-201 cell has no β), no warm-up, 100 epochs, batch 64,
  SGD 0.025 → 0.001, wd 3e-4, Adam 3e-4 (wd 1e-3), N = 5 cells per stage, 16 channels.

Deviations (one line each):

* Paper says the op channels are a random sample (mask S_{i,j}); the reference takes the
  first C/K channels and lets the channel shuffle vary them from edge to edge; we follow the
  reference.
* The reference's bypass max-pool (``nn.MaxPool2d(2, 2)``) floors odd sizes and then fails
  to concatenate with the ops' ⌈H/2⌉ output; we pool with ``ceil_mode`` (same numbers on even
  sizes, CIFAR's included), so odd sizes work (the 15×15 maps of 30×30 inputs).
* The reference's final learning rate was 0.001 until a later commit set it to 0.0 (its
  V100_python1.0 copy keeps 0.001); the preset takes the last revision, 0.0.
"""

from __future__ import annotations

from typing import Any

from .base import SearchMethod
from .presets import register_method_presets

#: PC-DARTS' warm-up as a share of the search: α frozen for the first 15 of 50 epochs
WARMUP_SHARE = 15 / 50


class PCDARTS(SearchMethod):
    name = "pcdarts"
    paper = ("PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search "
             "(Xu et al., ICLR 2020)")
    part_options: dict[str, Any] = {"partial_channels": 4, "edge_norm": True}

    def arch_frozen(self) -> bool:
        """α (and β) frozen during the warm-up: ``arch_warmup_epochs`` when given, otherwise
        the first :data:`WARMUP_SHARE` of the epochs."""
        if "arch_warmup_epochs" in self.cfg.method_args:
            return super().arch_frozen()
        return self.epoch < round(WARMUP_SHARE * self.cfg.epochs)


register_method_presets(
    "pcdarts",
    darts=("PC-DARTS CIFAR-10 search (reference train_search.py, architect.py): K=4 partial "
           "channels, edge normalisation, batch 256, SGD 0.1 → 0 cosine (wd 3e-4), Adam 6e-4 "
           "(wd 1e-3), 50 epochs with α frozen for the first 15, 8 cells × 16",
           {"epochs": 50, "batch_size": 256, "channels": 16, "layers": 8, "w_lr": 0.1,
            "w_lr_min": 0.0, "w_momentum": 0.9, "w_weight_decay": 3e-4, "grad_clip": 5.0,
            "a_lr": 6e-4, "a_betas": (0.5, 0.999), "a_weight_decay": 1e-3,
            "method_args": {"arch_warmup_epochs": 15}}),
    nb201=("PC-DARTS NAS-Bench-201 CIFAR-10 search as DrNAS' 201-space train_search.py can run "
           "it (--method darts --k 4): K=4 partial channels, no edge normalisation, no warm-up, "
           "100 epochs, batch 64, SGD 0.025 → 0.001 (wd 3e-4), Adam 3e-4 (wd 1e-3), N=5 × 16",
           {"epochs": 100, "batch_size": 64, "w_lr": 0.025, "w_lr_min": 0.001,
            "w_momentum": 0.9, "w_weight_decay": 3e-4, "grad_clip": 5.0, "a_lr": 3e-4,
            "a_betas": (0.5, 0.999), "a_weight_decay": 1e-3,
            "method_args": {"partial_channels": 4, "edge_norm": False,
                            "arch_warmup_epochs": 0}}),
    # the warm-up as the reference's share of the run: 15 epochs would outlast the 4 of `cpu`
    cpu=(", α frozen for the first 30 % of the epochs (15 of 50 there)", {"method_args": {}}),
)
