#!/usr/bin/env python3
"""CDARTS vs first-order DARTS: search-iteration time, E's separate learning amortised.

A CDARTS search iteration is a joint step (α and w_E on a val batch, Eq. 8) plus a w_S step
(Eq. 6); every cycle also spends S_E separate-learning steps on E alone (Eq. 7), amortised over
its S_U iterations: ``iteration = joint + (S_E / S_U) · separate`` (S_E = S_U in every paper
preset). First-order DARTS at the same search-network config is the baseline (issue 6 target:
≤ 1.4×).

Timing: fresh ``diffnas profile --json`` processes, one at a time, DARTS and CDARTS
alternating (A B, B A, ...), one thread each. CDARTS runs with S_E = 2n and S_U = n steps
and ``--warmup n`` (E's build at step 0 included), then ``--iters 2n`` timed steps: n
separate, then n joint, all with the E built from the initial α (E's cost depends on its
genotype); the phase medians give the amortised iteration ``joint + separate`` (the papers'
S_E = S_U). The rebuild itself (E's weights through the pool) is timed apart by a child process
(``--child NAME``), which also counts the FLOPs of a DARTS step and of CDARTS' separate and
joint steps on that same E (exact and load-free).

Writes ``benchmarks/results/cdarts_vs_darts.json`` and the section ``## CDARTS vs DARTS`` of
``BENCHMARKS.md`` (only that section)::

    .venv/bin/python benchmarks/cdarts_vs_darts.py                     # all configs, 3 repeats
    .venv/bin/python benchmarks/cdarts_vs_darts.py --configs cpu --repeats 1
    .venv/bin/python benchmarks/cdarts_vs_darts.py --configs "" --note "..."  # notes only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

from common import REPO, fmt, load_range, machine, med, ratio, run_json, write_section

SECTION = "## CDARTS vs DARTS"
PY = sys.executable

#: name → search space, (search net channels, cells), (E channels, cells), batch, image size and
#: channels
CONFIGS: dict[str, dict] = {
    # the paper's CIFAR widths and depths (S 8×16, E 20×16: E as wide as S, as the Cream code
    # and the §4.7 cost argument have it) at batch 8, 16² (1/32 of the paper's per-step
    # compute; FLOP ratios are those of batch 64 at 32², all layers scale alike)
    "paper": dict(space="darts", channels=16, layers=8, e_channels=16, e_layers=20, batch=8,
                  size=16, in_ch=3),
    # the former default: E at the retraining width 36
    "e36": dict(space="darts", channels=16, layers=8, e_channels=36, e_layers=20, batch=8,
                size=16, in_ch=3),
    # the cdarts-imagenet preset's networks (S 8×16, E 14×16, ImageNet stem) at batch 4, 224²
    # (S_E = 3 epochs per S_U = 1 in that preset: three separate-learning steps per iteration)
    "imagenet": dict(space="darts-imagenet", channels=16, layers=8, e_channels=16, e_layers=14,
                     batch=4, size=224, in_ch=3, se_ratio=3),
    # the cdarts-cpu preset: S 5×8, E 8×8, batch 64, Fashion-MNIST 28²×1
    "cpu": dict(space="darts", channels=8, layers=5, e_channels=8, e_layers=8, batch=64,
                size=28, in_ch=1),
}


def steps_per_epoch(batch: int) -> int:
    """What ``diffnas profile`` assumes (CIFAR-10's 50,000 images, half of them for α)."""
    return max(1, 25_000 // batch)


def cdarts_opts(c: dict, n: int) -> list[str]:
    """S_E = 2n, S_U = n steps: after n warm-up steps (E built at step 0) the profile times n
    separate and n joint steps, all with the same E (the next rebuild is at step 3n)."""
    spe = steps_per_epoch(c["batch"])
    return [f"e_channels={c['e_channels']}", f"e_layers={c['e_layers']}",
            f"s_e={2 * n / spe!r}", f"s_u={n / spe!r}"]


# --------------------------------------------------------------------------- child process
def child_flops(c: dict, n: int) -> dict:
    """FLOPs of a DARTS step and of CDARTS' joint and separate steps; E's rebuild time."""
    import torch

    from diffnas.config import resolve_config
    from diffnas.engine.profile import count_flops
    from diffnas.engine.search import build_search

    torch.set_num_threads(1)
    spe = steps_per_epoch(c["batch"])
    out: dict = {}
    for method in ("darts", "cdarts"):
        opts = dict(kv.split("=") for kv in cdarts_opts(c, 1)) if method == "cdarts" else {}
        cfg = resolve_config(None, method=method, space=c["space"], channels=c["channels"],
                             layers=c["layers"], batch_size=c["batch"], device="cpu",
                             method_args=opts)
        _, obj, m = build_search(cfg, c["in_ch"], c["size"], 10, spe, torch.device("cpu"))
        g = torch.Generator().manual_seed(0)

        def batch(m=m, obj=obj, g=g):  # noqa: ANN202
            x = torch.randn(c["batch"], c["in_ch"], c["size"], c["size"], generator=g)
            return obj.prepare(x, torch.randint(0, 10, (c["batch"],), generator=g), g)

        m.begin_epoch(0)
        if method == "darts":
            out["darts_flops"] = count_flops(lambda m=m: m.step(batch(), batch()))
            continue
        m.step(batch(), batch())  # step 0: builds E (from the initial α), separate learning
        assert m.cycle_phase() == "separate" and not m.cycle_start()
        out["separate_flops"] = count_flops(lambda m=m: m.step(batch(), batch()))
        assert m.cycle_phase() == "joint"
        out["joint_flops"] = count_flops(lambda m=m: m.step(batch(), batch()))
        out["e_genotype"] = str(m.eval_genotype)  # E's cost depends on its genotype
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            m._build_eval(m.eval_discretisation())  # a rebuild: new E from the pool, new opt
            times.append(time.perf_counter() - t0)
        out["rebuild_s"] = statistics.median(times)
        out["e_params"] = sum(p.numel() for p in m.eval_net.parameters())
    return out


# --------------------------------------------------------------------------- runner
def profile_cmd(method: str, c: dict, n: int) -> list[str]:
    cmd = [PY, "-m", "diffnas.cli", "profile", "--method", method, "--space", c["space"],
           "--channels", str(c["channels"]), "--layers", str(c["layers"]), "--batch-size",
           str(c["batch"]), "--input-size", str(c["size"]), "--in-channels", str(c["in_ch"]),
           "--iters", str(2 * n), "--warmup", str(n), "--device", "cpu", "--json"]
    if method == "cdarts":
        for kv in cdarts_opts(c, n):
            cmd += ["--opt", kv]
    return cmd


def measure(name: str, c: dict, n: int, repeats: int, timeout: float) -> dict:
    runs: dict[str, list] = {"darts": [], "cdarts": []}
    for r in range(repeats):
        for method in ("darts", "cdarts") if r % 2 == 0 else ("cdarts", "darts"):
            rec = run_json(profile_cmd(method, c, n), timeout, threads=1)
            if "times_s" in rec and method == "cdarts":
                rec["separate_s"] = statistics.median(rec["times_s"][:n])
                rec["joint_s"] = statistics.median(rec["times_s"][n:])
            print(f"[{name} {r + 1}/{repeats}] {method}: "
                  + (rec["error"] if "error" in rec else
                     f"{rec['median_s']:.2f} s median (load {rec['loadavg_before']})"),
                  file=sys.stderr, flush=True)
            runs[method].append(rec)
    flops = run_json([PY, __file__, "--child", name, "--n", str(n)], timeout, threads=1)
    return {"config": {**c, "n": n}, "runs": runs, "child": flops}


# --------------------------------------------------------------------------- report
def render(data: dict) -> str:
    m = data["machine"]
    lines = [SECTION, "",
             "Generated by `benchmarks/cdarts_vs_darts.py` (raw data: "
             "`benchmarks/results/cdarts_vs_darts.json`). CPU, one thread, synthetic batches; "
             "every timing from its own fresh `diffnas profile --json` process, DARTS and "
             "CDARTS alternating; medians over repeats; load average before the runs "
             f"{load_range(data['configs'])} (per run in the JSON); FLOPs are exact and load-free. "
             "A CDARTS iteration = joint step (α + w_E, Eq. 8) "
             "+ w_S step (Eq. 6) + S_E/S_U × one separate-learning step of E (Eq. 7; the "
             "presets' S_E/S_U: 1, ImageNet 3); "
             "E's rebuild (once per cycle) is listed apart.", "",
             f"- Machine: {m['cpu']}, {m['nproc']} CPUs; torch {m['torch']}; {data['updated']}",
             ""]
    for name, res in data["configs"].items():
        c, d, k = res["config"], res["runs"]["darts"], res["runs"]["cdarts"]
        f = res.get("child", {})
        t_d, t_j, t_s = med(d, "median_s"), med(k, "joint_s"), med(k, "separate_s")
        r = c.get("se_ratio", 1)  # the preset's S_E / S_U
        t_it = None if t_j is None or t_s is None else t_j + r * t_s
        fd, fj, fs = f.get("darts_flops"), f.get("joint_flops"), f.get("separate_flops")
        f_it = None if fj is None or fs is None else fj + r * fs
        g = (lambda x: None if x is None else x / 1e9)  # noqa: E731
        lines += [
            f"### `{name}`: {c.get('space', 'darts')} space, S {c['layers']} cells × "
            f"{c['channels']} ch, E {c['e_layers']} × {c['e_channels']}, batch {c['batch']} × "
            f"{c['size']}²×{c['in_ch']} "
            f"({len(d)} repeats, {c['n']} timed steps per phase)", "",
            "| | s / step | GFLOP / step |", "|---|---|---|",
            f"| DARTS 1st order: iteration | {fmt(t_d)} | {fmt(g(fd), 2)} |",
            f"| CDARTS joint + w_S step | {fmt(t_j)} | {fmt(g(fj), 2)} |",
            f"| CDARTS separate-learning step (E alone) | {fmt(t_s)} | {fmt(g(fs), 2)} |",
            f"| **CDARTS iteration, S_E amortised (S_E/S_U = {r})** | **{fmt(t_it)}** | "
            f"**{fmt(g(f_it), 2)}** |",
            f"| **CDARTS / DARTS** (target ≤ 1.4×) | **{ratio(t_it, t_d)}** | "
            f"**{ratio(f_it, fd)}** |",
            f"| joint + w_S step alone / DARTS | {ratio(t_j, t_d)} | {ratio(fj, fd)} |",
            "",
            f"E: `{f.get('e_genotype', '?')}` (the discretised initial α, seed 2), "
            f"{fmt(f.get('e_params') and f['e_params'] / 1e6, 2)} M parameters; a rebuild "
            f"(build + weights from the pool + new optimiser) {fmt(f.get('rebuild_s'), 3)} s, "
            "once per cycle." + (f" Measured {res['measured']}." if "measured" in res else ""),
            ""]
    lines += data.get("notes", [])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="paper,e36,imagenet,cpu",
                   help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=3, help="S_E = S_U = n steps; n timed per phase")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/cdarts_vs_darts.json"))
    p.add_argument("--markdown", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--note", action="append", default=[], help="a line under the tables")
    p.add_argument("--child", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child_flops(CONFIGS[a.child], a.n)))
        return 0
    res_path = Path(a.results)
    data = json.loads(res_path.read_text()) if res_path.exists() else {}
    data.setdefault("configs", {})
    names = [n for n in a.configs.split(",") if n]  # --configs "": re-render (e.g. new notes)
    for name in names:
        data["configs"][name] = measure(name, CONFIGS[name], a.n, a.repeats, a.timeout)
    if names or "machine" not in data:
        data["machine"] = machine()
        data["updated"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    data["notes"] = a.note or data.get("notes", [])
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(data, indent=1) + "\n")
    write_section(Path(a.markdown), SECTION, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
