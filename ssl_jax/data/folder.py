"""Reading an image-folder dataset into uint8 arrays.

Layout: ``ROOT/<class_name>/<image>`` plus an optional ``ROOT/unlabeled/<image>``
(label -1). If ROOT has both ``train/`` and ``test/`` subfolders, each is laid out
like that and becomes the split of the same name; otherwise everything is train.

Real folders collected by hand contain broken files, so an unreadable image is
skipped and reported rather than aborting a long run; only "nothing readable at
all" is an error.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
UNLABELED_DIR = "unlabeled"
# Modes whose pixels carry a single intensity value: such images are stored with
# one channel, and a dataset made only of them stays single-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "F"})


def _subdirs(path: str) -> list[str]:
    # Hidden folders (.git, .ipynb_checkpoints, ...) are never classes.
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(path: str) -> tuple[list[str], int]:
    """Image files directly inside `path`, sorted for determinism; also counts the rest."""
    files, ignored = [], 0
    for e in os.scandir(path):
        if not e.is_file():
            continue
        if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            files.append(e.name)
        elif not e.name.startswith("."):
            ignored += 1
    return sorted(files), ignored


def _read_image(path: str, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """Decodes one file to uint8 [H, W, 1 or 3]; raises on any problem with the file."""
    # verify() catches structural corruption cheaply, but it leaves the image
    # unusable, so the file is opened again and fully decoded: load() is what
    # notices truncated pixel data.
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        gray = im.mode in _GRAY_MODES
        if channels == 1 or (channels is None and gray):
            im = im.convert("L")
        else:
            im = im.convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def read_folder(
    path: str, *, image_size: int | None = None, channels: int | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], list[str], dict]:
    """Returns ({split: (images, labels, ids)}, class_names, report).

    `image_size=None` takes the (width, height) of the first readable image in
    sorted order and resizes every other image to it, because the result is one
    dense array. `channels=None` gives RGB unless every image is grayscale.
    Ids are file paths relative to `path`, with '/' separators.
    """
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"image folder {path!r} does not exist or is not a directory "
            f"(expected {path}/<class_name>/<image files>)"
        )
    top = _subdirs(root)
    split_dirs = (
        {"train": "train", "test": "test"} if {"train", "test"} <= set(top) else {"train": ""}
    )
    # Class names are taken over all splits so that a label index means the
    # same class in train and test even if a class folder is missing in one.
    class_names = sorted(
        {
            d
            for s in split_dirs.values()
            for d in _subdirs(os.path.join(root, s))
            if d != UNLABELED_DIR
        }
    )
    size = None if image_size is None else (image_size, image_size)
    skipped, reasons, num_ignored = [], {}, 0
    result, per_class_train = {}, np.zeros(len(class_names), np.int64)
    for split, sub in split_dirs.items():
        images, labels, ids = [], [], []
        sources = [(i, n) for i, n in enumerate(class_names)] + [(-1, UNLABELED_DIR)]
        for label, dirname in sources:
            folder = os.path.join(root, sub, dirname)
            if not os.path.isdir(folder):
                continue
            files, ignored = _image_files(folder)
            num_ignored += ignored
            for fname in files:
                rel = "/".join(p for p in (sub, dirname, fname) if p)
                try:
                    arr = _read_image(os.path.join(folder, fname), size, channels)
                except Exception as e:  # noqa: BLE001 -- any decoder failure means "skip it"
                    skipped.append(rel)
                    reasons[rel] = f"{type(e).__name__}: {e}"
                    continue
                if size is None:
                    size = (arr.shape[1], arr.shape[0])
                images.append(arr)
                labels.append(label)
                ids.append(rel)
                if split == "train" and label >= 0:
                    per_class_train[label] += 1
        result[split] = (images, np.asarray(labels, np.int32), np.asarray(ids, dtype=str))
    if size is None:
        raise ValueError(
            f"no readable image found in folder {path!r} (expected {path}/<class_name>/<image> "
            f"or {path}/unlabeled/<image>, extensions {sorted(IMAGE_EXTENSIONS)}; "
            f"{len(skipped)} file(s) could not be decoded)"
        )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) in {root}, e.g. {skipped[0]!r} "
            f"({reasons[skipped[0]]}); full list in Dataset.report['skipped_files']",
            stacklevel=3,
        )
    all_arrays = [a for imgs, _, _ in result.values() for a in imgs]
    num_channels = channels or (1 if all(a.shape[-1] == 1 for a in all_arrays) else 3)
    shape = (size[1], size[0], num_channels)
    out = {}
    for split, (imgs, labels, ids) in result.items():
        stacked = np.empty((len(imgs), *shape), np.uint8)
        for i, a in enumerate(imgs):
            # A grayscale file in an otherwise colour dataset becomes gray RGB.
            stacked[i] = a if a.shape[-1] == num_channels else np.repeat(a, num_channels, -1)
        out[split] = (stacked, labels, ids)
    out.setdefault(
        "test", (np.empty((0, *shape), np.uint8), np.empty(0, np.int32), np.empty(0, str))
    )
    report = {
        "source": "folder",
        "root": root,
        "skipped_files": skipped,
        "num_skipped": len(skipped),
        "skip_reasons": reasons,
        "empty_classes": [n for n, c in zip(class_names, per_class_train, strict=True) if c == 0],
        "num_ignored_files": num_ignored,
    }
    return out, class_names, report
