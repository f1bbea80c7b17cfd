"""Device mesh, shardings and global batches.

Everything runs under ``jax.jit`` over a one-axis ``Mesh('data')``: batches are
sharded along their leading axis, training state is replicated. A batch is one
global array, so contrastive negatives and BatchNorm statistics span all devices
without hand-written collectives.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator: str = "", num_processes: int = 1, process_id: int = 0):
    """Joins a multi-host job when asked to (config or env), else does nothing.

    On CPU the processes exchange data through gloo collectives.
    """
    coordinator = coordinator or os.environ.get("SSL_JAX_COORDINATOR", "")
    if not coordinator:
        return
    num_processes = int(os.environ.get("SSL_JAX_NUM_PROCESSES", num_processes))
    process_id = int(os.environ.get("SSL_JAX_PROCESS_ID", process_id))
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if num_devices:
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh):
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of the mesh")


def process_slice(global_batch: int) -> slice:
    """The rows of a global batch that this process loads."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def put_global_batch(local: dict, mesh: Mesh) -> dict:
    """Host arrays (this process's rows) → one global array per key, sharded on 'data'."""
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(x) -> np.ndarray:
    """Fetch a (possibly multi-host sharded) array to every host as numpy."""
    if jax.process_count() > 1 and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
