"""The CUDA paths, end to end: search and retraining on the GPU (data and augmentation on the
device, AMP and channels-last retraining, CUDA memory statistics).

Skipped without CUDA, unless ``DIFFNAS_REQUIRE_CUDA=1`` (benchmarks/gpu_check.py sets it), so a
GPU machine whose CUDA is broken fails these tests instead of skipping them."""

import math
import os

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.engine.search import search
from diffnas.engine.train import resolve_train_config, train

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("DIFFNAS_REQUIRE_CUDA") != "1",
    reason="needs CUDA (DIFFNAS_REQUIRE_CUDA=1 runs it anyway)")


@needs_cuda
@pytest.mark.parametrize("method", ["darts", "semantic", "stc", "cdarts"])
def test_search_on_cuda(tmp_path, method):
    cfg = resolve_config(None, method=method, dataset="digits", subset=128, epochs=2,
                         batch_size=16, channels=4, layers=3, crop_padding=1, device="cuda")
    res = search(cfg, out=tmp_path / method, progress=False)
    last = res.history[-1]
    assert math.isfinite(last["val_loss"])
    assert 0 < last["peak_mem_gib"] < 8  # CUDA max_memory_allocated, not the host's RSS


@needs_cuda
def test_train_on_cuda_uses_amp_and_channels_last(tmp_path):
    cfg = resolve_train_config(None, genotype="DARTS_V2", dataset="digits", subset=96,
                               test_subset=64, network="cifar", channels=4, layers=3, epochs=1,
                               batch_size=16, lr=0.05, crop_padding=1, device="cuda")
    res = train(cfg, out=tmp_path / "t", progress=False)
    assert 0.0 <= res.test_acc <= 1.0


@needs_cuda
def test_trainer_on_cuda_has_amp():
    from diffnas.engine import train as train_mod
    from diffnas.nets import build_network

    net = build_network(train_mod.parse_genotype("DARTS_V2"), channels=4, layers=3,
                        in_channels=1, input_size=8)
    cfg = resolve_train_config(None, genotype="DARTS_V2", dataset="digits", device="cuda")
    t = train_mod.Trainer(cfg, net.cuda(), torch.device("cuda"))
    assert t.amp_dtype in (torch.bfloat16, torch.float16)
    assert t.memory_format is torch.channels_last
