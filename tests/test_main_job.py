"""The main job's presets end to end (``./run.sh``: ``search --preset semantic-cpu`` then
``train RUN --preset cpu``) on a tiny subset of the real Fashion-MNIST — correctness, not
timing — and the retrain's one-cycle schedule against torch's OneCycleLR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffnas.cli import main
from diffnas.config import PRESETS
from diffnas.data import readers
from diffnas.engine.train import TRAIN_PRESETS, TrainConfig, lr_at

FASHION = readers.SYSTEM_DATA_DIRS["fashion-mnist"][0]


def test_onecycle_equals_torch_onecyclelr():
    cfg = TrainConfig(epochs=3, lr=0.2, schedule="onecycle")
    steps = 7
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=3 * steps,
                                              cycle_momentum=False)
    for i in range(3 * steps):
        assert lr_at(cfg, i // steps, i % steps, steps) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), i
        opt.step()
        ref.step()


def test_main_job_presets():
    search = PRESETS["semantic-cpu"].values
    assert search["method"] == "semantic" and search["objective_args"]["decoder"] == "light"
    train = TRAIN_PRESETS["cpu"][1]
    assert train["dataset"] == "fashion-mnist" and train["subset"] == 45_000
    assert train["epochs"] == train["eval_every"] == 3  # tested once, after the last epoch
    assert train.get("test_subset") is None  # tested on all 10,000 test images
    assert train["schedule"] == "onecycle" and train["auxiliary_weight"] == 0.0


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_main_job_end_to_end_on_a_tiny_subset(tmp_path, capsys):
    run, trained = tmp_path / "main", tmp_path / "main-train"
    assert main(["search", "--preset", "semantic-cpu", "--subset", "64", "--epochs", "1",
                 "--no-progress", "--device", "cpu", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "semantic" and cfg["objective_args"]["decoder"] == "light"
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_masked_acc" in metrics  # the MIM objective's masked view
    assert main(["train", str(run), "--preset", "cpu", "--subset", "256", "--test-subset",
                 "200", "--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu",
                 "--out", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "on 200 fashion-mnist test images" in out
    first = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(0.2 / 25)  # one-cycle starts at lr / 25
    result = json.loads((trained / "result.json").read_text())
    assert result["genotype"] == json.loads((run / "genotype.json").read_text())
    assert 0.0 <= result["test_acc"] <= 1.0 and result["params_aux"] == 0
    net = json.loads((trained / "network.json").read_text())
    assert net["auxiliary"] is False and net["in_channels"] == 1 and net["input_size"] == 28
    log = Path(trained / "log.txt").read_text()
    assert "256 train / 200 test images" in log
