"""Selection after the search (``--select``): a post-search phase of the loop that turns the
trained supernet into a genotype by other means than reading α, usable after any method built
on :class:`~diffnas.methods.base.SearchMethod`.

A selection runs ``epochs`` epochs after the search's (numbered on from them: the run folder's
metrics and checkpoint cover it like any epoch, with ``phase`` and ``select_epoch`` in every
record, and a run resumes exactly inside it). The loop calls ``begin()`` (fresh) or
``load_state_dict`` (resumed), then per epoch ``run_epoch(k, tune)`` (``tune()`` trains the
supernet one epoch with the method's own step and returns its stats), and reads the genotype
with the method's ``derive()``: a selection changes what the derivation sees through a
``restrict`` part it adds to the method (:class:`Projection`).

``pt``: DARTS-PT's perturbation-based selection (Wang, Cheng, Chen, Tang & Hsieh, "Rethinking
Architecture Selection in Differentiable NAS", ICLR 2021, Alg. 1 and 2; reference
ruocwang/darts-pt ``sota/cnn/projection.py``, ``nasbench201/projection.py``,
``sota/cnn/model_search_darts_proj.py``). Every ``proj_intv`` epochs one decision: per cell kind
(normal, then reduce) a random undecided edge; for each of its ops the validation accuracy of
the supernet with that op's weight set to 0 (BN on batch statistics, as the reference's
``infer(_eval=False)``); the op whose removal lowers accuracy most (``pt_crit=loss``: raises the
loss most) is kept, the edge becomes one-hot on it. After every edge (DARTS space) the topology
step: per kind a random node with more than two inputs; repeatedly drop the incoming edge whose
removal leaves the highest accuracy until two remain. Between decisions the supernet is
fine-tuned by the method's own step (its α step too, on undecided edges; none with
``fix_alpha``) with a new SGD (momentum and weight decay of the search) at the constant lr
``w_lr``/10 (reference ``reset_optimizer(learning_rate / 10)``; ``sota/cnn/projection.py``
builds a ``CosineAnnealingLR`` but never steps it, ``nasbench201/projection.py`` has none).
The phase has ``proj_intv · (decisions − 1) + 1`` epochs, a decision at every
``proj_intv``-th (``sota/cnn/projection.py``).

Deviations (one line each):
- NAS-Bench-201: the reference's phase has ``proj_intv · (edges − 1)`` epochs with the last
  decision at its last epoch (one tuning epoch early); we use the DARTS-space schedule in both.
- a stochastic weighting (GDAS, DrNAS) is evaluated with its deterministic weights in the
  decisions (the reference's DARTS/SDARTS supernets use softmax(α) there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchAugment, BatchStream
from ..errors import DiffnasError, unknown
from ..methods.base import SearchMethod
from ..methods.parts import Part

TuneFn = Callable[[], dict[str, float]]


class Projection(Part):
    """The decisions so far as a ``restrict`` part: decided edges one-hot on their op, edges the
    topology step dropped all zero; ``trial`` zeroes one more op or edge for an evaluation."""

    slot = "regularisers"
    name = "projection"

    def __init__(self, method: SearchMethod) -> None:
        super().__init__(method, {})
        self.op: dict[str, dict[int, int]] = {k: {} for k in method.net.kinds}  # edge -> op
        self.dropped: dict[str, set[int]] = {k: set() for k in method.net.kinds}
        self.trial: tuple[str, int, int | None] | None = None  # (kind, edge, op or None: edge)

    def restrict(self, kind: str, weights: torch.Tensor) -> torch.Tensor:
        if not self.op[kind] and not self.dropped[kind] and self.trial is None:
            return weights
        w = weights.clone()
        for e, o in self.op[kind].items():
            w[e] = F.one_hot(torch.tensor(o), w.shape[1]).to(w)
        for e in self.dropped[kind]:
            w[e] = 0
        if self.trial is not None and self.trial[0] == kind:
            _, e, o = self.trial
            if o is None:
                w[e] = 0
            else:
                w[e, o] = 0
        return w

    def state_dict(self) -> dict[str, Any]:
        return {"op": {k: [[e, o] for e, o in v.items()] for k, v in self.op.items()},
                "dropped": {k: sorted(v) for k, v in self.dropped.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.op = {k: {int(e): int(o) for e, o in v} for k, v in state["op"].items()}
        self.dropped = {k: {int(e) for e in v} for k, v in state["dropped"].items()}


class Selection:
    """A post-search phase (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    epochs: int = 0

    def begin(self) -> None:
        """Set up a fresh phase (not called when resuming)."""

    def run_epoch(self, k: int, tune: TuneFn) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PerturbationSelection(Selection):
    """DARTS-PT (``--select pt``)."""

    name = "pt"

    def __init__(self, method: SearchMethod, evaluation: BatchStream, aug: BatchAugment) -> None:
        own = type(method)
        if (own.edge_policy is not SearchMethod.edge_policy
                or own.alpha_weights is not SearchMethod.alpha_weights
                or not isinstance(getattr(method, "regularisers", None), list)):
            raise DiffnasError(f"--select pt needs a method whose op weights come from its "
                               f"parts; {method.name!r} has its own edge policy")
        self.method, self.net, self.evaluation, self.aug = method, method.net, evaluation, aug
        self.interval = int(method.opts["proj_intv"])
        self.crit = str(method.opts["pt_crit"])
        if self.interval < 1 or self.crit not in ("acc", "loss"):
            raise DiffnasError(f"--select pt needs proj_intv >= 1 and pt_crit acc or loss, got "
                               f"{self.interval} and {self.crit!r}")
        self.projection = Projection(method)
        method.regularisers.append(self.projection)  # last: after pruning and perturbations
        kind = self.net.kinds[0]
        self.n_edges = len(self.net.edge_index[kind])
        # nodes choosing 2 of more inputs (DARTS spaces; none in NAS-Bench-201 or the mbconv
        # chain, which keep every edge)
        inputs: dict[int, list[int]] = {}
        for e, (_, dst) in enumerate(self.net.edge_index[kind]):
            inputs.setdefault(dst, []).append(e)
        topology = self.net.space.startswith("darts")
        self.nodes = [es for es in inputs.values() if len(es) > 2] if topology else []
        self.decisions = self.n_edges + len(self.nodes)
        self.epochs = self.interval * (self.decisions - 1) + 1
        self.nodes_done: dict[str, set[int]] = {k: set() for k in self.net.kinds}
        cfg = method.cfg
        self.opt = torch.optim.SGD(method.w_params, lr=cfg.w_lr / 10, momentum=cfg.w_momentum,
                                   weight_decay=cfg.w_weight_decay)
        method.w_opt = self.opt  # the method's weight step now uses the fine-tuning optimiser

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, trial: tuple[str, int, int | None]) -> float:
        """Validation accuracy (or loss) with ``trial`` removed; BN on batch statistics."""
        self.projection.trial = trial
        net = self.net
        net.eval()  # deterministic op weights ...
        for m in net.modules():  # ... and BN on the batch's statistics (reference _eval=False)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        correct = loss = 0.0
        n = 0
        try:
            for x, y in self.evaluation.epoch(0):
                logits = net(self.aug(x, train=False))
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
                n += len(y)
        finally:
            self.projection.trial = None
            net.train()
        n = max(n, 1)
        return correct / n if self.crit == "acc" else loss / n

    def hurts_more(self, a: float, b: float) -> bool:
        """Removal score ``a`` is worse for the supernet than ``b``."""
        return a < b if self.crit == "acc" else a > b

    # -- decisions -------------------------------------------------------------------------------
    def decide_op(self, kind: str) -> dict[str, Any]:
        undecided = [e for e in range(self.n_edges) if e not in self.projection.op[kind]]
        e = undecided[int(torch.randint(len(undecided), ()))]
        best, best_score = 0, None
        for o in range(len(self.net.op_names)):  # projection.py project_op
            s = self.score((kind, e, o))
            if best_score is None or self.hurts_more(s, best_score):
                best, best_score = o, s
        self.projection.op[kind][e] = best
        return {"kind": kind, "edge": e, "op": self.net.op_names[best], "score": best_score}

    def decide_edges(self, kind: str) -> dict[str, Any]:
        todo = [i for i in range(len(self.nodes)) if i not in self.nodes_done[kind]]
        node = todo[int(torch.randint(len(todo), ()))]
        edges = list(self.nodes[node])
        while len(edges) > 2:  # projection.py project_edge: drop the least harmful edge
            drop, drop_score = None, None
            for e in edges:
                s = self.score((kind, e, None))
                if drop_score is None or not self.hurts_more(s, drop_score):
                    drop, drop_score = e, s
            edges.remove(drop)
        self.projection.dropped[kind].update(set(self.nodes[node]) - set(edges))
        self.nodes_done[kind].add(node)
        return {"kind": kind, "node": node, "kept_edges": edges}

    def run_epoch(self, k: int, tune: TuneFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if k % self.interval == 0:
            d = k // self.interval
            step = self.decide_op if d < self.n_edges else self.decide_edges
            out["pt_decision"] = [step(kind) for kind in self.net.kinds]
        out["train"] = tune()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"projection": self.projection.state_dict(), "opt": self.opt.state_dict(),
                "nodes_done": {k: sorted(v) for k, v in self.nodes_done.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projection.load_state_dict(state["projection"])
        self.opt.load_state_dict(state["opt"])
        self.nodes_done = {k: {int(i) for i in v} for k, v in state["nodes_done"].items()}


SELECTIONS: dict[str, type[PerturbationSelection]] = {"pt": PerturbationSelection}


def build_selection(name: str, method: SearchMethod, evaluation: BatchStream,
                    aug: BatchAugment) -> Selection:
    """The post-search phase ``name`` on the search's final method and supernet."""
    if name not in SELECTIONS:
        raise unknown("selection (--select)", name, SELECTIONS)
    return SELECTIONS[name](method, evaluation, aug)


def register_pt_presets() -> None:
    """``darts-pt`` (DARTS then PT), ``darts-pt-fixalpha`` (a supernet with α never trained,
    then PT, the reference's ``blank`` method), each as ``-cifar10`` in the DARTS space (the
    reference's ``sota/cnn/train_search.py`` defaults: 50 epochs, 8 cells × 16, batch 64, SGD
    0.025 → 0.001, α Adam 3e-4, decay 1e-3; ``--proj_intv 5``), ``-nb201-cifar10`` (its
    ``nasbench201/train_search.py``: 100 epochs), and on the ``cpu`` / ``nb201-cpu`` presets
    (PT every epoch: ``proj_intv`` 1)."""
    from ..config import PRESETS, register_preset

    for name, fix in (("darts-pt", False), ("darts-pt-fixalpha", True)):
        args = {"proj_intv": 5, **({"fix_alpha": True} if fix else {})}
        what = ("a supernet with uniform α (never trained)" if fix else "a DARTS search")
        ref = dict(method="darts", select="pt", batch_size=64, channels=16, w_lr=0.025,
                   w_lr_min=0.001, a_lr=3e-4, a_weight_decay=1e-3, dataset="cifar10",
                   crop_padding=4, flip=True)
        register_preset(f"{name}-cifar10", f"DARTS-PT (ruocwang/darts-pt exp_scripts): {what}, "
                        "then perturbation-based selection, DARTS space, 50 epochs, 8 cells",
                        **ref, space="darts", epochs=50, layers=8, method_args=args)
        register_preset(f"{name}-nb201-cifar10", f"DARTS-PT (ruocwang/darts-pt exp_scripts): "
                        f"{what}, then PT, NAS-Bench-201, 100 epochs",
                        **ref, space="nb201", epochs=100, layers=5, method_args=args)
        for base in ("cpu", "nb201-cpu"):
            register_preset(f"{name}-{base}", f"{name} on the {base} preset, proj_intv 1",
                            **{**PRESETS[base].values, "method": "darts", "select": "pt",
                               "method_args": {**args, "proj_intv": 1}})
    alias = PRESETS["darts-pt-fixalpha-cifar10"]
    register_preset("darts-pt-fixalpha", alias.description, **alias.values)
