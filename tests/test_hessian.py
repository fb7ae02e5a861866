"""The α-Hessian's dominant eigenvalue (RobustDARTS): power iteration against explicit
Hessians, its logging every K epochs, and that measuring it leaves the search unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from diffnas.engine.hessian import dominant_eigenvalue, supernet_hessian_eig
from diffnas.engine.search import build_search, search

CPU = torch.device("cpu")


def dominant(h: torch.Tensor) -> float:
    """The largest-magnitude eigenvalue of a symmetric matrix."""
    ev = torch.linalg.eigvalsh(h)
    return float(ev[ev.abs().argmax()])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_power_iteration_matches_a_quadratic(sign):
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([sign * 5.0, 2.0, -1.5, 1.0, 0.5, 0.1],
                                    dtype=torch.float64)) @ q.T
    x = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    loss = 0.5 * x @ a @ x + b @ x
    eig = dominant_eigenvalue(loss, [x], iters=500, tol=1e-10)
    assert eig == pytest.approx(sign * 5.0, rel=1e-6)


def test_power_iteration_matches_the_explicit_hessian_of_a_tiny_supernet(tiny_cfg):
    net, objective, method = build_search(tiny_cfg(space="nb201", layers=1), 1, 8, 10, 4, CPU)
    net.double()
    torch.manual_seed(0)
    with torch.no_grad():
        net.alphas["cell"].normal_(0, 1)
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.arange(16) % 10
    net.train()

    def loss_of(a: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(net, {"alphas.cell": a}, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    alpha = net.alphas["cell"]
    h = torch.autograd.functional.hessian(loss_of, alpha.detach().clone())
    h = h.reshape(alpha.numel(), alpha.numel())
    expected = dominant((h + h.T) / 2)
    bn_before = [b.clone() for b in net.buffers()]
    eig = supernet_hessian_eig(net, [alpha], lambda i: torch.nn.functional.cross_entropy(
        net(x), y), 1, iters=1000, tol=1e-12)
    assert eig == pytest.approx(expected, rel=1e-4)
    # the measurement restores the BN statistics the forward touched
    assert all(torch.equal(a, b) for a, b in zip(bn_before, net.buffers(), strict=True))


def test_hessian_every_k_is_logged_and_does_not_change_the_search(tiny_cfg, tmp_path):
    cfg = tiny_cfg(space="nb201", subset=64, epochs=4)
    plain = search(cfg, out=tmp_path / "plain", progress=False)
    watched = search(cfg.replace(hessian_every=2), out=tmp_path / "watched", progress=False)
    assert plain.genotype == watched.genotype
    records = [json.loads(line) for line in (tmp_path / "watched/metrics.jsonl").open()]
    logged = [r["epoch"] for r in records if "hessian_eig" in r]
    assert logged == [0, 2, 3]  # every 2 epochs and the last, as RobustDARTS' train_search
    assert all(abs(r["hessian_eig"]) > 0 for r in records if "hessian_eig" in r)
    ca = torch.load(tmp_path / "plain/checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "watched/checkpoint.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    # the same fixed batches every time: a second measurement of the same state is identical
    again = search(cfg.replace(hessian_every=2), out=tmp_path / "again", progress=False)
    assert again.history[-1]["hessian_eig"] == watched.history[-1]["hessian_eig"]
