"""DARTS+ early stopping (Liang et al., arXiv:1909.06035, §3.3) pinned on hand-set α sequences
with the default options: criterion 1 (≥ 2 skip-connects in the normal cell of the derived
genotype) and criterion 2 (the per-edge ranking of α over the learnable ops unchanged for 10
epochs)."""

from __future__ import annotations

import pytest
import torch

from diffnas.engine.search import build_search
from diffnas.methods.dartsplus import learnable_ranking
from diffnas.spaces import genotype_from_dict

CPU = torch.device("cpu")
LEARNABLE = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def darts_method(tiny_cfg, **opts):
    net, _, method = build_search(tiny_cfg(method="darts", space="darts",
                                           method_args={"early_stop": "dartsplus", **opts}),
                                  1, 8, 10, 4, CPU)
    return net, method


def end_epoch(method, epoch):
    method.epoch = epoch
    method.end_epoch({"genotype": method.derive().to_dict()})
    return method.stopped


def conv_alphas(net, order=LEARNABLE):
    """Both cells: every edge prefers the learnable ops in ``order`` (no skip-connect wins)."""
    with torch.no_grad():
        for a in net.alphas.values():
            a.zero_()
            for rank, op in enumerate(order):
                a[:, net.op_names.index(op)] = 2.0 - 0.1 * rank


def test_criterion_2_fires_after_ten_epochs_of_the_same_ranking(tiny_cfg):
    """The ranking set at epoch 0 and unchanged through epoch 10 stops the search at epoch 10
    (ten epochs stable), not at epoch 9; moving parameter-free ops (pools, skip below the
    convs, none) does not count as a change."""
    net, method = darts_method(tiny_cfg, dartsplus_skips=0)  # criterion 1 off
    conv_alphas(net)
    pool = net.op_names.index("max_pool_3x3")
    for epoch in range(10):
        assert end_epoch(method, epoch) is None, epoch
        with torch.no_grad():
            net.alphas["normal"][:, pool] += 0.15  # up to 1.5, always below the convs
            net.alphas["reduce"][:, net.op_names.index("none")] += 1.0
    stopped = end_epoch(method, 10)
    assert stopped["epoch"] == 10 and "unchanged for 10 epochs" in stopped["reason"]
    assert stopped["genotype"] == method.derive().to_dict()


def test_criterion_2_restarts_on_a_change_in_either_cell(tiny_cfg):
    net, method = darts_method(tiny_cfg, dartsplus_skips=0)
    conv_alphas(net)
    for epoch in range(6):
        assert end_epoch(method, epoch) is None
    with torch.no_grad():  # the reduction cell's last edge swaps its two weakest convs
        r = net.alphas["reduce"]
        i, j = net.op_names.index(LEARNABLE[2]), net.op_names.index(LEARNABLE[3])
        r[-1, i], r[-1, j] = r[-1, j].clone(), r[-1, i].clone()
    for epoch in range(6, 16):  # set at 6: stable for 10 epochs only at 16
        assert end_epoch(method, epoch) is None, epoch
    assert end_epoch(method, 16)["epoch"] == 16


def test_criterion_1_counts_skips_of_the_derived_normal_cell_only(tiny_cfg):
    """Two skip-connects chosen in the normal cell stop the search at once (criterion 2 on);
    many in the reduction cell, or a large skip α on edges the derivation drops, do not."""
    net, method = darts_method(tiny_cfg)
    conv_alphas(net)
    skip = net.op_names.index("skip_connect")
    with torch.no_grad():
        net.alphas["reduce"][:, skip] = 5.0
        net.alphas["normal"][0, skip] = 5.0  # node 0 (inputs 0, 1): one skip
    assert end_epoch(method, 0) is None
    with torch.no_grad():  # node 3 (edges 9-13) keeps its two strongest edges, 9 and 10
        n = net.alphas["normal"]
        n[9, net.op_names.index(LEARNABLE[0])] = n[10, net.op_names.index(LEARNABLE[0])] = 6.0
        n[11, skip] = 2.5  # edge 11's own argmax is skip_connect, but the edge is dropped
    assert end_epoch(method, 1) is None
    assert sum(o == "skip_connect" for o, _ in method.derive().normal) == 1
    with torch.no_grad():
        net.alphas["normal"][2, skip] = 5.0  # node 1's first edge: a second skip
    stopped = end_epoch(method, 2)
    assert stopped["epoch"] == 2 and "criterion 1: ≥ 2" in stopped["reason"]
    assert sum(o == "skip_connect" for o, _ in genotype_from_dict(stopped["genotype"]).normal) == 2


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_the_ranking_is_per_edge_over_learnable_ops(tiny_cfg, space):
    net, _, _ = build_search(tiny_cfg(method="darts", space=space), 1, 8, 10, 4, CPU)
    ranking = learnable_ranking({k: a.detach() for k, a in net.alphas.items()},
                                list(net.op_names))
    learnable = {i for i, o in enumerate(net.op_names)
                 if o not in ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")}
    assert len(ranking) == len(net.alphas)
    for kind_rows, (_, a) in zip(ranking, sorted((k, v.detach()) for k, v in net.alphas.items()),
                                 strict=True):
        assert len(kind_rows) == a.shape[0]
        for row, alpha in zip(kind_rows, a, strict=True):
            assert set(row) == learnable
            assert [float(alpha[i]) for i in row] == sorted((float(alpha[i]) for i in row),
                                                            reverse=True)


def test_the_stable_count_survives_a_checkpoint(tiny_cfg):
    net, method = darts_method(tiny_cfg, dartsplus_skips=0)
    conv_alphas(net)
    for epoch in range(5):
        end_epoch(method, epoch)
    state = method.state_dict()
    net2, method2 = darts_method(tiny_cfg, dartsplus_skips=0)
    net2.load_state_dict(net.state_dict())
    method2.load_state_dict(state)
    for epoch in range(5, 10):
        assert end_epoch(method2, epoch) is None
    assert end_epoch(method2, 10)["epoch"] == 10
