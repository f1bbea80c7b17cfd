"""BatchNorm over the last axis whose per-channel sums are matrix products.

Same function, parameters ("scale", "bias") and batch statistics ("mean",
"var") as ``flax.linen.BatchNorm`` with its defaults (biased variance as
E[x²] − E[x]², clipped at 0; statistics in float32), so checkpoints of either
load in the other. What differs is how the sums over the batch and spatial
axes are computed on the CPU: as products with a vector of ones,
``ones[M] · x[M, C]``, in the forward pass and in a hand-written backward
(on GPU/TPU, the same backward with XLA's reductions). XLA's CPU backend runs
such a reduction over the leading axes at about a third of the speed of the
same sum as a matrix-vector product, and flax's BatchNorm made ~42% of the
ResNet-18 encoder's training time on the CPU
(experiments/bench/RESULTS.md, "BatchNorm's reductions"). On a batch
sharded over a mesh the products are partial sums that XLA all-reduces, as
it does for a reduction.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _colsum(a):
    """Per-column sums of a [M, C] array: ones[M] · a on the CPU (full float32
    precision), XLA's reduction elsewhere."""
    if jax.default_backend() != "cpu":
        return jnp.sum(a, axis=0)
    return jnp.dot(jnp.ones((a.shape[0],), a.dtype), a, precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x, scale, bias, epsilon):
    """Normalises x [M, C] with its own per-column mean and variance; returns
    (y, mean, var). float32."""
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
    m = x.shape[0]
    mean = _colsum(x) / m
    var = jnp.maximum(_colsum(x * x) / m - mean * mean, 0.0)
    rstd = lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _backward(epsilon, res, cotangents):
    x, mean, rstd, scale = res
    dy, dmean, dvar = cotangents
    m = x.shape[0]
    dbias = _colsum(dy)
    xhat = (x - mean) * rstd
    dscale = _colsum(dy * xhat)  # centred: no cancellation where |mean| ≫ std
    dx = (scale * rstd) * (dy - (dbias + xhat * dscale) / m)
    # The statistics' own cotangents (zero when only y reaches the loss).
    dx = dx + (dmean + 2.0 * dvar * (x - mean)) / m
    return dx, dscale, dbias


batch_norm.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis (see the module docstring)."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_ra = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if use_ra:
            y = (x32 - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        else:
            y, mean, var = batch_norm(x32.reshape(-1, c), scale, bias, self.epsilon)
            y = y.reshape(x.shape)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype or jnp.result_type(x.dtype, jnp.float32))
