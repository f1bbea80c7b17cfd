"""Global batches from in-memory uint8 arrays, with a checkpointable position.

The host only gathers uint8 rows; augmentation happens on device inside the
jitted step. The order is a pure function of (seed, position): batch ``b``
comes from epoch ``b // batches_per_epoch`` of a permutation seeded by
(seed, epoch). Saving the integer position is therefore enough to resume the
exact batch sequence.
"""

import numpy as np

from ssl_jax import parallel


class Loader:
    def __init__(
        self,
        arrays: dict,
        batch_size: int,
        mesh,
        *,
        seed: int = 0,
        shuffle: bool = True,
        position: int = 0,
    ):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if self.n < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the {self.n} items")
        parallel.check_batch_size(batch_size, mesh)
        self.batch_size = batch_size
        self.mesh = mesh
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self.batches_per_epoch = self.n // batch_size  # the remainder is dropped each epoch
        self._perm_epoch, self._perm = None, None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, position: int) -> np.ndarray:
        epoch, i = divmod(position, self.batches_per_epoch)
        return self._order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = self.indices(self.position)[parallel.process_slice(self.batch_size)]
        self.position += 1
        local = {k: v[idx] for k, v in self.arrays.items()}
        return parallel.put_global_batch(local, self.mesh)


def batched(n: int, batch_size: int):
    """Fixed-size index batches covering range(n); the last is padded by repeating
    index 0, and ``valid`` counts its real rows (so jitted functions see one shape)."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = len(idx)
        if valid < batch_size:
            idx = np.concatenate([idx, np.zeros(batch_size - valid, idx.dtype)])
        yield idx, valid
