"""Tests for the pretext objectives (Semantic-DARTS Table VII baselines)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.engine.profile import profile
from diffnas.engine.search import search
from diffnas.errors import DiffnasError
from diffnas.objectives import build_objective
from diffnas.objectives.pretext import permutation_set, rgb_to_luma_chroma, shuffle_tiles
from diffnas.spaces import build_supernet

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _net(space: str = "darts", in_ch: int = 3):
    torch.manual_seed(0)
    if space == "darts":
        return build_supernet("darts", 4, 3, 10, in_ch)
    return build_supernet("nb201", 2, 1, 10, in_ch)


# ------------------------------------------------------------------------------------ rotation
def test_rotation_labels_and_rotations():
    obj = build_objective("rotation", _net(in_ch=1), 1, 8)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = obj.prepare(x, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(1))
    k = batch.extra["pretext"]
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        assert torch.equal(batch.x[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    assert obj.head.out_features == 4


# ------------------------------------------------------------------------------------- jigsaw
def test_permutation_sets():
    every = permutation_set(4, 24)
    assert every.shape == (24, 4)
    assert {tuple(p) for p in every.tolist()} == set(itertools.permutations(range(4)))
    few = permutation_set(9, 10, seed=0)
    assert len({tuple(p) for p in few.tolist()}) == 10
    assert few[0].tolist() == list(range(9))  # starts at the identity
    assert all(sorted(p) == list(range(9)) for p in few.tolist())
    dist = (few[:, None] != few[None]).sum(-1) + 100 * torch.eye(10, dtype=torch.long)
    assert int(dist.min()) >= 7  # spread out, as Noroozi & Favaro's selection intends
    with pytest.raises(DiffnasError, match="between 2 and 24"):
        permutation_set(4, 25)


def test_jigsaw_applies_the_permutation_and_predicts_its_index():
    obj = build_objective("jigsaw", _net(in_ch=1), 1, 8, {"grid": 2, "permutations": 6})
    assert len(obj.perms) == 6 and obj.head.out_features == 6
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = obj.prepare(x, torch.zeros(16, dtype=torch.long), torch.Generator().manual_seed(2))
    label = batch.extra["pretext"]
    assert label.min() >= 0 and label.max() < 6
    tile = {0: (0, 0), 1: (0, 4), 2: (4, 0), 3: (4, 4)}  # row-major tile origins
    for i in range(16):
        perm = obj.perms[label[i]].tolist()
        for j, src in enumerate(perm):
            (r, c), (sr, sc) = tile[j], tile[src]
            assert torch.equal(batch.x[i, :, r:r + 4, c:c + 4], x[i, :, sr:sr + 4, sc:sc + 4])
    ident = shuffle_tiles(x, 2, torch.arange(4).expand(16, 4))
    assert torch.equal(ident, x)


# ------------------------------------------------------------------------------- colorization
def test_colorization_bins_and_grey_input():
    obj = build_objective("colorization", _net(), 3, 4, {"bins": 7}, mean=MEAN, std=STD)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rgb = colours.view(4, 3, 1, 1).expand(4, 3, 4, 4)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    batch = obj.prepare((rgb - mean) / std, torch.zeros(4, dtype=torch.long))
    # BT.601 chroma ×7 bins: red (Cb .331, Cr 1) → (2, 6); grey (.5, .5) → (3, 3), a bin's
    # middle; blue (1, .419) → (6, 2); green (.169, .081) → (1, 0)
    expected = torch.tensor([2 * 7 + 6, 3 * 7 + 3, 6 * 7 + 2, 1 * 7 + 0])
    assert torch.equal(batch.extra["pretext"], expected.view(4, 1, 1).expand(4, 4, 4))
    grey = batch.x * std + mean
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6)
    assert torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    luma, _, _ = rgb_to_luma_chroma(rgb)
    assert torch.allclose(grey[:, :1], luma, atol=1e-6)
    out = obj(_net(), batch)
    assert torch.isfinite(out.loss) and set(out.terms) == {"color"}


def test_colorization_rejects_greyscale_data():
    with pytest.raises(DiffnasError, match=r"colorization needs 3-channel colour images; this "
                       r"data has 1 channel\(s\): use the rotation or jigsaw objective"):
        build_objective("colorization", _net(in_ch=1), 1, 8)


@pytest.mark.parametrize("name,options,match", [
    ("colorization", {"bins": 1}, "bins must be at least 2"),
    ("jigsaw", {"grid": 3}, r"jigsaw grid 3 does not cut 8×8 images into equal tiles; use one "
                            r"of 2, 4, 8"),
    ("jigsaw", {"permutations": 30}, "between 2 and 24"),
    ("rotation", {"nope": 1}, "objective 'rotation' has no option nope; valid: with_cls"),
])
def test_bad_pretext_options(name, options, match):
    with pytest.raises(DiffnasError, match=match):
        build_objective(name, _net(), 3, 8, options)


def test_unknown_objective_lists_the_pretext_tasks():
    with pytest.raises(DiffnasError, match="unknown objective 'rotate'; valid: ce, colorization, "
                                           "jigsaw, mim, rotation"):
        build_objective("rotate", _net(), 3, 8)


# ------------------------------------------------------------------- composition (Table VII)
TERMS = {"rotation": "rot", "jigsaw": "jigsaw", "colorization": "color"}


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("name", sorted(TERMS))
@pytest.mark.parametrize("with_cls", [False, True])
def test_pretext_alone_and_with_classification(space, name, with_cls):
    net = _net(space)
    obj = build_objective(name, net, 3, 8, {"with_cls": with_cls}, mean=MEAN, std=STD)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = obj.prepare(x, torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    out = obj(net, batch)
    term = TERMS[name]
    if with_cls:
        assert set(out.terms) == {term, "ce", "lambda"}
        assert not out.terms["lambda"].requires_grad
        assert torch.allclose(out.loss.detach(), 2 * out.terms["ce"])
        assert out.logits is not None
    else:
        assert set(out.terms) == {term} and out.logits is None
        assert torch.allclose(out.loss.detach(), out.terms[term])
    head = list(obj.parameters())
    grads = torch.autograd.grad(out.loss, head + net.arch_parameters(), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads[len(head):])  # reaches α


@pytest.mark.parametrize("name", ["rotation", "jigsaw"])
def test_short_search_on_digits(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(objective=name, image_size=16, subset=64, epochs=1,
                   objective_args={"with_cls": True})
    result = search(cfg, out=tmp_path / name, progress=False)
    record = result.history[-1]
    assert {f"train_{TERMS[name]}", "train_ce", "train_lambda", "skip_count"} <= set(record)
    assert json.loads((tmp_path / name / "config.json").read_text())["objective"] == name


def test_colorization_search_step_on_colour_tensors():
    cfg = resolve_config(None, objective="colorization", space="nb201", channels=2, layers=1,
                         batch_size=4, device="cpu")
    res = profile(cfg, input_size=8, in_channels=3, iters=1, warmup=0)
    assert res["objective"] == "colorization" and res["objective_params"] > 0
    assert res["median_s"] > 0
