import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import losses


def reference_ntxent(z, t):
    """NT-Xent written out by hand for two views: rows i and i+n are positives."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = np.array([z[i] @ z[j] / t for j in range(n2) if j != i])
        total += -(z[i] @ z[pos] / t) + np.log(np.exp(sims).sum())
    return total / n2


def test_contrastive_known_value_orthogonal_pairs():
    # Two pairs of identical unit vectors, pairs orthogonal: each anchor sees its
    # positive at similarity 1 and two negatives at 0, so l = -1/t + log(e^{1/t} + 2).
    z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    ids = jnp.array([0, 1, 0, 1])
    t = 0.5
    loss, metrics = losses.contrastive(z, ids, temperature=t)
    expected = -1 / t + np.log(np.exp(1 / t) + 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert metrics["contrastive_acc"] == 1.0


def test_contrastive_matches_written_out_ntxent():
    z = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    ids = np.tile(np.arange(6), 2)
    loss, _ = losses.contrastive(jnp.asarray(z), jnp.asarray(ids), temperature=0.3)
    np.testing.assert_allclose(loss, reference_ntxent(z, 0.3), rtol=1e-5)


def test_items_without_positives_only_add_negatives():
    z = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    ids = jnp.tile(jnp.arange(4), 2)
    simclr, _ = losses.contrastive(z, ids, temperature=0.2)
    # two extra items with unique ids: they are negatives only, so the loss over
    # the original anchors changes only through the larger denominators.
    z2 = jnp.concatenate([z, jnp.zeros((2, 4)) + 1e-3])
    ids2 = jnp.concatenate([ids, jnp.array([100, 101])])
    loss2, _ = losses.contrastive(z2, ids2, temperature=0.2)
    assert np.isfinite(loss2) and loss2 >= simclr - 1e-6


def test_supcon_multiple_positives_average():
    # Three items share a class: each anchor's loss averages over its two positives.
    z = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = jnp.array([7, 7, 7, 3])
    t = 1.0
    loss, _ = losses.contrastive(z, ids, temperature=t)
    # anchors 0..2: others are two at sim 1 and one at 0 → -log(e / (2e + 1)); anchor 3 has none.
    expected = -np.log(np.e / (2 * np.e + 1))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_contrastive_falls_under_gradient_steps():
    z = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
    ids = jnp.tile(jnp.arange(8), 2)
    fn = lambda z: losses.contrastive(z, ids, temperature=0.5)[0]
    opt = optax.sgd(0.5)
    state = opt.init(z)
    start = fn(z)
    for _ in range(20):
        g = jax.grad(fn)(z)
        u, state = opt.update(g, state)
        z = optax.apply_updates(z, u)
    assert fn(z) < 0.7 * start


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_xent_ignores_negative_labels(smoothing):
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
    full = losses.softmax_xent(logits[:2], jnp.array([0, 1]), label_smoothing=smoothing)
    masked = losses.softmax_xent(logits, jnp.array([0, 1, -1]), label_smoothing=smoothing)
    np.testing.assert_allclose(full, masked, rtol=1e-6)
