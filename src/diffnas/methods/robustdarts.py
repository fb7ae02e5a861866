"""RobustDARTS' early stopping and adaptive regularisation (Zela, Elsken, Saikia, Marrakchi,
Brox & Hutter, "Understanding and Robustifying Differentiable Architecture Search", ICLR 2020;
code: automl/RobustDARTS, ``src/search/train_search.py``, ``src/utils.py`` ``EVLocalAvg``).
The part ``regularisers=drop_path`` (option ``drop_path_prob``) is R-DARTS(DP)'s drop-path.

The part ``early_stop=hessian`` watches the dominant eigenvalue λ_max of ∇²_α L_val (the
loop's ``hessian_eig``, :mod:`diffnas.engine.hessian`, every K = 2 epochs as the reference
scripts' ``--report_freq_hessian 2``). Its local average over a window of ``es_window`` = 5
evaluations is compared with the one ``es_delta`` = 4 evaluations earlier (§5.1, "DARTS-ES");
when the ratio exceeds ``es_factor`` = 1.3, and the earlier average's epoch minus K·δ is at
least ``es_start_epoch`` = 10, the search

* ``es_mode=stop`` (``darts-es``, the reference's ``--early_stop 1``): stops, and its result is
  the genotype of the stop epoch: the epoch of the earlier average minus K·δ (the current
  epoch − K·(⌊window/2⌋ + δ), 12 epochs back with the defaults). With a selection after the
  search (``--select pt``) the part keeps the states of the epochs a stop can reach, as ADA
  does, and restores the stop epoch's (weights, α, optimisers) before stopping, so the
  selection perturbs the supernet whose α gave that genotype: §5.1 returns "the architecture"
  of the stop epoch, and PT reads an architecture from a supernet, not from α;
* ``es_mode=ada`` (``darts-ada``, ``--early_stop 3`` of ``scripts/DARTS-ADA_search.sh``):
  rolls back to the end of the stop epoch (every state of that epoch: weights, optimisers,
  α, the eigenvalue history), multiplies the weights' L2 weight decay by ``ada_mul_factor``
  = 10 and continues; it adapts while ``round(log(max)/log(wd), 1) != 1`` for
  ``ada_max_weight_decay`` = 0.03 (so 3e-4 → 3e-3 → 3e-2 at most, then it runs to the end).

Deviations (one line each):

* The reference keeps a checkpoint file per epoch for the rollback; ``darts-ada`` keeps the
  states of the epochs a rollback can reach (every K-th, at most ⌊window/2⌋ + δ + 1 of them)
  in its own state, so they are in the run's checkpoint and a resumed run rolls back alike.
* ``--extra_rollback_epochs`` (0 in the reference scripts) is not offered.
* ``darts-es --select pt`` has no reference (RobustDARTS has no selection phase; its
  ``--early_stop 1`` returns the stop genotype, the weights stay those of the current epoch);
  we restore the stop epoch's state for the selection, as above.
* The reference also skips the stop of ``--early_stop 1`` when wd is at its maximum (never with
  its defaults 3e-4 and 0.0243); ``es_mode=stop`` always stops.
* After a rollback the reference re-runs its data loaders with fresh randomness; here the
  re-run epochs draw the same batches as the first time (randomness comes from (seed, epoch)).
* R-DARTS(L2) / R-DARTS(DP) are not presets: the paper picks, per space and dataset, the best
  of a grid by validation (the reference's logs: wd 3e-4·3^k, k = 0..6; drop-path 0, 0.2, 0.4,
  0.6); run the grid with ``w_weight_decay`` and ``--opt regularisers=drop_path --opt
  drop_path_prob=P`` (the README has both grids as ``diffnas experiment`` commands). With
  drop-path the reference also turns on cutout 16 with its probability rising linearly from
  0 to 1; we keep ``cutout`` as configured (the README's grid: 16 at probability 1).
* The reference's search scripts run second-order DARTS (``--unrolled``); the presets do
  too (``order=2``), the CPU presets keep first order for speed.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .base import SearchMethod
from .parts import Part, register_part
from .presets import register_method_presets


class EigenvalueTracker:
    """The windowed local average of λ_max and RobustDARTS' stop rule (``EVLocalAvg``).

    ``update(epoch, ev, genotype)`` after each evaluation (every ``every`` epochs);
    ``check(epoch)`` then returns the stop epoch when the rule fires, else None."""

    def __init__(self, window: int = 5, every: int = 2, epochs: int = 50) -> None:
        self.window, self.every, self.epochs = window, every, epochs
        self.ev: list[float] = []
        self.local_avg: list[float] = []
        self.la_epochs: dict[int, int] = {}     # epoch -> epoch of its local average (-1: none)
        self.genotypes: dict[int, dict[str, Any]] = {}
        self.start = 0                          # first index of the sliding window

    def update(self, epoch: int, ev: float, genotype: dict[str, Any]) -> None:
        self.ev.append(float(ev))
        self.genotypes[epoch] = genotype
        half = math.ceil(self.window / 2)
        if len(self.ev) < half:
            self.la_epochs[epoch] = -1
        elif epoch < self.epochs - 1:  # the last epoch only flushes the window (never checked)
            if len(self.ev) < self.window:
                self.local_avg.append(sum(self.ev) / len(self.ev))
            else:
                win = self.ev[self.start:self.start + self.window]
                self.local_avg.append(sum(win) / self.window)
                self.start += 1
            self.la_epochs[epoch] = epoch - self.every * (self.window // 2)

    def check(self, epoch: int, factor: float, start_epoch: int, delta: int) -> int | None:
        """The reference's ``early_stop``: the stop epoch, or None."""
        if epoch not in self.la_epochs or self.la_epochs[epoch] < 0:
            return None
        stop = self.la_epochs[epoch] - self.every * delta
        if stop < start_epoch or len(self.local_avg) <= delta:
            return None
        current, previous = self.local_avg[-1], self.local_avg[-1 - delta]
        return stop if current / previous > factor else None

    def state_dict(self) -> dict[str, Any]:
        return {"ev": list(self.ev), "local_avg": list(self.local_avg),
                "la_epochs": dict(self.la_epochs), "genotypes": dict(self.genotypes),
                "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ev, self.local_avg = list(state["ev"]), list(state["local_avg"])
        self.la_epochs = {int(k): int(v) for k, v in state["la_epochs"].items()}
        self.genotypes = {int(k): v for k, v in state["genotypes"].items()}
        self.start = int(state["start"])


@register_part
class HessianEarlyStop(Part):
    """RobustDARTS: stop (DARTS-ES) or roll back and raise the L2 (DARTS-ADA) when λ_max grows."""

    slot = "early_stop"
    name = "hessian"
    paper = ("RobustDARTS early stopping on the α-Hessian's dominant eigenvalue (Zela et al., "
             "ICLR 2020, §5)")
    options = {"es_mode": "stop", "es_window": 5, "es_delta": 4, "es_factor": 1.3,
               "es_start_epoch": 10, "es_every": 2, "ada_mul_factor": 10.0,
               "ada_max_weight_decay": 0.03}

    def __init__(self, method: SearchMethod, opts: dict[str, Any]) -> None:
        super().__init__(method, opts)
        from ..errors import DiffnasError

        if self.opts["es_mode"] not in ("stop", "ada"):
            raise DiffnasError(f"method {method.name!r} option es_mode="
                               f"{self.opts['es_mode']!r} is unknown; valid: stop, ada")
        if int(self.opts["es_every"]) < 1 or int(self.opts["es_window"]) < 1:
            raise DiffnasError(f"method {method.name!r} options es_every and es_window must be "
                               "at least 1")
        every = method.cfg.hessian_every or int(self.opts["es_every"])  # = method.hessian_every()
        self.tracker = EigenvalueTracker(int(self.opts["es_window"]), every, method.cfg.epochs)
        self.iteration = 1      # ADA: 1 + the number of rollbacks so far
        self.snapshots: dict[int, dict[str, Any]] = {}  # ADA: epoch -> the state at its end

    def hessian_every(self) -> int:
        return int(self.opts["es_every"])

    @property
    def weight_decay(self) -> float:
        return float(self.method.w_opt.param_groups[0]["weight_decay"])

    def final_iteration(self) -> bool:
        """The reference's ``round(log(max_wd) / log(wd), 1) == 1``: no more adaptation."""
        wd, top = self.weight_decay, float(self.opts["ada_max_weight_decay"])
        return wd > 0 and round(math.log(top) / math.log(wd), 1) == 1.0

    def end_epoch(self, record: dict[str, Any]) -> dict[str, Any]:
        m, epoch = self.method, self.method.epoch
        if "hessian_eig" not in record:
            return {}
        self.tracker.update(epoch, record["hessian_eig"], record["genotype"])
        out: dict[str, Any] = {"hessian_eig_local_avg": (self.tracker.local_avg[-1]
                                                         if self.tracker.local_avg else None)}
        ada = self.opts["es_mode"] == "ada"
        if ada or m.cfg.select is not None:  # a rollback, or a selection on the stop epoch's net
            self._snapshot(epoch)
        if epoch == m.cfg.epochs - 1:
            return out
        stop = self.tracker.check(epoch, float(self.opts["es_factor"]),
                                  int(self.opts["es_start_epoch"]), int(self.opts["es_delta"]))
        if stop is None or (ada and self.final_iteration()):
            return out
        if not ada:
            then = "the genotype"
            if m.cfg.select is not None:  # the selection runs on the supernet of the stop epoch
                self._restore(stop, tracker=False)
                self.snapshots = {}
                then = f"--select {m.cfg.select} on the supernet"
            m.stop_early(stop, self.tracker.genotypes[stop],
                         f"RobustDARTS early stop: the local average of the Hessian's dominant "
                         f"eigenvalue grew by more than {self.opts['es_factor']}× "
                         f"(at epoch {epoch + 1}); result: {then} of epoch {stop + 1}")
            return out
        wd = self.weight_decay * float(self.opts["ada_mul_factor"])
        self._restore(stop)  # (the optimiser's state too, with its old weight decay)
        for g in m.w_opt.param_groups:
            g["weight_decay"] = wd
        self.iteration += 1
        m.roll_back(stop)
        return {**out, "ada_rollback": {"from_epoch": epoch, "to_epoch": stop,
                                        "iteration": self.iteration,
                                        "weight_decay": self.weight_decay,
                                        "early_genotype": self.tracker.genotypes[stop]}}

    # -- ADA: the states a rollback can reach ------------------------------------------------------
    def _snapshot(self, epoch: int) -> None:
        m = self.method
        self.snapshots[epoch] = copy.deepcopy({
            "model": m.net.state_dict(), "objective": m.objective.state_dict(),
            "method": self._method_state(), "tracker": self.tracker.state_dict()})
        reach = self.tracker.every * (int(self.opts["es_window"]) // 2 + int(self.opts["es_delta"]))
        for e in [e for e in self.snapshots if e < epoch - reach]:
            del self.snapshots[e]

    def _method_state(self) -> dict[str, Any]:
        state = self.method.state_dict()
        state.get("parts", {}).pop(f"{self.slot}={self.name}", None)  # not this part's history
        return state

    def _restore(self, epoch: int, tracker: bool = True) -> None:
        snap = copy.deepcopy(self.snapshots[epoch])
        m = self.method
        m.net.load_state_dict(snap["model"])
        m.objective.load_state_dict(snap["objective"])
        m.load_state_dict(snap["method"])
        if tracker:
            self.tracker.load_state_dict(snap["tracker"])
        self.snapshots = {e: s for e, s in self.snapshots.items() if e <= epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "iteration": self.iteration,
                "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.iteration = int(state["iteration"])
        self.snapshots = {int(k): v for k, v in state["snapshots"].items()}


@register_part
class DropPath(Part):
    """R-DARTS(DP): drop-path on every supernet edge, its rate rising linearly over the search."""

    slot = "regularisers"
    name = "drop_path"
    paper = ("drop-path on every edge of the supernet, p·epoch/(epochs − 1) (RobustDARTS "
             "R-DARTS(DP), §5.2; src/search/model_search.py). R-DARTS(DP): the best of "
             "drop_path_prob 0/0.2/0.4/0.6 by validation; R-DARTS(L2): darts with "
             "w_weight_decay 3e-4·3^k, k = 0..6; README: the grid commands")
    options = {"drop_path_prob": 0.2}

    def rate(self, epoch: int) -> float:
        """The reference's ``drop_path_prob * epoch / (epochs - 1)``."""
        return float(self.opts["drop_path_prob"]) * epoch / max(1, self.method.cfg.epochs - 1)

    def begin_epoch(self, epoch: int) -> None:
        for edge in self.method.net.mixed_edges():
            edge.drop_path = self.rate(epoch)


class DARTSES(SearchMethod):
    name = "darts-es"
    paper = ("DARTS-ES: DARTS stopped early on the α-Hessian's eigenvalue (Zela et al., "
             "Understanding and Robustifying DARTS, ICLR 2020)")
    parts = {**SearchMethod.parts, "early_stop": "hessian"}
    part_options: dict[str, Any] = {"es_mode": "stop"}


class DARTSADA(SearchMethod):
    name = "darts-ada"
    paper = ("DARTS-ADA: DARTS with adaptive L2 regularisation on the α-Hessian's eigenvalue "
             "(Zela et al., ICLR 2020)")
    parts = {**SearchMethod.parts, "early_stop": "hessian"}
    part_options: dict[str, Any] = {"es_mode": "ada"}


#: the reference's ``src/search/args.py`` defaults as its search scripts run them (DARTS' own)
REFERENCE: dict[str, Any] = {
    "epochs": 50, "batch_size": 64, "w_lr": 0.025, "w_lr_min": 0.001, "w_momentum": 0.9,
    "w_weight_decay": 3e-4, "grad_clip": 5.0, "train_portion": 0.5, "a_lr": 3e-4,
    "a_weight_decay": 1e-3, "channels": 16, "layers": 8, "order": 2}

for _name, _cls in (("darts-es", DARTSES), ("darts-ada", DARTSADA)):
    register_method_presets(
        _name,
        darts=(f"{_name} DARTS-space CIFAR-10 search as automl/RobustDARTS' scripts run it: "
               "50 epochs, batch 64, 8 cells × 16, second order, SGD 0.025→0.001 wd 3e-4, "
               "Adam 3e-4 (wd 1e-3), λ_max every 2 epochs, window 5, δ 4, factor 1.3, from "
               "epoch 10" + (", wd ×10 up to 0.03" if _cls is DARTSADA else ""),
               REFERENCE),
        nb201=(f"{_name} in NAS-Bench-201 (not in the paper): the NB201 DARTS settings (50 "
               "epochs, N=5 × 16, first order) with the reference's stopping rule",
               {k: v for k, v in REFERENCE.items() if k not in ("channels", "layers", "order")}),
        cpu=(", first order", {"order": 1}),
    )
