"""Data parallelism under ``torchrun``: one search (or retraining) on N processes.

``torchrun --nproc_per_node=N -m diffnas search ...`` starts N copies of the command; each
reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address from its environment
and joins one process group here (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on
CPU). Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) :func:`session` yields ``None`` and
nothing changes: no process group, no collective, the same numbers as before.

What a data-parallel step is (the rules of :func:`session`'s :class:`Dist`):

- ``--batch-size`` is the *global* batch. Every rank draws the same global batch from the
  same per-epoch seeds as one process does, augments it and lets the objective prepare it
  (masks, rotations) with the same generator, then keeps its contiguous share
  (:meth:`Dist.shard`: rows ``r·B/N .. (r+1)·B/N``). So the ranks read disjoint shares, the
  generators stay in lockstep, and the union of the shares is exactly the one-process batch.
  A batch that does not split evenly is an error (:meth:`Dist.check_batch`): unequal shares
  would weight the ranks' mean losses unequally. (The price: every rank augments and
  prepares the whole global batch, a small share of a search step. Retraining draws the
  augmentation for the whole batch but applies it to the share only (:meth:`Dist.augment`),
  and an ``imagenet:`` folder decodes only the rank's images.)
- Gradients: every gradient a step takes through :func:`diffnas.methods.base.grads_of` (the
  α step, the w step, the second-order virtual step, its finite-difference
  Hessian-vector products, CDARTS' evaluation network E and its joint step) is averaged
  over the ranks in one flat all-reduce before it is used. Each rank's loss is the mean over
  its share, so the average is the gradient of the global batch's mean loss, and every rank
  applies the same update: α and weights stay bitwise identical (checked exactly at every
  epoch end, :meth:`Dist.assert_in_sync`; a divergence stops every rank with the name of the
  tensor).
- Randomness: torch's global RNG is re-seeded from ``(seed, epoch)`` on every rank, and every
  rank consumes it alike, so sampling methods (STC-NAS, GDAS, SNAS, DrNAS) draw the same
  architecture sample on every rank; drop-path masks are drawn per local row, so rank r's
  row i shares its mask with row i of the other ranks (a one-process run draws B masks).
- Batch norm: batch statistics are per rank (each rank normalises over its B/N images) unless
  ``--sync-bn``; the running averages are averaged over the ranks before every evaluation and
  checkpoint (:meth:`Dist.average_buffers`), so evaluation and the checkpoint are identical on
  every rank. ``--sync-bn`` (:func:`convert_sync_bn`) normalises training batches with the
  statistics of the global batch (a differentiable all-reduce of Σx, Σx² and the count; its
  backward all-reduces their gradients: one small all-reduce per batch norm and pass), so a
  step computes the one-process step up to float summation order (and drop-path's draws).
- Only rank 0 writes the run folder (:class:`FollowerRunFolder` for the others), shows the
  progress bar and prints; every rank reads the same checkpoint on ``--resume``. Records
  gain ``world_size``; their losses and accuracies are the ranks' means, ``peak_mem_gib``
  is rank 0's process.
- Evaluation splits the evaluation batches round-robin over the ranks and all-reduces the
  sums (the same batches as one process, so the same numbers up to summation order).
- Faults: a non-finite loss on any rank is seen by all (the step's stats are all-reduced, a
  NaN makes the mean NaN), so every rank stops with the same message. A rank that dies
  (kill -9) closes its sockets: the others' next collective fails and they stop with a
  :class:`~diffnas.errors.DiffnasError` naming the failure; a rank that hangs is cut off by
  the process group's timeout (``$DIFFNAS_DIST_TIMEOUT`` seconds, default 600). Checkpoints
  are written atomically by rank 0, so the last one stays intact.
- Resume with another number of ranks: allowed with ``--sync-bn`` (a step is then the same
  function of the global batch for any N that divides it, up to float summation order; only
  drop-path's masks, drawn per local row, follow the ranks' rows); refused without it,
  because the per-rank BN statistics make the result depend on B/N.
- Not data-parallel: SDARTS-ADV's attack (its PGD gradient and accept/reject test run on each
  rank's share, so each rank perturbs its forward on its own; the weight gradients are
  still averaged, so parameters stay identical); ``--hessian-every``'s power iteration runs
  on every rank on the same fixed batches (rank 0's value is broadcast). ``diffnas
  experiment`` runs are not started under torchrun (one process per run).

Why explicit all-reduce and not ``DistributedDataParallel``: DDP averages gradients from hooks
that fire during ``loss.backward()`` after a forward through its wrapper, over a parameter set
fixed at construction. A bilevel step does not fit: it takes ``autograd.grad`` of several
losses w.r.t. different subsets (α only with w frozen, w only with α frozen, both at w' in
the second-order step, α at w ± ε), temporarily sets ``requires_grad`` off, and CDARTS builds
a new evaluation network every cycle. Wrapping would mean ``no_sync`` blocks around every
extra pass and rebuilding the wrapper with E; averaging the gradient lists the steps already
produce (one flat buffer per call) keeps the step code unchanged. Retraining uses the same
helper after its ``backward`` (one mechanism, one set of tests); the price is that the
all-reduce does not overlap the backward pass as DDP's buckets do (on multi-GPU a few per
cent of step time, not measured here).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DiffnasError
from .runfolder import RunFolder

TIMEOUT_ENV = "DIFFNAS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def env_world_size() -> int:
    """``$WORLD_SIZE`` (1 when unset): the number of ranks torchrun started."""
    value = os.environ.get("WORLD_SIZE", "").strip() or "1"
    try:
        return int(value)
    except ValueError:
        raise DiffnasError(f"WORLD_SIZE={value!r} is not a number of processes") from None


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch (they print nothing and write nothing)."""
    return env_world_size() <= 1 or os.environ.get("RANK", "0").strip() in ("", "0")


@dataclass
class Dist:
    """This process's place in the process group and the collectives the loops use."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    sync_bn: bool = False
    #: bytes all-reduced by :meth:`average_grads` so far (the communication volume)
    grad_bytes: int = 0
    _converted: set[int] = field(default_factory=set)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return (f"{self.world} ranks ({dist.get_backend()}), batch statistics "
                + ("synchronised (--sync-bn)" if self.sync_bn else "per rank"))

    # -- data ------------------------------------------------------------------------------------
    def check_batch(self, what: str, *sizes: int) -> None:
        """Every batch size in ``sizes`` must split evenly over the ranks."""
        for n in sizes:
            if n % self.world:
                raise DiffnasError(
                    f"{what} {n} does not split evenly over {self.world} ranks: each rank takes "
                    f"an equal share of the global batch; use a multiple of {self.world}")

    def share(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` rows."""
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def shard(self, batch: Any, n: int) -> Any:
        """This rank's share of a prepared batch of ``n`` images: every tensor whose first
        dimension is a multiple m·n of the images (the images, labels, masks, m rotations or
        tiles per image) keeps its contiguous rows of this rank's images; others stay whole."""
        def cut(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] % n == 0:
                return t[self.share(t.shape[0])]
            return t

        return type(batch)(cut(batch.x), cut(batch.y),
                           {k: cut(v) for k, v in batch.extra.items()})

    def augment(self, aug: Any, x: torch.Tensor, generator: torch.Generator, n: int,
                share: slice) -> torch.Tensor:
        """``x``, this rank's rows ``share`` of a global batch of ``n`` images, augmented as
        one process augments the whole batch: the random numbers are drawn for all ``n`` (so
        every rank's generator stays in lockstep), the augmentation runs on the share only."""
        params = aug.draw(n, x.shape[2], x.shape[3], generator)
        cut = dataclasses.replace(params, **{
            f.name: getattr(params, f.name)[share] for f in dataclasses.fields(params)
            if getattr(params, f.name) is not None})
        return aug.apply(x, cut)

    # -- gradients and statistics ----------------------------------------------------------------
    def average_grads(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The mean over the ranks of ``grads`` (one flat all-reduce per dtype)."""
        if not grads:
            return grads
        out = list(grads)
        for dtype in sorted({g.dtype for g in grads}, key=str):
            idx = [i for i, g in enumerate(grads) if g.dtype == dtype]
            flat = torch.cat([grads[i].reshape(-1) for i in idx])
            dist.all_reduce(flat)
            flat.div_(self.world)
            self.grad_bytes += flat.numel() * flat.element_size()
            offset = 0
            for i in idx:
                g = grads[i]
                out[i] = flat[offset:offset + g.numel()].view_as(g)
                offset += g.numel()
        return out

    def average_param_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` of ``params`` in place (retraining, after ``backward``)."""
        ps = [p for p in params if p.grad is not None]
        for p, g in zip(ps, self.average_grads([p.grad for p in ps]), strict=True):
            p.grad = g

    def mean_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """A step's stats averaged over the ranks (a NaN on any rank makes its entry NaN on
        all, so every rank stops together)."""
        keys = sorted(stats)
        t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist(), strict=True))

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a logged indicator a decision may read)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t.item())

    def average_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Average the floating-point buffers (BN running statistics) over the ranks."""
        bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in bufs])
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        with torch.no_grad():
            for b in bufs:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def assert_same(self, what: str, value: int) -> None:
        """Stop every rank when the ranks disagree on an integer (e.g. the resumed epoch)."""
        t = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]):
            raise DiffnasError(f"the ranks disagree on {what}: from {-int(t[1])} to "
                               f"{int(t[0])}; start every rank from the same run folder")

    def assert_in_sync(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stop every rank unless every tensor equals rank 0's bit for bit."""
        items = list(named)
        if not items:
            return
        mismatch = -1
        for dtype in sorted({t.dtype for _, t in items}, key=str):
            idx = [i for i, (_, t) in enumerate(items) if t.dtype == dtype]
            mine = torch.cat([items[i][1].detach().reshape(-1) for i in idx])
            ref = mine.clone()
            dist.broadcast(ref, 0)
            if not torch.equal(mine, ref):
                offset = 0
                for i in idx:
                    t = items[i][1]
                    if not torch.equal(mine[offset:offset + t.numel()],
                                       ref[offset:offset + t.numel()]):
                        mismatch = i if mismatch < 0 else min(mismatch, i)
                        break
                    offset += t.numel()
        flag = torch.tensor([mismatch if mismatch >= 0 else len(items)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        first = int(flag)
        if first < len(items):
            raise DiffnasError(f"the ranks' parameters diverged ({items[first][0]} differs from "
                               "rank 0's); this is a bug in the data-parallel step, please "
                               "report it with the command line")

    def prepare_modules(self, modules: Iterable[nn.Module]) -> None:
        """With ``--sync-bn``, make the batch norms of ``modules`` synchronised (new modules,
        such as CDARTS' rebuilt evaluation network, are converted when first seen)."""
        if self.sync_bn:
            for m in modules:
                if id(m) not in self._converted:
                    convert_sync_bn(m)
                    self._converted.add(id(m))

    # -- evaluation --------------------------------------------------------------------------
    def mine(self, i: int) -> bool:
        """Round-robin evaluation batches: batch ``i`` is this rank's."""
        return i % self.world == self.rank


def method_modules(*owners: Any) -> list[nn.Module]:
    """Every module held by ``owners`` or, for non-module owners (a search method), by their
    attributes (CDARTS' evaluation network and embedding modules)."""
    out: list[nn.Module] = []
    for o in owners:
        if isinstance(o, nn.Module):
            out.append(o)
        else:
            out.extend(v for v in vars(o).values() if isinstance(v, nn.Module))
    seen: set[int] = set()
    return [m for m in out if not (id(m) in seen or seen.add(id(m)))]  # type: ignore[func-returns-value]


_CURRENT: Dist | None = None


def current() -> Dist | None:
    """The running data-parallel session, or None (one process)."""
    return _CURRENT


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or math.isinf(value):
        raise DiffnasError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (> 0)")
    return value


#: messages of a collective whose peer is gone (gloo, NCCL, the TCP store)
_PEER_GONE = ("connection closed", "connection reset", "connection refused", "broken pipe",
              "timed out", "timeout", "by peer", "gloo", "nccl", "tcpstore")


@contextmanager
def session(device: torch.device, sync_bn: bool = False) -> Iterator[Dist | None]:
    """Join the torchrun process group for one run (``None`` when not under torchrun).

    Installs the gradient averaging of the search steps for the run and removes it afterwards;
    a collective that fails because another rank stopped becomes one DiffnasError line."""
    global _CURRENT
    world = env_world_size()
    if world <= 1:  # one process (--sync-bn: its batch is the global batch already)
        yield None
        return
    if _CURRENT is not None:
        raise DiffnasError("a data-parallel run is already going on in this process")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DiffnasError(f"rank {rank} wants cuda:{local} but this node has "
                               f"{torch.cuda.device_count()} GPU(s); start at most that many "
                               "processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise DiffnasError(f"data-parallel runs need a cpu or cuda device, got {device}")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s()))
    if dist.get_world_size() != world:
        raise DiffnasError(f"WORLD_SIZE={world} but the process group has "
                           f"{dist.get_world_size()} ranks")
    from ..methods import base

    ctx = Dist(rank, world, local, device, sync_bn)
    _CURRENT = ctx
    base.GRAD_REDUCER = ctx.average_grads
    failed = True  # until the run returns (Ctrl-C included: then no barrier either)
    try:
        yield ctx
        failed = False
    except DiffnasError:
        raise
    except Exception as e:  # noqa: BLE001 - sorted below: a peer's failure or our own error
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if isinstance(e, dist.DistError) or any(w in text.lower() for w in _PEER_GONE):
            raise DiffnasError(
                f"rank {rank} of {world}: a collective failed, so another rank stopped or "
                f"cannot be reached ({type(e).__name__}: {text}); every rank stops. Rank 0 "
                "writes checkpoints atomically, so the last one (if an epoch finished) is "
                "intact: run the same torchrun command with --resume") from None
        raise
    finally:
        base.GRAD_REDUCER = None
        _CURRENT = None
        if owned:
            if failed:  # the peers may be gone: do not wait for them in a barrier
                try:
                    dist.destroy_process_group()
                except Exception:  # noqa: BLE001
                    pass
            else:
                dist.barrier()
                dist.destroy_process_group()


class FollowerRunFolder(RunFolder):
    """The run folder as ranks > 0 see it: they read the checkpoint and the metrics on
    ``--resume`` and write nothing (rank 0 owns the folder)."""

    def begin(self, cfg: Any, resume: bool
              ) -> tuple[dict[str, Any] | None, int, float, list[dict[str, Any]]]:
        if resume and self.checkpoint.exists():
            state = self.load_checkpoint(cfg)
            start = int(state["epoch"]) + 1
            history = (self.read_metrics()[:int(state["records"])] if "records" in state
                       else self.read_metrics(start - 1))
            return state, start, float(state["elapsed"]), history
        return None, 0, 0.0, []

    def end_epoch(self, *args: Any, **kwargs: Any) -> None:
        pass

    def create(self, cfg: Any) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, up_to_epoch: int | None, records: int | None = None
                         ) -> list[dict[str, Any]]:
        return self.read_metrics(up_to_epoch) if records is None else \
            self.read_metrics()[:records]

    def write_json(self, name: str, obj: Any) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass


def run_folder(run: RunFolder, ctx: Dist | None) -> RunFolder:
    """``run`` for rank 0 (or one process), a :class:`FollowerRunFolder` for the others."""
    return run if ctx is None or ctx.main else FollowerRunFolder(Path(run.path))


def check_resume(ctx: Dist | None, state: dict[str, Any] | None, start: int,
                 sync_bn: bool) -> None:
    """Every rank resumes the same epoch, and a different number of ranks only where the
    result stays well-defined (``--sync-bn``)."""
    world = 1 if ctx is None else ctx.world
    if state is not None:
        saved = int(state.get("world_size", 1))
        if saved != world and not sync_bn:
            raise DiffnasError(
                f"the checkpoint was written by a run on {saved} rank(s), this one has {world}: "
                "with per-rank batch-norm statistics the result depends on the share of the "
                f"batch each rank sees, so resume with {saved} rank(s) (runs with --sync-bn "
                "may change the number)")
    if ctx is not None:
        ctx.assert_same("the epoch to start from (do all ranks see the same checkpoint?)",
                        start)


# ------------------------------------------------------------------------------ synchronised BN
class _SyncBatchNorm(nn.BatchNorm2d):
    """Batch norm over the global batch in training mode (see :func:`convert_sync_bn`)."""

    syncs_batch_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype, x = x.dtype, x.float()  # statistics in float32 (also under autocast)
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() / x.shape[1]])
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        total = _all_reduce_sum(local)
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            momentum = self.momentum
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                unbiased = var.detach() * (n / (n - 1)).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                assert self.running_var is not None
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks, differentiable (its backward sums the ranks' gradients)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Make every 2-d batch norm of ``module`` normalise training batches with the statistics
    of the global batch (in place; state dicts unchanged). Unlike ``nn.SyncBatchNorm`` it also
    runs on CPU (gloo); evaluation uses the running averages as before, and batch norms
    without running averages (``bn_batch_stats``) normalise evaluation batches per rank."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _SyncBatchNorm
    return module


__all__ = ["Dist", "FollowerRunFolder", "check_resume", "convert_sync_bn", "current",
           "env_world_size", "is_main_process", "method_modules", "run_folder", "session"]
