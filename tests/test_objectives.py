"""What every pretraining objective must do: its loss falls under a few gradient
steps on a tiny batch, and one step on 1 and on 8 devices agrees."""

import jax
import numpy as np
import pytest

from tests.objective_util import run_steps

OBJECTIVES = ["simclr", "dino", "mae", "supcon", "semisup", "supervised"]
FAST_SCHEDULE = {"pretrain.steps": 30, "pretrain.optimizer.warmup_steps": 0}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_falls_under_gradient_steps(objective):
    losses, _, metrics = run_steps(objective, 1, steps=30, fixed_batch=True, **FAST_SCHEDULE)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


# SGD for the device comparison: Adam divides by the gradient's own scale, so
# float-level differences in a near-zero gradient become lr-sized updates.
SGD = {
    "pretrain.optimizer.name": "sgd",
    "pretrain.optimizer.lr": 0.05,
    "pretrain.optimizer.warmup_steps": 0,
}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_and_eight_devices_agree(objective):
    assert len(jax.devices()) == 8
    l1, s1, _ = run_steps(objective, 1, steps=2, **SGD)
    l8, s8, _ = run_steps(objective, 8, steps=2, **SGD)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves((s1.params, s1.model_state)),
        jax.tree.leaves((s8.params, s8.model_state)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
