"""Pretraining objectives, one module each, chosen by ``config.objective.name``.

Each module defines ``Objective(config, *, num_classes=0)`` with:
  views                                  names of the pp recipes it needs
  init(rng, batch) -> variables          params, batch_stats and any method state
  loss(params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))
                                         batch: {view name: images, "label": [B] int, -1 = none}
  after_step(state) -> state             what follows the optimizer (EMA teacher, ...)
  mask_grads(grads, step) -> grads       optional: gradients to hold at zero for now
  optimizer(pretrain_config) -> (tx, lr) optional: its own optimizer (GAN: one per network)
  nonfinite_hint                         optional: what to change when its loss is not finite
  visualize(params, model_state, images, rng) -> {name: {row: images}}   optional: report grids
  encode(params, model_state, images) -> embeddings   used by evaluators
  backbone_variables(params, model_state) -> {"params": ..., "batch_stats": ...}
                                         the backbone alone (of ``config.model``), for transfer
"""

import importlib


def get_objective(config, *, num_classes: int = 0):
    """``config.objective.name``'s Objective; ``num_classes`` (of the dataset)
    is passed on for objectives that classify."""
    name = config.objective.name
    try:
        module = importlib.import_module(f"ssl_jax.objectives.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"ssl_jax.objectives.{name}":
            raise
        raise ValueError(
            f"unknown objective {name!r}: no module ssl_jax/objectives/{name}.py"
        ) from e
    return module.Objective(config, num_classes=num_classes)


def submodule_variables(variables: dict, name: str) -> dict:
    """The variables of submodule ``name`` in every collection that has it."""
    return {col: tree[name] for col, tree in variables.items() if name in tree}


class BackboneObjective:
    """Defaults for objectives whose network ``self.net`` has a ``backbone``
    submodule and an ``encode`` method: nothing after the optimizer step,
    evaluation through ``encode``, the backbone's variables for transfer."""

    def after_step(self, state):
        return state

    def encode(self, params, model_state, images):
        return self.net.apply({"params": params, **model_state}, images, method="encode")

    def backbone_variables(self, params, model_state):
        return submodule_variables({"params": params, **model_state}, "backbone")
