"""Resuming around early stops: a DARTS-ADA run resumed exactly at (and after) a rollback
checkpoint keeps every metrics record; a selection after an early stop (``--select pt``)
starts from the supernet of the stop epoch."""

from __future__ import annotations

import json

import pytest
import torch

import diffnas.engine.search as search_module
from diffnas.engine.search import search
from diffnas.engine.select import PerturbationSelection
from diffnas.methods import METHODS
from diffnas.methods.robustdarts import HessianEarlyStop
from diffnas.spaces import genotype_from_dict

# window 3, every epoch, δ 2, from epoch 0: λ_max 1 until epoch 3 and 10 from epoch 4 fires at
# epoch 4 with the stop epoch 4 − 1·(1 + 2) = 1 (as tests/test_early_stop.py)
FAST = {"es_window": 3, "es_every": 1, "es_delta": 2, "es_start_epoch": 0}
SERIES = [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0]
TIMING = {"epoch_time_s", "elapsed_s", "peak_mem_gib"}


def fake_eigenvalues(monkeypatch):
    monkeypatch.setattr(search_module, "method_hessian_eig",
                        lambda method, stream, aug: SERIES[method.epoch])


def records(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").open()]


def interrupt_at_nth_start(monkeypatch, method_cls, epoch, nth):
    """A Ctrl-C at the first step of the ``nth`` (1-based) run of ``epoch`` (a DARTS-ADA
    rollback runs epochs again)."""
    original, seen = method_cls.step, {"runs": 0, "prev": None}

    def step(self, train, val):
        if self.epoch == epoch and seen["prev"] != epoch:  # a run of ``epoch`` begins
            seen["runs"] += 1
            if seen["runs"] == nth:
                raise KeyboardInterrupt
        seen["prev"] = self.epoch
        return original(self, train, val)

    monkeypatch.setattr(method_cls, "step", step)


ADA = {**FAST, "es_mode": "ada"}


# (epoch, run): the first / second re-run of epoch 2 (cut right after a rollback: the
# checkpoint is the rollback's), the re-run of epoch 3 (a checkpoint inside a later pass)
@pytest.mark.parametrize(("epoch", "nth", "kept"), [(2, 2, 5), (2, 3, 8), (3, 2, 6)])
def test_darts_ada_resumed_at_a_rollback_checkpoint_keeps_every_record(
        tiny_cfg, tmp_path, monkeypatch, assert_same_run, epoch, nth, kept):
    """The checkpoint written at a rollback holds the state of the earlier epoch (1) although
    the metrics already have epochs 2-4 of the pass before: resuming from it keeps those
    records, as does resuming inside a later pass (an epoch-based truncation dropped them)."""
    fake_eigenvalues(monkeypatch)
    cfg = tiny_cfg(method="darts-ada", space="nb201", subset=64, epochs=6, method_args=ADA)
    search(cfg, out=tmp_path / "straight", progress=False)
    straight = records(tmp_path / "straight")
    assert [r["epoch"] for r in straight] == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 5]

    interrupt_at_nth_start(monkeypatch, METHODS["darts-ada"], epoch, nth)
    with pytest.raises(KeyboardInterrupt):
        search(cfg, out=tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    cut = records(tmp_path / "resumed")
    assert cut == straight[:kept]
    ckpt = torch.load(tmp_path / "resumed/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == epoch - 1
    assert ("ada_rollback" in cut[-1]) == (epoch == 2)

    fake_eigenvalues(monkeypatch)
    search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert records(tmp_path / "resumed") == straight
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_select_after_an_early_stop_runs_on_the_stop_epochs_supernet(
        tiny_cfg, tmp_path, monkeypatch, assert_same_run):
    """darts-es stops after epoch 4 with the stop epoch 1 (FAST, SERIES): ``--select pt``
    perturbs the supernet as it was at the end of epoch 1 (weights, BN statistics, α), not
    the one of epoch 4, and the result is the selection's genotype; a run cut at the
    selection's first epoch (its checkpoint: the stop's) resumes to the same run."""
    fake_eigenvalues(monkeypatch)
    ends: dict[int, dict[str, torch.Tensor]] = {}
    snapshot = HessianEarlyStop._snapshot

    def spy_snapshot(self, epoch):
        ends[epoch] = {k: v.clone() for k, v in self.method.net.state_dict().items()}
        return snapshot(self, epoch)

    started: list[dict[str, torch.Tensor]] = []
    begin = PerturbationSelection.begin

    def spy_begin(self):
        started.append({k: v.clone() for k, v in self.net.state_dict().items()})
        return begin(self)

    monkeypatch.setattr(HessianEarlyStop, "_snapshot", spy_snapshot)
    monkeypatch.setattr(PerturbationSelection, "begin", spy_begin)
    cfg = tiny_cfg(method="darts-es", space="nb201", subset=64, epochs=6, select="pt",
                   method_args={**FAST, "proj_intv": 1})
    result = search(cfg, out=tmp_path / "straight", progress=False)
    recs = records(tmp_path / "straight")
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 4] + list(range(6, 12))
    assert recs[4]["early_stop"]["epoch"] == 1
    (state,) = started
    assert all(torch.equal(state[k], v) for k, v in ends[1].items())
    assert not all(torch.equal(state[k], v) for k, v in ends[4].items())
    # the result is PT's (every edge decided on the epoch-1 supernet), not the stop genotype
    decided = {d["edge"]: d["op"] for r in recs[5:] for d in r["pt_decision"]}
    assert decided == dict(enumerate(result.genotype.ops))
    assert result.genotype == genotype_from_dict(recs[-1]["genotype"])
    summary = json.loads((tmp_path / "straight/result.json").read_text())
    assert summary["early_stop"]["epoch"] == 1
    assert genotype_from_dict(summary["genotype"]) == result.genotype
    last = (tmp_path / "straight/log.txt").read_text().splitlines()[-1]
    assert "--select pt on the supernet of epoch 2" in last

    monkeypatch.undo()
    fake_eigenvalues(monkeypatch)
    run_epoch = PerturbationSelection.run_epoch

    def cut(self, k, tune):
        if k == 0:
            raise KeyboardInterrupt
        return run_epoch(self, k, tune)

    monkeypatch.setattr(PerturbationSelection, "run_epoch", cut)
    with pytest.raises(KeyboardInterrupt):
        search(cfg, out=tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    fake_eigenvalues(monkeypatch)
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == result.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
