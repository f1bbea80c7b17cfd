"""Per-example image ops for on-device augmentation.

Each ``OPS`` entry is a factory: called with the op's spec arguments it returns
``fn(key, image) -> image`` for one float32 ``[H, W, C]`` image in [0, 1], C in
{1, 3}. The builder vmaps these, so random values stay traced (``jnp``/``lax``
only) and shapes depend only on the static input shape and the arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ExampleFn = Callable[[jax.Array, jax.Array], jax.Array]
OPS: dict[str, Callable[..., ExampleFn]] = {}

# ITU-R BT.601 luma, the weights torchvision and PIL use for grayscale.
_LUMA = (0.299, 0.587, 0.114)


def register(name: str):
    """Decorator adding a factory to ``OPS`` under ``name``."""

    def deco(factory):
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = factory
        return factory

    return deco


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _range(value, name: str) -> tuple[float, float]:
    """Accepts a scalar (fixed value) or a (lo, hi) pair."""
    if isinstance(value, int | float):
        return float(value), float(value)
    lo, hi = value
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} exceeds upper bound {hi}")
    return float(lo), float(hi)


def _maybe(p: float, fn: ExampleFn) -> ExampleFn:
    """Applies ``fn`` with probability ``p``.

    The key is split the same way for every ``p`` so that, when the op fires,
    its randomness does not depend on ``p``. ``p`` in {0, 1} is resolved at
    build time, which makes those cases exact and free.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if p == 0.0:
        return lambda key, x: x

    def wrapped(key, x):
        k_gate, k_op = jax.random.split(key)
        if p == 1.0:
            return fn(k_op, x)
        # A real branch when examples run one by one (build(chunk_size=1)): the
        # op costs nothing when it does not fire. Under vmap it becomes a select.
        return jax.lax.cond(jax.random.uniform(k_gate) < p, lambda x: fn(k_op, x), lambda x: x, x)

    return wrapped


def _gray(x: jax.Array) -> jax.Array:
    """Luma as ``[H, W, 1]``; a 1-channel image is its own luma."""
    if x.shape[-1] == 1:
        return x
    # An explicit weighted sum, not a matmul: GPU matmuls may run in reduced
    # precision (TF32) by default.
    return (_LUMA[0] * x[..., 0] + _LUMA[1] * x[..., 1] + _LUMA[2] * x[..., 2])[..., None]


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """``[..., 3]`` RGB in [0, 1] to HSV with every component in [0, 1]."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = jnp.max(x, axis=-1)
    delta = maxc - jnp.min(x, axis=-1)
    # Guard the divisions so gray pixels give h = s = 0 without NaNs (NaNs
    # would also poison gradients through jnp.where).
    safe_max = jnp.where(maxc > 0, maxc, 1.0)
    safe_delta = jnp.where(delta > 0, delta, 1.0)
    s = jnp.where(maxc > 0, delta / safe_max, 0.0)
    rc, gc, bc = ((maxc - c) / safe_delta for c in (r, g, b))
    h = jnp.where(r == maxc, bc - gc, jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """Inverse of ``rgb_to_hsv``, written branch-free.

    Each channel n in (5, 3, 1) for (r, g, b) is ``v - v*s*clip(min(k, 4-k))``
    with ``k = (n + 6h) mod 6``; this avoids selecting among six sectors.
    """
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    k = [jnp.mod(n + 6.0 * h, 6.0) for n in (5.0, 3.0, 1.0)]
    out = [v - v * s * jnp.clip(jnp.minimum(kn, 4.0 - kn), 0.0, 1.0) for kn in k]
    return jnp.stack(out, axis=-1)


@register("random_resized_crop")
def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=False):
    """Crop of random area fraction and log-uniform aspect, resized to ``size``."""
    out_h, out_w = _hw(size)
    s_lo, s_hi = _range(scale, "scale")
    log_r = tuple(math.log(r) for r in _range(ratio, "ratio"))

    def fn(key, x):
        h, w = x.shape[0], x.shape[1]
        k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
        area = jax.random.uniform(k_area, minval=s_lo, maxval=s_hi) * h * w
        r = jnp.exp(jax.random.uniform(k_ratio, minval=log_r[0], maxval=log_r[1]))
        # Instead of torchvision's rejection loop (data-dependent trip count),
        # draw once and clip the box to the image: one fixed-cost pass.
        ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
        cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
        y0 = jax.random.uniform(k_y) * (h - ch)
        x0 = jax.random.uniform(k_x) * (w - cw)
        if not antialias:
            return crop_linear(x, y0, x0, ch, cw, out_h, out_w)
        # scale_and_translate maps input coordinate u to u * scale + t, so the
        # box [y0, y0 + ch) lands on [0, out_h). The box may be traced.
        sc = jnp.stack([out_h / ch, out_w / cw])
        tr = -jnp.stack([y0, x0]) * sc
        shape = (out_h, out_w, x.shape[2])
        return jax.image.scale_and_translate(
            x, shape, (0, 1), sc, tr, method="linear", antialias=True
        )

    return fn


_CROP_DENSE_MAX = 32 * 32  # pixels; crop_linear says why


def _linear_taps(start, extent, n_out: int, n_in: int):
    """Bilinear sampling along one axis: output pixel i reads input pixels
    ``i0``, ``i1`` at fraction ``f``; the box ``[start, start + extent)``
    spans the output, pixel centres at +0.5, edges clamped."""
    u = start + (jnp.arange(n_out, dtype=jnp.float32) + 0.5) * (extent / n_out) - 0.5
    u = jnp.clip(u, 0.0, n_in - 1.0)
    i0 = jnp.floor(u).astype(jnp.int32)
    return i0, jnp.minimum(i0 + 1, n_in - 1), u - i0


def crop_linear(x, y0, x0, ch, cw, out_h: int, out_w: int, dense_max=None) -> jax.Array:
    """The box ``[y0, y0 + ch) x [x0, x0 + cw)`` of ``x`` ([H, W, C]),
    bilinearly resized to ``[out_h, out_w, C]``; the box may be traced.

    The same result as ``jax.image.scale_and_translate(..., method="linear",
    antialias=False)`` (to float rounding of the sample positions), which
    multiplies by dense [out, in] weight matrices whatever the size. Here
    each output pixel gathers its two rows, then its two columns:
    ``random_resized_crop(224)`` from 256 images went from ~1.6 to ~0.6 ms
    an image on CPU (experiments/bench/augment_ops.py, part ``crop``).
    Images of at most ``_CROP_DENSE_MAX`` pixels keep two small matmuls:
    in MNIST's views (28x28 after ``random_affine``, under vmap) the
    gathers took 1.4x the time of scale_and_translate, these matmuls 0.9x.
    ``dense_max`` overrides that bound.
    """
    h, w = x.shape[0], x.shape[1]
    a0, a1, fa = _linear_taps(y0, ch, out_h, h)
    b0, b1, fb = _linear_taps(x0, cw, out_w, w)
    if h * w <= (_CROP_DENSE_MAX if dense_max is None else dense_max):
        hi = jax.lax.Precision.HIGHEST  # no TF32 on GPU
        y = jnp.einsum("oh,hwc->owc", _tap_matrix(a0, a1, fa, h), x, precision=hi)
        return jnp.einsum("pw,owc->opc", _tap_matrix(b0, b1, fb, w), y, precision=hi)
    rows = x[a0] + fa[:, None, None] * (x[a1] - x[a0])
    return rows[:, b0] + fb[None, :, None] * (rows[:, b1] - rows[:, b0])


def _tap_matrix(i0, i1, f, n: int) -> jax.Array:
    """``_linear_taps`` as a dense [out, n] weight matrix."""
    j = jnp.arange(n)
    return (1.0 - f)[:, None] * (j == i0[:, None]) + f[:, None] * (j == i1[:, None])


@register("random_crop")
def random_crop(size, padding=0, padding_mode="constant"):
    """Pads every side by ``padding`` and takes a ``size`` crop at a random offset.

    Zero ("constant") padding is the default, as in the usual CIFAR recipe;
    ``padding_mode="reflect"`` is also accepted.
    """
    ch, cw = _hw(size)
    if padding_mode not in ("constant", "reflect"):
        raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")

    def fn(key, x):
        if padding:
            x = jnp.pad(x, ((padding, padding), (padding, padding), (0, 0)), mode=padding_mode)
        h, w, c = x.shape
        if ch > h or cw > w:
            raise ValueError(f"random_crop: crop {(ch, cw)} larger than padded image {(h, w)}")
        k_y, k_x = jax.random.split(key)
        y0 = jax.random.randint(k_y, (), 0, h - ch + 1)
        x0 = jax.random.randint(k_x, (), 0, w - cw + 1)
        return jax.lax.dynamic_slice(x, (y0, x0, 0), (ch, cw, c))

    return fn


@register("center_crop")
def center_crop(size):
    """Deterministic central ``size`` crop."""
    ch, cw = _hw(size)

    def fn(key, x):
        del key
        h, w = x.shape[0], x.shape[1]
        if ch > h or cw > w:
            raise ValueError(f"center_crop: crop {(ch, cw)} larger than image {(h, w)}")
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return x[y0 : y0 + ch, x0 : x0 + cw]

    return fn


@register("resize")
def resize(size, antialias=True):
    """Bilinear resize. An int sets the shorter side (aspect kept, as in
    torchvision); an (h, w) pair sets both sides."""

    def fn(key, x):
        del key
        h, w = x.shape[0], x.shape[1]
        out = _hw(size)
        if isinstance(size, int):
            # Depends on the static input shape only: same for every example.
            short = min(h, w)
            out = (max(1, round(h * size / short)), max(1, round(w * size / short)))
        return jax.image.resize(x, (*out, x.shape[2]), method="linear", antialias=antialias)

    return fn


@register("flip_lr")
def flip_lr(p=0.5):
    """Horizontal flip with probability ``p``."""
    return _maybe(p, lambda key, x: x[:, ::-1])


def _blend(x, target, f):
    return jnp.clip(target + f * (x - target), 0.0, 1.0)


# Brightness blends with black, contrast with the image's mean luma (as in
# torchvision), saturation with the pixel's own luma.
_brightness = lambda x, f: _blend(x, 0.0, f)
_contrast = lambda x, f: _blend(x, jnp.mean(_gray(x)), f)
_saturation = lambda x, f: _blend(x, _gray(x), f)


def _wrap6(t):
    """``t mod 6`` for t in [-6, 18), by compares and selects only."""
    t = jnp.where(t >= 12.0, t - 12.0, jnp.where(t >= 6.0, t - 6.0, t))
    return jnp.where(t < 0.0, t + 6.0, t)


def _hue(x, d):
    """Rotate the hue by ``d`` turns (|d| <= 0.5): ``hsv_to_rgb`` of
    ``rgb_to_hsv`` with h shifted, fused into one pass.

    Same formulas, rearranged: v * s is the pixel's max - min, the hue is
    kept in sixths (one division, not three), and ``jnp.mod`` is replaced by
    selects. In the 224 views' colour jitter on CPU the shift went from ~1.2
    to ~0.2 ms an image (experiments/bench/augment_ops.py, part ``hue``).
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = jnp.maximum(jnp.maximum(r, g), b)
    delta = maxc - jnp.minimum(jnp.minimum(r, g), b)
    rmax, gmax = r == maxc, g == maxc
    num = jnp.where(rmax, g - b, jnp.where(gmax, b - r, r - g))
    sector = jnp.where(rmax, 0.0, jnp.where(gmax, 2.0, 4.0))
    h6 = sector + num / jnp.where(delta > 0, delta, 1.0) + 6.0 * d  # in [-4, 8]
    k = [_wrap6(n + h6) for n in (5.0, 3.0, 1.0)]
    out = [maxc - delta * jnp.clip(jnp.minimum(kn, 4.0 - kn), 0.0, 1.0) for kn in k]
    return jnp.clip(jnp.stack(out, axis=-1), 0.0, 1.0)


@register("color_jitter")
def color_jitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, random_order=True):
    """Brightness, contrast, saturation and hue jitter with probability ``p``.

    Factors are uniform in [max(0, 1 - s), 1 + s]; the hue shift is uniform
    in [-hue, hue] (in turns). Zero-strength parts are dropped at build time,
    so ``color_jitter(0, 0, 0, 0)`` is exactly the identity. With
    ``random_order`` (SimCLR's choice) the order is a random permutation per
    example; under vmap every slot then evaluates each active part, which
    costs up to 4x the arithmetic of a fixed order (one example at a time,
    ``build(chunk_size=1)``, evaluates only the chosen part).
    """
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
    parts = []  # (apply(x, value), lo, hi, colour_only)
    for s, apply in ((brightness, _brightness), (contrast, _contrast), (saturation, _saturation)):
        if s < 0:
            raise ValueError(f"color_jitter: strengths must be >= 0, got {s}")
        if s > 0:
            parts.append((apply, max(0.0, 1.0 - s), 1.0 + s, apply is _saturation))
    if hue > 0:
        parts.append((_hue, -hue, hue, True))

    def fn(key, x):
        # Saturation and hue are meaningless for one channel.
        active = [q for q in parts if not (q[3] and x.shape[-1] == 1)]
        if not active:
            return x
        k_vals, k_perm = jax.random.split(key)
        lo = jnp.asarray([q[1] for q in active])
        hi = jnp.asarray([q[2] for q in active])
        vals = jax.random.uniform(k_vals, (len(active),), minval=lo, maxval=hi)
        if not random_order or len(active) == 1:
            for i, q in enumerate(active):
                x = q[0](x, vals[i])
            return x
        order = jax.random.permutation(k_perm, len(active))
        branches = [lambda x, i=i, q=q: q[0](x, vals[i]) for i, q in enumerate(active)]
        for slot in range(len(active)):
            x = jax.lax.switch(order[slot], branches, x)
        return x

    return _maybe(p, fn)


@register("grayscale")
def grayscale(p=0.2):
    """Replaces all channels by luma with probability ``p``; keeps C."""
    return _maybe(p, lambda key, x: jnp.broadcast_to(_gray(x), x.shape))


@register("gaussian_blur")
def gaussian_blur(sigma=(0.1, 2.0), kernel_size=None, p=0.5):
    """Separable Gaussian blur with per-example sigma, reflect padding.

    The kernel has a fixed (static) size, by default 10% of the shorter image
    side made odd, at least 3 (23 taps at 224, as in SimCLR); only its
    weights depend on the traced sigma.
    """
    s_lo, s_hi = _range(sigma, "sigma")
    if s_lo <= 0:
        raise ValueError(f"gaussian_blur: sigma must be > 0, got {sigma}")
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"gaussian_blur: kernel_size must be odd and >= 1, got {kernel_size}")

    def blur(key, x):
        h, w = x.shape[0], x.shape[1]
        k = kernel_size or max(3, int(0.1 * min(h, w)) | 1)
        # Reflect padding needs the radius to stay below the image side.
        radius = min(k // 2, min(h, w) - 1)
        s = jax.random.uniform(key, minval=s_lo, maxval=s_hi)
        return jnp.clip(separable_blur(x, gaussian_taps(s, radius), radius), 0.0, 1.0)

    return _maybe(p, blur)


def gaussian_taps(sigma, radius: int) -> jax.Array:
    """The 2 * radius + 1 normalised weights of a Gaussian of (traced) ``sigma``."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    wts = jnp.exp(-0.5 * jnp.square(taps / sigma))
    return wts / jnp.sum(wts)


def separable_blur(x: jax.Array, wts: jax.Array, radius: int) -> jax.Array:
    """``wts`` applied along height, then width, of one [H, W, C] image, reflect padded.

    Each axis is one matmul with a banded [n, n] matrix that holds the taps
    and the reflect padding: on the CPU backend ~2x faster at 224 than
    summing 23 shifted slices (experiments/bench/RESULTS.md).
    """
    x = jnp.einsum("ij,jwc->iwc", _blur_matrix(wts, x.shape[0], radius), x)
    return jnp.einsum("vw,iwc->ivc", _blur_matrix(wts, x.shape[1], radius), x)


def _blur_matrix(wts: jax.Array, n: int, radius: int) -> jax.Array:
    """[n, n] matrix M with (M @ x)[i] = sum_t wts[t] * x[reflect(i + t - radius)],
    reflect as in ``jnp.pad(mode="reflect")`` (the edge itself not repeated)."""
    src = np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :]
    src = np.abs(src)  # -1 -> 1
    src = np.where(src > n - 1, 2 * (n - 1) - src, src)  # n -> n - 2
    rows = np.broadcast_to(np.arange(n)[:, None], src.shape)
    vals = jnp.broadcast_to(wts, src.shape)
    return jnp.zeros((n, n), wts.dtype).at[rows.ravel(), src.ravel()].add(vals.ravel())


@register("solarize")
def solarize(threshold=0.5, p=0.2):
    """Inverts pixels at or above ``threshold`` with probability ``p``."""
    return _maybe(p, lambda key, x: jnp.where(x >= threshold, 1.0 - x, x))


@register("value_range")
def value_range(lo=-1, hi=1):
    """Maps [0, 1] linearly onto [lo, hi]."""
    # The clip only removes rounding overshoot (XLA may rewrite the earlier
    # uint8 / 255 as a multiply by 1/255), so the range bound holds exactly.
    a, b = min(lo, hi), max(lo, hi)
    return lambda key, x: jnp.clip(x * (hi - lo) + lo, a, b)


@register("normalize")
def normalize(mean, std):
    """``(x - mean) / std`` per channel; scalars or one value per channel."""
    mean_a = np.atleast_1d(np.asarray(mean, np.float32))
    std_a = np.atleast_1d(np.asarray(std, np.float32))
    if np.any(std_a <= 0):
        raise ValueError(f"normalize: std must be > 0, got {std}")

    def fn(key, x):
        if {mean_a.size, std_a.size} - {1, x.shape[-1]}:
            raise ValueError(f"normalize: {mean}, {std} do not match {x.shape[-1]} channels")
        return (x - mean_a) / std_a

    return fn
