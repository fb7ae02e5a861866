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
    # every reference ImageNet script applies ColorJitter(0.4, 0.4, 0.4, 0.2); CIFAR ones none
    for name in ("darts-imagenet", "pdarts-imagenet", "semantic-imagenet", "cdarts-imagenet"):
        assert resolve_train_config(name).color_jitter == (0.4, 0.4, 0.4, 0.2), name
    off = (0.0, 0.0, 0.0, 0.0)
    assert c.color_jitter == off == resolve_train_config("cdarts-cifar").color_jitter


def test_semantic_and_cdarts_recipes_are_the_reference_scripts():
    fields = ("epochs", "batch_size", "lr", "schedule", "warmup_epochs", "momentum",
              "weight_decay", "label_smoothing", "auxiliary_weight", "drop_path", "cutout",
              "grad_clip", "network", "image_size")
    values = lambda c: tuple(getattr(c, f) for f in fields)  # noqa: E731
    # Semantic-DARTS train_imagenet_dist.py defaults (commit d525eed)
    assert values(resolve_train_config("semantic-imagenet")) == (
        250, 1024, 0.5, "linear", 5, 0.9, 3e-5, 0.1, 0.0, 0.0, 0, 5.0, "imagenet", 224)
    # CDARTS scripts/run_retrain_cifar_1gpu.sh and run_retrain_imagenet.sh (8 GPUs × 128)
    assert values(resolve_train_config("cdarts-cifar")) == (
        600, 128, 0.025, "cosine", 0, 0.9, 5e-4, 0.0, 0.4, 0.3, 16, 5.0, "cifar", None)
    assert values(resolve_train_config("cdarts-imagenet")) == (
        250, 1024, 0.5, "cosine", 5, 0.9, 3e-5, 0.1, 0.4, 0.0, 0, 5.0, "imagenet", 224)
    for name in ("semantic-imagenet", "cdarts-cifar", "cdarts-imagenet"):
        desc = TRAIN_PRESETS[name][0]
        assert ("d525eed" if name.startswith("semantic") else "baaf64a") in desc, name
    assert resolve_train_config("cdarts-cifar").lr_min == 0.0


def reference_semantic_lr(epoch, epochs=250, base=0.5):
    """Semantic-DARTS train_imagenet_dist.py: adjust_lr, then the warm-up of epochs < 5."""
    if epochs - epoch > 5:
        lr = base * (epochs - 5 - epoch) / (epochs - 5)
    else:
        lr = base * (epochs - epoch) / ((epochs - 5) * 5)
    return lr * (epoch + 1) / 5.0 if epoch < 5 else lr


def test_warmup_and_linear_decay_as_the_reference():
    c = resolve_train_config("semantic-imagenet")
    for e in range(250):
        assert lr_at(c, e) == pytest.approx(reference_semantic_lr(e), rel=1e-12, abs=0), e
    assert lr_at(c, 0) == pytest.approx(0.1)  # 0.5 · 245/245 · 1/5
    assert lr_at(c, 4) == pytest.approx(0.5 * 241 / 245)
    assert lr_at(c, 5) == pytest.approx(0.5 * 240 / 245) and lr_at(c, 5) < lr_at(c, 4)
    assert lr_at(c, 249) == pytest.approx(0.5 / (245 * 5))
    # CDARTS ImageNet: cosine (CosineAnnealingLR(250)) times the same warm-up
    d = resolve_train_config("cdarts-imagenet")
    assert lr_at(d, 0) == pytest.approx(0.1)
    assert lr_at(d, 2) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 2 / 250)) * 3 / 5)
    assert lr_at(d, 5) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 5 / 250)))


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


def test_best_and_final_test_accuracy():
    history = [{"epoch": 0, "test_acc": 0.5, "test_top5": 0.9},
               {"epoch": 1, "test_acc": 0.7, "test_top5": 0.88},
               {"epoch": 2},  # not evaluated
               {"epoch": 3, "test_acc": 0.7, "test_top5": 0.95}]
    final = {"epoch": 4, "test_acc": 0.6, "test_top5": 0.93}
    best = train_mod.best_test(history + [final], final)
    # the first epoch reaching the best top-1; top-5's best is tracked on its own
    assert best == {"best_test_acc": 0.7, "best_epoch": 1, "test_top5": 0.93,
                    "best_test_top5": 0.95}
    assert train_mod.best_test([], {"epoch": 0, "test_acc": 0.2}) == {
        "best_test_acc": 0.2, "best_epoch": 0}


def test_top5_by_hand():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):  # 12 classes; sample i ranks class 11 first, then 10, 9, ...
            return torch.arange(12.0).expand(len(x), 12) + 0 * self.w

    class Stream:
        def epoch(self, e):
            yield torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([11, 7, 6, 0])

    t = train_mod.Trainer(tiny_train(), Fixed(), torch.device("cpu"))
    loss, top1, top5 = t.evaluate(Stream(), train_mod.BatchAugment((0.0,), (1.0,)))
    assert (top1, top5) == (0.25, 0.5)  # 11 is first; 7 is 5th; 6 and 0 are out of the top 5
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.arange(12.0).expand(4, 12), torch.tensor([11, 7, 6, 0]))))


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
    assert result["test_acc"] == res.test_acc == lines[-1]["test_acc"]  # the final epoch's
    best = max(lines, key=lambda r: r["test_acc"])
    assert result["best_test_acc"] == best["test_acc"] and result["best_epoch"] == best["epoch"]
    assert "test_top5" not in result and "test_top5" not in lines[-1]  # 10 classes: top-1 only
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
def _image_folder(root, sizes, classes=("cat", "dog")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
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


def test_imagenet_folder_with_colour_jitter_reports_top5(tmp_path):
    classes = [f"c{i:02d}" for i in range(12)]
    root = _image_folder(tmp_path / "inet", [(40, 36), (36, 44)], classes)
    cfg = tiny_train(dataset=f"imagenet:{root}", network="auto", image_size=32, subset=None,
                     test_subset=None, epochs=2, batch_size=8, cutout=0, workers=2,
                     color_jitter=(0.4, 0.4, 0.4, 0.2))
    res = train(cfg, out=tmp_path / "run", progress=False)
    r = res.result
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert r["test_top5"] == lines[-1]["test_top5"] and r["test_acc"] <= r["test_top5"]
    assert r["best_test_top5"] == max(x["test_top5"] for x in lines)
    assert r["best_test_acc"] == max(x["test_acc"] for x in lines)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["color_jitter"] == [
        0.4, 0.4, 0.4, 0.2]
    with pytest.raises(DiffnasError, match="four strengths"):
        tiny_train(color_jitter=(0.4, 0.4))
