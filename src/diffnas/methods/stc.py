"""STC-NAS (source-target consistent single-path search): "STC-NAS: Fast neural architecture
search with source-target consistency", Neurocomputing, 2022.

Each search step runs one *sub-cell* with the shape of the target cell, so a step costs
about what a step of the target network costs and the search can run at the target's
depth and width (the paper's depth consistency, preset ``stc-cifar10``):

- Eq. (3): an op's weight is ReLU(α_o), independent of the other ops on its edge.
- Eq. (4)-(5): per edge, n = argmax_o(α_o + ε_o), ε ~ U(0, r); the edge outputs
  ReLU(α_n)·o_n(x) (the Kronecker-delta "sifting"), so only op n runs and only α_n gets a
  gradient from the loss. The sub-cell has the target cell's edges: in the DARTS space the
  two strongest incoming edges per node, in NAS-Bench-201 every edge.
- Eq. (6)-(8): after every α update, α is projected onto the feasible box [0, 1].
- Eq. (9)-(10): the architecture loss is L_val(w, α_s) + λ·JS(α_s ‖ α), α_s the sampled
  one-hot architecture and α turned into a distribution per edge.
- §4.2: weights SGD 0.025 → 0.001 cosine, momentum 0.9, decay 3e-4; α Adam 3e-4,
  betas (0.5, 0.999) and *no* weight decay, so ops that are not sampled do not decay.
- §4.4 (preset ``stc-imagenet``): direct search on ImageNet with the target network's
  14 cells × 48 channels on 10 % of each class, SGD 0.5 → 0.001, decay 3e-4, 50 epochs.
- §5 ablations (options): weight function relu / softmax / sigmoid, initial noise range,
  λ static or ramped (Table 7; the default ramp 0 → 2 is the paper's best).

No reference code is public; these choices the paper leaves open are ours:

- ReLU's derivative at 0 is taken as 1 (``α.clamp_min(0)``, the right derivative; torch's
  ``relu`` uses 0). The projection (Eq. 6-8) puts α exactly on 0, and with derivative 0 there
  an op at 0 would get no gradient from the task loss or the JS term ever again: a stationary
  point of the method's arithmetic, not of the problem. Inside the box ReLU is the identity,
  so 1 is its derivative on the whole feasible set and keeps Eq. (3) and Eq. (6)-(8) exact
  (α may sit at 0 and weigh its op by exactly 0; an ε floor would change the feasible set
  and never let an op's weight reach 0). A floored op that is sampled gets the task loss'
  gradient ⟨∂L/∂out, o_n(x)⟩ and comes back when raising its weight lowers the loss.
- ``none`` in NAS-Bench-201: a sampled ``none`` outputs 0 whatever α_none, so Eq. (5)
  gives α_none no task-loss gradient; an edge running ``none`` is an edge the sub-cell does
  not have, so, like the DARTS space's unselected edges, it has no row in the JS term
  (Eq. 9 compares α with the architecture that ran). α_none thus moves only where another
  op is sampled on its edge, where JS pulls it down with the edge's other unsampled ops: it
  is never pulled up, and ``none`` is derived only where the task loss has pushed every real
  op of the edge below it. (Counting the ``none`` row pulled α towards every sampled
  ``none`` with no task-loss evidence against it; tiny searches all ended with ``none``.)
- Sampling *is* the space's derivation rule applied to noisy weights: the sub-cell is
  ``supernet.genotype(f(α) + ε)`` (f the weight function). In the DARTS space an edge's
  strength is its sampled op's noisy score and each node keeps its two strongest edges
  (``none`` is never sampled, as it is never derived); in NAS-Bench-201 each edge takes its
  noisy argmax, ``none`` included, and a ``none`` edge computes nothing. With ε = 0 this is
  exactly :meth:`derive`, so the eval-mode network is the derived genotype. For ReLU,
  f(α) = α on the feasible box, so this is Eq. (4) as written; for the softmax and sigmoid
  ablations the noise is added to the weights (same [0, 1] scale) rather than to raw α.
- The sample is drawn once per search step and reused by every forward of that step (the
  architecture step, the weight step, every call an objective makes, and the unrolled
  passes of ``order=2``): the weights are trained on the very sub-network whose α was just
  scored. ``resample=True`` draws a fresh sample for the weight step instead.
- r is annealed linearly from ``noise`` to 0 over the search, r = noise·(1 − progress),
  updated every step; λ moves linearly from ``lambda_start`` to ``lambda_end``.
- JS term: α becomes a distribution per edge by normalising the edge's weights f(α)
  (ReLU: α / Σα; the sum is clamped at 1e-12, so an all-zero edge is finite and a one-hot α
  gives exactly 0). An op the sample does not use has the exact one-sided derivative
  ½·ln 2 at probability 0 (no clamp on its log), so JS pulls it down, never up. It is
  averaged over the JS rows of the sampled sub-cell, so λ means the same in both spaces (an
  op an edge does not have, ``Supernet.op_mask``, is not in its distribution). A
  step's logged ``val_loss`` is the whole architecture loss (λ·JS included); ``arch_js``,
  ``noise_range`` and ``js_lambda`` are logged beside it.
- α starts at ``alpha_init`` = 0.5 (plus the supernet's 1e-3 random tie-breaker): inside
  the box, away from the bounds.
- The Adam weight decay for α is 0 whatever ``a_weight_decay`` the config holds (§4.2 makes
  it part of the method); the presets also set it to 0 so ``config.json`` says so.
- Preset batch sizes: 96 for the 20-cell search (the DARTS retraining batch of that
  network), 256 for the 8-cell one, 64 on NAS-Bench-201, 1024 on ImageNet (PC-DARTS'
  ImageNet search batch: §4.4's subset, schedule and decay are that protocol's, and lr 0.5
  is its large-batch rate); the CIFAR and NAS-Bench-201 searches run 50 epochs (DARTS'
  count, and §4.4's on ImageNet).
- ImageNet (``stc-imagenet``): "10 % of each class" is ``class_fraction=0.1`` (round(10 %)
  of every class, seeded), split 50/50 into the w and α halves like every search here
  (PC-DARTS draws 10 % for w and 2.5 % for α); images are resized to 224×224 on loading and
  augmented by flips only (no random-resized crops in the in-memory pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import SearchConfig, register_preset
from ..errors import DiffnasError
from ..objectives import Batch, LossOutput, Objective
from ..spaces import DartsGenotype, Genotype, MBConvGenotype, NB201Genotype, Supernet
from ..spaces.base import EdgeWeights
from .base import SearchMethod

WEIGHT_FNS = ("relu", "softmax", "sigmoid")


@dataclass
class SubCell:
    """A discrete architecture as edge policies: per cell kind, ``target[e, o]`` is 1 at the op
    edge ``e`` uses (α_s, one-hot; a zero row for an edge outside the sub-cell) and
    ``active[e]`` the ops it computes (``()`` for an absent edge or ``none``)."""

    genotype: Genotype
    target: dict[str, torch.Tensor]
    active: dict[str, list[tuple[int, ...]]]


def subcell(net: Supernet, genotype: Genotype) -> SubCell:
    """The edge policies that run exactly ``genotype`` inside ``net`` (one op per used edge)."""
    chosen: dict[str, dict[int, int]] = {}
    if isinstance(genotype, DartsGenotype):
        for kind in ("normal", "reduce"):
            where = {pair: e for e, pair in enumerate(net.edge_index[kind])}
            chosen[kind] = {where[(src, 2 + i // 2)]: net.op_names.index(op)
                            for i, (op, src) in enumerate(getattr(genotype, kind))}
    elif isinstance(genotype, NB201Genotype):
        chosen["cell"] = {e: net.op_names.index(op) for e, op in enumerate(genotype.ops)}
    elif isinstance(genotype, MBConvGenotype):  # one layer per edge of the chain
        chosen["layer"] = {e: net.op_names.index(op) for e, op in enumerate(genotype.ops)}
    else:  # pragma: no cover - every space's genotype is handled above
        raise TypeError(f"no sub-cell rule for {type(genotype).__name__}")
    device = next(iter(net.alphas.values())).device
    target, active = {}, {}
    for kind, ops in chosen.items():
        n_edges = len(net.edge_index[kind])
        t = torch.zeros(n_edges, len(net.op_names))
        t[list(ops), list(ops.values())] = 1.0
        target[kind] = t.to(device)
        active[kind] = [() if e not in ops or net.op_names[ops[e]] == "none" else (ops[e],)
                        for e in range(n_edges)]
    return SubCell(genotype, target, active)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of the rows of ``p`` and ``q`` (natural log; 0 ≤ JS ≤ ln 2):
    ½ Σ_i [p_i ln(2p_i / (p_i + q_i)) + q_i ln(2q_i / (p_i + q_i))].

    Where one side is 0 the other's ratio is exactly 2, so its term a·ln 2 has its true
    derivative ln 2 even at a = 0; the remaining logs are clamped, so zero probabilities
    contribute 0 and no gradient is infinite."""
    total = p + q

    def part(a: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        ratio = torch.where(other == 0, torch.full_like(a, 2.0), 2 * a / total.clamp_min(1e-30))
        return a * ratio.clamp_min(1e-30).log()

    return 0.5 * (part(p, q) + part(q, p)).sum(dim=-1)


class STC(SearchMethod):
    """STC-NAS: ReLU-weighted single-path sub-cells sampled by annealed uniform noise, projected
    α and a Jensen-Shannon pull of α towards the sampled architecture."""

    name = "stc"
    paper = "STC-NAS: Fast neural architecture search with source-target consistency " \
            "(Neurocomputing, 2022)"
    defaults: ClassVar[dict[str, Any]] = {
        "weight_fn": "relu",     # Eq. (3); softmax / sigmoid: §5 ablation
        "noise": 0.3,            # initial range r of ε ~ U(0, r), Eq. (4); annealed to 0
        "lambda_start": 0.0,     # λ of Eq. (10), linear from start to end (Table 7: 0 → 2)
        "lambda_end": 2.0,
        "alpha_init": 0.5,       # initial α (inside the feasible box [0, 1])
        "resample": False,       # True: a fresh sample for the weight step
    }

    def __init__(self, cfg: SearchConfig, supernet: Supernet, objective: Objective,
                 steps_per_epoch: int) -> None:
        super().__init__(cfg, supernet, objective, steps_per_epoch)
        o = self.opts
        if o["weight_fn"] not in WEIGHT_FNS:
            raise DiffnasError(f"method 'stc' option weight_fn={o['weight_fn']!r} is unknown; "
                               f"valid: {', '.join(WEIGHT_FNS)}")
        for key in ("noise", "lambda_start", "lambda_end"):
            if not float(o[key]) >= 0:  # also rejects NaN
                raise DiffnasError(f"method 'stc' option {key}={o[key]} must be a number >= 0")
        if not 0.0 <= float(o["alpha_init"]) <= 1.0:
            raise DiffnasError(f"method 'stc' option alpha_init={o['alpha_init']} must be in "
                               "[0, 1] (the feasible set of α)")
        for g in self.a_opt.param_groups:  # §4.2: no weight decay on α
            g["weight_decay"] = 0.0
        with torch.no_grad():
            for a in self.a_params:
                a.add_(float(o["alpha_init"]))
        self.project()
        self.current: SubCell | None = None

    # -- schedules -------------------------------------------------------------------------------
    def noise_range(self) -> float:
        """r of ε ~ U(0, r): linear from ``noise`` at the start to 0 at the end of the search."""
        return float(self.opts["noise"]) * (1.0 - self.progress)

    def js_lambda(self) -> float:
        """λ of Eq. (10): linear from ``lambda_start`` to ``lambda_end`` over the search."""
        a, b = float(self.opts["lambda_start"]), float(self.opts["lambda_end"])
        return a + (b - a) * self.progress

    # -- edge policy -------------------------------------------------------------------------------
    def edge_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        fn = self.opts["weight_fn"]
        if fn == "softmax":
            return F.softmax(alpha, dim=-1)
        if fn == "sigmoid":
            return torch.sigmoid(alpha)
        return alpha.clamp_min(0.0)  # Eq. (3): ReLU, with derivative 1 at 0 (docstring)

    def sample(self, noise: float | None = None) -> SubCell:
        """A sub-cell from n = argmax(f(α) + ε), ε ~ U(0, r) (Eq. 4), under the space's derivation
        rule; ``noise`` defaults to the scheduled range. Draws from torch's CPU generator."""
        r = self.noise_range() if noise is None else noise
        scores = {}
        for kind, w in self.alpha_weights().items():
            w = w.float().cpu()
            scores[kind] = w + r * torch.rand(w.shape) if r > 0 else w
        return subcell(self.net, self.net.genotype(scores))

    def edge_policy(self, supernet: Supernet, kind: str) -> EdgeWeights:
        """Training: the step's sample; eval mode: the noise-free sub-cell (= :meth:`derive`).
        Weight ReLU(α_n) on the sampled op and 0 elsewhere (Eq. 5)."""
        if supernet.training:
            if self.current is None:
                self.current = self.sample()
            sub = self.current
        else:
            sub = self.sample(noise=0.0)
        w = self.edge_weights(supernet.alphas[kind]) * sub.target[kind]
        return EdgeWeights(w, sub.active[kind])

    # -- losses and steps ---------------------------------------------------------------------
    def js_term(self) -> torch.Tensor:
        """JS(α_s ‖ α) of Eq. (9), averaged over the edges of the current sub-cell that run an
        op (an edge running ``none`` is absent from the sub-cell: no row)."""
        if self.current is None:
            self.current = self.sample()
        none = self.net.op_names.index("none") if "none" in self.net.op_names else None
        parts = []
        for kind, alpha in self.net.alphas.items():
            target = self.current.target[kind]
            rows = target.sum(dim=1) > 0
            if none is not None:
                rows &= target[:, none] == 0
            w = self.edge_weights(alpha[rows])
            mask = self.net.op_mask(kind)  # ops an edge lacks (mbconv: a stage's first skip)
            if mask is not None:
                w = w * mask[rows].to(w)
            q = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
            parts.append(js_divergence(target[rows], q))
        js = torch.cat(parts)
        return js.mean() if js.numel() else js.sum()  # 0 when every edge ran ``none``

    def arch_loss(self, batch: Batch) -> LossOutput:
        """L_val(w, α_s) + λ·JS(α_s ‖ α) (Eq. 10)."""
        out = self.objective(self.net, batch)
        lam = self.js_lambda()
        js = self.js_term()
        loss = out.loss + lam * js if lam > 0 else out.loss
        return LossOutput(loss, out.logits, {**out.terms, "js": js.detach()})

    @torch.no_grad()
    def project(self) -> None:
        """Euclidean projection of α onto the feasible box 0 ≤ α ≤ 1 (Eq. 6-8)."""
        for a in self.a_params:
            a.clamp_(0.0, 1.0)

    def arch_step(self, val: Batch, train: Batch) -> LossOutput:
        out = super().arch_step(val, train)
        self.project()
        return out

    def weight_step(self, train: Batch) -> LossOutput:
        if self.opts["resample"]:
            self.current = self.sample()
        return super().weight_step(train)

    def step(self, train: Batch, val: Batch) -> dict[str, float]:
        """One sample for the whole step, then the α and w updates of :class:`SearchMethod`."""
        r, lam = self.noise_range(), self.js_lambda()
        self.current = self.sample(r)
        stats = super().step(train, val)
        stats.update(noise_range=r, js_lambda=lam)
        return stats

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.current = None


# ---------------------------------------------------------------------------------------- presets
_PAPER = dict(method="stc", dataset="cifar10", epochs=50, crop_padding=4, flip=True,
              w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=3e-4,
              a_lr=3e-4, a_betas=(0.5, 0.999), a_weight_decay=0.0)
register_preset(
    "stc-cifar10",
    "STC-NAS CIFAR-10 search at the target depth (depth consistency): 20 cells, 36 channels, "
    "batch 96, 50 epochs, noise 0.3 → 0, λ 0 → 2",
    **_PAPER, space="darts", batch_size=96, channels=36, layers=20)
register_preset(
    "stc-cifar10-shallow",
    "STC-NAS 'w/o DepthC' CIFAR-10 search on the usual supernet: 8 cells, 16 channels, "
    "batch 256, 50 epochs",
    **_PAPER, space="darts", batch_size=256, channels=16, layers=8)
register_preset(
    "stc-nb201-cifar10",
    "STC-NAS in the NAS-Bench-201 space on CIFAR-10: N=5 cells per stage, 16 channels, "
    "batch 64, 50 epochs",
    **_PAPER, space="nb201", batch_size=64, channels=16, layers=5)
register_preset(
    "stc-imagenet",
    "STC-NAS direct ImageNet search (§4.4) at the target network's shape: darts-imagenet "
    "(224→28 stem), 14 cells × 48 channels, 10 % of each class (class_fraction 0.1, half for "
    "w, half for α), batch 1024, SGD 0.5 → 0.001, weight decay 3e-4, 50 epochs; pass "
    "--dataset folder:PATH (train/ with one folder per class)",
    **{**_PAPER, "space": "darts-imagenet", "dataset": "folder:", "image_size": 224,
       "class_fraction": 0.1, "batch_size": 1024, "channels": 48, "layers": 14, "w_lr": 0.5,
       "crop_padding": 0})
register_preset(
    "stc-cpu",
    "STC-NAS on 2 CPU cores: DARTS space on a 6000-image Fashion-MNIST subset, 5 cells × 8 "
    "channels, 8 epochs",
    method="stc", dataset="fashion-mnist", subset=6000, epochs=8, batch_size=64, channels=8,
    layers=5, crop_padding=2, flip=True, a_weight_decay=0.0)
