"""Frozen features for evaluation: one jitted encode over fixed-size, sharded batches."""

import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.data.loader import batched


class Embedder:
    """``objective.encode`` over ``pp_eval`` of many images, batch by batch.

    ``indexed``: ``objective.encode`` also receives each row's position in the
    images passed in (int32 [B]), so per-item randomness can be keyed on the
    item rather than on its place in a batch.
    """

    def __init__(self, objective, pp_eval, mesh, *, batch_size: int = 1024, indexed: bool = False):
        n = mesh.devices.size
        self.batch_size = max(n, batch_size // n * n)
        self.mesh = mesh
        self.indexed = indexed

        def encode(params, model_state, images, *index):
            x = pp_eval(jax.random.PRNGKey(0), images)  # eval recipes are deterministic
            return objective.encode(params, model_state, x, *index)

        self._encode = jax.jit(encode, out_shardings=parallel.data_sharded(mesh))

    def __call__(self, params, model_state, images: np.ndarray) -> np.ndarray:
        out = []
        rows = parallel.process_slice(self.batch_size)
        for idx, valid in batched(len(images), self.batch_size):
            local = [images[idx][rows]] + ([idx[rows].astype(np.int32)] if self.indexed else [])
            args = parallel.put_global_batch(local, self.mesh)
            out.append(parallel.to_host(self._encode(params, model_state, *args))[:valid])
        return np.concatenate(out).astype(np.float32)
