"""The fused CPU bias add and GELU (ssl_jax/kernels/gelu.py, config.cpu_gelu) and
LayerNorm (ssl_jax/kernels/layernorm.py, config.cpu_layernorm) of the ViT blocks."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.kernels import attention, gelu, layernorm, native
from ssl_jax.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_compiler = pytest.mark.skipif(
    native.compiler() is None,
    reason="no C++ compiler to build the kernels",
)


def _inputs(shape, scale=3.0):
    ky, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    y = scale * jax.random.normal(ky, shape)
    return y, jax.random.normal(kb, shape[-1:]), jax.random.normal(kg, shape)


def _xla(y, b):
    return nn.gelu(y + b)


@needs_compiler
@pytest.mark.parametrize(
    "shape,scale",
    [
        ((64, 768), 3.0),  # the ViT-Ti MLP's width: whole vectors
        ((130, 48), 3.0),  # rows over three 64-row blocks of the bias gradient's sums
        ((5, 3, 21), 3.0),  # 3-D, a width that is no multiple of a vector: the remainder loop
        ((7, 100), 40.0),  # tanh saturated far out: exactly +-1, no overflow
    ],
)
def test_fused_bias_gelu_and_its_gradients_equal_xla(shape, scale):
    gelu.load()
    y, b, g = _inputs(shape, scale)
    out = jax.jit(gelu.fused_bias_gelu)(y, b)
    ref = _xla(y, b)
    assert out.shape == ref.shape and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.vjp(gelu.fused_bias_gelu, y, b)[1])
    got, again = grad(g), grad(g)
    want = jax.vjp(_xla, y, b)[1](g)
    for x, a, r in zip(got, again, want, strict=True):
        assert x.shape == r.shape
        np.testing.assert_allclose(x, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))
        np.testing.assert_array_equal(x, a)  # the same bits on a second call


@needs_compiler
def test_bias_gelu_routes_by_mode_device_count_and_dtype(monkeypatch):
    monkeypatch.setitem(gelu._state, "mode", "xla")  # restored after the test
    y, b, _ = _inputs((8, 32))

    def text(y=y, b=b):  # a new function each time: jit caches traces per function
        return jax.jit(lambda *a: gelu.bias_gelu(*a)).lower(y, b).as_text()

    assert gelu.runs_on() == "xla" and "BiasGelu" not in text()
    assert jax.device_count() == 8  # tests/conftest.py: a sharded batch stays with XLA
    assert gelu.configure("fused") == "fused" and gelu.runs_on() == "xla"
    assert "BiasGelu" not in text()
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert gelu.runs_on() == "fused" and "BiasGeluFwd" in text()
    assert "BiasGelu" not in text(y.astype(jnp.bfloat16), b.astype(jnp.bfloat16))  # float32 only
    assert "BiasGelu" not in text(y, b[:1])  # a broadcast bias stays with XLA


def test_mlp_block_keeps_dense_and_gelu_parameters_and_function():
    class Before(nn.Module):  # vit.MlpBlock as it was: flax's Dense, then nn.gelu
        @nn.compact
        def __call__(self, x):
            kw = dict(
                kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.normal(1e-6),
            )
            x = nn.gelu(nn.Dense(64, name="fc1", **kw)(x))
            return nn.Dense(16, name="fc2", **kw)(x)

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 16))
    old = Before().init(jax.random.PRNGKey(0), x.reshape(-1, 16))
    new = vit.MlpBlock(64).init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(old) == jax.tree.structure(new)
    for a, c in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(
        vit.MlpBlock(64).apply(new, x), Before().apply(old, x.reshape(-1, 16)).reshape(2, 8, 16)
    )


@pytest.mark.parametrize(
    "module,key,what",
    [(gelu, "cpu_gelu", "GELU"), (layernorm, "cpu_layernorm", "LayerNorm")],
)
def test_bad_mode_and_a_failing_build_are_clear(module, key, what, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(module._state, "lib", None)  # as in a fresh process
    monkeypatch.setitem(module._state, "mode", "xla")
    with pytest.raises(ValueError, match=f"{key} must be one of auto, xla, fused"):
        module.configure("erf")
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    assert module.configure("auto") == "xla" and module.mode() == "xla"
    assert f"{key}=auto: XLA's {what}, as building the fused {what}" in capsys.readouterr().err
    with pytest.raises(native.Unavailable, match=f"building the fused {what} kernels failed"):
        module.configure("fused")
    assert module.mode() == "xla" and not list(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("key", ["cpu_gelu", "cpu_layernorm"])
def test_cli_refuses_an_unknown_mode_before_any_work(key, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_jax", f"--config.{key}=erf", f"--workdir={tmp_path}/w"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"bad config: {key} must be one of auto, xla, fused, got 'erf'" in proc.stderr
    assert not os.path.exists(tmp_path / "w")


@needs_compiler
@pytest.mark.parametrize(
    "shape,scale,offset",
    [
        ((64, 192), 1.0, 1.0),  # the ViT-Ti width: whole vectors
        ((130, 40), 5.0, 1.0),  # rows over three 64-row blocks; a remainder of 8
        # 3-D, a small spread. (Not with an offset of 1: there flax's E[x²] − E[x]²
        # loses ~1e-5 to cancellation, which the kernel's centred variance does not.)
        ((5, 3, 21), 0.1, 0.0),
    ],
)
def test_fused_layer_norm_and_its_gradients_equal_flax(shape, scale, offset):
    layernorm.load()
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = scale * jax.random.normal(k[0], shape) + offset
    g = jax.random.normal(k[1], shape)
    ref = nn.LayerNorm(epsilon=1e-6)
    v = ref.init(k[2], x)  # away from ones and zeros, so both parameters matter
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(k[3], a.shape), v)
    p = v["params"]

    def fused(x, p):
        return layernorm.fused_layer_norm(x, p["scale"], p["bias"], 1e-6)

    def flax_ln(x, p):
        return ref.apply({"params": p}, x)

    np.testing.assert_allclose(jax.jit(fused)(x, p), flax_ln(x, p), rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.vjp(fused, x, p)[1])
    got, again = grad(g), grad(g)
    want = jax.vjp(flax_ln, x, p)[1](g)
    leaves = (jax.tree.leaves(t) for t in (got, again, want))
    for a, b, r in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))
        np.testing.assert_array_equal(a, b)  # the same bits on a second call


@needs_compiler
def test_layer_norm_module_routes_by_mode_device_count_and_dtype(monkeypatch):
    monkeypatch.setitem(layernorm._state, "mode", "xla")  # restored after the test
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 32))
    v = nn.LayerNorm().init(jax.random.PRNGKey(1), x)

    def text(module=None, x=x):
        module = module or layernorm.LayerNorm()
        return jax.jit(lambda v, x: module.apply(v, x)).lower(v, x).as_text()

    assert layernorm.runs_on() == "xla" and "LayerNorm" not in text()
    assert layernorm.configure("fused") == "fused" and "LayerNormFwd" not in text()  # 8 devices
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert layernorm.runs_on() == "fused" and "LayerNormFwd" in text()
    # Same parameters as flax's module; other settings and dtypes stay with flax's.
    assert jax.tree.structure(layernorm.LayerNorm().init(jax.random.PRNGKey(1), x)) == (
        jax.tree.structure(v)
    )
    assert "LayerNormFwd" not in text(x=x.astype(jnp.bfloat16))
    assert "LayerNormFwd" not in text(layernorm.LayerNorm(use_bias=False))
    assert "LayerNormFwd" not in text(layernorm.LayerNorm(reduction_axes=(1, 2)))


@needs_compiler
@pytest.mark.parametrize(
    "module", [attention, gelu, layernorm], ids=["attention", "gelu", "layernorm"]
)
def test_the_kernels_vectors_fit_this_machines_registers(module, tmp_path):
    """Compiled as ssl_jax builds them, no vector operation of ours is expanded
    piecewise: 64-byte vectors on a machine without AVX-512 made the attention
    kernel 5x slower than XLA's (experiments/bench/RESULTS.md)."""
    warnings = ["-Wvector-operation-performance", "-Wpsabi"]
    out = str(tmp_path / "k.so")
    cmd = native.compile_command(
        native.compiler(), module.SOURCE, out, native.FusedKernel.ARGS, warnings
    )
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = [line for line in done.stderr.splitlines() if "ssl_jax/kernels/" in line]
    slow = [line for line in ours if "piecewise" in line or "changes the ABI" in line]
    assert not slow, slow[:5]
