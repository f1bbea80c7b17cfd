"""Classic pretext objectives: RBM, GAN, rotation, patch position, autoencoder, colorization."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax.objectives import autoencoder, colorization, patch_position, rbm, rotation
from ssl_jax.stages.pretrain import make_step
from tests.objective_util import build, digits, loader

# ------------------------------------------------------------------------- RBM


def _rbm3x2():
    p = {
        "W": jnp.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.8]]),
        "b": jnp.array([0.1, -0.3, 0.2]),
        "c": jnp.array([-0.1, 0.4]),
    }
    return p


def test_free_energy_matches_brute_force_sum_over_hidden_states():
    p = _rbm3x2()
    for v in itertools.product([0.0, 1.0], repeat=3):
        v = jnp.array(v)
        # F(v) = -log sum_h exp(v.b + h.c + v W h)
        terms = [
            float(v @ p["b"] + jnp.array(h) @ p["c"] + v @ p["W"] @ jnp.array(h))
            for h in itertools.product([0.0, 1.0], repeat=2)
        ]
        expected = -np.log(np.sum(np.exp(terms)))
        np.testing.assert_allclose(rbm.free_energy(v[None], p)[0], expected, rtol=1e-5)


def test_cd1_gradient_matches_a_hand_computation():
    p = _rbm3x2()
    v = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    key = jax.random.PRNGKey(0)
    _, v_neg = rbm.cd_loss(key, v, p, steps=1)
    grads = jax.grad(lambda q: rbm.cd_loss(key, v, q, steps=1)[0])(p)
    # By hand: dW = <v h>_model - <v h>_data with h the hidden probabilities.
    sig = lambda x: 1 / (1 + np.exp(-x))
    vn, vd = np.asarray(v_neg), np.asarray(v)
    W, b, c = (np.asarray(p[k]) for k in ("W", "b", "c"))
    hd, hn = sig(vd @ W + c), sig(vn @ W + c)
    np.testing.assert_allclose(grads["W"], (vn.T @ hn - vd.T @ hd) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["b"], (vn - vd).mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["c"], (hn - hd).mean(0), rtol=1e-5, atol=1e-7)


def test_one_gibbs_step_samples_the_exact_transition_distribution():
    # The negative sample of CD-1: P(v'|v) = sum_h P(h|v) P(v'|h), by hand over
    # all 4 hidden and 8 visible states, against 40,000 draws of rbm.gibbs.
    # Weights ×4: strong enough that mean-field hidden units (probabilities
    # instead of samples) would miss by 3.5 points, over 3 standard errors.
    p = {**_rbm3x2(), "W": 4 * _rbm3x2()["W"]}
    W, b, c = (np.asarray(p[k], np.float64) for k in ("W", "b", "c"))
    sig = lambda x: 1 / (1 + np.exp(-x))
    v0 = np.array([1.0, 0.0, 1.0])
    states = [np.array(s) for s in itertools.product([0.0, 1.0], repeat=3)]
    exact = np.zeros(8)
    for h in itertools.product([0.0, 1.0], repeat=2):
        h = np.array(h)
        ph = np.prod(np.where(h == 1, sig(v0 @ W + c), 1 - sig(v0 @ W + c)))
        pv = sig(W @ h + b)
        exact += ph * np.array([np.prod(np.where(s == 1, pv, 1 - pv)) for s in states])
    n = 40_000
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    draws = jax.vmap(lambda k: rbm.gibbs(k, jnp.asarray(v0, jnp.float32)[None], p, 1)[0])(keys)
    codes = np.asarray(draws) @ np.array([4, 2, 1])
    freq = np.bincount(codes.astype(int), minlength=8) / n
    assert abs(exact.sum() - 1) < 1e-12
    np.testing.assert_allclose(freq, exact, atol=3 * np.sqrt(exact * (1 - exact) / n).max())


def test_rbm_layers_train_one_at_a_time_and_stack_into_the_mlp():
    overrides = {"pretrain.steps": 4, "pretrain.optimizer.lr": 0.1}
    config, mesh, model = build("rbm", 1, **overrides)
    state = model.init_state(0)
    step = make_step(model)
    batches = loader(config, mesh)
    history = [jax.device_get(state.params)]
    for _ in range(4):  # 2 steps per layer
        state, metrics = step(state, next(batches))
        history.append(jax.device_get(state.params))
    moved = lambda a, b, layer: any(np.any(a[layer][k] != b[layer][k]) for k in ("W", "b", "c"))
    assert moved(history[0], history[2], "layer0") and not moved(history[0], history[2], "layer1")
    assert not moved(history[2], history[4], "layer0") and moved(history[2], history[4], "layer1")
    assert {"recon_error_l0", "pseudo_ll_l1"} <= set(metrics)
    # The stack is the mlp backbone: its features are the RBMs' up-pass.
    images = jnp.asarray(digits()[0][:5] / 255.0, jnp.float32)
    feats = model.objective.encode(state.params, state.model_state, images)
    v = images.reshape(5, -1)
    for k in range(2):
        v = rbm.hidden_probs(v, state.params[f"layer{k}"])
    np.testing.assert_allclose(feats, v, rtol=1e-5, atol=1e-6)


def test_rbm_stack_initialises_an_mlp_classifier_that_finetuning_trains():
    from ssl_jax import optim, transfer
    from ssl_jax import pp as pp_lib
    from ssl_jax.models import classifier
    from ssl_jax.stages import finetune

    config, mesh, model = build("rbm", 1, **{"pretrain.steps": 4, "pretrain.optimizer.lr": 0.1})
    state, step, batches = model.init_state(0), make_step(model), loader(config, mesh)
    for _ in range(4):
        state, _ = step(state, next(batches))
    backbone = model.objective.backbone_variables(state.params, state.model_state)
    clf = classifier.build(config, 10)
    template = transfer.init_state(clf, optax.sgd(0.0), mesh, (8, 8, 1), 0, backbone=backbone)
    images = jnp.asarray(digits()[0][:5] / 255.0, jnp.float32)
    variables = {"params": template.params, **template.model_state}
    features = clf.apply(variables, images, method="features")
    np.testing.assert_allclose(
        features, model.objective.encode(state.params, state.model_state, images), rtol=1e-5
    )
    # The fine-tuning stage's body phase (every layer trainable) trains the stack.
    config.finetune.body.optimizer.update(warmup_steps=0, lr=0.05)
    layers, trainable_from = finetune.phase_layers(config, template.params, "body")
    tx, lr = optim.make(
        config.finetune.body.optimizer, 40, 32, layers=layers, trainable_from=trainable_from
    )
    ft = template.replace(tx=tx, opt_state=tx.init(template.params))
    ft_step = finetune.make_step(
        clf,
        pp_lib.build(config.pp.eval),
        lr,
        mesh,
        num_classes=10,
        frozen_backbone=False,
        stats_frozen={},
        fc=config.finetune,
    )
    config.pretrain.update(batch_size=32, labelled_per_batch=32)
    batch, losses = next(loader(config, mesh)), []
    for _ in range(40):  # a 4-step stack starts near its init: features vary little
        ft, metrics = ft_step(ft, batch)
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    moved, start = jax.device_get(ft.params["backbone"]), jax.device_get(backbone["params"])
    for k in range(2):
        assert np.any(moved[f"dense{k}"]["kernel"] != start[f"dense{k}"]["kernel"])


def test_persistent_cd_keeps_chains_in_the_state():
    config, mesh, model = build("rbm", 1, **{"objective.kw.persistent": True})
    state = model.init_state(0)
    state, _ = make_step(model)(state, next(loader(config, mesh)))
    chains = jax.device_get(state.model_state["chains"])
    assert chains["layer0"].shape == (64, 64) and set(np.unique(chains["layer0"])) <= {0.0, 1.0}
    assert chains["layer0"].any()  # moved from their zero start


# ------------------------------------------------------------------------- GAN


def test_each_gan_network_is_updated_only_by_its_own_loss():
    config, mesh, model = build("gan", 1)
    obj = model.objective
    state = model.init_state(0)
    key = jax.random.PRNGKey(1)
    inputs = model.inputs(key, next(loader(config, mesh)))
    d_grad = jax.grad(lambda p: obj.terms(p, state.model_state, inputs, key)[0])(state.params)
    g_grad = jax.grad(lambda p: obj.terms(p, state.model_state, inputs, key)[1])(state.params)
    total = jax.grad(lambda p: obj.loss(p, state.model_state, inputs, key)[0])(state.params)
    zero = lambda tree: all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))
    assert zero(d_grad["generator"]) and not zero(d_grad["backbone"])
    assert zero(g_grad["backbone"]) and zero(g_grad["logit"]) and not zero(g_grad["generator"])
    for name, want in (("generator", g_grad), ("backbone", d_grad), ("logit", d_grad)):
        for a, b in zip(jax.tree.leaves(total[name]), jax.tree.leaves(want[name]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_gan_has_two_optimizers_and_draws_samples():
    config, mesh, model = build("gan", 1)
    state = model.init_state(0)
    before = jax.device_get(state.params)
    state, metrics = make_step(model)(state, next(loader(config, mesh)))
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(metrics)
    after = jax.device_get(state.params)
    for name in ("generator", "backbone", "logit"):  # both networks stepped
        assert any(
            np.any(a != b)
            for a, b in zip(
                jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True
            )
        )
    images = model.eval_fn(jax.random.PRNGKey(0), digits()[0][:4])
    grid = model.objective.visualize(state.params, state.model_state, images, None)["gan_samples"]
    assert grid["samples"].shape == (4, 8, 8, 1) and np.abs(grid["samples"]).max() <= 1


def test_gan_stops_naming_the_broken_loss_and_its_own_learning_rates(tmp_path):
    from ssl_jax import metrics
    from ssl_jax.checkpoint import Checkpointer
    from ssl_jax.stages import loop

    # A NaN learning rate for the discriminator: after the first update its
    # parameters are NaN, so the next step's losses are not finite.
    config, mesh, model = build("gan", 1, **{"objective.kw.d_lr": float("nan")})
    ckpt, writer = Checkpointer(str(tmp_path / "ckpt")), metrics.MetricWriter(str(tmp_path))
    with pytest.raises(loop.NonFiniteLoss) as err:
        loop.run(
            model.init_state(0),
            make_step(model),
            loader(config, mesh),
            name="pretrain",
            steps=4,
            ckpt=ckpt,
            writer=writer,
            log_every=4,
            ckpt_every=4,
            images_per_step=1,
            hint=model.objective.nonfinite_hint,
        )
    writer.close()
    ckpt.close()
    message = str(err.value)
    assert message.startswith("non-finite loss at step 2 of pretrain ("), message
    named = message.split("(")[1].split(")")[0]  # NaN D: both losses go through it
    assert "d_loss=nan" in named and "g_loss=nan" in named and "lr=nan" in named
    assert "objective.kw.d_lr" in message and "No checkpoint had been written yet." in message


# --------------------------------------------------------------- pretext tasks


def test_rotation_labels_match_the_rotation_applied():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 5, 1)), jnp.float32)
    rotated, labels = rotation.rotate_all(x)
    assert rotated.shape == (12, 5, 5, 1)
    for i in range(12):
        k, j = int(labels[i]), i % 3
        np.testing.assert_array_equal(rotated[i], np.rot90(np.asarray(x[j]), k, axes=(0, 1)))
    with pytest.raises(ValueError, match="square"):
        rotation.rotate_all(jnp.zeros((1, 4, 6, 1)))


def test_patch_labels_match_positions_and_patches_never_overlap():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(200, 28, 28, 1)), jnp.float32)
    patch, gap, jitter = 6, 3, 1
    c, n, labels, corners = patch_position.sample_pairs(
        jax.random.PRNGKey(0), images, patch, gap, jitter
    )
    corners, labels = np.asarray(corners), np.asarray(labels)
    assert set(labels) == set(range(8))  # all 8 positions occur
    cell = patch + gap
    for i in range(200):
        (cy, cx), (ny, nx) = corners[i]
        # The neighbour's grid offset from the centre recovers the label.
        offset = (round((ny - cy) / cell) + 1, round((nx - cx) / cell) + 1)
        assert patch_position.NEIGHBOURS.index(offset) == labels[i]
        # Never overlapping (not even touching), always inside the image.
        apart = max(abs(ny - cy), abs(nx - cx))
        assert apart >= patch + gap - 2 * jitter > patch
        assert corners[i].min() >= 0 and corners[i].max() <= 28 - patch
        np.testing.assert_array_equal(c[i], images[i, cy : cy + patch, cx : cx + patch])
        np.testing.assert_array_equal(n[i], images[i, ny : ny + patch, nx : nx + patch])
    with pytest.raises(ValueError, match="exceed"):
        patch_position.sample_pairs(jax.random.PRNGKey(0), images, 6, 2, 1)


def test_autoencoder_corruptions():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 16, 16, 1)), jnp.float32)
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(autoencoder.corrupt(key, x, "none", 0.5), x)
    masked = autoencoder.corrupt(key, x, "mask", 0.25)
    dropped = np.mean(np.asarray(masked != x))
    assert 0.2 < dropped < 0.3
    noisy = autoencoder.corrupt(key, x, "gaussian", 0.1)
    assert 0.08 < float(jnp.std(noisy - x)) < 0.12
    with pytest.raises(ValueError, match="corruption"):
        autoencoder.corrupt(key, x, "blur", 0.1)


def test_autoencoder_report_rows():
    config, mesh, model = build("autoencoder", 1)
    state = model.init_state(0)
    images = model.eval_fn(jax.random.PRNGKey(0), digits()[0][:4])
    grid = model.objective.visualize(state.params, state.model_state, images, jax.random.key(0))
    rows = grid["autoencoder_reconstructions"]
    assert list(rows) == ["input", "corrupted", "reconstruction"]
    assert all(r.shape == images.shape for r in rows.values())


# ---------------------------------------------------------------- colorization


def test_colour_split_round_trips_and_gray_input():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 3)), jnp.float32)
    y, uv = colorization.split_colour(x)
    b = y[..., 0] + uv[..., 0]
    r = y[..., 0] + uv[..., 1]
    g = (y[..., 0] - 0.299 * r - 0.114 * b) / 0.587
    np.testing.assert_allclose(jnp.stack([r, g, b], -1), x, rtol=1e-5, atol=1e-6)
    gray = colorization.gray_input(x)
    assert gray.shape == x.shape and np.allclose(gray[..., 0], gray[..., 2])


def test_colorization_refuses_grayscale_data():
    from configs import colorization as cfg

    with pytest.raises(ValueError, match="MNIST has no colour"):
        cfg.get_config("mnist")
    config = cfg.get_config("cifar10")
    config.data.channels = 1
    with pytest.raises(ValueError, match="needs colour images"):
        colorization.Objective(config)


def _colour_images(n=64, size=8, seed=0):
    """Smooth random colour fields: gray structure plus colour that follows it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([a * yy + (1 - a) * xx, b * xx, c * (1 - yy)], -1)
        out.append(np.clip(base + 0.05 * rng.normal(size=base.shape), 0, 1))
    return (np.asarray(out) * 255).astype(np.uint8)


def _colour_model(num_devices=1, **overrides):
    """(model, its first batch) for colorization with a small CNN on 8×8 colour images."""
    from ssl_jax import parallel
    from ssl_jax.data.loader import Loader
    from ssl_jax.stages.common import PretrainModel
    from tests.util import tiny_config

    overrides = {"data.channels": 3, "pretrain.steps": 40, **overrides}
    config = tiny_config("unused", "colorization", "cifar10", **overrides)
    with config.unlocked():
        config.model.name = "cnn"
        config.model.kw = {"dense_dim": 32}
    config.pretrain.optimizer.warmup_steps = 0
    mesh = parallel.make_mesh(num_devices)
    model = PretrainModel(config, mesh, (8, 8, 3), 10)
    return model, next(Loader({"image": _colour_images()}, 64, mesh))


def test_colorization_one_and_eight_devices_agree():
    assert len(jax.devices()) == 8
    runs = []
    for n in (1, 8):
        model, batch = _colour_model(n, **{"pretrain.optimizer.name": "sgd"})
        state, step, losses = model.init_state(0), make_step(model), []
        for _ in range(2):
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        runs.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_colorization_learns_on_colour_images():
    model, batch = _colour_model()
    state = model.init_state(0)
    step = make_step(model)
    losses = []
    for _ in range(40):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    images = model.eval_fn(jax.random.PRNGKey(0), _colour_images(4))
    rows = model.objective.visualize(state.params, state.model_state, images, None)["colorization"]
    assert rows["colourised"].shape == images.shape
    # Evaluators see the gray version: colour changes with equal luma do not move features.
    feats = model.objective.encode(state.params, state.model_state, images)
    gray = colorization.gray_input(images)
    np.testing.assert_allclose(
        feats, model.objective.encode(state.params, state.model_state, gray), rtol=1e-5, atol=1e-6
    )
