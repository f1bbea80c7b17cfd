"""A multilayer perceptron on flattened images: the encoder that stacked RBMs initialise.

``get_model("mlp", hidden=(500, 500))``: Dense layers ``dense0``, ``dense1``, ...
of the given widths, each followed by ``activation`` (sigmoid, as in a deep
belief net's up-pass, or relu); the last layer's activations are the features.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": jnp.tanh}


def layer_key(path: tuple[str, ...]) -> tuple[int, int]:
    """One layer per Dense (see ``models.layer_ids``)."""
    return (int(path[0].removeprefix("dense")), 0)


class Model(nn.Module):
    variant: str | None = None
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "sigmoid"

    @property
    def num_features(self) -> int:
        return self.hidden[-1]

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"mlp activation must be one of {sorted(ACTIVATIONS)}")
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            x = ACTIVATIONS[self.activation](nn.Dense(width, name=f"dense{i}")(x))
        return x
