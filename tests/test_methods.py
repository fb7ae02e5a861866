"""The parts framework and the part-built baselines (GDAS, SNAS, FairDARTS, DrNAS):
mechanism-level tests of each part, option handling, end-to-end runs and exact resume."""

from __future__ import annotations

import pytest
import torch

from diffnas.cli import main
from diffnas.config import PRESETS, resolve_config
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.methods import METHODS
from diffnas.methods.parts import PARTS
from diffnas.spaces import NB201Genotype, sharing

CPU = torch.device("cpu")
BASELINES = ("gdas", "snas", "fairdarts", "drnas")


def build(tiny_cfg, method, space="nb201", steps=4, **kw):
    """Supernet, objective and method of ``method`` on 8×8 one-channel inputs."""
    return build_search(tiny_cfg(method=method, space=space, **kw), 1, 8, 10, steps, CPU)


def count_op_calls(net):
    """Wrap every op's ``body`` (and ``phase_body``, DilConv's polyphase form) so that
    ``calls[(edge module id, op index)]`` counts its runs. Pools shared between the edges of a
    node (spaces.sharing) skip the body of all but one edge: count with sharing off."""
    calls: dict[tuple[int, int], int] = {}
    def counting(body, key):
        def wrapped(*a, **k):
            calls[key] = calls.get(key, 0) + 1
            return body(*a, **k)
        return wrapped

    for edge in (m for m in net.modules() if hasattr(m, "ops") and hasattr(m, "op_names")):
        for i, op in enumerate(edge.ops):
            op.body = counting(op.body, (id(edge), i))
            if hasattr(op, "phase_body"):
                op.phase_body = counting(op.phase_body, (id(edge), i))
    return calls


# ------------------------------------------------------------------------------- GDAS: one op
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_gdas_computes_one_op_per_edge_and_every_alpha_gets_a_gradient(tiny_cfg, space,
                                                                       monkeypatch):
    monkeypatch.setattr(sharing, "ENABLED", False)  # count_op_calls counts op bodies
    torch.manual_seed(0)
    net, _, method = build(tiny_cfg, "gdas", space)
    net.train()
    ew = net.edge_weights()
    for e in ew.values():
        w = e.weights.detach()
        # straight-through weights: exactly one-hot in value
        assert torch.equal(w, torch.nn.functional.one_hot(w.argmax(1), w.shape[1]).float())
        for row, active in zip(w, e.active, strict=True):
            k = int(row.argmax())
            assert tuple(active) == (() if net.op_names[k] == "none" else (k,))
    # without `none` every edge runs exactly one op and lies on a path to the output, so every
    # α of every edge gets a gradient through the straight-through weight of that one op
    net, _, method = build(tiny_cfg, "gdas", space, layers=3, method_args={"drop_none": "1"})
    net.train()
    calls = count_op_calls(net)
    out = net(torch.randn(4, 1, 8, 8))
    edges = [m for m in net.modules() if hasattr(m, "ops") and hasattr(m, "op_names")]
    per_edge = {id(e): 0 for e in edges}
    for (edge, _), n in calls.items():
        per_edge[edge] += n
    assert set(per_edge.values()) == {1}
    out.square().mean().backward()
    for kind, a in net.alphas.items():
        assert (a.grad != 0).all(), kind


def test_gumbel_temperature_follows_the_linear_schedule(tiny_cfg):
    _, _, method = build(tiny_cfg, "gdas", epochs=5)
    taus = []
    for epoch in range(5):
        method.begin_epoch(epoch)
        taus.append(method.weighting.tau)
    assert taus == pytest.approx([10 - 9.9 * e / 4 for e in range(5)])
    assert taus[0] == 10.0 and taus[-1] == pytest.approx(0.1)
    _, _, snas = build(tiny_cfg, "snas", epochs=3, method_args={"tau_schedule": "exp"})
    snas.begin_epoch(1)
    assert snas.weighting.tau == pytest.approx((1.0 * 0.03) ** 0.5)  # geometric mid-point


def test_gumbel_samples_are_fresh_per_forward_and_evaluation_is_deterministic(tiny_cfg):
    net, _, method = build(tiny_cfg, "snas")
    net.train()
    a, b = (net.edge_weights()["cell"].weights for _ in range(2))
    assert not torch.equal(a, b)
    assert torch.allclose(a.sum(1), torch.ones(a.shape[0]))
    net.eval()
    c, d = (net.edge_weights()["cell"].weights for _ in range(2))
    assert torch.equal(c, d) and torch.allclose(c, torch.softmax(net.alphas["cell"], -1))


# ----------------------------------------------------------------------------- DrNAS: Dirichlet
def test_dirichlet_samples_lie_on_the_simplex_and_pass_gradient_to_alpha(tiny_cfg):
    _, _, method = build(tiny_cfg, "drnas")
    alpha = torch.randn(6, 5, requires_grad=True)
    torch.manual_seed(0)
    w = method.weighting.sample(alpha)
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(6))
    assert not torch.equal(w, method.weighting.sample(alpha))  # stochastic
    (w * torch.randn(6, 5)).sum().backward()
    assert alpha.grad is not None and (alpha.grad != 0).all()
    beta = torch.nn.functional.elu(alpha.detach()) + 1
    assert torch.allclose(method.weighting.weights(alpha.detach()),
                          beta / beta.sum(1, keepdim=True))
    # many samples average to the Dirichlet mean
    torch.manual_seed(1)
    mean = torch.stack([method.weighting.sample(alpha.detach()) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, beta / beta.sum(1, keepdim=True), atol=0.02)


def test_drnas_kl_variant_adds_the_kl_part_and_drops_alpha_weight_decay(tiny_cfg):
    _, _, l2 = build(tiny_cfg, "drnas")
    assert not l2.regularisers and l2.a_opt.param_groups[0]["weight_decay"] == 1e-3
    _, _, kl = build(tiny_cfg, "drnas", method_args={"reg_type": "kl"})
    assert [p.name for p in kl.regularisers] == ["dirichlet_kl"]
    assert kl.a_opt.param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(DiffnasError, match="reg_type='l3' is unknown; valid: l2, kl"):
        build(tiny_cfg, "drnas", method_args={"reg_type": "l3"})


def test_prune_part_keeps_the_largest_alphas_and_renormalises(tiny_cfg):
    net, _, m = build(tiny_cfg, "drnas", method_args={"regularisers": "prune",
                                                      "prune_epoch": "1", "prune_keep": "2"})
    a = net.alphas["cell"]
    with torch.no_grad():
        a.copy_(torch.arange(30, dtype=torch.float).reshape(6, 5) % 7 - 3)
    before = a.detach().clone()
    m.begin_epoch(0)
    assert torch.equal(a, before)  # not yet
    m.begin_epoch(1)
    top = before.topk(2, dim=1).indices
    kept = torch.zeros_like(before, dtype=torch.bool).scatter_(1, top, True)
    assert torch.equal(a.detach(), torch.where(kept, before, torch.zeros_like(before)))
    net.train()
    w = net.edge_weights()["cell"].weights
    assert (w[~kept] == 0).all() and torch.allclose(w.sum(1), torch.ones(6))
    derived = m.alpha_weights()["cell"]
    assert (derived[~kept] == 0).all()
    assert all(net.op_names.index(op) in top[e].tolist() for e, op in enumerate(m.derive().ops))
    with pytest.raises(DiffnasError, match="prune_keep in 1..5"):
        build(tiny_cfg, "drnas", method_args={"regularisers": "prune", "prune_keep": "9"})
    # DrNAS' kl variant adds its part beside a given list
    _, _, kl = build(tiny_cfg, "drnas", method_args={"regularisers": "prune", "reg_type": "kl"})
    assert [p.name for p in kl.regularisers] == ["prune", "dirichlet_kl"]


# ------------------------------------------------------------------------ FairDARTS: threshold
def test_fairdarts_supernet_has_no_none_and_sigmoid_weights(tiny_cfg):
    for space in ("darts", "nb201"):
        net, _, method = build(tiny_cfg, "fairdarts", space)
        assert "none" not in net.op_names
        a = next(iter(net.alphas.values()))
        assert torch.equal(method.edge_weights(a), torch.sigmoid(a))


def test_threshold_derivation_on_hand_set_alpha_nb201(tiny_cfg):
    net, _, method = build(tiny_cfg, "fairdarts", "nb201")
    names = net.op_names  # skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    logit = torch.logit(torch.tensor(0.9)).item()
    with torch.no_grad():
        a = net.alphas["cell"]
        a.fill_(-3.0)
        a[0, names.index("nor_conv_3x3")] = logit                 # σ = 0.9: kept
        a[1, names.index("skip_connect")] = torch.logit(torch.tensor(0.8)).item()  # under 0.85
        a[3, names.index("avg_pool_3x3")] = logit
    g = method.derive()
    assert isinstance(g, NB201Genotype)
    assert g.ops == ("nor_conv_3x3", "none", "none", "avg_pool_3x3", "none", "none")
    assert method.derivation.stats() == {"below_threshold": 0.0}
    with torch.no_grad():
        net.alphas["cell"][1, names.index("skip_connect")] = logit
    assert method.derive().ops[1] == "skip_connect"
    with torch.no_grad():  # every op under 0.85: thresholding would cut the cell, argmax kept
        net.alphas["cell"].fill_(-3.0)
        net.alphas["cell"][:, names.index("nor_conv_1x1")] = 0.5
    assert method.derive().ops == ("nor_conv_1x1",) * 6


def test_sampling_methods_normalise_with_batch_statistics_in_eval(tiny_cfg):
    """GDAS and SNAS train drawn ops but validate α's cell or mixture: their BNs keep no
    running averages (the reference's NB201 BN=0, there in the cells only); others' still do."""
    from torch import nn
    for name, tracked in (("gdas", False), ("snas", False), ("darts", True)):
        net, _, _ = build(tiny_cfg, name, "nb201")
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert net.stem[1] in bns and all(m.track_running_stats is tracked for m in bns)
        net.eval()
        assert torch.isfinite(net(torch.randn(4, 1, 8, 8))).all()


def test_threshold_derivation_on_hand_set_alpha_darts(tiny_cfg):
    net, _, method = build(tiny_cfg, "fairdarts", "darts")
    names = net.op_names
    with torch.no_grad():
        for a in net.alphas.values():
            a.fill_(-3.0)
            a[0, names.index("sep_conv_3x3")] = 3.0   # node 2 from input 0: σ ≈ 0.95
            a[1, names.index("skip_connect")] = 1.0   # node 2 from input 1: σ ≈ 0.73 < 0.85
    g = method.derive()
    assert g.normal[:2] == (("sep_conv_3x3", 0), ("skip_connect", 1))
    # every other kept edge is at σ(−3) < 0.85 as well: 2 kinds × (1 + 6) edges
    assert method.derivation.stats() == {"below_threshold": 14.0}
    with pytest.raises(DiffnasError, match=r"op_threshold must be in \(0, 1\)"):
        build(tiny_cfg, "fairdarts", method_args={"op_threshold": "1.5"})


# ---------------------------------------------------------------------------- options and parts
def test_any_part_can_be_switched_on_for_any_method(tiny_cfg):
    _, _, m = build(tiny_cfg, "darts", method_args={"weighting": "gumbel", "edges": "one",
                                                    "tau_max": "5"})
    assert m.weighting.name == "gumbel" and m.edges.name == "one"
    assert m.weighting.opts == {"tau_max": 5.0, "tau_min": 0.1, "tau_schedule": "linear"}
    _, _, s = build(tiny_cfg, "semantic", space="darts",
                    method_args={"regularisers": "beta_decay"})
    assert [p.name for p in s.regularisers] == ["beta_decay"]
    _, obj, g = build(tiny_cfg, "gdas", space="darts", objective="mim",
                      objective_args={"patch_size": 4})
    assert type(obj).__name__ != "CrossEntropy" and g.edges.name == "one"


def test_option_errors_name_what_is_accepted(tiny_cfg):
    with pytest.raises(DiffnasError, match=r"unknown weighting part .* 'nope'; valid: dirichlet, "
                                           r"gumbel, relu, sigmoid, softmax"):
        build(tiny_cfg, "darts", method_args={"weighting": "nope"})
    with pytest.raises(DiffnasError, match=r"option tau_max belongs to the part weighting=gumbel, "
                                           r"which this run does not use; add --opt "
                                           r"weighting=gumbel"):
        build(tiny_cfg, "darts", method_args={"tau_max": "3"})
    with pytest.raises(DiffnasError, match="has its own edge policy"):
        build(tiny_cfg, "stc", method_args={"weighting": "gumbel"})
    with pytest.raises(DiffnasError, match="tau_schedule 'cos' is unknown; valid: linear, exp"):
        build(tiny_cfg, "gdas", method_args={"tau_schedule": "cos"})
    with pytest.raises(DiffnasError, match="arch_optimizer='rmsprop' is unknown"):
        build(tiny_cfg, "darts", method_args={"arch_optimizer": "rmsprop"})


def test_generic_step_options(tiny_cfg):
    """w_first / single_level change which batch each step sees; arch_warmup_epochs skips α."""
    net, obj, m = build(tiny_cfg, "darts", method_args={"single_level": "1", "w_first": "1",
                                                        "arch_warmup_epochs": "1"})
    seen = []
    m.arch_step = lambda val, train: seen.append(("arch", val)) or m.weight_loss(val)
    m.weight_step = lambda train: seen.append(("weight", train)) or m.weight_loss(train)
    x = torch.randn(4, 1, 8, 8)
    train = obj.prepare(x, torch.zeros(4, dtype=torch.long), torch.Generator())
    val = obj.prepare(x + 1, torch.ones(4, dtype=torch.long), torch.Generator())
    m.begin_epoch(0)
    assert "val_loss" not in m.step(train, val) and seen == [("weight", train)]
    seen.clear()
    m.begin_epoch(1)
    m.step(train, val)
    assert seen == [("weight", train), ("arch", train)]


def test_gdas_uses_nesterov_and_weight_first(tiny_cfg):
    _, _, m = build(tiny_cfg, "gdas")
    assert m.w_opt.param_groups[0]["nesterov"] is True and m.opts["w_first"] is True


def test_presets_of_every_baseline_resolve():
    for name in BASELINES:
        for suffix in ("cifar10", "nb201-cifar10", "cpu", "nb201-cpu"):
            cfg = resolve_config(f"{name}-{suffix}")
            assert cfg.method == name
            assert cfg.space == ("nb201" if "nb201" in suffix else "darts")
        assert "(" in PRESETS[f"{name}-cifar10"].description  # names its source
        # the generic CPU presets run every method too
        assert resolve_config("cpu", method=name).method == name
    gdas = resolve_config("gdas-nb201-cifar10")
    assert (gdas.epochs, gdas.batch_size, gdas.w_lr, gdas.w_weight_decay) == (250, 64, 0.025, 5e-4)
    fair = resolve_config("fairdarts-cifar10")
    assert (fair.batch_size, fair.w_lr, fair.a_lr, fair.a_betas) == (128, 0.005, 3e-3, (0.9, 0.999))
    assert resolve_config("drnas-nb201-cifar10").epochs == 100


def test_list_shows_methods_and_parts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("gdas", "weighting=gumbel, edges=one", "snas", "fairdarts", "drnas",
                   "parts (any method", "weighting=dirichlet", "derivation=threshold",
                   "edges=one", "stc's own"):
        assert needle in out, needle
    assert set(PARTS["weighting"]) == {"softmax", "gumbel", "dirichlet", "sigmoid", "relu"}


# ------------------------------------------------------------------------ end to end and resume
@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("method", BASELINES)
def test_baselines_end_to_end_on_digits(tiny_cfg, tmp_path, method, space):
    cfg = tiny_cfg(method=method, space=space, subset=64, epochs=2)
    result = search(cfg, out=tmp_path / "run", progress=False)
    assert len(result.history) == 2
    assert (tmp_path / "run" / "genotype.json").exists()
    assert result.metrics["train_loss"] > 0
    assert METHODS[method].name == method


@pytest.mark.parametrize(("method", "space"), [*((m, "nb201") for m in BASELINES),
                                               ("gdas", "darts")])
def test_resume_is_exact_for_every_baseline(tiny_cfg, tmp_path, interrupted_search,
                                            assert_same_run, method, space):
    extra = {"regularisers": "prune", "prune_epoch": 1, "prune_keep": 3} if method == "drnas" \
        else {}  # DrNAS with its progressive pruning at the resumed epoch
    cfg = tiny_cfg(method=method, space=space, subset=64, epochs=2, method_args=extra)
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", METHODS[method])
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
