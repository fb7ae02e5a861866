"""``diffnas experiment --launcher submitit``: a job per run through submitit (its local executor
here; Slurm's sbatch/sacct faked on PATH for the submission path), the launcher options, and
skip/resume/summary the same as with the in-machine launcher."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch

from diffnas.engine import cluster
from diffnas.engine.experiment import ExperimentSpec, run_experiment
from diffnas.engine.runfolder import RunFolder
from diffnas.errors import DiffnasError

TINY = {"subset": 64, "epochs": 1, "batch_size": 16, "channels": 4, "layers": 1,
        "image_size": 8, "crop_padding": 1}
TIMING = {"search_time_min", "peak_mem_gib", "run_dir"}


@pytest.fixture(scope="module")
def _cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _one_thread(_cache_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(_cache_dir))  # the table is converted once
    monkeypatch.setenv("OMP_NUM_THREADS", "1")             # for the jobs' processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(**kw) -> ExperimentSpec:
    base = dict(methods=["darts", "semantic"], seeds=[0, 1], presets=["tiny"],
                spaces=["nb201"], overrides=dict(TINY), device="cpu", threads=1)
    base.update(kw)
    return ExperimentSpec(**base)


def _untimed(entries):
    return [{k: v for k, v in e.items() if k not in TIMING} for e in entries]


def test_local_executor_grid_matches_the_machine_launcher(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    quiet = dict(progress=False, echo=lambda _: None, plot=False)
    ref = run_experiment(grid(), tmp_path / "machine", isolate=False, **quiet)

    # an interrupted run: darts seed 1 lost its node after its checkpoint, before result.json
    out = tmp_path / "cluster"
    real = RunFolder.write_json

    def lost(self, name, data):
        if name == "result.json" and "darts/seed1" in str(self.path):
            raise RuntimeError("node lost")
        return real(self, name, data)

    monkeypatch.setattr(RunFolder, "write_json", lost)
    run_experiment(grid(methods=["darts"], seeds=[1]), out, isolate=False, **quiet)
    monkeypatch.setattr(RunFolder, "write_json", real)
    cut = out / "runs/tiny-nb201/darts/seed1"
    assert (cut / "checkpoint.pt").exists() and not (cut / "result.json").exists()

    spec = grid(launcher="submitit", launcher_opts={"cluster": "local",
                                                    "array_parallelism": "2"})
    lines: list[str] = []
    res = run_experiment(spec, out, progress=False, echo=lines.append, plot=False)
    assert [r["status"] for r in res["rows"]] == ["done"] * 4
    assert _untimed(res["rows"]) == _untimed(ref["rows"])
    assert _untimed(res["summary"]) == _untimed(ref["summary"])
    assert json.loads((out / "summary.json").read_text()) == res["summary"]
    assert "resumed at epoch 1" in (cut / "log.txt").read_text()  # the search's own resume
    assert sum("starting search" in x for x in lines) == 3
    assert sum("resuming search" in x for x in lines) == 1
    assert any(x.startswith("jobs: 4/4 finished") for x in lines)
    records = json.loads((out / "submitit" / "jobs.json").read_text())
    assert records["cluster"] == "local" and len(records["jobs"]) == 4
    assert "one submitit job each (submitit's local executor, array_parallelism=2, at most 2 " \
           "at once), 1 torch thread(s) each" in res["markdown"]
    assert "search resume -> ok" in (out / "log.txt").read_text()
    assert ExperimentSpec.from_dict(json.loads((out / "experiment.json").read_text())) \
        .launcher_opts == {"cluster": "local", "array_parallelism": 2}

    # a second invocation submits nothing: every run is finished
    job_dirs = sorted(p.name for p in (out / "submitit").iterdir())
    lines.clear()
    again = run_experiment(spec, out, progress=False, echo=lines.append, plot=False)
    assert sum("finished earlier, skipped" in x for x in lines) == 4
    assert not any(x.startswith(("launcher:", "jobs:")) for x in lines)
    assert sorted(p.name for p in (out / "submitit").iterdir()) == job_dirs
    assert _untimed(again["summary"]) == _untimed(ref["summary"])


def test_launcher_options_are_checked():
    assert cluster.launcher_options({"time": "90", "mem": "16G", "gpus": "0",
                                     "array-parallelism": "4", "cluster": "Local"}) == \
        {"time": 90, "mem": 16.0, "gpus": 0, "array_parallelism": 4, "cluster": "local"}
    with pytest.raises(DiffnasError, match=r"unknown --launcher-opt key\(s\) nodes; accepted "
                                           r"keys: cluster, partition, time, gpus, cpus, mem"):
        cluster.launcher_options({"nodes": "2"})
    for key, value in (("time", "1h"), ("time", "0"), ("gpus", "-1"), ("mem", "lots"),
                       ("cluster", "pbs"), ("array_parallelism", "0"), ("cpus", "true")):
        with pytest.raises(DiffnasError, match=f"--launcher-opt {key}=.*expected.*accepted keys"):
            cluster.launcher_options({key: value})
    with pytest.raises(DiffnasError, match="needs --launcher submitit"):
        cluster.check_launcher("machine", {"time": "5"})
    with pytest.raises(DiffnasError, match="unknown launcher 'slurm'"):
        cluster.check_launcher("slurm", {})


def test_missing_submitit_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    with pytest.raises(DiffnasError, match=r"pip install 'diffnas\[cluster\]'"):
        run_experiment(grid(launcher="submitit"), tmp_path / "exp", echo=lambda _: None)
    assert not (tmp_path / "exp").exists()
    with pytest.raises(DiffnasError, match="--in-process does not go"):
        run_experiment(grid(launcher="submitit"), tmp_path / "exp", isolate=False)


def _fake_slurm(bin_dir, state):
    """srun, sbatch (records the script, answers job 4242) and sacct (reads ``state``)."""
    bin_dir.mkdir()
    scripts = {
        "srun": "exit 0",
        "sbatch": f'cp "$1" "{bin_dir}/submitted.sh"; echo "Submitted batch job 4242"',
        "sacct": f'echo "JobID|State|NodeList"; for i in 0 1; do '
                 f'echo "4242_$i|$(cat {state})|node1"; done',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_array_submission_and_reattach(tmp_path, monkeypatch):
    """With Slurm's commands faked: one job array with the options as #SBATCH lines; a re-run
    while the jobs are still running waits for them instead of submitting again; jobs that
    end without a result are reported as failed and the runs stay unfinished."""
    submitit = pytest.importorskip("submitit")
    state = tmp_path / "state"
    state.write_text("PENDING")
    _fake_slurm(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(cluster.POLL_S, "slurm", 0.2)
    # a job that ended without a result: submitit waits 15 s for its file (shared storage lags)
    monkeypatch.setattr(submitit.SlurmJob, "_results_timeout_s", 0)
    assert cluster.resolve_cluster({}) == "slurm"

    spec = grid(methods=["darts"], threads=None, launcher="submitit",
                launcher_opts={"partition": "gpu", "time": "30", "gpus": "1", "cpus": "4",
                               "mem": "8", "array_parallelism": "1", "account": "nas"})
    out = tmp_path / "exp"
    lines: list[str] = []
    real_wait = cluster._wait

    def end_jobs(*args, **kwargs):  # the jobs "end" without writing a result
        state.write_text("FAILED")
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(cluster, "_wait", end_jobs)
    res = run_experiment(spec, out, progress=False, echo=lines.append, plot=False)
    script = (tmp_path / "bin" / "submitted.sh").read_text()
    for flag in ("--array=0-1%1", "--partition=gpu", "--time=30", "--gpus-per-node=1",
                 "--cpus-per-task=4", "--mem=8GB", "--account=nas"):
        assert f"#SBATCH {flag}\n" in script
    assert any("submitted Slurm job array 4242" in x for x in lines)
    assert sum("FAILED" in x for x in lines) == 2
    assert [r["status"] for r in res["rows"]] == ["incomplete"] * 2
    jobs = json.loads((out / "submitit" / "jobs.json").read_text())["jobs"]
    assert {v["job_id"] for v in jobs.values()} == {"4242_0", "4242_1"}
    assert "4 torch thread(s) each" in res["markdown"]

    # a re-run while Slurm still runs them: no second submission, it waits for the same jobs
    (tmp_path / "bin" / "submitted.sh").unlink()
    submitit.SlurmJob.watcher.clear()
    state.write_text("RUNNING")
    lines.clear()
    run_experiment(spec, out, progress=False, echo=lines.append, plot=False)
    assert sum("still queued or running as Slurm job 4242_" in x for x in lines) == 2
    assert not (tmp_path / "bin" / "submitted.sh").exists()

    monkeypatch.setenv("PATH", os.defpath)  # no Slurm: cluster=slurm is refused, auto is local
    with pytest.raises(DiffnasError, match="srun is not on PATH"):
        cluster.resolve_cluster({"cluster": "slurm"})
    assert cluster.resolve_cluster({}) == "local"


def test_cli_bad_launcher_option_is_one_line(tmp_path, capsys):
    from diffnas.cli import main

    rc = main(["experiment", "--out", str(tmp_path / "exp"), "--presets", "tiny",
               "--launcher", "submitit", "--launcher-opt", "partition=gpu",
               "--launcher-opt", "walltime=60"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err == ("error: unknown --launcher-opt key(s) walltime; accepted keys: "
                   + cluster.accepted_keys())
    assert not (tmp_path / "exp").exists()
