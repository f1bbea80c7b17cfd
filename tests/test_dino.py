"""DINO: loss values, teacher EMA, centre update, schedules, no gradient to the teacher."""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import losses
from ssl_jax.stages.pretrain import make_step
from tests.objective_util import build, loader


def test_dino_loss_uniform_is_log_k():
    k = 32
    zeros = jnp.zeros((4, k))
    loss = losses.dino([zeros] * 4, [zeros] * 2, jnp.zeros((1, k)))
    np.testing.assert_allclose(loss, np.log(k), rtol=1e-6)


def test_dino_loss_matches_written_out_cross_entropy():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3)]
    teacher = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2)]
    center = rng.normal(size=(1, 5)).astype(np.float32)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    total, pairs = 0.0, 0
    for i in range(2):
        p_t = softmax((teacher[i] - center) / 0.05)
        for v in range(3):
            if v != i:
                log_p = np.log(softmax(student[v] / 0.2))
                total += np.mean(-(p_t * log_p).sum(-1))
                pairs += 1
    got = losses.dino(student, teacher, center, student_temp=0.2, teacher_temp=0.05)
    np.testing.assert_allclose(got, total / pairs, rtol=1e-5)
    assert pairs == 4  # 2 teacher views x 3 student views, minus the 2 same-view pairs


def _one_step():
    overrides = {"objective.kw.momentum_teacher": 0.9, "pretrain.optimizer.warmup_steps": 0}
    config, mesh, model = build("dino", 1, **overrides)
    state = model.init_state(0)
    before = jax.device_get(state)
    batch = next(loader(config, mesh))
    after, _ = make_step(model)(state, batch)
    return config, model, before, jax.device_get(after), batch


def test_teacher_is_ema_of_student_at_configured_momentum():
    config, model, before, after, _ = _one_step()
    m = float(model.objective.momentum_at(0))
    assert m == np.float32(0.9)  # first update: the configured momentum
    for t0, t1, s1 in zip(
        jax.tree.leaves(before.model_state["teacher"]["params"]),
        jax.tree.leaves(after.model_state["teacher"]["params"]),
        jax.tree.leaves(after.params),
        strict=True,
    ):
        np.testing.assert_allclose(t1, m * t0 + (1 - m) * s1, rtol=1e-5, atol=1e-7)
    # The student did move, so this is not trivially true.
    moved = [
        np.abs(a - b).max()
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True)
    ]
    assert max(moved) > 1e-4


def test_momentum_and_teacher_temperature_schedules():
    _, _, model = build(
        "dino",
        1,
        **{
            "pretrain.steps": 100,
            "objective.kw.momentum_teacher": 0.99,
            "objective.kw.warmup_teacher_temp": 0.04,
            "objective.kw.teacher_temp": 0.07,
            "objective.kw.warmup_teacher_temp_steps": 10,
        },
    )
    obj = model.objective
    np.testing.assert_allclose(obj.momentum_at(0), 0.99, rtol=1e-6)
    np.testing.assert_allclose(obj.momentum_at(50), 0.995, rtol=1e-6)
    np.testing.assert_allclose(obj.momentum_at(100), 1.0, rtol=1e-6)
    np.testing.assert_allclose(obj.teacher_temp_at(0), 0.04, rtol=1e-6)
    np.testing.assert_allclose(obj.teacher_temp_at(5), 0.055, rtol=1e-6)
    np.testing.assert_allclose(obj.teacher_temp_at(50), 0.07, rtol=1e-6)


def test_center_update_and_no_gradient_to_teacher():
    config, mesh, model = build("dino", 1)
    obj = model.objective
    state = model.init_state(0)
    # Give the centre a non-zero start so both terms of the EMA count.
    ms = dict(state.model_state, center=jnp.full_like(state.model_state["center"], 0.3))
    key = jax.random.PRNGKey(1)
    inputs = model.inputs(key, next(loader(config, mesh)))
    _, _, new_state, _ = obj.forward(state.params, ms, inputs, key, True)
    globals_ = jnp.concatenate([inputs["global1"], inputs["global2"]])
    (_, t_logits), _ = obj.net.apply(ms["teacher"], globals_, train=True, mutable=["batch_stats"])
    m = config.objective.kw.center_momentum
    expected = 0.3 * m + (1 - m) * np.asarray(t_logits).mean(0, keepdims=True)
    np.testing.assert_allclose(new_state["center"], expected, rtol=1e-5, atol=1e-6)

    def loss_of(teacher_params, center):
        teacher = dict(ms["teacher"], params=teacher_params)
        return obj.loss(state.params, dict(ms, teacher=teacher, center=center), inputs, key)[0]

    g_teacher, g_center = jax.grad(loss_of, argnums=(0, 1))(ms["teacher"]["params"], ms["center"])
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_teacher))
    assert not np.any(np.asarray(g_center))
    g_student = jax.grad(lambda p: obj.loss(p, ms, inputs, key)[0])(state.params)
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(g_student))


def test_dino_runs_with_a_vit_backbone_and_local_crops():
    from ssl_jax import parallel
    from ssl_jax.stages.common import PretrainModel
    from tests.util import tiny_config

    config = tiny_config("unused", "dino")
    with config.unlocked():
        config.model.name = "vit:ti/2"
        config.model.kw = dict(width=32, depth=1, num_heads=2, mlp_dim=32)
    mesh = parallel.make_mesh(1)
    model = PretrainModel(config, mesh, (8, 8, 1), num_classes=10)
    state = model.init_state(0)
    state, metrics = make_step(model)(state, next(loader(config, mesh)))
    assert np.isfinite(float(metrics["loss"]))
    # 8×8 global crops give a 4×4 grid, 4×4 local crops 2×2: the learned
    # position embeddings were resized for them.
    assert state.params["backbone"]["pos_embedding"].shape == (1, 16, 32)


def test_last_layer_is_frozen_for_the_configured_steps():
    overrides = {"objective.kw.freeze_last_layer_steps": 2, "pretrain.optimizer.warmup_steps": 0}
    config, mesh, model = build("dino", 1, **overrides)
    state = model.init_state(0)
    step, batches = make_step(model), loader(config, mesh)

    def prototypes(s):  # what the network uses: the weight-normalised columns
        v = np.asarray(jax.device_get(s.params["head"]["last_v"]), np.float64)
        return v / np.linalg.norm(v, axis=0, keepdims=True)

    start = prototypes(state)
    for _ in range(2):
        state, _ = step(state, next(batches))
    # Steps 0 and 1: frozen. (AdamW's decoupled weight decay still scales the raw
    # weights; the normalisation cancels that.)
    np.testing.assert_allclose(prototypes(state), start, rtol=1e-5, atol=1e-7)
    state, _ = step(state, next(batches))
    assert np.abs(prototypes(state) - start).max() > 1e-4  # step 2: they learn
