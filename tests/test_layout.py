"""Channels-last on CPU: the subsampling op keeps gradients in the input's layout and equals
slicing exactly; a training step of an evaluation network in channels-last equals the
contiguous one (at the shape where torch 2.13's stride-2 1×1 backward corrupted memory)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from diffnas.nets import build_network
from diffnas.spaces import parse_genotype
from diffnas.spaces.ops import FactorizedReduce, subsample

CL = torch.channels_last


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 6, 7, 7), (2, 4, 1, 1)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_subsample_equals_slicing_and_keeps_layout(shape, fmt):
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
    outs = subsample(x, (0, 1))
    ref = [x[:, :, o::2, o::2] for o in (0, 1)]
    for a, b in zip(outs, ref, strict=True):
        assert torch.equal(a, b)
    gs = [torch.randn_like(r) for r in ref]
    (gx,) = torch.autograd.grad(outs, x, gs)
    (gr,) = torch.autograd.grad(ref, x, gs)
    assert torch.equal(gx, gr)
    if fmt is CL and shape[-1] > 1:
        assert gx.is_contiguous(memory_format=CL) and not gx.is_contiguous()
    (g3,) = torch.autograd.grad(subsample(x, (0,), 3)[0].sum(), x)
    assert torch.equal(g3, torch.autograd.grad(x[:, :, ::3, ::3].sum(), x)[0])


def test_factorized_reduce_gradient_is_channels_last():
    fr = FactorizedReduce(4, 4, affine=True).to(memory_format=CL)
    x = torch.randn(4, 4, 8, 8).contiguous(memory_format=CL).requires_grad_()
    fr(x).square().sum().backward()
    assert x.grad.is_contiguous(memory_format=CL)


def test_channels_last_training_step_equals_contiguous():
    torch.manual_seed(0)
    net = build_network(parse_genotype("DARTS_V2"), channels=4, layers=5, num_classes=10,
                        in_channels=1, input_size=8, auxiliary=True)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    grads = []
    for fmt in (torch.contiguous_format, CL):
        n = copy.deepcopy(net).to(memory_format=fmt).train()
        logits, aux = n.forward_with_aux(x.contiguous(memory_format=fmt))
        (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
        grads.append([p.grad for p in n.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
