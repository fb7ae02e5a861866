"""Fixed networks built from genotypes, the registry of published genotypes, and their cost.

``build_network(genotype)`` gives the DARTS CIFAR network (or, with ``imagenet=True``, the
mobile-setting ImageNet network) for a DARTS genotype and the NAS-Bench-201 network for a
NAS-Bench-201 one. ``count_cost(net)`` counts parameters (millions, auxiliary head excluded,
as the DARTS papers do) and multiply-adds (millions, one image, eval mode) in two conventions:
``madds`` — convolutions and linear layers only (MobileNet's convention); ``madds_all`` — also
one operation per element of every BN (two when affine), ReLU, pooling input and bias, as the
widely used ptflops counter (sovrasov/flops-counter.pytorch) does. The published ImageNet
figures of PC-DARTS and P-DARTS are of the second kind (see :mod:`diffnas.nets.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..spaces.darts import DartsGenotype
from ..spaces.mbconv import MBConvGenotype
from ..spaces.nb201 import NB201Genotype
from .darts_net import (
    AuxiliaryHead,
    DartsNetwork,
    FixedCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
    load_shared,
    shared_parameters,
)
from .mbconv_net import MBConvNetwork
from .nb201_net import NB201Cell, NB201Network
from .registry import REGISTRY, Published, get, lookup

__all__ = ["REGISTRY", "AuxiliaryHead", "DartsNetwork", "FixedCell", "MBConvNetwork", "NB201Cell",
           "NB201Network",
           "NetCost", "NetworkCIFAR", "NetworkImageNet", "Published", "build_network",
           "count_cost", "count_madds", "count_ops", "drop_path", "get", "load_shared", "lookup",
           "shared_parameters"]

# default (channels, layers) of each skeleton
DEFAULTS = {"cifar": (36, 20), "imagenet": (48, 14), "nb201": (16, 5), "mbconv": (32, None)}


def build_network(genotype: DartsGenotype | NB201Genotype | MBConvGenotype, *,
                  imagenet: bool = False,
                  channels: int | None = None, layers: int | None = None,
                  num_classes: int | None = None, in_channels: int = 3,
                  input_size: int | None = None, auxiliary: bool = True) -> nn.Module:
    """The evaluation network of ``genotype`` (``None`` arguments take the paper defaults:
    CIFAR 36 channels × 20 cells at 32×32, ImageNet 48 × 14 at 224×224 with 1000 classes,
    NAS-Bench-201 16 × 5 at 32×32, with ``imagenet`` its ImageNet stem at 224×224; mbconv: a
    32-channel stem, its depth from the genotype (``layers`` and ``auxiliary`` do not apply),
    224×224 with 1000 classes with ``imagenet``, else 32×32 and 10)."""
    if isinstance(genotype, MBConvGenotype):
        return MBConvNetwork(genotype, channels or DEFAULTS["mbconv"][0],
                             num_classes or (1000 if imagenet else 10), in_channels,
                             input_size or (224 if imagenet else 32))
    if isinstance(genotype, NB201Genotype):
        c, n = DEFAULTS["nb201"]
        return NB201Network(genotype, channels or c, layers or n, num_classes or 10,
                            in_channels, input_size or (224 if imagenet else 32),
                            imagenet=imagenet)
    if imagenet:
        c, n = DEFAULTS["imagenet"]
        return NetworkImageNet(genotype, channels or c, layers or n, num_classes or 1000,
                               auxiliary, in_channels, input_size or 224)
    c, n = DEFAULTS["cifar"]
    return NetworkCIFAR(genotype, channels or c, layers or n, num_classes or 10, auxiliary,
                        in_channels, input_size or 32)


@dataclass(frozen=True)
class NetCost:
    """Size and compute of a network for one ``in_channels × input_size²`` image."""

    params: int            # parameters without the auxiliary head
    params_aux: int        # parameters of the auxiliary head alone
    madds: int             # multiply-adds of one forward pass (eval mode, batch 1): conv + linear
    input_size: int
    in_channels: int
    madds_all: int = 0     # madds + BN, ReLU, pooling and bias elements (ptflops' convention)

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def madds_m(self) -> float:
        return self.madds / 1e6

    @property
    def madds_all_m(self) -> float:
        return self.madds_all / 1e6

    def to_dict(self) -> dict[str, float | int]:
        return {"params": self.params, "params_m": round(self.params_m, 4),
                "params_aux": self.params_aux, "madds": self.madds,
                "madds_m": round(self.madds_m, 2), "madds_all": self.madds_all,
                "madds_all_m": round(self.madds_all_m, 2), "input_size": self.input_size,
                "in_channels": self.in_channels}


class _ElementOps(TorchDispatchMode):
    """Counts, below the modules, what ptflops counts besides convolutions and linear layers:
    an operation per ReLU output element, per BN input element (two when BN is affine) and
    per pooling input element (global pooling included)."""

    RELU = {"relu", "relu_", "hardtanh", "hardtanh_"}  # ReLU6 dispatches as hardtanh
    BN = {"_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
          "native_batch_norm", "cudnn_batch_norm"}
    POOL = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
            "_adaptive_avg_pool2d", "adaptive_max_pool2d",
            "mean"}  # global average pooling (adaptive_avg_pool2d to 1×1) dispatches as mean

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.RELU:
            self.total += out.numel()
        elif name in self.BN:
            self.total += args[0].numel() * (2 if args[1] is not None else 1)
        elif name in self.POOL:
            self.total += args[0].numel()
        return out


def count_ops(net: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """``(madds, madds_all)`` of ``net(x)`` in one forward pass (see the module docstring).

    ``madds``: every convolution (output elements × in/groups × kernel) and linear layer
    (batch × in × out) that runs, counted with forward hooks on the modules. A depthwise
    convolution that an op computes without calling its module (the DARTS ``DilConv``
    evaluates its dilated ``dw`` on polyphase components, see :mod:`diffnas.spaces.ops`) is
    counted at the op's pointwise ``pw`` convolution, whose input is the depthwise output — so
    the count is that of the textbook layer, whatever the kernel path.
    (``torch.utils.flop_counter`` would count the polyphase convolution, zero padding included.)
    ``madds_all``: ``madds`` plus biases (one per output element) and :class:`_ElementOps`."""
    total, biases = 0, 0

    def conv_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total, biases
        total += out.numel() * (m.weight[0].numel() if isinstance(m, nn.modules.conv._ConvNd)
                                else m.in_features)
        biases += out.numel() if m.bias is not None else 0

    def depthwise_at_pw(dw: nn.Conv2d):  # noqa: ANN202 - hook factory
        def pre_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            nonlocal total, biases
            total += inputs[0].numel() * dw.weight[0].numel()
            biases += inputs[0].numel() if dw.bias is not None else 0
        return pre_hook

    handles = []
    via_pw: set[int] = set()
    for m in net.modules():
        dw, pw = getattr(m, "dw", None), getattr(m, "pw", None)
        if isinstance(dw, nn.Conv2d) and isinstance(pw, nn.Conv2d):
            via_pw.add(id(dw))
            handles.append(pw.register_forward_pre_hook(depthwise_at_pw(dw)))
    for m in net.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and id(m) not in via_pw:
            handles.append(m.register_forward_hook(conv_hook))
    elements = _ElementOps()
    try:
        with torch.no_grad(), elements:
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total, total + biases + elements.total


def count_madds(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of ``net(x)``, convolutions and linear layers only (see :func:`count_ops`)."""
    return count_ops(net, x)[0]


def count_cost(net: nn.Module, input_size: int | None = None,
               in_channels: int | None = None) -> NetCost:
    """Parameters (auxiliary head excluded) and multiply-adds of ``net`` for one image
    (batch 1, eval mode, so neither the auxiliary head nor drop-path runs)."""
    size = input_size or int(getattr(net, "input_size", 32))
    chans = in_channels or int(getattr(net, "in_channels", 3))
    aux = getattr(net, "auxiliary_head", None)
    n_aux = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    n_all = sum(p.numel() for p in net.parameters())
    param = next(net.parameters())
    x = torch.zeros(1, chans, size, size, dtype=param.dtype, device=param.device)
    was_training = net.training
    net.eval()
    try:
        madds, madds_all = count_ops(net, x)
    finally:
        net.train(was_training)
    return NetCost(params=n_all - n_aux, params_aux=n_aux, madds=madds, input_size=size,
                   in_channels=chans, madds_all=madds_all)
