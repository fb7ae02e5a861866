"""Genotypes: JSON and text round trips, the published DARTS text, NAS-Bench-201 strings, and
errors that say where the input is wrong."""

from __future__ import annotations

import json

import pytest

from diffnas.engine.runfolder import RunFolder
from diffnas.errors import DiffnasError
from diffnas.spaces import DartsGenotype, NB201Genotype, genotype_from_dict, parse_genotype
from diffnas.spaces.darts import PRIMITIVES
from diffnas.spaces.nb201 import OPS

# DARTS_V2 exactly as in the DARTS repository's cnn/genotypes.py (second-order search, CIFAR-10)
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
V2_NORMAL = (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
             ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2))
V2_REDUCE = (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
             ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1))
# the NAS-Bench-201 CIFAR-10 optimum, and the all-skip cell DARTS collapses to in that space
NB201_BEST = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
              "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
NB201_SKIPS = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|" \
              "skip_connect~2|"


# ------------------------------------------------------------------------------------- DARTS
def test_parse_published_darts_v2():
    g = DartsGenotype.parse(DARTS_V2)
    assert g.normal == V2_NORMAL and g.reduce == V2_REDUCE
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert g.skip_count == 5 and g.param_free_count == 10  # 5 skips + 5 max pools
    assert str(g) == DARTS_V2  # prints in the repository's own format


def test_parse_range_concat_and_multiline_text():
    # what DARTS' search logs print (concat = range(2, 6)), laid out over several lines
    text = DARTS_V2.replace("[2, 3, 4, 5]", "range(2, 6)").replace("], ", "],\n    ")
    g = DartsGenotype.parse(text)
    assert g == DartsGenotype.parse(DARTS_V2)


def test_darts_json_and_text_round_trip():
    g = DartsGenotype(normal=(("dil_conv_5x5", 1), ("avg_pool_3x3", 0), ("sep_conv_5x5", 2),
                              ("skip_connect", 1)),
                      normal_concat=(2, 3),
                      reduce=(("max_pool_3x3", 0), ("dil_conv_3x3", 1)),
                      reduce_concat=(2,))
    d = json.loads(json.dumps(g.to_dict()))
    assert d["space"] == "darts"
    assert DartsGenotype.from_dict(d) == g == genotype_from_dict(d)
    assert DartsGenotype.parse(str(g)) == g
    v2 = DartsGenotype.parse(DARTS_V2)
    assert DartsGenotype.from_dict(json.loads(json.dumps(v2.to_dict()))) == v2


@pytest.mark.parametrize(("text", "needles"), [
    # a syntax error: the column of the unclosed bracket
    (DARTS_V2[:-1], ["column 9", "never closed"]),
    (DARTS_V2.replace("Genotype(", "Genotyp("), ["column 1", "Genotype("]),
    # the column of the offending field or value
    (DARTS_V2.replace("normal_concat=", "normal_cat="),
     [f"column {DARTS_V2.index('normal_concat=') + 1}", "unknown field 'normal_cat'"]),
    (DARTS_V2.replace("normal=", "", 1), ["column 10", "keyword"]),
    (DARTS_V2.replace("[2, 3, 4, 5]", "range(2, x)", 1),
     [f"column {DARTS_V2.index('[2, 3, 4, 5]') + 1}", "range"]),
    (DARTS_V2.replace("[2, 3, 4, 5]", "range(0, 1000000000000)", 1),  # not materialised
     [f"column {DARTS_V2.index('[2, 3, 4, 5]') + 1}", "range of 1000000000000 nodes"]),
    (DARTS_V2.replace("[2, 3, 4, 5]", "[2, 'three']", 1),
     [f"column {DARTS_V2.index('[2, 3, 4, 5]') + 1}", "integers"]),
    (DARTS_V2.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1)", "('sep_conv_3x3', 0, 1)", 1),
     ["column 17", "('op', input) pairs"]),
    # never evaluated: code in the text is rejected, not run
    ("Genotype(normal=__import__('os').system('true'), reduce=[])",
     ["column 17", "('op', input) pairs"]),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)])", ["missing field 'reduce'"]),
])
def test_malformed_darts_text_says_where(text, needles):
    with pytest.raises(DiffnasError) as e:
        DartsGenotype.parse(text)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_multiline_errors_give_the_line():
    text = DARTS_V2.replace("], ", "],\n").replace("'dil_conv_3x3', 2)]", "'dil_conv_3x3' 2)]")
    with pytest.raises(DiffnasError, match=r"at line 1 column \d+"):
        DartsGenotype.parse(text)
    text = DARTS_V2.replace("], ", "],\n").replace("reduce_concat=[2, 3, 4, 5]",
                                                   "reduce_concat=[2, None]")
    with pytest.raises(DiffnasError, match=r"at line 4 column 15: expected a list of integers"):
        DartsGenotype.parse(text)


@pytest.mark.parametrize(("text", "needles"), [
    (DARTS_V2.replace("'dil_conv_3x3', 2", "'conv_9x9', 2"),
     ["normal[7]", "'conv_9x9'", "valid:", "sep_conv_3x3"]),
    (DARTS_V2.replace("'dil_conv_3x3', 2", "'none', 2"), ["normal[7]", "'none'"]),
    (DARTS_V2.replace("('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2)",
                      "('max_pool_3x3', 0), ('max_pool_3x3', 2), ('skip_connect', 2)"),
     ["reduce[1]", "input 2", "node 2", "0..1"]),
    (DARTS_V2.replace("('skip_connect', 0), ('dil_conv_3x3', 2)]", "('skip_connect', 0)]"),
     ["normal", "7 (op, input) pairs"]),
    (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 9]"),
     ["normal_concat [2, 3, 9]", "2..5"]),
])
def test_invalid_darts_ops_and_inputs(text, needles):
    with pytest.raises(DiffnasError) as e:
        DartsGenotype.parse(text)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_darts_dict_errors():
    with pytest.raises(DiffnasError, match="expected keys normal"):
        DartsGenotype.from_dict({"normal": [["sep_conv_3x3", 0]]})
    with pytest.raises(DiffnasError, match="not in the DARTS space"):
        DartsGenotype.from_dict({"normal": [["x", 0], ["sep_conv_3x3", 1]], "reduce": []})


def test_every_primitive_but_none_is_accepted():
    ops = [p for p in PRIMITIVES if p != "none"]
    g = DartsGenotype(normal=tuple((op, i % 2) for i, op in enumerate(ops + ["skip_connect"])),
                      reduce=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), reduce_concat=(2,))
    assert DartsGenotype.parse(str(g)) == g


# ------------------------------------------------------------------------------ NAS-Bench-201
@pytest.mark.parametrize("arch", [NB201_BEST, NB201_SKIPS])
def test_nb201_string_round_trip(arch):
    g = NB201Genotype.parse(arch)
    assert str(g) == arch
    assert NB201Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert genotype_from_dict(g.to_dict()) == g


def test_nb201_edge_order():
    g = NB201Genotype.parse(NB201_BEST)
    # edges (0→1), (0→2), (1→2), (0→3), (1→3), (2→3)
    assert g.ops == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect",
                     "nor_conv_3x3", "nor_conv_3x3")
    assert g.skip_count == 1 and NB201Genotype.parse(NB201_SKIPS).skip_count == 6
    every = NB201Genotype(tuple(OPS) + ("none",))
    assert NB201Genotype.parse(str(every)) == every


@pytest.mark.parametrize(("text", "needles"), [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", ["2 node groups", "expected 3"]),
    ("", ["1 node groups"]),
    (NB201_BEST.replace("+|nor_conv_3x3~0|nor", "+nor_conv_3x3~0|nor"), ["node 2", "'|'"]),
    (NB201_BEST.replace("|nor_conv_3x3~0|nor_conv_3x3~1|", "|nor_conv_3x3~0|"),
     ["node 2", "needs 2 entries", "got 1"]),
    (NB201_BEST.replace("nor_conv_3x3~1|+", "nor_conv_3x3~2|+"),
     ["bad entry 'nor_conv_3x3~2'", "node 2", "i < 2"]),
    (NB201_BEST.replace("|nor_conv_3x3~0|+", "|nor_conv_3x3-0|+", 1),
     ["bad entry 'nor_conv_3x3-0'", "node 1"]),
    (NB201_BEST.replace("nor_conv_3x3~1|+", "nor_conv_3x3~0|+"), ["repeats an input"]),
    (NB201_BEST.replace("skip_connect~0", "sep_conv_3x3~0"),
     ["'sep_conv_3x3'", "edge 0->3", "valid:", "nor_conv_1x1"]),
])
def test_malformed_nb201_strings(text, needles):
    with pytest.raises(DiffnasError) as e:
        NB201Genotype.parse(text)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_nb201_needs_six_ops():
    with pytest.raises(DiffnasError, match="6 edges, got 5"):
        NB201Genotype(("none",) * 5)
    with pytest.raises(DiffnasError, match="expected key 'arch'"):
        NB201Genotype.from_dict({"ops": []})


# ----------------------------------------------------------------------------- parse_genotype
def test_parse_genotype_from_text_json_file_and_run_folder(tmp_path):
    v2 = DartsGenotype.parse(DARTS_V2)
    nb = NB201Genotype.parse(NB201_BEST)
    assert parse_genotype(DARTS_V2) == v2
    assert parse_genotype("  " + NB201_BEST + "\n") == nb
    for g in (v2, nb):
        text = json.dumps(g.to_dict(), indent=2)
        assert parse_genotype(text) == g
        run = RunFolder(tmp_path / g.space)
        run.write_json("genotype.json", g.to_dict())
        assert parse_genotype(str(run.path / "genotype.json")) == g
        assert parse_genotype(str(run.path)) == g  # a run folder means its genotype.json
    (tmp_path / "v2.txt").write_text(DARTS_V2 + "\n")
    assert parse_genotype(str(tmp_path / "v2.txt")) == v2


def test_parse_genotype_errors(tmp_path):
    with pytest.raises(DiffnasError, match="line 1 column 18"):
        parse_genotype('{"space": "darts"')
    with pytest.raises(DiffnasError,
                       match="unknown genotype space 'xyz'; valid: darts, mbconv, nb201"):
        parse_genotype('{"space": "xyz"}')
    missing = tmp_path / "nothing-here"
    with pytest.raises(DiffnasError, match="cannot read genotype") as e:
        parse_genotype(str(missing))
    assert str(missing) in str(e.value) and "NAS-Bench-201" in str(e.value)
    with pytest.raises(DiffnasError, match="cannot read genotype"):
        parse_genotype(str(tmp_path))  # a folder without genotype.json
