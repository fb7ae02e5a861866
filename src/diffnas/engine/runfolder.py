"""Run folders: resolved config, metrics (JSON lines), genotype.json, an atomically written
checkpoint and a human log. Only the process that owns the run writes here."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import SearchConfig, dump_config
from ..errors import DiffnasError

# Any config dataclass with ``to_dict``, ``from_dict`` and ``fingerprint_diff`` (SearchConfig,
# TrainConfig); resuming rebuilds the saved one with the same class.
RunConfig = Any

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``,
    so a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: metrics records written so far (set by :meth:`begin`; None before): the checkpoint
        #: keeps it, since an epoch number can repeat (a DARTS-ADA rollback re-runs epochs)
        self.records: int | None = None

    @classmethod
    def open(cls, path: str | Path, resume: bool) -> RunFolder:
        """The folder of a run about to start; refuses to overwrite a checkpoint unless the run
        resumes it."""
        run = cls(path)
        blocker = next((p for p in (run.path, *run.path.parents)
                        if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise DiffnasError(f"run folder {run.path} cannot be created: {blocker} is an "
                               "existing file, not a folder; pass another --out")
        if not resume and run.checkpoint.exists():
            raise DiffnasError(f"run folder {run.path} already holds a checkpoint; pass --resume "
                               "to continue it or --out to start a new run")
        return run

    def begin(self, cfg: RunConfig, resume: bool
              ) -> tuple[dict[str, Any] | None, int, float, list[dict[str, Any]]]:
        """Resume from the checkpoint (when ``resume`` and there is one) or start afresh.

        Returns ``(state, first_epoch, elapsed_s, history)``; ``state`` is the checkpoint
        (``None`` for a fresh run), ``history`` the metrics of the epochs it covers."""
        if resume and self.checkpoint.exists():
            state = self.load_checkpoint(cfg)
            start = int(state["epoch"]) + 1
            history = (self.truncate_metrics(start - 1) if "records" not in state  # older runs
                       else self.truncate_metrics(None, records=int(state["records"])))
            self.records = len(history)
            self.log(f"resumed at epoch {start} from {self.checkpoint}")
            return state, start, float(state["elapsed"]), history
        self.create(cfg)
        self.metrics.unlink(missing_ok=True)
        self.records = 0
        return None, 0, 0.0, []

    def end_epoch(self, cfg: RunConfig, epoch: int, elapsed: float, record: dict[str, Any],
                  **state: Any) -> None:
        """Append the epoch's metrics, then write the checkpoint (in this order: a crash in
        between leaves a metrics line that :meth:`begin` drops on resume)."""
        self.append_metrics(record)
        counted = {"records": self.records} if self.records is not None else {}
        self.save_checkpoint({"epoch": epoch, "elapsed": elapsed,
                              "config": json.dumps(cfg.to_dict()), **counted, **state})

    # -- files ---------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self, cfg: SearchConfig | RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.json", dump_config(cfg) + "\n")

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.records is not None:
            self.records += 1

    def read_metrics(self, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
        """The epoch records, up to ``up_to_epoch``; a last line cut short by a crash is skipped
        (the checkpoint is written after it, so it belongs to an epoch that did not finish)."""
        if not self.metrics.exists():
            return []
        out = []
        lines = self.metrics.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise DiffnasError(f"{self.metrics} line {i + 1} is not a JSON record") from None
            if up_to_epoch is None or rec["epoch"] <= up_to_epoch:
                out.append(rec)
        return out

    def truncate_metrics(self, up_to_epoch: int | None, records: int | None = None
                         ) -> list[dict[str, Any]]:
        """Drop lines written after the checkpoint (a crash between the two writes): keep the
        first ``records`` records, or (checkpoints without that count) those up to
        ``up_to_epoch``."""
        keep = self.read_metrics(up_to_epoch) if records is None else \
            self.read_metrics()[:records]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))
        return keep

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=2) + "\n")

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_write_bytes(self.checkpoint, lambda f: torch.save(state, f))

    def load_checkpoint(self, cfg: SearchConfig | RunConfig) -> dict[str, Any]:
        """Load the checkpoint safely (``weights_only``) and check it was made by ``cfg``."""
        if not self.checkpoint.exists():
            raise DiffnasError(f"cannot resume: no checkpoint at {self.checkpoint}")
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling/IO error means a bad file
            raise DiffnasError(f"cannot resume: checkpoint {self.checkpoint} is unreadable "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        if state.get("format") != CHECKPOINT_FORMAT:
            raise DiffnasError(f"cannot resume: {self.checkpoint} has format "
                               f"{state.get('format')!r}, this diffnas writes {CHECKPOINT_FORMAT}")
        saved = type(cfg).from_dict(json.loads(state["config"]))
        diff = saved.fingerprint_diff(cfg)
        if diff:
            a, b = saved.to_dict(), cfg.to_dict()
            what = "; ".join(f"{k}: checkpoint {a[k]!r}, requested {b[k]!r}" for k in diff)
            raise DiffnasError(f"cannot resume {self.path}: the checkpoint was made with another "
                               f"config ({what})")
        return state
