"""Regulariser and perturbation parts: β-DARTS, DARTS-, SDARTS-RS/ADV, FairDARTS' zero-one
loss, DrNAS' anchors and the ℓ1 on skip α."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffnas.methods import perturb
from diffnas.methods import regularisers as reg


# ------------------------------------------------------------------------------ pure terms
def test_beta_decay_is_the_mean_logsumexp_over_all_edges():
    a = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])      # lse: log 2, log 4
    b = torch.tensor([[1.0, 2.0]])                           # lse: 2 + log(1 + e^-1)
    want = (math.log(2) + math.log(4) + 2 + math.log(1 + math.exp(-1))) / 3
    got = reg.beta_decay([a, b])
    assert got.item() == pytest.approx(want, rel=1e-6)
    # its gradient is softmax(α_e) / #edges: strongest ops are pulled down hardest
    a.requires_grad_(True)
    reg.beta_decay([a]).backward()
    assert torch.allclose(a.grad, F.softmax(a.detach(), -1) / 2)


def test_beta_decay_ramp_is_the_reference_formula():
    # Beta-DARTS architect: weights = 0 + 50 * epoch / 100
    assert [reg.linear_ramp(e, 50.0, 100) for e in (0, 1, 50, 99)] == [0.0, 0.5, 25.0, 49.5]


def test_zero_one_loss_on_hand_set_alpha():
    alpha = torch.tensor([[0.0, math.log(3.0)], [-math.log(3.0), 10.0]])
    w = torch.sigmoid(alpha)                       # 0.5, 0.75, 0.25, ~1
    far = 1 / (1 + math.exp(-10)) - 0.5
    want_l2 = -(0 + 0.0625 + 0.0625 + far ** 2) / 4
    want_l1 = -(0 + 0.25 + 0.25 + far) / 4
    assert reg.zero_one_loss([w]).item() == pytest.approx(want_l2, rel=1e-6)
    assert reg.zero_one_loss([w[:1], w[1:]], norm="l1").item() == pytest.approx(want_l1,
                                                                                rel=1e-6)
    with pytest.raises(ValueError, match="l1 or l2"):
        reg.zero_one_loss([w], norm="l3")


def test_dirichlet_kl_is_zero_at_the_anchor_and_positive_elsewhere():
    at_anchor = torch.zeros(3, 4)                  # ELU(0) + 1 = 1: Dir(1) itself
    assert reg.dirichlet_kl([at_anchor]).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])     # concentrations (3, 1) and (1, 1)
    # KL(Dir(3,1) ‖ Dir(1,1)) = KL(Beta(3,1) ‖ U) = log 3 − 2/3 (closed form)
    assert reg.dirichlet_kl([a]).item() == pytest.approx(math.log(3) - 2 / 3, rel=1e-5)


def test_l1_on_ops_picks_op_columns():
    b = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 6.0]])
    assert reg.l1_on_ops([b], [1]).item() == 7.0
    assert reg.l1_on_ops([b, b], [0, 2]).item() == 28.0
    assert reg.l1_on_ops([b], []).item() == 0.0


def test_dartsminus_beta_skip_decays_linearly_from_one():
    # DecayScheduler(linear, T_max=50): 1, 0.98, ..., 0.02 over the 50 epochs, then 0
    got = [reg.linear_decay(e, 1.0, 50) for e in (0, 1, 25, 49, 50, 60)]
    assert got == pytest.approx([1.0, 0.98, 0.5, 0.02, 0.0, 0.0])


# --------------------------------------------------------------------------- perturbations
def _on_simplex(w: torch.Tensor) -> bool:
    return bool((w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(w.shape[:-1])))


def test_simplex_maps():
    w = torch.tensor([[0.7, 0.5, -0.2], [-0.1, -0.3, -0.2]])
    c = perturb.clip_to_simplex(w)
    assert torch.allclose(c[0], torch.tensor([0.7, 0.5, 0.0]) / 1.2)
    assert torch.equal(c[1], torch.tensor([1.0, 0.0, 0.0]))   # all clamped away: argmax wins
    p = perturb.project_simplex(w)
    assert _on_simplex(p)
    assert torch.allclose(p[0], torch.tensor([0.6, 0.4, 0.0]))  # shift by 0.1, clip at 0
    q = torch.softmax(torch.randn(5, 4), -1)
    assert torch.allclose(perturb.project_simplex(q), q, atol=1e-6)  # a fixed point
    # Euclidean: no point of the simplex is closer than the projection
    x = torch.randn(1, 4)
    px = perturb.project_simplex(x)
    for _ in range(200):
        s = torch.distributions.Dirichlet(torch.ones(4)).sample()[None]
        assert (x - px).norm() <= (x - s).norm() + 1e-6


def test_epsilon_schedule_is_the_reference_formula():
    # 0.03 + (0.3 - 0.03) * epoch / epochs
    assert perturb.sdarts_epsilon(0, 50, 0.3) == pytest.approx(0.03)
    assert perturb.sdarts_epsilon(25, 50, 0.3) == pytest.approx(0.165)
    assert perturb.sdarts_epsilon(49, 50, 0.3) == pytest.approx(0.03 + 0.27 * 49 / 50)


@pytest.mark.parametrize("project", ["clip", "euclidean"])
def test_random_perturbation_stays_on_the_simplex_within_eps(project):
    torch.manual_seed(0)
    w = {"normal": torch.softmax(torch.randn(14, 8), -1), "reduce": torch.softmax(
        torch.randn(14, 8), -1)}
    eps = 0.3
    out = perturb.random_perturbation(w, eps, perturb.PROJECTIONS[project])
    for k in w:
        assert _on_simplex(out[k])
        assert not torch.allclose(out[k], w[k])
    # clip keeps a weight's perturbation within the ball before renormalising
    if project == "clip":
        torch.manual_seed(1)
        raw = {k: v + torch.empty_like(v).uniform_(-eps, eps) for k, v in w.items()}
        torch.manual_seed(1)
        again = perturb.random_perturbation(w, eps)
        for k in w:
            assert torch.allclose(again[k], perturb.clip_to_simplex(raw[k]))


def test_pgd_raises_the_loss_and_stays_in_the_ball_on_the_simplex():
    torch.manual_seed(0)
    target = torch.softmax(torch.randn(6, 5), -1)
    w = {"cell": torch.softmax(torch.randn(6, 5), -1)}

    def loss_fn(ws):  # a smooth loss of the weights alone
        return ((ws["cell"] - target) ** 2).sum() + (ws["cell"][:, 0] * 3).sum()

    eps = 0.1
    out, before, after = perturb.pgd_perturbation(w, loss_fn, eps, steps=7)
    assert before == pytest.approx(float(loss_fn(w)))
    assert after > before
    assert after == pytest.approx(float(loss_fn(out)))
    assert _on_simplex(out["cell"])
    # the random start alone raises the loss less than the full attack (on average)
    rs = [float(loss_fn(perturb.random_perturbation(w, eps))) for _ in range(20)]
    assert after > max(rs)


def test_pgd_falls_back_to_the_unperturbed_weights():
    w = {"cell": torch.softmax(torch.randn(3, 4), -1)}
    # a loss that any perturbation can only lower: minimal at the unperturbed weights' negation
    base = w["cell"].clone()

    def loss_fn(ws):
        return -((ws["cell"] - base) ** 2).sum()

    out, before, after = perturb.pgd_perturbation(w, loss_fn, 0.2)
    assert torch.equal(out["cell"], base)
    assert after == before


# ------------------------------------------------------------------- DARTS- auxiliary skip
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_aux_skip_adds_exactly_beta_times_skip(space):
    from diffnas.spaces import build_supernet

    torch.manual_seed(0)
    net = build_supernet(space, 4, 3, 10, 1, aux_skip=True)
    plain = build_supernet(space, 4, 3, 10, 1)
    names, plain_names = ({n for n, _ in m.named_parameters()} for m in (net, plain))
    # stride-2 edges (DARTS reduction cells) get a FactorizedReduce with its own weights
    assert names > plain_names if space == "darts" else names == plain_names
    weights = set(map(id, net.weight_parameters()))
    strides = set()
    for edge in net.mixed_edges():
        strides.add(edge.stride)
        skip = edge.ops[edge.op_names.index("skip_connect")]
        assert edge.aux is not skip and type(edge.aux) is type(skip)  # its own module
        assert all(id(p) in weights for p in edge.aux.parameters())
        x = torch.randn(2, edge.c, 8, 8).contiguous(memory_format=torch.channels_last)
        w = torch.softmax(torch.randn(len(edge.op_names)), -1)
        active = range(1, len(edge.op_names))
        edge.aux_scale = 0.0
        without = edge(x, w, active)
        edge.aux_scale = 0.37
        with_aux = edge(x, w, active)
        assert torch.allclose(with_aux - without, 0.37 * edge.aux(x), atol=1e-6)
        if edge.stride == 1:  # identity: exactly β·x
            assert torch.equal(edge(x, w, []), 0.37 * x)
    assert strides == ({1, 2} if space == "darts" else {1})
    net.set_aux_scale(0.5)
    assert {e.aux_scale for e in net.mixed_edges()} == {0.5}


# --------------------------------------------------------------------------- parts in methods
def _method(tiny_cfg, **kw):
    """(net, objective, method, batch) for a tiny digits config (8×8 images, 10 classes)."""
    from diffnas.engine.search import build_search
    from diffnas.objectives import Batch

    cfg = tiny_cfg(**kw)
    net, objective, method = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return net, objective, method, Batch(x, y)


def _set_alphas(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.alphas.values():
            a.copy_(torch.randn(a.shape, generator=g))


def _extra_arch_loss(method, objective, net, batch):
    """The α step's loss minus the plain objective, and its logged terms."""
    method.phase = "arch"
    out = method.arch_loss(batch)
    plain = objective(net, batch)
    method.phase = "eval"
    return float((out.loss - plain.loss).detach()), out.terms


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_betadarts_adds_lambda_times_mean_logsumexp(tiny_cfg, space):
    net, objective, method, batch = _method(tiny_cfg, method="betadarts", space=space, epochs=10)
    _set_alphas(net)
    method.begin_epoch(4)  # λ = 50 · 4 / 10 (span 0: the run's epochs)
    extra, terms = _extra_arch_loss(method, objective, net, batch)
    rows = torch.cat([a.detach() for a in net.alphas.values()])
    want = 20.0 * torch.logsumexp(rows, -1).mean().item()
    assert extra == pytest.approx(want, rel=1e-4)
    assert float(terms["beta_decay"]) == pytest.approx(want, rel=1e-5)
    assert method.step(batch, batch)["beta_decay_lambda"] == 20.0
    method.begin_epoch(0)
    assert _extra_arch_loss(method, objective, net, batch)[0] == pytest.approx(0.0, abs=1e-6)


def test_zero_one_dirichlet_kl_and_l1_skip_on_any_method(tiny_cfg):
    opts = {"weighting": "sigmoid", "regularisers": "zero_one,dirichlet_kl,l1_skip",
            "dirichlet_kl_scale": 0.5, "l1_skip_weight": 4.0, "l1_skip_ratio": 0.5}
    net, objective, method, batch = _method(tiny_cfg, space="nb201", epochs=4,
                                            method_args=opts)
    _set_alphas(net)
    method.begin_epoch(1)  # ℓ1: 4 · (1 − 1/(0.5·4)) = 2
    a = net.alphas["cell"].detach()
    zero_one = -10.0 * ((torch.sigmoid(a) - 0.5) ** 2).mean().item()
    kl = 0.5 * reg.dirichlet_kl([a]).item()
    l1 = 2.0 * a[:, net.op_names.index("skip_connect")].abs().sum().item()
    extra, terms = _extra_arch_loss(method, objective, net, batch)
    assert float(terms["zero_one"]) == pytest.approx(zero_one, rel=1e-5)
    assert float(terms["dirichlet_kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(terms["l1_skip"]) == pytest.approx(l1, rel=1e-5)
    assert extra == pytest.approx(zero_one + kl + l1, rel=1e-4)


def test_dartsminus_schedule_reaches_every_edge_and_trains_the_aux_weights(tiny_cfg):
    net, _, method, batch = _method(tiny_cfg, method="dartsminus", space="darts", epochs=5,
                                    layers=3)
    aux = [e.aux for e in net.mixed_edges()]
    assert all(m is not None for m in aux)
    trained = set(map(id, method.w_params))
    reduce_aux = [p for m in aux for p in m.parameters()]
    assert reduce_aux and all(id(p) in trained for p in reduce_aux)
    for epoch, beta in [(0, 1.0), (2, 0.6), (4, 0.2)]:
        method.begin_epoch(epoch)
        assert [e.aux_scale for e in net.mixed_edges()] == pytest.approx([beta] * 42)
        assert method.step(batch, batch)["beta_skip"] == pytest.approx(beta)
    before = [p.detach().clone() for p in reduce_aux]
    method.step(batch, batch)
    assert any(not torch.equal(p, q) for p, q in zip(reduce_aux, before, strict=True))
    # the genotype ignores the aux skip: same derivation as DARTS from the same α
    assert method.derive() == net.genotype(method.alpha_weights())


@pytest.mark.parametrize("mode", ["rs", "adv"])
def test_sdarts_weight_step_runs_on_perturbed_simplex_weights(tiny_cfg, mode):
    net, objective, method, batch = _method(tiny_cfg, method=f"sdarts-{mode}", space="nb201",
                                            epochs=2)
    _set_alphas(net)
    method.begin_epoch(1)  # ε = 0.03 + 0.27 / 2
    eps = 0.165
    part = method.regularisers[0]
    assert part.eps == pytest.approx(eps)
    seen = {}
    original = method.edges.policy

    def spy(supernet, kind, w):  # the weights the edges get last in each phase
        seen[method.phase] = w.detach().clone()
        return original(supernet, kind, w)

    method.edges.policy = spy
    rng = torch.get_rng_state()
    method.step(batch, batch)
    soft = F.softmax(net.alphas["cell"].detach(), -1)  # α after this step's α update
    assert torch.allclose(seen["arch"], F.softmax(seen["arch"].log(), -1))  # a plain softmax
    w = seen["weight"]
    assert _on_simplex(w)
    assert not torch.allclose(w, soft, atol=1e-3)
    if mode == "rs":  # exactly clip(softmax(α) + δ), δ ~ U[−ε, ε] (the step's only draw)
        torch.set_rng_state(rng)
        delta = torch.empty_like(soft).uniform_(-eps, eps)
        assert torch.allclose(w, perturb.clip_to_simplex(soft + delta), atol=1e-6)
    method.phase = "eval"
    assert torch.allclose(method.edge_policy(net, "cell").weights, soft)  # no δ outside


def test_sdarts_adv_raises_the_train_loss_over_the_unperturbed_weights(tiny_cfg):
    net, objective, method, batch = _method(tiny_cfg, method="sdarts-adv", space="darts",
                                            epochs=2)
    _set_alphas(net, seed=3)
    method.begin_epoch(1)
    part = method.regularisers[0]
    method.phase = "weight"
    part.before_weight_step(batch)
    perturbed = part.perturbed

    def eval_loss(weights):  # the weight-step loss in eval mode (as the attack measures it)
        part.perturbed = weights
        net.eval()
        objective.eval()
        with torch.no_grad():
            loss = float(method.weight_loss(batch).loss)
        net.train()
        objective.train()
        return loss

    clean = eval_loss(method.alpha_weights())
    attacked = eval_loss(perturbed)
    assert attacked > clean
    assert part.gain == pytest.approx(attacked - clean, rel=1e-4, abs=1e-6)
    random = [eval_loss(perturb.random_perturbation(method.alpha_weights(), part.eps))
              for _ in range(3)]
    assert attacked > max(random)
    method.phase = "eval"
    for w in perturbed.values():
        assert _on_simplex(w)


def test_bad_part_options_are_one_line_errors(tiny_cfg):
    from diffnas.errors import DiffnasError

    for opts, needle in [({"sdarts_mode": "pgd"}, "sdarts_mode"),
                         ({"sdarts_eps": -1.0}, "sdarts_eps"),
                         ({"sdarts_projection": "l2"}, "sdarts_projection")]:
        with pytest.raises(DiffnasError, match=needle):
            _method(tiny_cfg, method="sdarts-rs", space="nb201", method_args=opts)
    with pytest.raises(DiffnasError, match="zero_one_norm"):
        _method(tiny_cfg, space="nb201",
                method_args={"regularisers": "zero_one", "zero_one_norm": "l3"})
    with pytest.raises(DiffnasError, match="l1_skip_ops"):
        _method(tiny_cfg, space="nb201",
                method_args={"regularisers": "l1_skip", "l1_skip_ops": "sep_conv_3x3"})
    with pytest.raises(DiffnasError, match="beta_decay_weight"):
        _method(tiny_cfg, method="betadarts", space="nb201",
                method_args={"beta_decay_weight": -1.0})


# --------------------------------------------------------------------------- end to end
METHODS_R = ["betadarts", "dartsminus", "sdarts-rs", "sdarts-adv"]
LOGGED = {"betadarts": "train_beta_decay_lambda", "dartsminus": "train_beta_skip",
          "sdarts-rs": "train_sdarts_eps", "sdarts-adv": "train_sdarts_gain"}


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("name", METHODS_R)
def test_method_end_to_end_on_digits(tiny_cfg, tmp_path, name, space):
    from diffnas.engine.search import search
    from diffnas.spaces import parse_genotype

    cfg = tiny_cfg(method=name, space=space, subset=32, layers=3 if space == "darts" else 1)
    result = search(cfg, out=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert LOGGED[name] in r
    assert parse_genotype(str(tmp_path / "run")) == result.genotype
    if name == "dartsminus":
        assert [r["train_beta_skip"] for r in records] == [1.0, 0.5]
    if name == "betadarts":
        assert [r["train_beta_decay_lambda"] for r in records] == [0.0, 25.0]


@pytest.mark.parametrize(("name", "space"), [(m, "nb201") for m in METHODS_R]
                         + [("dartsminus", "darts")])  # its FactorizedReduce aux weights
def test_resume_is_exact(tiny_cfg, tmp_path, interrupted_search, assert_same_run, name, space):
    from diffnas.engine.search import search
    from diffnas.methods import METHODS

    cfg = tiny_cfg(method=name, space=space, subset=32, epochs=3,
                   layers=3 if space == "darts" else 1)
    search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", METHODS[name])
    search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    a, _, _ = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    if space == "darts":
        assert any(".aux." in k for k in a["model"])


def test_beta_decay_composes_with_semantic(tiny_cfg, tmp_path):
    from diffnas.engine.search import search

    cfg = tiny_cfg(method="semantic", space="nb201", subset=32, epochs=2, layers=1,
                   image_size=16, objective_args={"patch_size": 4},
                   method_args={"regularisers": "beta_decay,sdarts"})
    search(cfg, out=tmp_path / "run", progress=False)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train_beta_decay_lambda"] == 25.0 and "train_arch_beta_decay" in last


def test_presets_follow_the_reference_scripts():
    from diffnas.config import resolve_config

    for name in METHODS_R:
        for suffix, space in (("cifar10", "darts"), ("nb201-cifar10", "nb201")):
            cfg = resolve_config(f"{name}-{suffix}")
            assert (cfg.method, cfg.space, cfg.dataset) == (name, space, "cifar10")
            assert (cfg.batch_size, cfg.w_lr, cfg.w_lr_min, cfg.a_lr, cfg.a_weight_decay,
                    cfg.channels, cfg.train_portion) == (64, 0.025, 0.001, 3e-4, 1e-3, 16, 0.5)
            assert cfg.layers == (8 if space == "darts" else 5)
        assert resolve_config(f"{name}-cifar10").epochs == 50
        # every method also runs with the CPU presets
        for preset in ("cpu", "nb201-cpu"):
            assert resolve_config(preset, method=name).method == name
            cfg = resolve_config(f"{name}-{preset}")
            assert (cfg.method, cfg.subset) == (name, resolve_config(preset).subset)
    for name in ("betadarts", "sdarts-rs", "sdarts-adv"):
        assert resolve_config(f"{name}-nb201-cifar10").epochs == 100
    assert resolve_config("betadarts-cifar10").method_args == {"beta_decay_span": 100}
    assert resolve_config("betadarts-cpu").method_args == {}  # λ over the run's epochs
    nb = resolve_config("dartsminus-nb201-cifar10")  # NAS-Bench-201's own DARTS-V1 protocol
    assert (nb.epochs, nb.w_weight_decay, nb.method_args) == (50, 5e-4, {"nesterov": True})
