"""DARTS-PT's perturbation-based selection (``--select pt``), a post-search phase."""

import pytest
import torch
from torch import nn

from diffnas.config import resolve_config
from diffnas.data import BatchAugment, BatchStream
from diffnas.engine.search import search
from diffnas.engine.select import PerturbationSelection
from diffnas.methods.darts import DARTS
from diffnas.objectives import build_objective
from diffnas.spaces.base import Supernet

N_CLASSES = 4


class HandBuilt(Supernet):
    """Two edges of three ops; the logits are the label's one-hot times the weight of op 1 on
    edge 0, plus fixed noise from every other (edge, op): op 1 of edge 0 is the one that
    matters, the others only add noise."""

    space = "nb201"  # no topology step

    def __init__(self) -> None:
        super().__init__()
        self.op_names = ("none", "skip_connect", "nor_conv_1x1")
        self.edge_index = {"cell": [(0, 1), (0, 1)]}
        self._init_alphas(("cell",), 2)
        self.gain = nn.Parameter(torch.ones(()))  # something for the fine-tuning to train
        self.register_buffer("noise", torch.randn(2, 3, N_CLASSES, N_CLASSES) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.edge_weights()["cell"].weights
        onehot = x.flatten(1)
        out = self.gain * w[0, 1] * onehot
        for e in range(2):
            for o in range(3):
                if (e, o) != (0, 1):
                    out = out + w[e, o] * onehot @ self.noise[e, o]
        return out


def _selection(proj_intv=2):
    y = torch.arange(64) % N_CLASSES
    x = nn.functional.one_hot(y, N_CLASSES).to(torch.uint8)[:, :, None, None] * 255
    net = HandBuilt()
    cfg = resolve_config(None, device="cpu", w_lr=0.1, w_lr_min=0.0,
                         method_args={"proj_intv": proj_intv})
    method = DARTS(cfg, net, build_objective("ce", net, N_CLASSES, 1, {}), 4)
    stream = BatchStream(x, y, None, 32, seed=0, drop_last=False)
    aug = BatchAugment((0.0,) * N_CLASSES, (1.0,) * N_CLASSES, crop_padding=0, flip=False)
    return PerturbationSelection(method, stream, aug), method


def test_pt_keeps_the_op_that_matters_and_fine_tunes_between_decisions():
    torch.manual_seed(0)
    sel, method = _selection(proj_intv=2)
    assert sel.decisions == 2 and sel.epochs == 3  # proj_intv · (decisions − 1) + 1
    events = []

    def tune():
        events.append(("tune", sel.opt.param_groups[0]["lr"]))
        return {}

    decide = sel.decide_op

    def spy(kind):
        events.append(("decide", kind))
        return decide(kind)

    sel.decide_op = spy
    for k in range(sel.epochs):
        sel.run_epoch(k, tune)
    assert sel.projection.op["cell"][0] == 1  # removing edge 0's skip ruins accuracy: kept
    assert sorted(sel.projection.op["cell"]) == [0, 1]
    # a decision at epochs 0 and 2, the supernet fine-tuned after each epoch's decision
    assert [e[0] for e in events] == ["decide", "tune", "tune", "decide", "tune"]
    lrs = [lr for kind, lr in events if kind == "tune"]
    assert lrs == pytest.approx([0.1 / 10] * 3)  # the reference's constant lr/10
    # the decided edges are one-hot in the method's weights (forward and derivation)
    w = method.alpha_weights()["cell"]
    assert w[0].tolist() == [0.0, 1.0, 0.0]


def test_pt_decisions_use_the_fine_tuned_supernet():
    torch.manual_seed(0)
    sel, method = _selection(proj_intv=1)
    calls = []
    original = sel.score

    def spy(trial):
        calls.append(float(method.net.gain.detach()))
        return original(trial)

    sel.score = spy

    def tune():
        with torch.no_grad():
            method.net.gain.add_(1.0)
        return {}

    for k in range(sel.epochs):
        sel.run_epoch(k, tune)
    assert calls[:3] == [1.0] * 3 and calls[3:] == [2.0] * 3  # 3 ops per decision


def _pt_cfg(tiny_cfg, space, **args):
    return tiny_cfg(method="darts", space=space, epochs=1, layers=1, subset=32, select="pt",
                    method_args={"proj_intv": 1, **args})


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_pt_end_to_end(tiny_cfg, tmp_path, space):
    result = search(_pt_cfg(tiny_cfg, space), out=tmp_path / space, progress=False)
    select = [r for r in result.history if r.get("phase") == "select-pt"]
    n_edges = 14 if space == "darts" else 6
    decisions = n_edges + (3 if space == "darts" else 0)
    assert len(select) == decisions  # proj_intv 1: a decision every epoch
    assert [r["epoch"] for r in select] == list(range(1, 1 + decisions))
    assert all("pt_decision" in r and "train_loss" in r for r in select)
    if space == "darts":  # every node of the final cells has two inputs, each edge one op
        assert len(result.genotype.normal) == 8
        edges = [d for r in select for d in r["pt_decision"] if "kept_edges" in d]
        assert len(edges) == 6 and all(len(d["kept_edges"]) == 2 for d in edges)
    else:
        decided = [d["op"] for r in select for d in r["pt_decision"]]
        assert len(decided) == 6


def test_pt_resumes_exactly_inside_the_selection(tiny_cfg, tmp_path, assert_same_run,
                                                 monkeypatch):
    cfg = _pt_cfg(tiny_cfg, "nb201")
    search(cfg, out=tmp_path / "full", progress=False)
    original = PerturbationSelection.run_epoch

    def interrupted(self, k, tune):
        if k == 3:
            raise KeyboardInterrupt
        return original(self, k, tune)

    monkeypatch.setattr(PerturbationSelection, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(cfg, out=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 3
    search(cfg, out=tmp_path / "cut", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_fix_alpha_keeps_alpha_uniform_through_search_and_pt(tiny_cfg, tmp_path):
    cfg = resolve_config("darts-pt-fixalpha-nb201-cpu", dataset="digits", subset=64, epochs=1,
                         batch_size=16, channels=4, layers=1, crop_padding=1, device="cpu")
    assert cfg.select == "pt" and cfg.method_args["fix_alpha"] is True
    result = search(cfg, out=tmp_path / "fix", progress=False)
    state = torch.load(tmp_path / "fix" / "checkpoint.pt", weights_only=True)
    first = result.history[0]["alpha"]["cell"]
    assert all(max(row) - min(row) < 1e-2 for row in first)  # softmax of α ≈ 1e-3·randn
    assert torch.equal(state["model"]["alphas.cell"],
                       _initial_alpha(cfg))  # never updated, in the search or in PT


def _initial_alpha(cfg):
    from diffnas.engine.search import build_search

    net = build_search(cfg, 1, 8, 10, 1, torch.device("cpu"))[0]
    return net.alphas["cell"].detach()


def test_sdarts_rs_with_pt(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="sdarts-rs", space="nb201", epochs=1, layers=1, subset=64,
                   select="pt", method_args={"proj_intv": 1})
    result = search(cfg, out=tmp_path / "s", progress=False)
    assert sum(r.get("phase") == "select-pt" for r in result.history) == 6
