"""Search stages (a generic phase of the loop) and P-DARTS built on them."""

import json

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.engine.search import build_search, search
from diffnas.methods import METHODS
from diffnas.methods.darts import DARTS
from diffnas.methods.pdarts import PDARTS, limit_skips
from diffnas.spaces import DartsGenotype, build_supernet
from diffnas.spaces.darts import derive_cell
from diffnas.spaces.ops import Zero

CARRIED: list[tuple[torch.Tensor, torch.Tensor]] = []


class TwoStages(DARTS):
    """A test method: stage 2 has one more cell and keeps α (what it declares to carry)."""

    name = "two-stages-test"

    @classmethod
    def stage_epochs(cls, cfg):
        return [1, cfg.epochs - 1]

    def next_stage(self, stage):
        return {"layers": self.cfg.layers + 1}

    def carry_over(self, previous):
        with torch.no_grad():
            for k, a in self.net.alphas.items():
                a.copy_(previous.net.alphas[k])
        CARRIED.append((previous.net.alphas["normal"].detach().clone(),
                        self.net.alphas["normal"].detach().clone()))


def test_stage_rebuild_carries_declared_state(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, TwoStages.name, TwoStages)
    CARRIED.clear()
    seen = []
    original = TwoStages.begin_epoch

    def spy(self, epoch):
        seen.append((self.stage, epoch, len(self.net.cells), self.net.alphas["normal"].clone()))
        original(self, epoch)

    monkeypatch.setattr(TwoStages, "begin_epoch", spy)
    result = search(tiny_cfg(method=TwoStages.name, epochs=3, layers=2), out=tmp_path / "r",
                    progress=False)
    assert [r["stage"] for r in result.history] == [0, 1, 1]
    # stage 2 starts at its own epoch 0 on a new supernet with one more cell, α carried
    assert [(s, e, n) for s, e, n, _ in seen] == [(0, 0, 2), (1, 0, 3), (1, 1, 3)]
    (before, after), = CARRIED
    assert torch.equal(before, after) and torch.equal(seen[1][3], before)
    stages = json.loads((tmp_path / "r" / "stages.json").read_text())
    assert [(s["stage"], s["first_epoch"], s["epochs"]) for s in stages] == [(0, 0, 1), (1, 1, 2)]
    assert "stage 2/2 from epoch 2: 3 cells" in (tmp_path / "r" / "log.txt").read_text()


def _pdarts(space="darts", **args):
    cfg = resolve_config(None, method="pdarts", space=space, channels=4, layers=3,
                         device="cpu", epochs=3, method_args=args)
    return build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))[2]


def test_op_pruning_keeps_the_strongest_ops():
    m = _pdarts()
    with torch.no_grad():
        for a in m.net.alphas.values():
            a.copy_(torch.randn_like(a))
    spec = m.next_stage(1)
    assert spec["layers"] == 3 + 6
    for kind, rows in spec["supernet"]["edge_ops"].items():
        a = m.net.alphas[kind]
        for e, ops in enumerate(rows):
            assert ops == sorted(a[e].topk(5).indices.tolist())
    # the stage-2 supernet builds only those ops; the weights are the softmax over them
    net = build_supernet("darts", 4, 3, 10, 1, **spec["supernet"])
    kept = spec["supernet"]["edge_ops"]["normal"][0]
    edge = net.cells[0].edges[0]
    assert all(isinstance(op, Zero) == (i not in kept) for i, op in enumerate(edge.ops))
    m2 = DARTS(resolve_config(None, device="cpu", channels=4, layers=3), net,
               m.objective, 4)
    w = m2.alpha_weights()["normal"][0]
    a = net.alphas["normal"][0].detach()
    assert torch.allclose(w[kept], torch.softmax(a[kept], 0)) and w.sum() == pytest.approx(1)
    assert set(net.useful_ops("normal")[0]) == set(kept) - {net.op_names.index("none")}
    # stage 3 keeps 3 of the 5
    pd = PDARTS(resolve_config(None, method="pdarts", device="cpu", channels=4, layers=9,
                               epochs=3), net, m.objective, 4)
    pd.stage = 1
    rows = pd.next_stage(2)["supernet"]["edge_ops"]["normal"]
    w = pd.alpha_weights()["normal"]
    assert rows[0] == sorted(sorted(kept, key=lambda o: float(w[0, o]))[2:])


def test_skip_limit_removes_the_weakest_skips():
    names = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    w = torch.full((14, 8), 0.05)
    w[:, 3] = torch.linspace(0.9, 0.5, 14)  # skip strongest everywhere, weaker on later edges
    w[:, 4] = 0.3
    g = DartsGenotype(normal=derive_cell(w, names), normal_concat=(2, 3, 4, 5),
                      reduce=derive_cell(w, names), reduce_concat=(2, 3, 4, 5))
    assert g.count({"skip_connect"}) == 16
    out = limit_skips(g, w, None, names, 2)
    skips = [i for i, (op, _) in enumerate(out.normal) if op == "skip_connect"]
    assert len(skips) == 2 and skips == [0, 1]  # node 0's edges have the largest skip weights
    assert out.reduce == g.reduce  # normal cell only
    assert limit_skips(g, w, None, names, 8).normal == g.normal


def test_skip_dropout_schedule():
    m = _pdarts(arch_warmup_epochs=2)
    m.stage = 1
    m.begin_epoch(0)
    assert m.skip_dropout == pytest.approx(0.4 * (3 - 0 - 1) / 3)
    m.begin_epoch(2)
    assert m.skip_dropout == pytest.approx(0.4)
    assert all(e.skip_dropout == pytest.approx(0.4) for e in m.net.mixed_edges())


def test_pdarts_resumes_exactly_inside_stage_two(tiny_cfg, tmp_path, interrupted_search,
                                                 assert_same_run):
    cfg = tiny_cfg(method="pdarts", epochs=5, layers=2, subset=96,
                   method_args={"add_layers": "0,1,2", "arch_warmup_epochs": 1})
    assert PDARTS.stage_epochs(cfg) == [1, 2, 2]
    search(cfg, out=tmp_path / "full", progress=False)
    # stage 2 (index 1) covers epochs 1-2; its local epoch 1 is global epoch 2
    interrupted_search(cfg, tmp_path / "cut", PDARTS, at=1)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["stages"]) == 2
    search(cfg, out=tmp_path / "cut", resume=True, progress=False)
    _, _, metrics = assert_same_run(tmp_path / "full", tmp_path / "cut")
    # cut at the stage switch: the checkpoint is stage 1's, the switch happens on resume
    original = PDARTS.step

    def cut(self, train, val):
        if self.stage == 1:
            raise KeyboardInterrupt
        return original(self, train, val)

    PDARTS.step = cut
    try:
        with pytest.raises(KeyboardInterrupt):
            search(cfg, out=tmp_path / "switch", progress=False)
    finally:
        PDARTS.step = original
    assert len(torch.load(tmp_path / "switch" / "checkpoint.pt", weights_only=True)["stages"]) == 1
    search(cfg, out=tmp_path / "switch", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "switch")
    assert [r["stage"] for r in metrics] == [0, 1, 1, 2, 2]
    spaces = [s["space"] for s in json.loads((tmp_path / "full" / "stages.json").read_text())]
    assert [s.get("layers") for s in spaces] == [None, 3, 4]
    assert {len(o) for o in spaces[2]["supernet"]["edge_ops"]["normal"]} == {3}


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_pdarts_end_to_end(tiny_cfg, tmp_path, space):
    args = {"arch_warmup_epochs": 0}
    if space == "nb201":
        args.update(num_to_keep="4,3,1", add_layers="0,0,0")
    else:
        args.update(add_layers="0,1,2")
    result = search(tiny_cfg(method="pdarts", space=space, epochs=3, layers=2, subset=96,
                             method_args=args), out=tmp_path / space, progress=False)
    assert [r["stage"] for r in result.history] == [0, 1, 2]
    assert [r["skip_dropout"] for r in result.history] == pytest.approx([0.1, 0.4, 0.7])
    if space == "darts":
        assert sum(op == "skip_connect" for op, _ in result.genotype.normal) <= 2
    # the final genotype uses only ops the last stage kept
    spaces = json.loads((tmp_path / space / "stages.json").read_text())
    assert len(spaces) == 3
    kept = spaces[2]["space"]["supernet"]["edge_ops"]
    assert {len(ops) for rows in kept.values() for ops in rows} == {3}
    if space == "nb201":
        names = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
        assert all(names.index(op) in kept["cell"][e] for e, op in enumerate(result.genotype.ops))


def test_pdarts_presets():
    for name in ("pdarts-cifar10", "pdarts-nb201-cifar10", "pdarts-cpu", "pdarts-nb201-cpu"):
        cfg = resolve_config(name)
        plan = PDARTS.stage_epochs(cfg)
        assert len(plan) == 3 and sum(plan) == cfg.epochs and max(plan) - min(plan) <= 1
    assert PDARTS.stage_epochs(resolve_config("pdarts-cifar10")) == [25, 25, 25]
    c = resolve_config("pdarts-cifar10")
    assert (c.batch_size, c.epochs, c.layers, c.a_lr, c.w_lr_min) == (96, 75, 5, 6e-4, 0.0)
