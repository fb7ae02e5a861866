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
    assert "| darts | 1/1 |" in out_text and "Retrained acc, final epoch (%)" in out_text
    assert "Retrained acc, best epoch (%)" in out_text and "top-5" not in out_text  # 10 classes
    result = json.loads((out / "runs/tiny-nb201/darts/seed0/retrain/result.json").read_text())
    assert result["epochs"] == 1 and result["test_images"] == 64
    summary = json.loads((out / "summary.json").read_text())
    entry = summary[0]
    assert entry["retrain_best_acc"]["mean"] == pytest.approx(100 * result["best_test_acc"])
    assert entry["retrain_acc"]["mean"] == pytest.approx(100 * result["test_acc"])
    assert ex.load_spec(out).overrides == TINY
    assert main(["experiment", "--out", str(out), "--report-only"]) == 0
    assert "| darts | 1/1 |" in capsys.readouterr().out


def test_method_spec_keeps_json_commas_and_option_dicts_merge(tmp_path):
    m = MethodSpec.parse('semantic:objective_args={"mask_ratio":0.4,"patch_size":4},order=2,'
                         'regularisers="a,b",x=[1,2]')
    assert m.config == {"objective_args": {"mask_ratio": 0.4, "patch_size": 4}, "order": 2}
    assert m.options == {"regularisers": "a,b", "x": "[1,2]"}
    assert ex.split_top_level('a={"k":"x,}y"},b=(1,2),c') == ['a={"k":"x,}y"}', "b=(1,2)", "c"]
    with pytest.raises(DiffnasError, match="JSON object"):
        MethodSpec.parse("semantic:objective_args=4")
    with pytest.raises(DiffnasError, match='quote a value that holds commas'):
        MethodSpec.parse("darts:regularisers=a,b")

    # --set option dicts are merged key by key with the spec's (the spec wins per key), over
    # the preset's; the spec's KEY=VALUE method options come last
    s = spec(methods=['semantic:objective_args={"mask_ratio":0.4},seen=spec',
                      'darts:method_args={"k":"json"},k=kv'],
             seeds=[0], overrides={**TINY, "objective_args": {"patch_size": 2, "mask_ratio": 0.9},
                                   "method_args": {"seen": "set", "other": 1}})
    sem, dar = plan(s, tmp_path)
    assert sem.cfg.objective_args == {"patch_size": 2, "mask_ratio": 0.4}
    assert sem.cfg.method_args == {"seen": "spec", "other": 1}
    assert dar.cfg.method_args == {"seen": "set", "other": 1, "k": "kv"}
    assert dar.cfg.objective_args == {"patch_size": 2, "mask_ratio": 0.9}
    with pytest.raises(DiffnasError, match="JSON object"):
        plan(spec(overrides={**TINY, "method_args": "x"}), tmp_path)


@pytest.mark.parametrize("bad, match", [
    ("darts:nonsense=1", "no option nonsense"),                            # a method option
    ('semantic:objective_args={"patch_size":3}', "patch size 3 does not divide"),  # objective
])
def test_every_run_is_checked_before_the_first_starts(tmp_path, bad, match):
    """A bad option of the grid's last method stops the grid before any run has started."""
    out = tmp_path / "exp"
    lines: list[str] = []
    with pytest.raises(DiffnasError, match=match) as err:
        run_experiment(spec(methods=["darts", bad]), out, isolate=False, progress=False,
                       echo=lines.append, plot=False)
    assert f"/{MethodSpec.parse(bad).label}/seed0" in str(err.value)
    assert "\n" not in str(err.value)
    assert lines == [] and not out.exists()   # nothing ran, nothing was written


def test_jobs_run_in_parallel_processes_with_the_same_results(tmp_path):
    """--jobs 2 (a process per run) gives exactly the runs of --jobs 1 in this process."""
    short = {**TINY, "epochs": 1}
    serial = run_experiment(spec(threads=1, overrides=short), tmp_path / "a", isolate=False,
                            progress=False, echo=lambda _: None, plot=False)
    lines: list[str] = []
    parallel = run_experiment(spec(threads=1, jobs=2, overrides=short), tmp_path / "b",
                              isolate=True, progress=False, echo=lines.append, plot=False)
    for a, b in zip(serial["rows"], parallel["rows"], strict=True):
        assert b["status"] == "done"
        assert (a["genotype"], a["search_acc"], a["alpha_std"]) == \
               (b["genotype"], b["search_acc"], b["alpha_std"])
        ma, mb = (RunFolder(r["run_dir"]).read_metrics() for r in (a, b))
        assert [r["alpha"] for r in ma] == [r["alpha"] for r in mb]
    assert sum("starting search" in x for x in lines) == 2
    assert "Runs: 2 at once (--jobs 2), 1 torch thread(s) each" in parallel["markdown"]
    assert "Runs: 1 at once (--jobs 1), 1 torch thread(s) each" in serial["markdown"]
    assert ex.load_spec(tmp_path / "b").jobs == 2
    with pytest.raises(DiffnasError, match="process per run"):
        run_experiment(spec(jobs=2), tmp_path / "c", isolate=False)


def test_published_column_beside_the_table_accuracy():
    rows = [_row("cdarts", 0, table_acc=90.0), _row("darts", 0, table_acc=80.0),
            _row("darts_order2", 0, table_acc=70.0), _row("stc", 0, status="failed")]
    summary = aggregate(rows)
    md = markdown_table(summary)
    head = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert "| NB201 table acc (%) | Published C10 (%) |" in head
    # footnotes numbered in order of appearance; a method without runs still shows its number
    assert ex.published_refs(summary) == {"cdarts": 1, "darts": 2, "stc": 3}
    assert "| cdarts | 1/1 | 90.00 | 94.02 ± 0.31 [1] |" in md
    assert "| darts | 1/1 | 80.00 | 54.30 ± 0.00 [2] |" in md
    assert "| darts_order2 | 1/1 | 70.00 | — |" in md            # a variant: another protocol
    assert "| stc | 0/1 | — | 93.41 ± 0.2 [3] |" in md         # the source's precision
    notes = ex.published_notes(ex.published_refs(summary), 94.07)
    assert len(notes) == 4 and "optimum 94.37" in notes[0] and "94.07" in notes[0]
    assert notes[1].startswith("[1] CDARTS") and "Cream README" in notes[1]
    assert notes[2].startswith("[2] DARTS-V1") and "NAS-Bench-201 paper" in notes[2]
    assert ex.published_notes({}) == []
    assert all(p.source for p in ex.PUBLISHED.values())
    # no table accuracy, no published column
    assert "Published" not in markdown_table(aggregate([_row("darts", 0, search_acc=50.0)]))


def test_decision_metrics():
    """Cell stable = trailing epochs with the final cell; α-std growth = last / first epoch."""
    h = [{"genotype_str": g, "alpha_std": a} for g, a in (("x", 0.5), ("y", 1.0), ("x", 2.0),
                                                           ("x", 3.0), ("x", 4.0))]
    assert ex.decision(h) == {"stable_epochs": 3, "alpha_std_growth": 8.0}
    assert ex.decision(h[:2])["stable_epochs"] == 1
    assert ex.decision(h[2:])["stable_epochs"] == 3
    assert ex.decision([]) == {}


def test_up_front_check_reads_only_the_class_fraction(tmp_path, images_read):
    """The grid's check before any run reads an image folder as the runs will: with
    ``class_fraction``, only that share of the files."""
    from PIL import Image

    from diffnas.data import readers

    for c, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), colour).save(tmp_path / "img" / c / f"{i}.png")
    overrides = {**TINY, "dataset": f"folder:{tmp_path / 'img'}", "class_fraction": 0.25,
                 "subset": None}
    cells = plan(spec(overrides=overrides), tmp_path / "exp")
    ex.check_runs(cells)  # two seeds, one check
    kept = readers.load_dataset(f"folder:{tmp_path / 'img'}", "train", class_fraction=0.25)
    assert images_read == [4, 4] and len(kept) == 4  # the check read what the run reads, not 12+
