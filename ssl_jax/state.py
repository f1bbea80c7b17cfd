"""The training state: one pytree that is checkpointed whole."""

from typing import Any

import jax
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything a step reads and writes.

    ``model_state`` holds the non-parameter collections (BatchNorm statistics)
    and any method state (EMA teacher, DINO center) so that objectives keep
    their state here, updated inside the jitted step, never in Python objects.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, params, model_state, tx, rng):
        import jax.numpy as jnp

        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=tx.init(params),
            rng=rng,
            tx=tx,
        )

    def apply_gradients(self, grads, **changes):
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)
