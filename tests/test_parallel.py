"""The same pretrain steps on 1 device, on 8 devices, and on two processes agree."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from ssl_jax import parallel
from ssl_jax.data.loader import Loader
from ssl_jax.stages.common import PretrainModel
from ssl_jax.stages.pretrain import make_step
from tests.util import REPO, tiny_config


def run_steps(num_devices, steps=3):
    mesh = parallel.make_mesh(num_devices)
    images = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)[..., None]
    model = PretrainModel(tiny_config("unused"), mesh, images.shape[1:])
    state = model.init_state(0)
    loader = Loader({"image": images}, 32, mesh, seed=0)
    step = make_step(model)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, next(loader))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), jax.device_get(state.model_state)


def test_one_and_eight_devices_agree():
    assert len(jax.devices()) == 8
    l1, p1, s1 = run_steps(1)
    l8, p8, s8 = run_steps(8)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_agree_with_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(REPO, "tests", "distributed_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(i), "2", str(port), "2"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    single = subprocess.run(
        [sys.executable, worker, "0", "1", "0", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ref = json.loads(single.stdout.strip().splitlines()[-1])
    assert [o["devices"] for o in outs] == [4, 4]
    for o in outs:
        np.testing.assert_allclose(o["losses"], ref["losses"], rtol=1e-5)
        np.testing.assert_allclose(o["checksum"], ref["checksum"], rtol=1e-5)
