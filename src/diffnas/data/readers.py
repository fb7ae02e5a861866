"""Dataset readers: Fashion-MNIST (idx), CIFAR-10/100 (python pickles), scikit-learn digits and
image folders, all loaded whole into one uint8 tensor.

Files are searched for in a fixed list of places (see :func:`search_locations`); when they are
missing and ``download=True`` the official archives are fetched into ``~/.cache/diffnas``.
Nothing here trusts the files it reads: idx headers are checked against the file size and the
CIFAR pickles go through an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffnas.errors import DiffnasError, unknown

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "digits")
"""Built-in dataset names; ``folder:PATH`` is accepted as well."""

SPLITS: tuple[str, ...] = ("train", "test")

#: Where the Debian/Ubuntu ``dataset-*`` packages put their files (monkeypatched in tests).
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
CIFAR_MD5 = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}
DOWNLOAD_TIMEOUT_S = 60.0

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "digits": "digits",
}
_FOLDER_SEED = 0
_DIGITS_SEED = 0
_TRAIN_FRACTION = 0.8


# --------------------------------------------------------------------------- dataset container


@dataclass
class ImageDataset:
    """A whole image classification split held in memory as one uint8 tensor."""

    name: str
    images: torch.Tensor  # uint8 [N, C, H, W], contiguous, CPU
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]  # per-channel mean in [0, 1] units
    std: tuple[float, ...]
    flip: bool  # whether horizontal flips are a sensible default augmentation

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (images are square for every built-in dataset; see :attr:`hw`)."""
        return int(self.images.shape[2])

    @property
    def hw(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def subset(self, n: int, seed: int) -> ImageDataset:
        """A seeded, class-stratified subset of ``n`` samples (all of them if ``n >= len``).

        Samples keep their original order; mean/std are those of the full dataset.
        """
        if n < 1:
            raise DiffnasError(f"subset size must be at least 1, got {n}")
        total = len(self)
        if n >= total:
            return replace(self)
        keep = _stratified_pick(self.labels, n, seed)
        return replace(self, images=self.images[keep].contiguous(), labels=self.labels[keep])

    def class_subset(self, fraction: float, seed: int) -> ImageDataset:
        """A seeded per-class subset: ``round(count · fraction)`` samples of every class (e.g.
        "10 % of each class" is ``fraction=0.1``), in their original order; mean/std stay."""
        keep = _class_pick(self.labels, fraction, seed, self.classes)
        return replace(self, images=self.images[keep].contiguous(), labels=self.labels[keep])


def _class_pick(labels: torch.Tensor, fraction: float, seed: int,
                classes: Sequence[str]) -> torch.Tensor:
    """Sorted indices of :func:`stratified_split`'s first part, checked to keep every class."""
    if not 0 < fraction <= 1:
        raise DiffnasError(f"class fraction must be in (0, 1], got {fraction}")
    keep = stratified_split(labels, fraction, seed)[0]
    lost = sorted(set(labels.tolist()) - set(labels[keep].tolist()))
    if lost:
        raise DiffnasError(f"class fraction {fraction} keeps no image of class(es) "
                           f"{', '.join(classes[c] for c in lost[:5])}; use a larger fraction")
    return keep


def _stratified_pick(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` samples drawn in proportion to class frequency."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=g)
    lab = labels[perm]
    # rank of each permuted sample within its class, in permutation order
    order = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(lab)
    rank[order] = torch.arange(lab.numel()) - starts[lab[order]]
    # interleave classes: the k-th sample of a class sits at (k + 0.5) / class_count
    key = (rank.double() + 0.5) / counts[lab].double()
    chosen = perm[torch.argsort(key, stable=True)[:n]]
    return torch.sort(chosen).values


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split: ``round(count * fraction)`` samples of each class go first."""
    g = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = round(idx.numel() * fraction)
        first.append(idx[:k])
        second.append(idx[k:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values


# --------------------------------------------------------------------------- tensor helpers


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a uint8 batch [N, C, H, W] (antialiased when shrinking)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[2:]) == hw:
        return images
    shrink = hw[0] < images.shape[2] or hw[1] < images.shape[3]
    out = torch.empty((images.shape[0], images.shape[1], *hw), dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].float()
        chunk = F.interpolate(
            chunk, size=hw, mode="bilinear", align_corners=False, antialias=shrink
        )
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of a uint8 batch, in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _finish(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    image_size: int | None,
    flip: bool,
) -> ImageDataset:
    """Resize a built-in dataset if asked and wrap it with its published mean/std."""
    if image_size is not None:
        images = resize_images(images, image_size)
    mean, std = _STATS[name]
    return ImageDataset(
        name=name,
        images=images.contiguous(),
        labels=labels.to(torch.int64),
        classes=classes,
        mean=mean,
        std=std,
        flip=flip,
    )


# --------------------------------------------------------------------------- search locations


def cache_dir() -> Path:
    """Root of the download cache: ``$XDG_CACHE_HOME/diffnas`` or ``~/.cache/diffnas``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "diffnas"


def explicit_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The folder the user named (``--data-dir``), which must exist: a named folder is used or
    refused, never silently replaced by another location."""
    if not data_dir:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DiffnasError(f"data folder {path} (--data-dir) {what}; create it, or leave out "
                           "--data-dir to use $DIFFNAS_DATA, the system copy or the download "
                           "cache")
    return path


def search_locations(dataset: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Folders searched, in order, for the files of a built-in ``dataset``: only ``data_dir``
    (and its ``dataset`` subfolder) when it is given, else ``$DIFFNAS_DATA``, the system
    copy and the download cache."""
    base = explicit_data_dir(data_dir)
    if base is not None:
        return [base, base / dataset]
    places: list[Path] = []
    if os.environ.get("DIFFNAS_DATA"):
        env = Path(os.environ["DIFFNAS_DATA"]).expanduser()
        places += [env, env / dataset]
    places += list(SYSTEM_DATA_DIRS.get(dataset, ()))
    places.append(cache_dir() / dataset)
    unique: list[Path] = []
    for p in places:
        if p not in unique:
            unique.append(p)
    return unique


def _looked_in(places: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in places)


# --------------------------------------------------------------------------- downloads


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, md5: str | None = None) -> None:
    """Fetch ``url`` to ``dest`` atomically (temp file in the same folder, then rename).

    Raises ``OSError`` (including ``urllib.error.URLError``) on network or checksum failure.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"diffnas: downloading {url}", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
        ):
            shutil.copyfileobj(resp, out, 1 << 20)
        if md5 is not None and _md5(Path(tmp)) != md5:
            raise OSError(f"checksum mismatch for {url}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing links, devices and paths that leave ``dest``."""
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()) or os.path.isabs(m.name):
                    raise DiffnasError(f"refusing to extract {archive}: unsafe member {m.name!r}")
                if target != root and root not in target.parents:
                    raise DiffnasError(
                        f"refusing to extract {archive}: {m.name!r} leaves the folder"
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - old Python without extraction filters
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DiffnasError(f"cannot extract {archive}: {exc}; delete it and retry") from exc


# --------------------------------------------------------------------------- idx (Fashion-MNIST)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Whole file content, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DiffnasError(f"cannot read {path}: {exc} (corrupt or truncated file?)") from exc


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an idx file (plain or ``.gz``) into a numpy array, validating header and size.

    The magic number is ``0x0000 TT DD`` (``TT`` the element type, ``DD`` the number of
    dimensions): ``0x00000803`` for image files and ``0x00000801`` for label files.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DiffnasError(f"{path} is not an idx file: only {len(raw)} bytes")
    zero, code, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or dims == 0:
        raise DiffnasError(
            f"{path} is not an idx file: bad magic number 0x{int.from_bytes(raw[:4], 'big'):08x}"
        )
    if ndim is not None and dims != ndim:
        raise DiffnasError(f"{path} has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DiffnasError(f"{path} is truncated: header cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DiffnasError(
            f"{path} is truncated or corrupt: header {shape} needs {expected} bytes, "
            f"file has {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_fashion_mnist(
    split: str, data_dir: str | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    places = search_locations("fashion-mnist", data_dir)
    found: tuple[Path, Path] | None = None
    for folder in places:
        img, lab = _find_idx(folder, stems[0]), _find_idx(folder, stems[1])
        if img is not None and lab is not None:
            found = (img, lab)
            break
    if found is None:
        hint = (
            "install it with `apt-get install dataset-fashion-mnist`, or put the idx files "
            "(train-images-idx3-ubyte[.gz] etc.) in --data-dir"
        )
        if not download:
            raise DiffnasError(
                f"Fashion-MNIST {split} files not found (looked in {_looked_in(places)}) and "
                f"download is off; {hint}"
            )
        named = explicit_data_dir(data_dir)
        target = named if named is not None else cache_dir() / "fashion-mnist"
        try:
            for stem in stems:
                name = stem + ".gz"
                if not (target / name).is_file():
                    download_file(FASHION_MNIST_URL + name, target / name, FASHION_MNIST_MD5[name])
        except OSError as exc:
            raise DiffnasError(
                f"Fashion-MNIST {split} files not found (looked in {_looked_in(places)}) and "
                f"download from {FASHION_MNIST_URL} failed ({exc}); {hint}"
            ) from exc
        found = (target / (stems[0] + ".gz"), target / (stems[1] + ".gz"))
    images = read_idx(found[0], ndim=3)
    labels = read_idx(found[1], ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DiffnasError(f"{found[0]} / {found[1]} must hold unsigned bytes (idx type 0x08)")
    if images.shape[0] != labels.shape[0]:
        raise DiffnasError(
            f"{found[0]} has {images.shape[0]} images but {found[1]} has {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DiffnasError(f"{found[1]} has label {int(labels.max())}; Fashion-MNIST has 0..9")
    return torch.from_numpy(images).unsqueeze(1).contiguous(), torch.from_numpy(labels).long()


# --------------------------------------------------------------------------- CIFAR pickles


def numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may reference: what numpy needs to rebuild arrays."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    # protocol-2 pickles written by Python 3 encode bytes via _codecs.encode(str, "latin1")
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only ever encodes text to bytes."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("bad _codecs.encode call")
    return text.encode(encoding, errors)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds plain containers and numpy arrays and refuses any other global."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DiffnasError(
                f"refusing to load {self._source}: it references {module}.{name}, which a CIFAR "
                f"batch never contains (only numpy arrays are allowed)"
            ) from None


def safe_unpickle(path: str | os.PathLike[str]) -> Any:
    """Load a CIFAR-style pickle through :class:`SafeUnpickler`; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, str(path)).load()  # type: ignore[arg-type]
    except DiffnasError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        LookupError,
        MemoryError,
    ) as exc:
        raise DiffnasError(f"cannot read {path}: {exc} (corrupt or truncated pickle?)") from exc


_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, meta file, label key, class-name key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": (
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        b"fine_labels",
        b"fine_label_names",
    ),
}


def _cifar_places(name: str, data_dir: str | None) -> list[Path]:
    folder = _CIFAR_LAYOUT[name][0]
    named = explicit_data_dir(data_dir)
    bases = [named] if named is not None else (
        [Path(os.environ["DIFFNAS_DATA"]).expanduser()] if os.environ.get("DIFFNAS_DATA") else [])
    places: list[Path] = []
    for base in bases:
        places += [base / folder, base / name / folder, base]
    if named is None:
        places.append(cache_dir() / name / folder)
    return places


def _load_cifar(
    name: str, split: str, data_dir: str | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[name]
    needed = (train_files if split == "train" else test_files) + (meta_file,)
    places = _cifar_places(name, data_dir)
    root = next((p for p in places if all((p / f).is_file() for f in needed)), None)
    if root is None:
        url = CIFAR_URLS[name]
        hint = f"download {url} and extract it into --data-dir (or $DIFFNAS_DATA)"
        if not download:
            raise DiffnasError(
                f"{name} files ({folder}/{', '.join(needed)}) not found (looked in "
                f"{_looked_in(places)}) and download is off; {hint}"
            )
        named = explicit_data_dir(data_dir)
        if named is not None and (named / folder).exists():  # never delete the user's files
            raise DiffnasError(f"{named / folder} lacks {', '.join(needed)}; complete it or "
                               "remove it (then diffnas downloads the dataset there)")
        cache = named if named is not None else cache_dir() / name
        archive = cache / url.rsplit("/", 1)[1]
        try:
            if not archive.is_file():
                download_file(url, archive, CIFAR_MD5[name])
        except OSError as exc:
            raise DiffnasError(
                f"{name} files not found (looked in {_looked_in(places)}) and download failed "
                f"({exc}); {hint}"
            ) from exc
        staging = Path(tempfile.mkdtemp(prefix="extract.", dir=cache))
        try:
            _safe_extract(archive, staging)
            if not (staging / folder).is_dir():
                raise DiffnasError(f"{archive} does not contain a {folder}/ folder")
            shutil.rmtree(cache / folder, ignore_errors=True)
            os.replace(staging / folder, cache / folder)
            archive.unlink()  # the extracted folder is all that is needed from now on
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        root = cache / folder

    meta = safe_unpickle(root / meta_file)
    if not isinstance(meta, dict) or names_key not in meta:
        raise DiffnasError(f"{root / meta_file} has no {names_key.decode()} entry")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    images, labels = [], []
    for fname in needed[:-1]:
        path = root / fname
        batch = safe_unpickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise DiffnasError(f"{path} is not a CIFAR batch: needs b'data' and {label_key!r}")
        data = batch[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
            raise DiffnasError(f"{path}: b'data' must be a uint8 array of shape [N, 3072]")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise DiffnasError(f"{path} has {data.shape[0]} images but {lab.size} labels")
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise DiffnasError(f"{path} has labels outside 0..{len(classes) - 1}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab))
    return torch.cat(images).contiguous(), torch.cat(labels), classes


# --------------------------------------------------------------------------- scikit-learn digits


def _load_digits(split: str, image_size: int | None) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(np.asarray(bunch.images, dtype=np.float64))
    images = (raw * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    if image_size is not None:
        images = resize_images(images, image_size)
    train_idx, test_idx = stratified_split(labels, _TRAIN_FRACTION, _DIGITS_SEED)
    mean, std = channel_stats(images[train_idx])
    keep = train_idx if split == "train" else test_idx
    return ImageDataset(
        name="digits",
        images=images[keep].contiguous(),
        labels=labels[keep],
        classes=[str(d) for d in range(10)],
        mean=mean,
        std=std,
        flip=False,
    )


# --------------------------------------------------------------------------- image folders

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _image_extensions() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def _class_files(root: Path, exts: set[str]) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for every non-hidden subfolder of ``root``."""
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[sub.name] = sorted(
            f
            for f in sub.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
        )
    return out


def _open_error(path: Path, exc: Exception) -> DiffnasError:
    return DiffnasError(f"cannot read image {path}: {exc}")


def _all_grey(files: Sequence[Path]) -> bool:
    """Whether every file is a greyscale image (reads headers only)."""
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path) as img:
                if img.mode not in _GREY_MODES:
                    return False
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise _open_error(path, exc) from exc
    return True


def _read_images(files: Sequence[Path], size: int, mode: str) -> torch.Tensor:
    """Read each file, convert it to ``mode`` ("RGB" or "L") and resize it to size x size."""
    from PIL import Image, UnidentifiedImageError

    channels = 1 if mode == "L" else 3
    out = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise _open_error(path, exc) from exc
        out[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return out


def _load_folder(spec: str, split: str, image_size: int | None,
                 class_fraction: float | None = None, seed: int = 0) -> ImageDataset:
    raw_path = spec[len("folder:") :]
    if not raw_path:
        raise DiffnasError("dataset 'folder:' needs a path, e.g. folder:/data/flowers")
    root = Path(raw_path).expanduser()
    if not root.is_dir():
        raise DiffnasError(f"image folder {root} does not exist or is not a folder")
    size = 32 if image_size is None else image_size
    exts = _image_extensions()
    base = root / "train" if (root / "train").is_dir() else root
    held_out = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    by_class = _class_files(base, exts)
    classes = list(by_class)
    if not classes:
        raise DiffnasError(
            f"{base} has no class subfolders; expected one subfolder of images per class "
            f"(optionally under train/ and val/)"
        )
    label_of = {c: i for i, c in enumerate(classes)}
    if base != root and held_out is not None:
        test_by_class = _class_files(held_out, exts)
        extra = sorted(set(test_by_class) - set(classes))
        if extra:
            raise DiffnasError(
                f"{held_out} has class folders missing from {base}: {', '.join(extra)}"
            )
        train = [(f, label_of[c]) for c in classes for f in by_class[c]]
        test = [(f, label_of[c]) for c, fs in test_by_class.items() for f in fs]
    else:
        g = torch.Generator().manual_seed(_FOLDER_SEED)
        train, test = [], []
        for c in classes:
            files = by_class[c]
            order = torch.randperm(len(files), generator=g).tolist()
            k = round(len(files) * _TRAIN_FRACTION)
            train += [(files[j], label_of[c]) for j in sorted(order[:k])]
            test += [(files[j], label_of[c]) for j in sorted(order[k:])]
    seen = {lab for _, lab in train}
    empty = [c for c in classes if label_of[c] not in seen]
    if empty:
        raise DiffnasError(
            f"{base}: class folder(s) {', '.join(empty)} have no training images (readable "
            f"image files such as .png or .jpg)"
        )
    if split == "test" and not test:
        raise DiffnasError(f"{root} has no test images (add a val/ folder or more images)")
    if class_fraction is not None:  # pick the split's files before reading any
        files = train if split == "train" else test
        keep = _class_pick(torch.tensor([lab for _, lab in files]), class_fraction, seed, classes)
        files = [files[i] for i in keep.tolist()]
        train, test = (files, test) if split == "train" else (train, files)
    mode = "L" if _all_grey([f for f, _ in train + test]) else "RGB"
    train_images = _read_images([f for f, _ in train], size, mode)
    if split == "train":
        images, labels = train_images, [lab for _, lab in train]
    else:
        images, labels = _read_images([f for f, _ in test], size, mode), [lab for _, lab in test]
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name=f"folder:{root}",
        images=images.contiguous(),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        mean=mean,
        std=std,
        flip=True,
    )


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    image_size: int | None = None,
    download: bool = True,
    class_fraction: float | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load one split ("train" or "test") of a dataset into memory.

    ``name`` is one of :data:`DATASETS` or ``folder:PATH``; ``image_size`` resizes images to
    ``image_size`` x ``image_size`` (bilinear) when given. ``class_fraction`` keeps
    :meth:`ImageDataset.class_subset` of the split (seeded by ``seed``); an image folder
    reads only those files (its mean/std are then those of the files read).
    """
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DiffnasError(f"image size must be a positive integer, got {image_size!r}")
    if name.startswith("folder:"):
        return _load_folder(name, split, image_size, class_fraction, seed)
    key = _ALIASES.get(name.strip().lower().replace("_", "-"))
    if key is None:
        raise unknown("dataset", name, [*DATASETS, "folder:PATH"])
    if key == "digits":
        data = _load_digits(split, image_size)
    elif key == "fashion-mnist":
        images, labels = _load_fashion_mnist(split, data_dir, download)
        data = _finish(key, images, labels, list(FASHION_MNIST_CLASSES), image_size, True)
    else:
        images, labels, classes = _load_cifar(key, split, data_dir, download)
        data = _finish(key, images, labels, classes, image_size, True)
    return data if class_fraction is None else data.class_subset(class_fraction, seed)
