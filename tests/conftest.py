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
def images_read(monkeypatch):
    """The number of image files each ``readers._read_images`` call decodes, in call order
    (the folder reader decodes through it)."""
    from diffnas.data import readers

    read: list[int] = []
    original = readers._read_images

    def counting(files, size, mode):
        read.append(len(files))
        return original(files, size, mode)

    monkeypatch.setattr(readers, "_read_images", counting)
    return read


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


def _state_equal(a, b) -> bool:
    """Exact equality of nested checkpoint states (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _state_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture
def assert_same_run():
    """``assert_same_run(dir_a, dir_b)``: the two search run folders hold bit-identical
    checkpoints (model, objective, method) and the same per-epoch metrics, timings aside.
    Returns both checkpoints and the metrics of ``dir_a``."""
    from diffnas.engine.runfolder import RunFolder

    timing = {"epoch_time_s", "elapsed_s", "peak_mem_gib"}  # they measure the machine

    def check(dir_a, dir_b):
        a, b = RunFolder(dir_a), RunFolder(dir_b)
        ca, cb = (torch.load(r.checkpoint, weights_only=True) for r in (a, b))
        for part in ("model", "objective", "method"):
            assert _state_equal(ca[part], cb[part]), part
        ma, mb = a.read_metrics(), b.read_metrics()
        assert [{k: v for k, v in r.items() if k not in timing} for r in ma] == \
               [{k: v for k, v in r.items() if k not in timing} for r in mb]
        return ca, cb, ma

    return check
