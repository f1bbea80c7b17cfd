"""ssl_jax's BatchNorm (sums as matrix products) against flax.linen.BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import parallel
from ssl_jax.models import get_model
from ssl_jax.models.batchnorm import BatchNorm

KW = dict(momentum=0.9, epsilon=1e-5)


def _train(module, variables, params, x, dy):
    def loss(p, x):
        y, stats = module.apply({**variables, "params": p}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * dy), (y, stats)

    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (16, 7)])
def test_same_values_gradients_statistics_and_variables_as_flax(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 3 + 1
    dy = jax.random.normal(jax.random.PRNGKey(1), shape)
    ours, ref = BatchNorm(use_running_average=False, **KW), nn.BatchNorm(False, **KW)
    v_ours, v_ref = ours.init(jax.random.PRNGKey(2), x), ref.init(jax.random.PRNGKey(2), x)
    # The same variables: a checkpoint of either loads in the other.
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_ref)
    c = shape[-1]
    params = {"scale": jnp.linspace(0.5, 1.5, c), "bias": jnp.linspace(-1.0, 1.0, c)}
    (l1, (y1, s1)), g1 = _train(ours, v_ours, params, x, dy)
    (l2, (y2, s2)), g2 = _train(ref, v_ref, params, x, dy)
    np.testing.assert_allclose(y1, y2, atol=2e-6)
    for a, b in zip(jax.tree.leaves((s1, g1)), jax.tree.leaves((s2, g2)), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * float(jnp.abs(b).max()))
    # Inference mode reads the running statistics the same way.
    v = {"params": params, **s2}
    e1 = BatchNorm(use_running_average=True, **KW).apply(v, x)
    e2 = nn.BatchNorm(True, **KW).apply(v, x)
    np.testing.assert_allclose(e1, e2, atol=2e-6)


def test_cotangents_of_the_statistics_are_propagated():
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4)) + 2
    scale, bias = jnp.ones(4), jnp.zeros(4)
    from ssl_jax.models.batchnorm import batch_norm

    def f(x):
        y, mean, var = batch_norm(x, scale, bias, 1e-5)
        return jnp.sum(y * y) + jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

    def g(x):
        mean, var = x.mean(0), x.var(0)
        y = (x - mean) / jnp.sqrt(var + 1e-5)
        return jnp.sum(y * y) + jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

    np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-4, atol=1e-5)


def test_batch_sharded_over_the_mesh_gives_the_global_statistics():
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8  # tests/conftest.py
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 3)) * 2 + 1
    bn = BatchNorm(use_running_average=False, **KW)
    v = bn.init(jax.random.PRNGKey(1), x)
    f = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))
    y_one, s_one = f(v, x)
    y_sh, s_sh = f(v, jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(y_sh, y_one, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s_sh["batch_stats"][k], s_one["batch_stats"][k], atol=1e-5)


def test_resnet_and_cnn_use_it_with_flax_variable_names():
    x = jnp.ones((2, 32, 32, 3))
    for name, kw, path, layers in (
        ("resnet:18", dict(width=0.125, cifar_stem=True), ("stem", "bn"), 20),
        ("cnn", {}, ("bn0",), 4),
    ):
        model = get_model(name, **kw)
        v = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), x))
        params, stats = v["params"], v["batch_stats"]
        for key in path:
            params, stats = params[key], stats[key]
        assert set(params) == {"scale", "bias"} and set(stats) == {"mean", "var"}
        # Each BatchNorm in train mode is one call of batch_norm's custom_vjp.
        jaxpr = jax.make_jaxpr(
            lambda v, m=model: m.apply(v, x, train=True, mutable=["batch_stats"])
        )(v)
        assert str(jaxpr).count("custom_vjp_call[") == layers


def test_other_backends_take_xla_reductions_with_the_same_result(monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 6)) * 2 + 1
    scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.zeros(6)
    from ssl_jax.models import batchnorm

    def grads():
        f = lambda x, s: jnp.sum(jnp.sin(batchnorm.batch_norm(x, s, bias, 1e-5)[0]))  # noqa: E731
        jaxpr = str(jax.make_jaxpr(jax.grad(f, (0, 1)))(x, scale))
        return jax.grad(f, (0, 1))(x, scale), jaxpr

    on_cpu, cpu_jaxpr = grads()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    elsewhere, other_jaxpr = grads()
    assert "dot_general" in cpu_jaxpr and "dot_general" not in other_jaxpr
    for a, b in zip(on_cpu, elsewhere, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
