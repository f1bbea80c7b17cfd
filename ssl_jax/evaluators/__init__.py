"""Evaluators, one module each, sharing one shape: ``Evaluator(**kw).run(features)``
returns ``{name: value}``. ``features`` maps split name → (embeddings, labels),
computed once by ``embed.Embedder`` and shared by every evaluator."""

import importlib


def get_evaluator(name: str, **kw):
    try:
        module = importlib.import_module(f"ssl_jax.evaluators.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"ssl_jax.evaluators.{name}":
            raise
        raise ValueError(f"unknown evaluator {name!r}") from e
    return module.Evaluator(**kw)
