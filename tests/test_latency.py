"""Latency tables (diffnas latency) and the latency term of the α loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from diffnas.cli import main
from diffnas.engine.latency import build_table, entry_key, record_edges, supernet_for
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.methods import DARTS
from diffnas.objectives import Batch
from diffnas.objectives.latency import LatencyTable, LatencyTerm, genotype_ops
from diffnas.spaces import NB201Genotype, parse_genotype

FAST = dict(repeats=3, warmup=1, rounds=1, threads=1)


def hand_table(cfg, ms: dict[str, float], fixed: float = 1.0) -> dict:
    """A table for ``cfg``'s supernet with the latency ``ms[op]`` for op at every shape."""
    net = supernet_for(cfg, 1, 10, 8)
    edges = record_edges(net, torch.randn(2, 1, 8, 8))
    entries = {}
    for rec in edges:
        rec["ops"] = {}
        for op in net.op_names:
            if op == "none":
                rec["ops"][op] = None
                continue
            key = entry_key(op, rec["c_in"], rec["h"], rec["w"], rec["stride"], rec["c_in"])
            rec["ops"][op] = key
            entries[key] = {"op": op, "median_ms": ms[op], "iqr_ms": 0.0, "min_ms": ms[op] / 2}
    return {"format": "diffnas-latency-table", "version": 1, "space": net.space,
            "op_names": list(net.op_names), "kinds": {k: len(net.edge_index[k]) for k in net.kinds},
            "config": {"space": cfg.space, "channels": cfg.channels, "layers": cfg.layers,
                       "dataset": cfg.dataset, "in_channels": 1, "input_size": 8,
                       "num_classes": 10},
            "measure": {"runtime": "torch", "device": "cpu", "threads": 1, "batch": 1,
                        "repeats": 3, "warmup": 1},
            "entries": entries, "edges": edges, "fixed": {"ms": fixed, "min_ms": fixed / 2}}


NB201_MS = {"skip_connect": 0.01, "nor_conv_1x1": 0.2, "nor_conv_3x3": 1.0, "avg_pool_3x3": 0.05}


@pytest.mark.parametrize("space", ["darts", "nb201", "mbconv"])
def test_table_has_a_positive_entry_for_every_op_and_shape(tiny_cfg, space):
    cfg = tiny_cfg(space=space, layers=3 if space == "darts" else 1,
                   image_size=16 if space == "mbconv" else 8)
    table = build_table(cfg, **FAST)
    net = supernet_for(cfg, 1, 10, 8)
    cells = net.search_cells()
    assert len(table["edges"]) == sum(len(c.edges) for _, c in cells) == len(net.mixed_edges())
    shapes = set()
    for rec in table["edges"]:
        assert rec["kind"] == cells[rec["cell"]][0]
        for op in net.op_names:
            key = rec["ops"][op]
            if op == "none":  # never computed by a fixed network: 0 by definition
                assert key is None
                continue
            e = table["entries"][key]
            assert e["median_ms"] > 0 and e["iqr_ms"] >= 0 and e["runs"] == 3
            assert (e["op"], e["c_in"], e["h"], e["w"], e["stride"]) == (
                op, rec["c_in"], rec["h"], rec["w"], rec["stride"])
            shapes.add((rec["c_in"], rec["h"], rec["stride"]))
    assert len(shapes) >= 2  # the reductions change the shapes the ops see
    m = table["measure"]
    assert m["runtime"] == "torch" and m["threads"] == 1 and m["batch"] == 1
    assert m["machine"]["cpu_count"] >= 1 and m["torch"] == torch.__version__
    cheap, dear = table["fixed"]["references"]
    assert 0 <= cheap["ops_ms"] < dear["ops_ms"] and dear["measured_ms"] > 0
    assert table["fixed"]["ms"] == pytest.approx(cheap["measured_ms"] - cheap["ops_ms"])
    LatencyTable(table, "t")  # checks itself


def test_onnxruntime_times_an_exported_op(tmp_path):
    pytest.importorskip("onnxruntime")
    from diffnas.engine.latency import _Timer, time_callables
    from diffnas.spaces.ops import nb201_op

    timer = _Timer("onnxruntime", torch.device("cpu"), 1, tmp_path)
    assert timer.version().startswith("onnxruntime")
    fn = timer.prepare(nb201_op("nor_conv_3x3", 2, 1, True), torch.randn(1, 2, 4, 4))
    st = time_callables({"op": fn}, 4, 1, 2)["op"]
    assert st["runs"] == 4 and 0 < st["min_ms"] <= st["median_ms"]
    with pytest.raises(DiffnasError, match="--device cpu only"):
        _Timer("onnxruntime", torch.device("cuda"), 1, tmp_path)


def test_prediction_is_fixed_plus_ops_and_monotone(tiny_cfg):
    cfg = tiny_cfg(space="nb201", layers=1, image_size=8)
    net = supernet_for(cfg, 1, 10, 8)
    data = hand_table(cfg, NB201_MS, fixed=2.0)
    g = NB201Genotype(("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1",
                       "nor_conv_3x3"))
    cells = len(net.search_cells())
    base = LatencyTable(data, "t").predict(net, g)
    assert base == pytest.approx(2.0 + cells * (1.0 + 0.01 + 0.05 + 0.2 + 1.0))
    assert LatencyTable(data, "t").predict(net, g, "min_ms") == pytest.approx(base / 2)
    for op in NB201_MS:  # raising any op's entries never lowers the prediction
        bumped = copy.deepcopy(data)
        for e in bumped["entries"].values():
            if e["op"] == op:
                e["median_ms"] += 0.5
        uses = sum(o == op for o in g.ops) * cells
        assert LatencyTable(bumped, "t").predict(net, g) == pytest.approx(base + 0.5 * uses)
    # a DARTS genotype counts its 8 ops per cell (and never `none`)
    dcfg = tiny_cfg(space="darts", layers=2, image_size=8)
    dnet = supernet_for(dcfg, 1, 10, 8)
    dms = {op: 1.0 for op in dnet.op_names}
    dg = parse_genotype("DARTS_V2")
    assert LatencyTable(hand_table(dcfg, dms, 0.0), "t").predict(dnet, dg) == 8 * 2


def test_genotype_map_by_derivation_for_other_spaces(tiny_cfg, monkeypatch):
    import diffnas.methods.stc as stc

    cfg = tiny_cfg(space="nb201", layers=1)
    net = supernet_for(cfg, 1, 10, 8)
    g = NB201Genotype(("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1",
                       "nor_conv_3x3"))
    by_rule = genotype_ops(net, g)

    def no_rule(net, genotype):
        raise TypeError("no sub-cell rule")

    monkeypatch.setattr(stc, "subcell", no_rule)
    by_oracle = genotype_ops(net, g)
    assert all(torch.equal(by_rule[k], by_oracle[k]) for k in by_rule)


@pytest.mark.parametrize("form", ["log", "hinge"])
def test_gradient_pushes_alpha_to_cheaper_ops(tiny_cfg, tmp_path, form):
    cfg = tiny_cfg(space="nb201", layers=1, image_size=8)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_table(cfg, NB201_MS)))
    cfg = cfg.replace(latency={"table": str(path), "target_ms": 0.5, "form": form,
                               "stat": "min" if form == "hinge" else "median"})
    net, objective, method = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    term = objective.arch_terms[0]
    alpha = net.alphas["cell"]
    loss = term.loss(term.value_ms(method.op_weights()))
    (grad,) = torch.autograd.grad(loss, alpha)
    idx = {op: net.op_names.index(op) for op in NB201_MS}
    order = sorted(NB201_MS, key=NB201_MS.get)  # cheapest first
    for e in range(grad.shape[0]):  # dearer op, larger gradient: descent lowers its α most
        g = [float(grad[e, idx[op]]) for op in order]
        assert g == sorted(g) and g[0] < 0 < g[-1]
    before = term.metrics()
    opt = torch.optim.Adam([alpha], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        term.loss(term.value_ms(method.op_weights())).backward()
        opt.step()
    after = term.metrics()
    assert after["e_latency_ms"] < before["e_latency_ms"]
    w = method.alpha_weights()["cell"]
    assert (w[:, idx["skip_connect"]] > w[:, idx["nor_conv_3x3"]]).all()


def test_hinge_is_silent_under_the_target(tiny_cfg, tmp_path):
    cfg = tiny_cfg(space="nb201", layers=1, image_size=8)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_table(cfg, NB201_MS)))
    cfg = cfg.replace(latency={"table": str(path), "target_ms": 1000.0, "form": "hinge"})
    net, objective, method = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    term = objective.arch_terms[0]
    loss = term.loss(term.value_ms(method.op_weights()))
    assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("method", ["darts", "semantic", "stc", "gdas"])
def test_term_joins_every_methods_alpha_loss_only(tiny_cfg, tmp_path, method):
    cfg = tiny_cfg(space="nb201", layers=1, image_size=8, method=method)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_table(cfg, NB201_MS)))
    cfg = cfg.replace(latency={"table": str(path), "target_ms": 0.5, "weight": 2.0})
    net, objective, m = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batch = objective.prepare(torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3]),
                              g)
    assert isinstance(batch, Batch)
    m.begin_epoch(0)
    net.train()
    a_out = m.arch_loss(batch)
    term = objective.arch_terms[0]
    with torch.no_grad():
        expect = term.loss(term.value_ms(m.op_weights()))
    assert float(a_out.terms["latency"]) == pytest.approx(float(expect))
    alone = objective.inner(net, batch)
    assert "latency" not in alone.terms
    with torch.no_grad():  # evaluation: no term
        assert "latency" not in objective(net, batch).terms
    stats = m.step(batch, batch)  # the w step freezes α: its loss has no latency term
    assert "arch_latency" in stats and "latency" not in stats


def test_search_logs_latency_and_resumes_exactly(tiny_cfg, tmp_path, interrupted_search,
                                                 assert_same_run):
    cfg = tiny_cfg(space="nb201", layers=1, subset=64, epochs=2)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_table(cfg, NB201_MS)))
    from diffnas.objectives.latency import file_sha256

    cfg = cfg.replace(latency={"table": str(path), "target_ms": 0.5, "form": "hinge",
                               "sha256": file_sha256(path)})
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    assert all(r["e_latency_ms"] > 0 and "derived_latency_ms" in r for r in
               (json.loads(line) for line in
                (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()))
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert type(cfg).from_dict(saved) == cfg  # round trip
    interrupted_search(cfg, tmp_path / "resumed", DARTS)
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    path.write_text(path.read_text().replace('"fixed": {"ms": 1.0', '"fixed": {"ms": 2.0'))
    with pytest.raises(DiffnasError, match="changed since this run started"):
        search(cfg, out=tmp_path / "resumed", resume=True, progress=False)


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


def test_bad_tables_give_one_clear_line(tiny_cfg, tmp_path, capsys):
    base = ["search", "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "run")]
    assert "no such file" in _one_error_line(capsys, [*base, "--latency", "nope.json",
                                                      "--lat-target", "5"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in _one_error_line(capsys, [*base, "--latency", str(bad),
                                                        "--lat-target", "5"])
    bad.write_text(json.dumps({"hello": 1}))
    assert "not a diffnas latency table" in _one_error_line(
        capsys, [*base, "--latency", str(bad), "--lat-target", "5"])
    data = hand_table(tiny_cfg(space="darts", layers=3, image_size=16), {
        op: 1.0 for op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                           "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")})
    key = data["edges"][0]["ops"]["sep_conv_3x3"]
    del data["entries"][key]
    bad.write_text(json.dumps(data))
    err = _one_error_line(capsys, [*base, "--latency", str(bad), "--lat-target", "5"])
    assert f"missing entry {key!r}" in err
    assert "needs --lat-target" in _one_error_line(capsys, [*base, "--latency", str(bad)])
    nb = tmp_path / "nb.json"
    nb.write_text(json.dumps(hand_table(tiny_cfg(space="nb201", layers=1), NB201_MS)))
    assert "is for the ops" in _one_error_line(capsys, [*base, "--latency", str(nb),
                                                        "--lat-target", "5"])


def test_cli_latency_table_and_prediction(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["latency", "--preset", "tiny", "--space", "nb201", "--layers", "1",
            "--image-size", "8", "--repeats", "3", "--warmup", "1", "--threads", "1",
            "--out", str(out), "--genotype", "|nor_conv_3x3~0|+|skip_connect~0|none~1|+"
            "|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|", "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["table"]["entries"] >= 4 and rep["table"]["min_ms"] > 0
    (row,) = rep["predictions"]
    assert row["predicted_ms"] > 0 and row["measured_ms"] > 0
    assert row["error"] == pytest.approx((row["predicted_ms"] - row["measured_ms"])
                                         / row["measured_ms"])
    table = LatencyTable.load(out)
    fixed, dear = table.data["fixed"], table.data["fixed"]["references"][1]
    assert fixed["dearest_error"] == pytest.approx((fixed["ms"] + dear["ops_ms"])
                                                   / dear["measured_ms"] - 1)
    with pytest.raises(DiffnasError):
        LatencyTerm(table, supernet_for(table.search_config(), 1, 10, 8), 0.0)


def test_cdarts_joint_step_carries_the_term(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="cdarts", layers=3, image_size=8)
    ms = {op: 1.0 + i for i, op in enumerate(("max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                                              "dil_conv_5x5"))}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(hand_table(cfg, ms)))
    cfg = cfg.replace(latency={"table": str(path), "target_ms": 0.5})
    net, objective, m = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batch = objective.prepare(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8), g)
    for step in range(100):  # the first step of its joint phase
        m.global_step = step
        if m.cycle_phase() == "joint":
            break
    stats = m.step(batch, batch)  # CDARTS' own joint α loss (Eq. 8) calls the objective
    assert stats["arch_latency"] > 0 and stats["arch_e_latency_ms"] > 0.5
