"""Geometric ops beyond crops: random affine warps.

Digits and other centred, orientation-bearing images are poorly served by
aggressive random-resized crops (a crop of a 6 can be a 0); small rotations,
shifts, scalings and shears are the invariances that matter there.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from ssl_jax.pp.ops import _maybe, _range, register


def warp_affine(x, fwd, shift=(0.0, 0.0), fill=0.0):
    """Applies the 2x2 forward map ``fwd`` (in (x, y) pixel coordinates, about
    the image centre) and then the shift (dx, dy) to a [H, W, C] image; bilinear
    sampling, ``fill`` outside the source image."""
    h, w, c = x.shape
    inv = jnp.linalg.inv(fwd)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = jnp.meshgrid(
        jnp.arange(h) - cy - shift[1], jnp.arange(w) - cx - shift[0], indexing="ij"
    )
    src_x = inv[0, 0] * xx + inv[0, 1] * yy + cx
    src_y = inv[1, 0] * xx + inv[1, 1] * yy + cy
    sample = lambda ch: map_coordinates(ch, [src_y, src_x], order=1, mode="constant", cval=fill)
    return jnp.stack([sample(x[..., i]) for i in range(c)], axis=-1)


def rotation(angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[cos, -sin], [sin, cos]])


@register("random_affine")
def random_affine(degrees=15.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.0, p=1.0):
    """Rotation by U(-degrees, degrees) (positive = clockwise on screen), shift by
    up to ``translate`` of the size, isotropic scale in ``scale`` and x-shear by
    U(-shear, shear) degrees, about the image centre; bilinear sampling, zeros
    outside (the background of digits). A pair gives an explicit (lo, hi) range."""
    deg = (
        _range(degrees, "degrees") if not isinstance(degrees, int | float) else (-degrees, degrees)
    )
    shr = _range(shear, "shear") if not isinstance(shear, int | float) else (-shear, shear)
    tx, ty = (translate, translate) if isinstance(translate, int | float) else translate
    s_lo, s_hi = _range(scale, "scale")

    def fn(key, x):
        h, w, c = x.shape
        k_rot, k_tx, k_ty, k_s, k_sh = jax.random.split(key, 5)
        angle = jax.random.uniform(k_rot, minval=deg[0], maxval=deg[1]) * math.pi / 180
        sh = jax.random.uniform(k_sh, minval=shr[0], maxval=shr[1]) * math.pi / 180
        s = jax.random.uniform(k_s, minval=s_lo, maxval=s_hi)
        dy = jax.random.uniform(k_ty, minval=-ty, maxval=ty) * h
        dx = jax.random.uniform(k_tx, minval=-tx, maxval=tx) * w
        # Forward map (x, y) -> s * R(angle) @ Shear(sh) @ (x, y) + (dx, dy), about the centre.
        fwd = s * rotation(angle) @ jnp.array([[1.0, jnp.tan(sh)], [0.0, 1.0]])
        return warp_affine(x, fwd, (dx, dy))

    return _maybe(p, fn)
