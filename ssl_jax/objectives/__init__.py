"""Pretraining objectives, one module each, chosen by ``config.objective.name``.

Each module defines ``Objective(config)`` with:
  views                                  names of the pp recipes it needs
  init(rng, batch) -> variables          params, batch_stats and any method state
  loss(params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))
  after_step(state) -> state             what follows the optimizer (EMA teacher, ...)
  encode(params, model_state, images) -> embeddings   used by evaluators
"""

import importlib


def get_objective(config):
    name = config.objective.name
    try:
        module = importlib.import_module(f"ssl_jax.objectives.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"ssl_jax.objectives.{name}":
            raise
        raise ValueError(
            f"unknown objective {name!r}: no module ssl_jax/objectives/{name}.py"
        ) from e
    return module.Objective(config)
