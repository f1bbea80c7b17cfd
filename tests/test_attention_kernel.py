"""The fused CPU attention core (ssl_jax/kernels/attention.py, config.cpu_attention),
and, in a whole MAE, the fused GELU and LayerNorm beside it (tests/test_vit_kernels.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.kernels import attention, native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_compiler = pytest.mark.skipif(
    native.compiler() is None,
    reason="no C++ compiler to build the attention kernels",
)


def _inputs(b, lq, lk, h, d, scale=1.0):
    kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(0), 4)
    q = scale * jax.random.normal(kq, (b, lq, h, d))
    k = scale * jax.random.normal(kk, (b, lk, h, d))
    v = jax.random.normal(kv, (b, lk, h, d))
    return q, k, v, jax.random.normal(kg, (b, lq, h, d))


@needs_compiler
@pytest.mark.parametrize(
    "b,lq,lk,h,d,scale",
    [
        (2, 64, 64, 4, 32, 1.0),  # MAE decoder's shape: whole vectors
        (3, 16, 16, 3, 64, 1.0),  # the encoder's
        (2, 7, 13, 3, 5, 1.0),  # nothing a multiple of a vector: the remainder loops
        (1, 50, 50, 2, 20, 6.0),  # logits in the hundreds: a stable softmax
        (2, 33, 33, 1, 48, 0.1),  # rows 33 = 8 blocks of 4 and one more
    ],
)
def test_fused_core_and_its_gradients_equal_xla(b, lq, lk, h, d, scale):
    attention.load()
    q, k, v, g = _inputs(b, lq, lk, h, d, scale)
    out = jax.jit(attention.fused_core)(q, k, v)
    ref = attention.xla_core(q, k, v)
    assert out.shape == ref.shape == (b, lq, h, d)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)
    grad = jax.jit(jax.vjp(attention.fused_core, q, k, v)[1])
    got, again = grad(g), grad(g)
    want = jax.vjp(attention.xla_core, q, k, v)[1](g)
    for x, a, r in zip(got, again, want, strict=True):
        np.testing.assert_allclose(x, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))
        np.testing.assert_array_equal(x, a)  # the same bits on a second call


@needs_compiler
def test_attention_core_routes_by_mode_and_device_count(monkeypatch):
    monkeypatch.setitem(attention._state, "mode", "xla")  # restored after the test
    q, k, v, _ = _inputs(8, 4, 4, 2, 8)

    def text(*args):  # a new function each time: jit caches traces per function
        return (
            jax.jit(lambda *a: attention.attention_core(*a)).lower(*(args or (q, k, v))).as_text()
        )

    assert attention.runs_on() == "xla" and "AttentionFwd" not in text()
    assert jax.device_count() == 8  # tests/conftest.py: a sharded batch stays with XLA
    assert attention.configure("fused") == "fused" and attention.runs_on() == "xla"
    assert "AttentionFwd" not in text()
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert attention.runs_on() == "fused" and "AttentionFwd" in text()
    assert (
        "AttentionFwd"
        not in jax.jit(attention.attention_core)
        .lower(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
        .as_text()
    )  # float32 only


def test_bad_mode_and_a_failing_build_are_clear(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(attention._state, "lib", None)  # as in a fresh process
    monkeypatch.setitem(attention._state, "mode", "xla")
    with pytest.raises(ValueError, match="cpu_attention must be one of auto, xla, fused"):
        attention.configure("flash")
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native.Unavailable, match="cannot run the C\\+\\+ compiler"):
        attention.build()
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    assert attention.configure("auto") == "xla" and attention.mode() == "xla"
    assert "cpu_attention=auto: XLA's attention, as building the fused" in capsys.readouterr().err
    with pytest.raises(native.Unavailable, match="building the fused attention kernels failed"):
        attention.configure("fused")
    assert attention.mode() == "xla" and not list(tmp_path.rglob("*.so"))  # nothing half-built


def test_cli_refuses_an_unknown_cpu_attention_before_any_work(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssl_jax",
            "--config.cpu_attention=flash",
            f"--workdir={tmp_path}/w",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "bad config: cpu_attention must be one of auto, xla, fused, got 'flash'" in proc.stderr
    assert not os.path.exists(tmp_path / "w")


# One device (no forced host devices), as a CPU training process runs.
_MAE = """
import json, jax, jax.numpy as jnp
from ssl_jax.kernels import attention, gelu, layernorm
from ssl_jax.models import get_model
from ssl_jax.models.mae import MAE
x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
def grads():
    net = MAE(get_model("vit:ti/4"), decoder_width=32, decoder_depth=2,
              decoder_heads=4)
    v = net.init(jax.random.PRNGKey(0), x, jax.random.PRNGKey(2), train=True)
    def loss(p):
        pred, mask = net.apply({"params": p}, x, jax.random.PRNGKey(2), train=True)
        return jnp.sum(pred ** 2 * mask[..., None])
    f = jax.jit(jax.value_and_grad(loss))
    hlo = f.lower(v["params"]).as_text()
    names = ("AttentionFwd", "AttentionBwd", "BiasGeluFwd", "BiasGeluBwd", "LayerNormFwd",
             "LayerNormBwd")
    return [hlo.count("@" + n) for n in names], f(v["params"])
calls0, (l0, g0) = grads()
attention.configure("fused")
gelu.configure("fused")
layernorm.configure("fused")
calls1, (l1, g1) = grads()
# Per leaf, relative to its largest entry; the key biases' gradients are 0 up to
# rounding (softmax ignores a shift along the keys), so at least 1e-3 of the largest.
top = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0))
err = max(float(jnp.abs(a - b).max()) / max(float(jnp.abs(a).max()), 1e-3 * top)
          for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
print(json.dumps(dict(devices=jax.device_count(), calls0=calls0, calls1=calls1,
                      on=[m.runs_on() for m in (attention, gelu, layernorm)], loss0=float(l0),
                      loss1=float(l1), err=err)))
"""


@needs_compiler
@pytest.mark.slow
def test_mae_runs_its_attention_gelu_and_layernorm_fused_with_the_same_gradients():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", _MAE], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 1 and r["on"] == ["fused"] * 3
    # ViT-Ti: 12 encoder blocks, and the decoder's 2: one forward and one backward
    # each, of the attention core and of the MLP's bias add and GELU; two
    # LayerNorms per block and one after each stack: 2 * 14 + 2.
    assert r["calls0"] == [0] * 6 and r["calls1"] == [14, 14, 14, 14, 30, 30]
    assert abs(r["loss1"] - r["loss0"]) <= 1e-5 * abs(r["loss0"])
    assert r["err"] < 1e-4


def test_a_library_that_does_not_load_is_unavailable_not_a_crash(tmp_path):
    bad = tmp_path / "attention-0000.so"
    bad.write_bytes(b"not a shared library")
    with pytest.raises(native.Unavailable, match="cannot load"):
        native.register(str(bad), attention.TARGETS)
