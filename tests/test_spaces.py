"""Search spaces: op shapes, cell structure, parameter counts, the mixed edge against a naive
reference, and genotype derivation on hand-set α."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffnas.methods.base import SearchMethod
from diffnas.spaces import DartsGenotype, NB201Genotype, build_supernet
from diffnas.spaces.base import MixedEdge
from diffnas.spaces.darts import PRIMITIVES, DartsSupernet, derive_cell, reduction_layers
from diffnas.spaces.nb201 import EDGES, OPS, NB201Supernet
from diffnas.spaces.ops import darts_op, nb201_op

# ------------------------------------------------------------------------------------------ ops
FACTORIES = [("darts", darts_op, PRIMITIVES), ("nb201", nb201_op, OPS)]


@pytest.mark.parametrize(("space", "factory", "names"), FACTORIES, ids=["darts", "nb201"])
@pytest.mark.parametrize(("size", "stride", "expect"),
                         [(8, 1, 8), (8, 2, 4), (7, 1, 7), (7, 2, 4), (3, 2, 2), (2, 2, 1)])
def test_op_output_shapes(space, factory, names, size, stride, expect):
    c, b = 6, 3
    x = torch.randn(b, c, size, size)
    for name in names:
        for affine in (False, True):
            op = factory(name, c, stride, affine)
            y = op(x)
            assert y.shape == (b, c, expect, expect), (space, name, stride, size)
            if name == "none":
                assert not y.any(), "none must output zeros"
            else:
                assert y.abs().sum() > 0, (space, name)


def test_skip_connect_is_identity_at_stride_1_and_reduces_at_stride_2():
    x = torch.randn(2, 4, 6, 6)
    assert darts_op("skip_connect", 4, 1, False)(x) is x
    y = darts_op("skip_connect", 4, 2, False)(x)
    assert y.shape == (2, 4, 3, 3)


def op_params(name: str, c: int, stride: int) -> int:
    """Weights of one search-time (non-affine BN) DARTS op at ``c`` channels, from the paper's
    definitions: a separable conv is applied twice (depthwise k×k + pointwise 1×1 each)."""
    k = {"3x3": 9, "5x5": 25}
    if name.startswith("sep_conv"):
        return 2 * (k[name[-3:]] * c + c * c)
    if name.startswith("dil_conv"):
        return k[name[-3:]] * c + c * c
    if name == "skip_connect" and stride == 2:
        return c * c  # factorized reduce: two 1×1 convs c → c/2
    return 0  # none, pools (BN without affine), identity


@pytest.mark.parametrize("stride", [1, 2])
def test_op_parameter_formula(stride):
    c = 16
    for name in PRIMITIVES:
        op = darts_op(name, c, stride, affine=False)
        assert sum(p.numel() for p in op.parameters()) == op_params(name, c, stride), name
    assert sum(p.numel() for p in darts_op("sep_conv_3x3", c, 1, False).parameters()) == \
        2 * (9 * c + c * c)
    nb = {"none": 0, "skip_connect": 0, "nor_conv_1x1": c * c, "nor_conv_3x3": 9 * c * c,
          "avg_pool_3x3": 0}
    for name in OPS:
        op = nb201_op(name, c, 1, affine=False)
        assert sum(p.numel() for p in op.parameters()) == nb[name], name


# ---------------------------------------------------------------------------------- structure
def darts_supernet_params(c: int, layers: int, classes: int, in_ch: int) -> int:
    """Weight count of the DARTS search network, from its description (§2.1, §3.1.1)."""
    stem_c = 3 * c
    total = in_ch * stem_c * 9 + 2 * stem_c  # 3×3 conv + affine BN
    c_pp, c_p, cur = stem_c, stem_c, c
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            cur *= 2
        total += c_pp * cur + c_p * cur  # pre0 (1×1 conv or factorized reduce) and pre1
        for src in (src for node in range(4) for src in range(2 + node)):
            stride = 2 if reduction and src < 2 else 1
            total += sum(op_params(name, cur, stride) for name in PRIMITIVES)
        c_pp, c_p = c_p, 4 * cur
    return total + c_p * classes + classes


def nb201_supernet_params(c: int, n: int, classes: int, in_ch: int) -> int:
    """Weight count of the NAS-Bench-201 search network (§2.1 of the paper)."""
    total = in_ch * c * 9 + 2 * c
    for stage in range(3):
        if stage:  # residual block c → 2c: 3×3 s2 conv + BN, 3×3 conv + BN, 1×1 shortcut
            total += 9 * c * 2 * c + 4 * c + 9 * 4 * c * c + 4 * c + c * 2 * c
            c *= 2
        total += n * len(EDGES) * (c * c + 9 * c * c)  # nor_conv_1x1 + nor_conv_3x3 per edge
    return total + 2 * c + c * classes + classes


def test_darts_supernet_structure_and_parameter_count():
    net = DartsSupernet(channels=16, layers=8, num_classes=10, in_channels=3)
    assert set(net.alphas) == {"normal", "reduce"}
    for kind in ("normal", "reduce"):
        assert net.alphas[kind].shape == (14, 8)
        assert len(net.edge_index[kind]) == 14
    assert net.arch_parameters() == [net.alphas["normal"], net.alphas["reduce"]]
    arch = {id(p) for p in net.arch_parameters()}
    assert not any(id(p) in arch for p in net.weight_parameters())
    for cell in net.cells:
        assert len(cell.edges) == 14
        for edge in cell.edges:
            assert edge.op_names == PRIMITIVES and len(edge.ops) == 8
    n_weights = sum(p.numel() for p in net.weight_parameters())
    assert n_weights == darts_supernet_params(16, 8, 10, 3)
    # the DARTS reference code logs "param size = 1.930618MB" for this search network
    assert n_weights == 1_930_618


def test_nb201_supernet_structure_and_parameter_count():
    net = NB201Supernet(channels=16, layers=5, num_classes=10, in_channels=3)
    assert list(net.alphas) == ["cell"]
    assert net.alphas["cell"].shape == (6, 5)
    cells = [b for b in net.blocks if hasattr(b, "edges")]
    assert len(cells) == 15
    for cell in cells:
        assert len(cell.edges) == 6
        assert all(e.op_names == OPS and len(e.ops) == 5 for e in cell.edges)
    assert sum(p.numel() for p in net.weight_parameters()) == nb201_supernet_params(16, 5, 10, 3)


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 8, 14, 20])
def test_reduction_cells_at_one_and_two_thirds(layers):
    expect = (layers // 3, 2 * layers // 3) if layers >= 3 else ()
    assert reduction_layers(layers) == expect


def test_reduction_cells_double_channels_and_stride_input_edges():
    net = DartsSupernet(channels=4, layers=5, num_classes=3, in_channels=1)
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [1, 3]
    sep = PRIMITIVES.index("sep_conv_3x3")
    widths = [cell.edges[0].ops[sep].first.dw.in_channels for cell in net.cells]
    assert widths == [4, 8, 8, 16, 16]
    for cell in net.cells:
        c = cell.edges[0].ops[sep].first.dw.in_channels
        x = torch.randn(2, c, 9, 9)
        for e, (src, _dst) in enumerate(net.edge_index["reduce"]):
            y = cell.edges[e].ops[sep](x)
            assert y.shape[-1] == (5 if cell.reduction and src < 2 else 9)
    assert net.feature_channels == 4 * 16 and net.feature_stride == 4


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_any_input_shape_and_classes(space):
    layers = 3 if space == "darts" else 1
    torch.manual_seed(0)
    # one network takes any image size; in_channels and classes change stem and classifier
    for in_ch, classes, sizes in [(1, 10, (28, 7)), (3, 100, (32, 16, 14))]:
        net = build_supernet(space, 4, layers, classes, in_ch)
        for size in sizes:
            x = torch.randn(2, in_ch, size, size)
            feats = net.forward_features(x)
            side = math.ceil(math.ceil(size / 2) / 2)  # two reductions, odd sizes round up
            assert feats.shape == (2, net.feature_channels, side, side), size
            out = net.head(feats)
            assert out.shape == (2, classes) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ the mixed edge
def naive_edge(edge: MixedEdge, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Σ_o softmax(α)_o · op_o(x) over every op, ``none`` included (DARTS Eq. 2)."""
    w = F.softmax(alpha, dim=-1)
    return sum(w[o] * op(x) for o, op in enumerate(edge.ops))


@pytest.mark.parametrize(("factory", "names", "stride"),
                         [(darts_op, PRIMITIVES, 1), (darts_op, PRIMITIVES, 2),
                          (nb201_op, OPS, 1)], ids=["darts-normal", "darts-reduce", "nb201"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mixed_edge_equals_naive_sum(factory, names, stride, channels_last):
    # 16 channels: vectorised CPU kernels take other paths from there on
    c = 16
    torch.manual_seed(0)
    edge = MixedEdge(names, factory, c, stride, affine=False)
    x0 = torch.randn(4, c, 7, 7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    edge = edge.to(memory_format=fmt)
    x0 = x0.contiguous(memory_format=fmt)
    alpha0 = torch.randn(len(names))
    alpha0[0] = 2.0  # a large `none` weight must still only scale the others
    params = list(edge.parameters())
    results = []
    for run in ("mixed", "naive"):
        x = x0.clone().requires_grad_()
        alpha = alpha0.clone().requires_grad_()
        if run == "mixed":
            active = [i for i, n in enumerate(names) if n != "none"]
            y = edge(x, F.softmax(alpha, dim=-1), active)
        else:
            y = naive_edge(edge, x, alpha)
        # upstream gradient laid out like the activations (a channels-last backward)
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape).contiguous(memory_format=fmt)
        grads = torch.autograd.grad((y * g).sum(), [x, alpha, *params])
        results.append((y.detach(), grads))
    (y_m, g_m), (y_n, g_n) = results
    torch.testing.assert_close(y_m, y_n, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_m, g_n, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mixed_edge_with_none_active_and_single_op():
    torch.manual_seed(0)
    edge = MixedEdge(PRIMITIVES, darts_op, 4, 1, affine=False)
    x = torch.randn(2, 4, 5, 5)
    w = F.softmax(torch.randn(8), dim=-1)
    every = edge(x, w, range(8))
    no_none = edge(x, w, range(1, 8))
    torch.testing.assert_close(every, no_none)
    sep = PRIMITIVES.index("sep_conv_3x3")
    torch.testing.assert_close(edge(x, w, [sep]), w[sep] * edge.ops[sep](x))
    assert edge(x, w, []) is None


def test_supernet_forward_independent_of_none_being_computed():
    """Running `none` on every edge (as textbook DARTS does) gives the same logits."""
    torch.manual_seed(0)
    net = build_supernet("darts", 4, 3, 10, 1)
    x = torch.randn(4, 1, 10, 10)
    base = net(x)

    class AllOps(SearchMethod):
        def __init__(self) -> None:  # only the edge policy is used here
            pass

        def edge_policy(self, supernet, kind):
            ew = super().edge_policy(supernet, kind)
            ew.active = [tuple(range(len(supernet.op_names)))] * len(ew.active)
            return ew

    net.policy = AllOps()
    torch.testing.assert_close(net(x), base, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- derivation
def test_darts_derivation_on_hand_set_weights():
    ops = {n: i for i, n in enumerate(PRIMITIVES)}
    w = torch.full((14, 8), 0.01)

    def put(edge, **weights):
        for name, v in weights.items():
            w[edge, ops[name]] = v

    # node 2 (edges 0, 1): edge 1 has `none` largest, but its best real op is weaker than
    # edge 0's; both are kept (only 2 inputs), strongest first
    put(0, sep_conv_3x3=0.5)
    put(1, none=0.9, max_pool_3x3=0.3)
    # node 3 (edges 2, 3, 4 from nodes 0, 1, 2): `none` dominates edge 2 yet its strongest real
    # op (0.4) beats edge 3 (0.35); edge 4 is the strongest
    put(2, none=0.95, dil_conv_5x5=0.4)
    put(3, skip_connect=0.35)
    put(4, avg_pool_3x3=0.6)
    # node 4 (edges 5..8 from nodes 0..3): edges 6 and 8; edge 7 only has `none`
    put(5, sep_conv_5x5=0.2)
    put(6, dil_conv_3x3=0.7)
    put(7, none=0.99)
    put(8, skip_connect=0.3)
    # node 5 (edges 9..13 from nodes 0..4): a tie between 10 and 12 goes to the lower input
    put(10, sep_conv_3x3=0.45)
    put(12, max_pool_3x3=0.45)
    put(13, sep_conv_5x5=0.5)
    gene = derive_cell(w)
    assert gene == (("sep_conv_3x3", 0), ("max_pool_3x3", 1),
                    ("avg_pool_3x3", 2), ("dil_conv_5x5", 0),
                    ("dil_conv_3x3", 1), ("skip_connect", 3),
                    ("sep_conv_5x5", 4), ("sep_conv_3x3", 1))
    assert all(op != "none" for op, _ in gene)


def test_darts_genotype_from_alpha_via_method_weighting():
    net = DartsSupernet(channels=2, layers=1, num_classes=2, in_channels=1)
    ops = {n: i for i, n in enumerate(PRIMITIVES)}
    with torch.no_grad():
        for a in net.alphas.values():
            a.zero_()
        normal, reduce = net.alphas["normal"], net.alphas["reduce"]
        for e in range(14):
            normal[e, ops["none"]] = 8.0  # `none` is the argmax of every edge
            reduce[e, ops["max_pool_3x3"]] = 1.0 + 0.1 * e  # later edges stronger
        normal[1, ops["sep_conv_5x5"]] = 3.0
        normal[0, ops["dil_conv_3x3"]] = 2.0
    weights = {k: F.softmax(a.detach(), dim=-1) for k, a in net.alphas.items()}
    g = net.genotype(weights)
    assert isinstance(g, DartsGenotype)
    assert g.normal[:2] == (("sep_conv_5x5", 1), ("dil_conv_3x3", 0))
    assert all(op != "none" for op, _ in g.normal)
    # reduce: every edge is max_pool; per node the two highest-numbered inputs win
    assert g.reduce == (("max_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 2),
                        ("max_pool_3x3", 1), ("max_pool_3x3", 3), ("max_pool_3x3", 2),
                        ("max_pool_3x3", 4), ("max_pool_3x3", 3))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_nb201_derivation_keeps_none():
    net = NB201Supernet(channels=2, layers=1, num_classes=2, in_channels=1)
    choice = ["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]
    with torch.no_grad():
        net.alphas["cell"].zero_()
        for e, name in enumerate(choice):
            net.alphas["cell"][e, OPS.index(name)] = 1.0
    weights = {"cell": F.softmax(net.alphas["cell"].detach(), dim=-1)}
    g = net.genotype(weights)
    assert g == NB201Genotype(tuple(choice))
    assert str(g) == ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                      "|avg_pool_3x3~0|nor_conv_1x1~1|none~2|")
