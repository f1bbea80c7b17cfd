"""Strong augmentation: rand_augment and cutout."""

import jax
import numpy as np
import pytest

from ssl_jax.pp import build
from ssl_jax.pp.ops_strong import RAND_AUGMENT_OPS

B = 16


def _images(c=3, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (B, 12, 12, c)).astype(np.uint8)


def _run(spec, x, seed=0):
    return np.asarray(jax.jit(build(spec))(jax.random.key(seed), x))


@pytest.mark.parametrize("spec", ["rand_augment(2)", "rand_augment(3, fill=0)", "cutout(0.5)"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_range_and_keys(spec, channels):
    x = _images(channels)
    a, a2, b = _run(spec, x, 0), _run(spec, x, 0), _run(spec, x, 1)
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "op",
    [n for n in RAND_AUGMENT_OPS if n not in ("autocontrast", "equalize")],
)
def test_each_op_at_zero_magnitude_is_identity(op):
    # autocontrast and equalize have no magnitude; every other op does nothing at 0.
    x = _images()
    y = _run(f"rand_augment(1, magnitude=0, ops=({op!r},))", x)
    np.testing.assert_allclose(y, x / 255.0, atol=2e-6)


@pytest.mark.parametrize("op", list(RAND_AUGMENT_OPS))
def test_each_op_at_full_magnitude(op):
    x = _images()
    y = _run(f"rand_augment(1, magnitude=1, ops=({op!r},))", x)
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    if op != "identity":
        assert not np.allclose(y, x / 255.0), op


def test_autocontrast_and_equalize_stretch_a_dim_image():
    x = (np.random.RandomState(0).randint(100, 140, (B, 12, 12, 1))).astype(np.uint8)
    for op in ("autocontrast", "equalize"):
        y = _run(f"rand_augment(1, ops=({op!r},))", x)
        assert y.min() < 0.05 and y.max() > 0.95, op


def test_cutout_blanks_a_square_of_the_given_size():
    x = np.zeros((B, 16, 16, 1), np.uint8)
    y = _run("cutout(0.5, fill=1.0)", x)
    areas = y.reshape(B, -1).sum(1)
    assert (areas <= 64).all() and (areas >= 16).all()  # 8×8, clipped by a border at most to 4×4
    assert (_run("cutout(0.0, fill=1.0)", x) == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ops"):
        build("rand_augment(2, ops=('nope',))")
    with pytest.raises(ValueError, match="magnitude"):
        build("rand_augment(2, magnitude=(0, 2))")
    with pytest.raises(ValueError, match="size"):
        build("cutout(1.5)")
