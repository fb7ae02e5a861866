"""Regulariser and perturbation parts: β-DARTS, DARTS-, SDARTS-RS/ADV, FairDARTS' zero-one
loss, DrNAS' anchors and the ℓ1 on skip α."""

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


def test_l2_anchor_gradient_is_adam_weight_decay_and_l1_picks_ops():
    a = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    reg.l2_anchor([a]).backward()
    assert torch.equal(a.grad, a.detach())
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
