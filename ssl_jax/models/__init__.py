"""Backbones and heads.

Every backbone lives in its own module ``ssl_jax/models/<name>.py`` and defines
``class Model(nn.Module)`` whose ``__call__(x, train=False)`` maps float32 images
``[B, H, W, C]`` to features ``[B, D]``. Models are looked up by module name, so
adding a backbone means adding a file; there is no registry to keep in sync.
"""

from __future__ import annotations

import importlib

import flax.linen as nn
import jax

__all__ = ["get_model", "layer_ids", "parse_name"]


def parse_name(name: str) -> tuple[str, str | None]:
    """Splits ``"module:variant"`` into its parts; the variant is None when absent."""
    module, sep, variant = name.partition(":")
    module = module.strip()
    variant = variant.strip() if sep else None
    if not module or (sep and not variant):
        raise ValueError(f"Malformed model name {name!r}; expected 'module' or 'module:variant'.")
    return module, variant


def get_model(name: str, **kw) -> nn.Module:
    """Builds a backbone from a name such as ``"resnet:18"``, ``"vit:s/16"`` or ``"cnn"``.

    Extra keyword arguments are passed to the module's ``Model`` constructor
    (e.g. ``width=0.5``, ``cifar_stem=True``, ``dtype=jnp.bfloat16``).
    """
    module, variant = parse_name(name)
    # Only plain identifiers are accepted so that a typo can never import some
    # unrelated nested module (e.g. "heads" has no Model and is rejected below).
    if not module.isidentifier():
        raise ValueError(f"Unknown model {module!r} (from {name!r}).")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as e:
        # Re-raise import errors that come from *inside* an existing model file;
        # only a missing model file itself means "unknown model".
        if e.name != f"{__name__}.{module}":
            raise
        raise ValueError(
            f"Unknown model {module!r} (from {name!r}): no module ssl_jax.models.{module}."
        ) from None
    model_cls = getattr(mod, "Model", None)
    if model_cls is None:
        raise ValueError(f"ssl_jax.models.{module} does not define a backbone `Model` class.")
    return model_cls(variant=variant, **kw)


def _module(name: str):
    return importlib.import_module(f"{__name__}.{parse_name(name)[0]}")


def layer_ids(name: str, params, tree=None):
    """Depth of every leaf of a backbone, as consecutive ints from 0 (input side).

    Ids come from the backbone module's ``layer_key(path)`` (a sortable key of
    the coarse layer a parameter belongs to: the stem, a residual block, a
    transformer block...), ranked over the keys present in ``params``. They
    are returned for ``tree`` (default ``params``), which may be any tree named
    like the backbone's variables, e.g. its ``batch_stats``. Fine-tuning uses
    them to unfreeze the top K layers and for layer-wise learning-rate decay.
    """
    key_of = _module(name).layer_key
    names = lambda path: tuple(str(getattr(k, "key", k)) for k in path)
    keys = {key_of(names(p)) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    rank = {k: i for i, k in enumerate(sorted(keys))}
    tree = params if tree is None else tree
    return jax.tree_util.tree_map_with_path(lambda p, _: rank[key_of(names(p))], tree)
