"""Drawings of derived cells with Graphviz, as the DARTS papers draw them: inputs c_{k-2} and
c_{k-1}, the intermediate nodes, the concatenated output c_{k}, each edge labelled with its
op; NAS-Bench-201 cells as their 4-node DAG (``none`` edges left out). Needs the ``graphviz``
Python package and Graphviz's ``dot`` program.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import DiffnasError
from . import PLOT_EXTRA

FORMATS = ("png", "svg", "pdf")
DOT_MISSING = ("drawing cells needs Graphviz's `dot` program, which is not on PATH: install "
               "Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
               "graphviz; conda: conda install graphviz)")


def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError:
        raise DiffnasError(f"drawing cells needs the graphviz package, which is not installed: "
                           f"{PLOT_EXTRA} (and Graphviz's dot program)") from None
    if shutil.which("dot") is None:
        raise DiffnasError(DOT_MISSING)
    return graphviz


def _digraph(graphviz: Any, name: str) -> Any:
    g = graphviz.Digraph(name, format="png",
                         edge_attr={"fontsize": "16", "fontname": "times"},
                         node_attr={"style": "filled", "shape": "rect", "align": "center",
                                    "fontsize": "16", "height": "0.5", "width": "0.5",
                                    "penwidth": "2", "fontname": "times"},
                         engine="dot")
    g.body.extend(["rankdir=LR"])
    return g


def darts_cell_graph(graphviz: Any, pairs: Any, concat: Any, name: str) -> Any:
    """One DARTS cell: ``pairs`` are its ``(op, input)`` pairs, two per intermediate node."""
    g = _digraph(graphviz, name)
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    label = {0: "c_{k-2}", 1: "c_{k-1}"}
    steps = len(pairs) // 2
    for i in range(steps):
        g.node(str(i), fillcolor="lightblue")
        label[2 + i] = str(i)
    for k, (op, src) in enumerate(pairs):
        g.edge(label[src], label[2 + k // 2], label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        g.edge(label[j], "c_{k}", fillcolor="gray")
    return g


def nb201_cell_graph(graphviz: Any, genotype: Any, name: str) -> Any:
    """The NAS-Bench-201 cell: nodes 0 (input) .. 3 (output), an edge per op that is not
    ``none``."""
    from ..spaces.nb201 import EDGES, N_NODES

    g = _digraph(graphviz, name)
    for n in range(N_NODES):
        colour = ("darkseagreen2" if n == 0 else "palegoldenrod" if n == N_NODES - 1
                  else "lightblue")
        g.node(str(n), fillcolor=colour)
    for (i, j), op in zip(EDGES, genotype.ops, strict=True):
        if op != "none":
            g.edge(str(i), str(j), label=op, fillcolor="gray")
    return g


def mbconv_chain_graph(graphviz: Any, genotype: Any, name: str) -> Any:
    """An mbconv chain: stem → MBConv1 → one node per searched layer (its op; stages as
    clusters labelled with their width) → head; a ``skip_connect`` layer is a dashed edge."""
    g = _digraph(graphviz, name)
    g.node("stem", fillcolor="darkseagreen2")
    prev = "stem"
    g.node("mb1", label="MBConv1 3×3", fillcolor="lightblue")
    g.edge(prev, "mb1", fillcolor="gray")
    prev = "mb1"
    for s, (ops, width) in enumerate(zip(genotype.stages, genotype.widths, strict=True)):
        with g.subgraph(name=f"cluster_{s}") as c:
            c.attr(label=f"stage {s + 1} ({width})", style="rounded", color="gray")
            for i, op in enumerate(ops):
                node = f"{s}_{i}"
                skip = op == "skip_connect"
                c.node(node, label="skip" if skip else op,
                       fillcolor="white" if skip else "lightblue")
                g.edge(prev, node, fillcolor="gray", style="dashed" if skip else "solid")
                prev = node
    g.node("head", label="1×1 conv, pool, linear", fillcolor="palegoldenrod")
    g.edge(prev, "head", fillcolor="gray")
    return g


def draw(spec: str, out: str | Path | None = None) -> list[Path]:
    """Draw the cells of genotype ``spec`` (anything a genotype argument accepts). ``out`` is
    the file (its suffix, if one of png/svg/pdf, is dropped; ``<out>_normal``, ``<out>_reduce``
    for DARTS cells); each drawing is written as PNG, SVG and PDF with the Graphviz source
    (``.gv``) and the genotype (``.json``) beside it. Returns the PNG paths."""
    from ..spaces import parse_genotype

    genotype = parse_genotype(spec)
    graphviz = _graphviz()
    base = Path(out) if out else Path(f"cell-{Path(spec).name if Path(spec).exists() else spec}"
                                      [:60].replace("/", "_").replace(" ", ""))
    if base.suffix.lower().lstrip(".") in FORMATS:
        base = base.with_suffix("")
    if genotype.space == "nb201":
        graphs = {"": nb201_cell_graph(graphviz, genotype, "cell")}
    elif genotype.space == "mbconv":
        graphs = {"": mbconv_chain_graph(graphviz, genotype, "chain")}
    else:
        graphs = {f"_{kind}": darts_cell_graph(graphviz, getattr(genotype, kind),
                                               getattr(genotype, f"{kind}_concat"), kind)
                  for kind in ("normal", "reduce") if getattr(genotype, kind)}
    base.parent.mkdir(parents=True, exist_ok=True)
    pngs = []
    for suffix, g in graphs.items():
        stem = base.with_name(base.name + suffix)
        try:
            for fmt in FORMATS:
                g.render(outfile=str(stem.with_suffix(f".{fmt}")), format=fmt, cleanup=True)
        except graphviz.ExecutableNotFound:
            raise DiffnasError(DOT_MISSING) from None
        stem.with_suffix(".gv").write_text(g.source)
        stem.with_suffix(".json").write_text(json.dumps(
            {"genotype": genotype.to_dict(), "text": str(genotype)}, indent=1) + "\n")
        pngs.append(stem.with_suffix(".png"))
    return pngs
