import pytest
import torch

# One thread: the tests' tensors are tiny, and extra threads only add overhead (and stall
# badly when the machine is shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Back to one thread after every test (some, e.g. the CLI's --threads, change it)."""
    yield
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


@pytest.fixture
def interrupted_search(monkeypatch):
    """``interrupted_search(cfg, out, method_cls)``: a search in ``out`` that a Ctrl-C stops at
    the first step of epoch ``at`` (default 1), leaving the checkpoint of the epoch before."""
    from diffnas.engine.search import search

    def run(cfg, out, method_cls, at=1):
        original = method_cls.step

        def interrupted(self, train, val):
            if self.epoch == at:
                raise KeyboardInterrupt
            return original(self, train, val)

        monkeypatch.setattr(method_cls, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            search(cfg, out=out, progress=False)
        monkeypatch.undo()

    return run
