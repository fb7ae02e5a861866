"""CDARTS: "Cyclic Differentiable Architecture Search" (Yu, Peng et al., IEEE TPAMI 45(1), 2023;
reference code: microsoft/Cream ``CDARTS`` (``lib/``, ``benchmark201/``), its scripts in the
older CVPR-2020/CDARTS repository; NNI ``CdartsTrainer``).

Two networks: the search network S (the supernet, w_S and α) and an evaluation network E
(w_E) built from the current top-k (k = 2) discretisation of α; they teach each other.

- §3.2, weight sharing through the one-shot model: E takes its weights from a persistent pool
  (:attr:`CDARTS.e_pool`, Cream ``super_layers_pool``) keyed by E's stable parameter names
  (``cells.{i}.nodes.{n}.{j}.{op}``: cell, node, input and op; stem, preprocessing and
  classifier always). At every cycle start E is rebuilt from the discretised α: E's trained
  weights go into the pool, the new E loads every parameter/buffer the pool holds for it (Cream
  ``copy_params_from_nas_layer`` / ``copy_params_from_super_layer``), so an op that leaves E and
  comes back later returns with its trained weights. E is as wide as S (16 channels on CIFAR
  and ImageNet; Cream's ``init_channels`` serves both) and as deep as the evaluation network
  (CIFAR 20 cells, ImageNet 14 with the ImageNet stem, NAS-Bench-201 N = 5).
- §3.3, embedding modules: after each stage of S and of E, global pooling + linear maps the
  stage's features to logits; the last stage's module is the network's own classifier.
- Eq. (9)-(10), introspective distillation (``distill=kl``): L^{S,E} = Σ_stages T²·KL(p_E ‖ q_S),
  p_E and q_S the softened (T = 2) stage logits of E and S, averaged over the batch; the
  reference scripts' forms (``kl-mean``, ``smoothl1``) in :func:`distillation_loss`.
- Eq. (7), separate learning: at every cycle start, E alone is trained for S_E steps on
  val batches by its cross-entropy L^E_val.
- Eq. (8), joint learning: α and w_E are updated together on a val batch by
  L^S_val + L^E_val + λ·L^{S,E}_val (paper λ = 4; presets: Deviations) + Eq. (11); α by Adam,
  w_E by E's SGD.
- Eq. (6): then w_S is updated on a train batch by L^S_train (SGD, cosine, as DARTS).
- Eq. (11): λ'·‖α_op‖₁ on the raw α of the ``l1_ops`` in every cell kind, λ' decaying
  linearly from 5 to 0 over the first ``l1_ratio`` (CIFAR 2/3: 20 of 30 cycles; ImageNet 1/2)
  of the post-warm-up epochs, constant within an epoch; off (``l1_coeff=0``) in NAS-Bench-201.
- Table 7 ablations (``variant``): ``s`` S alone with the ℓ1 term (first-order DARTS + Eq. 11),
  ``distill`` + E and the distillation (w_E trained only by separate learning, constant in the
  joint step), ``full`` + w_E updated in the joint step (CDARTS).
- Result: :meth:`CDARTS.derive` is the discretisation of the final α (Cream: the genotype
  generated after the last search epoch); E's last genotype is recorded beside it as
  ``eval_genotype`` in the metrics and result.json (E's weights are in the checkpoint).
- E is never disconnected: in NAS-Bench-201 a discretised cell (argmax per edge, ``none``
  included, as Cream's ``genotype()``) may have ``none`` on every input→output path; E is then
  built from :func:`connect` of it (the path whose missing ops are likeliest gets them). A
  disconnected result is kept as derived (it is what α says) with a warning.

How Algorithm 1 maps onto the method-agnostic loop (it hands the method one (train, val) batch
pair per step): the method keeps a phase counter (the loop's global step). After
``warmup_epochs`` (α fixed, only w_S trained; ImageNet: 10), the steps run in cycles of
S_E + S_U steps; the first step of a cycle discretises α and rebuilds E, the next S_E steps are
separate learning on their val batches (their train batches are not used: w_S and α rest, as
in Algorithm 1), the last S_U steps are joint steps followed by a w_S step. S_E and S_U are
given in epochs (the paper's unit) and rounded to steps (at least 1), so ``epochs`` counts
both kinds: the paper's 30 CIFAR epochs with S_E = S_U = 1 epoch are 30 cycles = 60 loop
epochs. E's separate-learning cost therefore lands in the loop's step time and is amortised
over the S_U search iterations of its cycle.

Deviations (paper says / reference code does / we do, because):

- Embedding modules: paper after each stage; Cream a two-conv 768-channel head shared by S
  and E, frozen on CIFAR; ours linear probes on *detached* stage features, so Eq. (6)-(7) stay
  exact for the networks' bodies (in the joint step only E's take the distillation gradient).
- Stem: paper keeps w_S and w_E apart; Cream lets S and E share the stem (E's optimiser moves
  it); ours gives E its own stem and classifier (kept by the pool) so Eq. (7) trains w_E only.
- Pool: Cream's is a one-shot network holding every op of every edge from the start; ours
  fills as E first uses an op (fresh weights then, as Cream's untouched ops) — same weights.
- α betas: paper Adam (0.5, 0.99); reference code (0.5, 0.999), hard-coded in Cream's
  ``search.py`` and ``benchmark201/search.py``; all three paper presets (0.5, 0.999)
  (``--set a_betas=0.5,0.99`` gives the paper text).
- α weight decay (CIFAR): paper 3e-4; ``run_search_cifar_1gpu.sh`` 0; ``cdarts-cifar10`` 0
  (``--set a_weight_decay=3e-4`` gives the paper text). NAS-Bench-201 keeps 3e-4: Cream has no
  NAS-Bench-201 search script (its README names one that is not in the repository).
- w_S schedule: the loop's default is cosine (DARTS); Cream's ``search.py`` builds cosine
  schedulers but never steps them (both calls commented out), so w_S and w_E keep w_lr; CIFAR
  and ImageNet presets constant (``w_lr_min`` = ``w_lr``; ``--set w_lr_min=0.001``: cosine).
- ImageNet weight decay: paper 3e-5 (w_S and α); ``run_search_imagenet.sh`` 1e-5 for both,
  which produced the published cells; preset 1e-5 (``--set w_weight_decay=3e-5 --set
  a_weight_decay=3e-5`` gives the paper text).
- Eq. (11) ops: paper ‖α_skip‖₁; Cream (``lib/core/search_function.py``) max_pool_3x3,
  avg_pool_3x3 and skip_connect in both cell kinds; DARTS-space presets follow Cream
  (``--opt l1_ops=skip_connect`` gives the paper text).
- NAS-Bench-201 ℓ1: Cream's ``benchmark201`` code with ``--regular`` penalises mean |α_none|
  (no script says the published runs used it); preset off (the benchmark's protocol);
  ``--opt l1_ops=none --opt l1_coeff=...`` gives the penalty, summed over the 6 edges.
- Eq. (8): paper L^S + L^E + λ·L^{S,E}, λ = 4, L^{S,E} the per-stage KL; Cream
  (CE_S + CE_E)/λ' + λ'·D with λ' = ``loss_alpha`` = 1 and D = T²·(element mean of) smooth-ℓ1
  (CIFAR script, ``interactive_type 3``) or KL (ImageNet script, ``interactive_type 0``) between
  the learned-weight stage ensembles (``--ensemble_param``); ``cdarts-cifar10`` uses
  ``distill=smoothl1``, ``cdarts-imagenet`` ``distill=kl-mean``, both ``lam=1``
  (``--opt distill=kl --opt lam=4`` gives the paper text); ``cdarts-nb201`` keeps the paper's
  (no script). The ensemble weights learn with w_E (Cream: E's optimiser in the joint step).
- CIFAR schedule: paper 30 epochs, w_lr 0.1; Cream's CIFAR script adds 2 warm-up epochs
  (pretrain_epochs 2 of search_iter 32) and uses w_lr = nasnet_lr = 0.08; preset the script's
  (``--set epochs=60 --opt warmup_epochs=0 --set w_lr=0.1 --set w_lr_min=0.001 --opt
  e_lr=0.1`` gives the paper text).
- NAS-Bench-201 E: Cream builds it from the argmax with ``none`` and so can disconnect it (then
  at chance, its distillation pulling S the same way); ours builds E from :func:`connect`.
- ImageNet search augmentation: Cream's ``get_search_datasets`` RandomResizedCrop(224), flip,
  ColorJitter(0.4, 0.4, 0.4, 0.2); ``cdarts-imagenet`` the flip and that jitter on images
  resized to 224 once (the search holds its subset in memory; no random-resized crop).
- E sees the val batch the objective prepared (masked images under the MIM objective); E's
  loss is plain cross-entropy, S's is the objective's (so MIM composes with S).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SearchConfig, register_preset
from ..errors import DiffnasError, unknown
from ..nets import build_network, load_shared
from ..objectives import Batch, LossOutput, Objective
from ..spaces import (
    DartsImageNetSupernet,
    DartsSupernet,
    Genotype,
    NB201Genotype,
    Supernet,
    genotype_from_dict,
)
from ..spaces.darts import reduction_layers
from ..spaces.nb201 import PATHS, connected
from .base import SearchMethod, accuracy, frozen, grads_of, set_grads

#: Table 7 rows: S alone (+ℓ1), + distillation, + updating w_E in the joint step.
VARIANTS = ("s", "distill", "full")


#: Eq. (8)'s distillation term: the paper's per-stage KL (Eq. 9-10), or Cream's
#: ``Loss_interactive`` on the stage ensemble (interactive_type 0: KL element mean, 3: smooth-ℓ1)
DISTILL = ("kl", "kl-mean", "smoothl1")


def distillation_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      temperature: float, form: str = "kl",
                      ensemble: torch.Tensor | None = None) -> torch.Tensor:
    """L^{S,E} between S's and E's stage logits; gradients reach both sides.

    ``kl`` (Eq. 9-10): Σ over stages of T²·KL(p_E ‖ q_S), batch mean, p_E = softmax(teacher/T),
    q_S = softmax(student/T). ``kl-mean`` / ``smoothl1`` (Cream ``lib/models/loss.py``): each
    side's stage logits scaled by softmax(``ensemble``) (equal weights if None) and stacked along
    the batch (Cream ``em_output``), then T² times the KL's or smooth-ℓ1's element mean."""
    t = float(temperature)
    if form == "kl":
        total = student[0].new_zeros(())
        for s, e in zip(student, teacher, strict=True):
            kl = F.kl_div(F.log_softmax(s / t, dim=1), F.log_softmax(e / t, dim=1),
                          log_target=True, reduction="batchmean")
            total = total + kl * (t * t)
        return total
    w = (torch.softmax(ensemble, dim=0) if ensemble is not None
         else student[0].new_full((len(student),), 1 / len(student)))
    s = torch.cat([wi * x for wi, x in zip(w, student, strict=True)])
    e = torch.cat([wi * x for wi, x in zip(w, teacher, strict=True)])
    if form == "smoothl1":
        return F.smooth_l1_loss(s, e) * (t * t)
    if form == "kl-mean":
        kl = F.kl_div(F.log_softmax(s / t, dim=1), F.log_softmax(e / t, dim=1),
                      log_target=True, reduction="sum")
        return kl / s.numel() * (t * t)
    raise unknown("cdarts distill", form, DISTILL)


def l1_schedule(epoch: int, epochs: int, coeff: float, ratio: float, warmup: int = 0) -> float:
    """λ' of Eq. (11) in ``epoch``: ``coeff`` decaying linearly to 0 at ``ratio`` of the
    post-warm-up epochs (CIFAR: 5 → 0 over 20 of 30), 0 afterwards."""
    span = ratio * max(1, epochs - warmup)
    return coeff * max(0.0, 1.0 - max(0, epoch - warmup) / span)


def connect(genotype: NB201Genotype, weights: torch.Tensor,
            op_names: Sequence[str]) -> NB201Genotype:
    """A connected cell for E (§3.2 needs a network that computes): ``genotype`` itself when
    :func:`connected`, else the input→output path whose ``none`` edges' strongest other ops are
    likeliest (largest product of their ``weights``, ``[edges, ops]``) takes those ops on its
    ``none`` edges; every other edge keeps its op."""
    if connected(genotype):
        return genotype
    w = weights.detach().float().cpu().clone()
    w[:, op_names.index("none")] = -math.inf
    best_w, best_op = w.max(dim=1)
    ops = list(genotype.ops)

    def score(path: tuple[int, ...]) -> float:
        return sum(math.log(max(float(best_w[e]), 1e-30)) for e in path if ops[e] == "none")

    path = max(PATHS, key=score)  # the first of equal scores: the shorter path
    for e in path:
        if ops[e] == "none":
            ops[e] = op_names[int(best_op[e])]
    return NB201Genotype(tuple(ops))


class StageHeads(nn.Module):
    """Embedding modules (§3.3): global pooling + linear on every stage but the last, whose
    logits are the network's own classifier output."""

    def __init__(self, stage_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, num_classes) for c in stage_channels[:-1])

    def _logits(self, head: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return head(F.adaptive_avg_pool2d(h, 1).flatten(1))

    def forward(self, stages: Sequence[torch.Tensor], final: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage logits: one per head, then ``final`` (the classifier's)."""
        return [*(self._logits(m, h) for m, h in zip(self.heads, stages, strict=False)), final]

    def probe_loss(self, stages: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the heads on detached stage features: trains the heads only."""
        loss = y.new_zeros((), dtype=torch.float32)
        for m, h in zip(self.heads, stages, strict=False):
            loss = loss + F.cross_entropy(self._logits(m, h.detach()), y)
        return loss


class _StageTap:
    """Stands in for the supernet inside an objective's forward and keeps the stage features of
    that forward, so the distillation reuses them (one pass, whatever the objective)."""

    def __init__(self, net: Supernet) -> None:
        self.net = net
        self.stages: list[torch.Tensor] = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.stages = self.net.forward_stages(x)
        return self.stages[-1]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)


class CDARTS(SearchMethod):
    """Cyclic search: S and an evaluation network E that teaches it (see the module doc)."""

    name = "cdarts"
    paper = "Cyclic Differentiable Architecture Search (Yu et al., IEEE TPAMI 2023)"
    defaults: dict[str, Any] = {
        "variant": "full",        # Table 7: s | distill | full
        "k": 2,                   # inputs kept per node by the discretisation (DARTS space)
        "s_u": 1.0,               # S_U: epochs between discretisations / E rebuilds
        "s_e": 1.0,               # S_E: epochs of separate learning of E after each rebuild
        "warmup_epochs": 0,       # epochs of w_S training with α fixed before the first cycle
        "lam": 4.0,               # λ of Eq. (8)
        "distill": "kl",          # L^{S,E}: kl (Eq. 9-10) | kl-mean | smoothl1 (Cream's forms)
        "temperature": 2.0,       # T of Eq. (9)-(10)
        "l1_coeff": 5.0,          # λ' at the start (Eq. 11); 0 switches the term off
        "l1_ratio": 2 / 3,        # share of the post-warm-up epochs over which λ' reaches 0
        "l1_ops": "skip_connect",  # comma-separated ops whose α Eq. (11) penalises
        "e_layers": 0,            # E depth (0: the evaluation network's: 20, ImageNet 14, N=5)
        "e_channels": 0,          # E width (0: S's width, as in the Cream code)
        "e_lr": 0.0,              # E's SGD learning rate (0: the config's w_lr)
    }

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        super().__init__(cfg, supernet, objective, steps_per_epoch)
        o = self.opts
        self.variant = str(o["variant"])
        if self.variant not in VARIANTS:
            raise unknown("cdarts variant", self.variant, VARIANTS)
        self._check_options(cfg, supernet)
        spe = self.steps_per_epoch
        self.update_steps = max(1, round(float(o["s_u"]) * spe))
        self.separate_steps = max(1, round(float(o["s_e"]) * spe))
        self.warmup_steps = int(o["warmup_epochs"]) * spe
        self.l1_ops = [s.strip() for s in str(o["l1_ops"]).split(",") if s.strip()]
        self.l1_index = [supernet.op_names.index(op) for op in self.l1_ops]
        self.l1_weight = float(o["l1_coeff"])
        self.num_classes = int(supernet.classifier.out_features)
        self.device = next(supernet.parameters()).device
        self.e_lr = float(o["e_lr"]) or cfg.w_lr
        # S's embedding modules belong to the w_S side: trained (as probes) in the w_S step
        self.s_heads: StageHeads | None = None
        if self.variant != "s":
            self.s_heads = StageHeads(supernet.stage_channels, self.num_classes).to(self.device)
            heads = list(self.s_heads.parameters())
            self.w_params.extend(heads)
            self.w_opt.add_param_group({"params": heads})
        #: Cream ``ensemble_param``: the learned stage weights of the ensemble distillation
        #: forms (one per stage, init 0.333·U(0, 1) as Cream), trained with w_E (E's SGD)
        self.ensemble: nn.Parameter | None = None
        if self.variant != "s" and o["distill"] != "kl":
            self.ensemble = nn.Parameter(
                0.333 * torch.rand(len(supernet.stage_channels), device=self.device))
        self.eval_net: nn.Module | None = None
        self.eval_heads: StageHeads | None = None
        self.eval_genotype: Genotype | None = None
        #: §3.2 weight-sharing pool: every parameter/buffer E has held, by E's name (see doc)
        self.e_pool: dict[str, torch.Tensor] = {}
        self.e_opt: torch.optim.SGD | None = None
        self.input_shape: tuple[int, int] | None = None  # (channels, size) of the images

    def _check_options(self, cfg: SearchConfig, net: Supernet) -> None:
        o = self.opts

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DiffnasError(f"method 'cdarts': {msg}")

        need(net.space != "mbconv", "its evaluation network E is a cell network built from "
             "the DARTS or NAS-Bench-201 genotype (weight pool by cell edge); the mbconv chain "
             "has none: use darts, nb201 or their -imagenet spaces")
        for key, what in (("s_u", "S_U, epochs between evaluation-network rebuilds"),
                          ("s_e", "S_E, epochs of separate learning of the evaluation network")):
            need(float(o[key]) > 0, f"option {key} ({what}) must be positive, got {o[key]}")
        need(int(o["warmup_epochs"]) >= 0,
             f"option warmup_epochs must be >= 0, got {o['warmup_epochs']}")
        need(int(o["warmup_epochs"]) < cfg.epochs,
             f"option warmup_epochs={o['warmup_epochs']} leaves no search epoch of {cfg.epochs}")
        need(float(o["lam"]) >= 0, f"option lam (λ of Eq. 8) must be >= 0, got {o['lam']}")
        need(str(o["distill"]) in DISTILL, f"option distill must be one of "
             f"{', '.join(DISTILL)}, got {o['distill']!r}")
        need(float(o["temperature"]) > 0,
             f"option temperature must be positive, got {o['temperature']}")
        need(float(o["l1_coeff"]) >= 0, f"option l1_coeff must be >= 0, got {o['l1_coeff']}")
        need(float(o["l1_ratio"]) > 0, f"option l1_ratio must be positive, got {o['l1_ratio']}")
        for op in str(o["l1_ops"]).split(","):
            op = op.strip()
            need(not op or op in net.op_names,
                 f"option l1_ops names {op!r}, which is not an op of the {net.space} space; "
                 f"valid: {', '.join(n for n in net.op_names if n != 'none')}")
        need(float(o["e_lr"]) >= 0, f"option e_lr must be >= 0 (0: w_lr), got {o['e_lr']}")
        need(int(o["e_layers"]) >= 0 and int(o["e_channels"]) >= 0,
             f"options e_layers and e_channels must be >= 0 (0: the space's evaluation "
             f"network), got {o['e_layers']} and {o['e_channels']}")
        k = int(o["k"])
        if isinstance(net, DartsSupernet):
            need(k >= 1, f"option k must be positive, got {k}")
            need(k <= 2, f"option k={k} is larger than the 2 inputs of the first intermediate "
                 "node of a DARTS cell")
            need(k == 2, f"option k={k}: DARTS genotypes keep exactly 2 inputs per node, so "
                 "the evaluation network needs k=2")
        if self.variant == "s":
            return
        need(cfg.order == 1, "the joint step (Eq. 8) is first order; use --order 1 (or "
             "variant=s for the S-alone ablation)")
        e_stages = 3
        if isinstance(net, DartsSupernet):
            default = 14 if isinstance(net, DartsImageNetSupernet) else 20
            e_stages = len(reduction_layers(int(o["e_layers"]) or default)) + 1
        s_stages = len(net.stage_channels)
        need(e_stages == s_stages,
             f"the evaluation network has {e_stages} stage(s) but the search network has "
             f"{s_stages}; the per-stage distillation (Eq. 9) needs equal stages: use at least "
             "3 cells in both (cells 1/3 and 2/3 of the way are reductions)")
        left = cfg.epochs * self.steps_per_epoch - int(o["warmup_epochs"]) * self.steps_per_epoch
        sep = max(1, round(float(o["s_e"]) * self.steps_per_epoch))
        need(left > sep, f"S_E = {sep} separate-learning steps fill all {left} steps after the "
             "warm-up, so no joint step would run; lower s_e or raise epochs")

    # -- schedule --------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        o = self.opts
        self.l1_weight = l1_schedule(epoch, self.cfg.epochs, float(o["l1_coeff"]),
                                     float(o["l1_ratio"]), int(o["warmup_epochs"]))

    def cycle_phase(self, step: int | None = None) -> str:
        """What step ``step`` (default: the next) does: ``warmup``, ``separate``, ``joint`` or,
        for the S-alone ablation, ``search``."""
        g = self.global_step if step is None else step
        if g < self.warmup_steps:
            return "warmup"
        if self.variant == "s":
            return "search"
        pos = (g - self.warmup_steps) % (self.separate_steps + self.update_steps)
        return "separate" if pos < self.separate_steps else "joint"

    def cycle_start(self) -> bool:
        g = self.global_step - self.warmup_steps
        return g >= 0 and g % (self.separate_steps + self.update_steps) == 0

    # -- the evaluation network ------------------------------------------------------------------
    def discretise(self) -> Genotype:
        """The top-k discretisation of the current α (the result; DARTS §2.4)."""
        return super().derive()

    def eval_discretisation(self) -> Genotype:
        """What E is built from: :meth:`discretise`, made :func:`connected` if it is not."""
        genotype = self.discretise()
        if connected(genotype):
            return genotype
        assert isinstance(genotype, NB201Genotype)
        return connect(genotype, self.alpha_weights()["cell"], self.net.op_names)

    def _pool_in(self) -> None:
        """E's weights into the pool (Cream ``copy_params_from_nas_layer``)."""
        assert self.eval_net is not None
        for k, v in self.eval_net.state_dict().items():
            self.e_pool[k] = v.detach().clone()

    def _build_eval(self, genotype: Genotype) -> None:
        """(Re)build E from ``genotype`` (§3.2): the outgoing E's weights go into the pool, the
        new E takes, bit for bit, every parameter/buffer the pool holds under its names (the
        rest is freshly initialised and joins the pool at the next rebuild). E's optimiser
        starts afresh."""
        assert self.input_shape is not None
        o = self.opts
        in_ch, size = self.input_shape
        try:
            net = build_network(genotype, imagenet=getattr(self.net, "imagenet_stem", False),
                                channels=int(o["e_channels"]) or self.net.channels,
                                layers=int(o["e_layers"]) or None, num_classes=self.num_classes,
                                in_channels=in_ch, input_size=size, auxiliary=False)
        except DiffnasError as e:
            raise DiffnasError(f"CDARTS evaluation network (e_layers={o['e_layers']}, "
                               f"e_channels={o['e_channels']}, 0 = default): {e}") from None
        net = net.to(self.device, memory_format=torch.channels_last)
        if self.eval_net is not None:
            self._pool_in()
        load_shared(net, self.e_pool)
        net.train()
        if self.eval_heads is None:
            self.eval_heads = StageHeads(net.stage_channels, self.num_classes).to(self.device)
        self.eval_net, self.eval_genotype = net, genotype
        c = self.cfg
        self.e_opt = torch.optim.SGD(self.e_params, lr=self.e_lr, momentum=c.w_momentum,
                                     weight_decay=c.w_weight_decay)

    @property
    def e_params(self) -> list[nn.Parameter]:
        """w_E: E's parameters, its embedding modules and the ensemble weights (if any)."""
        assert self.eval_net is not None and self.eval_heads is not None
        extra = [self.ensemble] if self.ensemble is not None else []
        return [*self.eval_net.parameters(), *self.eval_heads.parameters(), *extra]

    def refresh_eval(self) -> bool:
        """A cycle start: discretise α and rebuild E through the pool (as Cream does every
        cycle, also when the genotype is unchanged). True if the genotype changed."""
        genotype = self.eval_discretisation()
        changed = genotype != self.eval_genotype
        self._build_eval(genotype)
        return changed

    def _eval_forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        assert self.eval_net is not None
        stages = self.eval_net.forward_stages(x.contiguous(memory_format=torch.channels_last))
        return stages, self.eval_net.head(stages[-1])

    def _e_update(self, loss: torch.Tensor) -> None:
        assert self.e_opt is not None
        params = self.e_params
        self.e_opt.zero_grad(set_to_none=True)
        set_grads(params, grads_of(loss, params))
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.e_opt.step()

    # -- losses and steps ------------------------------------------------------------------------
    def l1_penalty(self) -> torch.Tensor:
        """‖α_op‖₁ over the ``l1_ops`` of every cell kind (Eq. 11, without λ')."""
        alphas = list(self.net.alphas.values())
        if not self.l1_index:
            return alphas[0].new_zeros(())
        return sum(a[:, self.l1_index].abs().sum() for a in alphas)  # type: ignore[return-value]

    def arch_loss(self, batch: Batch) -> LossOutput:
        """S-alone ablation: L^S_val + λ'·‖α_skip‖₁ (Eq. 11)."""
        out = self.objective(self.net, batch)
        if self.l1_weight == 0:
            return out
        reg = self.l1_weight * self.l1_penalty()
        return LossOutput(out.loss + reg, out.logits, {**out.terms, "l1": reg.detach()})

    def joint_loss(self, val: Batch) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
        """Eq. (8) + Eq. (11) on a val batch: ``(out, distill, probe)``; ``out.loss`` is
        L^S + L^E + λ·L^{S,E} + λ'·‖α_skip‖₁ (L^E only when w_E is trained jointly), ``distill``
        the live L^{S,E} and ``probe`` E's embedding-module probe loss (0 unless ``full``)."""
        assert self.s_heads is not None and self.eval_heads is not None
        joint_e = self.variant == "full"
        tap = _StageTap(self.net)
        s_out = self.objective(tap, val)
        if not tap.stages:  # an objective that never asked for features
            tap.forward_features(val.x)
        s_final = s_out.logits if s_out.logits is not None else self.net.head(tap.stages[-1])
        s_logits = self.s_heads(tap.stages, s_final)
        zero = s_final.new_zeros(())
        if joint_e:
            e_stages, e_final = self._eval_forward(val.x)
            e_ce = F.cross_entropy(e_final, val.y)
            e_logits = self.eval_heads(e_stages, e_final)
            probe = self.eval_heads.probe_loss(e_stages, val.y)
        else:  # the teacher is a constant in the distillation ablation
            with torch.no_grad():
                e_stages, e_final = self._eval_forward(val.x)
                e_logits = self.eval_heads(e_stages, e_final)
            e_ce, probe = F.cross_entropy(e_final, val.y), zero
        distill = distillation_loss(s_logits, e_logits, float(self.opts["temperature"]),
                                    str(self.opts["distill"]), self.ensemble)
        reg = self.l1_weight * self.l1_penalty() if self.l1_weight else zero
        loss = s_out.loss + float(self.opts["lam"]) * distill + reg
        if joint_e:
            loss = loss + e_ce
        terms = {**s_out.terms, "s_loss": s_out.loss.detach(), "e_ce": e_ce.detach(),
                 "e_acc": torch.tensor(accuracy(e_final, val.y)), "distill": distill.detach(),
                 "l1": reg.detach()}
        return LossOutput(loss, s_final, terms), distill, probe

    def arch_step(self, val: Batch, train: Batch) -> LossOutput:
        """The joint step (Eq. 8): α by Adam and, in ``full``, w_E by E's SGD; w_S is frozen."""
        if self.variant == "s":
            return super().arch_step(val, train)
        self.a_opt.zero_grad(set_to_none=True)
        with frozen(self.w_params):  # w_S (and the objective's modules) are constants here
            out, _, probe = self.joint_loss(val)
            if self.variant == "full":
                e_params = self.e_params
                grads = grads_of(out.loss + probe, [*self.a_params, *e_params])
                n = len(self.a_params)
                set_grads(self.a_params, grads[:n])
                assert self.e_opt is not None
                self.e_opt.zero_grad(set_to_none=True)
                set_grads(e_params, grads[n:])
                if self.cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(e_params, self.cfg.grad_clip)
                self.e_opt.step()
            else:
                set_grads(self.a_params, grads_of(out.loss, self.a_params))
        self.a_opt.step()
        return out

    def separate_step(self, val: Batch) -> LossOutput:
        """Separate learning (Eq. 7): E alone on a val batch, L^E_val = CE(E(x), y)."""
        assert self.eval_heads is not None
        stages, logits = self._eval_forward(val.x)
        loss = F.cross_entropy(logits, val.y)
        self._e_update(loss + self.eval_heads.probe_loss(stages, val.y))
        return LossOutput(loss, logits, {})

    def weight_step(self, train: Batch) -> LossOutput:
        """w_S on a train batch by L^S_train (Eq. 6); S's embedding modules learn as probes."""
        if self.s_heads is None:
            return super().weight_step(train)
        self.w_opt.zero_grad(set_to_none=True)
        with frozen(self.a_params):
            tap = _StageTap(self.net)
            out = self.objective(tap, train)
            if not tap.stages:
                tap.forward_features(train.x)
            probe = self.s_heads.probe_loss(tap.stages, train.y)
            set_grads(self.w_params, grads_of(out.loss + probe, self.w_params))
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_params, self.cfg.grad_clip)
        self.w_opt.step()
        return out

    def step(self, train: Batch, val: Batch) -> dict[str, float]:
        """One loop step: warm-up, separate learning or a search iteration (see module doc)."""
        phase = self.cycle_phase()
        if self.variant != "s" and self.eval_net is None:  # E exists (and fits) from step 1
            self.input_shape = (int(val.x.shape[1]), int(min(val.x.shape[-2:])))
            self._build_eval(self.eval_discretisation())
        elif phase == "separate" and self.cycle_start():
            self.refresh_eval()
        if phase in ("search", "joint"):
            return super().step(train, val)
        if phase == "separate":
            out = self.separate_step(val)
            self.global_step += 1
            assert out.logits is not None
            return {"e_sep_loss": out.loss.item(), "e_sep_acc": accuracy(out.logits, val.y)}
        out = self.weight_step(train)  # warm-up: α fixed
        self.global_step += 1
        stats = {"loss": out.loss.item(), **{k: float(v) for k, v in out.terms.items()}}
        if out.logits is not None:
            stats["acc"] = accuracy(out.logits, train.y)
        return stats

    # -- results ---------------------------------------------------------------------------------
    def derive(self) -> Genotype:
        """The discretisation of the current α (Cream's result); at the end of the search a
        cell with no input→output path is returned as derived, with a warning."""
        genotype = self.discretise()
        if self.progress >= 1.0 and not connected(genotype):
            e = (f"; the evaluation network was built from {self.eval_genotype}"
                 if self.eval_genotype is not None else "")
            warnings.warn(f"CDARTS result {genotype} has no path from the cell's input to its "
                          "output (none on every path): a network built from it outputs the "
                          f"same logits for every image{e}", RuntimeWarning, stacklevel=2)
        return genotype

    def epoch_metrics(self) -> dict[str, Any]:
        """E's genotype (``eval_genotype``, its text ``eval_genotype_str``) and whether the
        derived cell is connected (``genotype_connected``)."""
        out: dict[str, Any] = {"genotype_connected": connected(self.discretise())}
        if self.eval_genotype is not None:
            out.update(eval_genotype=self.eval_genotype.to_dict(),
                       eval_genotype_str=str(self.eval_genotype))
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["global_step"] = self.global_step
        if self.s_heads is not None:
            state["s_heads"] = self.s_heads.state_dict()
        if self.ensemble is not None:
            state["ensemble"] = self.ensemble.detach().clone()
        if self.eval_net is not None:
            assert self.eval_heads is not None and self.e_opt is not None
            assert self.eval_genotype is not None and self.input_shape is not None
            state.update(input_shape=list(self.input_shape),
                         eval_genotype=self.eval_genotype.to_dict(),
                         eval_net=self.eval_net.state_dict(), e_pool=dict(self.e_pool),
                         eval_heads=self.eval_heads.state_dict(), e_opt=self.e_opt.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.global_step = int(state["global_step"])
        if self.s_heads is not None:
            self.s_heads.load_state_dict(state["s_heads"])
        if self.ensemble is not None:
            with torch.no_grad():
                self.ensemble.copy_(state["ensemble"])
        if "eval_net" in state:
            in_ch, size = state["input_shape"]
            self.input_shape = (int(in_ch), int(size))
            self.eval_net = self.eval_heads = None
            self.e_pool = dict(state["e_pool"])
            self._build_eval(genotype_from_dict(state["eval_genotype"]))
            assert self.eval_net is not None and self.eval_heads is not None
            assert self.e_opt is not None
            self.eval_net.load_state_dict(state["eval_net"])
            self.eval_heads.load_state_dict(state["eval_heads"])
            self.e_opt.load_state_dict(state["e_opt"])


# ------------------------------------------------------------------------------------ presets
#: Table 1: SGD 0.1 (momentum 0.9, decay 3e-4) for w_S and w_E, Adam 3e-4 for α, batch 64,
#: λ = 4, T = 2, S_E = S_U = 1 epoch.
_PAPER: dict[str, Any] = dict(
    method="cdarts", batch_size=64, w_lr=0.1, w_momentum=0.9, w_weight_decay=3e-4,
    a_lr=3e-4, a_betas=(0.5, 0.99), a_weight_decay=3e-4, crop_padding=4, flip=True)
#: the reference code (Cream CDARTS/search.py, benchmark201/search.py): Adam betas (0.5, 0.999)
#: hard-coded for α
_REF: dict[str, Any] = {**_PAPER, "a_betas": (0.5, 0.999)}
#: Eq. (11)'s ops as Cream's search_function.py penalises them in the DARTS space
_L1_OPS = "max_pool_3x3,avg_pool_3x3,skip_connect"
_OPTS: dict[str, Any] = {"s_u": 1.0, "s_e": 1.0, "lam": 4.0, "temperature": 2.0,
                         "l1_coeff": 5.0, "l1_ratio": 2 / 3, "e_lr": 0.1}
#: run_search_cifar_1gpu.sh: batch 64, w_lr = nasnet_lr 0.08 (constant: search.py never steps
#: its schedulers), alpha_lr 3e-4, alpha decay 0, pretrain_epochs 2 of search_iter 32 (30
#: cycles), nasnet_warmup 1 (S_E), search_iter_epochs 1 (S_U), regular_ratio 0.667,
#: interactive_type 3 (smooth-ℓ1), loss_alpha 1 (λ = 1), loss_T 2, --ensemble_param
register_preset(
    "cdarts-cifar10",
    "CDARTS CIFAR-10 search as run_search_cifar_1gpu.sh (the published cells): S 8 cells × 16, "
    "E 20 × 16, 2 warm-up epochs with α fixed, then 30 cycles of S_E = S_U = 1 epoch (62 loop "
    "epochs), SGD 0.08 constant, α Adam betas (0.5, 0.999) without decay, smooth-ℓ1 "
    "distillation of the stage ensemble (λ=1, T=2), λ' 5→0 over the first 20 cycles, batch 64",
    **{**_REF, "space": "darts", "dataset": "cifar10", "epochs": 62, "channels": 16,
       "layers": 8, "w_lr": 0.08, "w_lr_min": 0.08, "a_weight_decay": 0.0,
       "method_args": {**_OPTS, "l1_ops": _L1_OPS, "e_layers": 20, "warmup_epochs": 2,
                       "e_lr": 0.08, "distill": "smoothl1", "lam": 1.0}})
register_preset(
    "cdarts-nb201",
    "CDARTS in NAS-Bench-201 on CIFAR-10 (Table 1): S and E the benchmark's N=5 × 16 network, "
    "50 cycles of S_E = S_U = 1 epoch (100 loop epochs), λ=4, no ℓ1, SGD 0.1, batch 64, α Adam "
    "betas (0.5, 0.999) (the reference code); run seeds 0, 1, 2",
    **{**_REF, "space": "nb201", "dataset": "cifar10", "epochs": 100, "channels": 16,
       "layers": 5, "method_args": {**_OPTS, "l1_coeff": 0.0, "e_layers": 5}})
#: run_search_imagenet.sh: batch 8 × 128, w_lr = nasnet_lr 0.8 (constant, as on CIFAR),
#: alpha_lr 3e-4, weight decay 1e-5 (w and α), pretrain_epochs 10 of search_iter 40 (30 cycles),
#: nasnet_warmup 3 (S_E), search_iter_epochs 1 (S_U), regular_ratio 0.5, init_channels 16,
#: stem_multiplier 1, interactive_type 0 (KL element mean), loss_alpha 1 (λ = 1), --ensemble_param
register_preset(
    "cdarts-imagenet",
    "CDARTS ImageNet search as run_search_imagenet.sh: S 8 cells × 16 and E 14 × 16, both "
    "ImageNet-shaped (darts-imagenet, 224→28 stem), 10 warm-up epochs with α fixed, then 30 "
    "cycles of S_E = 3 + S_U = 1 epochs (130 loop epochs), batch 1024, SGD 0.8 constant, weight "
    "decay 1e-5 (w and α), α Adam betas (0.5, 0.999), KL (element mean) distillation of the "
    "stage ensemble (λ=1, T=2), λ' 5→0 over half; pass --dataset folder:PATH (a "
    "class-balanced subset)",
    **{**_REF, "space": "darts-imagenet", "dataset": "folder:", "image_size": 224,
       "epochs": 130, "batch_size": 1024, "channels": 16, "layers": 8, "w_lr": 0.8,
       "w_lr_min": 0.8, "w_weight_decay": 1e-5, "a_weight_decay": 1e-5, "crop_padding": 0,
       "color_jitter": (0.4, 0.4, 0.4, 0.2),
       "method_args": {**_OPTS, "l1_ops": _L1_OPS, "warmup_epochs": 10, "s_e": 3.0,
                       "l1_ratio": 0.5, "e_layers": 14, "e_lr": 0.8, "distill": "kl-mean",
                       "lam": 1.0}})
register_preset(
    "cdarts-cpu",
    "CDARTS on 2 CPU cores (about 7 minutes): DARTS space on a 2000-image Fashion-MNIST "
    "subset, S 5 cells × 8, E 8 cells × 8, 3 cycles of S_E = S_U = 1 epoch (6 loop epochs)",
    **{**_PAPER, "space": "darts", "dataset": "fashion-mnist", "subset": 2000, "epochs": 6,
       "channels": 8, "layers": 5, "crop_padding": 2,
       "method_args": {**_OPTS, "l1_ops": _L1_OPS, "e_layers": 8}})
