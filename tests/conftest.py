import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    """A search config that runs in about a second per epoch on digits (8×8)."""
    from diffnas.config import resolve_config

    def make(**kw):
        base = dict(dataset="digits", subset=128, epochs=2, batch_size=16, channels=4, layers=2,
                    crop_padding=1, device="cpu")
        base.update(kw)
        return resolve_config(None, **base)

    return make
