"""Export to TorchScript and ONNX, checked against PyTorch, with CPU latency."""

import builtins
import json

import pytest
import torch

from diffnas.engine.export import export_network
from diffnas.errors import DiffnasError
from diffnas.nets import REGISTRY, build_network


def tiny_net(name="PDARTS"):
    torch.manual_seed(0)
    net = build_network(REGISTRY[name].genotype, channels=4, layers=3, in_channels=1,
                        input_size=8)
    # non-trivial BN statistics, so eval-mode export is checked on real numbers
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 1, 8, 8))
    return net.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, deprecated in 2.10
def test_torchscript_and_onnx_match_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    net = tiny_net()
    threads = torch.get_num_threads()
    rep = export_network(net, tmp_path / "exp", repeats=3, warmup=1, threads=1)
    assert rep["threads"] == 1 and rep["input_shape"] == [1, 1, 8, 8]
    assert torch.get_num_threads() == threads and not net.training
    for fmt in ("torchscript", "onnx"):
        assert rep[fmt]["ok"] and rep[fmt]["max_abs_diff"] <= rep["tolerance"] <= 1e-3
        assert rep[fmt]["latency_ms"] > 0
    assert (tmp_path / "exp" / "model.pt").is_file() and (tmp_path / "exp" / "model.onnx").is_file()
    saved = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert saved["onnx"]["max_abs_diff"] == rep["onnx"]["max_abs_diff"]
    # the saved TorchScript file is a standalone model
    loaded = torch.jit.load(str(tmp_path / "exp" / "model.pt"))
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_supernet_pieces_are_named(tmp_path):
    from diffnas.spaces import build_supernet

    sup = build_supernet("darts", 4, 2, 10, 1)
    with pytest.raises(DiffnasError, match="cannot export: .*supernet"):
        export_network(sup, tmp_path / "x", formats=("torchscript",))
    with pytest.raises(DiffnasError, match="unknown export format"):
        export_network(tiny_net(), tmp_path / "x", formats=("tflite",))


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kw):
        if name == "onnx":
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(DiffnasError, match=r"needs the Python package 'onnx'.*diffnas\[export\]"):
        export_network(tiny_net(), tmp_path / "x", formats=("onnx",), repeats=1, warmup=0)


def test_cli_exports_a_trained_run(tmp_path, capsys):
    from diffnas.cli import main

    run = tmp_path / "run"
    assert main(["train", "DARTS_V1", "--preset", "tiny", "--epochs", "1", "--subset", "64",
                 "--test-subset", "32", "--out", str(run), "--no-progress", "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 1 and result["test_images"] == 32
    assert main(["export", str(run), "--format", "torchscript", "--repeats", "2",
                 "--warmup", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trained"] and rep["torchscript"]["ok"]
    assert (run / "export" / "model.pt").is_file()
    assert main(["export", "NB201_RESNET", "--dataset", "digits", "--layers", "1",
                 "--channels", "4", "--format", "torchscript", "--repeats", "1",
                 "--out", str(tmp_path / "nb"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert not rep["trained"] and rep["input_shape"] == [1, 1, 8, 8]
