"""Data-parallel search on 2 CPU processes (gloo): the ranks stay bit-identical, a 2-rank step
equals the one-process step over the same global batch, and a killed rank stops the other
without harming the checkpoint, from which ``--resume`` finishes as the uninterrupted run.

The ranks are started as torchrun starts them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...
in the environment of ``python``), without torchrun's agent, so the library's own fault
handling is what stops the survivor."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from diffnas.config import resolve_config
from diffnas.data import BatchAugment, load_dataset
from diffnas.engine.distributed import Dist, convert_sync_bn, session
from diffnas.engine.search import build_search
from diffnas.errors import DiffnasError
from diffnas.objectives import Batch

PY = sys.executable
TINY = dict(dataset="digits", subset=64, epochs=2, batch_size=16, channels=4, layers=2,
            crop_padding=1, device="cpu")
#: the search configs whose two ranks must end bit-identical (several steps each)
SEARCHES: dict[str, dict[str, Any]] = {
    "darts1": dict(TINY),
    "darts2": dict(TINY, order=2),
    "semantic": dict(TINY, method="semantic", image_size=16, epochs=1,
                     objective_args={"patch_size": 4, "mask_ratio": 0.6}),
    "stc": dict(TINY, method="stc"),
    "gdas": dict(TINY, method="gdas"),  # Gumbel samples from the global RNG, on every rank
    "cdarts": dict(TINY, method="cdarts", layers=3,
                   method_args={"e_layers": 3, "s_e": 0.5, "s_u": 0.5}),
}
#: the config of the kill/resume test (4 steps per epoch), run uninterrupted in the worker too
KILLED = dict(preset="cpu", dataset="digits", subset=128, epochs=3, batch_size=16, channels=4,
              layers=2, device="cpu")  # the CLI's default preset
KILLED_ARGS = ["--dataset", "digits", "--subset", "128", "--epochs", "3", "--batch-size", "16",
               "--channels", "4", "--layers", "2", "--device", "cpu", "--no-progress"]

#: retraining runs (2 epochs × 3 steps of 32 images), with per-rank and synchronised BN
TRAIN = dict(genotype="DARTS_V2", dataset="digits", subset=96, test_subset=64, network="cifar",
             channels=4, layers=3, epochs=2, batch_size=32, lr=0.05, cutout=2, crop_padding=1,
             drop_path=0.2, device="cpu", eval_batch_size=16)
TRAINS = {"train": TRAIN, "train_sync": dict(TRAIN, sync_bn=True),
          # an ImageNet-style folder: each rank decodes its half of every batch
          "train_folder": dict(TRAIN, dataset="imagenet:{root}", network="auto", image_size=32,
                               subset=None, test_subset=None, epochs=1, batch_size=4, cutout=0,
                               workers=1)}

WORKER = r'''
import json, sys
import torch, torch.distributed as dist
from diffnas.config import resolve_config
from diffnas.data import BatchAugment, load_dataset
from diffnas.engine import distributed, search as S
from diffnas.objectives import Batch

out, jobs = sys.argv[1], json.loads(sys.argv[2])
dist.init_process_group("gloo")  # once: the searches below join it (and leave it to us)
rank = dist.get_rank()
built = []
original = S.build_search


def capture(*a, **k):
    b = original(*a, **k)
    built.append(b)
    return b


S.build_search = capture
for name, kw in jobs["search"].items():
    built.clear()
    res = S.search(resolve_config(kw.pop("preset", None), **kw), out=f"{out}/{name}",
                   progress=False)
    net, obj, method = built[-1]
    torch.save({"modules": [m.state_dict() for m in distributed.method_modules(net, obj, method)],
                "genotype": str(res.genotype)}, f"{out}/{name}.rank{rank}.pt")
from diffnas.errors import DiffnasError
from diffnas.methods.base import SearchMethod

step = SearchMethod.step


def poisoned(self, train, val):  # a NaN loss on rank 1 only, in the 4th step
    stats = step(self, train, val)
    if rank == 1 and self.global_step == 4:
        stats["loss"] = float("nan")
    return stats


SearchMethod.step = poisoned
try:
    S.search(resolve_config(None, **jobs["nan"]), out=f"{out}/nan", progress=False)
    msg = "no error"
except DiffnasError as e:
    msg = str(e)
SearchMethod.step = step
open(f"{out}/nan.rank{rank}.txt", "w").write(msg)
from diffnas.engine import train as T

nets = []
network_from_args = T.network_from_args
T.network_from_args = lambda a: nets.append(network_from_args(a)) or nets[-1]
for name, kw in jobs["train"].items():
    nets.clear()
    T.train(T.resolve_train_config(None, **kw), out=f"{out}/{name}", progress=False)
    torch.save({"modules": [nets[-1].state_dict()]}, f"{out}/{name}.rank{rank}.pt")
for label, order, sync in jobs["step"]:
    net, obj, method = original(resolve_config(None, **jobs["step_cfg"], order=order), 1, 8, 10,
                                4, torch.device("cpu"))
    batches = torch.load(f"{out}/batches.pt", weights_only=True)
    bt, bv = (Batch(b["x"], b["y"]) for b in batches)
    # BN with its running statistics (the same on any number of ranks), or synchronised
    net.train(sync)
    with distributed.session(torch.device("cpu"), sync_bn=sync) as ddp:
        ddp.prepare_modules([net, obj])
        method.begin_epoch(0)
        method.step(ddp.shard(bt, len(bt.y)), ddp.shard(bv, len(bv.y)))
        if label == "1":
            sent = ddp.grad_bytes
    torch.save(net.state_dict(), f"{out}/step{label}.rank{rank}.pt")
if rank == 0:
    json.dump({"grad_bytes_order1": sent}, open(f"{out}/bytes.json", "w"))
dist.destroy_process_group()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: list[str], world: int = 2, log: Path | None = None) -> list[subprocess.Popen]:
    """Start ``python argv`` ``world`` times as torchrun's ranks would be started."""
    port = free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1",
               "DIFFNAS_DIST_TIMEOUT": "60"}
        err = open(log.with_suffix(f".rank{r}.err"), "w") if log else subprocess.DEVNULL
        procs.append(subprocess.Popen([PY, *argv], env=env, stdout=subprocess.DEVNULL,
                                      stderr=err))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise


def global_batches() -> tuple[Batch, Batch]:
    """A fixed augmented train and val batch of 16 digits (crop padding 1)."""
    data = load_dataset("digits", "train")
    aug = BatchAugment(data.mean, data.std, crop_padding=1)
    gen = torch.Generator().manual_seed(5)
    x, y = data.images[:32], data.labels[:32].long()
    return (Batch(aug(x[:16], gen), y[:16]), Batch(aug(x[16:], gen), y[16:]))


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """One 2-rank launch for all in-process checks (each rank imports torch once)."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "worker.py").write_text(WORKER)
    torch.save([{"x": b.x, "y": b.y} for b in global_batches()], out / "batches.pt")
    from test_train import _image_folder

    root = _image_folder(out / "inet", [(50, 40), (40, 50), (64, 64), (48, 36)])
    trains = {k: {**v, "dataset": v["dataset"].format(root=root)} for k, v in TRAINS.items()}
    jobs = {"search": {**SEARCHES, "killed": KILLED}, "train": trains, "nan": TINY,
            "step": [("1", 1, False), ("2", 2, False), ("sync", 1, True)],
            "step_cfg": dict(dataset="digits", channels=4, layers=2, batch_size=16,
                             device="cpu")}
    procs = launch([str(out / "worker.py"), str(out), json.dumps(jobs)], log=out / "worker")
    codes = wait_all(procs, timeout=600)
    errors = [(out / f"worker.rank{r}.err").read_text()[-3000:] for r in range(2)]
    assert codes == [0, 0], errors
    return out


@pytest.mark.parametrize("name", list(SEARCHES))
def test_ranks_hold_bit_identical_alpha_and_weights(worker_results, name):
    a, b = (torch.load(worker_results / f"{name}.rank{r}.pt", weights_only=True)
            for r in range(2))
    assert a["genotype"] == b["genotype"]
    assert len(a["modules"]) == len(b["modules"]) >= 2  # the supernet and the objective (+ E)
    n = 0
    for ma, mb in zip(a["modules"], b["modules"], strict=True):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.equal(ma[k], mb[k]), f"{name}: {k} differs between the ranks"
            n += ma[k].numel()
    assert n > 1000
    alphas = [k for k in a["modules"][0] if "alpha" in k]
    assert alphas, "α are parameters of the supernet"
    # and the ranks trained (α moved away from its initialisation)
    fresh = build_search(resolve_config(None, **SEARCHES[name]), 1,
                         16 if name == "semantic" else 8, 10, 2, torch.device("cpu"))[0]
    fresh = fresh.state_dict()
    assert any(not torch.equal(a["modules"][0][k], fresh[k]) for k in alphas if k in fresh)


@pytest.mark.parametrize("label", ["1", "2", "sync"])
def test_two_rank_step_equals_one_process_step_over_the_global_batch(worker_results, label):
    """DARTS first and second order with BN in eval mode, and first order with BN in training
    mode under --sync-bn (the global batch's statistics)."""
    net, obj, method = build_search(resolve_config(
        None, dataset="digits", channels=4, layers=2, batch_size=16, device="cpu",
        order=2 if label == "2" else 1), 1, 8, 10, 4, torch.device("cpu"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bt, bv = global_batches()
    net.train(label == "sync")
    method.begin_epoch(0)
    method.step(bt, bv)
    one = net.state_dict()
    ranks = [torch.load(worker_results / f"step{label}.rank{r}.pt", weights_only=True)
             for r in range(2)]
    moved = 0
    for k, v in one.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-4, atol=2e-6, msg=k)
        moved += int(not torch.equal(v, before[k]))
    assert moved > 10  # the step changed α and the weights


@pytest.mark.parametrize("name", list(TRAINS))
def test_data_parallel_retraining_keeps_the_ranks_identical(worker_results, name):
    a, b = (torch.load(worker_results / f"{name}.rank{r}.pt", weights_only=True)["modules"][0]
            for r in range(2))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs between the ranks"
    run = worker_results / name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records] == [2] * TRAINS[name]["epochs"]
    assert all(math.isfinite(r["train_loss"]) and "test_acc" in r for r in records)
    result = json.loads((run / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 1
    assert json.loads((run / "config.json").read_text())["sync_bn"] is (name == "train_sync")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for k, v in state["model"].items():  # rank 0's checkpoint is what both ranks hold
        assert torch.equal(v, a[k])


def test_bytes_all_reduced_per_step_are_the_gradients(worker_results):
    net, obj, method = build_search(resolve_config(
        None, dataset="digits", channels=4, layers=2, device="cpu"), 1, 8, 10, 4,
        torch.device("cpu"))
    sent = json.loads((worker_results / "bytes.json").read_text())["grad_bytes_order1"]
    # first order: one all-reduce of ∇α, one of ∇w (float32)
    assert sent == 4 * (sum(p.numel() for p in method.a_params)
                        + sum(p.numel() for p in method.w_params))


def test_kill_one_rank_mid_epoch_then_resume_gives_the_uninterrupted_genotype(
        worker_results, tmp_path):
    run = tmp_path / "run"
    argv = ["-m", "diffnas", "search", *KILLED_ARGS, "--out", str(run)]
    procs = launch(argv, log=tmp_path / "killed")
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists():  # epoch 0 is done: kill rank 0 in epoch 1
        assert time.monotonic() < deadline and procs[0].poll() is None, "no first checkpoint"
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code = procs[1].wait(timeout=120)
    waited = time.monotonic() - t0
    procs[0].wait()
    err = (tmp_path / "killed.rank1.err").read_text()
    assert code == 2 and waited < 120, err
    assert "rank 1 of 2: a collective failed" in err and "--resume" in err, err
    assert "Traceback" not in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # intact
    assert int(state["epoch"]) in (0, 1) and state["world_size"] == 2
    procs = launch([*argv, "--resume"], log=tmp_path / "resumed")
    assert wait_all(procs, timeout=300) == [0, 0], (tmp_path / "resumed.rank0.err").read_text()
    straight = torch.load(worker_results / "killed.rank0.pt", weights_only=True)["genotype"]
    assert str(json.loads((run / "result.json").read_text())["genotype_str"]) == straight
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(r["world_size"] == 2 for r in records)


def test_a_nan_on_one_rank_stops_every_rank(worker_results):
    msgs = [(worker_results / f"nan.rank{r}.txt").read_text() for r in range(2)]
    assert msgs[0] == msgs[1], msgs  # rank 0 saw rank 1's NaN in the all-reduced stats
    assert msgs[0].startswith("loss became nan at epoch 1 step 1"), msgs[0]
    assert "the last good checkpoint (epoch 0)" in msgs[0]
    assert msgs[0] in (worker_results / "nan" / "log.txt").read_text()
    assert int(torch.load(worker_results / "nan" / "checkpoint.pt",
                          weights_only=True)["epoch"]) == 0


def test_resume_with_another_rank_count_needs_sync_bn(worker_results, tmp_path):
    from diffnas.engine.search import search

    kw = dict(KILLED)
    cfg = resolve_config(kw.pop("preset"), **kw)
    with pytest.raises(DiffnasError, match="written by a run on 2 rank.*resume with 2"):
        search(cfg, out=worker_results / "killed", resume=True, progress=False)


def test_uneven_batch_is_a_clear_error():
    d = Dist(rank=0, world=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(DiffnasError, match="16 does not split evenly over 3 ranks.*multiple of 3"):
        d.check_batch("the global batch (--batch-size)", 16)
    x = torch.arange(12).view(12, 1)
    rot = Batch(x, x[:, 0], {"pretext": torch.arange(48), "other": torch.zeros(5)})
    d2 = Dist(rank=1, world=2, local_rank=1, device=torch.device("cpu"))
    part = d2.shard(rot, 12)
    assert part.x[:, 0].tolist() == list(range(6, 12))
    assert part.extra["pretext"].tolist() == list(range(24, 48))  # 4 rows per image
    assert part.extra["other"].shape == (5,)  # not a per-image tensor: whole


def test_image_folder_streams_decode_only_their_rank_share(tmp_path):
    from diffnas.data.imagenet import ImageFolderStream
    from test_train import _image_folder

    root = _image_folder(tmp_path / "inet", [(50, 40), (30, 70), (64, 64), (20, 20)])
    whole = list(ImageFolderStream(root, "train", batch_size=4, size=16, seed=1).epoch(0))
    shares = []
    for r in range(2):
        s = ImageFolderStream(root, "train", batch_size=4, size=16, seed=1)
        s.shard = (r, 2)
        shares.append(list(s.epoch(0)))
    assert len(whole) == len(shares[0]) == 2
    for i, (x, y) in enumerate(whole):  # the same crops: drawn for the whole batch
        assert torch.equal(torch.cat([shares[0][i][0], shares[1][i][0]]), x)
        assert torch.equal(torch.cat([shares[0][i][1], shares[1][i][1]]), y)
    t = ImageFolderStream(root, "test", batch_size=3, size=16)
    t.shard = (1, 2)
    assert [len(y) for _, y in t.epoch(0)] == [3]  # 8 images: batches [3, 3, 2], rank 1: #1


def test_one_process_has_no_session(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with session(torch.device("cpu"), sync_bn=True) as ddp:
        assert ddp is None
    from diffnas.methods import base

    assert base.GRAD_REDUCER is None


def test_sync_bn_equals_batch_norm_in_one_process():
    bn = torch.nn.BatchNorm2d(3)
    ref = torch.nn.BatchNorm2d(3)
    convert_sync_bn(bn)
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(bn(x), ref(x))  # no process group: plain batch norm
    torch.testing.assert_close(bn.running_var, ref.running_var)
