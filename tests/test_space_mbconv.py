"""The chain-structured ``mbconv`` space (ProxylessNAS), its genotype, fixed network and
searches; the ImageNet stem of ``nb201-imagenet``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffnas.cli import main
from diffnas.engine.search import build_search, search
from diffnas.errors import DiffnasError
from diffnas.nets import MBConvNetwork, NetworkImageNet, build_network, count_cost
from diffnas.nets.registry import REGISTRY
from diffnas.spaces import (
    SPACES,
    EdgePolicy,
    EdgeWeights,
    MBConvGenotype,
    NB201Genotype,
    build_supernet,
    genotype_from_dict,
    parse_genotype,
)
from diffnas.spaces.mbconv import CONV_OPS, OPS, reductions_kept, strides_for
from diffnas.spaces.stems import ImageNetStem

CPU = torch.device("cpu")


class OneHot(EdgePolicy):
    """Exactly one op per layer, weight 1.0: ``choice[i]`` on layer ``i``."""

    def __init__(self, choice: list[int]) -> None:
        self.choice = choice

    def edge_policy(self, supernet, kind):
        w = F.one_hot(torch.tensor(self.choice), len(supernet.op_names)).float()
        return EdgeWeights(w, [(c,) for c in self.choice])


def test_stage_table_at_224_is_proxylessnas():
    net = build_supernet("mbconv", 32, 4, 1000, 3, image_size=224)
    assert SPACES["mbconv"] is type(net) and net.kinds == ("layer",)
    t = net.table
    assert (t.stem, t.first, t.widths, t.head) == (32, 16, (24, 40, 80, 96, 192, 320), 1280)
    assert (t.stem_stride, t.strides) == (2, (2, 2, 2, 1, 2, 1)) and net.feature_stride == 32
    assert net.depths == (4, 4, 4, 4, 4, 1) and len(net.edges) == 21
    # the first layer of every stage has the six MBConvs only, the other 15 also the skip
    mask = net.op_mask("layer")
    firsts = [0, 4, 8, 12, 16, 20]
    assert [i for i in range(21) if not mask[i, OPS.index("skip_connect")]] == firsts
    assert mask[:, :6].all() and len(net.op_names) == 7
    assert net.layer_shapes[4] == (24, 40, 2, False) and net.layer_shapes[13] == (96, 96, 1, True)


@pytest.mark.parametrize("size, kept, final", [(224, 5, 7), (32, 3, 4), (28, 3, 4), (16, 2, 4),
                                               (8, 1, 4), (3, 0, 3)])
def test_stride_rule_keeps_the_last_reductions(size, kept, final):
    assert reductions_kept(size) == kept
    stem, stages = strides_for(size)
    strides = [stem, *stages]
    assert sum(s == 2 for s in strides) == kept
    # the dropped strides are the first ones: stride 2 only after the last stride 1 of a drop
    twos = [i for i, s in enumerate(strides) if s == 2]
    assert twos == [i for i, s in enumerate([2, 2, 2, 2, 1, 2, 1]) if s == 2][5 - kept:]
    net = build_supernet("mbconv", 8, 1, 3, 1, image_size=size)
    with torch.no_grad():
        out = net.forward_features(torch.randn(1, 1, size, size))
    assert out.shape[-1] == final and net(torch.randn(1, 1, size, size)).shape == (1, 3)


def test_one_hot_supernet_equals_fixed_network_bit_for_bit():
    torch.manual_seed(0)
    net = build_supernet("mbconv", 8, 2, 5, 1, image_size=16)
    n = len(net.edges)
    skip = OPS.index("skip_connect")
    choice = [(skip if net.skippable[i] and i % 3 == 1 else i % len(CONV_OPS))
              for i in range(n)]
    assert skip in choice and len(set(choice)) > 3
    net.policy = OneHot(choice)
    net.train()
    for _ in range(3):  # non-trivial BN running statistics
        net(torch.randn(8, 1, 16, 16))
    alpha = torch.full((n, len(OPS)), -5.0)
    alpha[range(n), choice] = 5.0
    genotype = net.genotype({"layer": alpha})
    assert [OPS.index(o) for o in genotype.ops] == choice
    fixed = build_network(genotype, channels=8, num_classes=5, in_channels=1, input_size=16)
    assert isinstance(fixed, MBConvNetwork)
    # copy: the supernet's edges.{i}.ops.{chosen}.* are the fixed network's edges.{i}.*
    src = net.state_dict()
    state = {}
    for k in fixed.state_dict():
        parts = k.split(".")
        if parts[0] == "edges":
            parts = [*parts[:2], "ops", str(choice[int(parts[1])]), *parts[2:]]
        state[k] = src[".".join(parts)]
    fixed.load_state_dict(state)
    assert sum(p.numel() for p in fixed.parameters()) < sum(p.numel() for p in net.parameters())
    net.eval(), fixed.eval()
    fixed.to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = net(x), fixed(x)
        stages_a, stages_b = net.forward_stages(x), fixed.forward_stages(x)
    assert torch.equal(a, b)
    assert all(torch.equal(u, v) for u, v in zip(stages_a, stages_b, strict=True))
    assert [s.shape[1] for s in stages_a] == net.stage_channels == fixed.stage_channels


def test_genotype_round_trips(tmp_path):
    mobile = REGISTRY["PROXYLESSNAS_MOBILE"].genotype
    plain = MBConvGenotype((("k3_e6", "skip_connect"), ("k7_e3",), ("k5_e6", "k5_e3"),
                            ("k3_e3",), ("k7_e6", "skip_connect", "k3_e3"), ("k5_e3",)))
    for g in (mobile, plain):
        text = str(g)
        assert text.startswith("mbconv:") and parse_genotype(text) == g
        assert parse_genotype(" " + text + "\n") == g
        assert parse_genotype(json.dumps(g.to_dict())) == g
        assert genotype_from_dict(json.loads(json.dumps(g.to_dict()))) == g
        (tmp_path / "genotype.json").write_text(json.dumps(g.to_dict()))
        assert parse_genotype(str(tmp_path)) == g
    assert ";widths=32," in str(mobile) and "widths" not in str(plain)
    assert plain.depths == (2, 1, 2, 1, 3, 1) and plain.skip_count == 2
    assert parse_genotype("proxyless-mobile") == mobile


@pytest.mark.parametrize("text, message", [
    ("mbconv:k3_e3/k3_e3", r"2 stage\(s\) separated by '/', expected 6"),
    ("mbconv:k3_e3/k3_e3/k3_e3/k3_e3/k3_e3/k9_e3",
     "stage 6 layer 1: op 'k9_e3' is not an mbconv op; valid: k3_e3,"),
    ("mbconv:skip_connect/k3_e3/k3_e3/k3_e3/k3_e3/k3_e3",
     "stage 1 layer 1 is skip_connect, but the first layer of a stage"),
    ("mbconv:k3_e3,,k3_e3/k3_e3/k3_e3/k3_e3/k3_e3/k3_e3", "stage 1 .* has an empty layer"),
    ("mbconv:k3_e3/k3_e3/k3_e3/k3_e3/k3_e3/k3_e3;widths=1,2", "widths are 6 positive integers"),
    ("mbconv:k3_e3/k3_e3/k3_e3/k3_e3/k3_e3/k3_e3;widths=a", "must be comma-separated integers"),
    ("mbconv:k3_e3/k3_e3/k3_e3/k3_e3/k3_e3/k3_e3;depth=3", "unknown part 'depth=3'"),
    ('{"space": "mbconv", "stages": "k3_e3"}', "not an mbconv genotype dict"),
])
def test_bad_genotype_text_is_one_clear_error(text, message):
    with pytest.raises(DiffnasError, match=message) as e:
        parse_genotype(text)
    assert "\n" not in str(e.value)


def test_proxylessnas_mobile_parameters_pinned():
    """ProxylessNAS-Mobile (widths 32, 40, 80, 96, 192, 320) at 224², 1000 classes: 4,080,512
    parameters, the count osmr/imgclsmob's pytorchcv test pins for its proxylessnas_mobile
    (pytorch/pytorchcv/models/proxylessnas.py, commit 86c1d36); 320.43 M multiply-adds in
    convolutions and linear layers (our count; ProxylessNAS' tables print latency)."""
    cost = count_cost(build_network(REGISTRY["PROXYLESSNAS_MOBILE"].genotype, imagenet=True))
    assert (cost.params, cost.input_size) == (4_080_512, 224)
    assert cost.madds == 320_427_584


def test_derivation_never_skips_a_stage_first_layer(tiny_cfg):
    net, _, method = build_search(tiny_cfg(space="mbconv", channels=8), 1, 8, 10, 1, CPU)
    with torch.no_grad():
        net.alphas["layer"][:, OPS.index("skip_connect")] = 10.0
    g = method.derive()
    assert all(ops[0] != "skip_connect" for ops in g.stages)
    assert all(o == "skip_connect" for ops in g.stages for o in ops[1:])
    w = method.alpha_weights()["layer"]
    firsts = [i for i, s in enumerate(net.skippable) if not s]
    assert torch.all(w[firsts, OPS.index("skip_connect")] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(len(net.edges)))


@pytest.mark.parametrize("method", ["darts", "stc", "gdas"])
def test_short_search_runs_end_to_end(tiny_cfg, tmp_path, method):
    cfg = tiny_cfg(method=method, space="mbconv", channels=8, epochs=1, subset=64)
    res = search(cfg, out=tmp_path / method, progress=False)
    g = res.genotype
    assert isinstance(g, MBConvGenotype) and g.depths == (2, 2, 2, 2, 2, 1)
    assert parse_genotype(str(tmp_path / method)) == g  # genotype.json of the run folder
    rec = json.loads((tmp_path / method / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(rec["alpha"]["layer"]) == 11 and rec["genotype"]["space"] == "mbconv"


def test_train_and_info_of_an_mbconv_genotype(tmp_path, capsys):
    text = "mbconv:k3_e3,skip_connect/k5_e6/k7_e3/k3_e6/k5_e3/k3_e3"
    assert main(["train", text, "--preset", "tiny", "--epochs", "1", "--subset", "64",
                 "--test-subset", "64", "--out", str(tmp_path / "t"), "--no-progress",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= r["test_acc"] <= 1.0 and r["params"] > 0
    assert main(["info", "PROXYLESSNAS_MOBILE", "--json"]) == 0  # 224², 1000 classes
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["input_size"], info["num_classes"]) == (4_080_512, 224, 1000)


# ------------------------------------------------------------------- ImageNet-shaped NB201
def test_nb201_imagenet_stem_is_the_shared_imagenet_stem():
    torch.manual_seed(0)
    net = build_supernet("nb201-imagenet", 4, 1, 5, 3)
    assert isinstance(net.stem, ImageNetStem) and net.feature_stride == 32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = net.forward_stages(x)
    assert [s.shape[-1] for s in stages] == [8, 4, 2]  # 224 → 28, 14, 7 at full size
    # the same modules as NetworkImageNet's stem0/stem1 (one shared builder)
    darts = NetworkImageNet(REGISTRY["DARTS_V2"].genotype, channels=4, layers=3, num_classes=5,
                            auxiliary=False, input_size=64)
    ours = {k.removeprefix("stem."): v.shape for k, v in net.state_dict().items()
            if k.startswith("stem.")}
    theirs = {k: v.shape for k, v in darts.state_dict().items() if k.startswith("stem")}
    assert ours == theirs
    g = net.genotype({k: a.detach() for k, a in net.alphas.items()})
    assert isinstance(g, NB201Genotype)
    fixed = build_network(g, imagenet=True, channels=4, layers=1, num_classes=5, input_size=64)
    assert isinstance(fixed.stem, ImageNetStem) and fixed(x).shape == (2, 5)
    with pytest.raises(DiffnasError, match="at least 32×32"):
        build_network(g, imagenet=True, input_size=16)
    with pytest.raises(DiffnasError, match="channels must be even"):
        build_supernet("nb201-imagenet", 3, 1, 5, 3)


@pytest.mark.parametrize("space", ["nb201-imagenet", "mbconv"])
def test_search_on_an_image_folder_at_imagenet_shapes(tiny_cfg, tmp_path, space):
    """A class-folder dataset searched through an ImageNet-shaped supernet (64² here; the
    same code runs at 224²): the genotype is the base space's and builds its network."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog"):
        for i in range(12):
            path = tmp_path / "data" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(path)
    cfg = tiny_cfg(space=space, dataset=f"folder:{tmp_path / 'data'}", image_size=64,
                   subset=None, epochs=1, batch_size=8, channels=8, layers=1)
    res = search(cfg, out=tmp_path / "run", progress=False)
    net = build_network(res.genotype, imagenet=True, channels=8, layers=1, num_classes=2,
                        input_size=64)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    assert res.genotype.space == ("nb201" if space == "nb201-imagenet" else "mbconv")


@pytest.mark.skipif(__import__("shutil").which("dot") is None,
                    reason="Graphviz's dot is not installed")
def test_draw_an_mbconv_chain(tmp_path):
    from diffnas.analysis.cells import draw

    (png,) = draw("PROXYLESSNAS_MOBILE", tmp_path / "mobile")
    gv = png.with_suffix(".gv").read_text()
    assert png.is_file() and gv.count("k7_e6") == 4 and gv.count("style=dashed") == 2
    assert "stage 6 (320)" in gv


def test_stc_js_term_ignores_the_skip_a_stage_first_layer_lacks(tiny_cfg):
    net, _, method = build_search(tiny_cfg(method="stc", space="mbconv", channels=8), 1, 8, 10,
                                  1, CPU)
    method.current = method.sample(0.3)
    firsts = [i for i, s in enumerate(net.skippable) if not s]
    assert all(ops[0] != "skip_connect" for ops in method.current.genotype.stages)
    before = method.js_term()
    with torch.no_grad():
        net.alphas["layer"][firsts, OPS.index("skip_connect")] = 1.0
    assert torch.equal(method.js_term(), before)


@pytest.mark.parametrize("method, message", [
    ("cdarts", "the mbconv chain has none"), ("pcdarts", "does not take PC-DARTS' partial"),
])
def test_methods_that_do_not_apply_say_so(tiny_cfg, method, message):
    with pytest.raises(DiffnasError, match=message):
        build_search(tiny_cfg(method=method, space="mbconv", channels=8), 1, 8, 10, 1, CPU)
