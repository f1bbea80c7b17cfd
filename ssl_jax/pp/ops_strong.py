"""Strong augmentation for self-training: a RandAugment-style op set and cutout.

"RandAugment" (Cubuk et al., 2019, https://arxiv.org/abs/1909.13719) as FixMatch
uses it ("FixMatch", Sohn et al., 2020, https://arxiv.org/abs/2001.07685, Table
12): each image gets ``num_ops`` ops drawn uniformly from the set below, each at
a magnitude drawn uniformly from ``magnitude`` (a (lo, hi) range in [0, 1] of
every op's own maximum), then cutout. All per example, under vmap.

Under vmap a per-example choice among ops evaluates every op and selects
(lax.switch becomes a select), so one slot costs about the sum of the ops; that
is cheap at MNIST and CIFAR sizes and is the price of keeping the whole
augmentation on device.
"""

import math

import jax
import jax.numpy as jnp

from ssl_jax.pp.ops import _blend, _gray, _maybe, _range, register
from ssl_jax.pp.ops_geometry import rotation, warp_affine


def _signed(key, m):
    """m with a random sign: geometric ops and enhancements go both ways."""
    return jnp.where(jax.random.bernoulli(key), m, -m)


def _autocontrast(x, key, m, fill):
    lo = jnp.min(x, axis=(0, 1), keepdims=True)
    hi = jnp.max(x, axis=(0, 1), keepdims=True)
    return jnp.where(hi > lo, (x - lo) / jnp.where(hi > lo, hi - lo, 1.0), x)


def _equalize(x, key, m, fill):
    """Histogram equalisation per channel, on 256 levels (PIL's ImageOps.equalize idea)."""
    q = jnp.round(x * 255).astype(jnp.int32)

    def one(ch):
        hist = jnp.bincount(ch.reshape(-1), length=256)
        cdf = jnp.cumsum(hist)
        cdf_min = jnp.min(jnp.where(hist > 0, cdf, cdf[-1]))
        denom = jnp.maximum(cdf[-1] - cdf_min, 1)
        return jnp.where(cdf[-1] > cdf_min, (cdf[ch] - cdf_min) / denom, ch / 255.0)

    return jnp.stack([one(q[..., i]) for i in range(x.shape[-1])], axis=-1)


def _enhance(target_fn):
    """PIL-style enhancement: blend with a target by factor 1 ± 0.9 m."""

    def op(x, key, m, fill):
        return _blend(x, target_fn(x), 1.0 + 0.9 * _signed(key, m))

    return op


def _smooth(x):
    """PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1) / 13, edges kept as they are."""
    k = jnp.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    xp = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[:2]
    return sum(k[i, j] * xp[i : i + h, j : j + w] for i in range(3) for j in range(3))


def _posterize(x, key, m, fill):
    bits = 8 - jnp.round(4 * m)  # 8 (no change) down to 4 bits
    step = 2.0 ** (8 - bits)
    return jnp.floor(jnp.round(x * 255) / step) * step / 255.0


def _solarize(x, key, m, fill):
    # PIL's threshold 256 * (1 - m) on 0..255 levels: nothing is inverted at m = 0.
    return jnp.where(x * 255 >= 256 * (1.0 - m), 1.0 - x, x)


def _rotate(x, key, m, fill):
    return warp_affine(x, rotation(_signed(key, m) * 30 * math.pi / 180), fill=fill)


def _shear(axis):
    def op(x, key, m, fill):
        s = _signed(key, m) * 0.3
        fwd = jnp.array([[1.0, s], [0.0, 1.0]]) if axis == 0 else jnp.array([[1.0, 0.0], [s, 1.0]])
        return warp_affine(x, fwd, fill=fill)

    return op


def _translate(axis):
    def op(x, key, m, fill):
        t = _signed(key, m) * 0.3 * x.shape[1 - axis]
        shift = (t, 0.0) if axis == 0 else (0.0, t)
        return warp_affine(x, jnp.eye(2), shift, fill=fill)

    return op


RAND_AUGMENT_OPS = {
    "identity": lambda x, key, m, fill: x,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "brightness": _enhance(lambda x: jnp.zeros_like(x)),
    "color": _enhance(lambda x: jnp.broadcast_to(_gray(x), x.shape)),
    "contrast": _enhance(lambda x: jnp.mean(_gray(x))),
    "sharpness": _enhance(_smooth),
    "posterize": _posterize,
    "solarize": _solarize,
    "rotate": _rotate,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


@register("rand_augment")
def rand_augment(num_ops=2, magnitude=(0.0, 1.0), fill=0.5, ops=None):
    """``num_ops`` ops per image from ``ops`` (default: all of RAND_AUGMENT_OPS),
    each at a uniform magnitude in ``magnitude``; ``fill`` is the value geometric
    ops bring in from outside the image (0 suits digits on black)."""
    names = tuple(ops) if ops is not None else tuple(RAND_AUGMENT_OPS)
    unknown = [n for n in names if n not in RAND_AUGMENT_OPS]
    if unknown:
        raise ValueError(f"rand_augment: unknown ops {unknown}; known: {sorted(RAND_AUGMENT_OPS)}")
    if num_ops < 0:
        raise ValueError(f"rand_augment: num_ops must be >= 0, got {num_ops}")
    m_lo, m_hi = _range(magnitude, "magnitude")
    if not 0.0 <= m_lo <= m_hi <= 1.0:
        raise ValueError(f"rand_augment: magnitude must lie in [0, 1], got {magnitude}")
    branches = [
        lambda x, key, m, f=RAND_AUGMENT_OPS[n]: jnp.clip(f(x, key, m, fill), 0.0, 1.0)
        for n in names
    ]

    def fn(key, x):
        for k in jax.random.split(key, num_ops):
            k_op, k_mag, k_apply = jax.random.split(k, 3)
            m = jax.random.uniform(k_mag, minval=m_lo, maxval=m_hi)
            index = jax.random.randint(k_op, (), 0, len(branches))
            x = jax.lax.switch(index, branches, x, k_apply, m)
        return x

    return fn


@register("cutout")
def cutout(size=0.5, fill=0.5, p=1.0):
    """Sets a square of side ``size`` × the shorter image side, centred at a
    uniformly random pixel (clipped at the borders), to ``fill``
    ("Improved Regularization of CNNs with Cutout", https://arxiv.org/abs/1708.04552)."""
    if not 0.0 <= size <= 1.0:
        raise ValueError(f"cutout: size must be in [0, 1], got {size}")

    def fn(key, x):
        h, w = x.shape[:2]
        half = size * min(h, w) / 2
        k_y, k_x = jax.random.split(key)
        cy = jax.random.uniform(k_y, minval=0, maxval=h)
        cx = jax.random.uniform(k_x, minval=0, maxval=w)
        yy = jnp.arange(h)[:, None, None] + 0.5
        xx = jnp.arange(w)[None, :, None] + 0.5
        inside = (jnp.abs(yy - cy) < half) & (jnp.abs(xx - cx) < half)
        return jnp.where(inside, fill, x)

    return _maybe(p, fn)
