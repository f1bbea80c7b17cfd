"""Self-training (FixMatch) mechanics: thresholds, weights, schedules, and the
reduction to supervised training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import optim, parallel, transfer
from ssl_jax import pp as pp_lib
from ssl_jax.data.labels import LabelStore
from ssl_jax.data.loader import Loader
from ssl_jax.models import classifier
from ssl_jax.stages import selftrain
from tests.objective_util import digits
from tests.util import TINY_VIEW, tiny_config


def test_threshold_masks_exactly_the_items_below_it():
    probs = np.array([[0.99, 0.01, 0.0], [0.951, 0.049, 0.0], [0.949, 0.051, 0.0], [0.5, 0.3, 0.2]])
    logits = jnp.log(jnp.asarray(probs) + 1e-30)
    labels, mask, conf = selftrain.pseudo_labels(logits, 0.95)
    np.testing.assert_array_equal(mask, [True, True, False, False])
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])
    np.testing.assert_allclose(conf, probs.max(1), rtol=1e-5)
    assert not selftrain.pseudo_labels(logits, 1.0)[1][1:].any()


def test_certainty_weights():
    logits = jnp.array([[50.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 0.0, 0.0]])
    w = np.asarray(selftrain.certainty_weights(logits, 1.0))
    np.testing.assert_allclose(w[:2], [1.0, 0.25], atol=1e-6)  # one-hot: 1, uniform: 1/C
    assert 0.25 < w[2] < 1
    # A higher temperature softens the prediction: lower certainty.
    assert selftrain.certainty_weights(logits, 4.0)[2] < w[2]


def test_unlabelled_weight_ramps():
    sc = tiny_config("unused").selftrain
    sc.update(unlabelled_weight=2.0, ramp_steps=100, ramp="linear")
    np.testing.assert_allclose([selftrain.ramp(sc, s) for s in (0, 50, 100, 500)], [0, 1, 2, 2])
    sc.ramp = "sigmoid"
    np.testing.assert_allclose(selftrain.ramp(sc, 100), 2.0)
    np.testing.assert_allclose(selftrain.ramp(sc, 50), 2.0 * np.exp(-5 * 0.25), rtol=1e-6)
    sc.ramp = "none"
    assert selftrain.ramp(sc, 0) == 2.0


def _setup(**selftrain_overrides):
    config = tiny_config("unused")
    config.pp.weak = TINY_VIEW
    config.pp.strong = TINY_VIEW + "|cutout(0.5, fill=0)"
    sc = config.selftrain
    sc.update(labelled_batch=16, unlabelled_ratio=3, ramp="none", **selftrain_overrides)
    mesh = parallel.make_mesh(1)
    model = classifier.build(config, 10)
    tx, lr = optim.make(sc.optimizer, 10, 64)
    images, targets = digits()
    labels = LabelStore.choose(targets, per_class=5).label_array()
    prior = selftrain.label_prior(labels, 10)
    variables = None
    if (
        sc.pseudo_labels == "snapshot"
        or sc.ema_decay
        or sc.distribution_alignment
        or sc.class_thresholds
    ):
        fresh = transfer.init_state(model, tx, mesh, (8, 8, 1), 0)
        variables = {"params": fresh.params, **fresh.model_state}
        if sc.pseudo_labels == "snapshot":
            variables["snapshot"] = fresh.params
        if sc.ema_decay:
            variables["ema"] = fresh.params
        if sc.distribution_alignment:
            variables["alignment"] = jnp.asarray(prior)
        if sc.class_thresholds:
            variables["learning"] = jnp.zeros(11).at[-1].set(1.0)
    state = transfer.init_state(model, tx, mesh, (8, 8, 1), 0, variables=variables)
    step = selftrain.make_step(
        model, pp_lib.build(config.pp.weak), pp_lib.build(config.pp.strong), lr, mesh, sc, prior
    )
    batches = Loader(
        {"image": images, "label": labels},
        64,
        mesh,
        labels=labels,
        labelled_per_batch=16,
        balanced=True,
    )
    return state, step, next(batches)


def _params_after(state, step, batch):
    state, metrics = step(state, batch)
    return jax.device_get(state.params), jax.device_get(state.model_state), metrics


def _other_unlabelled_rows(batch):
    # The loader puts 48 pool rows first, then the 16 labelled rows.
    image = np.asarray(batch["image"]).copy()
    image[:48] = image[:48][::-1]
    image[:24] = 255 - image[:24]
    return {**batch, "image": jnp.asarray(image)}


def test_threshold_one_and_weight_zero_is_supervised_training_on_the_labelled_items():
    state, step, batch = _setup(threshold=1.0, unlabelled_weight=0.0)
    p1, s1, m1 = _params_after(state, step, batch)
    state, step, _ = _setup(threshold=1.0, unlabelled_weight=0.0)
    p2, s2, _ = _params_after(state, step, _other_unlabelled_rows(batch))
    # The unlabelled rows have no influence at all: same parameters, same statistics.
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(m1["mask_rate"]) == 0.0
    # With a threshold of 0 and a weight, they do.
    state, step, _ = _setup(threshold=0.0, unlabelled_weight=1.0)
    p3, _, m3 = _params_after(state, step, batch)
    assert float(m3["mask_rate"]) == 1.0 and float(m3["unlabelled_loss"]) > 0
    assert any(
        np.any(a != b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3), strict=True)
    )


@pytest.mark.parametrize("weighting", [False, True])
def test_uncertainty_weighting_changes_only_the_weights(weighting):
    state, step, batch = _setup(threshold=0.0, uncertainty_weighting=weighting)
    _, _, m = _params_after(state, step, batch)
    # The new head predicts uniformly: every weight is 1/C = 0.1.
    expected = np.log(10) * (0.1 if weighting else 1.0)
    assert float(m["labelled_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(m["unlabelled_loss"]) == pytest.approx(expected, rel=1e-5)


def test_snapshot_pseudo_labels_refresh_every_n_steps():
    state, step, batch = _setup(pseudo_labels="snapshot", refresh_every=2, threshold=0.0)
    start = jax.device_get(state.params)
    state, _ = step(state, batch)
    after1 = jax.device_get(state)
    for a, b in zip(
        jax.tree.leaves(after1.model_state["snapshot"]), jax.tree.leaves(start), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # step 1: still the initial model
    state, _ = step(state, batch)
    after2 = jax.device_get(state)
    for a, b in zip(
        jax.tree.leaves(after2.model_state["snapshot"]), jax.tree.leaves(after2.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # step 2: refreshed from the model


def _assert_trees_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def _any_differ(a, b):
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(not np.allclose(np.asarray(x), np.asarray(y)) for x, y in leaves)


def test_ema_follows_the_params_and_leaves_training_alone():
    plain, step, batch = _setup(threshold=0.5)
    state, step_ema, _ = _setup(threshold=0.5, ema_decay=0.9)
    start = jax.device_get(state.params)
    for _ in range(2):
        plain, _ = step(plain, batch)
        before = jax.device_get(state.model_state["ema"])
        state, _ = step_ema(state, batch)
        expected = jax.tree.map(
            lambda e, p: 0.9 * e + 0.1 * p, before, jax.device_get(state.params)
        )
        _assert_trees_close(state.model_state["ema"], expected, rtol=1e-6, atol=1e-7)
    # Keeping the average does not change the training itself.
    _assert_trees_close(state.params, plain.params, rtol=1e-6, atol=1e-7)
    params, ms = selftrain.eval_variables(state)
    assert "ema" not in ms and "snapshot" not in ms
    _assert_trees_close(params, state.model_state["ema"], rtol=0, atol=0)
    assert _any_differ(params, start) and _any_differ(params, state.params)


def test_ema_pseudo_labels_come_from_the_average():
    # Give the snapshot teacher and the EMA teacher the same other parameters
    # (the model's, perturbed): one step must then train the student identically.
    snap, step_snap, batch = _setup(pseudo_labels="snapshot", threshold=0.0)
    leaves, tree = jax.tree.flatten(jax.device_get(snap.params))
    rng = np.random.default_rng(0)
    teacher = jax.tree.unflatten(tree, [x + rng.normal(0, 0.5, x.shape) for x in leaves])
    ema, step_ema, _ = _setup(pseudo_labels="ema", ema_decay=0.5, threshold=0.0)
    snap = snap.replace(model_state={**snap.model_state, "snapshot": teacher})
    ema = ema.replace(model_state={**ema.model_state, "ema": teacher})
    snap, m_snap = step_snap(snap, batch)
    ema, m_ema = step_ema(ema, batch)
    np.testing.assert_allclose(m_ema["mask_rate"], m_snap["mask_rate"])
    _assert_trees_close(ema.params, snap.params, rtol=1e-6, atol=1e-7)
    # ... and not as with the current model as the teacher.
    cur, step_cur, _ = _setup(threshold=0.0)
    assert _any_differ(step_cur(cur, batch)[0].params, ema.params)


def test_joint_batchnorm_takes_statistics_over_labelled_and_strong_views():
    state, step, batch = _setup(threshold=1.0, unlabelled_weight=0.0, bn_train=True, bn_joint=True)
    start = jax.device_get(state)
    _, stats, _ = _params_after(state, step, batch)
    # The step's views, rebuilt from its keys; the running statistics after one
    # step are those of one train-mode pass over [labelled weak; pool strong].
    config = tiny_config("unused")
    weak = pp_lib.build(TINY_VIEW)
    strong = pp_lib.build(TINY_VIEW + "|cutout(0.5, fill=0)")
    k_lw, _, k_us = jax.random.split(jax.random.fold_in(start.rng, start.step), 3)
    x = jnp.asarray(batch["image"])
    both = jnp.concatenate([weak(k_lw, x[48:]), strong(k_us, x[:48])])
    model = classifier.build(config, 10)
    _, expected = model.apply(
        {"params": start.params, **start.model_state}, both, train=True, mutable=["batch_stats"]
    )
    _assert_trees_close(stats["batch_stats"], expected["batch_stats"], rtol=1e-5, atol=1e-6)
    # Unlike separate passes, whose statistics are the labelled items' alone,
    # the pool now counts, even with no pseudo-label loss.
    state, step, _ = _setup(threshold=1.0, unlabelled_weight=0.0, bn_train=True)
    _, separate, _ = _params_after(state, step, batch)
    assert _any_differ(separate["batch_stats"], stats["batch_stats"])
    state, step, _ = _setup(threshold=1.0, unlabelled_weight=0.0, bn_train=True, bn_joint=True)
    _, other, _ = _params_after(state, step, _other_unlabelled_rows(batch))
    assert _any_differ(other["batch_stats"], stats["batch_stats"])


def test_alignment_rescales_by_prior_over_running_mean():
    probs = jnp.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    uniform = jnp.full(3, 1 / 3)
    # Where the running mean is the prior, nothing changes.
    np.testing.assert_allclose(selftrain.align(probs, uniform, uniform), probs, rtol=1e-6)
    # A model that over-predicts class 0 has class 0 scaled down, rows still sum to 1.
    running = jnp.array([0.5, 0.3, 0.2])
    q = np.asarray(selftrain.align(probs, uniform, running))
    expected = np.asarray(probs) / np.asarray(running)
    np.testing.assert_allclose(q, expected / expected.sum(1, keepdims=True), rtol=1e-6)
    assert q[0, 0] < 0.6 and np.allclose(q.sum(1), 1.0)
    # The aligned probabilities are what the threshold sees: 0.6 no longer passes 0.45.
    logits = jnp.log(probs)
    assert bool(selftrain.pseudo_labels(logits, 0.45)[1][0])
    assert not bool(selftrain.pseudo_labels(logits, 0.45, uniform, running)[1][0])
    # The prior: labelled classes counted (-1 is unlabelled), add-one smoothed.
    np.testing.assert_allclose(
        selftrain.label_prior(np.array([-1, 0, 0, 1, -1]), 3), [3 / 6, 2 / 6, 1 / 6]
    )


def test_alignment_tracks_the_mean_prediction_and_moves_pseudo_labels():
    plain, step_plain, batch = _setup(threshold=0.0)
    state, step, _ = _setup(threshold=0.0, distribution_alignment=True, alignment_momentum=0.5)
    start = jax.device_get(state)
    prior = np.asarray(start.model_state["alignment"])
    state, _ = step(state, batch)
    plain, _ = step_plain(plain, batch)
    # Starting at the prior, the rescaling is the identity: the same step as without it.
    _assert_trees_close(state.params, plain.params, rtol=1e-6, atol=1e-7)
    # The running mean moved halfway to the teacher's mean prediction on the weak views.
    _, k_uw, _ = jax.random.split(jax.random.fold_in(start.rng, start.step), 3)
    x_u = pp_lib.build(TINY_VIEW)(k_uw, jnp.asarray(batch["image"])[:48])
    model = classifier.build(tiny_config("unused"), 10)
    ms = selftrain.model_variables(start.model_state)
    logits = model.apply({"params": start.params, **ms}, x_u)
    expected = 0.5 * prior + 0.5 * np.asarray(jax.nn.softmax(logits)).mean(0)
    np.testing.assert_allclose(state.model_state["alignment"], expected, rtol=1e-5, atol=1e-7)
    # A running mean far from the prior changes the pseudo-labels, hence the step.
    state, step, _ = _setup(threshold=0.0, distribution_alignment=True)
    skewed = jnp.asarray([0.91] + [0.01] * 9)
    state = state.replace(model_state={**state.model_state, "alignment": skewed})
    plain, step_plain, _ = _setup(threshold=0.0)
    assert _any_differ(step(state, batch)[0].params, step_plain(plain, batch)[0].params)


def test_class_thresholds_scale_with_each_class_learning_status():
    # sigma = (0.5, 0.25, 0), unused 0.25: beta = (1, 0.5, 0), M(beta) = (1, 1/3, 0).
    thr = np.asarray(selftrain.class_thresholds(0.9, jnp.array([0.5, 0.25, 0.0, 0.25])))
    np.testing.assert_allclose(thr, [0.9, 0.3, 0.0], rtol=1e-6)
    # Warm-up: while most items are unused, every class sits below the threshold.
    warm = np.asarray(selftrain.class_thresholds(0.9, jnp.array([0.1, 0.05, 0.0, 0.85])))
    assert (warm < 0.9).all() and warm[0] > warm[1] > warm[2] == 0.0
    # Each item is held to its own predicted class's threshold.
    probs = np.array([[0.85, 0.1, 0.05], [0.1, 0.35, 0.55], [0.25, 0.4, 0.35], [0.3, 0.2, 0.5]])
    label, mask, _ = selftrain.pseudo_labels(jnp.log(jnp.asarray(probs)), jnp.asarray(thr))
    np.testing.assert_array_equal(label, [0, 2, 1, 2])
    np.testing.assert_array_equal(mask, [False, True, True, True])
    # The batch's shares: confident per predicted class, the rest unused; they sum to 1.
    conf = jnp.array([0.99, 0.97, 0.5, 0.96, 0.2])
    shares = selftrain.confident_shares(jnp.array([0, 0, 1, 2, 2]), conf, 0.95, 3)
    np.testing.assert_allclose(shares, [0.4, 0.0, 0.2, 0.4], rtol=1e-6)


def test_class_thresholds_start_open_and_track_the_confident_shares():
    state, step, batch = _setup(threshold=0.5, class_thresholds=True, class_threshold_momentum=0.5)
    # A random head (the built one is zero): some pool items confident, some not.
    head = jax.random.normal(jax.random.PRNGKey(1), (256, 10)) * 10.0
    params = {**state.params, "head": {"fc": {**state.params["head"]["fc"], "kernel": head}}}
    state = state.replace(params=params)
    start = jax.device_get(state)
    state, metrics = step(state, batch)
    # Nothing learnt yet: every threshold is 0, so every pool item is pseudo-labelled.
    assert float(metrics["min_threshold"]) == 0.0 and float(metrics["mask_rate"]) == 1.0
    # The running shares moved halfway to this batch's, from the teacher's weak views.
    _, k_uw, _ = jax.random.split(jax.random.fold_in(start.rng, start.step), 3)
    x_u = pp_lib.build(TINY_VIEW)(k_uw, jnp.asarray(batch["image"])[:48])
    model = classifier.build(tiny_config("unused"), 10)
    ms = selftrain.model_variables(start.model_state)
    p = np.asarray(jax.nn.softmax(model.apply({"params": start.params, **ms}, x_u)))
    confident = p.max(1) > 0.5
    assert 0 < confident.mean() < 1 and len(set(p.argmax(1)[confident])) > 1
    shares = np.bincount(p.argmax(1)[confident], minlength=10) / len(p)
    expected = 0.5 * np.eye(11)[-1] + 0.5 * np.append(shares, 1 - confident.mean())
    learning = np.asarray(state.model_state["learning"])
    np.testing.assert_allclose(learning, expected, rtol=1e-5, atol=1e-7)
    assert np.isclose(learning.sum(), 1.0)
    # Without class thresholds the same step masks by the fixed 0.5.
    plain, step_plain, _ = _setup(threshold=0.5)
    _, plain_metrics = step_plain(plain.replace(params=params), batch)
    np.testing.assert_allclose(float(plain_metrics["mask_rate"]), confident.mean(), rtol=1e-6)
