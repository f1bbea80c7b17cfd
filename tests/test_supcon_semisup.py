"""Supervised contrastive and semi-supervised contrastive objectives against their bases."""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses
from tests.objective_util import build, loader, run_steps


def _inputs(objective, **overrides):
    config, mesh, model = build(objective, 1, **overrides)
    state = model.init_state(0)
    key = jax.random.PRNGKey(2)
    return model, state, model.inputs(key, next(loader(config, mesh))), key


def test_supcon_without_labels_equals_simclr():
    m_sup, s_sup, inputs, key = _inputs("supcon")
    m_clr, s_clr, _, _ = _inputs("simclr")
    unlabelled = dict(inputs, label=jnp.full_like(inputs["label"], -1))
    a = m_sup.objective.loss(s_sup.params, s_sup.model_state, unlabelled, key)[0]
    b = m_clr.objective.loss(s_sup.params, s_sup.model_state, unlabelled, key)[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # With the batch's labels it differs: same-class items become positives.
    c = m_sup.objective.loss(s_sup.params, s_sup.model_state, inputs, key)[0]
    assert abs(float(c) - float(a)) > 1e-3


def test_supcon_positive_ids():
    model, _, _, _ = _inputs("supcon")
    ids = model.objective.positive_ids(
        {"view1": jnp.zeros((4, 8, 8, 1)), "label": jnp.array([3, -1, 3, -1])}
    )
    ids = np.asarray(ids)
    assert ids[0] == ids[2] == 3
    assert len({ids[1], ids[3], 3}) == 3  # unlabelled items: unique, never a class


def test_same_class_correlation_hand_made():
    x = jnp.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    # items 0 and 1 are perfectly correlated, 0 and 2 anti-correlated.
    loss, rho = losses.same_class_correlation(x, jnp.array([0, 0, -1, -1]))
    np.testing.assert_allclose([loss, rho], [0.0, 1.0], atol=1e-6)
    loss, rho = losses.same_class_correlation(x, jnp.array([0, -1, 0, -1]))
    np.testing.assert_allclose([loss, rho], [2.0, -1.0], atol=1e-6)
    loss, rho = losses.same_class_correlation(x, jnp.array([0, 1, 2, -1]))  # no pairs
    np.testing.assert_allclose([loss, rho], [0.0, 0.0], atol=1e-6)


def test_semisup_with_zero_weights_is_the_base_objective():
    zero = {"objective.kw.ce_weight": 0.0, "objective.kw.corr_weight": 0.0}
    m_semi, s_semi, inputs, key = _inputs("semisup", **zero)
    m_base, _, _, _ = _inputs("simclr")
    base_params = s_semi.params["base"]

    def semi(p):
        return m_semi.objective.loss({**s_semi.params, "base": p}, s_semi.model_state, inputs, key)

    def base(p):
        return m_base.objective.loss(p, s_semi.model_state, inputs, key)

    (l_semi, (metrics, _)), g_semi = jax.value_and_grad(semi, has_aux=True)(base_params)
    (l_base, _), g_base = jax.value_and_grad(base, has_aux=True)(base_params)
    np.testing.assert_allclose(l_semi, l_base, rtol=1e-6)
    assert "ce_loss" not in metrics and "same_class_corr" not in metrics
    for a, b in zip(jax.tree.leaves(g_semi), jax.tree.leaves(g_base), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_semisup_terms_add_with_their_weights():
    m, s, inputs, key = _inputs("semisup", **{"objective.kw.ce_weight": 0.5})
    loss, (metrics, _) = m.objective.loss(s.params, s.model_state, inputs, key)
    expected = (
        metrics["base_loss"] + 0.5 * metrics["ce_loss"] + 1.0 * (1 - metrics["same_class_corr"])
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # The zero-initialised classifier starts at log(10).
    np.testing.assert_allclose(metrics["ce_loss"], np.log(10), rtol=1e-5)


def test_semisup_classifier_learns_the_labelled_items():
    _, state, metrics = run_steps(
        "semisup",
        1,
        steps=30,
        fixed_batch=True,
        **{"pretrain.steps": 30, "pretrain.optimizer.warmup_steps": 0},
    )
    assert metrics["ce_loss"] < 0.5 * np.log(10)


def test_semisup_with_dino_base_keeps_the_teacher_in_step():
    losses_, state, metrics = run_steps("semisup", 1, steps=2, variant="mnist_dino")
    assert np.isfinite(losses_).all() and "teacher" in state.model_state
    assert "teacher_entropy" in metrics and "ce_loss" in metrics
