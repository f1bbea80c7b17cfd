"""The ViT MLP's bias add and GELU fused in C++ on the CPU backend (``config.cpu_gelu``).

After the MLP's first dense layer, XLA's CPU backend adds the bias and applies
the tanh-approximated GELU in two passes over the [rows, mlp] activations
(each reading them), and its backward in one more pass plus a tree of partial
sums for the bias gradient. On this machine those arrays (12.6 MB per ViT-Ti
block at batch 256) come from memory, not cache, so the passes cost more than
the arithmetic. ``gelu.cc`` (next to this file) reads them once in the
forward and once in the backward, where it also sums the bias gradient.
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

import os

import flax.linen as nn
import jax
import numpy as np

from ssl_jax.kernels import native

MODES = ("auto", "xla", "fused")
TARGETS = ("BiasGeluFwd", "BiasGeluBwd")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gelu.cc")

_state = {"mode": "xla", "lib": None}


def build(force: bool = False) -> str:
    """Compiles gelu.cc (once; again with ``force``) and returns the .so path."""
    args = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
    return native.build_library("gelu", SOURCE, args, "fused GELU kernels", force)


def load() -> None:
    """Builds if needed, loads, and registers the FFI handlers (once per process)."""
    if _state["lib"] is None:
        _state["lib"] = native.register(build(), TARGETS)


def configure(mode: str) -> str:
    """Selects who runs the MLP's bias add and GELU on the CPU and returns it:
    "fused" (raises ``native.Unavailable`` if it cannot be built or loaded),
    "xla", or "auto": fused where JAX's backend is the CPU and it loads, else
    XLA (saying why on stderr)."""
    return native.configure("cpu_gelu", MODES, mode, _state, load, "XLA's GELU")


def mode() -> str:
    return _state["mode"]


def runs_on() -> str:
    """Who runs the bias add and GELU now: "fused" or "xla"."""
    return "fused" if _route() else "xla"


def _route() -> bool:
    return _state["mode"] == "fused" and native.single_cpu_device()


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
