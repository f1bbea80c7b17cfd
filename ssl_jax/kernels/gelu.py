"""The ViT MLP's bias add and GELU fused in C++ on the CPU backend (``config.cpu_gelu``).

After the MLP's first dense layer, XLA's CPU backend adds the bias and applies
the tanh-approximated GELU in two passes over the [rows, mlp] activations
(each reading them), and its backward in one more pass plus a tree of partial
sums for the bias gradient; each pass is 12.6 MB per ViT-Ti block at batch
256. ``gelu.cc`` (next to this file) reads them once in the forward and once
in the backward, where it also sums the bias gradient.
Measurements: experiments/bench/RESULTS.md.

``configure("fused")`` builds it once with the system's C++ compiler
(ssl_jax/kernels/native.py; no other dependency) and registers it for the CPU.
``"auto"`` (the config's default) does so where JAX's backend is the CPU and
falls back to XLA, with a note, where it cannot be built. ``bias_gelu`` then
sends float32 arrays to it when JAX's backend is the CPU with a single device
(several devices stay with XLA: the custom calls have no partitioning rule).
The choice is made when a function is traced: call ``configure`` before
tracing the models (``ssl_jax.cli`` does, from the config).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from ssl_jax.kernels import native

_KERNEL = native.FusedKernel(
    "cpu_gelu", "gelu.cc", ("BiasGeluFwd", "BiasGeluBwd"), "fused GELU kernels", "XLA's GELU"
)
MODES, TARGETS, SOURCE = _KERNEL.MODES, _KERNEL.targets, _KERNEL.source
_state = _KERNEL.state
build, load, configure = _KERNEL.build, _KERNEL.load, _KERNEL.configure
mode, runs_on, _route = _KERNEL.mode, _KERNEL.runs_on, _KERNEL.route


@jax.custom_vjp
def fused_bias_gelu(y, b):
    """``nn.gelu(y + b)`` (tanh approximation) computed by the C++ kernels
    (float32, CPU); y [..., d], b [d]."""
    return jax.ffi.ffi_call("BiasGeluFwd", jax.ShapeDtypeStruct(y.shape, y.dtype))(y, b)


def _fused_fwd(y, b):
    return fused_bias_gelu(y, b), (y, b)


def _fused_bwd(res, g):
    y, b = res
    shapes = (jax.ShapeDtypeStruct(y.shape, y.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
    return tuple(jax.ffi.ffi_call("BiasGeluBwd", shapes)(y, b, g))


fused_bias_gelu.defvjp(_fused_fwd, _fused_bwd)


def bias_gelu(y, b):
    """``nn.gelu(y + b)``: fused in C++ where configured and possible, else XLA's."""
    if (
        _route()
        and y.dtype == np.float32
        and b.dtype == np.float32
        and b.shape == y.shape[-1:]
        and y.size > 0
    ):
        return fused_bias_gelu(y, b)
    return nn.gelu(y + b)
