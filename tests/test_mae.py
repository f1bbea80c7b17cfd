"""MAE: masking, unshuffling, the masked-only loss, targets and the report's grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models.mae import random_masking, unshuffle
from ssl_jax.objectives.mae import masked_mse, patch_targets
from tests.objective_util import build, digits


@pytest.mark.parametrize("ratio, expected", [(0.75, 12), (0.5, 8), (0.9, 14)])
def test_exactly_the_configured_fraction_is_masked_per_example(ratio, expected):
    keep, restore, mask = random_masking(jax.random.PRNGKey(0), 64, 16, ratio)
    mask = np.asarray(mask)
    assert mask.shape == (64, 16)
    assert (mask.sum(1) == expected).all()
    # The kept indices are distinct and exactly the unmasked positions.
    keep = np.asarray(keep)
    for row_keep, row_mask in zip(keep, mask, strict=True):
        assert len(set(row_keep)) == 16 - expected
        assert set(row_keep) == set(np.flatnonzero(row_mask == 0))
    # Different examples get different masks.
    assert len({tuple(r) for r in mask}) > 50


def test_masking_ratio_must_leave_visible_and_masked_patches():
    with pytest.raises(ValueError, match="visible"):
        random_masking(jax.random.PRNGKey(0), 2, 16, 1.0)


def test_unshuffling_restores_patch_order():
    b, n = 8, 16
    keep, restore, mask = random_masking(jax.random.PRNGKey(3), b, n, 0.75)
    shuffle = jnp.argsort(restore, axis=1)  # [visible..., masked...] order
    np.testing.assert_array_equal(shuffle[:, :4], keep)
    tokens = jnp.broadcast_to(jnp.arange(n)[None, :, None], (b, n, 1))
    shuffled = jnp.take_along_axis(tokens, shuffle[..., None], axis=1)
    np.testing.assert_array_equal(unshuffle(shuffled, restore), tokens)


def test_loss_counts_masked_patches_only():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, 4, 6)).astype(np.float32)
    mask = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    pred = target + 1.0 * mask[..., None]  # error 1 on every masked pixel
    pred += 100.0 * (1 - mask[..., None])  # huge errors on visible patches: ignored
    np.testing.assert_allclose(masked_mse(pred, target, mask), 1.0, rtol=1e-6)
    pred2 = pred.copy()
    pred2[0, 1] = 0  # changing a visible patch's prediction changes nothing
    np.testing.assert_allclose(masked_mse(pred2, target, mask), 1.0, rtol=1e-6)


def test_normalised_pixel_targets():
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 1)), jnp.float32)
    t = patch_targets(images, 2, norm_pix=True)
    assert t.shape == (2, 16, 4)
    np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(t.var(-1), 1.0, rtol=1e-3)
    raw = patch_targets(images, 2, norm_pix=False)
    np.testing.assert_allclose(raw[0, 0], np.asarray(images)[0, :2, :2, 0].reshape(-1))


def test_objective_encodes_whole_images_and_draws_reconstructions():
    config, mesh, model = build("mae", 1)
    state = model.init_state(0)
    images = model.eval_fn(jax.random.PRNGKey(0), digits()[0][:4])
    feats = model.objective.encode(state.params, state.model_state, images)
    assert feats.shape == (4, 32)
    grids = model.objective.visualize(state.params, state.model_state, images, jax.random.key(0))
    rows = grids["mae_reconstructions"]
    assert list(rows) == ["original", "masked", "reconstruction"]
    np.testing.assert_allclose(rows["original"], images, atol=1e-6)
    for r in rows.values():
        assert r.shape == images.shape
    # Exactly 12 of 16 patches are blanked in every masked image.
    masked = np.asarray(rows["masked"]) == float(np.min(images))
    patch_blank = masked.reshape(4, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).all(axis=(3, 4))
    assert (patch_blank.sum(axis=(1, 2)) >= 12).all()
