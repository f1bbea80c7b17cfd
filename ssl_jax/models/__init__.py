"""Backbones and heads.

Every backbone lives in its own module ``ssl_jax/models/<name>.py`` and defines
``class Model(nn.Module)`` whose ``__call__(x, train=False)`` maps float32 images
``[B, H, W, C]`` to features ``[B, D]``. Models are looked up by module name, so
adding a backbone means adding a file; there is no registry to keep in sync.
"""

from __future__ import annotations

import importlib

import flax.linen as nn

__all__ = ["get_model", "parse_name"]


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
