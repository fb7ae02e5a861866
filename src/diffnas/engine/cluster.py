"""Experiment grids on a cluster: ``diffnas experiment --launcher submitit`` submits every
pending run of the grid as its own job through submitit (Slurm via its ``AutoExecutor`` on a
cluster; its ``LocalExecutor`` on a machine without Slurm, or with ``cluster=local``).

A job runs the in-machine launcher's own per-run function (``experiment._run_cell``), so a
finished run is skipped, an interrupted one resumes from its checkpoint, a failed one is retried
and retraining follows the search exactly as with the default launcher. The submitting process
waits for the jobs (one progress line whenever the counts change), then writes the summary; if it
is stopped, ``--report-only`` writes the summary later from the run folders.

The experiment folder must be on storage that the submitting machine and every node see: the
run folders, submitit's job files (``OUT/submitit/<job id>/``: pickled call, stdout, stderr) and
the results are all written there, and the jobs start with this Python interpreter, so diffnas
must be installed at the same path on the nodes (a shared environment).

A job that reaches its time limit or is preempted is requeued by submitit (at most 3 time-outs,
submitit's default) and resumes the run from its last checkpoint. Job ids are kept in
``OUT/submitit/jobs.json``; re-running the command waits for runs whose Slurm job is still queued
or running instead of submitting them a second time. Local jobs are children of the submitting
process and are stopped with it.

Deviation from the in-machine launcher, one line: a run whose finished retraining was made with
another config stops the whole grid there (``_check_config`` raises), here it fails only its job.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DiffnasError

if TYPE_CHECKING:
    from .experiment import Cell, ExperimentSpec

#: Launchers of ``diffnas experiment``: ``machine`` (runs on this machine, ``--jobs`` at once,
#: the default) and ``submitit`` (a job per run).
LAUNCHERS = ("machine", "submitit")
CLUSTERS = ("auto", "slurm", "local")
#: Slurm time limit per job when ``time`` is not given (submitit's own default is 5 minutes).
DEFAULT_TIME_MIN = 240
#: The local executor's limit when ``time`` is not given: none in practice (submitit's is 2 min).
LOCAL_NO_LIMIT_MIN = 60 * 24 * 365
POLL_S = {"local": 0.5, "slurm": 10.0}
#: Slurm states of a job that is still to run or running (a re-run waits for it).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "SUSPENDED", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "READY"}
RECORDS = "jobs.json"


# ------------------------------------------------------------------------------- options
def _int_at_least(low: int) -> Any:
    """A parser of whole numbers ≥ ``low`` (ValueError otherwise; booleans are refused)."""
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError
        n = int(v) if isinstance(v, int) else int(str(v).strip())
        if n < low:
            raise ValueError
        return n
    return parse


_positive_int, _count = _int_at_least(1), _int_at_least(0)


def _gigabytes(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    text = str(v).strip().upper()
    for suffix in ("GB", "G"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    x = float(text)
    if not x > 0 or x == float("inf"):
        raise ValueError
    return x


def _text(v: Any) -> str:
    s = str(v).strip()
    if not s:
        raise ValueError
    return s


def _cluster(v: Any) -> str:
    s = str(v).strip().lower()
    if s not in CLUSTERS:
        raise ValueError
    return s


#: ``--launcher-opt KEY=VALUE`` keys: (parser, what a value must be, help text).
OPTIONS: dict[str, tuple[Callable[[Any], Any], str, str]] = {
    "cluster": (_cluster, "auto, slurm or local",
                "auto (default: Slurm when its srun is on PATH, else submitit's LocalExecutor "
                "on this machine), slurm, or local"),
    "partition": (_text, "a Slurm partition name", "Slurm partition"),
    "time": (_positive_int, "whole minutes, at least 1",
             f"minutes per job (default {DEFAULT_TIME_MIN} on Slurm, no limit locally)"),
    "gpus": (_count, "a whole number, 0 or more",
             "GPUs per job (default: 0 on Slurm; every GPU of this machine locally)"),
    "cpus": (_positive_int, "a whole number, at least 1",
             "CPUs per task (also the run's torch threads unless --threads)"),
    "mem": (_gigabytes, "gigabytes above 0, e.g. 16 or 16G", "memory per job in GB"),
    "array_parallelism": (_positive_int, "a whole number, at least 1",
                          "jobs running at once (Slurm's array %%N; default --jobs when above "
                          "1, else no cap on Slurm and 1 locally)"),
    "account": (_text, "a Slurm account name", "Slurm account"),
    "qos": (_text, "a Slurm QOS name", "Slurm quality of service"),
    "constraint": (_text, "a Slurm feature constraint", "Slurm --constraint"),
}


def accepted_keys() -> str:
    return ", ".join(OPTIONS)


def options_help() -> str:
    """The keys and their meaning, for ``--help``."""
    return "; ".join(f"{k}: {h}" for k, (_, _, h) in OPTIONS.items())


def launcher_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``--launcher-opt`` values checked and converted (text from the command line, or the
    converted values saved in experiment.json); one DiffnasError names a bad key or value and
    lists the accepted keys."""
    out: dict[str, Any] = {}
    bad = sorted(k for k in values if k.replace("-", "_") not in OPTIONS)
    if bad:
        raise DiffnasError(f"unknown --launcher-opt key(s) {', '.join(bad)}; accepted keys: "
                           f"{accepted_keys()}")
    for key, value in values.items():
        k = key.replace("-", "_")
        parse, want, _ = OPTIONS[k]
        try:
            out[k] = parse(value)
        except (TypeError, ValueError):
            raise DiffnasError(f"--launcher-opt {k}={value!r}: expected {want} (accepted keys: "
                               f"{accepted_keys()})") from None
    return out


def check_launcher(launcher: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The launcher's name and options checked; options are only accepted with submitit."""
    if launcher not in LAUNCHERS:
        raise DiffnasError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    checked = launcher_options(opts)
    if checked and launcher != "submitit":
        raise DiffnasError(f"--launcher-opt ({', '.join(checked)}) needs --launcher submitit; "
                           f"the {launcher} launcher takes none")
    return checked


# ------------------------------------------------------------------------------ executors
def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise DiffnasError("--launcher submitit needs the submitit package, which is not "
                           "installed: pip install 'diffnas[cluster]'") from None
    return submitit


def resolve_cluster(opts: Mapping[str, Any]) -> str:
    """``slurm`` or ``local``: the ``cluster`` option, or (auto) Slurm when submitit finds it."""
    submitit = require_submitit()
    has_slurm = submitit.SlurmExecutor.affinity() > 0  # submitit's own test: srun on PATH
    want = opts.get("cluster", "auto")
    if want == "slurm" and not has_slurm:
        raise DiffnasError("--launcher-opt cluster=slurm, but Slurm's srun is not on PATH here; "
                           "submit from a Slurm login node, or use cluster=local")
    if want == "auto":
        return "slurm" if has_slurm else "local"
    return str(want)


def parallelism(spec: ExperimentSpec, opts: Mapping[str, Any], cluster: str) -> int | None:
    """Jobs at once: ``array_parallelism``, else ``--jobs`` above 1, else none (Slurm: no cap
    beyond submitit's 256) or 1 (local)."""
    if "array_parallelism" in opts:
        return int(opts["array_parallelism"])
    if spec.jobs > 1:
        return spec.jobs
    return None if cluster == "slurm" else 1


def job_threads(spec: ExperimentSpec, opts: Mapping[str, Any], cluster: str) -> int | None:
    """Torch threads of each run: --threads, else ``cpus``, else (local) this machine's cores
    shared out among the jobs at once; None: the job decides (Slurm's CPUs per task, else
    torch's default)."""
    if spec.threads:
        return spec.threads
    if "cpus" in opts:
        return int(opts["cpus"])
    if cluster == "local":
        return max(1, (os.cpu_count() or 1) // (parallelism(spec, opts, cluster) or 1))
    return None


def executor_parameters(spec: ExperimentSpec, opts: Mapping[str, Any], cluster: str,
                        name: str) -> dict[str, Any]:
    """The submitit ``AutoExecutor.update_parameters`` keywords of the options."""
    params: dict[str, Any] = {"name": name}
    params["timeout_min"] = int(opts.get("time", DEFAULT_TIME_MIN if cluster == "slurm"
                                         else LOCAL_NO_LIMIT_MIN))
    if "gpus" in opts:
        params["gpus_per_node"] = int(opts["gpus"])
    elif cluster == "local":  # submitit's local jobs see only the GPUs asked for
        params["gpus_per_node"] = _local_gpus(spec.device)
    if "cpus" in opts:
        params["cpus_per_task"] = int(opts["cpus"])
    if "mem" in opts:
        params["mem_gb"] = float(opts["mem"])
    for key in ("partition", "account", "qos", "constraint"):
        if key in opts:
            params[f"slurm_{key}"] = opts[key]
    par = parallelism(spec, opts, cluster)
    if cluster == "slurm" and par is not None:
        params["slurm_array_parallelism"] = par
    return params


def _local_gpus(device: str) -> int:
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def make_executor(spec: ExperimentSpec, folder: Path, cluster: str, name: str) -> Any:
    """A submitit AutoExecutor for ``cluster`` writing its job files under ``folder``."""
    submitit = require_submitit()
    opts = launcher_options(spec.launcher_opts)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    try:
        executor.update_parameters(**executor_parameters(spec, opts, cluster, name))
    except (ValueError, NameError, AssertionError) as e:
        raise DiffnasError(f"submitit refused the launcher options: "
                           f"{str(e).strip().splitlines()[0]}") from None
    return executor


# ----------------------------------------------------------------------------------- jobs
class _Lines:
    """Collects what ``_run_cell`` logs, for the submitting process to write to log.txt."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


class RunJob:
    """One cell of the grid as a submitit job: the in-machine launcher's ``_run_cell`` in the
    job's own process. The grid and the cell travel as plain dicts (rebuilt in the job), not as
    pickled config objects. ``checkpoint`` makes submitit requeue the job after a time-out or
    preemption; the requeued job finds the run's checkpoint and resumes it."""

    def __init__(self, spec: ExperimentSpec, cell: Cell, head: str,
                 threads: int | None) -> None:
        self.spec = spec.to_dict()
        self.cell = {"setting": cell.setting, "method": cell.method, "seed": cell.seed,
                     "cfg": cell.cfg.to_dict(), "run_dir": str(cell.run_dir.resolve())}
        self.head, self.threads = head, threads

    def __call__(self) -> dict[str, Any]:
        import socket

        import torch

        from ..config import SearchConfig
        from .experiment import Cell, ExperimentSpec, _run_cell

        spec = ExperimentSpec.from_dict(self.spec)
        c = self.cell
        cell = Cell(c["setting"], c["method"], int(c["seed"]), SearchConfig.from_dict(c["cfg"]),
                    Path(c["run_dir"]))
        threads = (self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK") or 0)
                   or torch.get_num_threads())
        echoed: list[str] = []

        def echo(line: str) -> None:
            print(line, flush=True)  # the job's stdout file
            echoed.append(line)

        log = _Lines()
        _run_cell(spec, cell, self.head, False, False, echo, log, threads)  # type: ignore[arg-type]
        return {"echo": echoed, "log": log.lines, "host": socket.gethostname(),
                "threads": threads}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _records(folder: Path) -> dict[str, Any]:
    path = folder / RECORDS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"jobs": {}}
    return data if isinstance(data, dict) and isinstance(data.get("jobs"), dict) \
        else {"jobs": {}}


def _key(cell: Cell, out: Path) -> str:
    try:
        return str(cell.run_dir.relative_to(out))
    except ValueError:
        return str(cell.run_dir)


def pending(spec: ExperimentSpec, cell: Cell) -> bool:
    """Whether a cell still has work: its search, or the retraining the grid asks for."""
    from .experiment import _state

    if _state(cell.run_dir) != "done":
        return True
    return bool(spec.retrain) and _state(cell.run_dir / "retrain") != "done"


def _error_line(e: BaseException) -> str:
    """One line for a failed job: a failed call's exception (the last line of the traceback
    submitit frames with dashes), else the first line (why a job produced nothing)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    rules = [i for i, x in enumerate(lines) if len(x) > 3 and set(x) == {"-"}]
    if len(rules) >= 2 and rules[-1] - rules[-2] > 1:
        return lines[rules[-1] - 1]
    return lines[0]


def _active(job: Any) -> bool:
    try:
        state = str(job.state).split()[0].upper()
    except Exception:  # noqa: BLE001 - sacct unreachable: treat the job as gone
        return False
    return state in ACTIVE_STATES


def run_jobs(spec: ExperimentSpec, cells: Sequence[Cell], heads: Sequence[str], out: Path,
             echo: Callable[[str], None], log: Any) -> None:
    """Run every pending cell as a submitit job and wait for all of them (the summary is the
    caller's). Cells with nothing left to do are reported as skipped without a job."""
    from .experiment import _run_cell
    from .runfolder import atomic_write_text

    submitit = require_submitit()
    opts = launcher_options(spec.launcher_opts)
    cluster = resolve_cluster(opts)
    out = Path(out)
    folder = out.resolve() / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    records = _records(folder)
    threads = job_threads(spec, opts, cluster)
    par = parallelism(spec, opts, cluster)
    records.update(cluster=cluster, threads=threads, parallelism=par)

    todo: list[tuple[Cell, str]] = []
    for cell, head in zip(cells, heads, strict=True):
        if pending(spec, cell):
            todo.append((cell, head))
        else:  # nothing to run: the shared function only reports the skip (and checks)
            _run_cell(spec, cell, head, True, False, echo, log, threads or 1)

    # runs whose Slurm job (from an earlier invocation) is still queued or running: wait for it
    waiting: list[tuple[Any, Cell, str]] = []
    fresh: list[tuple[Cell, str]] = []
    for cell, head in todo:
        rec = records["jobs"].get(_key(cell, out))
        if cluster == "slurm" and rec and rec.get("cluster") == "slurm":
            job = submitit.SlurmJob(folder=folder / "%j", job_id=str(rec["job_id"]))
            if _active(job):
                echo(f"{head}: still queued or running as Slurm job {job.job_id}; waiting for "
                     "it")
                waiting.append((job, cell, head))
                continue
        fresh.append((cell, head))

    if not todo:  # nothing submitted: the records still say where the runs ran
        return
    executor = make_executor(spec, folder, cluster, f"diffnas-{out.resolve().name}")
    where = ("Slurm" if cluster == "slurm" else "submitit's local executor (no Slurm here)"
             if opts.get("cluster", "auto") == "auto" else "submitit's local executor")
    given = ", ".join(f"{k}={v}" for k, v in opts.items() if k != "cluster")
    cap = f"at most {par} at once" if par else "no cap on jobs at once"
    echo(f"launcher: {len(fresh)} job(s) through {where}" + (f" ({given})" if given else "")
         + f", {cap}; job files in {folder}")
    log.log(f"submitit: {len(fresh)} job(s) on {cluster}, {len(waiting)} waited for"
            + (f", options {given}" if given else ""))

    def remember(job: Any, cell: Cell) -> None:
        records["jobs"][_key(cell, out)] = {"cluster": cluster, "job_id": str(job.job_id)}

    def save() -> None:
        atomic_write_text(folder / RECORDS, json.dumps(records, indent=1) + "\n")

    def submit_one(cell: Cell, head: str) -> Any:
        job = executor.submit(RunJob(spec, cell, head, threads))
        remember(job, cell)
        return job

    queue = list(fresh)
    try:
        if cluster == "slurm" and queue:  # one job array (its %N is array_parallelism)
            try:
                with executor.batch():
                    jobs = [(executor.submit(RunJob(spec, cell, head, threads)),
                             cell, head) for cell, head in queue]
            except Exception as e:  # noqa: BLE001 - sbatch's refusal, in one line
                raise DiffnasError(f"Slurm refused the jobs: {_error_line(e)}") from None
            for job, cell, _ in jobs:
                remember(job, cell)
            waiting += jobs
            queue = []
            echo(f"submitted Slurm job array {jobs[0][0].job_id.split('_')[0]}")
        save()
        _wait(waiting, queue, par if cluster == "local" else None, submit_one, save, cluster,
              len(todo), echo, log)
    except KeyboardInterrupt:
        left = [job for job, _, _ in waiting if not job.done()]
        if cluster == "local":
            for job in left:
                job.cancel(check=False)
            echo("\ninterrupted: the local jobs were stopped; run the same command again to "
                 "resume them")
        elif left:
            ids = " ".join(sorted({j.job_id.split("_")[0] for j in left}))
            echo(f"\ninterrupted: {len(left)} Slurm job(s) keep running (scancel {ids} stops "
                 "them); run the same command again to wait for them, or --report-only once "
                 "they are done")
        raise


def _wait(waiting: list[tuple[Any, Cell, str]], queue: list[tuple[Cell, str]],
          cap: int | None, submit_one: Callable[[Cell, str], Any], save: Callable[[], None],
          cluster: str, total: int, echo: Callable[[str], None], log: Any) -> None:
    """Poll the jobs until all are done (submitting queued local ones as slots free up),
    echoing each finished job's lines and a progress line whenever the counts change."""
    finished, shown = 0, None
    while waiting or queue:
        while queue and (cap is None or len(waiting) < cap):
            cell, head = queue.pop(0)
            waiting.append((submit_one(cell, head), cell, head))
            save()
        for item in list(waiting):
            job, cell, head = item
            if job.done():
                waiting.remove(item)
                finished += 1
                _report(job, head, echo, log)
        if cluster == "slurm":
            running = sum(str(j.state).upper().startswith("RUNNING") for j, _, _ in waiting)
        else:
            running = len(waiting)
        counts = (finished, running, total - finished - running)
        if counts != shown:
            echo(f"jobs: {counts[0]}/{total} finished, {counts[1]} running, {counts[2]} queued")
            shown = counts
        if waiting or queue:
            time.sleep(POLL_S[cluster])


def _report(job: Any, head: str, echo: Callable[[str], None], log: Any) -> None:
    try:
        res = job.result()
    except Exception as e:  # noqa: BLE001 - a job that died (time limit, memory, node)
        msg = f"{head}: job {job.job_id} FAILED: {_error_line(e)} (output: {job.paths.stderr})"
        echo(msg)
        log.log(msg)
        return
    for line in res["echo"]:
        echo(line)
    for line in res["log"]:
        log.log(f"{line} [job {job.job_id} on {res['host']}, {res['threads']} thread(s)]")


def describe(spec: ExperimentSpec, out: str | Path) -> str:
    """The summary's line on how the runs were scheduled."""
    opts = launcher_options(spec.launcher_opts)
    rec = _records(Path(out) / "submitit")
    where = {"slurm": "Slurm", "local": "submitit's local executor"}.get(
        str(rec.get("cluster")), "submitit")
    given = ", ".join(f"{k}={v}" for k, v in opts.items() if k != "cluster")
    par = rec.get("parallelism")
    threads = rec.get("threads") or spec.threads
    return (f"Runs: one submitit job each ({where}"
            + (f", {given}" if given else "") + (f", at most {par} at once" if par else "")
            + ")" + (f", {threads} torch thread(s) each" if threads else "")
            + f", device {spec.device}.")
