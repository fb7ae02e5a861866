"""Early stopping parts: RobustDARTS' eigenvalue rule (DARTS-ES), its adaptive
regularisation with rollback (DARTS-ADA), DARTS+; the collapse-to-`none` indicators."""

from __future__ import annotations

import json

import pytest
import torch

import diffnas.engine.search as search_module
from diffnas.engine.search import build_search, result_line, search
from diffnas.methods import METHODS
from diffnas.methods.robustdarts import EigenvalueTracker
from diffnas.spaces import NB201Genotype, genotype_from_dict
from diffnas.spaces.nb201 import connected, none_count

CPU = torch.device("cpu")


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


# ------------------------------------------------------------------ the reference's stop rule
def test_tracker_stops_twelve_epochs_back_on_the_reference_settings():
    """window 5, every 2 epochs, δ 4, factor 1.3, from epoch 10 (the RobustDARTS scripts): a
    jump of λ_max from 1 to 3 at epoch 22 fires at once (local average 1.4 vs 1), and the stop
    epoch is 22 − 2·(2 + 4) = 10."""
    t = EigenvalueTracker(window=5, every=2, epochs=50)
    fired = []
    for epoch in range(0, 40, 2):
        t.update(epoch, 1.0 if epoch <= 20 else 3.0, {"epoch": epoch})
        stop = t.check(epoch, 1.3, 10, 4)
        if stop is not None:
            fired.append((epoch, stop))
    assert fired[0] == (22, 10)
    assert t.genotypes[10] == {"epoch": 10}


def test_tracker_waits_for_the_start_epoch():
    t = EigenvalueTracker(window=5, every=2, epochs=50)
    for epoch in range(0, 22, 2):  # grows 2× per evaluation from the start: no decision yet
        t.update(epoch, 2.0 ** epoch, {})
        assert t.check(epoch, 1.3, 10, 4) is None
    t.update(22, 2.0 ** 22, {})
    assert t.check(22, 1.3, 10, 4) == 10


def fake_eigenvalues(monkeypatch, series):
    """λ_max by the method's epoch: ``series[epoch]`` (the loop's measurement replaced)."""
    monkeypatch.setattr(search_module, "method_hessian_eig",
                        lambda method, stream, aug: series[method.epoch])


# window 3 every epoch δ 2 from epoch 0: λ_max 1 until epoch 3 and 10 from epoch 4 fires at
# epoch 4 (local averages 1, 1, 1, 4) with the stop epoch 4 − 1·(1 + 2) = 1
FAST = {"es_window": 3, "es_every": 1, "es_delta": 2, "es_start_epoch": 0}
SERIES = [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_darts_es_stops_and_returns_the_stop_epochs_genotype(tiny_cfg, tmp_path, monkeypatch,
                                                             space):
    fake_eigenvalues(monkeypatch, SERIES)
    cfg = tiny_cfg(method="darts-es", space=space, subset=64, epochs=6, method_args=FAST)
    result = search(cfg, out=tmp_path / "es", progress=False)
    recs = records(tmp_path / "es")
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 4]  # stopped after epoch 4
    assert recs[-1]["early_stop"]["epoch"] == 1
    assert result.genotype == genotype_from_dict(recs[1]["genotype"])
    saved = json.loads((tmp_path / "es/genotype.json").read_text())
    assert genotype_from_dict(saved) == result.genotype
    summary = json.loads((tmp_path / "es/result.json").read_text())
    assert summary["early_stop"]["epoch"] == 1
    assert "epoch 2" in (tmp_path / "es/log.txt").read_text().splitlines()[-1]  # 1-based
    # a resumed stopped run stays stopped, with the same result
    again = search(cfg, out=tmp_path / "es", resume=True, progress=False)
    assert again.genotype == result.genotype and len(records(tmp_path / "es")) == 5


def test_darts_es_resume_before_the_stop_is_exact(tiny_cfg, tmp_path, monkeypatch,
                                                  interrupted_search, assert_same_run):
    fake_eigenvalues(monkeypatch, SERIES)
    cfg = tiny_cfg(method="darts-es", space="nb201", subset=64, epochs=6, method_args=FAST)
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", METHODS["darts-es"], at=3)
    fake_eigenvalues(monkeypatch, SERIES)  # the fixture's undo removed it
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


ADA = {**FAST, "es_mode": "ada"}


def test_darts_ada_rolls_back_and_raises_the_weight_decay(tiny_cfg, tmp_path, monkeypatch):
    fake_eigenvalues(monkeypatch, SERIES)
    cfg = tiny_cfg(method="darts-ada", space="nb201", subset=64, epochs=6, method_args=ADA)
    search(cfg, out=tmp_path / "ada", progress=False)
    recs = records(tmp_path / "ada")
    # epoch 4 fires twice (3e-4 → 3e-3 → 3e-2), each time back to the end of epoch 1; at 0.03
    # = ada_max_weight_decay it adapts no more and runs to the end
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 5]
    rolls = [r["ada_rollback"] for r in recs if "ada_rollback" in r]
    assert [(r["from_epoch"], r["to_epoch"]) for r in rolls] == [(4, 1), (4, 1)]
    assert [r["weight_decay"] for r in rolls] == pytest.approx([3e-3, 3e-2])
    ckpt = torch.load(tmp_path / "ada/checkpoint.pt", weights_only=True)
    assert ckpt["method"]["w_opt"]["param_groups"][0]["weight_decay"] == pytest.approx(3e-2)
    # the first re-run of epoch 2 starts from epoch 1's end state: its first-pass record and
    # the re-run differ only through the larger weight decay, so the lr schedule is the same
    assert recs[5]["lr"] == recs[2]["lr"]


def test_ada_rollback_restores_the_snapshot_exactly(tiny_cfg):
    net, objective, method = build_search(tiny_cfg(method="darts-ada", space="nb201"),
                                          1, 8, 10, 4, CPU)
    part = method.early_stop[0]
    method.epoch = 3
    part._snapshot(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    part._restore(3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_darts_ada_resume_after_a_rollback_is_exact(tiny_cfg, tmp_path, monkeypatch,
                                                    interrupted_search, assert_same_run):
    fake_eigenvalues(monkeypatch, SERIES)
    cfg = tiny_cfg(method="darts-ada", space="nb201", subset=64, epochs=6, method_args=ADA)
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", METHODS["darts-ada"], at=5)
    fake_eigenvalues(monkeypatch, SERIES)
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("method", ["darts-es", "darts-ada"])
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_robustdarts_methods_end_to_end_measure_the_eigenvalue(tiny_cfg, tmp_path, method,
                                                               space):
    cfg = tiny_cfg(method=method, space=space, subset=32, epochs=2, batch_size=8)
    result = search(cfg, out=tmp_path / "run", progress=False)
    recs = records(tmp_path / "run")
    assert [r["epoch"] for r in recs if "hessian_eig" in r] == [0, 1]  # every 2 and the last
    assert all(torch.isfinite(torch.tensor(r["hessian_eig"])) for r in recs if "hessian_eig" in r)
    assert result.genotype == genotype_from_dict(recs[-1]["genotype"])


# -------------------------------------------------------------------------------- DARTS+
def test_dartsplus_stops_at_two_skips_in_the_normal_cell(tiny_cfg):
    net, _, method = build_search(tiny_cfg(method="darts", space="darts",
                                           method_args={"early_stop": "dartsplus"}),
                                  1, 8, 10, 4, CPU)
    skip = net.op_names.index("skip_connect")
    conv = net.op_names.index("sep_conv_3x3")
    with torch.no_grad():
        net.alphas["normal"].zero_()
        net.alphas["normal"][:, conv] = 1.0
        net.alphas["reduce"][:, skip] = 5.0  # skips in the reduction cell do not count
        net.alphas["normal"][0, skip] = 2.0  # edge 0→node 0: one skip
    method.epoch = 0
    method.end_epoch({"genotype": method.derive().to_dict()})
    assert method.stopped is None
    with torch.no_grad():
        net.alphas["normal"][2, skip] = 2.0  # a second one (node 1's first edge)
    method.epoch = 1
    g = method.derive()
    assert sum(o == "skip_connect" for o, _ in g.normal) == 2
    method.end_epoch({"genotype": g.to_dict()})
    assert method.stopped["epoch"] == 1 and "criterion 1" in method.stopped["reason"]


def test_dartsplus_stops_when_the_learnable_ranking_is_stable(tiny_cfg):
    net, _, method = build_search(
        tiny_cfg(method="darts", space="nb201",
                 method_args={"early_stop": "dartsplus", "dartsplus_stable_epochs": 3}),
        1, 8, 10, 4, CPU)
    c1, c3 = net.op_names.index("nor_conv_1x1"), net.op_names.index("nor_conv_3x3")
    with torch.no_grad():
        net.alphas["cell"].zero_()
        net.alphas["cell"][:, c3] = 1.0
    for epoch in range(3):  # ranking set at 0, unchanged at 1 and 2: stable for 2 epochs
        method.epoch = epoch
        method.end_epoch({"genotype": method.derive().to_dict()})
        with torch.no_grad():  # a parameter-free op moving does not change the ranking
            net.alphas["cell"][:, net.op_names.index("avg_pool_3x3")] += 0.1
    assert method.stopped is None
    with torch.no_grad():  # the learnable ranking flips on one edge: the count restarts
        net.alphas["cell"][0, c1] = 2.0
    for epoch in range(3, 6):
        method.epoch = epoch
        method.end_epoch({"genotype": method.derive().to_dict()})
        assert method.stopped is None
    method.epoch = 6
    method.end_epoch({"genotype": method.derive().to_dict()})
    assert method.stopped["epoch"] == 6 and "ranking" in method.stopped["reason"]


def test_dartsplus_is_an_option_of_any_method_end_to_end(tiny_cfg, tmp_path):
    # α frozen (lr 0): the ranking is stable from epoch 1, so the search stops there
    cfg = tiny_cfg(method="gdas", space="nb201", subset=64, epochs=4, a_lr=0.0,
                   method_args={"early_stop": "dartsplus", "dartsplus_skips": 0,
                                "dartsplus_stable_epochs": 1})
    result = search(cfg, out=tmp_path / "run", progress=False)
    recs = records(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [0, 1]
    assert result.genotype == genotype_from_dict(recs[1]["genotype"])


# ------------------------------------------------------------------ collapse to `none`
def test_none_count_and_connectivity_of_hand_built_cells():
    # edges (0→1), (0→2), (1→2), (0→3), (1→3), (2→3)
    cut = NB201Genotype(("skip_connect", "nor_conv_3x3", "none", "none", "none", "none"))
    assert none_count(cut) == 4 and not connected(cut)
    one_path = NB201Genotype(("none", "nor_conv_3x3", "none", "none", "none", "skip_connect"))
    assert none_count(one_path) == 4 and connected(one_path)  # 0→2→3
    direct = NB201Genotype(("none",) * 3 + ("avg_pool_3x3",) + ("none",) * 2)
    assert connected(direct)
    assert not connected(NB201Genotype(("none",) * 6))
    darts = genotype_from_dict({"space": "darts", "normal": [["skip_connect", 0]] * 8,
                                "normal_concat": [2, 3, 4, 5],
                                "reduce": [["max_pool_3x3", 1]] * 8,
                                "reduce_concat": [2, 3, 4, 5]})
    assert none_count(darts) == 0 and connected(darts)
    assert "no input→output path" in result_line(cut, None)
    assert result_line(one_path, None) == ""


def test_every_epoch_records_none_count_and_connectivity(tiny_cfg, tmp_path):
    result = search(tiny_cfg(space="nb201", subset=64, epochs=1), out=tmp_path / "r",
                    progress=False)
    rec = records(tmp_path / "r")[0]
    assert rec["none_count"] == none_count(result.genotype)
    assert rec["connected"] == connected(result.genotype)
    summary = json.loads((tmp_path / "r/result.json").read_text())
    assert summary["connected"] == rec["connected"]


# ------------------------------------------------------------------- R-DARTS(DP) drop-path
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_drop_path_part_drops_whole_samples_on_a_linear_schedule(tiny_cfg, space):
    net, _, method = build_search(
        tiny_cfg(method="darts", space=space, epochs=5,
                 method_args={"regularisers": "drop_path", "drop_path_prob": 0.6}),
        1, 8, 10, 4, CPU)
    part = method.regularisers[0]
    assert [part.rate(e) for e in range(5)] == pytest.approx([0.0, 0.15, 0.3, 0.45, 0.6])
    method.begin_epoch(4)
    edge = net.mixed_edges()[0]
    assert edge.drop_path == pytest.approx(0.6)
    x = torch.randn(64, edge.c, 4, 4)
    w = torch.full((len(edge.op_names),), 1.0 / len(edge.op_names))
    active = [i for i, o in enumerate(edge.op_names) if o != "none"]
    edge.eval()
    clean = edge(x, w, active)
    saved = {k: v.clone() for k, v in edge.state_dict().items()}
    edge.train()
    torch.manual_seed(0)
    out = edge(x, w, active)
    edge.load_state_dict(saved)  # the BN statistics the training forward moved
    zero = (out.flatten(1).abs().sum(1) == 0)
    assert 0 < int(zero.sum()) < 64  # whole samples dropped, some kept
    edge.eval()
    assert torch.equal(edge(x, w, active), clean)  # evaluation is untouched
