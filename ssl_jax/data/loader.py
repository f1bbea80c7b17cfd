"""Global batches from in-memory uint8 arrays, with a checkpointable position.

The host only gathers uint8 rows; augmentation happens on device inside the
jitted step. The order is a pure function of (seed, position): batch ``b``
comes from epoch ``b // batches_per_epoch`` of a permutation seeded by
(seed, epoch). Saving the integer position is therefore enough to resume the
exact batch sequence.

With few labels, a random batch of the pool holds almost none of them (100
labels in 55,000 images: half a labelled item per batch of 256). Objectives
that learn from labels therefore ask for ``labelled_per_batch`` rows of each
batch to come from a separate stream over the labelled items: cycled
permutations, optionally class-balanced (every run of ``num_classes``
consecutive stream items holds one item of each class). That stream is also a
pure function of (seed, position).
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
        labels: np.ndarray | None = None,
        labelled_per_batch: int = 0,
        balanced: bool = False,
    ):
        """Args:
        arrays: name → array with one row per item; every batch holds the same rows of each.
        labels: [N] int labels, -1 = unlabelled; needed for ``labelled_per_batch``.
        labelled_per_batch: rows of each batch drawn from the labelled items
          (the rest come from the shuffled pool, labelled items included).
        balanced: draw the labelled rows evenly across classes.
        """
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        parallel.check_batch_size(batch_size, mesh)
        if not 0 <= labelled_per_batch <= batch_size:
            raise ValueError(f"labelled_per_batch={labelled_per_batch} not in [0, {batch_size}]")
        self.pool_per_batch = batch_size - labelled_per_batch
        if self.n < self.pool_per_batch:
            raise ValueError(f"batch size {self.pool_per_batch} is larger than the {self.n} items")
        self.batch_size = batch_size
        self.labelled_per_batch = labelled_per_batch
        self.mesh = mesh
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        # The remainder is dropped each epoch.
        self.batches_per_epoch = self.n // self.pool_per_batch if self.pool_per_batch else 1
        self._perms: dict[tuple, np.ndarray] = {}
        self.groups: list[np.ndarray] = []
        if labelled_per_batch:
            if labels is None:
                raise ValueError("labelled_per_batch needs the items' labels")
            known = np.flatnonzero(np.asarray(labels) >= 0)
            if not len(known):
                raise ValueError("labelled_per_batch > 0, but no item carries a label")
            if balanced:
                self.groups = [known[labels[known] == c] for c in np.unique(labels[known])]
            else:
                self.groups = [known]

    def _perm(self, key: tuple, n: int) -> np.ndarray:
        if key not in self._perms:
            if len(self._perms) > 64:  # only the current epochs are ever needed again
                self._perms.clear()
            rng = np.random.default_rng([self.seed, *key])
            self._perms[key] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._perms[key]

    def _labelled_stream(self, start: int, stop: int) -> np.ndarray:
        """Items at positions [start, stop) of the labelled stream: slot t takes
        group ``t % G``, whose own permutations cycle independently."""
        g = len(self.groups)
        out = np.empty(stop - start, np.int64)
        for j, t in enumerate(range(start, stop)):
            group_id, r = t % g, t // g
            members = self.groups[group_id]
            epoch, i = divmod(r, len(members))
            out[j] = members[self._perm((1, group_id, epoch), len(members))[i]]
        return out

    def indices(self, position: int) -> np.ndarray:
        idx = np.empty(0, np.int64)
        if self.pool_per_batch:
            epoch, i = divmod(position, self.batches_per_epoch)
            b = self.pool_per_batch
            idx = self._perm((epoch,), self.n)[i * b : (i + 1) * b]
        if self.labelled_per_batch:
            k = self.labelled_per_batch
            idx = np.concatenate([idx, self._labelled_stream(position * k, (position + 1) * k)])
        return idx

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
