"""What every benchmark script here shares: running one measurement in a fresh process,
describing the machine, formatting table cells and replacing a section of BENCHMARKS.md.

The scripts run as ``python benchmarks/<name>.py``, so this module is imported as ``common``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_json(cmd: list[str], timeout: float, threads: int | None = None,
             key: str | None = None) -> dict:
    """Run ``cmd`` in a fresh process (from the repository root) and return the last JSON
    object it printed on stdout (one with ``key``, when given), plus the load average before
    the start and the process's wall time. ``threads`` sets OMP/MKL threads of the child.
    Failures come back as ``{"error": ..., "cmd": ..., "stderr_tail": ...}``, never raise."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": shlex.join(cmd),
                "loadavg_before": load}
    except OSError as e:
        return {"error": f"could not start: {e}", "cmd": shlex.join(cmd)}
    wall = round(time.perf_counter() - t0, 1)
    rec = None
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and (key is None or key in obj):
                rec = obj
                break
    if p.returncode or rec is None:
        err = f"exit code {p.returncode}" if p.returncode else "no JSON result line"
        return {"error": err, "cmd": shlex.join(cmd), "stderr_tail": p.stderr.strip()[-2000:],
                "process_s": wall, "loadavg_before": load}
    rec.setdefault("cmd", shlex.join(cmd))
    rec.update(loadavg_before=load, process_s=wall)
    return rec


def machine() -> dict:
    """CPU model, cores available to this process, memory, OS and torch version."""
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem_gib = round(int(m.group(1)) / 1024 ** 2, 1) if m else None
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"cpu": cpu, "nproc": nproc, "mem_gib": mem_gib,
            "os": f"{platform.system()} {platform.release()}", "torch": torch_version}


def load_range(data: object) -> str:
    """``"min–max"`` of every ``loadavg_before`` found anywhere in ``data`` (the load average
    before each measured process), for a report's header."""
    loads: list[float] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("loadavg_before"), (int, float)):
                loads.append(x["loadavg_before"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    return f"{min(loads):.2f}–{max(loads):.2f}" if loads else "?"


def med(recs: list[dict], key: str) -> float | None:
    """Median of ``key`` over the records that have it (``None`` when none do)."""
    vals = [r[key] for r in recs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(x: float | int | str | None, nd: int = 2) -> str:
    if x is None:
        return "—"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def ratio(a: float | None, b: float | None) -> str:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
    return f"{a / b:.2f}×" if ok else "—"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with the line ``heading`` (up to the next ``## ``
    heading) by ``text``, or append ``text`` when there is none; the rest of the file is kept.
    Written through a temporary file, so a crash never leaves half a file."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    body = text if text.endswith("\n") else text + "\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + body
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith(("## ", "# "))),
                   len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + body + ("\n" + tail if tail else "")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)
