"""CDARTS (cyclic search with an evaluation network): E's width, its weight-sharing pool
(§3.2), a connected E in NAS-Bench-201, the result (final α) beside E's genotype, the
ImageNet-shaped search, the introspective distillation (Eq. 9-10), which optimiser moves what
(Eq. 6-8), the λ' schedule (Eq. 11), Algorithm 1's phases, ablations, bad options, resume and
end-to-end searches."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from diffnas.cli import main
from diffnas.config import SearchConfig, resolve_config
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.methods.base import frozen
from diffnas.methods.cdarts import (
    CDARTS,
    PATHS,
    connect,
    connected,
    distillation_loss,
    l1_schedule,
)
from diffnas.nets import NetworkCIFAR, NetworkImageNet, build_network, load_shared
from diffnas.objectives import OBJECTIVES
from diffnas.spaces import NB201Genotype, genotype_from_dict
from diffnas.spaces.nb201 import EDGES, OPS


def small(tiny_cfg, space: str = "darts", **kw: Any):
    """A 3-cell (DARTS) / N=1 (NB201) search and a 3-cell / N=1 evaluation network on 8×8,
    E as wide as S; ``kw`` holds config fields and method options."""
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    layers = 1 if space == "nb201" else 3
    opts = {"e_layers": layers, "s_e": 0.5, "s_u": 0.5,
            **{k: v for k, v in kw.items() if k not in fields}}
    return tiny_cfg(method="cdarts", space=space, layers=layers, method_args=opts,
                    **{k: v for k, v in kw.items() if k in fields})


def build(cfg, steps_per_epoch: int = 4, size: int = 8) -> tuple[Any, Any, CDARTS]:
    net, obj, method = build_search(cfg, 1, size, 10, steps_per_epoch, torch.device("cpu"))
    assert isinstance(method, CDARTS)
    method.begin_epoch(0)
    return net, obj, method


def batch(obj, seed: int, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, size, size, generator=g)
    return obj.prepare(x, torch.randint(0, 10, (16,), generator=g), g)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def same(a, b) -> bool:
    return all(torch.equal(x, y.detach()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ E rebuild and inheritance
def test_rebuilt_eval_net_keeps_shared_weights_bit_identical_and_inits_the_rest(tiny_cfg):
    net, obj, m = build(small(tiny_cfg))
    m.step(batch(obj, 0), batch(obj, 1))           # builds E, one separate-learning step
    assert m.cycle_phase(0) == "separate" and m.eval_net is not None
    old_gen, old = m.eval_genotype, {k: v.clone() for k, v in m.eval_net.state_dict().items()}
    assert not m.refresh_eval()                     # same α: the same genotype, and E is
    for k, v in m.eval_net.state_dict().items():   # rebuilt with every weight from the pool
        assert torch.equal(v, old[k]), k
    op = "sep_conv_3x3" if old_gen.normal[0] != ("sep_conv_3x3", 0) else "dil_conv_3x3"
    with torch.no_grad():                           # edge 0→2 of the normal cell takes `op`
        net.alphas["normal"][0, net.op_names.index(op)] = 10.0
    assert m.refresh_eval()                         # the genotype changed: E is rebuilt
    assert m.eval_genotype.normal[0] == (op, 0) and m.eval_genotype.reduce == old_gen.reduce
    new = m.eval_net.state_dict()
    shared = [k for k in new if k in old and old[k].shape == new[k].shape]
    fresh = [k for k in new if k not in shared]
    assert {"stem.0.weight", "classifier.weight", "cells.0.pre1.conv.weight"} <= set(shared)
    assert any(k.startswith("cells.") and ".nodes." in k for k in shared)
    assert fresh, "a changed genotype must bring new edges"
    for k in shared:                                # inherited bit for bit (trained values)
        assert torch.equal(new[k], old[k]), k
    assert not torch.equal(old["stem.1.running_mean"], torch.zeros_like(old["stem.1.running_mean"]))
    for k in fresh:                                 # the rest is freshly initialised
        if k.endswith("running_mean"):
            assert torch.equal(new[k], torch.zeros_like(new[k])), k
        if k.endswith("running_var"):
            assert torch.equal(new[k], torch.ones_like(new[k])), k
    assert m.derive() == m.eval_genotype != old_gen


def test_nb201_eval_net_shares_an_edge_only_with_the_same_op():
    a = NB201Genotype.parse("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|"
                            "+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    b = NB201Genotype.parse("|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|"
                            "+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    na = build_network(a, channels=4, layers=1, in_channels=1, input_size=8)
    nb = build_network(b, channels=4, layers=1, in_channels=1, input_size=8)
    copied = load_shared(nb, na)
    assert any("1~2_nor_conv_3x3" in k for k in copied)
    assert not any("0~1" in k for k in copied)      # 0→1 changed op: not even its BN is shared


# ------------------------------------------------------- E's width and weight-sharing pool (§3.2)
def test_eval_net_is_as_wide_as_the_search_network_unless_e_channels_says(tiny_cfg):
    for opts, width in (({}, 6), ({"e_channels": 10}, 10)):
        net, obj, m = build(small(tiny_cfg, channels=6, **opts))
        m.step(batch(obj, 0), batch(obj, 1))
        assert isinstance(m.eval_net, NetworkCIFAR) and m.eval_net.channels == width
    cfg = resolve_config("cdarts-cifar10")          # the paper's CIFAR widths: S 8×16, E 20×16
    assert cfg.channels == 16 and cfg.method_args["e_layers"] == 20
    assert cfg.method_args.get("e_channels", 0) == 0  # 0: S's width


def test_an_op_that_leaves_e_and_comes_back_returns_with_its_trained_weights(tiny_cfg):
    net, obj, m = build(small(tiny_cfg))
    names = net.op_names

    def pick(op: str) -> str:                       # edge 0→2 of the normal cell takes `op`
        with torch.no_grad():
            net.alphas["normal"][0] = 0.0
            net.alphas["normal"][0, names.index(op)] = 10.0
        return f"cells.0.nodes.0.0.{op}."           # its parameters in E (cell 0 is normal)

    def of(prefix: str, state) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in state.items() if k.startswith(prefix)}

    sep = pick("sep_conv_3x3")
    m.step(batch(obj, 0), batch(obj, 1))            # E built with sep_conv_3x3 on 0→2 ...
    init = of(sep, m.eval_net.state_dict())
    for i in range(3):                              # ... and trained
        m.separate_step(batch(obj, 10 + i))
    trained = of(sep, m.eval_net.state_dict())
    assert trained and not all(torch.equal(trained[k], init[k]) for k in trained)
    dil = pick("dil_conv_3x3")
    assert m.refresh_eval()                         # sep_conv_3x3 leaves E ...
    assert not of(sep, m.eval_net.state_dict()) and of(dil, m.eval_net.state_dict())
    assert all(torch.equal(m.e_pool[k], v) for k, v in trained.items())  # ... the pool keeps it
    m.separate_step(batch(obj, 20))                 # E trains without it
    pick("sep_conv_3x3")
    assert m.refresh_eval()                         # ... and it comes back, trained
    back = of(sep, m.eval_net.state_dict())
    assert back.keys() == trained.keys()
    for k, v in back.items():
        assert torch.equal(v, trained[k]), k
    assert of(dil, m.e_pool)                        # now the pool holds dil_conv_3x3's weights


# ------------------------------------------------------------ a connected E in NAS-Bench-201
def test_connected_and_connect_on_nas_bench_201_cells():
    none = NB201Genotype(("none",) * len(EDGES))
    assert len(PATHS) == 4 and not connected(none)
    assert connected(NB201Genotype.parse("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"))
    # 0→1 and 2→3 carry ops, but node 1 does not reach 3 and nothing reaches 2
    assert not connected(NB201Genotype.parse(
        "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"))
    w = torch.full((len(EDGES), len(OPS)), 0.1)
    w[:, OPS.index("none")] = 0.6                   # none is the argmax on every edge
    e01, e13 = EDGES.index((0, 1)), EDGES.index((1, 3))
    w[e01, OPS.index("nor_conv_3x3")] = 0.35        # 0→1→3 (0.35²) is likelier than 0→3 (0.1)
    w[e13, OPS.index("nor_conv_1x1")] = 0.35
    g = connect(none, w, OPS)
    assert connected(g) and (g.ops[e01], g.ops[e13]) == ("nor_conv_3x3", "nor_conv_1x1")
    assert sum(o != "none" for o in g.ops) == 2     # only that path's edges changed
    w[EDGES.index((0, 3)), OPS.index("skip_connect")] = 0.5   # now the direct edge is likelier
    assert connect(none, w, OPS).ops == tuple("skip_connect" if e == EDGES.index((0, 3))
                                              else "none" for e in range(len(EDGES)))
    assert connect(g, w, OPS) == g                  # a connected cell stays as it is


def test_eval_net_computes_when_alpha_says_none_everywhere_and_the_result_warns(tiny_cfg):
    net, obj, m = build(small(tiny_cfg, "nb201"))
    with torch.no_grad():
        net.alphas["cell"][:, OPS.index("none")] = 5.0
    derived = m.discretise()
    assert derived == NB201Genotype(("none",) * len(EDGES)) and not connected(derived)
    m.step(batch(obj, 0), batch(obj, 1))            # builds E
    assert connected(m.eval_genotype)
    x = batch(obj, 2).x
    dead = build_network(derived, channels=4, layers=1, in_channels=1, input_size=8).eval()
    with torch.no_grad():
        assert torch.allclose(dead(x), dead(x)[:1].expand(len(x), -1))  # the same for any image
        m.eval_net.eval()
        out = m.eval_net(x)
    assert not torch.allclose(out, out[:1].expand(len(x), -1))  # E's output depends on x
    assert m.derive() == derived                    # the result is what α says ...
    assert m.epoch_metrics()["genotype_connected"] is False
    m.global_step = m.cfg.epochs * m.steps_per_epoch
    with pytest.warns(RuntimeWarning, match="no path from the cell's input to its output"):
        assert m.derive() == derived                # ... with a warning at the end


# ------------------------------------------------------------- the result and E's genotype
def test_result_is_the_final_alpha_and_e_genotype_is_recorded_apart(tiny_cfg):
    net, obj, m = build(small(tiny_cfg))
    m.step(batch(obj, 0), batch(obj, 1))
    built = m.eval_genotype
    op = "sep_conv_5x5" if built.normal[0][0] != "sep_conv_5x5" else "dil_conv_5x5"
    with torch.no_grad():                           # α moves after E's last rebuild
        net.alphas["normal"][0, net.op_names.index(op)] = 10.0
    assert m.derive() == m.discretise() != built and m.derive().normal[0] == (op, 0)
    rec = m.epoch_metrics()
    assert rec["eval_genotype"] == built.to_dict() and rec["eval_genotype_str"] == str(built)
    assert rec["genotype_connected"] is True


# --------------------------------------------------------------------------- ImageNet search
def test_imagenet_search_has_imagenet_shaped_s_and_e(tiny_cfg):
    net, obj, m = build(small(tiny_cfg, "darts-imagenet"), size=32)
    m.step(batch(obj, 0, 32), batch(obj, 1, 32))    # separate learning
    assert isinstance(m.eval_net, NetworkImageNet) and len(m.eval_net.cells) == 3
    assert m.eval_net.channels == net.channels == 4
    m.step(batch(obj, 2, 32), batch(obj, 3, 32))
    stats = m.step(batch(obj, 4, 32), batch(obj, 5, 32))  # a joint step: all stages distil
    assert stats["arch_distill"] > 0 and len(m.eval_net.stage_channels) == 3


def test_cifar_preset_follows_the_reference_script():
    # run_search_cifar_1gpu.sh: pretrain_epochs 2 of search_iter 32, w_lr = nasnet_lr 0.08
    # (never annealed), α Adam betas (0.5, 0.999) without decay, interactive_type 3, loss_alpha 1
    cfg = resolve_config("cdarts-cifar10", dataset="digits", device="cpu")
    o = cfg.method_args
    assert (cfg.epochs, cfg.batch_size, cfg.channels, cfg.layers, o["e_layers"]) == \
        (62, 64, 16, 8, 20)
    assert cfg.w_lr == cfg.w_lr_min == o["e_lr"] == 0.08
    assert cfg.a_betas == (0.5, 0.999) and cfg.a_weight_decay == 0.0 and cfg.a_lr == 3e-4
    assert (o["distill"], o["lam"], o["temperature"]) == ("smoothl1", 1.0, 2.0)
    _, _, m = build(cfg, steps_per_epoch=1)
    assert [m.cycle_phase(i) for i in range(62)] == ["warmup"] * 2 + ["separate", "joint"] * 30
    assert {m.w_lr(e) for e in range(62)} == {0.08}
    assert m.a_opt.defaults["betas"] == (0.5, 0.999)


def test_nb201_preset_keeps_the_paper_where_no_script_exists():
    cfg = resolve_config("cdarts-nb201", dataset="digits", device="cpu")
    o = cfg.method_args
    assert cfg.a_betas == (0.5, 0.999)             # hard-coded in benchmark201/search.py
    assert cfg.a_weight_decay == 3e-4 and cfg.w_lr == 0.1 and cfg.w_lr_min < cfg.w_lr
    assert (o.get("distill", "kl"), o["lam"], o["l1_coeff"]) == ("kl", 4.0, 0.0)


def test_imagenet_preset_follows_the_reference_script():
    cfg = resolve_config("cdarts-imagenet", dataset="digits", device="cpu")
    o = cfg.method_args
    assert (cfg.space, cfg.epochs, cfg.batch_size, cfg.channels, cfg.layers) == \
        ("darts-imagenet", 130, 1024, 16, 8)
    assert cfg.w_weight_decay == cfg.a_weight_decay == 1e-5
    assert cfg.w_lr == cfg.w_lr_min == o["e_lr"] == 0.8 and cfg.a_betas == (0.5, 0.999)
    assert cfg.color_jitter == (0.4, 0.4, 0.4, 0.2)  # lib/datasets/imagenet.py, search split
    assert (o["distill"], o["lam"]) == ("kl-mean", 1.0)
    assert (o["warmup_epochs"], o["s_e"], o["s_u"], o["e_layers"], o.get("e_channels", 0)) == \
        (10, 3.0, 1.0, 14, 0)
    _, _, m = build(cfg, steps_per_epoch=1)         # 10 warm-up epochs, 30 cycles of 3 + 1
    assert [m.cycle_phase(i) for i in range(130)] == \
        ["warmup"] * 10 + (["separate"] * 3 + ["joint"]) * 30


# --------------------------------------------------------------------- distillation (Eq. 9-10)
def test_distillation_is_zero_for_equal_logits_and_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(5, 10, generator=g) for _ in range(3)]
    e = [torch.randn(5, 10, generator=g) for _ in range(3)]
    assert distillation_loss(s, [x.clone() for x in s], 2.0).item() == 0.0
    want = 0.0
    for si, ei in zip(s, e, strict=True):
        p, q = F.softmax(ei / 2, 1), F.softmax(si / 2, 1)
        want += 4.0 * float((p * (p.log() - q.log())).sum(1).mean())
    assert math.isclose(distillation_loss(s, e, 2.0).item(), want, rel_tol=1e-5)


def test_smooth_l1_distillation_of_the_stage_ensemble_on_hand_set_logits():
    # Cream interactive_type 3: stage logits × 1/3 each, stacked; T²·mean smooth-ℓ1 (β = 1)
    s = [torch.zeros(1, 2) for _ in range(3)]
    e = [torch.tensor([[6.0, 0.0]]), torch.tensor([[0.3, 0.0]]), torch.zeros(1, 2)]
    # differences 2.0 (|d| - 0.5 = 1.5) and 0.1 (0.5·d² = 0.005) over 6 elements, × T² = 4
    assert math.isclose(distillation_loss(s, e, 2.0, "smoothl1").item(), 4 * 1.505 / 6,
                        rel_tol=1e-6)
    # learned ensemble weights: softmax(ensemble) = (1/2, 1/4, 1/4) scales both sides
    w = torch.tensor([0.5, 0.25, 0.25]).log()
    want = 4 * ((3.0 - 0.5) + 0.5 * 0.075 ** 2) / 6
    assert math.isclose(distillation_loss(s, e, 2.0, "smoothl1", w).item(), want, rel_tol=1e-6)
    assert distillation_loss(e, [x.clone() for x in e], 2.0, "smoothl1").item() == 0.0


def test_kl_mean_distillation_is_the_element_mean_over_the_stage_ensemble():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(4, 5, generator=g) for _ in range(3)]
    e = [torch.randn(4, 5, generator=g) for _ in range(3)]
    q = F.log_softmax(torch.cat(s) / 3 / 2, 1)    # equal weights 1/3, T = 2
    p = F.softmax(torch.cat(e) / 3 / 2, 1)
    want = 4 * float((p * (p.log() - q)).sum()) / (12 * 5)
    assert math.isclose(distillation_loss(s, e, 2.0, "kl-mean").item(), want, rel_tol=1e-5)


def test_ensemble_distillation_trains_the_ensemble_weights_with_w_e(tiny_cfg):
    net, obj, m = build(small(tiny_cfg, distill="smoothl1"))
    assert m.ensemble is not None and m.ensemble.shape == (3,)
    m.step(batch(obj, 0), batch(obj, 1))            # separate learning builds E
    assert any(p is m.ensemble for p in m.e_params)
    w0, a0 = m.ensemble.detach().clone(), snapshot(m.a_params)
    out = m.arch_step(batch(obj, 2), batch(obj, 3))
    assert out.terms["distill"] > 0
    assert not torch.equal(w0, m.ensemble) and not same(a0, m.a_params)
    assert build(small(tiny_cfg))[2].ensemble is None  # the paper's KL has no ensemble


def test_joint_step_distillation_gradient_reaches_alpha_and_w_e_only(tiny_cfg):
    net, obj, m = build(small(tiny_cfg))
    m.step(batch(obj, 0), batch(obj, 1))
    with frozen(m.w_params):
        out, distill, _ = m.joint_loss(batch(obj, 2))
        assert distill.item() > 0 and all(not p.requires_grad for p in m.w_params)
        ga = torch.autograd.grad(distill, m.a_params, retain_graph=True)
        ge = torch.autograd.grad(distill, m.e_params, allow_unused=True)
    assert any(float(x.abs().sum()) > 0 for x in ga)
    assert any(x is not None and float(x.abs().sum()) > 0 for x in ge)
    assert out.terms["distill"] == distill.detach()


# ------------------------------------------------------------------------ optimisers (Eq. 6-8)
@pytest.mark.parametrize("variant", ["full", "distill"])
def test_joint_step_moves_alpha_and_w_e_and_weight_step_moves_w_s(tiny_cfg, variant):
    net, obj, m = build(small(tiny_cfg, variant=variant))
    m.step(batch(obj, 0), batch(obj, 1))            # separate learning: only E moves
    a0, w0, e0 = snapshot(m.a_params), snapshot(m.w_params), snapshot(m.e_params)
    m.arch_step(batch(obj, 2), batch(obj, 3))       # the joint step (Eq. 8)
    assert not same(a0, m.a_params)
    assert same(w0, m.w_params) and all(p.grad is None for p in m.w_params)
    assert same(e0, m.e_params) == (variant == "distill")
    a1, e1 = snapshot(m.a_params), snapshot(m.e_params)
    m.weight_step(batch(obj, 4))                    # Eq. (6): SGD on w_S only
    assert not same(w0, m.w_params)
    assert same(a1, m.a_params) and same(e1, m.e_params)
    heads = list(m.s_heads.parameters())            # the embedding modules learn as probes
    assert all(id(p) in {id(q) for g in m.w_opt.param_groups for q in g["params"]} for p in heads)


def test_phases_follow_algorithm_1(tiny_cfg):
    # 4 steps per epoch: warm-up 1 epoch, then cycles of S_E = 2 and S_U = 1 steps
    net, obj, m = build(small(tiny_cfg, "nb201", epochs=3, s_e=0.5, s_u=0.25, warmup_epochs=1))
    want = ["warmup"] * 4 + ["separate", "separate", "joint"] * 2 + ["separate", "separate"]
    assert [m.cycle_phase(i) for i in range(12)] == want
    a0 = snapshot(m.a_params)
    for i in range(6):
        m.step(batch(obj, 2 * i), batch(obj, 2 * i + 1))
    assert same(a0, m.a_params)                     # α rests in warm-up and separate learning
    assert m.eval_net is not None
    e0 = snapshot(m.e_params)
    stats = m.step(batch(obj, 20), batch(obj, 21))  # the joint step
    assert {"loss", "val_loss", "arch_distill", "arch_e_ce"} <= set(stats)
    assert not same(a0, m.a_params) and not same(e0, m.e_params)


def test_s_alone_ablation_has_no_eval_net_and_adds_l1(tiny_cfg):
    net, obj, m = build(small(tiny_cfg, variant="s"))
    stats = m.step(batch(obj, 0), batch(obj, 1))
    assert m.eval_net is None and m.s_heads is None and m.cycle_phase() == "search"
    assert stats["arch_l1"] > 0 and m.derive() == m.discretise()


# --------------------------------------------------------------------------- λ' (Eq. 11)
def test_l1_schedule_decays_to_zero_over_two_thirds():
    assert [l1_schedule(e, 30, 5.0, 2 / 3) for e in (0, 10, 20, 29)] == \
        pytest.approx([5.0, 2.5, 0.0, 0.0])
    assert l1_schedule(12, 20, 5.0, 0.5, warmup=10) == pytest.approx(3.0)
    net, obj, m = build(resolve_config("cdarts-cifar10", dataset="digits", device="cpu"))
    got = []
    for epoch in (0, 2, 22, 42, 61):                # 2 warm-up + 60 loop epochs = 30 cycles
        m.begin_epoch(epoch)
        got.append(m.l1_weight)
    assert got == pytest.approx([5.0, 5.0, 2.5, 0.0, 0.0])
    net, obj, m = build(resolve_config("cdarts-nb201", dataset="digits", device="cpu"))
    assert m.l1_weight == 0.0                       # off in NAS-Bench-201


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("opts,msg", [
    ({"k": 3}, "larger than the 2 inputs"),
    ({"k": 1}, "exactly 2 inputs per node"),
    ({"s_u": 0}, "s_u .* must be positive"),
    ({"s_e": -1}, "s_e .* must be positive"),
    ({"e_layers": 2}, "1 stage.* needs equal stages"),
    ({"variant": "both"}, "unknown cdarts variant"),
    ({"l1_ops": "skip"}, "not an op of the darts space"),
    ({"s_e": 2.0}, "no joint step would run"),
    ({"distill": "l2"}, "option distill must be one of kl, kl-mean, smoothl1"),
])
def test_bad_options_raise_one_clear_error(tiny_cfg, opts, msg):
    with pytest.raises(DiffnasError, match=msg):
        build(small(tiny_cfg, **opts))


def test_eval_net_that_does_not_fit_the_images_is_a_clear_error(tiny_cfg):
    net, obj, m = build(small(tiny_cfg))
    with pytest.raises(DiffnasError, match="evaluation network .* too small"):
        m.step(batch(obj, 0, size=2), batch(obj, 1, size=2))


def test_cli_reports_a_bad_option_in_one_line(capsys, tmp_path):
    rc = main(["search", "--method", "cdarts", "--dataset", "digits", "--subset", "64",
               "--channels", "4", "--layers", "3", "--epochs", "2", "--no-progress",
               "--device", "cpu", "--opt", "s_u=0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: method 'cdarts': option s_u") and "Trace" not in err


# ------------------------------------------------------------------------- end to end, resume
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_search_runs_end_to_end_on_digits(tiny_cfg, tmp_path, space):
    cfg = small(tiny_cfg, space, subset=64, epochs=2)
    res = search(cfg, out=tmp_path / space, progress=False)
    assert len(res.history) == 2
    assert "train_e_sep_loss" in res.history[0] and "train_arch_distill" in res.history[0]
    assert res.genotype.to_dict() == json.loads((tmp_path / space / "genotype.json").read_text())
    ckpt = torch.load(tmp_path / space / "checkpoint.pt", weights_only=True)
    # the result is the discretisation of the final α (Cream); E's genotype is recorded apart
    net, obj, m = build(cfg)
    net.load_state_dict(ckpt["model"])
    assert res.genotype == m.discretise()
    result = json.loads((tmp_path / space / "result.json").read_text())
    assert result["genotype"] == res.genotype.to_dict()
    assert result["eval_genotype"] == ckpt["method"]["eval_genotype"]
    assert res.history[-1]["eval_genotype"] == result["eval_genotype"]
    assert result["eval_genotype_str"] == str(genotype_from_dict(result["eval_genotype"]))
    assert result["genotype_connected"] is True or space == "nb201"


@pytest.mark.parametrize("distill", ["kl", "smoothl1"])
def test_resume_equals_uninterrupted(tiny_cfg, tmp_path, interrupted_search, assert_same_run,
                                     distill):
    # 2 steps per epoch, cycles of 1 separate + 2 joint steps: the cut falls mid-cycle
    cfg = small(tiny_cfg, "nb201", subset=64, epochs=3, s_e=0.5, s_u=1.0, distill=distill)
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", CDARTS)
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.skipif("mim" not in OBJECTIVES, reason="the MIM objective has not landed")
def test_mim_objective_composes_with_the_search_network(tiny_cfg):
    cfg = small(tiny_cfg, s_e=0.25, objective="mim", objective_args={"patch_size": 4})
    net, obj, m = build(cfg)
    m.step(batch(obj, 0), batch(obj, 1))            # separate learning
    dec = snapshot(obj.parameters())
    stats = m.step(batch(obj, 2), batch(obj, 3))    # joint + w_S steps
    assert "mim" in stats and "arch_mim" in stats and stats["arch_distill"] > 0
    assert not same(dec, list(obj.parameters()))    # the decoder trains with w_S (Eq. 6)
