import jax
import numpy as np

from ssl_jax import pp


def batch(seed=0, n=4, size=12):
    return (np.random.default_rng(seed).random((n, size, size, 1)) * 255).astype(np.uint8)


def test_random_affine_zero_strength_is_identity():
    x = batch()
    f = pp.build("random_affine(0, translate=0, scale=1, shear=0)", chunk_size=None)
    np.testing.assert_allclose(f(jax.random.PRNGKey(0), x), x / 255.0, atol=1e-6)


def test_random_affine_quarter_turn_is_clockwise_rot90():
    x = batch(size=7)
    f = pp.build("random_affine(degrees=(90, 90), translate=0, scale=1)", chunk_size=None)
    out = np.asarray(f(jax.random.PRNGKey(3), x))
    np.testing.assert_allclose(out, np.rot90(x / 255.0, k=-1, axes=(1, 2)), atol=1e-5)


def test_random_affine_is_keyed_per_example_and_in_range():
    x = np.repeat(batch(n=1), 4, axis=0)
    f = pp.build("random_affine(20, shear=10)", chunk_size=None)
    a = np.asarray(f(jax.random.PRNGKey(0), x))
    b = np.asarray(f(jax.random.PRNGKey(0), x))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1 + 1e-6
    assert not np.allclose(a[0], a[1])  # same image, different per-example draws
