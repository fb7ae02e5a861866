"""PC-DARTS: partial channels (exactly C/K channels through the ops, bypass, shuffle), edge
normalisation (β per node, arch parameters, used in derivation), the method end to end in
both spaces, exact resume, and the generic options on another method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffnas.errors import DiffnasError
from diffnas.spaces import build_supernet
from diffnas.spaces.base import MixedEdge, node_softmax, shuffle_cat
from diffnas.spaces.darts import PRIMITIVES, derive_cell
from diffnas.spaces.ops import darts_op

SPACES = [("darts", 8, 3), ("nb201", 8, 1)]  # space, channels, layers


def reference_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' channel_shuffle: view [B, g, C/g, H, W], swap the two channel axes."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


# ------------------------------------------------------------------------------ channel shuffle
@pytest.mark.parametrize("k", [2, 4])
def test_shuffle_cat_is_the_reference_shuffle_and_a_permutation(k):
    c = 3
    head = torch.randn(2, c, 5, 4).contiguous(memory_format=torch.channels_last)
    rest = torch.randn(2, (k - 1) * c, 5, 4)
    y = shuffle_cat(head, rest, k)
    assert torch.equal(y, reference_shuffle(torch.cat([head, rest], 1), k))
    assert y.is_contiguous(memory_format=torch.channels_last)
    # channel j of the input (value j everywhere) lands once and only once
    ids = torch.arange(k * c, dtype=torch.float).view(1, -1, 1, 1).expand(1, -1, 2, 2)
    out = shuffle_cat(ids[:, :c], ids[:, c:], k)[0, :, 0, 0]
    assert sorted(out.tolist()) == list(range(k * c))
    assert out[::k].tolist() == list(range(c))  # the ops' channels on every k-th slot


# ------------------------------------------------------------------------------ partial channels
def naive_partial_edge(edge: MixedEdge, x, weights, active, scale=None):
    """The reference MixedOp: Σ w_o op_o(x[:, :C/K]) (each op's plain forward), bypass of the
    rest (2×2 max-pool when strided), concatenated and shuffled; × the β-weight."""
    k = edge.partial_channels
    c = x.shape[1] // k
    ops = sum(weights[i] * edge.ops[i](x[:, :c]) for i in active)
    rest = x[:, c:] if edge.stride == 1 else F.max_pool2d(x[:, c:], 2, 2)
    y = reference_shuffle(torch.cat([ops, rest], 1), k)
    return y if scale is None else scale * y


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("scaled", [False, True])
def test_partial_edge_matches_the_reference_formula_and_its_gradients(stride, scaled):
    torch.manual_seed(0)
    c, k = 64, 4  # 16 op channels: where torch's channels-last BN backward bug would show
    edge = MixedEdge(PRIMITIVES, darts_op, c, stride, affine=False, partial_channels=k)
    active = [i for i, n in enumerate(PRIMITIVES) if n != "none"]
    x0 = torch.randn(3, c, 6, 6)
    w0 = torch.rand(len(PRIMITIVES), requires_grad=True)
    s0 = torch.tensor(0.7, requires_grad=True) if scaled else None
    outs, grads = [], []
    for fast in (True, False):
        x = x0.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
        if fast:
            w = w0 * s0 if scaled else w0  # the supernet folds the β-weight into the ops
            y = edge(x, w, active, s0)
        else:
            y = naive_partial_edge(edge, x, w0, active, s0)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad, w0.grad.clone(), *([s0.grad.clone()] if scaled else [])])
        w0.grad = None
        if scaled:
            s0.grad = None
    assert outs[0].shape == (3, c, 6 // stride, 6 // stride)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bypass_passes_when_no_op_is_active_and_odd_sizes_pool_to_the_ops_size():
    edge = MixedEdge(PRIMITIVES, darts_op, 8, 2, affine=False, partial_channels=4)
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    y = edge(x, torch.ones(len(PRIMITIVES)), ())
    assert y.shape == (2, 8, 4, 4)
    assert not y[:, ::4].any()  # the op channels are zeros
    torch.testing.assert_close(y[:, 1::4], F.max_pool2d(x[:, 2:4], 2, 2, ceil_mode=True))


@pytest.mark.parametrize(("space", "channels", "layers"), SPACES)
def test_exactly_c_over_k_channels_go_through_every_op(space, channels, layers):
    k = 4
    net = build_supernet(space, channels, layers, 10, 1, partial_channels=k)
    seen: list[tuple[int, int]] = []  # (op input channels, edge input channels)
    edges = [m for m in net.modules() if isinstance(m, MixedEdge)]
    for edge in edges:
        edge.register_forward_pre_hook(lambda m, args: setattr(m, "_c_in", args[0].shape[1]))
        for op in edge.ops:  # dilated convs may run in the polyphase domain (phase_body)
            for name in ("body", "phase_body") if hasattr(op, "phase_body") else ("body",):
                body = getattr(op, name)

                def spy(inp, *rest, _body=body, _edge=edge):
                    seen.append((inp.shape[1], _edge._c_in))
                    return _body(inp, *rest)

                setattr(op, name, spy)
    net(torch.randn(2, 1, 16, 16))
    assert len(seen) == len(edges) * (len(net.op_names) - 1)  # every op but none, once
    assert {edge_c for _, edge_c in seen} >= {channels, 2 * channels}  # wider stages too
    assert all(op_c * k == edge_c for op_c, edge_c in seen), set(seen)
    # every op was built for C/K channels: a full-width supernet has ~K× the conv weights
    full = build_supernet(space, channels, layers, 10, 1)
    assert sum(p.numel() for p in net.weight_parameters()) < \
        sum(p.numel() for p in full.weight_parameters()) / 2


@pytest.mark.parametrize("bad", [0, 3, -2])
def test_partial_channels_must_divide_every_edge(bad):
    with pytest.raises(DiffnasError, match="partial_channels"):
        build_supernet("darts", 8, 3, 10, 1, partial_channels=bad)


# ------------------------------------------------------------------------------ edge normalisation
@pytest.mark.parametrize(("space", "channels", "layers"), SPACES)
def test_beta_weights_sum_to_one_per_node_and_are_arch_parameters(space, channels, layers):
    net = build_supernet(space, channels, layers, 10, 1, edge_norm=True, partial_channels=4)
    with torch.no_grad():
        for b in net.betas.values():
            b.copy_(torch.randn_like(b) * 3)
    for kind in net.kinds:
        s = net.edge_norm_weights(kind)
        dst = torch.tensor([d for _, d in net.edge_index[kind]])
        sums = torch.zeros(int(dst.max()) + 1).index_add_(0, dst, s)
        torch.testing.assert_close(sums[dst.unique()], torch.ones(len(dst.unique())))
        assert (s > 0).all()
    arch = {id(p) for p in net.arch_parameters()}
    assert all(id(b) in arch for b in net.betas.values())
    assert not arch & {id(p) for p in net.weight_parameters()}
    assert all(f"betas.{k}" in net.state_dict() for k in net.kinds)  # checkpointed
    net(torch.randn(2, 1, 16, 16)).logsumexp(1).sum().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in net.betas.values())


def test_node_softmax_handles_edges_in_any_order():
    edges = [(1, 2), (0, 3), (0, 2), (1, 3), (2, 3)]
    beta = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    s = node_softmax(beta, edges)
    torch.testing.assert_close(s[[2, 0]], F.softmax(beta[[2, 0]], 0))
    torch.testing.assert_close(s[[1, 3, 4]], F.softmax(beta[[1, 3, 4]], 0))


def test_edge_norm_scales_each_edge_output_by_its_beta_weight():
    """Node 2 of a DARTS cell: with edge normalisation its input is Σ_i β̂_i f_i(x_i)."""
    torch.manual_seed(0)
    net = build_supernet("darts", 4, 1, 10, 1, edge_norm=True)
    with torch.no_grad():
        net.betas["normal"].copy_(torch.arange(14.0) / 3)
    ew = net.edge_weights()["normal"]
    plain = net.policy.edge_policy(net, "normal")
    s = net.edge_norm_weights("normal")
    torch.testing.assert_close(ew.weights, plain.weights * s[:, None])
    cell = net.cells[0]
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    for e in (0, 1):
        a = cell.edges[e](x, ew.weights[e], ew.active[e], ew.bypass_scale(e))
        b = cell.edges[e](x, plain.weights[e], plain.active[e])
        torch.testing.assert_close(a, s[e] * b, rtol=1e-4, atol=1e-5)


def test_derivation_ranks_edges_by_beta_times_op_weight():
    """A hand-set cell where α alone keeps inputs 0 and 1 of node 3, but β makes edge 0 weak:
    PC-DARTS' derivation (β-weight × op weight) keeps inputs 1 and 2 instead."""
    net = build_supernet("darts", 4, 3, 10, 1, edge_norm=True)
    n_ops = len(PRIMITIVES)
    w = torch.full((14, n_ops), 0.1)
    sep = PRIMITIVES.index("sep_conv_3x3")
    w[2:5, sep] = torch.tensor([0.5, 0.45, 0.4])  # node 3 ← 0, 1, 2
    weights = {"normal": w, "reduce": w.clone()}
    by_alpha = derive_cell(w)
    assert [src for _, src in by_alpha[2:4]] == [0, 1]
    with torch.no_grad():
        net.betas["normal"].zero_()
        net.betas["normal"][2] = -2.0  # softmax over node 3's edges: edge 0 gets ~0.06
        net.betas["reduce"].zero_()
    g = net.genotype(weights)
    assert sorted(src for _, src in g.normal[2:4]) == [1, 2]
    assert g.reduce == by_alpha  # equal β: the same cell as α alone
    assert all(op == "sep_conv_3x3" for op, _ in g.normal[2:4])


# ------------------------------------------------------------------------------ the method
def test_presets_follow_the_reference_code():
    from diffnas.config import resolve_config

    c = resolve_config("pcdarts-cifar10")
    assert (c.method, c.space, c.dataset, c.epochs, c.batch_size, c.channels, c.layers) == \
        ("pcdarts", "darts", "cifar10", 50, 256, 16, 8)
    assert (c.w_lr, c.w_lr_min, c.w_momentum, c.w_weight_decay, c.grad_clip) == \
        (0.1, 0.0, 0.9, 3e-4, 5.0)
    assert (c.a_lr, c.a_betas, c.a_weight_decay, c.train_portion) == \
        (6e-4, (0.5, 0.999), 1e-3, 0.5)
    assert c.method_args == {"arch_warmup_epochs": 15}
    n = resolve_config("pcdarts-nb201-cifar10")
    assert (n.space, n.epochs, n.batch_size, n.w_lr, n.w_lr_min, n.a_lr, n.layers) == \
        ("nb201", 100, 64, 0.025, 0.001, 3e-4, 5)
    assert n.method_args == {"partial_channels": 4, "edge_norm": False, "arch_warmup_epochs": 0}
    cpu, nb = resolve_config("pcdarts-cpu"), resolve_config("pcdarts-nb201-cpu")
    assert (cpu.dataset, cpu.epochs, cpu.batch_size, cpu.w_lr, cpu.method_args) == \
        ("fashion-mnist", 4, 64, 0.1, {})  # warm-up: the share, 1 of 4 epochs
    assert (nb.space, nb.w_lr, nb.method_args) == ("nb201", 0.025, n.method_args)


@pytest.mark.parametrize(("method", "args", "k", "norm"), [
    ("pcdarts", {}, 4, True),                                    # the method's defaults
    ("pcdarts", {"partial_channels": "1", "edge_norm": "0"}, 1, False),
    ("darts", {}, 1, False),
    ("darts", {"partial_channels": "4", "edge_norm": "true"}, 4, True),  # any method
    ("drnas", {"partial_channels": "4"}, 4, False),              # as DrNAS' DARTS space
    ("gdas", {"edge_norm": "1"}, 1, True),
])
def test_method_options_reach_the_supernet_and_the_arch_optimiser(tiny_cfg, method, args, k,
                                                                   norm):
    from diffnas.engine.search import build_search

    cfg = tiny_cfg(method=method, method_args=args)
    net, _, m = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
    edges = [e for e in net.modules() if isinstance(e, MixedEdge)]
    assert {e.partial_channels for e in edges} == {k}
    assert bool(net.betas) == norm and net.edge_norm == norm
    optimised = {id(p) for g in m.a_opt.param_groups for p in g["params"]}
    assert {id(p) for p in net.arch_parameters()} == optimised
    assert all(id(b) in optimised for b in net.betas.values())


def test_warm_up_is_the_reference_share_of_the_epochs_unless_given(tiny_cfg):
    from diffnas.engine.search import build_search

    def frozen(epochs: int, **args) -> list[bool]:
        cfg = tiny_cfg(method="pcdarts", epochs=epochs, method_args=args)
        _, _, m = build_search(cfg, 1, 8, 10, 4, torch.device("cpu"))
        out = []
        for e in range(epochs):
            m.begin_epoch(e)
            out.append(m.arch_frozen())
        return out

    assert frozen(50).index(False) == 15  # the reference: α frozen for epochs 0..14
    assert frozen(4) == [True, False, False, False]
    assert frozen(4, arch_warmup_epochs=0) == [False] * 4
    assert frozen(4, arch_warmup_epochs="2") == [True, True, False, False]


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_pcdarts_end_to_end_on_digits(tiny_cfg, tmp_path, space):
    """Two epochs: α and β stay at their initial values in the warm-up epoch, then move; the
    metrics carry both snapshots."""
    from diffnas.engine.search import build_search, search

    cfg = tiny_cfg(method="pcdarts", space=space, subset=64, epochs=2)
    _, _, fresh = build_search(cfg, 1, 8, 10, 1, torch.device("cpu"))
    init_alpha = {k: w.tolist() for k, w in fresh.alpha_weights().items()}
    init_beta = {k: w.tolist() for k, w in fresh.net.beta_weights().items()}
    result = search(cfg, out=tmp_path / "run", progress=False)
    first, last = result.history
    assert (tmp_path / "run" / "genotype.json").exists()
    assert set(first["beta"]) == set(first["alpha"]) == set(init_alpha)
    for k in init_alpha:
        torch.testing.assert_close(torch.tensor(first["alpha"][k]), torch.tensor(init_alpha[k]),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(first["beta"][k]), torch.tensor(init_beta[k]),
                                   atol=1e-5, rtol=0)
        assert first["alpha"][k] != last["alpha"][k] and first["beta"][k] != last["beta"][k]
    assert "search_val_loss" not in first and "search_val_loss" in last  # no α step, then one


def test_pcdarts_resume_is_exact(tiny_cfg, tmp_path, interrupted_search, assert_same_run):
    from diffnas.engine.search import search
    from diffnas.methods.pcdarts import PCDARTS

    cfg = tiny_cfg(method="pcdarts", space="nb201", subset=64, epochs=3)  # α frozen in epoch 0
    straight = search(cfg, out=tmp_path / "straight", progress=False)
    interrupted_search(cfg, tmp_path / "resumed", PCDARTS, at=2)
    resumed = search(cfg, out=tmp_path / "resumed", resume=True, progress=False)
    assert resumed.genotype == straight.genotype
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
