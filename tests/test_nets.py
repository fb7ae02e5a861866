"""Evaluation networks, the published-genotype registry and cost counting."""

import json
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffnas.errors import DiffnasError
from diffnas.nets import (
    REGISTRY,
    NB201Network,
    NetworkCIFAR,
    NetworkImageNet,
    build_network,
    count_cost,
    count_madds,
    count_ops,
    load_shared,
    shared_parameters,
)
from diffnas.nets.darts_net import drop_path
from diffnas.nets.registry import SEMANTIC_DARTS_TABLE_II
from diffnas.spaces import DartsGenotype, parse_genotype

V1, V2 = REGISTRY["DARTS_V1"].genotype, REGISTRY["DARTS_V2"].genotype


def tiny(genotype=V2, **kw):
    args = dict(channels=4, layers=3, num_classes=10, in_channels=1, input_size=8)
    args.update(kw)
    return NetworkCIFAR(genotype, **args)


# ------------------------------------------------------------------ published figures
PUBLISHED_PARAMS = [(name, setting, rep["params_m"])
                    for name, e in REGISTRY.items() for setting, rep in e.reported.items()
                    if "params_m" in rep]


def test_every_published_params_figure_is_pinned():
    # the figures the DARTS-family papers print for their own genotypes
    assert {(n, s) for n, s, _ in PUBLISHED_PARAMS} == {
        ("DARTS_V2", "cifar10"), ("DARTS_V2", "imagenet"), ("PC_DARTS_CIFAR", "cifar10"),
        ("PC_DARTS_IMAGENET", "imagenet"), ("PDARTS", "cifar10"), ("PDARTS", "imagenet"),
        ("SEMANTIC_DARTS_C10_S9999", "imagenet")}


@pytest.mark.parametrize("name,setting,published", PUBLISHED_PARAMS)
def test_params_match_the_papers(name, setting, published):
    net = build_network(REGISTRY[name].genotype, imagenet=setting == "imagenet")
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    params = sum(p.numel() for p in net.parameters()) - aux
    assert abs(params / 1e6 - published) <= 0.05, (name, setting, params)


def test_darts_v1_count_is_below_v2_by_one_dil_conv_per_normal_cell():
    a = build_network(V1)
    b = build_network(V2)
    n = lambda net: sum(p.numel() for p in net.parameters_without_aux())  # noqa: E731
    # DilConv(C, C, 3×3): depthwise 9C + pointwise C² + affine BN 2C, in the 18 normal cells
    expect = sum(9 * c + c * c + 2 * c for c in [36] * 6 + [72] * 6 + [144] * 6)
    assert n(b) - n(a) == expect
    assert abs(n(a) / 1e6 - 3.169) < 0.001


# measured with count_cost (batch 1, 224×224): (conv + linear, + BN/ReLU/pool/bias, printed)
IMAGENET_MADDS = {"DARTS_V2": (529.91, 544.59, 574), "PC_DARTS_IMAGENET": (581.63, 597.21, 597),
                  "PDARTS": (542.82, 557.38, 557),
                  "SEMANTIC_DARTS_C10_S9999": (632.23, 649.56, 642)}


def bn_elements(net, x):
    """Output elements of every BatchNorm2d in one forward pass."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", sorted(IMAGENET_MADDS))
def test_imagenet_madds(name):
    conv_only, all_ops, published = IMAGENET_MADDS[name]
    assert REGISTRY[name].reported["imagenet"]["madds_m"] == published
    cost = count_cost(build_network(REGISTRY[name].genotype, imagenet=True))
    assert cost.input_size == 224 and cost.in_channels == 3
    assert cost.madds_m == pytest.approx(conv_only, abs=0.005)
    assert cost.madds_all_m == pytest.approx(all_ops, abs=0.005)
    if name == "DARTS_V2":  # ptflops' 544.59 M (quark0/darts#46); DARTS printed 574 M
        assert round(cost.madds_all_m, 2) == 544.59
    elif name.startswith("SEMANTIC"):
        # neither convention: 642 M is thop 0.0.31 (imported by the reference
        # train_imagenet_dist.py) on the reference model.py — conv + linear + 2 per BN element
        # + 768 for the global average pool = 642.300288 M, measured there
        assert abs(cost.madds_m - published) > 9 and abs(cost.madds_all_m - published) > 7
        bn = bn_elements(build_network(REGISTRY[name].genotype, imagenet=True).eval(),
                         torch.zeros(1, 3, 224, 224))
        assert bn == 5_033_280
        assert cost.madds + 2 * bn + 768 == 642_300_288
    else:  # PC-DARTS and P-DARTS printed the ptflops-style count
        assert cost.madds_all_m == pytest.approx(published, rel=0.01)


SEMANTIC = {data: [f"SEMANTIC_DARTS_{data}_S{seed}" for seed in (2, 5555, 7777, 9999)]
            for data in ("C10", "C100")}


@pytest.mark.parametrize("data,classes,mean,std", [
    ("C10", 10, 4.0520, 0.2279), ("C100", 10, 3.6068, 0.2408), ("C100", 100, 3.6587, 0.2408)])
def test_semantic_darts_table_ii_params(data, classes, mean, std):
    # Table II prints mean ± std (sample std over the four search seeds) of the CIFAR network
    printed_mean, printed_std = SEMANTIC_DARTS_TABLE_II[data]
    counts = []
    for name in SEMANTIC[data]:
        entry = REGISTRY[name]
        assert entry.searched_on == ("cifar10" if data == "C10" else "cifar100")
        assert "d525eed" in entry.source and "cls_maskv1" in entry.source
        net = build_network(entry.genotype, num_classes=classes)
        counts.append(sum(p.numel() for p in net.parameters_without_aux()) / 1e6)
    assert statistics.mean(counts) == pytest.approx(mean, abs=1e-4)
    assert statistics.stdev(counts) == pytest.approx(std, abs=1e-4)
    assert abs(statistics.mean(counts) - printed_mean) <= 0.05
    assert round(statistics.stdev(counts), 2) == printed_std
    if data == "C100" and classes == 10:
        # the printed 3.61 is the 10-class network's count; the 100-class one is 3.66 M
        assert round(statistics.mean(counts), 2) == printed_mean


def test_semantic_darts_cells_are_the_reference_ones():
    g = REGISTRY["SEMANTIC_DARTS_C10_S9999"].genotype
    assert g.normal[7] == ("dil_conv_5x5", 4) and g.reduce[1] == ("skip_connect", 1)
    assert parse_genotype("semantic-darts-c100-s2") == REGISTRY["SEMANTIC_DARTS_C100_S2"].genotype
    assert len({str(REGISTRY[n].genotype) for names in SEMANTIC.values() for n in names}) == 8


def test_element_ops_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=True),
                              torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    madds, madds_all = count_ops(net, torch.zeros(1, 3, 6, 6))
    conv, fc = 4 * 36 * 27, 4 * 5
    assert madds == conv + fc
    # + conv bias (4·36), affine BN (2·4·36), ReLU (4·36), both pools (input elements 4·36 and
    # 4·9) and the linear bias (5)
    assert madds_all == madds + 4 * 36 + 2 * 4 * 36 + 4 * 36 + 4 * 36 + 4 * 9 + 5


def test_madds_counter_agrees_with_torch_flop_counter_where_it_is_exact():
    # 32×32 input: every map has even size, so the polyphase dilated convolutions compute the
    # same multiply-adds as the textbook layer and torch's counter (FLOPs / 2) is exact too
    net = NetworkCIFAR(REGISTRY["PDARTS"].genotype, channels=4, layers=3).eval()
    x = torch.zeros(1, 3, 32, 32)
    mode = FlopCounterMode(display=False)
    with mode, torch.no_grad():
        net(x)
    assert count_madds(net, x) == mode.get_total_flops() // 2


def test_madds_of_a_single_layer_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, groups=1, bias=False),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 5 * 5, 7))
    assert count_madds(conv, torch.zeros(2, 3, 5, 5)) == 2 * (8 * 25 * 27 + 200 * 7)


# ------------------------------------------------------------------ networks
def test_cifar_network_shapes_stages_and_aux():
    net = tiny()
    x = torch.randn(5, 1, 8, 8)
    assert net(x).shape == (5, 10)
    net.train()
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == aux.shape == (5, 10)
    net.eval()
    assert net.forward_with_aux(x)[1] is None
    stages = net.forward_stages(x)
    assert [s.shape[1] for s in stages] == net.stage_channels == [16, 32, 64]
    assert [s.shape[-1] for s in stages] == [8, 4, 2]
    assert torch.allclose(net.head(stages[-1]), net(x))


def test_fashion_mnist_and_imagenet_shapes():
    net = NetworkCIFAR(V2, channels=4, layers=5, in_channels=1, input_size=28).train()
    logits, aux = net.forward_with_aux(torch.randn(2, 1, 28, 28))
    assert logits.shape == aux.shape == (2, 10)
    inet = NetworkImageNet(V2, channels=4, layers=3, num_classes=7, input_size=64).train()
    logits, aux = inet.forward_with_aux(torch.randn(2, 3, 64, 64))
    assert logits.shape == aux.shape == (2, 7)
    assert [s.shape[-1] for s in inet.forward_stages(torch.randn(1, 3, 64, 64))] == [8, 4, 2]


def test_default_skeletons():
    net = build_network(V2)
    assert (net.channels, net.layers, net.reductions, net.aux_index) == (36, 20, (6, 13), 13)
    assert net.stem[0].out_channels == 108
    inet = build_network(V2, imagenet=True)
    assert (inet.channels, inet.layers, inet.num_classes, inet.input_size) == (48, 14, 1000, 224)
    assert isinstance(inet.cells[0].pre0, type(net.cells[7].pre0))  # FactorizedReduce after stem
    nb = build_network(REGISTRY["NB201_OPTIMUM"].genotype)
    assert isinstance(nb, NB201Network) and (nb.channels, nb.layers) == (16, 5)


def test_fixed_ops_use_affine_bn_and_bare_pools():
    net = tiny()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.affine for bn in bns)
    pool = net.cells[1].nodes[0]["0"]["max_pool_3x3"]  # reduction cell, DARTS_V2 reduce[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pool.modules())


def test_edge_names_are_stable_across_genotypes():
    a, b = tiny(V1), tiny(V2)
    names = set(shared_parameters(a, b))
    # node 0 of every normal cell: V1 = sep(1), sep(0); V2 = sep(0), sep(1): the same two edges
    assert "cells.0.nodes.0.0.sep_conv_3x3.first.dw.weight" in names
    assert "cells.0.nodes.0.1.sep_conv_3x3.second.pw.weight" in names
    # node 3: V1 uses sep_conv_3x3 on input 0, V2 skip on 0 and dil_conv on 2
    assert "cells.0.nodes.3.2.dil_conv_3x3.dw.weight" in b.state_dict()
    assert not any(n.startswith("cells.0.nodes.3.2.dil_conv_3x3") for n in names)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    copied = load_shared(b, a)
    assert set(copied) == names
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in copied)


def test_repeated_edge_gets_a_suffix():
    g = DartsGenotype(normal=(("avg_pool_3x3", 0), ("avg_pool_3x3", 0)) * 4,
                      reduce=V2.reduce)
    net = tiny(g)
    node = net.cells[0].nodes[0]["0"]
    assert set(node.keys()) == {"avg_pool_3x3", "avg_pool_3x3__1"}
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 3, 3)
    y = drop_path(x, 0.3)
    kept = (y[:, 0, 0, 0] != 0).float().mean()
    assert 0.6 < kept < 0.8
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert drop_path(x, 0.0) is x
    net = tiny()
    net.drop_path_prob = 0.5
    x = torch.randn(4, 1, 8, 8)
    net.eval()
    assert torch.equal(net(x), net(x))  # no drop-path at evaluation


def test_nb201_network():
    best = build_network(REGISTRY["NB201_OPTIMUM"].genotype, channels=4, layers=1,
                         in_channels=1, input_size=8)
    resnet = build_network(REGISTRY["NB201_RESNET"].genotype, channels=4, layers=1,
                           in_channels=1, input_size=8)
    assert best(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # 'none' edges are not built: the ResNet cell has 2 convs + 2 skips per cell
    assert set(resnet.blocks[0].edges.keys()) == {"0~1_nor_conv_3x3", "1~2_nor_conv_3x3",
                                                  "0~3_skip_connect", "2~3_skip_connect"}
    assert all(bn.affine for bn in best.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    a = set(shared_parameters(best, resnet))
    assert "blocks.0.edges.0~1_nor_conv_3x3.conv.weight" in a


# ------------------------------------------------------------------ names and bad input
def test_registry_names_everywhere(tmp_path):
    assert parse_genotype("darts_v2") == V2
    assert parse_genotype("PC-DARTS") == REGISTRY["PC_DARTS_CIFAR"].genotype
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(json.dumps(V1.to_dict()))
    assert parse_genotype(str(run)) == V1
    assert all(e.source for e in REGISTRY.values())


def test_unknown_name_lists_the_registry():
    with pytest.raises(DiffnasError, match="DARTS_V1, DARTS_V2, PC_DARTS_CIFAR"):
        parse_genotype("DARTS_V9")


def test_bad_op_is_named():
    d = V2.to_dict()
    d["normal"][3] = ["conv_7x1_1x7", 1]
    with pytest.raises(DiffnasError, match="conv_7x1_1x7"):
        parse_genotype(json.dumps(d))


def test_too_small_images_are_refused():
    with pytest.raises(DiffnasError, match="too small.*2 reduction cells.*at least 4"):
        tiny(input_size=3)
    with pytest.raises(DiffnasError, match="ImageNet-style.*at least 32"):
        NetworkImageNet(V2, channels=4, layers=3, input_size=28)
    with pytest.raises(DiffnasError, match="NAS-Bench-201"):
        NB201Network(REGISTRY["NB201_RESNET"].genotype, input_size=2)
    with pytest.raises(DiffnasError, match="needs a DARTS genotype"):
        NetworkCIFAR(REGISTRY["NB201_RESNET"].genotype)


def test_cli_info(capsys):
    from diffnas.cli import main

    assert main(["info", "PDARTS", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "PDARTS" and out["reported"] == {"params_m": 3.4}
    assert abs(out["params_m"] - 3.4) <= 0.05 and out["layers"] == 20
    assert main(["info", "DARTS_V2", "--dataset", "fashion-mnist", "--layers", "5",
                 "--channels", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["input_size"], out["in_channels"], out["channels"]) == (28, 1, 8)
    assert "reported" not in out
    assert main(["info"]) == 0
    assert "NB201_OPTIMUM" in capsys.readouterr().out
    assert main(["info", "nope"]) == 2
    assert "DARTS_V1" in capsys.readouterr().err
