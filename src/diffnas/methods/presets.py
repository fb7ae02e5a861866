"""Preset helper for the part-built baselines: each method registers its DARTS-space and
NAS-Bench-201 CIFAR-10 presets, and two CPU presets (the ``cpu`` / ``nb201-cpu`` data and
network with the method's optimiser settings), with the same four names."""

from __future__ import annotations

from typing import Any

from ..config import PRESETS, register_preset

#: the fields of a paper preset that the CPU presets keep (optimisers and method options)
OPTIMISER_FIELDS = ("w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "grad_clip", "a_lr",
                    "a_betas", "a_weight_decay", "method_args", "order")


def register_method_presets(method: str, *, darts: tuple[str, dict[str, Any]],
                            nb201: tuple[str, dict[str, Any]],
                            cpu: tuple[str, dict[str, Any]] | None = None,
                            nb201_cpu: tuple[str, dict[str, Any]] | None = None) -> None:
    """``<method>-cifar10``, ``<method>-nb201-cifar10``, ``<method>-cpu``, ``<method>-nb201-cpu``.

    ``darts`` / ``nb201``: (description with its source, preset values) of the paper settings;
    the CPU presets take the ``cpu`` / ``nb201-cpu`` preset with the paper's optimiser fields;
    ``cpu``: (a note for the description, values) changed in ``<method>-cpu`` on top of that;
    ``nb201_cpu`` the same for ``<method>-nb201-cpu``."""
    common = {"method": method, "dataset": "cifar10", "crop_padding": 4, "flip": True}
    register_preset(f"{method}-cifar10", darts[0], **{**common, "space": "darts", **darts[1]})
    register_preset(f"{method}-nb201-cifar10", nb201[0],
                    **{**common, "space": "nb201", "channels": 16, "layers": 5, **nb201[1]})
    for base, paper_name, (_, paper) in (("cpu", "cifar10", darts),
                                         ("nb201-cpu", "nb201-cifar10", nb201)):
        kept = {k: v for k, v in paper.items() if k in OPTIMISER_FIELDS}
        own = cpu if base == "cpu" else nb201_cpu
        note, extra = own if own is not None else ("", {})
        register_preset(f"{method}-{base}",
                        f"{method} on CPU: the {base} preset (data, network, epochs) with the "
                        f"optimiser settings and options of {method}-{paper_name}{note}",
                        **{**PRESETS[base].values, **kept, **extra, "method": method})
