"""SDARTS perturbations of the op weights (Chen & Hsieh, "Stabilizing Differentiable
Architecture Search via Perturbation-based Regularization", ICML 2020;
xiangning-chen/SmoothDARTS ``attacker/perturb.py``).

In the weight step the supernet runs on ``Ā = softmax(α) + δ`` instead of softmax(α), with
δ in the L∞ ball of radius ε and Ā kept on the probability simplex:

* RS (``Random_alpha``): δ ~ U[−ε, ε] elementwise;
* ADV (``Linf_PGD_alpha``): δ maximises the weight-step loss: a random start as in RS, then
  ``steps`` (7) signed-gradient ascent steps of size 2ε/steps, each followed by clamping
  δ to [−ε, ε] and the simplex map; if the result does not raise the loss over the
  unperturbed weights, the unperturbed weights are used.

Deviations (one line each):

* "projected onto the simplex": the reference maps each edge's row by clamping to [0, 1] and
  dividing by its sum (:func:`clip_to_simplex`, its ``model.clip``), which is not the
  Euclidean projection; we do the same, and ``projection="euclidean"`` gives the Euclidean
  projection (:func:`project_simplex`).
* the reference runs the attack with the supernet in eval mode (BN on running statistics);
  the part does the same (supernet and objective in eval mode during the attack only).
* the perturbation acts on the weighting's deterministic op weights (softmax(α) for the
  softmax weighting, as in SDARTS); with other weightings (sigmoid, ReLU) they are mapped
  onto the simplex too, which SDARTS never did.
* the reference is single-GPU; under DDP every rank draws the same RS δ (the loop's seeding)
  but ADV attacks each rank's own batch, so its δ differs between ranks.

The part ``regularisers=sdarts`` (``sdarts_mode=rs|adv``) plugs this into any method's
weight step: :meth:`SDARTS.before_weight_step` draws/finds δ, :meth:`SDARTS.adjust_weights`
hands the perturbed weights to the edges in that step's forward only (the α step and
evaluation see the unperturbed weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import DiffnasError
from .parts import Part, register_part
from .regularisers import choice_option

Weights = dict[str, torch.Tensor]


def clip_to_simplex(w: torch.Tensor) -> torch.Tensor:
    """The reference's ``clip``: per row, clamp to [0, 1] and divide by the row sum; a row that
    clamps to all zeros puts weight 1 on its largest entry (before clamping)."""
    top = w.argmax(dim=-1, keepdim=True)
    c = w.clamp(0.0, 1.0)
    empty = c.sum(dim=-1, keepdim=True) == 0
    c = torch.where(empty & (torch.arange(w.shape[-1], device=w.device) == top), 1.0, c)
    return c / c.sum(dim=-1, keepdim=True)


def project_simplex(w: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, exact)."""
    u, _ = torch.sort(w, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1.0
    k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
    rho = ((u - css / k) > 0).sum(dim=-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho.to(w.dtype)
    return (w - theta).clamp_min(0.0)


PROJECTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clip": clip_to_simplex, "euclidean": project_simplex}


def sdarts_epsilon(epoch: int, epochs: int, eps_max: float, eps_min: float = 0.03) -> float:
    """The reference's radius schedule ``0.03 + (ε_max − 0.03) · epoch / epochs`` (0-based
    epochs, so the last epoch runs just under ε_max)."""
    return eps_min + (eps_max - eps_min) * epoch / max(1, epochs)


def random_perturbation(weights: Weights, eps: float,
                        project: Callable[[torch.Tensor], torch.Tensor] = clip_to_simplex,
                        ) -> Weights:
    """SDARTS-RS: ``project(w + U[−ε, ε])`` per cell kind (draws from torch's global RNG)."""
    return {k: project(w + torch.empty_like(w).uniform_(-eps, eps)) for k, w in weights.items()}


def pgd_perturbation(weights: Weights, loss_fn: Callable[[Weights], torch.Tensor], eps: float,
                     steps: int = 7, random_start: bool = True,
                     project: Callable[[torch.Tensor], torch.Tensor] = clip_to_simplex,
                     ) -> tuple[Weights, float, float]:
    """SDARTS-ADV: L∞ PGD on the op weights that maximises ``loss_fn`` (step 2ε/steps, sign
    of the gradient). Returns the perturbed weights and the loss before and after; when the
    attack did not raise the loss the unperturbed weights are returned (as the reference
    does), so ``after >= before`` always holds for the returned weights."""
    base = {k: w.detach() for k, w in weights.items()}
    lr = 2 * eps / steps
    with torch.no_grad():
        before = float(loss_fn(base))
        cur = (random_perturbation(base, eps, project) if random_start
               else {k: w.clone() for k, w in base.items()})
    for _ in range(steps):
        leaves = {k: w.clone().requires_grad_(True) for k, w in cur.items()}
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), allow_unused=True)
        with torch.no_grad():
            for (k, w), g in zip(leaves.items(), grads, strict=True):
                if g is None:
                    continue
                step = w + lr * g.sign()
                cur[k] = project(base[k] + (step - base[k]).clamp(-eps, eps))
    with torch.no_grad():
        after = float(loss_fn(cur))
    if before > after:
        return base, before, before
    return cur, before, after


@register_part
class SDARTS(Part):
    """SDARTS' perturbation of the weight step's op weights (module docstring)."""

    slot = "regularisers"
    name = "sdarts"
    paper = ("SDARTS (Chen & Hsieh, ICML 2020): the weight step runs on softmax(α) + δ mapped to "
             "the simplex, ‖δ‖∞ ≤ ε rising from sdarts_eps_min to sdarts_eps; rs: δ uniform, "
             "adv: sdarts_steps-step L∞ PGD maximising the weight-step loss")
    options = {"sdarts_mode": "rs", "sdarts_eps": 0.3, "sdarts_eps_min": 0.03,
               "sdarts_steps": 7, "sdarts_projection": "clip"}

    def __init__(self, method: Any, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        o = self.opts
        choice_option("sdarts_mode", o["sdarts_mode"], ("rs", "adv"))
        choice_option("sdarts_projection", o["sdarts_projection"], tuple(PROJECTIONS))
        if not 0 <= float(o["sdarts_eps_min"]) <= float(o["sdarts_eps"]):
            raise DiffnasError(f"options need 0 <= sdarts_eps_min <= sdarts_eps, got "
                               f"{o['sdarts_eps_min']} and {o['sdarts_eps']}")
        if int(o["sdarts_steps"]) < 1:
            raise DiffnasError(f"option sdarts_steps must be >= 1, got {o['sdarts_steps']}")
        self.project = PROJECTIONS[o["sdarts_projection"]]
        self.eps = float(o["sdarts_eps_min"])
        self.perturbed: Weights | None = None
        self.gain = 0.0

    def begin_epoch(self, epoch: int) -> None:
        o = self.opts
        self.eps = sdarts_epsilon(epoch, self.method.cfg.epochs, float(o["sdarts_eps"]),
                                  float(o["sdarts_eps_min"]))

    def before_weight_step(self, batch: Any) -> None:
        from .base import frozen  # lazy: the method base imports the parts

        m = self.method
        base = m.alpha_weights()
        if self.opts["sdarts_mode"] == "rs":
            self.perturbed = random_perturbation(base, self.eps, self.project)
            return

        def loss_fn(ws: Weights) -> torch.Tensor:
            self.perturbed = ws
            return m.weight_loss(batch).loss

        modes = (m.net.training, m.objective.training)
        m.net.eval()  # as the reference's Linf_PGD_alpha: the attack sees BN running statistics
        m.objective.eval()
        try:
            with frozen([*m.w_params, *m.a_params]):
                self.perturbed, before, after = pgd_perturbation(
                    base, loss_fn, self.eps, int(self.opts["sdarts_steps"]), True, self.project)
        finally:
            m.net.train(modes[0])
            m.objective.train(modes[1])
        self.gain = after - before

    def adjust_weights(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        if self.method.phase != "weight" or self.perturbed is None:
            return weights
        return self.perturbed[kind].to(weights)

    def stats(self) -> dict[str, float]:
        out = {"sdarts_eps": self.eps}
        if self.opts["sdarts_mode"] == "adv":
            out["sdarts_gain"] = self.gain
        return out
