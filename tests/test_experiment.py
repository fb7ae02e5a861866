"""The experiment runner: grid planning, skip/resume, aggregation and report files."""

from __future__ import annotations

import json

import pytest
import torch

from diffnas.engine import experiment as ex
from diffnas.engine.experiment import (
    ExperimentSpec,
    MethodSpec,
    aggregate,
    markdown_table,
    mean_std,
    plan,
    run_experiment,
)
from diffnas.engine.runfolder import RunFolder
from diffnas.errors import DiffnasError

TINY = {"subset": 64, "epochs": 2, "batch_size": 16, "channels": 4, "layers": 1,
        "image_size": 8, "crop_padding": 1}


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _one_thread(_cache_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(_cache_dir))  # the table is converted once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(**kw) -> ExperimentSpec:
    base = dict(methods=["darts"], seeds=[0, 1], presets=["tiny"], spaces=["nb201"],
                overrides=dict(TINY), device="cpu")
    base.update(kw)
    return ExperimentSpec(**base)


def test_method_spec_and_plan(tmp_path):
    m = MethodSpec.parse("darts:order=2,foo=bar")
    assert m.method == "darts" and m.config == {"order": 2} and m.options == {"foo": "bar"}
    assert m.label == "darts_order2_foobar"
    cells = plan(spec(methods=["darts", "darts:order=2"], datasets=["digits"]), tmp_path)
    assert len(cells) == 4
    assert {c.cfg.order for c in cells} == {1, 2}
    assert cells[0].run_dir == tmp_path / "runs" / "tiny-nb201-digits" / "darts" / "seed0"
    assert all(c.cfg.epochs == 2 and c.cfg.space == "nb201" for c in cells)
    with pytest.raises(DiffnasError, match="unknown method"):
        plan(spec(methods=["nope"]), tmp_path)
    with pytest.raises(DiffnasError, match="grid's axes"):
        plan(spec(overrides={"seed": 3}), tmp_path)
    with pytest.raises(DiffnasError, match="repeat"):
        plan(spec(methods=["darts", "darts"]), tmp_path)
    with pytest.raises(DiffnasError, match="no method name"):
        MethodSpec.parse(":order=2")


def test_skips_finished_and_resumes_interrupted(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    s = spec()
    real_append = RunFolder.append_metrics

    def crash_in_second_epoch(self, record):
        if "seed1" in str(self.path) and record["epoch"] == 1:
            raise RuntimeError("power cut")
        real_append(self, record)

    monkeypatch.setattr(RunFolder, "append_metrics", crash_in_second_epoch)
    lines: list[str] = []
    res = run_experiment(s, out, isolate=False, progress=False, echo=lines.append, plot=False)
    status = {r["seed"]: r["status"] for r in res["rows"]}
    assert status == {0: "done", 1: "failed"}
    assert "power cut" in (out / "runs/tiny-nb201/darts/seed1/error-search.txt").read_text()
    assert (out / "runs/tiny-nb201/darts/seed1/checkpoint.pt").exists()

    monkeypatch.setattr(RunFolder, "append_metrics", real_append)
    done0 = out / "runs/tiny-nb201/darts/seed0/result.json"
    stamp = done0.stat().st_mtime_ns
    lines.clear()
    res = run_experiment(s, out, isolate=False, progress=False, echo=lines.append)
    assert {r["status"] for r in res["rows"]} == {"done"}
    assert done0.stat().st_mtime_ns == stamp  # the finished run was not touched
    assert any("seed 0: finished earlier, skipped" in x for x in lines)
    assert any("seed 1: resuming search" in x for x in lines)
    run1 = out / "runs/tiny-nb201/darts/seed1"
    assert "resumed at epoch 1" in (run1 / "log.txt").read_text()
    assert [r["epoch"] for r in RunFolder(run1).read_metrics()] == [0, 1]

    # the same cell run uninterrupted in another experiment gives the same search result
    other = run_experiment(spec(seeds=[1]), tmp_path / "ref", isolate=False, progress=False,
                           echo=lambda _: None, plot=False)
    row1 = next(r for r in res["rows"] if r["seed"] == 1)
    assert other["rows"][0]["genotype"] == row1["genotype"]
    assert other["rows"][0]["search_acc"] == pytest.approx(row1["search_acc"])

    # report files
    assert (out / "results.csv").read_text().count("\n") == 3
    assert len(json.loads((out / "results.json").read_text())) == 2
    md = (out / "summary.md").read_text()
    assert "| darts | 2/2 |" in md and "digits" in md
    pytest.importorskip("matplotlib")
    assert (out / "table_acc_tiny-nb201.png").stat().st_size > 1000

    # a finished run made with another config is not silently reused
    with pytest.raises(DiffnasError, match="another config"):
        run_experiment(spec(overrides={**TINY, "epochs": 3}), out, isolate=False,
                       progress=False, echo=lambda _: None)


def test_isolated_run_reports_failure(tmp_path):
    """A run in its own process that fails is recorded, and the grid goes on."""
    s = spec(seeds=[0], overrides={**TINY, "dataset": "folder:/nonexistent/images"}, threads=1)
    res = run_experiment(s, tmp_path / "exp", isolate=True, progress=False, echo=lambda _: None,
                         plot=False)
    (row,) = res["rows"]
    assert row["status"] == "failed" and "nonexistent" in row["error"]


def _row(method, seed, status="done", **values):
    return {"setting": "s", "method": method, "seed": seed, "status": status, **values}


def test_aggregation_on_hand_made_results():
    rows = [
        _row("a", 0, search_acc=90.0, table_acc=80.0, skip_count=1, table_acc_curve=[70, 80]),
        _row("a", 1, search_acc=92.0, table_acc=84.0, skip_count=2, table_acc_curve=[72, 84]),
        _row("a", 2, status="failed"),
        _row("b", 0, search_acc=50.0, skip_count=0),
    ]
    summary = aggregate(rows)
    a, b = summary
    assert (a["runs"], a["finished"], a["seeds"]) == (3, 2, [0, 1])
    assert a["search_acc"]["mean"] == pytest.approx(91.0)
    assert a["search_acc"]["std"] == pytest.approx(2 ** 0.5)     # sample std (n − 1)
    assert a["table_acc_curve"]["mean"] == [71.0, 82.0]
    assert a["table_acc_curve"]["std"] == pytest.approx([2 ** 0.5, 8 ** 0.5])
    assert "table_acc" not in b and b["skip_count"]["std"] == 0.0
    md = markdown_table(summary, {"s": "note"})
    assert "**s** — note" in md
    assert "| a | 2/3 | 91.00 ± 1.41 | 82.00 ± 2.83 |" in md
    assert "| b | 1/1 | 50.00 | — |" in md
    assert "Params" not in md and "Retrained" not in md   # columns without values are left out
    assert mean_std([3.0]) == (3.0, 0.0)


def test_cli_experiment_report_only(tmp_path, capsys):
    from diffnas.cli import main

    out = tmp_path / "exp"
    with pytest.raises(DiffnasError, match="not an experiment folder"):
        ex.load_spec(out)
    argv = ["experiment", "--out", str(out), "--presets", "tiny", "--spaces", "nb201",
            "--seeds", "0", "--device", "cpu", "--in-process", "--no-progress", "--threads", "1"]
    argv += [f"--set={k}={v}" for k, v in TINY.items()]
    argv += ["--retrain", "tiny"] + [f"--retrain-set={kv}" for kv in (
        "epochs=1", "subset=64", "test_subset=64", "layers=1", "batch_size=16")]
    assert main(argv) == 0
    out_text = capsys.readouterr().out
    assert "| darts | 1/1 |" in out_text and "Retrained acc (%)" in out_text
    result = json.loads((out / "runs/tiny-nb201/darts/seed0/retrain/result.json").read_text())
    assert result["epochs"] == 1 and result["test_images"] == 64
    assert ex.load_spec(out).overrides == TINY
    assert main(["experiment", "--out", str(out), "--report-only"]) == 0
    assert "| darts | 1/1 |" in capsys.readouterr().out
