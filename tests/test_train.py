"""The retraining loop: recipes, schedules, run folders, exact resume, the ImageNet-style reader."""

import json
import math

import numpy as np
import pytest
import torch

from diffnas.data.imagenet import ImageFolderStream, centre_boxes, crop_boxes, draw_crops
from diffnas.engine import train as train_mod
from diffnas.engine.train import (
    TRAIN_PRESETS,
    TrainConfig,
    load_trained,
    lr_at,
    resolve_train_config,
    train,
)
from diffnas.errors import DiffnasError


def tiny_train(**kw):
    """Digits (8×8), 3 cells × 4 channels, 96 training images: about a second an epoch."""
    base = dict(genotype="DARTS_V2", dataset="digits", subset=96, test_subset=64, network="cifar",
                channels=4, layers=3, epochs=2, batch_size=16, lr=0.05, cutout=2,
                crop_padding=1, drop_path=0.2, device="cpu", eval_batch_size=64)
    base.update(kw)
    return resolve_train_config(None, **base)


def test_darts_recipes_are_the_papers():
    c = resolve_train_config("darts-cifar")
    assert (c.epochs, c.batch_size, c.lr, c.schedule, c.lr_min, c.momentum, c.weight_decay,
            c.cutout, c.drop_path, c.auxiliary_weight, c.grad_clip) == (
        600, 96, 0.025, "cosine", 0.0, 0.9, 3e-4, 16, 0.2, 0.4, 5.0)
    i = resolve_train_config("darts-imagenet")
    assert (i.epochs, i.batch_size, i.lr, i.schedule, i.lr_gamma, i.weight_decay,
            i.label_smoothing, i.auxiliary_weight, i.network, i.image_size) == (
        250, 128, 0.1, "exponential", 0.97, 3e-5, 0.1, 0.4, "imagenet", 224)
    assert {"darts-cifar", "darts-imagenet", "pdarts-imagenet", "cpu"} <= set(TRAIN_PRESETS)
    assert resolve_train_config("cpu").dataset == "fashion-mnist"


def test_schedules():
    c = TrainConfig(epochs=600, lr=0.025)
    assert lr_at(c, 0) == 0.025 and lr_at(c, 300) == pytest.approx(0.0125)
    assert lr_at(c, 599) == pytest.approx(0.025 * 0.5 * (1 + math.cos(math.pi * 599 / 600)))
    e = TrainConfig(epochs=250, lr=0.1, schedule="exponential", lr_gamma=0.97)
    assert lr_at(e, 10) == pytest.approx(0.1 * 0.97 ** 10)
    lin = TrainConfig(epochs=250, lr=0.1, schedule="linear")
    assert lr_at(lin, 0) == pytest.approx(0.1) and lr_at(lin, 100) == pytest.approx(0.1 * 145 / 245)
    assert lr_at(lin, 245) == pytest.approx(0.1 * 5 / (245 * 5))  # 1/5 slope for the last 5
    assert lr_at(lin, 249) == pytest.approx(0.1 / (245 * 5))
    w = TrainConfig(epochs=250, lr=0.5, schedule="linear", warmup_epochs=5)
    assert lr_at(w, 0) == pytest.approx(0.5 / 5)  # warm-up: (epoch + 1) / 5 of the schedule
    assert lr_at(w, 4) == pytest.approx(0.5 * 241 / 245)
    assert lr_at(w, 5) == pytest.approx(0.5 * 240 / 245)


def test_bad_config():
    with pytest.raises(DiffnasError, match="unknown train preset 'nope'"):
        resolve_train_config("nope")
    with pytest.raises(DiffnasError, match="schedule must be one of"):
        resolve_train_config(None, schedule="step")
    with pytest.raises(DiffnasError, match="unknown train config field"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(DiffnasError, match="imagenet:' needs the folder"):
        train(tiny_train(dataset="imagenet:"), progress=False)


def test_train_writes_a_run_folder(tmp_path):
    res = train(tiny_train(), out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "genotype.json", "network.json", "metrics.jsonl",
                 "checkpoint.pt", "log.txt", "result.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert lines[0]["drop_path_prob"] == 0.0 and lines[1]["drop_path_prob"] == pytest.approx(0.1)
    result = json.loads((run / "result.json").read_text())
    assert result["test_acc"] == res.test_acc == lines[-1]["test_acc"]
    assert 0.0 <= res.test_acc <= 1.0 and result["test_images"] == 64
    assert result["params"] > 0 and result["madds"] > 0 and result["params_aux"] > 0
    assert result["genotype_source"] == "DARTS_V2"
    # the config records the genotype itself, not the name (a run folder may change later)
    assert json.loads((run / "config.json").read_text())["genotype"].startswith("Genotype(")
    net, args = load_trained(run)
    assert args["in_channels"] == 1 and args["input_size"] == 8
    assert not net.training and net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(DiffnasError, match="already holds a checkpoint"):
        train(tiny_train(), out=run, progress=False)


def test_resume_is_exact(tmp_path, monkeypatch):
    cfg = tiny_train(epochs=3)
    full = train(cfg, out=tmp_path / "a", progress=False)

    calls = {"n": 0}
    real_step = train_mod.Trainer.step

    def crash_in_epoch_2(self, x, y):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 3:  # 6 steps per epoch: crash mid-way through the third
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(train_mod.Trainer, "step", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "b", progress=False)
    monkeypatch.setattr(train_mod.Trainer, "step", real_step)
    resumed = train(cfg, out=tmp_path / "b", resume=True, progress=False)
    assert resumed.test_acc == full.test_acc
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda s: {k: v for k, v in json.loads(s).items()  # noqa: E731
                       if "time" not in k and k not in ("images_per_s", "elapsed_s")
                       and "mem" not in k}
    assert [strip(x) for x in ma] == [strip(x) for x in mb]
    with pytest.raises(DiffnasError, match="another config.*lr"):
        train(cfg.replace(lr=0.1), out=tmp_path / "b", resume=True, progress=False)


def test_nb201_genotype_and_no_aux(tmp_path):
    res = train(tiny_train(genotype="NB201_RESNET", layers=1, epochs=1, auxiliary_weight=0.0),
                out=tmp_path / "nb", progress=False)
    assert res.result["network"] == "NB201Network" and res.result["params_aux"] == 0


def test_cpu_device_has_no_amp():
    from diffnas.nets import build_network

    net = build_network(train_mod.parse_genotype("DARTS_V2"), channels=4, layers=3,
                        in_channels=1, input_size=8)
    t = train_mod.Trainer(tiny_train(), net, torch.device("cpu"))
    assert t.amp_dtype is None and t.scaler is None


# ------------------------------------------------------------------ ImageNet-style folders
def _image_folder(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg" if i % 2 else d / f"{i}.png")
    return root


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[500, 375], [64, 640], [33, 40]] * 200)
    boxes = crop_boxes(sizes, draw_crops(len(sizes), g))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= sizes[:, 0]).all() and (boxes[:, 3] <= sizes[:, 1]).all()
    area = (w * h).double() / (sizes[:, 0] * sizes[:, 1]).double()
    assert area.min() > 0.05 and area.max() <= 1.0
    ratio = w.double() / h.double()
    assert ratio.min() > 0.7 and ratio.max() < 1.45
    c = centre_boxes(torch.tensor([[256, 512]]))
    assert c.tolist() == [[16, 144, 240, 368]]  # 224/256 of the short side, centred


def test_image_folder_stream(tmp_path):
    root = _image_folder(tmp_path / "inet", [(50, 40), (30, 70), (64, 64)])
    s = ImageFolderStream(root, "train", batch_size=4, size=16, seed=1, workers=2)
    assert (s.num_samples, s.num_classes, len(s)) == (6, 2, 1)
    x, y = next(s.epoch(0))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16) and y.shape == (4,)
    x2, y2 = next(s.epoch(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same epoch, same batch (exact resume)
    x3, _ = next(s.epoch(1))
    assert not torch.equal(x, x3)
    t = ImageFolderStream(root, "test", batch_size=4, size=16)
    batches = list(t.epoch(0))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DiffnasError, match="no val/ subfolder"):
        ImageFolderStream(root / "train", "test", 4)


def test_train_on_an_imagenet_style_folder(tmp_path):
    root = _image_folder(tmp_path / "inet", [(50, 40), (40, 50), (64, 64), (48, 36)])
    cfg = tiny_train(dataset=f"imagenet:{root}", network="auto", image_size=32, subset=None,
                     test_subset=None, epochs=1, batch_size=4, cutout=0, workers=2)
    res = train(cfg, out=tmp_path / "run", progress=False)
    assert res.result["network"] == "NetworkImageNet" and res.result["input_size"] == 32
    assert res.result["test_images"] == 8
