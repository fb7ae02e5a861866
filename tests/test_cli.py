"""The command line: search end to end on digits, Ctrl-C and --resume, profile, list, FLOP
counting, and user errors as one line without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffnas.cli import main
from diffnas.engine.profile import count_flops
from diffnas.engine.runfolder import RunFolder
from diffnas.methods.darts import DARTS
from diffnas.spaces import parse_genotype

TINY = ["--dataset", "digits", "--batch-size", "16", "--channels", "4", "--layers", "2",
        "--no-progress", "--device", "cpu"]


def test_search_end_to_end_json_then_resume_of_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["search", *TINY, "--subset", "96", "--epochs", "1", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["run_dir"] == str(out) and 0 <= result["val_acc"] <= 1
    genotype = parse_genotype(json.dumps(result["genotype"]))
    assert genotype == parse_genotype(str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["dataset"], cfg["subset"], cfg["epochs"], cfg["channels"], cfg["layers"]) == \
        ("digits", 96, 1, 4, 2)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    # --resume of a finished run computes nothing more and prints the human summary
    before = (out / "checkpoint.pt").read_bytes()
    rc = main(["search", *TINY, "--subset", "96", "--epochs", "1", "--out", str(out),
               "--resume"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"genotype: {genotype}" in captured.out and str(out) in captured.out
    assert (out / "checkpoint.pt").read_bytes() == before


def test_ctrl_c_leaves_a_usable_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["search", *TINY, "--space", "nb201", "--subset", "32", "--epochs", "2",
            "--out", str(out)]
    original = DARTS.step
    stop_at = {"epoch": 0}

    def ctrl_c(self, train, val):
        if self.epoch == stop_at["epoch"]:
            raise KeyboardInterrupt
        return original(self, train, val)

    monkeypatch.setattr(DARTS, "step", ctrl_c)
    assert main(args) == 130  # in the first epoch: nothing to resume yet, and it says so
    err = capsys.readouterr().err
    assert "holds no checkpoint yet" in err and "--resume" not in err
    stop_at["epoch"] = 1
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main([*args, "--resume", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert parse_genotype(str(out)).to_dict() == result["genotype"]
    assert torch.load(RunFolder(out).checkpoint, weights_only=True)["epoch"] == 1


def test_profile_json(capsys):
    rc = main(["profile", "--space", "nb201", "--channels", "4", "--layers", "1",
               "--batch-size", "8", "--input-size", "8", "--in-channels", "1", "--iters", "1",
               "--warmup", "0", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["median_s"] > 0 and res["peak_rss_gib"] > 0 and res["flops_per_iter"] > 0
    assert res["iters"] == 1 and len(res["times_s"]) == 1
    assert res["config"]["input_size"] == 8 and res["config"]["channels"] == 4
    assert res["est_epoch_s"] == pytest.approx(res["median_s"] * res["steps_per_epoch"])


def test_depthwise_conv_flops_are_counted_right():
    b, c, h, k = 2, 8, 6, 3
    x = torch.randn(b, c, h, h, requires_grad=True)
    dw = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
    fwd = 2 * b * c * h * h * k * k  # 2 FLOPs per multiply-add, one k×k window per output
    # forward, ∂x and ∂w each cost one forward
    assert count_flops(lambda: dw(x).sum().backward()) == 3 * fwd
    torch_default = FlopCounterMode(display=False)
    with torch_default:
        dw(x).sum().backward()
    # torch 2.x counts the depthwise ∂w as if it were dense: c times too much
    assert torch_default.get_total_flops() > 3 * fwd
    # without ∂x only two of the three
    x_const = x.detach()
    assert count_flops(lambda: dw(x_const).sum().backward()) == 2 * fwd
    # dense convolutions keep torch's count (which is right for them)
    dense = nn.Conv2d(c, 2 * c, k, padding=k // 2, bias=False)
    dense_fwd = 2 * b * 2 * c * h * h * c * k * k
    assert count_flops(lambda: dense(x).sum().backward()) == 3 * dense_fwd


def test_list(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for needle in ("methods:", "darts", "spaces:", "nb201", "objectives:", "ce", "datasets:",
                   "digits", "folder:PATH", "presets:", "darts-cifar10", "cpu"):
        assert needle in text, needle


@pytest.mark.parametrize(("args", "needle"), [
    (["search", "--method", "nope"], "error: unknown method 'nope'; valid: "),
    (["search", "--space", "hex"],
     "error: unknown search space 'hex'; valid: darts, darts-imagenet, nb201"),
    (["search", "--preset", "nope"], "error: unknown preset 'nope'; valid: "),
    (["search", "--epochs", "0"], "error: epochs must be at least 1, got 0"),
    (["search", "--opt", "novalue"], "error: --opt takes KEY=VALUE, got 'novalue'"),
    (["search", *TINY, "--dataset", "mnist-ish"], "error: unknown dataset 'mnist-ish'; valid: "),
    (["search", *TINY, "--subset", "32", "--opt", "noise=0.3"],
     "error: method 'darts' has no option noise; valid: none"),
    (["profile", "--space", "hex"], "error: unknown search space 'hex'"),
])
def test_user_errors_exit_2_with_one_line(args, needle, capsys, tmp_path):
    rc = main([*args, "--out", str(tmp_path / "run")] if args[0] == "search" else args)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith(needle), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()


def test_console_script_error_has_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("diffnas")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "diffnas.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "search", "--method", "nope", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown method 'nope'; valid: ")
    assert "darts" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
