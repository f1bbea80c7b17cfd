"""The ViT's LayerNorm fused in C++ on the CPU backend (``config.cpu_layernorm``).

XLA's CPU backend computes a LayerNorm over the last axis as row reductions
and element-wise passes, saving several arrays of the input's size for the
backward, whose parameter gradients are trees of partial sums. ``layernorm.cc``
(next to this file) does each row whole while it is in cache: the forward
reads x once and writes y with each row's mean and 1/std; the backward reads x
and dy once, writes dx, and sums the scale and bias gradients on the way.
Measurements: experiments/bench/RESULTS.md.

``configure("fused")`` builds it once with the system's C++ compiler
(ssl_jax/kernels/native.py; no other dependency) and registers it for the CPU.
``"auto"`` (the config's default) does so where JAX's backend is the CPU and
falls back to XLA, with a note, where it cannot be built. ``LayerNorm`` (flax's
module, same parameters) then sends float32 inputs to it when JAX's backend is
the CPU with a single device (several devices stay with flax's: the custom
calls have no partitioning rule).
The choice is made when a function is traced: call ``configure`` before
tracing the models (``ssl_jax.cli`` does, from the config).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from ssl_jax.kernels import native

_KERNEL = native.FusedKernel(
    "cpu_layernorm",
    "layernorm.cc",
    ("LayerNormFwd", "LayerNormBwd"),
    "fused LayerNorm kernels",
    "XLA's LayerNorm",
)
MODES, TARGETS, SOURCE = _KERNEL.MODES, _KERNEL.targets, _KERNEL.source
_state = _KERNEL.state
build, load, configure = _KERNEL.build, _KERNEL.load, _KERNEL.configure
mode, runs_on, _route = _KERNEL.mode, _KERNEL.runs_on, _KERNEL.route


def _fwd_call(x, scale, bias, epsilon):
    rows = jax.ShapeDtypeStruct(x.shape[:-1], x.dtype)
    out = (jax.ShapeDtypeStruct(x.shape, x.dtype), rows, rows)
    return jax.ffi.ffi_call("LayerNormFwd", out)(x, scale, bias, eps=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_layer_norm(x, scale, bias, epsilon):
    """flax's ``nn.LayerNorm`` over the last axis, (x − mean)/√(var + ε)·scale +
    bias, computed by the C++ kernels (float32, CPU); x [..., d], scale and
    bias [d]. The variance is taken about the mean (two passes over the row in
    cache), where flax takes E[x²] − E[x]²: they differ by rounding only."""
    return _fwd_call(x, scale, bias, epsilon)[0]


def _fused_fwd(x, scale, bias, epsilon):
    y, mean, rstd = _fwd_call(x, scale, bias, epsilon)
    return y, (x, scale, mean, rstd)


def _fused_bwd(epsilon, res, dy):
    x, scale, mean, rstd = res
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, scale, scale))
    return tuple(jax.ffi.ffi_call("LayerNormBwd", shapes)(x, scale, mean, rstd, dy))


fused_layer_norm.defvjp(_fused_fwd, _fused_bwd)


class LayerNorm(nn.LayerNorm):
    """flax's ``nn.LayerNorm`` (same attributes, parameters and function), run by
    the C++ kernels where configured and possible: over the last axis with
    scale and bias, float32 throughout, on a single CPU device. Anything else
    is flax's own."""

    @nn.compact
    def __call__(self, x, *, mask=None):
        fused = (
            _route()
            and mask is None
            and self.reduction_axes == -1
            and self.feature_axes == -1
            and self.use_scale
            and self.use_bias
            and self.axis_name is None
            and x.dtype == np.float32
            and self.param_dtype == np.float32
            and (self.dtype is None or self.dtype == np.float32)
            and x.size > 0
        )
        if not fused:
            return super().__call__(x, mask=mask)
        features = (x.shape[-1],)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        return fused_layer_norm(x, scale, bias, self.epsilon)
