"""The Semantic-DARTS ablation (Table VIII of Guo et al., IEEE IoT J. 2025): one search per
variant of the MIM objective, all on the same data and seed, and a table of their results.

``run_ablation(cfg, out)`` runs every variant of :data:`diffnas.objectives.mim.VARIANTS`
(``cls`` is plain DARTS) as ``cfg`` with ``objective="mim"`` and ``variant=<name>``, each in
``out/<variant>/`` (a normal search run folder), optionally retrains each genotype
(``out/<variant>/retrain/``, with :func:`diffnas.engine.train.train`), and writes
``out/ablation.json`` and ``out/ablation.md``. Finished variants are read back, interrupted
ones resumed, so the command can simply be run again after a crash.

Every variant draws the same random numbers per batch (the MIM objective draws its patch
noise even when it does not mask), so all variants with the same augmentation see identical
batches. The reconstruction-only variants (``rec-clean``, ``rec-masked``) search without
crop/flip/cutout, as the reference code does: each variant declares its config changes
(:func:`diffnas.objectives.mim.variant_config_changes`), and its ``config.json`` records them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import SearchConfig
from ..errors import DiffnasError, unknown
from ..objectives.mim import VARIANTS, variant_config_changes
from .runfolder import RunFolder, atomic_write_text
from .search import search

#: The loss terms each variant logs (Table VIII's rows), for the table.
VARIANT_TERMS: dict[str, str] = {
    "cls": "CE (plain DARTS)",
    "cls-masked": "CE on masked images",
    "rec-clean": "MSE, clean images",
    "rec-masked": "MSE on masked patches",
    "cls+rec-masked": "CE + λ·masked MSE (Semantic-DARTS)",
}


@dataclass
class AblationRow:
    """The outcome of one variant's search (and retraining)."""

    variant: str
    loss: str
    genotype: str
    skip_count: int
    param_free_count: int
    alpha_std: float             # Σ over all edges (normal and reduce) of the α-weight std
    alpha_std_normal: float      # the same over the normal cell only (Fig. 9)
    search_loss: float           # the variant's own training loss, mean over the last epoch
    search_acc: float | None     # train accuracy of the last epoch (None: no classifier loss)
    val_acc: float               # supernet classifier on the clean val split
    val_loss: float
    val_masked_acc: float | None  # ... on the masked val split (None: unmasked variant)
    augment: bool                # searched with the config's crop/flip/cutout
    run_dir: str
    retrain_acc: float | None = None       # test accuracy after the last retraining epoch
    retrain_best_acc: float | None = None  # the best over the retraining's evaluated epochs


def variant_config(cfg: SearchConfig, variant: str) -> SearchConfig:
    """``cfg`` with the MIM objective set to ``variant`` (its other MIM options kept) and the
    config changes the variant declares (no augmentation for the rec-* variants)."""
    if variant not in VARIANTS:
        raise unknown("ablation variant", variant, VARIANTS)
    if cfg.objective not in (None, "mim"):
        raise DiffnasError(f"the ablation varies the mim objective, but the config asks for "
                           f"objective {cfg.objective!r}; leave --objective out")
    return cfg.replace(objective="mim", objective_args={**cfg.objective_args, "variant": variant},
                       **variant_config_changes(variant))


def _row(variant: str, run: RunFolder) -> AblationRow:
    history = run.read_metrics()
    if not history:
        raise DiffnasError(f"{run.path} holds no metrics; delete it and run the ablation again")
    last = history[-1]
    return AblationRow(
        variant=variant, loss=VARIANT_TERMS[variant], genotype=last["genotype_str"],
        skip_count=int(last["skip_count"]), param_free_count=int(last["param_free_count"]),
        alpha_std=float(last["alpha_std"]),
        alpha_std_normal=float(last.get("alpha_std_normal", "nan")),
        search_loss=float(last["train_loss"]),
        search_acc=last.get("train_acc") if VARIANTS[variant].classify else None,
        val_acc=float(last["val_acc"]), val_loss=float(last["val_loss"]),
        val_masked_acc=last.get("val_masked_acc"), augment=VARIANTS[variant].augment,
        run_dir=str(run.path))


def _finished(run: RunFolder, cfg: SearchConfig) -> bool:
    """Whether ``run`` holds a finished search of ``cfg`` (another config is an error)."""
    if not (run.path / "result.json").exists():
        return False
    saved = SearchConfig.from_dict(json.loads((run.path / "config.json").read_text()))
    diff = saved.fingerprint_diff(cfg)
    if diff:
        raise DiffnasError(f"{run.path} holds a finished search with another config (differs "
                           f"in {', '.join(diff)}); use another --out folder")
    return True


def _retrain(row: AblationRow, cfg: SearchConfig, preset: str, overrides: dict[str, Any],
             progress: bool) -> tuple[float, float | None]:
    """Retrain ``row``'s genotype (or read the finished retraining back): test accuracy after
    the last epoch, and the best over the evaluated epochs (None in a result.json written
    before diffnas recorded it)."""
    from .train import resolve_train_config, train

    out = Path(row.run_dir) / "retrain"
    values = {"dataset": cfg.dataset, "data_dir": cfg.data_dir, "image_size": cfg.image_size,
              "seed": cfg.seed, "device": cfg.device, **overrides, "genotype": row.genotype,
              "genotype_source": row.run_dir}
    tcfg = resolve_train_config(preset, **values)
    done = out / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
    else:
        result = train(tcfg, out=out, resume=(out / "checkpoint.pt").exists(),
                       progress=progress).result
    best = result.get("best_test_acc")
    return float(result["test_acc"]), None if best is None else float(best)


def run_ablation(cfg: SearchConfig, out: str | Path, variants: Sequence[str] | None = None, *,
                 retrain: str | None = None, retrain_overrides: dict[str, Any] | None = None,
                 progress: bool = True,
                 echo: Callable[[str], None] = lambda _line: None) -> list[AblationRow]:
    """Search once per variant (default: all five, in Table VIII's order) with ``cfg``'s data
    and seed; retrain each genotype with train preset ``retrain`` when given. Writes
    ``ablation.json`` and ``ablation.md`` to ``out`` and returns the rows."""
    names = list(variants or VARIANTS)
    configs = {v: variant_config(cfg, v) for v in names}  # validates every name first
    for vcfg in configs.values():
        vcfg.validate()
    if retrain is not None:
        from .train import resolve_train_config  # fail before searching if it cannot work

        resolve_train_config(retrain, **(retrain_overrides or {}))
    root = Path(out)
    rows: list[AblationRow] = []
    for name, vcfg in configs.items():
        run = RunFolder(root / name)
        if _finished(run, vcfg):
            echo(f"{name}: finished earlier, read from {run.path}")
        else:
            resume = run.checkpoint.exists()
            echo(f"{name}: {'resuming' if resume else 'searching'} in {run.path}")
            search(vcfg, out=run.path, resume=resume, progress=progress)
        row = _row(name, run)
        if retrain is not None:
            echo(f"{name}: retraining {row.genotype}")
            row.retrain_acc, row.retrain_best_acc = _retrain(row, vcfg, retrain,
                                                             retrain_overrides or {}, progress)
        rows.append(row)
        write_ablation(rows, cfg, root)
    return rows


def _cell(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def ablation_markdown(rows: Sequence[AblationRow], cfg: SearchConfig) -> str:
    """The rows as a Markdown table, headed by the configuration they share."""
    mim = {k: v for k, v in cfg.objective_args.items() if k != "variant"}
    head = (f"Semantic-DARTS ablation: method {cfg.method}, space {cfg.space}, dataset "
            f"{cfg.dataset}" + (f" (subset {cfg.subset})" if cfg.subset else "")
            + f", {cfg.epochs} epochs, {cfg.layers} cells × {cfg.channels} channels, batch "
            f"{cfg.batch_size}, seed {cfg.seed}, mim options {mim or 'default'}.")
    retrained = any(r.retrain_acc is not None for r in rows)
    cols = ["Variant", "Loss", "Crop/flip", "Skips", "Param-free", "α-std normal", "α-std all",
            "Search loss", "Search acc (%)", "Val acc masked (%)", "Val acc clean (%)",
            "Val CE clean"]
    cols += ["Retrained acc, final (%)", "Retrained acc, best (%)"] if retrained else []
    cols += ["Genotype"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"`{r.variant}`", r.loss, "yes" if r.augment else "no", str(r.skip_count),
                 str(r.param_free_count), f"{r.alpha_std_normal:.4f}", f"{r.alpha_std:.4f}",
                 f"{r.search_loss:.4f}", _cell(r.search_acc, 2, 100),
                 _cell(r.val_masked_acc, 2, 100), _cell(r.val_acc, 2, 100),
                 f"{r.val_loss:.4f}"]
        cells += [_cell(r.retrain_acc, 2, 100),
                  _cell(r.retrain_best_acc, 2, 100)] if retrained else []
        cells += ["`" + r.genotype.replace("|", "\\|") + "`"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Search loss/acc: the variant's own objective on the (masked, for masked "
              "variants) training batches, mean over the last epoch. Val acc masked/clean: the "
              "supernet's classifier on the validation split with the variant's masking (the "
              "reference's number; – for unmasked variants) and on clean images; the rec-* "
              "variants never train it, so theirs is chance level. α-std: Σ over edges of the "
              "std of each edge's softmax(α), over the normal cell (Fig. 9) and over both "
              "cells. Crop/flip: the rec-* variants search without augmentation, as the "
              "reference code does."]
    return "\n".join(lines) + "\n"


def write_ablation(rows: Sequence[AblationRow], cfg: SearchConfig, out: Path) -> None:
    """``ablation.json`` (config + rows) and ``ablation.md`` in ``out``, written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.json", json.dumps(
        {"config": cfg.to_dict(), "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", ablation_markdown(rows, cfg))
