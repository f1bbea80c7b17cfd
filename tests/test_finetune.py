"""Fine-tuning mechanics: freezing, unfreezing the top K layers, layer-wise decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import optim, parallel, transfer
from ssl_jax import pp as pp_lib
from ssl_jax.models import classifier, layer_ids
from ssl_jax.stages import finetune
from tests.objective_util import loader
from tests.util import tiny_config


def _setup(phase, unfreeze=-1, model="cnn", bn_train=False, **kw):
    config = tiny_config("unused")
    config.finetune.body.unfreeze = unfreeze
    config.finetune.bn_train = bn_train
    config.finetune.body.optimizer.warmup_steps = 0
    if model != "cnn":
        with config.unlocked():
            config.model.name = model
            config.model.kw = kw
    config.finetune.batch_size = 32
    mesh = parallel.make_mesh(1)
    model = classifier.build(config, 10)
    template = transfer.init_state(
        model, optim.make(config.finetune.head.optimizer, 1, 1)[0], mesh, (8, 8, 1), 0
    )
    # Some non-trivial head, as after an earlier phase.
    params = dict(template.params)
    params["head"] = jax.tree.map(lambda p: p + 0.01, params["head"])
    layers, trainable_from = finetune.phase_layers(config, params, phase)
    pcfg = config.finetune[phase]
    tx, lr = optim.make(pcfg.optimizer, 100, 32, layers=layers, trainable_from=trainable_from)
    state = template.replace(params=params, tx=tx, opt_state=tx.init(params))
    stats_layers = layer_ids(
        config.model.name,
        params["backbone"],
        state.model_state.get("batch_stats", {}).get("backbone", {}),
    )
    stats_frozen = (
        {"batch_stats": {"backbone": jax.tree.map(lambda i: i < trainable_from, stats_layers)}}
        if "batch_stats" in state.model_state
        else {}
    )
    weak = pp_lib.build(config.pp.eval)
    step = finetune.make_step(
        model,
        weak,
        lr,
        mesh,
        num_classes=10,
        frozen_backbone=phase == "head",
        stats_frozen=stats_frozen,
        fc=config.finetune,
    )
    config.pretrain.labelled_per_batch = 32
    config.pretrain.batch_size = 32
    return config, state, step, loader(config, mesh), layers, trainable_from


def _run(state, step, batches, n=3):
    before = jax.device_get(state)
    for _ in range(n):
        state, metrics = step(state, next(batches))
    return before, jax.device_get(state), metrics


def _changed(a, b):
    return jax.tree.map(lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), a, b)


def test_head_phase_freezes_the_backbone_bit_for_bit_and_moves_the_head():
    _, state, step, batches, _, _ = _setup("head")
    before, after, _ = _run(state, step, batches)
    changed = _changed(before.params, after.params)
    assert not any(jax.tree.leaves(changed["backbone"]))
    assert all(jax.tree.leaves(changed["head"]))
    # BatchNorm statistics of the frozen backbone are untouched too.
    assert not any(jax.tree.leaves(_changed(before.model_state, after.model_state)))


def test_frozen_parameters_have_no_optimizer_state():
    _, state, _, _, _, _ = _setup("head")
    head = sum(x.size for x in jax.tree.leaves(state.params["head"]))
    opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert opt == 2 * head  # Adam's two moments of the head only


@pytest.mark.parametrize("k", [1, 2])
def test_unfreezing_top_k_changes_exactly_those_layers(k):
    _, state, step, batches, layers, trainable_from = _setup("body", unfreeze=k, bn_train=True)
    top = max(jax.tree.leaves(layers))
    assert trainable_from == top - k  # the head is layer `top`
    before, after, _ = _run(state, step, batches)
    changed = _changed(before.params, after.params)
    for moved, layer in zip(jax.tree.leaves(changed), jax.tree.leaves(layers), strict=True):
        assert moved == (layer >= trainable_from), layer
    # With bn_train, statistics change only in the unfrozen BatchNorm layers.
    bs_layers = layer_ids(
        "cnn", before.params["backbone"], before.model_state["batch_stats"]["backbone"]
    )
    bs_changed = _changed(before.model_state, after.model_state)["batch_stats"]["backbone"]
    for moved, layer in zip(jax.tree.leaves(bs_changed), jax.tree.leaves(bs_layers), strict=True):
        assert moved == (layer >= trainable_from)


def test_layer_wise_decay_gives_the_expected_learning_rate_per_layer():
    config = tiny_config("unused")
    model = classifier.build(config, 10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))["params"]
    layers, _ = finetune.phase_layers(config, params, "body")
    top = max(jax.tree.leaves(layers))
    cfg = config.finetune.body.optimizer
    cfg.update(name="sgd", momentum=0.0, weight_decay=0.0, warmup_steps=0, lr=0.1)
    tx, _ = optim.make(cfg, 10, 32, layers=layers, layer_decay=0.5)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for u, layer in zip(jax.tree.leaves(updates), jax.tree.leaves(layers), strict=True):
        np.testing.assert_allclose(u, -0.1 * 0.5 ** (top - layer), rtol=1e-6)
    assert top == 5  # cnn: 4 conv layers, the dense layer, then the head


def test_vit_layer_ids_follow_the_blocks():
    from ssl_jax.models import get_model

    m = get_model("vit:ti/2", width=16, depth=3, num_heads=2, mlp_dim=16)
    p = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))["params"]
    ids = layer_ids("vit:ti/2", p)
    assert ids["embedding"]["kernel"] == ids["pos_embedding"] == ids["cls"] == 0
    assert [ids["encoder"][f"block{i}"]["mlp"]["fc1"]["kernel"] for i in range(3)] == [1, 2, 3]
    assert ids["encoder"]["norm"]["scale"] == 4


def test_mixup_and_label_smoothing_targets():
    t = transfer.soft_targets(jnp.array([0, 2]), 4, smoothing=0.2)
    np.testing.assert_allclose(t, [[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05]], rtol=1e-6)
    x = jnp.arange(8.0).reshape(4, 2)
    y = jax.nn.one_hot(jnp.arange(4), 4)
    xm, ym = transfer.mixup(jax.random.PRNGKey(0), x, y, 0.4)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
    lam = float(ym.max())  # every row mixes with one partner by the same lambda
    assert 0.5 <= lam <= 1.0
    np.testing.assert_allclose(xm.sum(), x.sum(), rtol=1e-5)  # a convex mix of a permutation


def test_classifier_state_takes_the_pretrained_backbone():
    config = tiny_config("unused")
    model = classifier.build(config, 10)
    mesh = parallel.make_mesh(1)
    tx = optax.sgd(0.1)
    donor = transfer.init_state(model, tx, mesh, (8, 8, 1), seed=5)
    backbone = {
        "params": donor.params["backbone"],
        "batch_stats": donor.model_state["batch_stats"]["backbone"],
    }
    state = transfer.init_state(model, tx, mesh, (8, 8, 1), seed=0, backbone=backbone)
    for a, b in zip(
        jax.tree.leaves(state.params["backbone"]), jax.tree.leaves(backbone["params"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.any(np.asarray(state.params["head"]["fc"]["kernel"]))  # a new, zero head


def test_batchnorm_statistics_stay_as_pretrained_by_default():
    _, state, step, batches, _, _ = _setup("body")  # bn_train=False, all layers unfrozen
    before, after, _ = _run(state, step, batches)
    assert all(jax.tree.leaves(_changed(before.params, after.params)))
    assert not any(jax.tree.leaves(_changed(before.model_state, after.model_state)))


def _predictor_setup(views, pp_views=None, devices=1, batch_size=8):
    config = tiny_config("unused")
    mesh = parallel.make_mesh(devices)
    model = classifier.build(config, 10)
    state = transfer.init_state(model, optax.sgd(0.0), mesh, (8, 8, 1), 0)
    ms = dict(state.model_state)
    # A head that tells classes apart (a new one is zero: uniform probabilities).
    rng = np.random.RandomState(1)
    head = jax.tree.map(lambda p: p + 0.5 * rng.standard_normal(p.shape), state.params["head"])
    params = {**state.params, "head": head}
    images = np.random.RandomState(0).randint(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    pp_eval = pp_lib.build("value_range(-1, 1)", chunk_size=None)
    if pp_views is None:
        pred = transfer.predictor(config, model, mesh, batch_size=batch_size, views=views)
    else:
        pred = transfer.Predictor(model, pp_eval, mesh, 8, pp_views=pp_views, views=views)
    plain = transfer.Predictor(model, pp_eval, mesh, 8)
    return pred, plain, params, ms, images


def test_test_time_views_are_averaged_with_the_eval_view():
    # A deterministic "view" (the negative image): its probabilities count
    # `views` times, the eval view's once.
    negative = pp_lib.build("value_range(-1, 1)", chunk_size=None)
    flip = lambda key, x: negative(key, 255 - x)  # noqa: E731
    pred, plain, params, ms, images = _predictor_setup(3, pp_views=flip)
    p_eval = plain(params, ms, images)
    p_neg = plain(params, ms, 255 - images)
    assert not np.allclose(p_eval, p_neg, atol=1e-3)
    np.testing.assert_allclose(pred(params, ms, images), (p_eval + 3 * p_neg) / 4, atol=1e-6)


def test_weak_test_time_views_are_fixed_and_change_the_prediction():
    pred, plain, params, ms, images = _predictor_setup(4)  # the config's pp.weak
    assert pred.views == 4
    p = pred(params, ms, images)
    np.testing.assert_array_equal(p, pred(params, ms, images))  # the same views every call
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(p, plain(params, ms, images), atol=1e-4)
    # Sharded over 8 devices, every image gets the same views.
    pred8, _, params8, ms8, _ = _predictor_setup(4, devices=8)
    np.testing.assert_allclose(pred8(params8, ms8, images), p, atol=1e-6)
    # An image's views are keyed on its position in `images`, not in a batch:
    # other batch sizes (20 images: 3 batches of 8, 5 of 4, 1 of 32) agree.
    for batch_size in (4, 32):
        other, _, _, _, _ = _predictor_setup(4, batch_size=batch_size)
        np.testing.assert_allclose(other(params, ms, images), p, atol=1e-6)
    with pytest.raises(ValueError, match="need the recipe"):
        transfer.Predictor(pred.model, lambda k, x: x, parallel.make_mesh(1), 8, views=2)
