"""The ImageNet-shaped DARTS search space ``darts-imagenet``: NetworkImageNet's stem, any depth."""

from __future__ import annotations

import pytest
import torch

from diffnas.errors import DiffnasError
from diffnas.nets import NetworkImageNet, build_network
from diffnas.spaces import SPACES, DartsGenotype, build_supernet
from diffnas.spaces.darts import reduction_layers
from diffnas.spaces.ops import FactorizedReduce


@pytest.mark.parametrize("layers", [8, 14])
def test_stem_and_stages_as_network_imagenet(layers):
    torch.manual_seed(0)
    net = build_supernet("darts-imagenet", 4, layers, 7, 3)
    assert SPACES["darts-imagenet"] is type(net) and net.space == "darts-imagenet"
    assert isinstance(net.cells[0].pre0, FactorizedReduce)  # s0 comes at twice s1's size
    assert [i for i, c in enumerate(net.cells) if c.reduction] == list(reduction_layers(layers))
    # the stem is NetworkImageNet's, layer for layer: loading one's stem into the other gives
    # the same two cell inputs
    genotype = net.genotype({k: a.detach() for k, a in net.alphas.items()})
    fixed = NetworkImageNet(genotype, channels=4, layers=layers, num_classes=7, auxiliary=False,
                            input_size=64)
    stem = {k: v for k, v in fixed.state_dict().items() if k.startswith("stem")}
    assert set(stem) == {k for k in net.state_dict() if k.startswith("stem")}
    net.load_state_dict(stem, strict=False)
    net.eval(), fixed.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net.stem_forward(x), fixed.stem_forward(x), strict=True):
            torch.testing.assert_close(a, b)
        s0, s1 = net.stem_forward(x)
        assert s0.shape[-1] == 16 and s1.shape[-1] == 8  # 64 → 16 → 8: three stride-2 convs
        stages = net.forward_stages(x)
    # 224 → 28 in the stem, then the two reduction cells: 28, 14, 7 at 224; here 8, 4, 2
    assert [s.shape[-1] for s in stages] == [8, 4, 2] and net.feature_stride == 32
    assert [s.shape[1] for s in stages] == net.stage_channels == [16, 32, 64]
    assert net.head(stages[-1]).shape == (2, 7)
    # the derived genotype is a DARTS one and builds the ImageNet evaluation network
    assert isinstance(genotype, DartsGenotype) and genotype.space == "darts"
    assert build_network(genotype, imagenet=True, channels=4, layers=layers, num_classes=7,
                         auxiliary=False, input_size=64)(x).shape == (2, 7)


def test_full_size_input_and_bad_channels():
    net = build_supernet("darts-imagenet", 2, 3, 5, 3)
    with torch.no_grad():
        stages = net.forward_stages(torch.randn(1, 3, 224, 224))
    assert [s.shape[-1] for s in stages] == [28, 14, 7]
    for bad in (1, 3):
        with pytest.raises(DiffnasError, match="channels must be even"):
            build_supernet("darts-imagenet", bad, 3, 5, 3)
