"""Frozen features for evaluation: one jitted encode over fixed-size, sharded batches."""

import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.data.loader import batched


class Embedder:
    def __init__(self, objective, pp_eval, mesh, *, batch_size: int = 1024):
        n = mesh.devices.size
        self.batch_size = max(n, batch_size // n * n)
        self.mesh = mesh

        def encode(params, model_state, images):
            x = pp_eval(jax.random.PRNGKey(0), images)  # eval recipes are deterministic
            return objective.encode(params, model_state, x)

        self._encode = jax.jit(encode, out_shardings=parallel.data_sharded(mesh))

    def __call__(self, params, model_state, images: np.ndarray) -> np.ndarray:
        out = []
        for idx, valid in batched(len(images), self.batch_size):
            local = images[idx][parallel.process_slice(self.batch_size)]
            x = parallel.put_global_batch(local, self.mesh)
            out.append(parallel.to_host(self._encode(params, model_state, x))[:valid])
        return np.concatenate(out).astype(np.float32)
