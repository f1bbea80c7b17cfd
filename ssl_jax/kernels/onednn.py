"""Convolutions through oneDNN on the CPU backend (``config.cpu_conv``).

XLA's CPU backend runs convolutions through Eigen. oneDNN, the library PyTorch
uses on the CPU, ran the 3×3 layers of ResNet-18's first three stages
1.1–1.2× faster forward and 1.4–2.5× faster for the kernel gradient on a
2-core machine, and whole SimCLR steps 1.3–1.45× faster
(experiments/bench/RESULTS.md). On the last stage's 4×4×512 maps it was
slower (0.75–0.88× XLA's), so convolutions with output maps of at most
``XLA_MAX_PIXELS`` pixels and at least ``XLA_MIN_FEATURES`` channels stay
with XLA.

How it works:
  * ``onednn_conv.cc`` (next to this file) defines three XLA FFI handlers: the
    forward convolution, the gradient with respect to the input and the one with
    respect to the kernel, for float32 NHWC inputs and HWIO kernels.
  * ``build()`` compiles it once with the system's C++ compiler (``$CXX``, else
    ``g++``/``c++``) against jaxlib's FFI headers and the oneDNN wheels
    (``onednn-cpu-gomp``, ``onednn-devel-cpu-gomp``; requirements.txt), into
    ``$SSL_JAX_CACHE_DIR`` (default ``~/.cache/ssl_jax``). The file name carries
    a hash of the source and the versions, so a change rebuilds it.
  * ``configure("onednn")`` builds and loads it and registers the handlers for
    the CPU platform. ``"auto"`` (the config's default) does so where JAX's
    backend is the CPU, and falls back to XLA, with a note, where it cannot.
  * ``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature (what
    ``flax.linen.Conv`` accepts). Once configured for oneDNN, it sends every 2-D
    float32 NHWC/HWIO convolution without dilation or groups, except those
    small wide maps, to oneDNN, with its own ``custom_vjp``, when JAX's
    backend is the CPU with a single device (the usual CPU process).
    Everything else stays with XLA, and so does every convolution until
    ``configure`` selects oneDNN. Several devices stay with
    XLA because the custom calls have no partitioning rule: XLA would gather a
    batch sharded over a mesh onto every device.

The choice is made when a function is traced: call ``configure`` before
tracing the models (``ssl_jax.cli`` does, from the config).
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import numpy as np
from jax import lax

from ssl_jax.kernels import native

MODES = ("auto", "xla", "onednn")
TARGETS = ("DnnlConvFwd", "DnnlConvBwdData", "DnnlConvBwdWeights")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
INSTALL_HINT = "pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0"

_state = {"mode": "xla", "lib": None}

# Output maps of at most XLA_MAX_PIXELS pixels with at least XLA_MIN_FEATURES
# channels stay with XLA (ResNet-18's 4×4×512 stage on 32×32 inputs): there
# oneDNN's three passes ran at 0.76–0.88× XLA's Eigen ones, where at 4×4×64
# and 4×4×128 they ran 1.4–3.0× faster (experiments/bench/conv_layers.py,
# RESULTS.md). XLA_MAX_PIXELS = 0 sends every convolution to oneDNN.
XLA_MAX_PIXELS = 16
XLA_MIN_FEATURES = 512


Unavailable = native.Unavailable
cache_dir = native.cache_dir


def _onednn_paths() -> tuple[str, str]:
    """Header and library folders of the oneDNN wheels in this environment."""
    include, lib = os.path.join(sys.prefix, "include"), os.path.join(sys.prefix, "lib")
    if not os.path.exists(os.path.join(include, "dnnl.hpp")):
        raise Unavailable(f"oneDNN headers (dnnl.hpp) not found in {include}: {INSTALL_HINT}")
    if not os.path.exists(os.path.join(lib, "libdnnl.so")):
        raise Unavailable(f"oneDNN library (libdnnl.so) not found in {lib}: {INSTALL_HINT}")
    return include, lib


def build(force: bool = False) -> str:
    """Compiles onednn_conv.cc (once; again with ``force``) and returns the .so path."""
    include, lib = _onednn_paths()
    args = ["-O2", "-I", include, "-L", lib, "-ldnnl", f"-Wl,-rpath,{lib}"]
    return native.build_library("onednn_conv", SOURCE, args, "oneDNN convolution kernels", force)


def load() -> None:
    """Builds if needed, loads, and registers the FFI handlers (once per process)."""
    if _state["lib"] is not None:
        return
    _state["lib"] = native.register(build(), TARGETS)


def configure(mode: str) -> str:
    """Selects who runs the models' convolutions on the CPU and returns it:
    "onednn" (raises ``Unavailable`` if it cannot be built or loaded), "xla",
    or "auto": oneDNN where JAX's backend is the CPU and it loads, else XLA
    (saying why on stderr)."""
    return native.configure("cpu_conv", MODES, mode, _state, load, "XLA's convolutions")


def mode() -> str:
    return _state["mode"]


def runs_on() -> str:
    """Who runs the models' convolutions now: "onednn" or "xla"."""
    return "onednn" if _route() else "xla"


def _route() -> bool:
    return _state["mode"] == "onednn" and native.single_cpu_device()


def _attrs(strides, pads) -> dict:
    return dict(
        sh=np.int64(strides[0]),
        sw=np.int64(strides[1]),
        ph=np.int64(pads[0][0]),
        pw=np.int64(pads[1][0]),
    )


def conv2d(x, w, strides, pads):
    """oneDNN's convolution of x [N, H, W, C] with w [KH, KW, C, O] (float32);
    ``strides`` (sh, sw), ``pads`` ((top, bottom), (left, right)), as lax's."""
    x, strides, pads = _read_region(x, w.shape, tuple(strides), tuple(pads))
    return _dnnl_conv2d(x, w, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dnnl_conv2d(x, w, strides, pads):
    oh, ow = ((x.shape[1 + i] + sum(pads[i]) - w.shape[i]) // strides[i] + 1 for i in range(2))
    out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, w.shape[3]), x.dtype)
    return jax.ffi.ffi_call("DnnlConvFwd", out)(x, w, **_attrs(strides, pads))


def _conv2d_fwd(x, w, strides, pads):
    return _dnnl_conv2d(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, res, dy):
    x, w = res
    a = _attrs(strides, pads)
    dx = jax.ffi.ffi_call("DnnlConvBwdData", jax.ShapeDtypeStruct(x.shape, x.dtype))(dy, w, **a)
    dw = jax.ffi.ffi_call("DnnlConvBwdWeights", jax.ShapeDtypeStruct(w.shape, w.dtype))(x, dy, **a)
    return dx, dw


_dnnl_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)

_NHWC = ("NHWC", "HWIO", "NHWC")


def _onednn_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dn, groups):
    """The explicit pads if oneDNN can take this convolution, else None."""
    if (
        not _route()
        or lhs.ndim != 4
        or lhs.dtype != np.float32
        or rhs.dtype != np.float32
        or groups != 1
        or any(d != 1 for d in (lhs_dilation or ()))
        or any(d != 1 for d in (rhs_dilation or ()))
    ):
        return None
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn) != lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, _NHWC
    ):
        return None
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if any(p < 0 for pair in pads for p in pair):
        return None
    oh, ow = (
        (lhs.shape[1 + i] + sum(pads[i]) - rhs.shape[i]) // window_strides[i] + 1 for i in range(2)
    )
    small_and_wide = oh * ow <= XLA_MAX_PIXELS and rhs.shape[3] >= XLA_MIN_FEATURES
    return None if small_and_wide else pads


def _read_region(x, w_shape, strides, pads):
    """(x, strides, pads) of the same convolution with x cut to the rows and
    columns it reads. Where the stride leaves the last ones unread (a 1x1
    stride-2 shortcut on an even map), oneDNN would see a negative padding on
    that side, and its AVX2 weight gradient is then wrong (tests/test_onednn.py).
    A 1x1 kernel without padding reads every stride-th pixel: x is subsampled
    and the convolution has stride 1."""
    reach = [
        (x.shape[1 + i] + sum(pads[i]) - w_shape[i]) // strides[i] * strides[i] + w_shape[i]
        for i in range(2)
    ]  # rows and columns read, counting the padding before
    if w_shape[:2] == (1, 1) and all(p == 0 for pair in pads for p in pair):
        return x[:, : reach[0] : strides[0], : reach[1] : strides[1]], (1, 1), pads
    keep = [min(x.shape[1 + i], reach[i] - pads[i][0]) for i in range(2)]
    if keep == [x.shape[1], x.shape[2]]:
        return x, strides, pads
    pads = tuple((lo, max(0, reach[i] - lo - keep[i])) for i, (lo, _) in enumerate(pads))
    return x[:, : keep[0], : keep[1]], strides, pads


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated``, through oneDNN where configured and possible."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    pads = _onednn_pads(*args, feature_group_count * batch_group_count)
    if pads is not None and preferred_element_type in (None, np.float32):
        return conv2d(lhs, rhs, tuple(int(s) for s in window_strides), pads)
    return lax.conv_general_dilated(
        *args,
        feature_group_count,
        batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
