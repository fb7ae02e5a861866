"""Figures from run folders: diffnas plot, draw, cam, landscape (diffnas.analysis)."""

import json
import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from diffnas.cli import main  # noqa: E402
from diffnas.errors import DiffnasError  # noqa: E402


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    from diffnas.config import resolve_config
    from diffnas.engine.search import search

    torch.set_num_threads(1)
    cfg = resolve_config(None, dataset="digits", subset=96, epochs=2, batch_size=16, channels=4,
                         layers=2, crop_padding=1, device="cpu")
    out = tmp_path_factory.mktemp("search") / "run"
    search(cfg, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "DARTS_V2", "--preset", "tiny", "--epochs", "1", "--subset", "64",
                 "--test-subset", "16", "--layers", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--json"]) == 0
    return out


def _png(path, size=None):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        if size:
            assert im.size == size
        assert im.convert("L").getextrema()[0] < 255  # something is drawn


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_plot_writes_alpha_heatmaps_equal_to_the_runs_snapshots(search_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(search_run), "--out", str(out), "--size", "640x480"]) == 0
    recs = _records(search_run)
    for kind in recs[-1]["alpha"]:
        _png(out / f"alpha_{kind}.png", (640, 480))
        data = json.loads((out / f"alpha_{kind}.json").read_text())
        assert data["epochs"] == [0, 1]
        assert data["alpha"] == {str(r["epoch"]): r["alpha"][kind] for r in recs}
        assert len(data["ops"]) == 8 and data["edges"][0] == "c_{k-2}→2"
        evo = json.loads((out / f"alpha_evolution_{kind}.json").read_text())
        assert evo["alpha"] == [r["alpha"][kind] for r in recs]
    std = json.loads((out / "alpha_std.json").read_text())
    assert std["alpha_std_normal"]["mean"] == [r["alpha_std_normal"] for r in recs]
    assert std["alpha_std"]["mean"] == [r["alpha_std"] for r in recs]
    counts = json.loads((out / "counts.json").read_text())
    assert counts["skip_count"]["mean"] == [r["skip_count"] for r in recs]
    acc = json.loads((out / "acc.json").read_text())
    assert acc["val_acc"]["mean"] == [r["val_acc"] for r in recs]
    for stem in ("loss", "acc", "counts", "alpha_std"):
        _png(out / f"{stem}.png", (640, 480))
    assert not (out / "hessian_eig.png").exists()  # not logged by this run
    # chosen epochs (1-based on the command line)
    assert main(["plot", str(search_run), "--out", str(tmp_path / "e"), "--epochs", "2"]) == 0
    assert json.loads((tmp_path / "e" / "alpha_normal.json").read_text())["epochs"] == [1]
    capsys.readouterr()
    assert main(["plot", str(search_run), "--out", str(tmp_path / "e"), "--epochs", "9"]) == 2
    assert "epoch(s) 8 not in the run's metrics" in capsys.readouterr().err


def test_plot_experiment_bands_are_mean_and_std_over_seeds(search_run, tmp_path):
    from diffnas.analysis.curves import plot

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text("{}")
    recs = _records(search_run)
    for seed, shift in ((0, 0.0), (1, 0.2)):
        d = exp / "runs" / "cpu" / "darts" / f"seed{seed}"
        d.mkdir(parents=True)
        rows = [{**r, "val_acc": r["val_acc"] + shift, "hessian_eig": 1.0 + seed} for r in recs]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot(exp, size=(500, 400))
    assert exp / "figures" / "acc_cpu.png" in paths
    _png(exp / "figures" / "acc_cpu.png", (500, 400))
    acc = json.loads((exp / "figures" / "acc_cpu.json").read_text())
    band = acc["darts val_acc"]
    assert band["mean"] == pytest.approx([r["val_acc"] + 0.1 for r in recs])
    assert band["std"] == pytest.approx([0.1, 0.1]) and band["seeds"] == 2
    eig = json.loads((exp / "figures" / "hessian_eig_cpu.json").read_text())
    assert eig["darts"]["mean"] == [1.5, 1.5] and eig["darts"]["std"] == [0.5, 0.5]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_darts_cells_and_an_nb201_cell(search_run, tmp_path, capsys):
    pytest.importorskip("graphviz")
    assert main(["draw", "DARTS_V2", "--out", str(tmp_path / "v2.png")]) == 0
    for kind in ("normal", "reduce"):
        _png(tmp_path / f"v2_{kind}.png")
        assert (tmp_path / f"v2_{kind}.svg").read_text().lstrip().startswith("<?xml")
        assert (tmp_path / f"v2_{kind}.pdf").read_bytes().startswith(b"%PDF")
    gv = (tmp_path / "v2_normal.gv").read_text()
    assert gv.count("sep_conv_3x3") == 5 and gv.count("skip_connect") == 2 and "c_{k}" in gv
    # a run folder: its genotype.json
    assert main(["draw", str(search_run), "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run_normal.json").read_text())["genotype"]
    assert saved == json.loads((search_run / "genotype.json").read_text())
    assert main(["draw", "NB201_RESNET", "--out", str(tmp_path / "nb")]) == 0
    _png(tmp_path / "nb.png")
    gv = (tmp_path / "nb.gv").read_text()
    assert "none" not in gv and gv.count("nor_conv_3x3") == 2


def test_draw_without_graphviz_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere
    assert main(["draw", "DARTS_V2", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install graphviz" in err
    assert not list(tmp_path.glob("x*"))


def test_missing_matplotlib_names_the_plot_extra(monkeypatch, search_run, capsys):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert main(["plot", str(search_run)]) == 2
    assert "diffnas[plot]" in capsys.readouterr().err


class LeftHalfNet(nn.Module):
    """A cell (conv + ReLU) and a head that pools the left half of the feature map only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cells = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())])
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.cells[0](x)
        return self.fc(h[..., : h.shape[-1] // 2].mean((2, 3)))


def test_layercam_of_a_left_half_network_lies_on_the_left_half():
    from diffnas.analysis.cam import cam_maps

    net = LeftHalfNet()
    x = torch.randn(4, 1, 16, 16)
    res = cam_maps(net, x)
    assert res["layer"] == "cells.0"
    m = res["layercam"]
    assert float(m[..., :8].sum()) > 0 and float(m[..., 8:].sum()) == 0
    # Grad-CAM: ReLU(Σ_k mean(∂y_c/∂A_k) A_k), by hand
    a = net.cells[0](x).detach()
    w = net.fc.weight[res["target"]].detach() / (16 * 8)  # ∂y/∂A on the left half
    grad_mean = w / 2  # the mean over all positions: half of them have gradient 0
    want = torch.relu((grad_mean[:, :, None, None] * a).sum(1))
    want = want / want.flatten(1).amax(1)[:, None, None]
    assert torch.allclose(res["gradcam"], want, atol=1e-5)
    assert torch.equal(res["target"], net(x).argmax(1))
    assert (cam_maps(net, x, target=2)["target"] == 2).all()
    with pytest.raises(DiffnasError, match="out of range"):
        cam_maps(net, x, target=3)
    with pytest.raises(DiffnasError, match="no layer 'cells.9'"):
        cam_maps(net, x, layer="cells.9")


def test_cam_grid_of_a_trained_run(train_run, tmp_path, capsys):
    out = tmp_path / "cam.png"
    assert main(["cam", str(train_run), "--dataset", "digits", "--n", "3", "--out",
                 str(out), "--size", "600x600"]) == 0
    _png(out, (600, 600))
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["layer"] == "cells.1" and len(data["images"]) == 3
    rec = data["images"][0]
    assert rec["target"] == rec["predicted"] and len(rec["layercam"]) == 8
    assert max(max(r) for r in rec["gradcam"]) == pytest.approx(1.0, abs=1e-4) or \
        max(max(r) for r in rec["gradcam"]) == 0
    img = tmp_path / "digit.png"
    Image.new("L", (20, 20), 128).save(img)
    assert main(["cam", str(train_run), "--images", str(img), "--class", "4", "--layer",
                 "cells.0", "--out", str(tmp_path / "one.png")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["layer"] == "cells.0" and one["images"][0]["target"] == 4
    capsys.readouterr()
    assert main(["cam", str(train_run), "--images", str(img), "--layer", "nope"]) == 2
    assert "no layer 'nope'" in capsys.readouterr().err


def test_landscape_at_the_origin_is_the_networks_loss_on_the_batch(train_run, tmp_path):
    from diffnas.analysis.landscape import _fixed_batches, landscape
    from diffnas.data import BatchAugment, load_dataset
    from diffnas.engine.train import load_trained

    res = landscape(train_run, tmp_path, grid=3, span=0.5, batches=1, batch_size=16,
                    size=(700, 300), progress=False)
    _png(res["landscape"], (700, 300))
    data = json.loads((tmp_path / "landscape.json").read_text())
    assert len(data["loss"]) == 3 and all(len(r) == 3 for r in data["loss"])
    net, _ = load_trained(train_run)
    d = load_dataset("digits", "train")
    (x, y), = _fixed_batches(d.images, d.labels, 1, 16, 0)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(net(BatchAugment(d.mean, d.std)(x, train=False)),
                                                 y))
    assert data["origin_loss"] == pytest.approx(want, rel=1e-5)
    assert data["loss"][1][1] == data["origin_loss"]
    assert len({round(v, 6) for r in data["loss"] for v in r}) > 1  # it moves off the origin
    assert "alpha" not in res  # a trained network has no α


def test_filter_normalised_direction_matches_each_filter_norm():
    from diffnas.analysis.landscape import filter_normalised_direction

    conv, bn = torch.randn(5, 3, 3, 3), torch.randn(5)
    d_conv, d_bn = filter_normalised_direction([conv, bn], torch.Generator().manual_seed(0))
    assert torch.allclose(d_conv.flatten(1).norm(dim=1), conv.flatten(1).norm(dim=1))
    assert torch.equal(d_bn, torch.zeros(5))


def test_landscape_of_a_search_run_with_the_alpha_line(search_run, tmp_path, capsys):
    assert main(["landscape", str(search_run), "--grid", "3", "--batches", "1",
                 "--batch-size", "8", "--alpha-direction", "hessian", "--out", str(tmp_path),
                 "--no-progress", "--size", "600x300"]) == 0
    assert "dominant eigenvector" in capsys.readouterr().out
    two = json.loads((tmp_path / "landscape.json").read_text())
    one = json.loads((tmp_path / "landscape_alpha.json").read_text())
    _png(tmp_path / "landscape_alpha.png", (300, 300))
    assert one["direction"] == "hessian" and one["t"][1] == 0.0
    assert one["loss"][1] == pytest.approx(two["origin_loss"], rel=1e-6)  # same α, same batch
    assert isinstance(one["eigenvalue"], float)
    assert main(["landscape", str(search_run), "--grid", "3", "--batches", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "random unit direction" in capsys.readouterr().out  # auto: no hessian_eig logged


def test_dominant_eigenvector_of_a_quadratic():
    from diffnas.analysis.landscape import dominant_eigenvector

    q = torch.diag(torch.tensor([1.0, -4.0, 2.0, 0.5]))
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    unused = torch.zeros(3, requires_grad=True)

    def loss():
        x = torch.cat([a, b])
        return 0.5 * x @ q @ x + 0 * a.sum()

    v, eig = dominant_eigenvector(loss, [a, b, unused], iters=200, tol=1e-9)
    assert eig == pytest.approx(-4.0, rel=1e-4)
    assert abs(float(v[0][1])) == pytest.approx(1.0, abs=1e-3) and torch.equal(v[2],
                                                                              torch.zeros(3))
