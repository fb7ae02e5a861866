"""spaces.sharing (pools computed once per cell input) and MixedEdge's polyphase sum of the
dilated ops give the unshared supernet's outputs, gradients and BN running averages; the
fallback where either does not apply."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from diffnas.spaces import base, build_supernet, sharing
from diffnas.spaces.base import EdgePolicy, EdgeWeights
from diffnas.spaces.ops import Pool


class SubsetPolicy(EdgePolicy):
    """Softmax weights; each edge computes a fixed random subset of its ops (one op on some
    edges, none on others): single-path methods (GDAS) and P-DARTS' kept ops."""

    def __init__(self, n_ops: int, seed: int = 0, one: bool = False) -> None:
        self.rng, self.n_ops, self.one, self.cache = random.Random(seed), n_ops, one, {}

    def edge_policy(self, supernet, kind):  # type: ignore[no-untyped-def]
        if kind not in self.cache:
            ops = list(range(1, self.n_ops))
            self.cache[kind] = [tuple(sorted(self.rng.sample(ops, 1 if self.one else
                                                            self.rng.randint(0, len(ops)))))
                                for _ in supernet.edge_index[kind]]
        return EdgeWeights(F.softmax(supernet.alphas[kind], dim=-1), self.cache[kind])


def _pair(space: str, policy: str, **options):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    layers = 3 if space == "darts" else 1  # darts: normal, reduction and normal cells
    net = build_supernet(space, 4, layers, 10, 1, **options)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()
    if policy != "all":
        net.policy = SubsetPolicy(len(net.op_names), one=policy == "one")
    return net, copy.deepcopy(net)


def _run(net, x, shared: bool, steps: int = 2):  # type: ignore[no-untyped-def]
    old = sharing.ENABLED, base.phase_sum_enabled
    sharing.ENABLED = base.phase_sum_enabled = shared
    try:
        net.zero_grad(set_to_none=True)
        for _ in range(steps):
            out = net(x)
            (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return out
    finally:
        sharing.ENABLED, base.phase_sum_enabled = old


CASES = [("darts", "all", {}), ("darts", "all", {"partial_channels": 2}),
         ("darts", "subset", {}), ("darts", "one", {}),
         ("darts", "all", {"edge_ops": "keep"}), ("darts", "one", {"bn_batch_stats": True}),
         ("nb201", "all", {}), ("nb201", "one", {}), ("darts-odd", "all", {})]


@pytest.mark.parametrize(("space", "policy", "options"), CASES)
def test_shared_pools_equal_unshared(space, policy, options):  # type: ignore[no-untyped-def]
    size = 7 if space == "darts-odd" else 8  # 7×7: the polyphase sum falls back in cell 0
    space = space.removesuffix("-odd")
    if options.get("edge_ops") == "keep":  # P-DARTS' smaller supernet: 3 ops kept per edge
        options = {"edge_ops": {k: [(1, 2, 4 + e % 4) for e in range(14)]
                                for k in ("normal", "reduce")}}
    a, b = _pair(space, policy, **options)
    x = torch.randn(4, 1, size, size)
    ya, yb = _run(a, x, True), _run(b, x, False)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=1e-5, atol=1e-6, msg=name)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(_run_eval(a, x, True), _run_eval(b, x, False),
                                   rtol=1e-5, atol=1e-5)


def _run_eval(net, x, shared: bool):  # type: ignore[no-untyped-def]
    old = sharing.ENABLED, base.phase_sum_enabled
    sharing.ENABLED = base.phase_sum_enabled = shared
    try:
        return net(x)
    finally:
        sharing.ENABLED, base.phase_sum_enabled = old


def _pool_calls(net, x) -> int:  # type: ignore[no-untyped-def]
    calls = []
    hooks = [m.pool.register_forward_hook(lambda *_: calls.append(1))
             for m in net.modules() if isinstance(m, Pool)]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def test_dispatch_shares_in_training_and_falls_back_in_evaluation():
    torch.manual_seed(0)
    net = build_supernet("darts", 4, 1, 10, 1)  # one normal cell: 14 edges from 5 nodes
    x = torch.randn(2, 1, 8, 8)
    assert _pool_calls(net.train(), x) == 2 * 5  # max and avg pool once per source node
    net.eval()  # BN with running averages: each edge its own
    with torch.no_grad():
        assert _pool_calls(net, x) == 2 * 14
    pc = build_supernet("darts", 4, 1, 10, 1, partial_channels=2).train()
    assert _pool_calls(pc, x) == 2 * 14  # partial channels: each edge its own copy
    gdas = build_supernet("darts", 4, 1, 10, 1, bn_batch_stats=True).eval()
    with torch.no_grad():  # batch statistics in evaluation too: shared
        assert _pool_calls(gdas, x) == 2 * 5
    old = sharing.ENABLED
    sharing.ENABLED = False
    try:
        assert _pool_calls(net.train(), x) == 2 * 14
    finally:
        sharing.ENABLED = old


def test_momentum_none_is_not_shared():
    torch.manual_seed(0)
    a = build_supernet("darts", 4, 1, 10, 1)
    for m in a.modules():
        if isinstance(m, Pool) and m.bn is not None:
            m.bn.momentum = None
    b = copy.deepcopy(a)
    x = torch.randn(2, 1, 8, 8)
    assert _pool_calls(copy.deepcopy(a).train(), x) == 2 * 14
    _run(a, x, True)
    _run(b, x, False)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        torch.testing.assert_close(ba, bb, msg=name)


def test_dilated_ops_summed_in_the_polyphase_domain_on_even_sizes(monkeypatch):
    calls = []
    real = base.from_phases
    monkeypatch.setattr(base, "from_phases", lambda *a: calls.append(a[0].shape) or real(*a))
    torch.manual_seed(0)
    net = build_supernet("darts", 4, 1, 10, 1).train()  # one normal cell, 14 stride-1 edges
    net(torch.randn(2, 1, 8, 8))
    assert len(calls) == 14  # one conversion per edge for its two dilated ops
    calls.clear()
    net(torch.randn(2, 1, 7, 7))  # odd: padding pixels would enter BN's statistics
    assert calls == []
    one = build_supernet("darts", 4, 1, 10, 1).train()
    one.policy = SubsetPolicy(len(one.op_names), one=True)
    monkeypatch.setattr(base, "phase_sum_enabled", False)
    one(torch.randn(2, 1, 8, 8))
    assert calls == []
