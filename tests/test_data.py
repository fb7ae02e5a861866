"""Tests for diffnas.data: readers on tiny files in the real formats, augmentation, batching."""

from __future__ import annotations

import colorsys
import gzip
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffnas.data import (
    DATASETS,
    BatchAugment,
    BatchStream,
    ImageDataset,
    load_dataset,
    read_idx,
    readers,
    safe_unpickle,
    split_indices,
)
from diffnas.errors import DiffnasError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
UNREACHABLE = "http://127.0.0.1:9/"  # discard port: connection refused at once


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Hide the system dataset folder, $DIFFNAS_DATA and the user's cache from every test."""
    monkeypatch.setattr(readers, "SYSTEM_DATA_DIRS", {})
    monkeypatch.delenv("DIFFNAS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- idx / Fashion-MNIST


def write_idx(path: Path, arr: np.ndarray, magic_type: int = 0x08) -> Path:
    header = bytes([0, 0, magic_type, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    payload = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fashion(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_plain_and_gz(tmp_path, gz):
    write_fashion(tmp_path / "fm", gz)
    ds = load_dataset("fashion-mnist", "train", data_dir=str(tmp_path / "fm"), download=False)
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [i % 10 for i in range(12)]
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == 28
    assert ds.hw == (28, 28) and ds.flip and ds.mean == (0.2860,) and ds.std == (0.3530,)
    raw = read_idx(tmp_path / "fm" / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(raw))
    test = load_dataset("fashion-mnist", "test", data_dir=str(tmp_path / "fm"), download=False)
    assert len(test) == 5


def test_fashion_found_under_data_dir_subfolder_and_env(tmp_path, monkeypatch):
    write_fashion(tmp_path / "root" / "fashion-mnist", gz=True)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "root"), download=False)
    assert len(ds) == 12
    monkeypatch.setenv("DIFFNAS_DATA", str(tmp_path / "root"))
    ds = load_dataset("fashion_mnist", "test", image_size=16, download=False)
    assert ds.images.shape == (5, 1, 16, 16) and ds.image_size == 16


def test_idx_truncated_gz_names_file(tmp_path):
    write_fashion(tmp_path, gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(DiffnasError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path), download=False)


def test_idx_truncated_plain_and_bad_magic(tmp_path):
    path = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 4, 4)))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DiffnasError, match=r"x-images-idx3-ubyte is truncated"):
        read_idx(path)
    path = write_idx(tmp_path / "y-labels-idx1-ubyte", np.zeros(3))
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(DiffnasError, match="y-labels-idx1-ubyte.*magic"):
        read_idx(path)
    write_idx(tmp_path / "z", np.zeros((2, 2)))
    with pytest.raises(DiffnasError, match="2 dimensions, expected 3"):
        read_idx(tmp_path / "z", ndim=3)


def test_idx_count_mismatch(tmp_path):
    write_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DiffnasError, match="12 images but .* 7 labels"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path), download=False)


def test_fashion_missing_offline_mentions_apt(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("DIFFNAS_DATA", str(tmp_path / "env"))
    with pytest.raises(DiffnasError) as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "empty"), download=False)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg
    assert str(tmp_path / "empty") in msg  # a named folder is the only place looked in
    assert str(tmp_path / "env") not in msg
    with pytest.raises(DiffnasError) as err:
        load_dataset("fashion-mnist", download=False)
    assert str(tmp_path / "env") in str(err.value)


def test_named_data_dir_is_used_or_refused(tmp_path, monkeypatch):
    write_fashion(tmp_path / "env", gz=True)  # a copy elsewhere must not replace the named one
    monkeypatch.setenv("DIFFNAS_DATA", str(tmp_path / "env"))
    with pytest.raises(DiffnasError, match=f"{tmp_path / 'missing'}.*does not exist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "missing"), download=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffnasError, match="is not a folder"):
        load_dataset("cifar10", data_dir=str(tmp_path / "file"), download=True)


def test_fashion_download_failure_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "FASHION_MNIST_URL", UNREACHABLE)
    with pytest.raises(DiffnasError, match="download .* failed.*apt-get"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path), download=True)
    assert not list((tmp_path / "cache").rglob("*.part"))  # no half-written files left


def test_search_locations_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFNAS_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(readers, "SYSTEM_DATA_DIRS", {"fashion-mnist": (tmp_path / "sys",)})
    (tmp_path / "d").mkdir()
    places = readers.search_locations("fashion-mnist", str(tmp_path / "d"))
    assert places == [tmp_path / "d", tmp_path / "d" / "fashion-mnist"]  # named: only there
    assert readers.search_locations("fashion-mnist", None) == [
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "sys",
        tmp_path / "cache" / "diffnas" / "fashion-mnist",
    ]


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(readers, "SYSTEM_DATA_DIRS", {"fashion-mnist": (REAL_FASHION,)})
    ds = load_dataset("fashion-mnist", "test", download=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


# --------------------------------------------------------------------------- CIFAR pickles


def dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_batch(n: int, seed: int, label_key: bytes, classes: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", cifar_batch(4, i, b"labels", 10))
    dump(folder / "test_batch", cifar_batch(3, 9, b"labels", 10))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 4})
    return folder


def test_cifar10_pickles(tmp_path):
    folder = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", "train", data_dir=str(tmp_path), download=False)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes[0] == "airplane" and ds.num_classes == 10 and ds.flip
    first = cifar_batch(4, 1, b"labels", 10)
    assert ds.labels[:4].tolist() == first[b"labels"]
    data = first[b"data"]
    assert int(ds.images[1, 2, 5, 7]) == int(data[1, 2 * 1024 + 5 * 32 + 7])
    assert ds.mean == (0.4914, 0.4822, 0.4465)
    test = load_dataset("cifar-10", "test", data_dir=str(folder), download=False, image_size=16)
    assert test.images.shape == (3, 3, 16, 16)


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {**cifar_batch(6, 1, b"fine_labels", 100), b"coarse_labels": [0] * 6})
    dump(folder / "test", {**cifar_batch(2, 2, b"fine_labels", 100), b"coarse_labels": [0] * 2})
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    dump(folder / "meta", {**meta, b"coarse_label_names": [b"x"] * 20})
    ds = load_dataset("cifar100", "train", data_dir=str(tmp_path), download=False)
    assert ds.images.shape == (6, 3, 32, 32) and ds.num_classes == 100
    assert ds.labels.tolist() == cifar_batch(6, 1, b"fine_labels", 100)[b"fine_labels"]
    assert ds.std == (0.2673, 0.2564, 0.2762)
    assert len(load_dataset("cifar100", "test", data_dir=str(tmp_path), download=False)) == 2


def test_old_numpy_core_pickle_is_accepted(tmp_path):
    """The official files reference numpy.core.multiarray (numpy 1.x names)."""
    blob = pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    (tmp_path / "b").write_bytes(blob)
    assert safe_unpickle(tmp_path / "b")[b"data"].tolist() == list(range(6))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    dump(folder / "data_batch_3", {b"data": _Evil(marker), b"labels": []})
    with pytest.raises(DiffnasError, match=r"data_batch_3.*system"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert not marker.exists()


def test_corrupt_pickle_names_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:100])
    with pytest.raises(DiffnasError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path), download=False)


def test_cifar_missing_offline_and_failed_download(tmp_path, monkeypatch):
    with pytest.raises(DiffnasError, match="cifar-10-python.tar.gz") as err:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert str(tmp_path) in str(err.value)
    monkeypatch.setitem(readers.CIFAR_URLS, "cifar100", UNREACHABLE + "cifar-100-python.tar.gz")
    with pytest.raises(DiffnasError, match="download failed"):
        load_dataset("cifar100", data_dir=str(tmp_path), download=True)


def test_cifar_download_extracts_into_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    fetched = []

    def fake_download(url, dest, md5=None):
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, dest)

    monkeypatch.setattr(readers, "download_file", fake_download)
    ds = load_dataset("cifar10", "test", download=True)
    assert len(ds) == 3 and fetched == [readers.CIFAR_URLS["cifar10"]]
    cache = tmp_path / "cache" / "diffnas" / "cifar10"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]
    load_dataset("cifar10", "test", download=True)  # second time: served from the cache
    assert len(fetched) == 1


def test_tar_with_escaping_member_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "out").mkdir()
    with pytest.raises(DiffnasError, match="escaped.txt"):
        readers._safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# --------------------------------------------------------------------------- digits


def test_digits_split_is_deterministic_and_stratified():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.num_classes == 10 and not train.flip and train.classes[3] == "3"
    assert int(train.images.max()) == 255 and train.images.dtype == torch.uint8
    assert torch.bincount(test.labels).min() >= 35
    again = load_dataset("digits", "train")
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert train.mean == test.mean and 0.2 < train.mean[0] < 0.4
    small = load_dataset("digits", "test", image_size=16)
    assert small.images.shape == (359, 1, 16, 16) and torch.equal(small.labels, test.labels)


def test_subset_stratified_and_seeded():
    ds = load_dataset("digits", "test")
    sub = ds.subset(50, seed=1)
    assert len(sub) == 50 and torch.bincount(sub.labels, minlength=10).tolist() == [5] * 10
    assert torch.equal(sub.images, ds.subset(50, seed=1).images)
    assert not torch.equal(sub.images, ds.subset(50, seed=2).images)
    assert len(ds.subset(10_000, seed=0)) == len(ds)
    with pytest.raises(DiffnasError, match="at least 1"):
        ds.subset(0, seed=0)


def test_class_subset_keeps_a_share_of_every_class():
    ds = load_dataset("digits", "train")
    sub = ds.class_subset(0.1, seed=1)  # "10 % of each class", not 10 % of the whole
    counts = torch.bincount(ds.labels).tolist()
    assert torch.bincount(sub.labels).tolist() == [round(c * 0.1) for c in counts]
    assert sub.mean == ds.mean and sub.classes == ds.classes
    loaded = load_dataset("digits", "train", class_fraction=0.1, seed=1)
    assert torch.equal(loaded.images, sub.images) and torch.equal(loaded.labels, sub.labels)
    assert not torch.equal(sub.images, ds.class_subset(0.1, seed=2).images)
    with pytest.raises(DiffnasError, match=r"class fraction must be in \(0, 1\]"):
        ds.class_subset(0.0, seed=0)
    with pytest.raises(DiffnasError, match="keeps no image of class"):
        ds.class_subset(0.001, seed=0)
    from diffnas.config import resolve_config

    with pytest.raises(DiffnasError, match=r"class fraction must be in \(0, 1\], got 1.5"):
        resolve_config(None, class_fraction=1.5)


def test_folder_class_fraction_reads_only_the_kept_files(tmp_path, images_read):
    for i in range(10):
        write_png(tmp_path / "cat" / f"{i}.png", (20 * i, 10, 10))
    for i in range(5):
        write_png(tmp_path / "dog" / f"{i}.png", (10, 10, 40 * i))
    full = load_dataset(f"folder:{tmp_path}", "train", image_size=4)  # 8 cats, 4 dogs
    images_read.clear()
    half = load_dataset(f"folder:{tmp_path}", "train", image_size=4, class_fraction=0.5, seed=3)
    assert images_read == [6] and half.labels.tolist() == [0] * 4 + [1] * 2
    ref = full.class_subset(0.5, seed=3)
    assert torch.equal(half.images, ref.images) and torch.equal(half.labels, ref.labels)


def test_unknown_names():
    with pytest.raises(DiffnasError, match=r"unknown dataset 'mnist'.*folder:PATH") as err:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(DiffnasError, match="unknown split 'valid'"):
        load_dataset("digits", "valid")


# --------------------------------------------------------------------------- image folders


def write_png(path: Path, colour, mode: str = "RGB", size=(10, 7)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_folder_random_split(tmp_path):
    for i in range(5):
        write_png(tmp_path / "cat" / f"{i}.png", (200, 10, 10))
        write_png(tmp_path / "dog" / f"{i}.png", (10, 10, 200))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=8)
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=8)
    assert train.classes == ["cat", "dog"] and train.in_channels == 3 and train.flip
    assert train.images.shape == (8, 3, 8, 8) and test.images.shape == (2, 3, 8, 8)
    assert train.labels.tolist() == [0] * 4 + [1] * 4 and test.labels.tolist() == [0, 1]
    assert int(train.images[0, 0, 3, 3]) == 200 and int(train.images[-1, 2, 3, 3]) == 200
    assert train.mean == test.mean and abs(train.mean[1] - 10 / 255) < 1e-3


def test_folder_train_val_layout_greyscale(tmp_path):
    for cls, value in (("a", 30), ("b", 220)):
        for i in range(3):
            write_png(tmp_path / "train" / cls / f"{i}.png", value, mode="L")
        write_png(tmp_path / "val" / cls / "v.png", value, mode="L")
    ds = load_dataset(f"folder:{tmp_path}", "train")
    assert ds.images.shape == (6, 1, 32, 32) and ds.classes == ["a", "b"]
    val = load_dataset(f"folder:{tmp_path}", "test")
    assert val.images.shape == (2, 1, 32, 32) and val.labels.tolist() == [0, 1]
    assert int(val.images[1].min()) == 220


def test_folder_channels_agree_across_splits(tmp_path):
    """Greyscale training images with one colour test image: both splits are RGB."""
    for i in range(4):
        write_png(tmp_path / "train" / "a" / f"{i}.png", 50, mode="L")
    write_png(tmp_path / "test" / "a" / "c.png", (255, 0, 0))
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=4)
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=4)
    assert train.in_channels == 3 and test.in_channels == 3
    assert test.images[0, :, 0, 0].tolist() == [255, 0, 0]


def test_folder_train_only_is_split(tmp_path):
    for i in range(5):
        write_png(tmp_path / "train" / "only" / f"{i}.png", (9, 9, 9))
    assert len(load_dataset(f"folder:{tmp_path}", "train", image_size=4)) == 4
    assert len(load_dataset(f"folder:{tmp_path}", "test", image_size=4)) == 1


def test_folder_errors(tmp_path):
    with pytest.raises(DiffnasError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", (0, 0, 0))
    with pytest.raises(DiffnasError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat'}")
    write_png(tmp_path / "ok" / "cls" / "good.png", (1, 2, 3))
    (tmp_path / "ok" / "cls" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DiffnasError, match="broken.png"):
        load_dataset(f"folder:{tmp_path / 'ok'}")


# --------------------------------------------------------------------------- BatchAugment

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def batch(b=8, h=12, w=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def plain_norm(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_augment_shape_dtype_and_eval_mode():
    x = batch()
    aug = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=4)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    torch.testing.assert_close(aug(x, train=False), plain_norm(x))
    torch.testing.assert_close(BatchAugment(MEAN, STD)(x), plain_norm(x))


def test_augment_flip_exactly_masked_samples():
    x = batch(b=16)
    aug = BatchAugment(MEAN, STD, flip=True)
    out = aug(x, torch.Generator().manual_seed(5))
    mask = aug.draw(16, 12, 12, torch.Generator().manual_seed(5)).flip
    assert 0 < int(mask.sum()) < 16
    expected = torch.where(mask.view(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)
    torch.testing.assert_close(out, plain_norm(expected))


def test_augment_crop_equals_shifted_padded_image():
    x = batch(b=6, h=10, w=9)
    p = 3
    aug = BatchAugment(MEAN, STD, crop_padding=p)
    out = aug(x, torch.Generator().manual_seed(7))
    offsets = aug.draw(6, 10, 9, torch.Generator().manual_seed(7)).offsets
    assert offsets.min() >= 0 and offsets.max() <= 2 * p
    assert len(set(map(tuple, offsets.tolist()))) > 1
    for i in range(6):
        dy, dx = offsets[i].tolist()
        padded = torch.nn.functional.pad(x[i], (p, p, p, p))
        expected = padded[:, dy : dy + 10, dx : dx + 9]
        torch.testing.assert_close(out[i : i + 1], plain_norm(expected.unsqueeze(0)))


def test_augment_cutout_square():
    b, h, w, size = 32, 12, 12, 4
    x = torch.full((b, 3, h, w), 255, dtype=torch.uint8)
    aug = BatchAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), cutout=size)
    out = aug(x, torch.Generator().manual_seed(3))
    centres = aug.draw(b, h, w, torch.Generator().manual_seed(3)).centres
    for i in range(b):
        cy, cx = centres[i].tolist()
        expected = torch.ones(h, w)
        expected[max(0, cy - 2) : max(0, cy + 2), max(0, cx - 2) : max(0, cx + 2)] = 0
        for c in range(3):
            assert torch.equal(out[i, c], expected)
    interior = [(cy, cx) for cy, cx in centres.tolist() if 2 <= cy <= h - 2 and 2 <= cx <= w - 2]
    assert interior  # some squares are whole: exactly size * size zeros
    full = (out[:, 0] == 0).sum(dim=(1, 2))
    assert int(full.max()) == size * size


def test_augment_randomness_per_sample_and_reproducible():
    x = batch(b=1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    aug = BatchAugment(MEAN, STD, crop_padding=4, flip=True, cutout=3)
    a = aug(x, torch.Generator().manual_seed(11))
    b = aug(x, torch.Generator().manual_seed(11))
    c = aug(x, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {tuple(a[i].flatten().tolist()) for i in range(16)}
    assert len(distinct) > 8


def test_augment_rejects_bad_input():
    aug = BatchAugment(MEAN, STD)
    with pytest.raises(DiffnasError, match="uint8"):
        aug(torch.zeros(2, 3, 4, 4))
    with pytest.raises(DiffnasError, match="channels"):
        aug(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DiffnasError, match="one value per channel"):
        BatchAugment((0.5,), (0.2, 0.3))


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("DIFFNAS_REQUIRE_CUDA") != "1",
    reason="needs CUDA (DIFFNAS_REQUIRE_CUDA=1 runs it anyway)")
def test_augment_cuda_matches_cpu():
    x = batch(b=16)
    aug = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=4)
    cpu = aug(x, torch.Generator().manual_seed(4))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(4))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
    jit = BatchAugment(MEAN, STD, flip=True, color_jitter=(0.4, 0.4, 0.4, 0.2))
    cpu = jit(x, torch.Generator().manual_seed(5))
    gpu = jit(x.cuda(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- batching


def test_split_indices_disjoint_and_covering():
    a, b = split_indices(101, 0.5, seed=3)
    assert len(a) == round(101 * 0.5) and len(a) + len(b) == 101
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, _ = split_indices(101, 0.5, seed=3)
    assert torch.equal(a, a2) and not torch.equal(a, split_indices(101, 0.5, seed=4)[0])
    with pytest.raises(DiffnasError, match="between 0 and 1"):
        split_indices(10, 1.5, seed=0)


def test_batch_stream_deterministic_and_resumable():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2)
    labels = torch.arange(50)
    idx, _ = split_indices(50, 0.6, seed=0)  # 30 samples
    stream = BatchStream(images, labels, idx, batch_size=8, seed=1)
    assert len(stream) == 3
    e2 = list(stream.epoch(2))
    again = list(BatchStream(images, labels, idx, batch_size=8, seed=1).epoch(2))
    for (xa, ya), (xb, yb) in zip(e2, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e3 = list(stream.epoch(3))
    assert not torch.equal(torch.cat([y for _, y in e2]), torch.cat([y for _, y in e3]))
    other_seed = list(BatchStream(images, labels, idx, batch_size=8, seed=2).epoch(2))
    assert not torch.equal(e2[0][1], other_seed[0][1])
    for x, y in e2:
        assert x.shape == (8, 1, 2, 2) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # image i carries label i
        assert set(y.tolist()) <= set(idx.tolist())


def test_batch_stream_drop_last_behaviour():
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(10)
    keep = BatchStream(images, labels, None, batch_size=4, seed=0, drop_last=False)
    sizes = [len(y) for _, y in keep.epoch(0)]
    assert len(keep) == 3 and sizes == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in keep.epoch(0)]).tolist()) == list(range(10))
    drop = BatchStream(images, labels, None, batch_size=4, seed=0, drop_last=True)
    assert len(drop) == 2 and [len(y) for _, y in drop.epoch(0)] == [4, 4]
    short = BatchStream(images, labels, [1, 2, 3], batch_size=8, seed=0, drop_last=True)
    assert len(short) == 1 and [len(y) for _, y in short.epoch(0)] == [3]
    with pytest.raises(DiffnasError, match="empty"):
        BatchStream(images, labels, [], batch_size=4, seed=0)


def test_image_dataset_properties():
    ds = ImageDataset(
        name="toy",
        images=torch.zeros(4, 3, 6, 5, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 0, 1]),
        classes=["x", "y"],
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        flip=True,
    )
    assert ds.in_channels == 3 and ds.image_size == 6 and ds.hw == (6, 5) and ds.num_classes == 2


# --------------------------------------------------------------------------- colour jitter
JITTER = (0.4, 0.4, 0.4, 0.2)  # the DARTS-family ImageNet recipes' ColorJitter


def reference_jitter(img: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """One image [3, H, W] in [0, 1], pixel by pixel with colorsys, torchvision's definitions."""
    out = img.double().clone()
    for j in order:
        f = factors[j]
        grey = 0.2989 * out[0] + 0.587 * out[1] + 0.114 * out[2]
        if j == 0:
            out = (f * out).clamp(0, 1)
        elif j == 1:
            out = (f * out + (1 - f) * grey.mean()).clamp(0, 1)
        elif j == 2:
            out = (f * out + (1 - f) * grey).clamp(0, 1)
        else:
            for yy in range(out.shape[1]):
                for xx in range(out.shape[2]):
                    h, s, v = colorsys.rgb_to_hsv(*out[:, yy, xx].tolist())
                    out[:, yy, xx] = torch.tensor(colorsys.hsv_to_rgb((h + f) % 1.0, s, v))
    return out.float()


def test_color_jitter_factors_in_range_and_orders_are_permutations():
    aug = BatchAugment(MEAN, STD, color_jitter=JITTER)
    p = aug.draw(20_000, 4, 4, torch.Generator().manual_seed(0))
    assert p.jitter.shape == (20_000, 4) and p.jitter_order.shape == (20_000, 4)
    bcs, hue = p.jitter[:, :3], p.jitter[:, 3]
    assert bcs.min() >= 0.6 and bcs.max() <= 1.4 and hue.abs().max() <= 0.2
    # uniform: mean at the centre, spread over the whole range
    torch.testing.assert_close(bcs.mean(0), torch.ones(3), atol=0.01, rtol=0)
    assert abs(float(hue.mean())) < 0.005 and bcs.min() < 0.61 and hue.max() > 0.19
    assert torch.equal(p.jitter_order.sort(dim=1).values, torch.arange(4).expand(20_000, 4))
    first = torch.bincount(p.jitter_order[:, 0], minlength=4) / 20_000
    torch.testing.assert_close(first, torch.full((4,), 0.25), atol=0.02, rtol=0)
    # a strength above 1 cannot give a negative factor (torchvision clamps the range at 0)
    strong = BatchAugment(MEAN, STD, color_jitter=(1.5, 0, 0, 0)).draw(
        1000, 4, 4, torch.Generator().manual_seed(1))
    assert strong.jitter[:, 0].min() >= 0 and strong.jitter[:, 0].max() <= 2.5
    assert torch.equal(strong.jitter[:, 1:3], torch.ones(1000, 2))


def test_color_jitter_identity_at_zero_strength_and_at_identity_factors():
    x = batch(b=6)
    off = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=3)
    zero = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=3,
                        color_jitter=(0, 0, 0, 0))
    assert zero.draw(6, 12, 12).jitter is None
    assert torch.equal(off(x, torch.Generator().manual_seed(2)),
                       zero(x, torch.Generator().manual_seed(2)))
    aug = BatchAugment(MEAN, STD, color_jitter=JITTER)
    p = aug.draw(6, 12, 12, torch.Generator().manual_seed(3))
    p.jitter = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(6, 4).clone()
    torch.testing.assert_close(aug.apply(x, p), plain_norm(x), atol=1e-5, rtol=0)
    p.jitter[:, 3] = 1.0  # a full turn of hue
    torch.testing.assert_close(aug.apply(x, p), plain_norm(x), atol=1e-4, rtol=0)


def test_color_jitter_batched_equals_per_image_reference():
    x = batch(b=5, h=5, w=4, seed=7)
    aug = BatchAugment(MEAN, STD, color_jitter=JITTER)
    p = aug.draw(5, 5, 4, torch.Generator().manual_seed(9))
    assert len({tuple(o) for o in p.jitter_order.tolist()}) > 1  # orders differ per sample
    out = aug.apply(x, p)
    for i in range(5):
        ref = reference_jitter(x[i].float() / 255, p.jitter[i].tolist(),
                               p.jitter_order[i].tolist())
        expected = (ref - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)
    # one adjustment alone, including a factor that clips
    solo = BatchAugment((0.0,), (1.0,), color_jitter=(0.9, 0.0, 0.0, 0.0))
    g = torch.full((2, 1, 2, 2), 200, dtype=torch.uint8)
    q = solo.draw(2, 2, 2)
    q.jitter[:, 0] = torch.tensor([1.5, 0.5])
    torch.testing.assert_close(solo.apply(g, q)[:, 0, 0, 0], torch.tensor([1.0, 100 / 255]))


def test_color_jitter_bad_strengths():
    with pytest.raises(DiffnasError, match="four strengths"):
        BatchAugment(MEAN, STD, color_jitter=(0.4, 0.4, 0.4))
    with pytest.raises(DiffnasError, match="hue <= 0.5"):
        BatchAugment(MEAN, STD, color_jitter=(0.4, 0.4, 0.4, 0.6))
    with pytest.raises(DiffnasError, match="need RGB"):
        BatchAugment((0.5,), (0.2,), color_jitter=(0.4, 0.4, 0.4, 0.0))
    BatchAugment((0.5,), (0.2,), color_jitter=(0.4, 0.4, 0, 0))  # grey: brightness, contrast
