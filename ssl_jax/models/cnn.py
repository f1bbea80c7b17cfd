"""A small conv net for tiny images (MNIST-sized 28x28, but any small input works).

It is the default backbone for pretraining on a CPU-only machine, so it is
designed around measured CPU cost rather than depth: the first conv already has
stride 2 (its 3x3 kernel still sees every input pixel), because on 2 CPU cores
convs at full 28x28 resolution with >=32 channels dominated the step time
(a forward+backward at batch 512 took ~0.5-0.9 s with them, ~0.16 s without).

Layout (C0-C1-C2 = channels of the variant, small: 32-64-128, base: 64-128-256):
  3x3 conv C0, stride 2             (H/2 x W/2)
  3x3 conv C0
  3x3 conv C1, stride 2             (H/4 x W/4)
  3x3 conv C2
  global average pool -> D = C2
  or, with dense_dim > 0: flatten -> Dense(dense_dim) -> D = dense_dim
Every conv (and the dense layer) is followed by BatchNorm and ReLU.

Global pooling discards where a stroke is, which is much of what tells digits
apart; the dense variant keeps the layout (the default MNIST recipe uses it).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.kernels import onednn
from ssl_jax.models.batchnorm import BatchNorm

# Variant -> channels (C0, C1, C2); the last is the feature dim.
VARIANTS: dict[str, tuple[int, int, int]] = {
    "small": (32, 64, 128),
    "base": (64, 128, 256),
}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def layer_key(path: tuple[str, ...]) -> tuple[int, int]:
    """conv0+bn0, ..., conv3+bn3, then the dense layer (see ``models.layer_ids``)."""
    name = path[0]
    if name.startswith(("conv", "bn")) and name[-1].isdigit():
        return (0, int(name[-1]))
    return (1, 0)


class Model(nn.Module):
    """Small CNN: images [B, H, W, C] -> features [B, D], D = 128 (small) or 256 (base)."""

    variant: str | None = "small"
    dense_dim: int = 0  # > 0: flatten the last feature map into a dense layer of this width
    # > 0: resize the last feature map to dense_grid x dense_grid before the dense
    # layer, so one network takes inputs of any size (DINO's smaller local crops).
    dense_grid: int = 0
    dtype: Any = jnp.float32

    @property
    def channels(self) -> tuple[int, int, int]:
        v = "small" if self.variant is None else self.variant
        if v not in VARIANTS:
            raise ValueError(f"Unknown cnn variant {v!r}; choose from {sorted(VARIANTS)}.")
        return VARIANTS[v]

    @property
    def num_features(self) -> int:
        return self.dense_dim or self.channels[-1]

    @nn.compact
    def __call__(self, x, train: bool = False):
        c0, c1, c2 = self.channels
        # (channels, stride) of each conv layer.
        layers = [(c0, 2), (c0, 1), (c1, 2), (c2, 1)]
        x = x.astype(self.dtype)
        for i, (features, stride) in enumerate(layers):
            x = nn.Conv(
                features,
                (3, 3),
                strides=(stride, stride),
                padding=((1, 1), (1, 1)),
                use_bias=False,  # BatchNorm's bias makes a conv bias redundant.
                kernel_init=conv_init,
                dtype=self.dtype,
                conv_general_dilated=onednn.conv_general_dilated,  # XLA's unless cpu_conv=onednn
                name=f"conv{i}",
            )(x)
            x = BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                name=f"bn{i}",
            )(x)
            x = nn.relu(x)
        if not self.dense_dim:
            return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        g = self.dense_grid
        if g and x.shape[1:3] != (g, g):
            x = jax.image.resize(x, (x.shape[0], g, g, x.shape[3]), "linear", antialias=True)
        x = nn.Dense(self.dense_dim, use_bias=False, dtype=self.dtype, name="dense")(
            x.reshape(x.shape[0], -1)
        )
        x = BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            name="bn_dense",
        )(x)
        return nn.relu(x).astype(jnp.float32)
