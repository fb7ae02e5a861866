"""Tests for the pretext objectives (Semantic-DARTS Table VII baselines, the UnNAS protocol)."""

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
from diffnas.objectives.pretext import (
    ab_bins,
    all_rotations,
    jigsaw_tiles,
    nearest_bin,
    permutation_set,
    rgb_to_lab,
)
from diffnas.spaces import build_supernet

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _net(space: str = "darts", in_ch: int = 3):
    torch.manual_seed(0)
    if space == "darts":
        return build_supernet("darts", 4, 3, 10, in_ch)
    return build_supernet("nb201", 2, 1, 10, in_ch)


def _images(n: int, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ rotation
def test_rotation_feeds_all_four_rotations_of_every_image():
    obj = build_objective("rotation", _net(in_ch=1), 1, 8)
    x, y = _images(5, 1), torch.arange(5)
    batch = obj.prepare(x, y, torch.Generator().manual_seed(1))
    assert batch.x.shape == (20, 1, 8, 8)
    assert batch.extra["pretext"].tolist() == [0, 1, 2, 3] * 5
    assert batch.y.tolist() == [i for i in range(5) for _ in range(4)]  # classes go along
    for i, k in itertools.product(range(5), range(4)):
        assert torch.equal(batch.x[4 * i + k], torch.rot90(x[i], k, dims=(-2, -1)))
    assert obj.head.out_features == 4
    rotated, k = all_rotations(x)
    assert torch.equal(rotated, batch.x) and torch.equal(k, batch.extra["pretext"])
    with pytest.raises(DiffnasError, match="square images"):
        obj.prepare(torch.zeros(2, 1, 8, 6), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------- colorization
def test_lab_of_reference_colours():
    rgb = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
                       dtype=torch.float64)
    lab = rgb_to_lab(rgb)  # sRGB D65 (the values skimage's rgb2lab gives)
    want = torch.tensor([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20],
                         [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]], dtype=torch.float64)
    assert torch.allclose(lab, want, atol=0.01)
    image = rgb.T.reshape(1, 3, 5, 1)
    assert torch.allclose(rgb_to_lab(image)[0, :, :, 0].T, lab)


def test_the_313_in_gamut_ab_bins():
    bins = ab_bins(10)
    assert bins.shape == (313, 2)  # Zhang et al., Fig. 3(a): 313 in-gamut ab pairs
    assert (bins % 10 == 0).all() and len({tuple(b) for b in bins.tolist()}) == 313
    # pts_in_hull.npy's layout: a-major, b ascending, from (-90, 50) to (100, 0)
    order = sorted(range(313), key=lambda i: (bins[i, 0].item(), bins[i, 1].item()))
    assert order == list(range(313))
    assert bins[:5].tolist() == [[-90, 50], [-90, 60], [-90, 70], [-90, 80], [-90, 90]]
    assert bins[5].tolist() == [-80, 20] and bins[-1].tolist() == [100, 0]
    a_range = bins[:, 0].min().item(), bins[:, 0].max().item()
    b_range = bins[:, 1].min().item(), bins[:, 1].max().item()
    assert a_range == (-90, 100) and b_range == (-110, 100)
    # every 8-bit colour's (a, b) lies within one grid step of a bin centre
    rgb = torch.rand(20_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = rgb_to_lab((rgb * 255).round() / 255)[:, 1:].float()
    near = bins[nearest_bin(ab, bins)]
    assert ((ab - near).abs() <= 10).all()
    assert ab_bins(20).shape[0] < 313
    with pytest.raises(DiffnasError, match="positive integer"):
        ab_bins(0)


def test_nearest_bin_is_the_exact_argmin_in_chunks():
    centres = ab_bins(10)
    ab = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3)) * 60
    want = torch.cdist(ab, centres).argmin(1)
    assert torch.equal(nearest_bin(ab, centres, chunk=77), want)


def test_colorization_input_is_l_and_target_is_the_nearest_ab_bin():
    obj = build_objective("colorization", _net(), 3, 4, mean=MEAN, std=STD)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rgb = colours.view(4, 3, 1, 1).expand(4, 3, 4, 4)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.tensor([3, 1, 4, 1])
    batch = obj.prepare((rgb - mean) / std, y)
    bins = ab_bins(10).tolist()
    # red (80.1, 67.2) → (80, 70); grey → (0, 0); blue (79.2, -107.9) → (80, -110);
    # green (-86.2, 83.2) → (-90, 80)
    expected = torch.tensor([bins.index(c) for c in ([80, 70], [0, 0], [80, -110], [-90, 80])])
    assert torch.equal(batch.extra["pretext"], expected.view(4, 1, 1).expand(4, 4, 4))
    lum = rgb_to_lab(rgb)[:, :1]
    want = (lum / 100 - sum(MEAN) / 3) / (sum(STD) / 3)  # the reference's L normalisation
    assert torch.allclose(batch.x, want.expand(4, 3, 4, 4), atol=1e-5)
    assert torch.equal(batch.y, y)
    assert obj.head.out_channels == 313 and obj.head.kernel_size == (1, 1)
    out = obj(_net(), batch)
    assert torch.isfinite(out.loss) and set(out.terms) == {"color"}


def test_colorization_rejects_greyscale_data():
    with pytest.raises(DiffnasError, match=r"colorization needs 3-channel colour images; this "
                       r"data has 1 channel\(s\): use the rotation or jigsaw objective"):
        build_objective("colorization", _net(in_ch=1), 1, 8)


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


def test_jigsaw_tiles_crop_normalise_and_permute():
    x = _images(3, 2, 8)
    perms = permutation_set(4, 24)[torch.tensor([5, 0, 23])]
    offsets = torch.randint(0, 2, (3, 4, 2), generator=torch.Generator().manual_seed(4))
    tiles = jigsaw_tiles(x, 2, 3, perms, offsets)
    assert tiles.shape == (12, 2, 3, 3)
    origin = {0: (0, 0), 1: (0, 4), 2: (4, 0), 3: (4, 4)}  # row-major 4×4 patches
    for i, k in itertools.product(range(3), range(4)):
        (r, c), (dy, dx) = origin[k], offsets[i, k].tolist()
        crop = x[i, :, r + dy:r + dy + 3, c + dx:c + dx + 3]
        crop = (crop - crop.mean()) / crop.std(unbiased=False)
        assert torch.allclose(tiles[4 * i + int(perms[i, k])], crop, atol=1e-5)
    flat = jigsaw_tiles(torch.ones(1, 1, 8, 8), 2, 3, perms[:1], offsets[:1])
    assert torch.isfinite(flat).all() and (flat == 0).all()  # a constant tile: 0, not NaN


def test_jigsaw_runs_each_tile_through_the_network():
    net = _net(in_ch=1)
    obj = build_objective("jigsaw", net, 1, 8, {"grey": 0.0})
    assert len(obj.perms) == 24 and obj.tile == 3  # ⌊0.76 · 4⌋
    x = _images(6, 1)
    batch = obj.prepare(x, torch.arange(6), torch.Generator().manual_seed(2))
    assert batch.x.shape == (24, 1, 3, 3) and batch.extra["pretext"].shape == (6,)
    assert obj.head.in_features == 4 * net.feature_channels and obj.head.out_features == 24
    net.eval()  # batch norm on running statistics: a tile's features are its own
    with torch.no_grad():
        feats = net.forward_features(batch.x)
        other = batch.x.clone()
        other[4:] = torch.randn_like(other[4:])
        assert torch.allclose(net.forward_features(other)[:4], feats[:4], atol=1e-5)
    out = obj(net, batch)
    assert torch.isfinite(out.loss) and set(out.terms) == {"jigsaw"}


def test_jigsaw_greys_a_share_of_the_images_first():
    obj = build_objective("jigsaw", _net(), 3, 8, {"grey": 1.0}, mean=MEAN, std=STD)
    x = _images(4, 3)
    batch = obj.prepare(x, torch.arange(4), torch.Generator().manual_seed(0))
    pixels = batch.extra["image"] * torch.tensor(STD).view(1, 3, 1, 1) + \
        torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
    assert torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-5)
    none = build_objective("jigsaw", _net(), 3, 8, {"grey": 0.0}, mean=MEAN, std=STD)
    kept = none.prepare(x, torch.arange(4), torch.Generator().manual_seed(0))
    assert torch.equal(kept.extra["image"], x)
    share = build_objective("jigsaw", _net(), 3, 8, mean=MEAN, std=STD)  # 0.3 by default
    big = share.prepare(_images(2000, 3), torch.zeros(2000, dtype=torch.long),
                        torch.Generator().manual_seed(1)).extra["image"]
    greyed = (big[:, 0] * STD[0] + MEAN[0] - big[:, 1] * STD[1] - MEAN[1]).abs().amax((1, 2))
    assert 0.25 < float((greyed < 1e-5).float().mean()) < 0.35


@pytest.mark.parametrize("name,options,match", [
    ("jigsaw", {"grid": 9}, r"jigsaw grid 9 with tile_fraction 0.76 leaves no tile of 8×8 "
                            r"images; use a grid from 2 to 6"),
    ("jigsaw", {"permutations": 30}, "between 2 and 24"),
    ("jigsaw", {"tile_fraction": 0.0}, r"tile_fraction must be in \(0, 1\]"),
    ("jigsaw", {"grey": 2.0}, r"grey must be a probability in \[0, 1\]"),
    ("colorization", {"bins": 7}, "objective 'colorization' has no option bins; valid: "
                                  "with_cls"),
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
    x = _images(4, 3)
    batch = obj.prepare(x, torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    out = obj(net, batch)
    term = TERMS[name]
    if with_cls:
        assert set(out.terms) == {term, "ce", "lambda"}
        assert not out.terms["lambda"].requires_grad
        assert torch.allclose(out.loss.detach(), 2 * out.terms["ce"])
        assert out.logits is not None and len(out.logits) == len(batch.y)
    else:
        assert set(out.terms) == {term} and out.logits is None
        assert torch.allclose(out.loss.detach(), out.terms[term])
    head = list(obj.parameters())
    grads = torch.autograd.grad(out.loss, head + net.arch_parameters(), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads[len(head):])  # reaches α


@pytest.mark.parametrize("name", ["rotation", "jigsaw"])
def test_short_search_on_digits(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(objective=name, subset=64, epochs=1,
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
