"""The ViT's attention core fused in C++ on the CPU backend (``config.cpu_attention``).

XLA's CPU backend runs the core softmax(q kᵀ/√d) v as batched matmuls of many
small per-(image, head) products, a softmax between them, and the backward's
four more products, each a pass over memory. ``attention.cc`` (next to this
file) does one (image, head) pair start to end in cache instead: the forward
pass keeps only each row's log-sum-exp for the backward, which recomputes the
weights from it (as flash attention does). Pairs are spread over the cores
with OpenMP. Measurements: experiments/bench/RESULTS.md.

``configure("fused")`` builds it once with the system's C++ compiler
(ssl_jax/kernels/native.py; no other dependency) and registers it for the CPU.
``"auto"`` (the config's default) does so where JAX's backend is the CPU and
falls back to XLA, with a note, where it cannot be built. ``attention_core``
then sends float32 cores to it when JAX's backend is the CPU with a single
device (several devices stay with XLA: the custom calls have no partitioning
rule, so XLA would gather a sharded batch onto every device). The choice is
made when a function is traced: call ``configure`` before tracing the models
(``ssl_jax.cli`` does, from the config).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.kernels import native

_KERNEL = native.FusedKernel(
    "cpu_attention",
    "attention.cc",
    ("AttentionFwd", "AttentionBwd"),
    "fused attention kernels",
    "XLA's attention",
)
MODES, TARGETS, SOURCE = _KERNEL.MODES, _KERNEL.targets, _KERNEL.source
_state = _KERNEL.state
build, load, configure = _KERNEL.build, _KERNEL.load, _KERNEL.configure
mode, runs_on, _route = _KERNEL.mode, _KERNEL.runs_on, _KERNEL.route


def xla_core(q, k, v):
    """softmax(q kᵀ/√d) v per head, in XLA; q [batch, q_tokens, heads, head_dim],
    k and v [batch, k_tokens, heads, head_dim]."""
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _scale(q) -> np.float32:
    return np.float32(1.0 / np.sqrt(q.shape[-1]))


def _fwd_call(q, k, v):
    b, lq, h, _ = q.shape
    out = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq), q.dtype))
    return jax.ffi.ffi_call("AttentionFwd", out)(q, k, v, scale=_scale(q))


@jax.custom_vjp
def fused_core(q, k, v):
    """``xla_core`` computed by the C++ kernels (float32, CPU)."""
    return _fwd_call(q, k, v)[0]


def _fused_fwd(q, k, v):
    o, lse = _fwd_call(q, k, v)
    return o, (q, k, v, o, lse)


def _fused_bwd(res, g):
    q, k, v, o, lse = res
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    return tuple(jax.ffi.ffi_call("AttentionBwd", shapes)(q, k, v, o, lse, g, scale=_scale(q)))


fused_core.defvjp(_fused_fwd, _fused_bwd)


def attention_core(q, k, v):
    """softmax(q kᵀ/√d) v per head: fused in C++ where configured and possible, else XLA."""
    same = q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:] and k.shape == v.shape
    if _route() and same and all(x.dtype == np.float32 for x in (q, k, v)) and q.shape[0] > 0:
        return fused_core(q, k, v)
    return xla_core(q, k, v)
