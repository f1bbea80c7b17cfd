"""oneDNN convolutions on the CPU (ssl_jax/kernels/onednn.py, config.cpu_conv)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.kernels import native, onednn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_compiler = pytest.mark.skipif(
    native.compiler() is None,
    reason="no C++ compiler to build the oneDNN kernels",
)


def _xla(x, w, strides, pads):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn)


@needs_compiler
@pytest.mark.parametrize(
    "n,h,c,o,k,s,p",
    [
        (2, 8, 3, 5, 3, 1, 1),
        (3, 9, 4, 6, 3, 2, 1),
        (2, 8, 4, 8, 1, 2, 0),  # a 1x1 stride-2 shortcut: the last row and column unread
        (2, 8, 4, 8, 3, 2, 0),  # 3x3, stride 2, no padding: the last row and column unread
        (2, 8, 4, 8, 1, 2, 1),  # 1x1 with padding: read to the last row
        (2, 16, 3, 8, 7, 2, 3),
    ],
)
def test_conv_and_its_gradients_equal_xla(n, h, c, o, k, s, p):
    onednn.load()
    kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, h, h, c))
    w = jax.random.normal(kw, (k, k, c, o))
    strides, pads = (s, s), ((p, p), (p, p))
    y = jax.jit(lambda x, w: onednn.conv2d(x, w, strides, pads))(x, w)
    ref = _xla(x, w, strides, pads)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    dy = jax.random.normal(kd, ref.shape)
    grad = jax.jit(jax.vjp(lambda x, w: onednn.conv2d(x, w, strides, pads), x, w)[1])
    got, again = grad(dy), grad(dy)
    want = jax.vjp(lambda x, w: _xla(x, w, strides, pads), x, w)[1](dy)
    for g, a, r in zip(got, again, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))
        np.testing.assert_array_equal(g, a)  # the same bits on a second call


def test_xla_mode_and_unsupported_convolutions_stay_with_xla():
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    hlo = (
        jax.jit(
            lambda x, w: onednn.conv_general_dilated(
                x, w, (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC")
            )
        )
        .lower(x, w)
        .as_text()
    )
    assert onednn.mode() == "xla" and onednn.runs_on() == "xla"
    assert "DnnlConv" not in hlo and "convolution" in hlo


def test_bad_mode_and_missing_onednn_are_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="cpu_conv must be one of auto, xla, onednn"):
        onednn.configure("mkl")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(onednn.Unavailable, match="pip install onednn-cpu-gomp"):
        onednn.build()
    assert onednn.mode() == "xla"


# One device (no forced host devices), as a CPU training process runs.
_RESNET = """
import json, jax, jax.numpy as jnp, numpy as np
from ssl_jax.kernels import onednn
from ssl_jax.models import get_model
x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
def grads():
    net = get_model("resnet:18", width=0.25, cifar_stem=True)
    v = net.init(jax.random.PRNGKey(0), x, train=True)
    def loss(p):
        y, _ = net.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y ** 2)
    f = jax.jit(jax.value_and_grad(loss))
    return f.lower(v["params"]).as_text().count("@DnnlConv"), f(v["params"])
calls0, (l0, g0) = grads()
onednn.configure("onednn")
calls1, (l1, g1) = grads()
onednn.XLA_MIN_FEATURES = 128  # this width's 4x4x128 stage as small and wide
calls2, _ = grads()
err = max(float(jnp.abs(a - b).max() / jnp.abs(a).max())
          for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)) if jnp.abs(a).max() > 0)
print(json.dumps(dict(devices=jax.device_count(), calls=[calls0, calls1, calls2],
                      on=onednn.runs_on(), loss0=float(l0), loss1=float(l1), err=err)))
"""


@needs_compiler
@pytest.mark.slow
def test_resnet_runs_its_convolutions_through_onednn_with_the_same_gradients():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", _RESNET], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 1 and r["on"] == "onednn"
    # 20 convolutions: 20 forward, 20 kernel gradients, 19 input gradients (not
    # the stem's); with 128 as the least width kept on XLA, the last stage's 5
    # (4x4 maps, 128 channels at this width) stay with XLA.
    assert r["calls"] == [0, 59, 59 - 15]
    assert abs(r["loss1"] - r["loss0"]) <= 1e-5 * abs(r["loss0"])
    assert r["err"] < 1e-4


def test_cli_refuses_an_unknown_cpu_conv_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_jax", "--config.cpu_conv=mkl", f"--workdir={tmp_path}/w"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error: bad config: cpu_conv must be one of auto, xla, onednn, got 'mkl'" in proc.stderr
    assert not os.path.exists(tmp_path / "w")


def test_auto_falls_back_to_xla_with_a_note_where_onednn_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(onednn._state, "lib", None)  # as in a fresh process
    monkeypatch.setitem(onednn._state, "mode", "xla")  # restored after the test
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert onednn.configure("auto") == "xla" and onednn.mode() == "xla"
    assert "cpu_conv=auto: XLA's convolutions, as oneDNN headers" in capsys.readouterr().err
    with pytest.raises(onednn.Unavailable):
        onednn.configure("onednn")


@needs_compiler
def test_several_devices_keep_xla_convolutions(monkeypatch):
    monkeypatch.setitem(onednn._state, "mode", "xla")  # restored after the test
    assert jax.device_count() == 8  # tests/conftest.py
    assert onednn.configure("onednn") == "onednn" and onednn.runs_on() == "xla"
    x, w = jnp.ones((8, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    f = jax.jit(lambda x, w: onednn.conv_general_dilated(x, w, (1, 1), "SAME", None, None, dn))
    assert "DnnlConv" not in f.lower(x, w).as_text()
