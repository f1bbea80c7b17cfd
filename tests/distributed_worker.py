"""One process of the multi-process test: a few pretrain steps on a global mesh.

Run as: python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES
Prints one JSON line with the losses and a parameter checksum.
"""

import json
import os
import sys

pid, nproc, port, local = (int(a) for a in sys.argv[1:5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from ssl_jax import parallel  # noqa: E402
from ssl_jax.data.loader import Loader  # noqa: E402
from ssl_jax.stages.common import PretrainModel  # noqa: E402
from ssl_jax.stages.pretrain import make_step  # noqa: E402
from tests.util import tiny_config  # noqa: E402

if nproc > 1:
    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
mesh = parallel.make_mesh()
images = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)[..., None]
config = tiny_config("unused")
model = PretrainModel(config, mesh, images.shape[1:])
state = model.init_state(0)
loader = Loader({"image": images}, 32, mesh, seed=0)
step = make_step(model)
losses = []
for _ in range(3):
    state, metrics = step(state, next(loader))
    losses.append(float(metrics["loss"]))
leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
print(
    json.dumps(
        {
            "process": jax.process_index(),
            "devices": len(jax.devices()),
            "losses": losses,
            "checksum": float(sum(np.abs(x).sum() for x in leaves)),
        }
    )
)
