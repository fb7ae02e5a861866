"""Tests for the Semantic-DARTS MIM objective, the semantic method, and the ablation runner."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffnas.cli import main
from diffnas.config import resolve_config
from diffnas.data import BatchAugment, BatchStream
from diffnas.engine import ablation as ablation_mod
from diffnas.engine.ablation import ablation_markdown, run_ablation, variant_config
from diffnas.engine.search import (
    alpha_std,
    alpha_std_normal,
    build_search,
    evaluate_views,
    search,
)
from diffnas.errors import DiffnasError
from diffnas.methods import METHODS
from diffnas.objectives import build_objective
from diffnas.objectives.mim import (
    VARIANTS,
    MIMObjective,
    ReconstructionDecoder,
    mask_images,
    masked_count,
    masked_mse,
    normalised_range,
    patchify,
    unpatchify,
)
from diffnas.spaces import build_supernet, parse_genotype


def _batch(b: int = 6, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) + 0.5  # no pixel is 0 or 1 by chance


def _tiny_net(space: str = "darts", in_channels: int = 3, layers: int | None = None):
    layers = layers if layers is not None else (3 if space == "darts" else 1)
    return build_supernet(space, 2 if space == "nb201" else 4, layers, 10, in_channels)


# ------------------------------------------------------------------------------- masking (Eq. 3)
def test_patchify_round_trip_and_layout():
    x = _batch(2, 3, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 3 * 16)
    assert torch.equal(p[1, 1], x[1, :, 0:4, 4:8].reshape(-1))  # row-major patches
    assert torch.equal(p[0, 2], x[0, :, 4:8, 0:4].reshape(-1))
    assert torch.equal(unpatchify(p, 4, 8, 8), x)


@pytest.mark.parametrize("ratio,fill,rounding", [(0.6, 0.0, "nearest"), (0.7, 1.0, "ref"),
                                                 (0.7, 0.0, "nearest"), (0.4, 1.0, "ref"),
                                                 (0.3, 1.0, "nearest"), (0.0, 1.0, "ref")])
def test_exactly_the_counted_patches_masked_and_nothing_else(ratio, fill, rounding):
    x = _batch(8, 3, 16)
    n = 16  # (16 / 4)²
    xm, mask = mask_images(x, 4, ratio, torch.Generator().manual_seed(1), fill=fill,
                           rounding=rounding)
    k = masked_count(ratio, n, rounding)
    assert k == {(0.6, "nearest"): 10, (0.7, "ref"): 12, (0.7, "nearest"): 11,
                 (0.4, "ref"): 7, (0.3, "nearest"): 5, (0.0, "ref"): 0}[ratio, rounding]
    px, pm = patchify(x, 4), patchify(xm, 4)
    filled = (pm == fill).all(dim=2)          # patches entirely set to the fill value
    same = (pm == px).all(dim=2)              # patches left exactly as they were
    assert torch.equal(filled.sum(dim=1), torch.full((8,), k))
    assert torch.equal(filled | same, torch.ones_like(same))  # every patch is one or the other
    assert not (filled & same).any()
    # the pixel mask marks exactly the changed pixels
    assert torch.equal(mask.expand_as(x), xm != x)
    if 0 < k < n:  # positions differ between images (per-image draws)
        assert len({tuple(r.tolist()) for r in filled}) > 1


def test_masking_uses_the_generator_only():
    x = _batch(4, 1, 8)
    a, _ = mask_images(x, 2, 0.5, torch.Generator().manual_seed(3))
    b, _ = mask_images(x, 2, 0.5, torch.Generator().manual_seed(3))
    c, _ = mask_images(x, 2, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# (ratio, patches) → (reference: N − ⌊N·(1−r)⌋, nearest: round(r·N) halves up)
MASKED_COUNTS = {(0.7, 16): (12, 11), (0.6, 16): (10, 10), (0.8, 64): (52, 51),
                 (0.8, 16): (13, 13), (0.4, 16): (7, 6), (0.3, 64): (20, 19),
                 (0.6, 49): (30, 29), (0.5, 9): (5, 5), (0.99, 4): (4, 4), (0.0, 16): (0, 0)}


@pytest.mark.parametrize("ratio,n", sorted(MASKED_COUNTS))
def test_masked_count_per_rounding_rule(ratio, n):
    ref, nearest = MASKED_COUNTS[ratio, n]
    assert masked_count(ratio, n, "ref") == ref
    assert masked_count(ratio, n) == ref  # the reference's rule is the default
    assert masked_count(ratio, n, "nearest") == nearest
    with pytest.raises(DiffnasError, match="unknown mask rounding rule 'up'"):
        masked_count(ratio, n, "up")


@pytest.mark.parametrize("options,count,fill", [
    ({}, 12, 1.0),                                   # the reference: 12 of 16, filled with 1.0
    ({"rounding": "nearest"}, 11, 1.0),
    ({"fill": 0.0}, 12, 0.0),                        # the paper text's zero
    ({"fill": "0", "rounding": "nearest"}, 11, 0.0),  # as typed on the command line
])
def test_objective_masks_cifar100_as_configured(options, count, fill):
    torch.manual_seed(0)
    net = _tiny_net(layers=3)
    obj = build_objective("mim", net, 3, 32, {"patch_size": 8, "mask_ratio": 0.7, **options})
    x = torch.randn(5, 3, 32, 32) * 0.1 + 3.0  # no pixel is 0 or 1
    batch = obj.prepare(x, torch.zeros(5, dtype=torch.long), torch.Generator().manual_seed(2))
    patches = patchify(batch.x, 8)
    hidden = (patches == fill).all(dim=2)
    assert torch.equal(hidden.sum(dim=1), torch.full((5,), count))
    assert torch.equal(patchify(batch.extra["mask"].float(), 8).bool().all(dim=2), hidden)
    assert torch.equal(batch.extra["target"], x)


# ----------------------------------------------------------------------------- loss (Eq. 6, 7)
def test_masked_loss_ignores_unmasked_pixels():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    _, mask = mask_images(target, 2, 0.5, g)
    loss = masked_mse(pred, target, mask)
    m = mask.expand_as(pred)
    assert torch.allclose(loss, ((pred - target)[m] ** 2).mean())
    pred2, target2 = pred.clone(), target.clone()
    pred2[~m] = 100.0
    target2[~m] = -7.0
    assert torch.allclose(masked_mse(pred2, target2, mask), loss)
    pred2[m.nonzero()[0].unbind()] += 1.0   # one masked pixel changes the loss
    assert not torch.allclose(masked_mse(pred2, target2, mask), loss)
    nothing = torch.zeros_like(mask)
    assert masked_mse(pred, target, nothing).item() == 0.0


def test_lambda_is_a_constant_equal_weighting():
    torch.manual_seed(0)
    net = _tiny_net()
    obj = MIMObjective(net, 3, 16, patch_size=4, mask_ratio=0.6)
    batch = obj.prepare(_batch(4), torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    out = obj(net, batch)
    lam = out.terms["lambda"]
    assert not lam.requires_grad
    assert torch.allclose(lam, out.terms["ce"] / out.terms["mim"])
    assert torch.allclose(out.loss, 2 * out.terms["ce"])  # λ·L_msk = L_cls in value
    dec = list(obj.decoder.parameters())
    head = list(net.classifier.parameters())
    g_dec = torch.autograd.grad(out.loss, dec + head, retain_graph=True)
    # recompute each term alone: with λ constant, ∇L = ∇L_cls + λ ∇L_msk
    feats = net.forward_features(batch.x)
    ce = F.cross_entropy(net.head(feats), batch.y)
    mim = masked_mse(obj.decoder(feats, (16, 16)), batch.extra["target"], batch.extra["mask"])
    g_mim = torch.autograd.grad(mim, dec)
    g_ce = torch.autograd.grad(ce, head)
    for a, b in zip(g_dec[:len(dec)], g_mim, strict=True):
        assert torch.allclose(a, lam * b, atol=1e-6, rtol=1e-4)
    for a, b in zip(g_dec[len(dec):], g_ce, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- decoder (Eq. 5)
@pytest.mark.parametrize("space,size,in_ch", [("darts", 28, 1), ("darts", 32, 3), ("darts", 30, 3),
                                              ("nb201", 28, 1), ("nb201", 32, 3),
                                              ("nb201", 9, 1)])
def test_decoder_restores_the_input_size(space, size, in_ch):
    torch.manual_seed(0)
    net = _tiny_net(space, in_ch)
    assert net.feature_stride == 4  # two reductions: 28 → 14 → 7, 30 → 15 → 8, 9 → 5 → 3
    obj = MIMObjective(net, in_ch, size, patch_size=1, mask_ratio=0.5)
    x = _batch(2, in_ch, size)
    feats = net.forward_features(x)
    rec = obj.decoder(feats, x.shape[-2:])
    assert rec.shape == x.shape
    out = obj(net, obj.prepare(x, torch.tensor([1, 2]), torch.Generator().manual_seed(0)))
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("size,reductions", [(28, 3), (28, 2), (32, 3), (9, 3), (7, 1), (5, 0),
                                             (33, 4)])
@pytest.mark.parametrize("layout", ["ref", "light"])
def test_decoder_exact_size_for_odd_settings(size, reductions, layout):
    dec = ReconstructionDecoder(24, 3, reductions, layout=layout)
    s = size
    for _ in range(reductions):
        s = (s + 1) // 2  # the encoder's ceil-mode stride-2 size
    out = dec(torch.randn(2, 24, s, s), (size, size))
    assert out.shape == (2, 3, size, size)
    assert len(dec.stages) == max(1, reductions)
    with pytest.raises(DiffnasError, match="decoder expects"):
        dec(torch.randn(2, 24, s + 1, s + 1), (size, size))


def test_decoder_clamps_to_the_normalised_pixel_range():
    mean, std = (0.5, 0.25, 0.2), (0.25, 0.5, 0.1)
    low, high = normalised_range(mean, std, 3)
    assert torch.allclose(low, torch.tensor([-2.0, -0.5, -2.0]))
    assert torch.allclose(high, torch.tensor([2.0, 1.5, 8.0]))
    dec = ReconstructionDecoder(16, 3, 0, out_range=(low, high))
    with torch.no_grad():
        dec.out.bias.copy_(torch.tensor([100.0, -100.0, 0.0]))
    y = dec(torch.zeros(1, 16, 4, 4), (4, 4))
    assert torch.allclose(y[0, 0], torch.full((4, 4), 2.0))
    assert torch.allclose(y[0, 1], torch.full((4, 4), -0.5))


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_decoders_at_the_darts_cifar_config():
    net = build_supernet("darts", 16, 8, 10, 3)
    supernet = sum(p.numel() for p in net.weight_parameters())
    light = MIMObjective(net, 3, 32, patch_size=8, mask_ratio=0.6, decoder="light")
    assert _params(light) / supernet <= 0.05
    ref = MIMObjective(net, 3, 32, patch_size=8, mask_ratio=0.6, decoder="ref")
    # the reference model_search.Decoder(256) at this config holds 4,018,819 parameters
    assert abs(_params(ref) - 4_018_819) <= 0.01 * 4_018_819
    assert _params(MIMObjective(net, 3, 32, patch_size=8, mask_ratio=0.6)) == _params(ref)
    # its layout: 3×3 256→1024, 1×1 1024→256, stages 256→128→64, 3×3 64→3
    d = ref.decoder
    assert (d.spread.in_channels, d.spread.out_channels, d.spread.kernel_size) == (256, 1024,
                                                                                  (3, 3))
    assert (d.mix.in_channels, d.mix.out_channels, d.mix.kernel_size) == (1024, 256, (1, 1))
    assert [(s.up.in_channels, s.up.out_channels) for s in d.stages] == [(256, 128), (128, 64)]
    assert (d.out.in_channels, d.out.out_channels) == (64, 3)


def test_reference_decoder_has_one_stage_per_reduction():
    dec = ReconstructionDecoder(64, 1, 3, layout="ref")  # e.g. a stride-8 encoder
    assert [(s.up.in_channels, s.up.out_channels) for s in dec.stages] == [(64, 32), (32, 16),
                                                                            (16, 8)]
    assert dec(torch.randn(2, 64, 4, 4), (28, 28)).shape == (2, 1, 28, 28)  # 28→14→7→4
    with pytest.raises(DiffnasError, match="decoder_width applies to decoder=light only"):
        ReconstructionDecoder(64, 1, 3, width=16, layout="ref")


# ------------------------------------------------------------------------------------ variants
EXPECTED_TERMS = {"cls": {"ce"}, "cls-masked": {"ce"}, "rec-clean": {"rec"},
                  "rec-masked": {"mim"}, "cls+rec-masked": {"ce", "mim", "lambda"}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_has_exactly_its_loss_terms(variant):
    torch.manual_seed(0)
    net = _tiny_net()
    obj = build_objective("mim", net, 3, 16, {"variant": variant, "patch_size": 4,
                                               "mask_ratio": 0.5})
    x, y = _batch(4), torch.tensor([0, 1, 2, 3])
    g = torch.Generator().manual_seed(5)
    batch = obj.prepare(x, y, g)
    after = torch.rand(1, generator=g)  # every variant consumes the generator alike
    ref = torch.Generator().manual_seed(5)
    torch.rand(4, 16, generator=ref)
    assert torch.equal(after, torch.rand(1, generator=ref))
    out = obj(net, batch)
    assert set(out.terms) == EXPECTED_TERMS[variant]
    mode = VARIANTS[variant]
    assert (obj.decoder is not None) == mode.reconstruct
    assert (out.logits is not None) == mode.classify
    assert torch.equal(batch.x, x) != mode.masked
    t = out.terms
    expected = {"cls": lambda: t["ce"], "cls-masked": lambda: t["ce"],
                "rec-clean": lambda: t["rec"], "rec-masked": lambda: t["mim"],
                "cls+rec-masked": lambda: t["ce"] + t["lambda"] * t["mim"]}[variant]()
    assert torch.allclose(out.loss.detach(), expected)
    if variant == "cls":  # plain DARTS: the CE objective's loss
        assert torch.allclose(out.loss, build_objective("ce", net, 3, 16)(net, batch).loss)


@pytest.mark.parametrize("options,match", [
    ({"mask_ratio": 1.0}, r"mask ratio must be in \[0, 1\), got 1.0"),
    ({"mask_ratio": -0.1}, r"mask ratio must be in \[0, 1\)"),
    ({"patch_size": 5}, r"patch size 5 does not divide the 16×16 images; use one of 1, 2, 4, 8"),
    ({"variant": "nope"}, r"unknown mim variant 'nope'; valid: cls, cls\+rec-masked, "),
    ({"bogus": 1}, r"objective 'mim' has no option bogus; valid: decoder, decoder_width, fill, "
                   r"mask_ratio, patch_size, rounding, variant"),
    ({"decoder": "big"}, r"unknown mim decoder 'big'; valid: light, ref"),
    ({"rounding": "up"}, r"unknown mim rounding rule 'up'; valid: nearest, ref"),
    ({"decoder_width": -1}, r"decoder_width must be >= 0"),
])
def test_bad_options_fail_at_construction(options, match):
    with pytest.raises(DiffnasError, match=match):
        build_objective("mim", _tiny_net(), 3, 16, options)


def test_command_line_options_are_coerced():
    obj = build_objective("mim", _tiny_net(), 3, 16, {"mask_ratio": "0.25", "patch_size": "2"})
    assert obj.mask_ratio == 0.25 and obj.patch_size == 2


def test_cli_rejects_bad_mask_ratio_before_training(capsys, tmp_path):
    code = main(["search", "--method", "semantic", "--dataset", "digits", "--subset", "32",
                 "--epochs", "1", "--obj-opt", "mask_ratio=1.5", "--out", str(tmp_path / "r"),
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: mask ratio must be in [0, 1)")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------- method
def test_semantic_method_and_presets():
    assert METHODS["semantic"].default_objective == "mim"
    c10 = resolve_config("semantic-cifar10")
    assert (c10.method, c10.dataset, c10.epochs, c10.layers, c10.channels) == (
        "semantic", "cifar10", 50, 8, 16)
    reference = {"decoder": "ref", "fill": 1.0, "rounding": "ref"}
    assert c10.objective_args == {"patch_size": 8, "mask_ratio": 0.6, **reference}
    assert resolve_config("semantic-cifar100").objective_args == {"patch_size": 8,
                                                                  "mask_ratio": 0.7, **reference}
    ref = resolve_config("semantic-ref").objective_args
    assert ref == {"patch_size": 4, "mask_ratio": 0.8, **reference}
    cpu = resolve_config("semantic-cpu")
    assert cpu.dataset == "fashion-mnist" and 28 % cpu.objective_args["patch_size"] == 0
    assert cpu.objective_args["decoder"] == "light"


def test_second_order_step_restores_the_decoder_statistics():
    cfg = resolve_config(None, method="semantic", order=2, channels=4, layers=3, batch_size=4,
                         device="cpu", objective_args={"patch_size": 4})
    net, obj, method = build_search(cfg, 3, 16, 10, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    train = obj.prepare(_batch(4), torch.tensor([0, 1, 2, 3]), g)
    val = obj.prepare(_batch(4, seed=1), torch.tensor([3, 2, 1, 0]), g)
    method.begin_epoch(0)
    before = [b.clone() for b in obj.buffers()]
    method.unrolled_arch_grads(val, train)
    assert all(torch.equal(a, b) for a, b in zip(before, obj.buffers(), strict=True))
    stats = method.step(train, val)  # the whole second-order step runs on the masked batches
    assert {"mim", "ce", "lambda", "arch_mim"} <= set(stats)


# ----------------------------------------------------------------------------------- ablation
def test_ablation_runs_every_variant_end_to_end(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(method="semantic", image_size=16, subset=64, epochs=1,
                   objective_args={"patch_size": 4, "mask_ratio": 0.6})
    rows = run_ablation(cfg, tmp_path / "abl", progress=False)
    assert [r.variant for r in rows] == list(VARIANTS)
    for r in rows:
        run = tmp_path / "abl" / r.variant
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        for key in ("skip_count", "param_free_count", "alpha_std"):  # collapse indicators
            assert key in record
        keys = {k.removeprefix("train_") for k in record if k.startswith("train_")}
        assert EXPECTED_TERMS[r.variant] <= keys
        assert not ({"ce", "mim", "rec", "lambda"} - EXPECTED_TERMS[r.variant]) & keys
        config = json.loads((run / "config.json").read_text())
        assert config["objective"] == "mim"
        assert config["objective_args"]["variant"] == r.variant
        augment = r.variant not in ("rec-clean", "rec-masked")  # the reference's rule
        assert r.augment == augment
        assert (config["crop_padding"], config["flip"]) == ((1, None) if augment else (0, False))
        assert ("val_masked_acc" in record) == VARIANTS[r.variant].masked
        assert str(parse_genotype(str(run))) == r.genotype
        assert (r.search_acc is None) == (not VARIANTS[r.variant].classify)
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert table == ablation_markdown(rows, cfg)
    assert all(f"| `{v}` |" in table for v in VARIANTS)
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == list(VARIANTS)

    # a second run reads the finished variants back instead of searching again
    def no_search(*a, **k):
        raise AssertionError("searched again")

    monkeypatch.setattr(ablation_mod, "search", no_search)
    again = run_ablation(cfg, tmp_path / "abl", progress=False)
    assert [r.genotype for r in again] == [r.genotype for r in rows]
    with pytest.raises(DiffnasError, match="another config"):
        run_ablation(cfg.replace(seed=7), tmp_path / "abl", ["cls"], progress=False)


def test_ablation_cli_rejects_unknown_variant(capsys, tmp_path):
    code = main(["ablation", "--variants", "cls,nope", "--out", str(tmp_path / "a"),
                 "--dataset", "digits", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: unknown ablation variant 'nope'; valid: cls, cls+rec-masked")
    assert not (tmp_path / "a").exists()


def test_semantic_search_in_the_nb201_space(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="semantic", space="nb201", layers=1, image_size=16, subset=64,
                   epochs=1, objective_args={"patch_size": 4})
    result = search(cfg, out=tmp_path / "nb", progress=False)
    record = result.history[-1]
    assert {"train_ce", "train_mim", "train_lambda", "skip_count", "param_free_count",
            "alpha_std"} <= set(record)
    assert result.genotype.space == "nb201"


def test_ablation_retrains_when_asked(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="semantic", image_size=16, subset=64, epochs=1,
                   objective_args={"patch_size": 4})
    rows = run_ablation(cfg, tmp_path / "abl", ["cls+rec-masked"], retrain="tiny",
                        retrain_overrides={"epochs": 1, "subset": 64, "test_subset": 64,
                                           "layers": 2, "channels": 4},
                        progress=False)
    acc = rows[0].retrain_acc
    assert acc is not None and 0.0 <= acc <= 1.0
    result = json.loads((tmp_path / "abl" / "cls+rec-masked" / "retrain" / "result.json")
                        .read_text())
    assert result["test_acc"] == acc and result["best_test_acc"] == rows[0].retrain_best_acc
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "Retrained acc, final (%)" in md and "Retrained acc, best (%)" in md
    again = run_ablation(cfg, tmp_path / "abl", ["cls+rec-masked"], retrain="tiny",
                         retrain_overrides={"epochs": 1, "subset": 64, "test_subset": 64,
                                            "layers": 2, "channels": 4}, progress=False)
    assert (again[0].retrain_acc, again[0].retrain_best_acc) == (acc, rows[0].retrain_best_acc)


def test_reconstruction_only_variants_declare_no_augmentation(tiny_cfg):
    cfg = tiny_cfg(method="semantic", crop_padding=2, flip=True, cutout=4,
                   objective_args={"patch_size": 4})
    for name, mode in VARIANTS.items():
        v = variant_config(cfg, name)
        assert mode.augment == (name not in ("rec-clean", "rec-masked"))
        aug = (v.crop_padding, v.flip, v.cutout)
        assert aug == ((2, True, 4) if mode.augment else (0, False, 0))
        assert v.objective_args == {"patch_size": 4, "variant": name}


# ------------------------------------------------------------------------ search metrics
def test_alpha_std_total_and_normal_cell_only():
    one_hot, uniform = [1.0, 0.0, 0.0, 0.0], [0.25] * 4
    edge = 3 ** 0.5 / 4  # population std of a one-hot row of 4
    weights = {"normal": torch.tensor([one_hot, uniform, one_hot]),
               "reduce": torch.tensor([one_hot, one_hot, one_hot, uniform])}
    assert alpha_std_normal(weights) == pytest.approx(2 * edge)
    assert alpha_std(weights) == pytest.approx(5 * edge)
    nb201 = {"cell": torch.tensor([one_hot, uniform])}  # one cell kind: all of it is normal
    assert alpha_std_normal(nb201) == alpha_std(nb201) == pytest.approx(edge)


def test_search_logs_both_alpha_stds_and_masked_and_clean_val_acc(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="semantic", image_size=16, subset=64, epochs=1,
                   objective_args={"patch_size": 4, "mask_ratio": 0.6})
    result = search(cfg, out=tmp_path / "s", progress=False)
    record = result.history[-1]
    weights = {k: torch.tensor(v) for k, v in record["alpha"].items()}
    assert record["alpha_std_normal"] == pytest.approx(alpha_std({"normal": weights["normal"]}),
                                                       abs=1e-4)
    assert record["alpha_std"] == pytest.approx(alpha_std(weights), abs=1e-4)
    for key in ("val_acc", "val_loss", "val_masked_acc", "val_masked_loss"):
        assert 0.0 <= record[key] < float("inf")
    assert record["val_masked_loss"] != record["val_loss"]  # other inputs, other losses
    summary = json.loads((result.run_dir / "result.json").read_text())
    assert summary["final_val_masked_acc"] == record["val_masked_acc"]
    assert summary["final_val_acc"] == record["val_acc"]


class _MeanSign(torch.nn.Module):
    """Predicts class 1 when an image's mean is below 0.5, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m - 0.5, 0.5 - m], dim=1) * 100


@pytest.mark.parametrize("ratio,fill,masked_acc", [(0.75, 1.0, 0.0), (0.75, 0.0, 1.0),
                                                   (0.0, 1.0, 1.0)])
def test_masked_val_accuracy_differs_from_clean_when_masking_matters(ratio, fill, masked_acc):
    images = torch.zeros(12, 1, 8, 8, dtype=torch.uint8)  # black: normalised 0, mean < 0.5
    labels = torch.ones(12, dtype=torch.long)
    stream = BatchStream(images, labels, None, 5, seed=0, drop_last=False)
    aug = BatchAugment((0.0,), (1.0,))
    obj = build_objective("mim", _tiny_net(in_channels=1), 1, 8,
                          {"patch_size": 2, "mask_ratio": ratio, "fill": fill})
    out = evaluate_views(_MeanSign(), stream, aug, obj.eval_views, seed=3)
    assert set(out) == {"", "masked"}
    assert out[""][1] == 1.0                  # clean: all right
    assert out["masked"][1] == masked_acc     # 12 of 16 patches white: all wrong
    again = evaluate_views(_MeanSign(), stream, aug, obj.eval_views, seed=3)
    assert again == out                       # the same masks every evaluation
    clean_only = build_objective("mim", _tiny_net(in_channels=1), 1, 8,
                                 {"variant": "cls", "patch_size": 2})
    assert set(evaluate_views(_MeanSign(), stream, aug, clean_only.eval_views)) == {""}


@pytest.mark.parametrize("decoder", ["ref", "light"])
def test_profile_reports_the_objectives_parameters(capsys, decoder):
    args = ["profile", "--method", "semantic", "--obj-opt", f"decoder={decoder}", "--channels",
            "4", "--layers", "3", "--batch-size", "2", "--input-size", "16", "--iters", "1",
            "--warmup", "0", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    cfg = resolve_config(None, method="semantic", channels=4, layers=3, device="cpu",
                         objective_args={"decoder": decoder})
    net, obj, _ = build_search(cfg, 3, 16, 10, 1, torch.device("cpu"))
    n_obj = _params(obj)
    assert f"objective {n_obj:,} (mim)" in out
    assert f"supernet {sum(p.numel() for p in net.weight_parameters()):,}" in out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["objective_params"] == n_obj
