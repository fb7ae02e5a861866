"""Loss landscapes (``diffnas landscape``).

2-D: the loss at θ + x·δ + y·η on a grid, δ and η random Gaussian directions, filter-normalised
(Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, §4: every filter
d_{i,j} of a direction is rescaled to the norm of the weights' filter θ_{i,j}), drawn as a
contour plot and a 3-D surface, on a fixed subset of training batches, network in eval mode
(as their ``evaluation.py``). For a search run the supernet's weights move and α stays at its
current value. 1-D (search runs): the loss at α + t·v along the unit dominant eigenvector v of
∇²_α L (all weights fixed), else along a random unit direction; the figure says which.

Deviations, one line each:

* Li et al. (code option ``--xignore biasbn``) zero biases and BN parameters in the direction
  or normalise them like filters; we zero every 1-D parameter (the setting of their figures).
* RobustDARTS' ``analyze.py`` builds the full ∇²_α L and takes its eigen-decomposition; for
  the 1-D direction we run power iteration on Hessian-vector products over the same fixed
  batches (one backward pass per iteration instead of one per α entry, 224 in DARTS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..engine.hessian import dominant_eigenpair
from ..errors import DiffnasError
from . import figure, save

LossFn = Callable[[], float]


def filter_normalised_direction(params: Sequence[torch.Tensor], gen: torch.Generator
                                ) -> list[torch.Tensor]:
    """A random direction per parameter, each filter (slice along dim 0) scaled to the norm of
    the parameter's filter; 1-D parameters (biases, BN) get zeros."""
    out = []
    for p in params:
        d = torch.randn(p.shape, generator=gen).to(p)
        if p.dim() <= 1:
            d.zero_()
        else:
            pf, df = p.detach().flatten(1), d.flatten(1)
            d = (df * (pf.norm(dim=1, keepdim=True) / df.norm(dim=1, keepdim=True)
                       .clamp_min(1e-12))).view_as(p)
        out.append(d)
    return out


@torch.no_grad()
def surface(params: Sequence[torch.Tensor], dirs: tuple[list[torch.Tensor], list[torch.Tensor]],
            coords: Sequence[float], loss_fn: LossFn, progress: bool = True) -> list[list[float]]:
    """``loss[i][j]`` at θ + coords[j]·δ + coords[i]·η (rows: y, columns: x); θ restored."""
    theta = [p.detach().clone() for p in params]
    grid = [[0.0] * len(coords) for _ in coords]
    bar = tqdm(total=len(coords) ** 2, disable=not progress, desc="landscape", unit="eval")
    try:
        for i, b in enumerate(coords):
            for j, a in enumerate(coords):
                for p, t, d, e in zip(params, theta, dirs[0], dirs[1], strict=True):
                    p.copy_(t + a * d + b * e)
                grid[i][j] = loss_fn()
                bar.update()
    finally:
        for p, t in zip(params, theta, strict=True):
            p.copy_(t)
        bar.close()
    return grid


def dominant_eigenvector(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                         iters: int = 20, tol: float = 1e-3, seed: int = 0
                         ) -> tuple[list[torch.Tensor], float]:
    """The unit eigenvector (split like ``params``) of the Hessian of ``loss_fn()`` w.r.t.
    ``params`` with the largest-magnitude eigenvalue, and that eigenvalue
    (:func:`diffnas.engine.hessian.dominant_eigenpair`)."""
    with torch.enable_grad():
        return dominant_eigenpair(loss_fn(), params, iters=iters, tol=tol, seed=seed)


def _fixed_batches(images: torch.Tensor, labels: torch.Tensor, batches: int, batch_size: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    pick = pick[:batches * batch_size]
    return [(images[pick[i:i + batch_size]], labels[pick[i:i + batch_size]])
            for i in range(0, len(pick), batch_size)]


def _load(run: Path) -> dict[str, Any]:
    """The network, its loss on a batch and the data of a train or search run folder."""
    from ..data import load_dataset

    if (run / "network.json").is_file():
        from ..engine.train import TrainConfig, load_trained

        net, _ = load_trained(run)
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        if cfg.dataset.startswith("imagenet:"):
            raise DiffnasError("diffnas landscape reads in-memory datasets; an imagenet: "
                               "run is not supported")
        data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir,
                            image_size=cfg.image_size)

        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = net(x)
            return torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out,
                                                     y)

        return {"net": net, "params": [p for p in net.parameters() if p.requires_grad],
                "loss": loss, "data": data, "alphas": None, "kind": "trained network"}
    if not (run / "checkpoint.pt").is_file() or not (run / "config.json").is_file():
        raise DiffnasError(f"{run} is neither a train run folder (network.json) nor a search "
                           "run folder with a checkpoint (config.json, checkpoint.pt)")
    from ..config import SearchConfig
    from ..engine.runfolder import RunFolder
    from ..engine.search import build_search

    cfg = SearchConfig.from_dict(json.loads((run / "config.json").read_text()))
    data = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size,
                        class_fraction=cfg.class_fraction, seed=cfg.seed)
    if cfg.subset is not None and cfg.subset < len(data.labels):
        data = data.subset(cfg.subset, cfg.seed)
    state = RunFolder(run).load_checkpoint(cfg)
    if len(state.get("stages", [{}])) > 1:
        raise DiffnasError(f"{run} ended in a later search stage; diffnas landscape reads "
                           "single-stage searches")
    net, objective, method = build_search(cfg, data.in_channels, data.image_size,
                                          data.num_classes, 1, torch.device("cpu"),
                                          (data.mean, data.std))
    net.load_state_dict(state["model"])
    objective.load_state_dict(state["objective"])
    method.load_state_dict(state["method"])
    objective.eval()

    def search_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = objective.prepare(x, y, torch.Generator().manual_seed(0))
        return objective(net, batch).loss

    return {"net": net, "params": net.weight_parameters(), "loss": search_loss, "data": data,
            "alphas": list(net.alphas.values()), "kind": "supernet (current α)", "cfg": cfg,
            "hessian_logged": any("hessian_eig" in json.loads(line) for line in
                                  (run / "metrics.jsonl").read_text().splitlines() if line)}


def landscape(run: str | Path, out: str | Path | None = None, grid: int = 21,
              span: float = 1.0, batches: int = 2, batch_size: int = 64, seed: int = 0,
              alpha_direction: str = "auto", alpha_span: float = 1.0,
              size: tuple[int, int] = (1400, 600), progress: bool = True,
              vmax: float = 10.0) -> dict[str, Any]:
    """``diffnas landscape``: ``landscape.png`` (contour + surface) and, for a search run,
    ``landscape_alpha.png`` into ``out`` (default ``RUN/figures``), each with its JSON."""
    from ..data import BatchAugment

    if grid < 2:
        raise DiffnasError(f"--grid needs at least 2 points per axis, got {grid}")
    if alpha_direction not in ("auto", "hessian", "random"):
        raise DiffnasError(f"--alpha-direction takes auto, hessian or random, not "
                           f"{alpha_direction!r}")
    run = Path(run)
    m = _load(run)
    net: nn.Module = m["net"]
    net.eval()
    data = m["data"]
    aug = BatchAugment(data.mean, data.std, crop_padding=0, flip=False)
    fixed = [(aug(x, train=False), y)
             for x, y in _fixed_batches(data.images, data.labels, batches, batch_size, seed)]

    def loss_t() -> torch.Tensor:
        return sum(m["loss"](x, y) * len(y) for x, y in fixed) / sum(len(y) for _, y in fixed)

    def loss_f() -> float:
        with torch.no_grad():
            return float(loss_t())

    gen = torch.Generator().manual_seed(seed)
    params = m["params"]
    dirs = (filter_normalised_direction(params, gen), filter_normalised_direction(params, gen))
    coords = torch.linspace(-span, span, grid).tolist()
    values = surface(params, dirs, coords, loss_f, progress)
    out = Path(out) if out else run / "figures"
    plt_fig, ax = figure(size, ncols=2)
    ax[1].remove()
    ax3 = plt_fig.add_subplot(1, 2, 2, projection="3d")
    xs, ys = torch.meshgrid(torch.tensor(coords), torch.tensor(coords), indexing="xy")
    # drawn clipped at vmax (Li et al.'s plot_2D_contour: vmax 10); the JSON keeps every value
    shown = torch.tensor(values).clamp(max=vmax)
    top = float(shown.max())
    levels = torch.linspace(float(shown.min()), top, 20).tolist() if top > shown.min() else 20
    cs = ax[0].contour(xs.numpy(), ys.numpy(), shown.numpy(), levels=levels, cmap="viridis")
    ax[0].clabel(cs, fontsize=6)
    ax[0].plot([0], [0], "r+")
    ax[0].set_xlabel("δ")
    ax[0].set_ylabel("η")
    ax3.plot_surface(xs.numpy(), ys.numpy(), shown.numpy(), cmap="viridis")
    ax3.set_xlabel("δ")
    ax3.set_ylabel("η")
    ax3.set_zlabel(f"loss (clipped at {vmax:g})")
    n_img = sum(len(y) for _, y in fixed)
    plt_fig.suptitle(f"{run.name}: {m['kind']}, loss on {n_img} fixed training images "
                     "along two filter-normalised directions", fontsize=9)
    data2d = {"kind": m["kind"], "coords": coords, "loss": values, "images": n_img,
              "batches": len(fixed), "batch_size": batch_size, "seed": seed, "vmax": vmax,
              "origin_loss": values[grid // 2][grid // 2] if grid % 2 else None}
    result = {"landscape": save(plt_fig, out / "landscape.png", data2d), **data2d}
    if m["alphas"] is None:
        return result
    alphas = m["alphas"]
    use_hessian = alpha_direction == "hessian" or (alpha_direction == "auto"
                                                   and m["hessian_logged"])
    if use_hessian:
        v, eig = dominant_eigenvector(loss_t, alphas)
        how = f"dominant eigenvector of ∇²_α L (eigenvalue {eig:.4g})"
    else:
        v = [torch.randn(a.shape, generator=gen) for a in alphas]
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v, eig = [x / norm for x in v], None
        how = "random unit direction (no Hessian eigenvector: pass --alpha-direction hessian)"
    ts = torch.linspace(-alpha_span, alpha_span, grid).tolist()
    curve = _line(alphas, v, ts, loss_f)
    fig, ax1 = figure((size[0] // 2, size[1]))
    ax1.plot(ts, curve, marker="o", ms=3)
    ax1.axvline(0, color="gray", lw=0.5)
    ax1.set_xlabel("step t along v (α + t·v)")
    ax1.set_ylabel("loss")
    ax1.set_title(f"{run.name}: loss along α\n{how}", fontsize=8)
    fig.tight_layout()
    data1d = {"direction": "hessian" if use_hessian else "random", "eigenvalue": eig,
              "describe": how, "t": ts, "loss": curve, "images": n_img}
    result["alpha"] = {"path": save(fig, out / "landscape_alpha.png", data1d), **data1d}
    return result


@torch.no_grad()
def _line(params: Sequence[torch.Tensor], v: Sequence[torch.Tensor], ts: Sequence[float],
          loss_fn: LossFn) -> list[float]:
    """``loss_fn()`` at params + t·v for every t; params restored."""
    theta = [p.detach().clone() for p in params]
    out = []
    try:
        for t in ts:
            for p, p0, d in zip(params, theta, v, strict=True):
                p.copy_(p0 + t * d)
            out.append(loss_fn())
    finally:
        for p, p0 in zip(params, theta, strict=True):
            p.copy_(p0)
    return out
