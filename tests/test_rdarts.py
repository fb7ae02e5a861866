"""R-DARTS(DP) / R-DARTS(L2) (Zela et al., ICLR 2020, §5.2) as the README documents them: grids
of ``diffnas experiment`` on the RobustDARTS reference settings (``darts-es-cifar10``'s values
with the method ``darts``), each cell a DARTS search with one regularisation strength."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffnas.engine.experiment import ExperimentSpec, plan
from diffnas.methods.robustdarts import REFERENCE

README = Path(__file__).resolve().parents[1] / "README.md"
DP = (0.0, 0.2, 0.4, 0.6)
L2 = tuple(round(3e-4 * 3**k, 6) for k in range(7))  # 0.0003 ... 0.2187


def readme_grid(name: str) -> list[str]:
    """The ``--methods`` of the README's ``diffnas experiment --out runs/<name>`` command."""
    text = README.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if f"--out runs/{name} " in x)
    methods = re.search(r"--methods (.*?)(?: --|`|$)", line).group(1)
    return methods.split()


@pytest.mark.parametrize(("name", "values"), [("rdarts-dp", DP), ("rdarts-l2", L2)])
def test_the_readme_grids_resolve_to_the_papers_values(tmp_path, name, values):
    methods = readme_grid(name)
    cells = plan(ExperimentSpec(methods=methods, seeds=[1], presets=["darts-es-cifar10"],
                                device="cpu"), tmp_path)
    assert all(c.cfg.method == "darts" and c.cfg.space == "darts" for c in cells)
    for key in ("epochs", "batch_size", "channels", "layers", "order", "a_lr"):
        assert {getattr(c.cfg, key) for c in cells} == {REFERENCE[key]}, key
    if name == "rdarts-dp":
        got = [float(c.cfg.method_args.get("drop_path_prob", 0.0))
               if "drop_path" in str(c.cfg.method_args.get("regularisers", "")) else 0.0
               for c in cells]
        assert {c.cfg.w_weight_decay for c in cells} == {3e-4}
    else:
        got = [round(c.cfg.w_weight_decay, 6) for c in cells]
        assert not any(c.cfg.method_args.get("regularisers") for c in cells)
    assert sorted(got) == sorted(values)
