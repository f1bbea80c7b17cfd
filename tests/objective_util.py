"""Tiny training runs of any objective on real 8×8 digits, shared by the objective tests."""

import functools

import jax
import numpy as np

from ssl_jax import parallel
from ssl_jax.data.labels import LabelStore
from ssl_jax.data.loader import Loader
from ssl_jax.stages.common import PretrainModel
from ssl_jax.stages.pretrain import make_step
from tests.util import tiny_config


@functools.cache
def digits():
    """scikit-learn's 1,797 8×8 digits as uint8 [N, 8, 8, 1], and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * (255 / 16)).astype(np.uint8)[..., None], d.target.astype(np.int32)


def build(objective: str, num_devices: int = 1, variant: str = "mnist", **overrides):
    mesh = parallel.make_mesh(num_devices)
    config = tiny_config("unused", objective, variant, **overrides)
    model = PretrainModel(config, mesh, (8, 8, 1), num_classes=10)
    return config, mesh, model


def loader(config, mesh):
    """Batches of digits with 5 labels per class known (the rest -1)."""
    images, targets = digits()
    labels = LabelStore.choose(targets, per_class=5, seed=0).label_array()
    return Loader(
        {"image": images, "label": labels},
        config.pretrain.batch_size,
        mesh,
        seed=0,
        labels=labels,
        labelled_per_batch=config.pretrain.labelled_per_batch,
        balanced=config.pretrain.balanced_labels,
    )


def run_steps(
    objective: str,
    num_devices: int,
    steps: int = 3,
    fixed_batch=False,
    variant="mnist",
    track="loss",
    **kw,
):
    """(the ``track`` metric at every step, final state as host arrays, metrics of
    the last step); ``kw`` overrides config keys, as in ``tiny_config``."""
    config, mesh, model = build(objective, num_devices, variant, **kw)
    state = model.init_state(0)
    batches = loader(config, mesh)
    step = make_step(model)
    losses, batch = [], next(batches)
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics[track]))
        if not fixed_batch:
            batch = next(batches)
    return losses, jax.device_get(state), jax.device_get(metrics)
