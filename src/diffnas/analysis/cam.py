"""Grad-CAM and LayerCAM heatmaps of a trained network (``diffnas cam``).

Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): channel weights are the spatial means of
∂y_c/∂A, the map is ReLU(Σ_k w_k A_k). LayerCAM (Jiang et al., IEEE TIP 2021, Eq. 5-6): every
position keeps its own positive gradient, the map is ReLU(Σ_k ReLU(∂y_c/∂A_k) ⊙ A_k), so it
stays local (the maps Semantic-DARTS shows in its Figs. 1, 3, 5, 6). A is the output of one
named module (default: the network's last cell), y_c the logit of the predicted class or a
given one. Maps are upsampled bilinearly to the image and scaled to [0, 1] per image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffnasError
from . import figure, save

METHODS = ("gradcam", "layercam")
_CELL_NAME = re.compile(r"^(cells|blocks)\.\d+$")


def cell_names(net: nn.Module) -> list[str]:
    """Names of the network's cells (``cells.<i>``; NAS-Bench-201's ``blocks.<i>``)."""
    return [n for n, _ in net.named_modules() if _CELL_NAME.match(n)]


def find_layer(net: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The module called ``name`` (default: the last cell)."""
    modules = dict(net.named_modules())
    cells = cell_names(net)
    if name is None:
        if not cells:
            raise DiffnasError("the network has no cells (cells.<i> / blocks.<i>); give --layer")
        name = cells[-1]
    if name not in modules or name == "":
        shown = ", ".join(cells[-6:]) if cells else ", ".join(list(modules)[1:7])
        raise DiffnasError(f"no layer {name!r} in the network; e.g. {shown} "
                           "(any name of net.named_modules())")
    return name, modules[name]


def cam_maps(net: nn.Module, x: torch.Tensor, layer: str | None = None,
             target: int | Sequence[int] | None = None) -> dict[str, Any]:
    """Grad-CAM and LayerCAM of ``net`` (eval mode) on normalised images ``x`` [B, C, H, W] at
    ``layer`` for class ``target`` (one for all, one per image, or None: the predicted class).
    Returns ``{"layer", "logits", "target", "gradcam", "layercam"}`` (maps [B, H, W] in
    [0, 1])."""
    name, module = find_layer(net, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise DiffnasError(f"layer {name!r} does not output one tensor; pick another --layer")
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(hook)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            logits = net(x)
            if isinstance(logits, tuple):
                logits = logits[0]
            if "a" not in store:
                raise DiffnasError(f"layer {name!r} is not used in the network's forward pass")
            if store["a"].dim() != 4:
                raise DiffnasError(f"layer {name!r} outputs shape {tuple(store['a'].shape)}, "
                                   "not a feature map [B, C, H, W]; pick a cell")
            if target is None:
                cls = logits.argmax(1)
            else:
                cls = torch.as_tensor(target, dtype=torch.long).expand(x.shape[0]).clone()
                if int(cls.max()) >= logits.shape[1] or int(cls.min()) < 0:
                    raise DiffnasError(f"--class {int(cls.max())} is out of range; the network "
                                       f"has {logits.shape[1]} classes (0..{logits.shape[1] - 1})")
            logits.gather(1, cls[:, None]).sum().backward()
    finally:
        handle.remove()
        net.train(was_training)
    a, g = store["a"].detach(), store["a"].grad
    if g is None:
        g = torch.zeros_like(a)
    maps = {"gradcam": F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)),
            "layercam": F.relu((F.relu(g) * a).sum(1))}
    out: dict[str, Any] = {"layer": name, "logits": logits.detach(), "target": cls}
    for k, m in maps.items():
        up = F.interpolate(m[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
        up = up[:, 0]
        peak = up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        out[k] = up / peak
    return out


def read_image_files(paths: Sequence[str], channels: int, size: int) -> torch.Tensor:
    """uint8 [N, C, size, size] of image files (converted to L or RGB, resized)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                arr = np.asarray(img.convert(mode).resize((size, size),
                                                          Image.Resampling.BILINEAR))
        except (OSError, UnidentifiedImageError) as e:
            raise DiffnasError(f"--images {p}: cannot read it as an image ({e})") from None
        out[i] = torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1)
    return out


def _train_data(run: Path) -> tuple[Any, Any]:
    """The train config of a train run and its training data's normalisation ``(mean, std)``
    and class names (None when not known)."""
    import json

    from ..engine.train import TrainConfig

    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    if cfg.dataset.startswith("imagenet:"):
        from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
        return cfg, (IMAGENET_MEAN, IMAGENET_STD, None)
    from ..data import load_dataset

    tr = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, image_size=cfg.image_size)
    return cfg, (tr.mean, tr.std, tr.classes)


def cam_run(run: str | Path, out: str | Path | None = None, images: Sequence[str] = (),
            dataset: str | None = None, n: int = 8, layer: str | None = None,
            target: int | None = None, size: tuple[int, int] | None = None,
            data_dir: str | None = None, seed: int = 0) -> Path:
    """``diffnas cam``: a grid (a row per image: original, Grad-CAM, LayerCAM, with the
    prediction) of the trained network in ``run`` on image files or ``n`` test images of
    ``dataset``; ``out`` (default ``RUN/figures/cam.png``), with ``cam.json`` beside it."""
    from ..data import BatchAugment, load_dataset
    from ..engine.train import load_trained

    run = Path(run)
    net, args = load_trained(run)
    cfg, (mean, std, classes) = _train_data(run)
    labels: list[int | None]
    if images:
        raw = read_image_files(images, int(args["in_channels"]), int(args["input_size"]))
        labels, names = [None] * len(images), [Path(p).name for p in images]
    elif dataset:
        te = load_dataset(dataset, "test", data_dir=data_dir or cfg.data_dir,
                          image_size=int(args["input_size"]))
        if te.in_channels != int(args["in_channels"]):
            raise DiffnasError(f"--dataset {dataset} has {te.in_channels}-channel images; the "
                               f"network takes {args['in_channels']}")
        pick = torch.randperm(len(te), generator=torch.Generator().manual_seed(seed))[:n]
        raw, labels = te.images[pick], [int(v) for v in te.labels[pick]]
        names = [f"{dataset} test #{int(i)}" for i in pick]
        classes = classes or te.classes
    else:
        raise DiffnasError("diffnas cam needs --images PATH... or --dataset D (with --n K)")
    x = BatchAugment(mean, std, crop_padding=0, flip=False)(raw, train=False)
    res = cam_maps(net, x, layer, target)
    probs = res["logits"].softmax(1)
    rows = raw.shape[0]
    fig, axes = figure(size or (3 * 220, 200 * rows + 40), nrows=rows, ncols=3, squeeze=False)
    img = raw.permute(0, 2, 3, 1).float().div(255).numpy()
    cmap = "gray" if img.shape[-1] == 1 else None
    label = (lambda c: classes[c] if classes and c < len(classes) else str(c))  # noqa: E731
    records = []
    for i in range(rows):
        pred = int(probs[i].argmax())
        t = int(res["target"][i])
        shown = img[i, ..., 0] if cmap else img[i]
        axes[i, 0].imshow(shown, cmap=cmap)
        truth = f" (true {label(labels[i])})" if labels[i] is not None else ""
        axes[i, 0].set_title(f"{label(pred)} {float(probs[i, pred]):.2f}{truth}", fontsize=8)
        for j, k in enumerate(METHODS, start=1):
            axes[i, j].imshow(shown, cmap=cmap)
            axes[i, j].imshow(res[k][i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j].set_title(f"{'Grad-CAM' if k == 'gradcam' else 'LayerCAM'}: "
                                 f"{label(t)}", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
        records.append({"image": names[i], "label": labels[i], "predicted": pred,
                        "probability": round(float(probs[i, pred]), 6), "target": t,
                        **{k: [[round(float(v), 5) for v in r] for r in res[k][i]]
                           for k in METHODS}})
    fig.suptitle(f"{run.name}: layer {res['layer']}", fontsize=9)
    fig.tight_layout()
    path = Path(out) if out else run / "figures" / "cam.png"
    return save(fig, path.with_suffix(".png"), {"run": str(run), "layer": res["layer"],
                                                "images": records})
