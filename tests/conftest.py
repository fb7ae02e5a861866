import pytest
import torch

# One thread: the tests' tensors are tiny, and extra threads only add overhead (and stall
# badly when the machine is shared).
torch.set_num_threads(1)


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
