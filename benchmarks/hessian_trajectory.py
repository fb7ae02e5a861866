"""λ_max trajectories of finished searches run with ``--hessian-every K`` (RobustDARTS'
indicator): one markdown table (epoch × run) and one plot of ``hessian_eig`` per epoch.

    OMP_NUM_THREADS=1 nice -n 10 diffnas search --preset nb201-compare --method darts \\
        --epochs 30 --subset 1000 --hessian-every 2 --out runs/eig-darts
    python benchmarks/hessian_trajectory.py runs/eig-darts runs/eig-semantic runs/eig-betadarts \\
        --png benchmarks/results/hessian_trajectory.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def trajectory(run: Path) -> dict[int, float]:
    """Epoch (1-based) -> ``hessian_eig`` of a run folder's metrics."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "hessian_eig" in rec:
            out[rec["epoch"] + 1] = float(rec["hessian_eig"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--png", type=Path, help="write the plot here (needs matplotlib)")
    args = p.parse_args()
    series = {r.name: trajectory(r) for r in args.runs}
    epochs = sorted({e for s in series.values() for e in s})
    print("| epoch | " + " | ".join(series) + " |")
    print("|---:|" + "---:|" * len(series))
    for e in epochs:
        cells = [f"{s[e]:.3f}" if e in s else "" for s in series.values()]
        print(f"| {e} | " + " | ".join(cells) + " |")
    if args.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, s in series.items():
            ax.plot(list(s), list(s.values()), marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("λ_max of ∇²_α L_val")
        ax.legend()
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
