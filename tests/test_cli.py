"""The command line: search end to end on digits, Ctrl-C and --resume, profile, list, FLOP
counting, and user errors as one line without a traceback."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffnas.cli import interrupted_message, main
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


def test_ctrl_c_in_a_grid_says_to_run_it_again(tmp_path, capsys, monkeypatch):
    import diffnas.engine.experiment as experiment

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_experiment", ctrl_c)
    out = tmp_path / "exp"
    argv = ["experiment", "--out", str(out), "--presets", "tiny", "--spaces", "nb201",
            "--seeds", "0", "--device", "cpu", "--in-process", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"finished runs in {out} are kept" in err and "run the same command again" in err
    assert "--resume" not in err and "Traceback" not in err
    # a command that neither resumes nor writes a run folder says only that it stopped
    assert interrupted_message(argparse.Namespace(command="latency", out="t.json")) == \
        "interrupted"


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
     "error: unknown search space 'hex'; valid: darts, darts-imagenet, mbconv, nb201, "
     "nb201-imagenet"),
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


# ---------------------------------------------------------------- rough edges of a new user
def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_out_that_is_an_existing_file_is_one_error(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    rc = main(["search", *TINY, "--subset", "32", "--epochs", "1", "--out", str(blocker)])
    _one_line_error(capsys, rc, str(blocker), "existing file")
    rc = main(["search", *TINY, "--subset", "32", "--out", str(blocker / "run")])
    _one_line_error(capsys, rc, str(blocker))  # a file in the way further up
    rc = main(["train", "--preset", "tiny", "--no-progress", "--out", str(blocker)])
    _one_line_error(capsys, rc, str(blocker))
    assert blocker.read_text() == "keep me"


def test_named_data_dir_that_does_not_exist_is_refused(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    rc = main(["search", "--preset", "cpu", "--data-dir", str(missing), "--no-progress",
               "--out", str(tmp_path / "run")])
    _one_line_error(capsys, rc, str(missing), "does not exist")
    rc = main(["train", "--preset", "cpu", "--data-dir", str(missing), "--no-progress",
               "--out", str(tmp_path / "train")])
    _one_line_error(capsys, rc, str(missing), "does not exist")


def test_no_arguments_lists_the_commands_and_version(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("search", "train", "info", "list", "profile", "export", "experiment"):
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [command])
        assert len(line.split()) > 2  # a description on the command's line
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    from diffnas import __version__
    assert capsys.readouterr().out.strip() == f"diffnas {__version__}"


def test_search_config_from_a_run_folder_and_files(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["search", *TINY, "--subset", "32", "--epochs", "1", "--seed", "4",
                 "--method", "semantic", "--obj-opt", "mask_ratio=0.5", "--out", str(first)]) == 0
    recorded = json.loads((first / "config.json").read_text())
    # a run folder's config, one flag overriding it (option dicts merge)
    assert main(["search", "--config", str(first), "--seed", "5", "--no-progress",
                 "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again == {**recorded, "seed": 5}
    # a JSON file with some fields: the rest from the defaults of --preset
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"dataset": "digits", "epochs": 3, "channels": 4}))
    from diffnas.cli import _config, build_parser
    cfg = _config(build_parser().parse_args(["search", "--config", str(part), "--preset",
                                             "tiny", "--epochs", "1"]))
    assert (cfg.dataset, cfg.epochs, cfg.channels, cfg.layers) == ("digits", 1, 4, 3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": 1, "epochz": 2, "colour": 1}))
    rc = main(["search", "--config", str(bad), "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, str(bad), "epochz", "colour")
    rc = main(["search", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, "nope.json")
    assert not (tmp_path / "x").exists()


def test_yaml_config_and_the_message_without_pyyaml(tmp_path, capsys, monkeypatch):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dataset: digits\nepochs: 2\nobjective_args:\n  mask_ratio: 0.2\n")
    from diffnas.cli import _config, build_parser
    args = build_parser().parse_args(["search", "--config", str(cfg_file)])
    if importlib.util.find_spec("yaml") is not None:
        cfg = _config(args)
        assert (cfg.dataset, cfg.epochs, cfg.objective_args) == ("digits", 2,
                                                                 {"mask_ratio": 0.2})
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    rc = main(["search", "--config", str(cfg_file), "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, str(cfg_file), "PyYAML")


def test_train_config_from_a_run_folder(tmp_path, capsys):
    first = tmp_path / "t1"
    base = ["train", "--preset", "tiny", "--epochs", "1", "--subset", "64", "--test-subset",
            "32", "--no-progress", "--device", "cpu"]
    assert main([*base, "--out", str(first)]) == 0
    recorded = json.loads((first / "config.json").read_text())
    assert main(["train", "--config", str(first), "--seed", "3", "--no-progress",
                 "--out", str(tmp_path / "t2")]) == 0
    again = json.loads((tmp_path / "t2" / "config.json").read_text())
    assert again == {**recorded, "seed": 3}
    search_cfg = tmp_path / "s.json"
    search_cfg.write_text(json.dumps({"method": "darts", "epochs": 1}))
    rc = main(["train", "--config", str(search_cfg), "--out", str(tmp_path / "t3")])
    _one_line_error(capsys, rc, str(search_cfg), "unknown train config field(s) method")


def test_tensorboard_scalars_and_alpha_images(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["search", *TINY, "--subset", "32", "--epochs", "2", "--tensorboard",
                 "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train_loss", "val_acc", "skip_count", "alpha_std"):
        assert [e.step for e in events.Scalars(tag)] == [0, 1], tag
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.Scalars("val_acc")[1].value == pytest.approx(metrics[1]["val_acc"])
    assert set(tags["images"]) == {"alpha/normal", "alpha/reduce"}
    image = events.Images("alpha/normal")[-1]
    edges, ops = len(metrics[1]["alpha"]["normal"]), len(metrics[1]["alpha"]["normal"][0])
    assert (image.height, image.width) == (edges * 12, ops * 12)
    # without the package: one line naming the extra, before any work
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    rc = main(["search", *TINY, "--tensorboard", "--out", str(tmp_path / "x")])
    _one_line_error(capsys, rc, "diffnas[tensorboard]")
    assert not (tmp_path / "x").exists()


def test_info_imagenet_dataset_counts_the_imagenet_network(capsys):
    assert main(["info", "PDARTS", "--dataset", "imagenet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["network"] == "NetworkImageNet" and (res["channels"], res["layers"]) == (48, 14)
    assert res["madds_all_m"] == pytest.approx(557, rel=0.01)  # P-DARTS' printed 557 M
    assert main(["info", "PDARTS", "--dataset", "imagenet"]) == 0
    text = capsys.readouterr().out
    assert "counted: NetworkImageNet" in text and "implied by --dataset imagenet" in text
    assert main(["info", "PDARTS", "--dataset", "cifar10"]) == 0
    assert "counted: NetworkCIFAR" in capsys.readouterr().out


def test_license_and_ci_lint_before_tests():
    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the diffnas authors" in text
    assert 'license = { text = "MIT" }' in (root / "pyproject.toml").read_text()
    steps = [ln.strip() for ln in (root / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    lint = next(i for i, ln in enumerate(steps) if "ruff check" in ln)
    assert lint < steps.index("./test.sh")


def test_set_gives_any_search_field_under_the_flags(tmp_path, capsys):
    """``--set KEY=VALUE`` reaches every SearchConfig field (the methods' docstrings give
    their paper-text variants that way): JSON values, tuples as comma lists, option dicts
    merged with --opt, and the dedicated flags win."""
    from diffnas.cli import _config, build_parser

    def config(*argv):
        return _config(build_parser().parse_args(["search", "--preset", "cdarts-cifar10",
                                                  *argv]))

    cfg = config("--set", "a_betas=0.5,0.99", "--set", "cutout=16", "--set", "epochs=9",
                 "--epochs", "2", "--set", 'method_args={"lam": 4, "distill": "kl"}',
                 "--opt", "lam=2", "--set", "color_jitter=[0.1, 0, 0, 0]")
    assert cfg.a_betas == (0.5, 0.99) and cfg.cutout == 16 and cfg.epochs == 2
    assert cfg.color_jitter == (0.1, 0.0, 0.0, 0.0)
    assert (cfg.method_args["distill"], float(cfg.method_args["lam"])) == ("kl", 2.0)
    assert cfg.method_args["s_e"] == 1.0  # the preset's other options stay
    from diffnas.config import resolve_config  # `diffnas experiment --set` passes the text

    assert resolve_config(None, a_betas="0.5,0.99").a_betas == (0.5, 0.99)
    for argv, needles in ((["--set", "epochz=1"], ("epochz", "valid:", "epochs")),
                          (["--set", "a_betas=x,y"], ("a_betas", "comma-separated numbers")),
                          (["--set", "method_args=3"], ("method_args", "JSON object"))):
        rc = main(["search", *argv, "--out", str(tmp_path / "x")])
        _one_line_error(capsys, rc, *needles)
    assert not (tmp_path / "x").exists()
