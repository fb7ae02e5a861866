"""One prepared check of every CUDA path, for a GPU machine without internet (issue 17).

Run from the repository root; diffnas runs from ``src/`` (no install needed)::

    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cuda --data-dir fmnist --out OUT
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc   # rehearsal

Steps, each in its own process with its own time limit, so one failure or hang does not eat
the budget (the defaults add up to about 12 minutes):

1. the test suite with ``DIFFNAS_REQUIRE_CUDA=1``: tests that need CUDA run (and fail on a
   machine without it) instead of skipping; the skips that remain are listed;
2. ``diffnas profile`` at the standard DARTS CIFAR search config (16 ch × 8 cells, batch 64,
   32×32×3) for DARTS 1st/2nd order, Semantic-DARTS with both decoders, STC-NAS (batch 64 and
   256) and CDARTS: s/iteration and peak memory beside the papers' GPU figures;
3. a search on the whole Fashion-MNIST training set (``semantic-cpu`` otherwise), then
   ``diffnas train`` of the result (AMP and channels-last on CUDA): seconds per epoch, images/s;
4. the torchrun DDP test with one process per GPU, where distributed search exists.

It writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``; ``--record`` also puts the
Markdown section into BENCHMARKS.md under a heading naming ``gpu_check``. ``--quick`` shrinks
every step (tiny configs, a 2,000-image search) so the script itself can be tested on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, fmt, machine, run_json, write_section  # noqa: E402

HEADING = "## GPU check (benchmarks/gpu_check.py)"
# Papers' GPU memory at the standard config (GB as printed; batch 64 unless stated).
PAPER_GB = {
    "darts-1st": (9.4, "STC-NAS Table 3"),
    "stc": (1.8, "STC-NAS Table 3"),
    "stc-b256": (5.5, "STC-NAS Table 3"),
    "semantic-ref": (9.6, "Semantic-DARTS Table VII"),
}
STANDARD = ["--channels", "16", "--layers", "8", "--batch-size", "64", "--input-size", "32",
            "--in-channels", "3", "--num-classes", "10"]
QUICK = ["--channels", "4", "--layers", "3", "--batch-size", "8", "--input-size", "16",
         "--in-channels", "3", "--num-classes", "10"]
# (name, extra profile arguments); the shape arguments come from STANDARD / QUICK
PROFILES: list[tuple[str, list[str]]] = [
    ("darts-1st", ["--method", "darts"]),
    ("darts-2nd", ["--method", "darts", "--order", "2"]),
    ("semantic-light", ["--method", "semantic", "--obj-opt", "decoder=light"]),
    ("semantic-ref", ["--method", "semantic", "--obj-opt", "decoder=ref"]),
    ("stc", ["--method", "stc"]),
    ("stc-b256", ["--method", "stc", "--batch-size", "256"]),
    ("cdarts", ["--method", "cdarts"]),
]


def python_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH"))
                                        if p)
    env["PYTHONUNBUFFERED"] = "1"
    if device.startswith("cuda"):
        env["DIFFNAS_REQUIRE_CUDA"] = "1"
    return env


def run(cmd: list[str], timeout: float, env: dict[str, str]) -> dict:
    """Run ``cmd`` with a time limit; exit code, wall time and the output's tail."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"cmd": shlex.join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "stdout_tail": out[-3000:], "stderr_tail": err[-3000:]}


def step_tests(args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-rs", "-p", "no:cacheprovider",
           *shlex.split(args.pytest_args)]
    rec = run(cmd, args.t_tests, env)
    text = rec["stdout_tail"]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)",
                                               text)}
    rec.update(counts=counts, skips=re.findall(r"^SKIPPED \[\d+\] (.+)$", text, re.M))
    return rec


def step_profiles(args: argparse.Namespace, env: dict[str, str]) -> dict:
    shape = QUICK if args.quick else STANDARD
    out = {}
    for name, extra in PROFILES:
        cmd = [sys.executable, "-m", "diffnas", "profile", *shape, *extra, "--device",
               args.device, "--iters", "3" if args.quick else "5", "--warmup", "1" if args.quick
               else "2", "--json"]
        rec = run_json(cmd, timeout=args.t_profile, key="median_s")
        rec.pop("times_s", None)
        out[name] = rec
    return out


def epoch_rows(run_dir: Path, keys: tuple[str, ...]) -> list[dict]:
    """``keys`` of every epoch record in the run folder's metrics.jsonl (none if absent)."""
    f = run_dir / "metrics.jsonl"
    lines = f.read_text().splitlines() if f.exists() else []
    return [{k: m.get(k) for k in keys} for m in map(json.loads, filter(str.strip, lines))]


def step_search_train(args: argparse.Namespace, env: dict[str, str]) -> dict:
    work = Path(args.out) / "runs"
    search_dir, train_dir = work / "search", work / "train"
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    # subset 60000 = the whole Fashion-MNIST training set (the preset's subset is 2000)
    size = ["--subset", "2000", "--epochs", "1"] if args.quick else ["--subset", "60000"]
    search = run([sys.executable, "-m", "diffnas", "search", "--preset", "semantic-cpu", *size,
                  *data, "--device", args.device, "--out", str(search_dir), "--no-progress"],
                 args.t_search, env)
    search["epochs"] = epoch_rows(search_dir, ("epoch", "epoch_time_s", "val_acc",
                                               "peak_mem_gib"))
    train_size = ["--epochs", "1", "--subset", "2000"] if args.quick else []
    train = run([sys.executable, "-m", "diffnas", "train", str(search_dir), "--preset", "cpu",
                 *train_size, *data, "--device", args.device, "--out", str(train_dir),
                 "--no-progress"], args.t_train, env)
    train["epochs"] = epoch_rows(train_dir, ("epoch", "epoch_time_s", "images_per_s",
                                             "test_acc", "peak_mem_gib"))
    result = train_dir / "result.json"
    train["result"] = json.loads(result.read_text()) if result.exists() else None
    return {"search": search, "train": train}


def step_ddp(args: argparse.Namespace, env: dict[str, str]) -> dict:
    test = REPO / "tests" / "test_distributed.py"
    if importlib.util.find_spec("torch.distributed.run") is None or not test.exists():
        return {"skipped": "distributed search is not implemented yet (issue 13): "
                           "no tests/test_distributed.py"}
    return run([sys.executable, "-m", "pytest", "-q", "-rs", str(test)], args.t_ddp, env)


def markdown(rec: dict) -> str:
    m = rec["machine"]
    quick = " --quick" if rec["quick"] else ""
    lines = [HEADING, "",
             f"{m.get('gpu') or 'No GPU'}, torch {m.get('torch')}, CUDA {m.get('cuda') or '—'}, "
             f"{rec['date']}: `benchmarks/gpu_check.py --device {rec['device']}{quick}`"
             f" on {m['cpu']} ({m['nproc']} cores); wall {rec['wall_s']:.0f} s.", ""]
    t = rec["steps"].get("tests", {})
    lines += [f"**1. Tests** (DIFFNAS_REQUIRE_CUDA={'1' if rec['device'] != 'cpu' else '0'}): "
              f"{t.get('counts', {})}, rc {t.get('rc')}, {t.get('wall_s')} s."
              + (f" Skips: {'; '.join(t['skips'])}." if t.get("skips") else ""), ""]
    lines += ["**2. One search iteration** (" + ("quick shapes" if rec["quick"] else
              "16 ch × 8 cells, batch 64, 32×32×3") + ")", "",
              "| run | s/iter | peak memory (GiB) | paper (GB) | objective params | error |",
              "|---|---|---|---|---|---|"]
    for name, p in rec["steps"].get("profiles", {}).items():
        mem = p.get("peak_cuda_gib", p.get("peak_rss_gib"))
        paper = PAPER_GB.get(name)
        lines.append(f"| {name} | {fmt(p.get('median_s'))} | {fmt(mem)} | "
                     f"{f'{paper[0]} ({paper[1]})' if paper else '—'} | "
                     f"{fmt(p.get('objective_params'))} | {p.get('error', '')} |")
    st = rec["steps"].get("search_train", {})
    for part in ("search", "train"):
        r = st.get(part, {})
        ep = r.get("epochs", [])
        lines += ["", f"**3. {part}**: rc {r.get('rc')}, {r.get('wall_s')} s; epochs: "
                  + (json.dumps(ep) if ep else "none recorded")]
    if st.get("train", {}).get("result"):
        res = st["train"]["result"]
        lines.append(f"test accuracy {res.get('test_acc')}")
    d = rec["steps"].get("ddp", {})
    lines += ["", f"**4. DDP**: {d['skipped'] if 'skipped' in d else 'rc ' + str(d.get('rc'))}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's .gz files")
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (rehearsal on a CPU)")
    ap.add_argument("--steps", default="tests,profiles,search_train,ddp")
    ap.add_argument("--pytest-args", default="tests")
    ap.add_argument("--record", action="store_true", help="write the section into BENCHMARKS.md")
    for name, t in (("tests", 240), ("profile", 60), ("search", 180), ("train", 120),
                    ("ddp", 60)):
        ap.add_argument(f"--t-{name}", type=float, default=t, help=f"time limit (s), default {t}")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = python_env(args.device)
    os.environ.update(env)  # run_json (the profiles) starts its processes from os.environ
    mach = machine()
    try:
        import torch
        mach["cuda"] = torch.version.cuda
        mach["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    rec: dict = {"date": dt.date.today().isoformat(), "device": args.device,
                 "quick": args.quick, "machine": mach, "steps": {}}
    steps = {"tests": step_tests, "profiles": step_profiles,
             "search_train": step_search_train, "ddp": step_ddp}
    t0 = time.perf_counter()
    for name in args.steps.split(","):
        if name not in steps:
            ap.error(f"unknown step {name!r}; valid: {', '.join(steps)}")
        print(f"[gpu_check] {name} ...", flush=True)
        rec["steps"][name] = steps[name](args, env)
        rec["wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(rec, indent=1))  # after every step
    md = markdown(rec)
    (out / "gpu_check.md").write_text(md)
    if args.record:
        write_section(REPO / "BENCHMARKS.md", HEADING, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
