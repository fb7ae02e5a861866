"""Lookup tables for the NAS-Bench-201 cell space (15,625 cells).

Three sources give one :class:`NB201Table` (a float column per metric, one row per cell):

* ``analog-nasbench`` (PyPI; AnalogNAS-Bench, Benmeziane et al., arXiv 2506.18495): every cell
  trained on **CIFAR-10**; ``baseline_accuracy`` is the full-precision test accuracy (%), the
  other columns are quantised / simulated analog-hardware figures. Its ``import`` is broken on
  current setuptools (it imports ``pkg_resources``), so its data file is read directly through
  a restricted unpickler that rebuilds only the package's two record classes.
* an official NAS-Bench-201 ``.pth`` file (Dong & Yang, ICLR 2020) through the optional
  ``nas-bench-201`` package, or a NATS-Bench topology ``.pickle.pbz2`` file (Dong et al.,
  TPAMI 2021) through ``nats_bench``: CIFAR-10 / CIFAR-100 / ImageNet16-120 accuracies after
  200 epochs. The primary column is the CIFAR-10 test accuracy.

Rows are indexed by :func:`arch_index` (each edge's op index in
:data:`~diffnas.spaces.nb201.OPS`, edges in architecture-string order, first edge most
significant). A converted table is cached as ``.npz`` (no pickle) under the diffnas cache
folder, so later loads take milliseconds.

The table describes the benchmark's own dataset (CIFAR-10 for the primary column), not the data
a search ran on: a search on Fashion-MNIST scored by this table is a transfer protocol, not the
papers' own.
"""

from __future__ import annotations

import bz2
import collections
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DiffnasError
from ..spaces.nb201 import EDGES, N_NODES, OPS, NB201Genotype

NUM_ARCHS = len(OPS) ** len(EDGES)  # 15,625
CACHE_VERSION = 1
TABLE_ENV = "DIFFNAS_NB201_TABLE"

# analog-nasbench keys: 6-tuples of op ids over the edges 0→1, 0→2, 0→3, 1→2, 1→3, 2→3
# (verified by tests/test_bench.py: the 341 cells with no input→output path are exactly the
# cells whose accuracy is 10 %).
ANALOG_OP_IDS: tuple[str, ...] = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1",
                                  "avg_pool_3x3")
ANALOG_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_ANALOG_ALLOWED = {("analognasbench.data", "Architecture"),
                   ("analognasbench.data", "DriftMeasurement")}
_ANALOG_ACCURACIES = {
    "baseline_accuracy": "CIFAR-10 test accuracy (%), full-precision digital training",
    "ptq_accuracy": "after post-training quantisation (%)",
    "qat_accuracy": "after quantisation-aware training (%)",
    "noisy_accuracy": "digitally trained weights on simulated noisy analog hardware (%)",
    "analog_accuracy": "hardware-aware training, on simulated analog hardware (%)",
}
_ANALOG_DRIFTS = tuple(f"{kind}_drift_{t}" for kind in ("baseline", "analog")
                       for t in (60, 3600, 86400, 2592000))

# official NAS-Bench-201 / NATS-Bench: (dataset in the API, eval set, column, description)
_OFFICIAL_COLUMNS = (
    ("cifar10", "test-accuracy", "cifar10_test",
     "CIFAR-10 test accuracy (%), trained on train+valid for 200 epochs"),
    ("cifar10-valid", "valid-accuracy", "cifar10_valid",
     "CIFAR-10 validation accuracy (%), trained on the train split for 200 epochs"),
    ("cifar100", "valid-accuracy", "cifar100_valid", "CIFAR-100 validation accuracy (%)"),
    ("cifar100", "test-accuracy", "cifar100_test", "CIFAR-100 test accuracy (%)"),
    ("ImageNet16-120", "valid-accuracy", "imagenet16_valid",
     "ImageNet16-120 validation accuracy (%)"),
    ("ImageNet16-120", "test-accuracy", "imagenet16_test", "ImageNet16-120 test accuracy (%)"),
)


# ------------------------------------------------------------------------------ cell indexing
def as_genotype(arch: str | NB201Genotype) -> NB201Genotype:
    """A NAS-Bench-201 genotype from a genotype, an architecture string, JSON or genotype.json."""
    if isinstance(arch, NB201Genotype):
        return arch
    if not isinstance(arch, str):
        raise DiffnasError(f"expected a NAS-Bench-201 architecture string, got "
                           f"{type(arch).__name__}")
    if arch.strip().startswith("|"):
        return NB201Genotype.parse(arch)  # the common case, without parse_genotype's lookups
    from ..spaces import parse_genotype

    g = parse_genotype(arch)
    if not isinstance(g, NB201Genotype):
        raise DiffnasError(f"architecture {arch[:60]!r} is not in the NAS-Bench-201 space (it is "
                           f"a {g.space}-space genotype); expected |op~0|+|op~0|op~1|+|...|")
    return g


def arch_index(arch: str | NB201Genotype) -> int:
    """Row of ``arch`` in a table: base-5 digits = op indices in :data:`EDGES` order."""
    g = as_genotype(arch)
    idx = 0
    for op in g.ops:
        idx = idx * len(OPS) + OPS.index(op)
    return idx


def arch_from_index(index: int) -> NB201Genotype:
    """Inverse of :func:`arch_index`."""
    if not 0 <= int(index) < NUM_ARCHS:
        raise DiffnasError(f"NAS-Bench-201 cell index {index} is out of range 0..{NUM_ARCHS - 1}")
    digits = np.unravel_index(int(index), (len(OPS),) * len(EDGES))
    return NB201Genotype(tuple(OPS[int(d)] for d in digits))


def all_op_indices() -> np.ndarray:
    """``[15625, 6]`` op indices of every cell, row ``i`` = cell :func:`arch_index` ``i``."""
    return np.stack(np.unravel_index(np.arange(NUM_ARCHS), (len(OPS),) * len(EDGES)), axis=1)


def connected_mask(op_idx: np.ndarray | None = None) -> np.ndarray:
    """Per cell, whether some path of non-``none`` edges leads from the input to the output."""
    ops = all_op_indices() if op_idx is None else np.asarray(op_idx)
    on = ops != OPS.index("none")
    reach = {0: np.ones(len(ops), dtype=bool)}
    for j in range(1, N_NODES):
        r = np.zeros(len(ops), dtype=bool)
        for e, (i, jj) in enumerate(EDGES):
            if jj == j:
                r |= reach[i] & on[:, e]
        reach[j] = r
    return reach[N_NODES - 1]


def is_connected(arch: str | NB201Genotype) -> bool:
    g = as_genotype(arch)
    return bool(connected_mask(np.array([[OPS.index(o) for o in g.ops]]))[0])


def analog_key(arch: str | NB201Genotype) -> tuple[int, ...]:
    """The analog-nasbench key of a cell (op ids in :data:`ANALOG_EDGES` order)."""
    g = as_genotype(arch)
    by_edge = dict(zip(EDGES, g.ops, strict=True))
    return tuple(ANALOG_OP_IDS.index(by_edge[e]) for e in ANALOG_EDGES)


def from_analog_key(key: Iterable[int]) -> NB201Genotype:
    key = tuple(key)
    if len(key) != len(ANALOG_EDGES) or any(not 0 <= int(k) < len(ANALOG_OP_IDS) for k in key):
        raise DiffnasError(f"not an analog-nasbench key: {key!r} (6 op ids in 0..4)")
    by_edge = {e: ANALOG_OP_IDS[int(k)] for e, k in zip(ANALOG_EDGES, key, strict=True)}
    return NB201Genotype(tuple(by_edge[e] for e in EDGES))


def analog_keys_to_indices(keys: Iterable[Iterable[int]]) -> np.ndarray:
    """Table rows (:func:`arch_index`) of many analog-nasbench keys at once."""
    k = np.asarray(list(keys), dtype=np.int64)
    if k.ndim != 2 or k.shape[1] != len(ANALOG_EDGES) or k.min() < 0 or k.max() >= len(OPS):
        raise DiffnasError("analog-nasbench keys must be 6 op ids in 0..4")
    to_ops = np.array([OPS.index(name) for name in ANALOG_OP_IDS])
    order = [ANALOG_EDGES.index(e) for e in EDGES]  # string-order edge e ← analog position
    return np.ravel_multi_index(tuple(to_ops[k[:, p]] for p in order), (len(OPS),) * len(EDGES))


def _scatter(rows: np.ndarray, values: list[Any]) -> np.ndarray:
    out = np.full(NUM_ARCHS, np.nan)
    out[rows] = np.asarray(values, dtype=np.float64)
    return out


# ------------------------------------------------------------------------------------ the table
@dataclass
class NB201Table:
    """Metrics of NAS-Bench-201 cells: ``columns[name][arch_index(g)]`` (NaN: no entry)."""

    columns: dict[str, np.ndarray]
    primary: str
    dataset: str
    source: str
    path: str = ""
    descriptions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.primary not in self.columns:
            raise DiffnasError(f"table has no column {self.primary!r}")

    @property
    def accuracies(self) -> np.ndarray:
        """The primary column (accuracy in %), indexed by :func:`arch_index`."""
        return self.columns[self.primary]

    def __len__(self) -> int:
        return int(np.isfinite(self.accuracies).sum())

    def available(self) -> np.ndarray:
        """Indices of the cells that have a primary entry."""
        return np.flatnonzero(np.isfinite(self.accuracies))

    def describe(self) -> str:
        return (f"NAS-Bench-201 table: {self.source}; {len(self)} cells; "
                f"accuracy = {self.primary} ({self.descriptions.get(self.primary, self.dataset)})")

    def _row(self, arch: str | NB201Genotype) -> tuple[NB201Genotype, int]:
        g = as_genotype(arch)
        i = arch_index(g)
        if not np.isfinite(self.accuracies[i]):
            raise DiffnasError(f"architecture {g} has no entry in {self.path or self.source}")
        return g, i

    def accuracy(self, arch: str | NB201Genotype) -> float:
        """Primary accuracy (%) of ``arch`` on the table's dataset (not the search data)."""
        return float(self.accuracies[self._row(arch)[1]])

    def query(self, arch: str | NB201Genotype) -> dict[str, Any]:
        """Every entry of ``arch``: its string, index, the table's dataset and all columns."""
        g, i = self._row(arch)
        values = {k: (None if not np.isfinite(v[i]) else round(float(v[i]), 4))
                  for k, v in self.columns.items()}
        return {"arch": str(g), "index": i, "dataset": self.dataset, "primary": self.primary,
                "accuracy": values[self.primary], "source": self.source, "values": values}

    # -- cache ----------------------------------------------------------------------------------
    def to_npz(self) -> bytes:
        meta = {"version": CACHE_VERSION, "primary": self.primary, "dataset": self.dataset,
                "source": self.source, "path": self.path, "descriptions": self.descriptions}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta)),
                 **{f"col_{k}": v.astype(np.float64) for k, v in self.columns.items()})
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> NB201Table:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            if meta.get("version") != CACHE_VERSION:
                raise ValueError("stale cache version")
            cols = {k[4:]: z[k] for k in z.files if k.startswith("col_")}
        if any(v.shape != (NUM_ARCHS,) for v in cols.values()):
            raise ValueError("bad column shape")
        return cls(cols, meta["primary"], meta["dataset"], meta["source"], meta["path"],
                   meta["descriptions"])


# ------------------------------------------------------------------------ restricted unpickling
class _Record:
    """Stand-in for analog-nasbench's record classes: holds the pickled attributes only."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("record state must be a dict")
        self.__dict__.update(state)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``allowed`` ((module, name) → object) and
    refuses every other one with a :class:`DiffnasError` naming it."""

    def __init__(self, file: Any, allowed: dict[tuple[str, str], Any], source: str,
                 what: str) -> None:
        super().__init__(file)
        self._allowed, self._source, self._what = allowed, source, what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DiffnasError(f"refusing to load {self._source}: it references {module}.{name}, "
                               f"which {self._what} never contains") from None


def _unpickle(fh: Any, allowed: dict[tuple[str, str], Any], source: str, what: str) -> Any:
    # the cyclic GC scanning the ~10⁵ new objects again and again more than doubles load time
    enabled = gc.isenabled()
    gc.disable()
    try:
        return RestrictedUnpickler(fh, allowed, source, what).load()
    except DiffnasError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            LookupError, MemoryError) as e:
        raise DiffnasError(f"cannot read {source} as {what}: {type(e).__name__}: "
                           f"{str(e)[:100]}") from None
    finally:
        if enabled:
            gc.enable()


def _read_analog(path: Path) -> NB201Table:
    allowed = {k: _Record for k in _ANALOG_ALLOWED}
    with open(path, "rb") as fh:
        data = _unpickle(fh, allowed, str(path), "an analog-nasbench table")
    if not isinstance(data, dict) or len(data) != NUM_ARCHS:
        raise DiffnasError(f"{path} is not an analog-nasbench table: expected a dict of "
                           f"{NUM_ARCHS} cells, got {type(data).__name__} of "
                           f"{len(data) if hasattr(data, '__len__') else '?'} entries")
    keys = list(data)
    recs = [data[k] for k in keys]
    if not all(isinstance(k, tuple) for k in keys) or not all(
            isinstance(r, _Record) for r in recs):
        raise DiffnasError(f"{path} is not an analog-nasbench table: keys must be op-id tuples "
                           "and values Architecture records")
    rows = analog_keys_to_indices(keys)
    if len(np.unique(rows)) != NUM_ARCHS:
        raise DiffnasError(f"{path} is not an analog-nasbench table: its keys do not cover the "
                           f"{NUM_ARCHS} cells once each")
    cols: dict[str, np.ndarray] = {}
    try:
        for k in _ANALOG_ACCURACIES:
            cols[k] = _scatter(rows, [r.__dict__[k] for r in recs])
        for k in _ANALOG_DRIFTS:
            drifts = [r.__dict__[k].__dict__ for r in recs]
            cols[k] = _scatter(rows, [d["value"] for d in drifts])
            cols[f"{k}_unc"] = _scatter(rows, [d["uncertainty"] for d in drifts])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DiffnasError(f"{path} is not an analog-nasbench table: a cell lacks a numeric "
                           f"{e}") from None
    desc = dict(_ANALOG_ACCURACIES)
    desc.update({k: f"accuracy (%) after {k.rsplit('_', 1)[1]} s of conductance drift"
                 for k in _ANALOG_DRIFTS})
    try:
        version = importlib.metadata.version("analog-nasbench")
    except Exception:  # noqa: BLE001 - the file can be read without the package's metadata
        version = "?"
    source = (f"analog-nasbench {version} (AnalogNAS-Bench, arXiv 2506.18495), CIFAR-10, "
              "full-precision baseline accuracy")
    return NB201Table(cols, "baseline_accuracy", "CIFAR-10", source, str(path), desc)


def _require(module: str, package: str, kind: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DiffnasError(f"reading {kind} needs the optional package {package!r} "
                           f"(pip install {package}); importing {module} failed: {e}") from None


def _official_dict(path: Path, kind: str) -> dict[str, Any]:
    """Load the raw benchmark dict safely: torch ``weights_only`` (NAS-Bench-201 .pth) or a
    restricted unpickler over bz2 (NATS-Bench), allowing containers and numpy scalars only."""
    if kind == "nb201":
        import torch

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure means a wrong/unsafe file
            raise DiffnasError(f"cannot read {path} as a NAS-Bench-201 file (torch.load with "
                               f"weights_only=True failed: {str(e).splitlines()[0][:120]})"
                               ) from None
    else:
        from ..data.readers import numpy_globals

        allowed = {("collections", "OrderedDict"): collections.OrderedDict, **numpy_globals()}
        with bz2.open(path, "rb") as fh:
            data = _unpickle(fh, allowed, str(path), "a NATS-Bench topology file")
    keys = ("meta_archs", "arch2infos", "evaluated_indexes")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise DiffnasError(f"{path} is not a {'NAS-Bench-201' if kind == 'nb201' else 'NATS-Bench'}"
                           f" file: expected a dict with keys {', '.join(keys)}")
    return data


def _read_official(path: Path, kind: str) -> NB201Table:
    if kind == "nb201":
        mod = _require("nas_201_api", "nas-bench-201", "an official NAS-Bench-201 file")
        api = mod.NASBench201API(_official_dict(path, kind), verbose=False)
        source = f"NAS-Bench-201 ({path.name}, via nas-bench-201)"
    else:
        mod = _require("nats_bench", "nats_bench", "a NATS-Bench file")
        api = mod.create(_official_dict(path, kind), "tss", fast_mode=False, verbose=False)
        source = f"NATS-Bench topology ({path.name}, via nats_bench)"
    cols = {c: np.full(NUM_ARCHS, np.nan) for _, _, c, _ in _OFFICIAL_COLUMNS}
    for idx, arch in enumerate(api.meta_archs):
        if idx not in api.arch2infos_dict:
            continue
        try:
            row = arch_index(NB201Genotype.parse(arch))
        except DiffnasError as e:
            raise DiffnasError(f"{path}: architecture {idx} ({arch!r}) is not a NAS-Bench-201 "
                               f"cell: {e}") from None
        datasets = api.arch2infos_dict[idx]["200"].get_dataset_names()
        for ds, metric, col, _ in _OFFICIAL_COLUMNS:
            if ds in datasets:
                info = api.get_more_info(idx, ds, hp="200", is_random=False)
                if info.get(metric) is not None:
                    cols[col][row] = float(info[metric])
    cols = {k: v for k, v in cols.items() if np.isfinite(v).any()}
    if "cifar10_test" not in cols:
        raise DiffnasError(f"{path} has no CIFAR-10 test accuracies (dataset 'cifar10', 200 "
                           "epochs); cannot use it as the NAS-Bench-201 table")
    desc = {c: d for _, _, c, d in _OFFICIAL_COLUMNS if c in cols}
    return NB201Table(cols, "cifar10_test", "CIFAR-10", source, str(path), desc)


# ---------------------------------------------------------------------------------- loading
def table_kind(path: Path) -> str:
    """``analog``, ``nb201`` or ``nats`` from the file's first bytes (and name)."""
    if path.is_dir():
        raise DiffnasError(f"{path} is a folder; pass a single benchmark file (analog-nasbench "
                           "data.anb, NAS-Bench-201 *.pth or NATS-Bench NATS-tss-*.pickle.pbz2)")
    if not path.is_file():
        raise DiffnasError(f"benchmark file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"BZh"):
        return "nats"
    if head.startswith(b"PK\x03\x04") or path.suffix == ".pth":
        return "nb201"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "analog"
    raise DiffnasError(f"{path} is not a NAS-Bench-201 table: expected analog-nasbench's "
                       "data.anb (pickle), an official NAS-Bench-201 .pth or a NATS-Bench "
                       ".pickle.pbz2 file")


def default_table_path() -> Path:
    """``$DIFFNAS_NB201_TABLE``, else the data file of the installed ``analog-nasbench``."""
    env = os.environ.get(TABLE_ENV)
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec("analognasbench")  # finds the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "data.anb"
        if path.is_file():
            return path
    raise DiffnasError("no NAS-Bench-201 table found: install the optional package "
                       "analog-nasbench (pip install 'diffnas[bench]'), or pass --table / set "
                       f"${TABLE_ENV} to an official NAS-Bench-201 .pth or NATS-Bench "
                       ".pickle.pbz2 file")


def _cache_file(path: Path) -> Path:
    from ..data.readers import cache_dir

    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / "nb201-tables" / f"{path.name}-{digest}.npz"


def load_table(path: str | os.PathLike[str] | None = None, *, cache: bool = True) -> NB201Table:
    """Load a NAS-Bench-201 table (default: :func:`default_table_path`).

    The first load converts the file (about 1-2 s for analog-nasbench; minutes for the full
    official files) and caches the result as ``.npz``; later loads read the cache.
    """
    p = Path(path).expanduser() if path is not None else default_table_path()
    kind = table_kind(p)
    cached = _cache_file(p) if cache else None
    if cached is not None and cached.is_file():
        try:
            return NB201Table.from_npz(cached)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # stale or damaged cache: rebuild it
    table = _read_analog(p) if kind == "analog" else _read_official(p, kind)
    if cached is not None:
        from ..engine.runfolder import atomic_write_bytes

        try:
            atomic_write_bytes(cached, lambda f: f.write(table.to_npz()))
        except OSError:
            pass  # a read-only cache only costs speed
    return table


def cached_table(path: str | os.PathLike[str] | None = None) -> NB201Table:
    """:func:`load_table`, loaded once per process and file."""
    p = Path(path).expanduser() if path is not None else default_table_path()
    return _cached(str(p.resolve()))


@lru_cache(maxsize=4)
def _cached(path: str) -> NB201Table:
    return load_table(path)


# ------------------------------------------------------------------- search-loop metrics hook
_NOTED: set[str] = set()


def epoch_metrics(genotype: Any, run: Any) -> dict[str, Any]:
    """Per-epoch metrics hook of the search loop for the NAS-Bench-201 space: the table
    accuracy of the current genotype (``table_acc``; None when no table is available). The
    first call per run folder writes a note to the run's log naming the table's dataset."""
    key = str(getattr(run, "path", run))
    try:
        table = cached_table()
        acc: float | None = table.accuracy(genotype)
    except DiffnasError as e:
        table, acc = None, None
        note = f"table_acc is null: {e}"
    if key not in _NOTED:
        _NOTED.add(key)
        if table is not None:
            searched = "the search data"
            try:
                cfg = json.loads((Path(key) / "config.json").read_text())
                searched = f"the search data ({cfg['dataset']})"
            except (OSError, ValueError, KeyError):
                pass
            note = (f"table_acc: {table.describe()}. The table describes {table.dataset}, not "
                    f"{searched}: a transfer protocol unless the search ran on "
                    f"{table.dataset}.")
        if hasattr(run, "log"):
            run.log(note)
    return {"table_acc": acc}
