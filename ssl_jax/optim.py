"""Optimizers and schedules from config, with freezing and layer-wise decay.

``config.optimizer``: name (sgd | adamw | lars), lr (peak, scaled by
batch_size / 256 when ``scale_lr`` is set, as in SimCLR/MoCo), weight_decay,
warmup_steps, momentum, and ``min_lr_ratio`` for the cosine floor.

For transfer, ``make`` takes the layer id of every parameter (0 = input side,
the head highest): layers below ``trainable_from`` are frozen through
``optax.multi_transform`` with ``set_to_zero`` (their updates are exactly 0 and
they get no optimizer state, so they cost no optimizer memory), and layer i
trains at learning rate ``lr * layer_decay ** (top - i)`` (the layer-wise decay
of BEiT and MAE's fine-tuning recipe; top = the highest id).
"""

import jax
import optax


def decay_mask(params):
    """Weight decay on weight matrices and kernels only: biases and norm scales
    (all 1-D leaves) are excluded, as in SimCLR/LARS practice."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def schedule(cfg, total_steps: int, batch_size: int) -> optax.Schedule:
    peak = cfg.lr * (batch_size / 256 if cfg.get("scale_lr", False) else 1.0)
    warmup = min(int(cfg.get("warmup_steps", 0)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * cfg.get("min_lr_ratio", 0.0),
    )


def _base(cfg, lr):
    name, wd = cfg.name, cfg.get("weight_decay", 0.0)
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.sgd(
                lr, momentum=cfg.get("momentum", 0.9) or None, nesterov=cfg.get("nesterov", False)
            ),
        )
    if name == "adamw":
        return optax.adamw(
            lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), weight_decay=wd, mask=decay_mask
        )
    if name == "lars":
        return optax.lars(
            lr,
            weight_decay=wd,
            weight_decay_mask=decay_mask,
            trust_ratio_mask=decay_mask,
            momentum=cfg.get("momentum", 0.9),
        )
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or lars")


FROZEN = "frozen"


def layer_groups(layers, trainable_from: int = 0):
    """Group label of every leaf: ``"frozen"`` or ``"layer<i>"``."""
    return jax.tree.map(lambda i: FROZEN if i < trainable_from else f"layer{i}", layers)


def make(
    cfg,
    total_steps: int,
    batch_size: int,
    *,
    layers=None,
    trainable_from: int = 0,
    layer_decay: float = 1.0,
):
    """Returns (optax transform, learning-rate schedule of the top layer).

    Args:
      layers: optional tree of int layer ids shaped like the parameters.
      trainable_from: layers with a smaller id are frozen.
      layer_decay: per-layer learning-rate factor (1 = none).
    """
    lr = schedule(cfg, total_steps, batch_size)
    if layers is None:
        tx = _base(cfg, lr)
        clip_first = None
    else:
        ids = sorted(set(jax.tree.leaves(layers)))
        top = ids[-1]
        transforms = {FROZEN: optax.set_to_zero()}
        for i in ids:
            if i >= trainable_from:
                scale = layer_decay ** (top - i)
                transforms[f"layer{i}"] = _base(cfg, lambda s, scale=scale: lr(s) * scale)
        groups = layer_groups(layers, trainable_from)
        tx = optax.multi_transform(transforms, groups)
        # The gradient norm for clipping counts trainable parameters only.
        clip_first = optax.multi_transform(
            {FROZEN: optax.set_to_zero(), "train": optax.identity()},
            jax.tree.map(lambda g: FROZEN if g == FROZEN else "train", groups),
        )
    if cfg.get("grad_clip", 0.0):
        clip = optax.clip_by_global_norm(cfg.grad_clip)
        tx = optax.chain(clip, tx) if clip_first is None else optax.chain(clip_first, clip, tx)
    return tx, lr
