"""Every config in configs/ builds, is locked, and its model initialises at full size."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from ssl_jax import pp
from ssl_jax.models import get_model
from ssl_jax.objectives import get_objective
from tests.util import REPO

CONFIGS = sorted(
    (os.path.splitext(os.path.basename(p))[0], v)
    for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not os.path.basename(p).startswith(("_", "common"))
    for v in importlib.import_module(f"configs.{os.path.splitext(os.path.basename(p))[0]}").VARIANTS
)


def test_there_are_configs():
    assert ("simclr", "mnist") in CONFIGS


@pytest.mark.parametrize("name, variant", CONFIGS)
def test_config_builds_and_model_initialises(name, variant):
    c = importlib.import_module(f"configs.{name}").get_config(variant)
    with pytest.raises(AttributeError):
        c.pretrain.not_a_key = 1  # locked: a misspelt override cannot add a key
    objective = get_objective(c, num_classes=1000 if variant == "imagenet" else 10)
    views_fn = pp.build_views({v: c.pp.views[v] for v in objective.views})
    eval_fn = pp.build(c.pp.eval)
    shape = (2, c.data.image_size, c.data.image_size, c.data.channels)

    def init(rng):
        images = jnp.zeros(shape, jnp.uint8)
        inputs = {**views_fn(rng, images), "label": jnp.array([0, -1])}
        variables = objective.init(rng, inputs)
        feats = objective.encode(
            variables["params"],
            {k: v for k, v in variables.items() if k != "params"},
            eval_fn(rng, images),
        )
        return variables, feats

    variables, feats = jax.eval_shape(init, jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert n_params > 10_000
    assert feats.shape[0] == 2 and feats.ndim == 2
    # Evaluators see the backbone's features (ResNet-50: 2048, ViT-S: 384, ...).
    assert feats.shape[1] == get_model(c.model.name, **c.model.kw).num_features
