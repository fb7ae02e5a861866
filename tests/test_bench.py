"""NAS-Bench-201 tables, black-box baselines, ranking correlation and the search-loop hook."""

from __future__ import annotations

import bz2
import io
import json
import pickle

import numpy as np
import pytest
import torch

from diffnas.bench import nb201_table as nt
from diffnas.bench.baselines import mutate, random_search, regularized_evolution, run_baseline
from diffnas.bench.nb201_table import (
    NUM_ARCHS,
    NB201Table,
    analog_key,
    arch_from_index,
    arch_index,
    connected_mask,
    from_analog_key,
    load_table,
)
from diffnas.bench.ranking import (
    FixedArchPolicy,
    kendall_tau,
    rank_supernet,
    rankdata,
    recalibrate_bn,
    spearman_rho,
)
from diffnas.cli import main
from diffnas.errors import DiffnasError
from diffnas.spaces.nb201 import OPS, NB201Genotype

ALL_CONV3 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
             "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def analog():
    try:
        path = nt.default_table_path()
    except DiffnasError as e:
        pytest.skip(f"no analog-nasbench table installed: {e}")
    return load_table(path, cache=False)


def synthetic_table(seed: int = 0, missing: int = 0) -> NB201Table:
    """A table whose accuracy grows with the number of 3×3 convolutions, plus noise."""
    rng = np.random.default_rng(seed)
    ops = nt.all_op_indices()
    acc = 80 + 2.0 * (ops == OPS.index("nor_conv_3x3")).sum(1) + rng.random(NUM_ARCHS)
    acc[~connected_mask()] = 10.0
    if missing:
        acc[rng.choice(NUM_ARCHS, missing, replace=False)] = np.nan
    return NB201Table({"acc": acc}, "acc", "synthetic", "synthetic test table")


# ---------------------------------------------------------------------------- cell indexing
def test_index_round_trip_covers_the_space():
    seen = set()
    for i in range(0, NUM_ARCHS, 7):
        g = arch_from_index(i)
        assert arch_index(g) == i and arch_index(str(g)) == i
        assert NB201Genotype.parse(str(g)) == g
        assert from_analog_key(analog_key(g)) == g
        seen.add(i)
    keys = [analog_key(arch_from_index(i)) for i in range(NUM_ARCHS)]
    assert len(set(keys)) == NUM_ARCHS  # the key mapping is a bijection
    assert nt.analog_keys_to_indices(keys).tolist() == list(range(NUM_ARCHS))
    with pytest.raises(DiffnasError, match="out of range"):
        arch_from_index(NUM_ARCHS)


def test_connectivity():
    assert nt.is_connected(ALL_CONV3)
    only_direct = "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    assert nt.is_connected(only_direct)
    dead_end = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"
    assert not nt.is_connected(dead_end)
    assert int((~connected_mask()).sum()) == 341


def test_not_in_space():
    darts = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
             "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),"
             " ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
             "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0),"
             " ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
             "reduce_concat=[2, 3, 4, 5])")
    with pytest.raises(DiffnasError, match="not in the NAS-Bench-201 space"):
        arch_index(darts)
    with pytest.raises(DiffnasError, match="not a NAS-Bench-201 op"):
        arch_index(ALL_CONV3.replace("nor_conv_3x3~1|+", "sep_conv_5x5~1|+", 1))


# ------------------------------------------------------------------------ the analog table
def test_analog_mapping_disconnected_cells_score_ten(analog):
    """Verifies the op-id and edge order of the analog-nasbench keys: the cells that score
    10 % (chance on CIFAR-10) are exactly the 341 with no input→output path."""
    acc = analog.accuracies
    assert len(analog) == NUM_ARCHS and np.isfinite(acc).all()
    chance = set(np.flatnonzero(np.isclose(acc, 10.0)).tolist())
    assert len(chance) == 341
    assert chance == set(np.flatnonzero(~connected_mask()).tolist())
    # read as edges in architecture-string order, the same keys would not match: the test
    # tells the two orders apart
    alt = np.array([[OPS.index(nt.ANALOG_OP_IDS[k]) for k in analog_key(arch_from_index(i))]
                    for i in range(NUM_ARCHS)])
    assert set(np.flatnonzero(~connected_mask(alt)).tolist()) != chance


def test_analog_all_conv3x3_value(analog):
    assert analog.accuracy(ALL_CONV3) == pytest.approx(93.2424, abs=1e-4)
    assert (analog.accuracies > 93.2424).sum() < 0.03 * NUM_ARCHS  # among the best cells
    q = analog.query(ALL_CONV3)
    assert q["dataset"] == "CIFAR-10" and q["arch"] == ALL_CONV3
    assert set(q["values"]) >= {"baseline_accuracy", "analog_accuracy", "qat_accuracy"}
    assert "CIFAR-10" in analog.describe()


def test_cache_round_trip(analog, tmp_path):
    path = tmp_path / "t.npz"
    path.write_bytes(analog.to_npz())
    back = NB201Table.from_npz(path)
    assert back.primary == analog.primary and back.dataset == "CIFAR-10"
    for k, v in analog.columns.items():
        np.testing.assert_array_equal(back.columns[k], v)


# ------------------------------------------------------------ unpickler and bad table files
def _restricted(data: bytes):
    return nt._unpickle(io.BytesIO(data), {k: nt._Record for k in nt._ANALOG_ALLOWED}, "f",
                        "an analog-nasbench table")


class Evil:
    def __reduce__(self):
        return (print, ("should never run",))


def test_unpickler_refuses_unexpected_class(capsys):
    with pytest.raises(DiffnasError, match=r"builtins\.print"):
        _restricted(pickle.dumps({(0,) * 6: Evil()}))
    assert "should never run" not in capsys.readouterr().out
    # a pickle naming the allowed module but another class is refused too
    data = b"\x80\x04canalognasbench.data\nLoader\n)\x81."   # GLOBAL, (), NEWOBJ
    with pytest.raises(DiffnasError, match=r"analognasbench\.data\.Loader"):
        _restricted(data)
    ok = b"\x80\x04canalognasbench.data\nArchitecture\n)\x81."
    assert isinstance(_restricted(ok), nt._Record)


def test_wrong_kind_of_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DiffnasError, match="not a NAS-Bench-201 table"):
        load_table(text)
    lst = tmp_path / "list.anb"
    lst.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(DiffnasError, match="not an analog-nasbench table"):
        load_table(lst)
    with pytest.raises(DiffnasError, match="is a folder"):
        load_table(tmp_path)
    with pytest.raises(DiffnasError, match="does not exist"):
        load_table(tmp_path / "missing.anb")
    truncated = tmp_path / "cut.anb"
    truncated.write_bytes(pickle.dumps({(0,) * 6: 1.0}, protocol=4)[:-5])
    with pytest.raises(DiffnasError, match="cannot read"):
        load_table(truncated)


def test_missing_optional_package(tmp_path, monkeypatch):
    monkeypatch.delenv(nt.TABLE_ENV, raising=False)
    monkeypatch.setattr(nt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DiffnasError, match="install the optional package analog-nasbench"):
        nt.default_table_path()
    pth = tmp_path / "NAS-Bench-201-v1_1.pth"
    torch.save({"meta_archs": [], "arch2infos": {}, "evaluated_indexes": []}, pth)
    real = nt.importlib.import_module

    def fake(name, *a):
        if name in ("nas_201_api", "nats_bench"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a)

    monkeypatch.setattr(nt.importlib, "import_module", fake)
    with pytest.raises(DiffnasError, match=r"pip install nas-bench-201"):
        load_table(pth, cache=False)
    nats = tmp_path / "NATS-tss.pickle.pbz2"
    nats.write_bytes(bz2.compress(pickle.dumps({"meta_archs": []})))
    with pytest.raises(DiffnasError, match=r"pip install nats_bench"):
        load_table(nats, cache=False)


# ------------------------------------------------------ official NAS-Bench-201 / NATS files
ARCHS = [ALL_CONV3, "|skip_connect~0|+|none~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|none~2|",
         "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]
TEST_ACC = [94.37, 85.5, 10.0]


def _results_count(dataset: str, seed: int, acc: float, epochs: int = 3) -> dict:
    """A NAS-Bench-201 ``ResultsCount`` state dict (the per-trial record of the format)."""
    evals = ["ori-test"] + (["x-valid"] if dataset != "cifar10" else [])
    return {
        "name": dataset, "net_state_dict": None, "seed": seed, "epochs": epochs,
        "train_acc1es": {e: acc for e in range(epochs)}, "train_acc5es": None,
        "train_losses": {e: 0.1 for e in range(epochs)}, "train_times": None,
        "arch_config": {"channel": 16, "num_cells": 5, "class_num": 10, "arch_str": ""},
        "params": 1.0, "flop": 100.0, "latency": None, "eval_names": evals,
        "eval_acc1es": {f"{n}@{e}": acc - (1 if n == "x-valid" else 0)
                        for n in evals for e in range(epochs)},
        "eval_losses": {f"{n}@{e}": 0.5 for n in evals for e in range(epochs)},
        "eval_times": {},
    }


def _arch_results(i: int, arch: str, acc: float, seeds: tuple[int, ...] = (777, 888)) -> dict:
    datasets = ("cifar10", "cifar10-valid")
    # two trials per dataset whose mean is `acc`
    trial = {s: acc + d for s, d in zip(seeds, (-0.5, 0.5), strict=True)}
    return {"arch_index": i, "arch_str": arch, "clear_net_done": True,
            "dataset_seed": {d: list(seeds) for d in datasets},
            "all_results": {(d, s): _results_count(d, s, trial[s]) for d in datasets
                            for s in seeds}}


def _benchmark_dict(hps: tuple[str, ...]) -> dict:
    return {"meta_archs": ARCHS, "evaluated_indexes": [0, 1, 2], "total_archs": 3,
            "arch2infos": {i: {hp: _arch_results(i, a, acc) for hp in hps}
                           for i, (a, acc) in enumerate(zip(ARCHS, TEST_ACC, strict=True))}}


def _check_official(table: NB201Table) -> None:
    assert table.primary == "cifar10_test" and table.dataset == "CIFAR-10"
    assert len(table) == 3
    for arch, acc in zip(ARCHS, TEST_ACC, strict=True):
        assert table.accuracy(arch) == pytest.approx(acc)
        assert table.query(arch)["values"]["cifar10_valid"] == pytest.approx(acc - 1)
    with pytest.raises(DiffnasError, match="no entry"):
        table.accuracy(arch_from_index(1234))


def test_official_nas_bench_201_file(tmp_path):
    pytest.importorskip("nas_201_api")
    path = tmp_path / "NAS-Bench-201-mini.pth"
    # the official file: {meta_archs, arch2infos: {i: {'less', 'full'}}, evaluated_indexes}
    d = _benchmark_dict(("less", "full"))
    torch.save(d, path)
    _check_official(load_table(path))
    _check_official(load_table(path))  # from the .npz cache


def test_official_nats_bench_file(tmp_path):
    pytest.importorskip("nats_bench")
    path = tmp_path / "NATS-tss-mini.pickle.pbz2"
    with bz2.open(path, "wb") as f:
        pickle.dump(_benchmark_dict(("12", "200")), f, protocol=4)
    _check_official(load_table(path, cache=False))
    bad = tmp_path / "NATS-evil.pickle.pbz2"
    with bz2.open(bad, "wb") as f:
        pickle.dump({"meta_archs": Evil()}, f)
    with pytest.raises(DiffnasError, match="refusing"):
        load_table(bad, cache=False)


# ------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name", ["random", "evolution"])
def test_baselines_respect_budget_and_seed(name):
    table = synthetic_table(missing=500)
    a = run_baseline(name, table, 60, seed=3)
    b = run_baseline(name, table, 60, seed=3)
    c = run_baseline(name, table, 60, seed=4)
    assert len(a.queried) == 60 and a.budget == 60
    assert a.queried == b.queried and a.best_acc == b.best_acc
    assert a.queried != c.queried
    assert all(np.isfinite(table.accuracies[i]) for i in a.queried)
    assert a.best_so_far == list(np.maximum.accumulate(a.accs))
    assert a.best_acc == pytest.approx(table.accuracies[a.best_index])
    with pytest.raises(DiffnasError, match="budget"):
        run_baseline(name, table, 0)


def test_random_search_does_not_repeat_and_evolution_beats_it():
    table = synthetic_table()
    r = random_search(table, 300, seed=0)
    assert len(set(r.queried)) == 300
    evo = [regularized_evolution(table, 150, seed=s).best_acc for s in range(5)]
    rnd = [random_search(table, 150, seed=s).best_acc for s in range(5)]
    assert np.mean(evo) > np.mean(rnd)


def test_mutation_changes_exactly_one_edge():
    rng = np.random.default_rng(0)
    for i in rng.integers(0, NUM_ARCHS, 50):
        a, b = arch_from_index(int(i)), arch_from_index(mutate(int(i), rng))
        assert sum(x != y for x, y in zip(a.ops, b.ops, strict=True)) == 1


# --------------------------------------------------------------------------- correlations
def test_correlations_match_hand_values_and_scipy():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # τ-b with ties by hand: pairs of x=(1,2,2,3), y=(1,3,2,3)
    # s·t: (1,2)+ (1,3)+ (1,4)+ (2,3)0 (2,4)0 (3,4)+ → 4; Σs²=5, Σt²=5 → 0.8
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 3]) == pytest.approx(0.8)
    assert np.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 6, 40), rng.normal(size=40)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------- ranking
def test_bn_recalibration_is_the_batch_average():
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(5.0)
    xs = [torch.randn(4, 3, 5, 5) + k for k in range(3)]
    recalibrate_bn(bn, xs)
    expect = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(bn.running_mean, expect)
    assert bn.momentum == 0.1


def test_fixed_arch_policy_runs_one_op_per_edge():
    from diffnas.spaces.nb201 import NB201Supernet

    net = NB201Supernet(channels=4, layers=1, num_classes=3, in_channels=1)
    g = NB201Genotype.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                            "|avg_pool_3x3~0|none~1|nor_conv_1x1~2|")
    policy = FixedArchPolicy(g, net.op_names)
    ew = policy.edge_policy(net, "cell")
    assert ew.weights.sum(1).tolist() == [1.0] * 6
    assert [len(a) for a in ew.active] == [1, 0, 1, 1, 0, 1]
    net.policy = policy
    net.eval()
    x = torch.randn(2, 1, 8, 8)
    y1 = net(x)
    net.policy = FixedArchPolicy(NB201Genotype.parse(ALL_CONV3), net.op_names)
    assert not torch.allclose(y1, net(x))


def test_rank_supernet_end_to_end(tiny_cfg, tmp_path):
    from diffnas.engine.search import search

    cfg = tiny_cfg(space="nb201", layers=1, epochs=1, image_size=8, subset=96)
    run = tmp_path / "run"
    search(cfg, out=run, progress=False)
    table = synthetic_table()
    res = rank_supernet(run, samples=6, seed=1, reference=table, max_eval=32, calib_batches=1,
                        batch_size=16)
    assert res["samples"] == 6 and len(res["archs"]) == 6
    assert all(nt.is_connected(r["arch"]) for r in res["archs"])
    for score in ("supernet_acc", "alpha_strength"):
        for v in (res["kendall_tau"][score], res["spearman_rho"][score]):
            assert np.isnan(v) or -1.0 <= v <= 1.0
    assert all(0 <= r["supernet_acc"] <= 1 for r in res["archs"])
    assert all(0 < r["alpha_strength"] <= 6 for r in res["archs"])
    again = rank_supernet(run, samples=6, seed=1, reference=table, max_eval=32,
                          calib_batches=1, batch_size=16)
    assert again["archs"] == res["archs"]  # deterministic
    ref = tmp_path / "retrained.json"
    ref.write_text(json.dumps({ARCHS[0]: 90.0, ARCHS[1]: 80.0}))
    res2 = rank_supernet(run, samples=5, reference=str(ref), max_eval=16, calib_batches=1,
                         batch_size=16)
    assert {r["arch"] for r in res2["archs"]} == set(ARCHS[:2])
    darts_run = tmp_path / "darts"
    darts_run.mkdir()
    (darts_run / "config.json").write_text(json.dumps(tiny_cfg(space="darts").to_dict()))
    (darts_run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(DiffnasError, match="NAS-Bench-201-space run"):
        rank_supernet(darts_run, samples=4, reference=table)


# ------------------------------------------------------------------------ search-loop hook
def test_search_records_table_accuracy(tiny_cfg, tmp_path, monkeypatch):
    from diffnas.engine.search import search

    table = synthetic_table()
    path = tmp_path / "syn.npz"
    path.write_bytes(table.to_npz())
    monkeypatch.setattr(nt, "cached_table", lambda path=None: table)
    cfg = tiny_cfg(space="nb201", layers=1, epochs=2, image_size=8, subset=64)
    res = search(cfg, out=tmp_path / "a", progress=False)
    accs = [h["table_acc"] for h in res.history]
    assert accs == [table.accuracy(NB201Genotype.parse(h["genotype_str"])) for h in res.history]
    log = (tmp_path / "a" / "log.txt").read_text()
    assert log.count("table_acc:") == 1 and "synthetic" in log
    assert "not the search data (digits)" in log


def test_search_without_table_records_null(tiny_cfg, tmp_path, monkeypatch):
    from diffnas.engine.search import search

    monkeypatch.setenv(nt.TABLE_ENV, str(tmp_path / "nowhere.anb"))
    cfg = tiny_cfg(space="nb201", layers=1, epochs=2, image_size=8, subset=64)
    res = search(cfg, out=tmp_path / "b", progress=False)
    assert [h["table_acc"] for h in res.history] == [None, None]
    log = (tmp_path / "b" / "log.txt").read_text()
    assert log.count("table_acc is null") == 1 and "does not exist" in log


# ------------------------------------------------------------------------------------ CLI
def test_cli_query_and_baselines(analog, capsys):
    assert main(["bench", "query", ALL_CONV3]) == 0
    out = capsys.readouterr().out
    assert "93.2424" in out and "CIFAR-10" in out
    assert main(["bench", "query", ALL_CONV3, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(93.2424)
    assert main(["bench", "random", "--budget", "7", "--seed", "1", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["queries"] == 7 and len(r["best_so_far"]) == 7
    assert main(["bench", "evolution", "--budget", "20", "--repeat", "2"]) == 0
    assert "over 2 seeds" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    assert main(["bench", "query", "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "conv_9x9" in err and len(err.splitlines()) == 1
    bad = tmp_path / "x.txt"
    bad.write_text("nope")
    assert main(["bench", "query", ALL_CONV3, "--table", str(bad)]) == 2
    assert "not a NAS-Bench-201 table" in capsys.readouterr().err
