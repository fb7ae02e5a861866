"""SNAS' resource constraint (the ``resource`` part): the op cost counts, the term's value on a
hand-set sample, its gradient pushing α towards cheaper ops (each estimator), the presets."""

from __future__ import annotations

import math

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.methods.resource import concrete_log_prob, edge_costs

CPU = torch.device("cpu")
RES = {"regularisers": "resource"}


def _method(tiny_cfg, space="nb201", method="snas", layers=2, **args):
    return build_search(tiny_cfg(method=method, space=space, layers=layers,
                                 method_args={**RES, **args}), 1, 8, 10, 4, CPU)


def _part(m):
    (part,) = [p for p in m.regularisers if p.name == "resource"]
    return part


def test_cost_table_counts_parameters_flops_and_mac_of_each_op(tiny_cfg):
    net, _, m = _method(tiny_cfg, space="darts", layers=3)
    part = _part(m)
    assert part.costs is None and part._hooks
    net.train()
    net(torch.randn(2, 1, 8, 8))
    assert part.costs is not None and not part._hooks  # hooks removed after one forward
    names = net.op_names
    cost = part.costs["normal"][0]  # first normal cell: 4 channels, 8×8 inputs, stride 1
    c, y = 4, 8
    sep3 = 2 * c * 9 + 2 * c * c
    assert cost[0, names.index("sep_conv_3x3")].tolist() == [sep3, sep3 * y * y,
                                                           y * y * 8 * c + sep3]
    dil5 = c * 25 + c * c
    assert cost[0, names.index("dil_conv_5x5")].tolist() == [dil5, dil5 * y * y,
                                                           y * y * 4 * c + dil5]
    assert cost[0, names.index("skip_connect")].tolist() == [0, 0, 2 * c * y * y]
    assert cost[0, names.index("max_pool_3x3")].tolist() == [0, 9 * c * y * y, 2 * c * y * y]
    assert cost[0, names.index("none")].tolist() == [0, 0, 0]
    # a reduction cell's stride-2 edge (input of the previous cell: 8 channels, 8×8 → 4×4)
    red = part.costs["reduce"][0]
    c, y = 8, 4
    assert red[0, names.index("max_pool_3x3")].tolist() == [0, 9 * c * y * y, 5 * c * y * y]
    assert red[0, names.index("skip_connect")].tolist() == [
        c * c, c * c * y * y, 2 * y * y * (4 * c + c // 2) + c * c]


def test_term_value_on_a_hand_set_sample():
    costs = torch.tensor([[[[1.0, 1.0, 1.0], [5.0, 40.0, 300.0]]]])  # 1 cell, 1 edge, 2 ops
    z = torch.tensor([[0.25, 0.75]])
    r = [0.25 * 1 + 0.75 * 5, 0.25 * 1 + 0.75 * 40, 0.25 * 1 + 0.75 * 300]
    assert float(edge_costs(costs, z, "all", True)) == pytest.approx(
        sum(math.log(v) for v in r) / 3)
    assert float(edge_costs(costs, z, "flops", True)) == pytest.approx(math.log(r[1]))
    assert float(edge_costs(costs, z, "all", False)) == pytest.approx(
        0.43 * (2 * r[0] + r[1] / 4000 + r[2] / 100))
    assert float(edge_costs(costs, z, "mac", False)) == pytest.approx(r[2])
    # a cost below 1 counts as 1 under the log (log 0), as in the reference
    assert float(edge_costs(costs, torch.tensor([[0.5, 0.0]]), "size", True)) == 0.0
    # the Concrete density integrates to 1 over the 1-simplex (n = 2: z = (t, 1 − t))
    logits, tau = torch.tensor([0.3, -0.4]), 2.0
    t = torch.linspace(1e-4, 1 - 1e-4, 20001)
    dens = concrete_log_prob(logits.expand(len(t), 2), torch.stack([t, 1 - t], 1), tau).exp()
    assert float(torch.trapezoid(dens, t)) == pytest.approx(1.0, abs=2e-3)


def _mean_grad(part, alpha, draws):
    """Mean and standard error over ``draws`` × edges of the term's gradient w.r.t. α (every
    edge of the hand-made cost is an independent draw at α = 0)."""
    gs = []
    for _ in range(draws):
        alpha.grad = None
        part.arch_terms(None, None)["resource"].backward()
        gs.append(alpha.grad.clone())
    g = torch.stack(gs).reshape(-1, alpha.shape[1])
    return g.mean(0), g.std(0) / g.shape[0] ** 0.5, g


@pytest.mark.parametrize("estimator", ["reparam", "policy", "expected"])
def test_gradient_pushes_alpha_towards_cheaper_ops(tiny_cfg, estimator):
    _, _, m = _method(tiny_cfg, resource_estimator=estimator, tau_max="1", tau_min="1",
                      resource_weight="1")
    part = _part(m)
    alpha = m.net.alphas["cell"]
    n_edges, n_ops = alpha.shape
    # a hand-made cost on every edge: op 0 cheap, ops 1-3 dear, the last dearest
    cost = torch.tensor([1.0, 1e3, 1e3, 1e3, 1e4], dtype=torch.float64)
    part.costs = {"cell": cost.view(1, 1, -1, 1).expand(1, n_edges, n_ops, 3).clone()}
    with torch.no_grad():
        alpha.zero_()
    torch.manual_seed(0)
    mean, se, g = _mean_grad(part, alpha, 4000 if estimator == "policy" else 200)
    # descent raises the cheapest op's α and lowers the dearest's (beyond 4 standard errors)
    assert mean[0] < -4 * se[0] - 1e-6 and mean[-1] > 4 * se[-1] + 1e-6
    assert torch.allclose(g.sum(1), torch.zeros(len(g)), atol=1e-5)  # shift-invariant in α
    if estimator == "policy":  # the score function estimates the pathwise gradient's mean
        part.estimator = "reparam"
        ref, _, _ = _mean_grad(part, alpha, 300)
        assert ((mean - ref).abs() < 5 * se).all()
        return
    before = torch.softmax(alpha.detach(), -1).clone()
    opt = torch.optim.SGD([alpha], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        part.arch_terms(None, None)["resource"].backward()
        opt.step()
    after = torch.softmax(alpha.detach(), -1)
    assert (after[:, 0] > before[:, 0] + 0.1).all()  # the cheapest op gained on every edge
    assert (after[:, -1] < before[:, -1]).all()      # the dearest lost
    assert ((after * cost.float()).sum(-1) < (before * cost.float()).sum(-1)).all()


def test_search_logs_the_term_and_presets_use_it_where_the_reference_did(tiny_cfg, tmp_path):
    cfg = tiny_cfg(method="snas", space="darts", epochs=1, layers=3, subset=32,
                   method_args={**RES, "resource_weight": "0.01"})
    result = search(cfg, out=tmp_path / "r", progress=False)
    value = result.history[-1]["train_arch_resource"]
    assert math.isfinite(value) and value > 0
    darts = resolve_config("snas-cifar10").method_args
    assert darts["regularisers"] == "resource" and darts["resource_weight"] == 1.5e-3
    assert resolve_config("snas-cpu").method_args["regularisers"] == "resource"
    assert "regularisers" not in resolve_config("snas-nb201-cifar10").method_args
    assert "regularisers" not in resolve_config("cpu", method="snas").method_args


def test_resource_option_errors(tiny_cfg):
    with pytest.raises(DiffnasError, match="resource_estimator='pg' is unknown"):
        _method(tiny_cfg, resource_estimator="pg")
    with pytest.raises(DiffnasError, match="weighting=gumbel"):
        _method(tiny_cfg, method="drnas", resource_estimator="policy")
    with pytest.raises(DiffnasError, match="resource_weight must be >= 0"):
        _method(tiny_cfg, resource_weight="-1")
    # any part-built method can use the expected-cost form
    _, _, m = _method(tiny_cfg, method="darts", resource_estimator="expected")
    assert _part(m).estimator == "expected"
