"""The same pretrain steps on two processes (4 devices each) and on one process agree.

1 vs 8 devices in one process is tested per objective in test_objectives.py."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.util import REPO


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
