"""Heads that sit on top of backbone features [B, D].

``ProjectionHead`` is the SimCLR-style MLP used by contrastive / siamese
objectives; ``LinearClassifier`` is the probe / fine-tuning classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectionHead(nn.Module):
    """(Dense -> BN -> ReLU) x (num_layers - 1), then Dense to ``out_dim``.

    The output layer has no BatchNorm, as in SimCLR v1: the objective applies its
    own normalisation (e.g. L2 for the contrastive loss). With ``num_layers=1`` the
    head is a single linear projection.
    """

    hidden_dim: int = 2048
    out_dim: int = 128
    num_layers: int = 2
    use_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            # A bias is redundant when BatchNorm (which has its own shift) follows.
            x = nn.Dense(
                self.hidden_dim, use_bias=not self.use_bn, dtype=self.dtype, name=f"fc{i}"
            )(x)
            if self.use_bn:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype,
                    name=f"bn{i}",
                )(x)
            x = nn.relu(x)
        x = nn.Dense(self.out_dim, dtype=self.dtype, name=f"fc{self.num_layers - 1}")(x)
        return x.astype(jnp.float32)


class LinearClassifier(nn.Module):
    """A single Dense layer with zero-initialised weights and bias.

    Zero init makes the initial logits exactly zero (uniform predictions), so the
    first gradient steps depend only on the features, not on a random readout.
    """

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # Accepted so all modules share one call signature.
        x = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="fc",
        )(x.astype(self.dtype))
        return x.astype(jnp.float32)


class DINOHead(nn.Module):
    """DINO's projection head (https://arxiv.org/abs/2104.14294, Sec. 3.1 and App.):
    an MLP of ``num_layers`` Dense layers (GELU between them) down to
    ``bottleneck_dim``, L2 normalisation, then a weight-normalised linear layer
    without bias to ``out_dim`` prototypes.

    With ``norm_last_layer`` the weight norm's gain is fixed at 1, so every
    prototype is a unit vector (the paper's default for stability); otherwise
    the gain is learned, initialised at 1.
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    norm_last_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02))
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.gelu(nn.Dense(self.hidden_dim, name=f"fc{i}", **dense)(x))
        x = nn.Dense(self.bottleneck_dim, name=f"fc{self.num_layers - 1}", **dense)(x)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))
        v = self.param(
            "last_v", nn.initializers.truncated_normal(0.02), (self.bottleneck_dim, self.out_dim)
        )
        w = v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True))
        if not self.norm_last_layer:
            w = w * self.param("last_g", nn.initializers.ones, (self.out_dim,))
        return x @ w
