"""Optimizers and schedules from config.

``config.optimizer``: name (sgd | adamw | lars), lr (peak, scaled by
batch_size / 256 when ``scale_lr`` is set, as in SimCLR/MoCo), weight_decay,
warmup_steps, momentum, and ``min_lr_ratio`` for the cosine floor.
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


def make(cfg, total_steps: int, batch_size: int):
    """Returns (optax transform, learning-rate schedule)."""
    lr = schedule(cfg, total_steps, batch_size)
    name, wd = cfg.name, cfg.get("weight_decay", 0.0)
    if name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.sgd(lr, momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False)),
        )
    elif name == "adamw":
        tx = optax.adamw(
            lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), weight_decay=wd, mask=decay_mask
        )
    elif name == "lars":
        tx = optax.lars(
            lr,
            weight_decay=wd,
            weight_decay_mask=decay_mask,
            trust_ratio_mask=decay_mask,
            momentum=cfg.get("momentum", 0.9),
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or lars")
    if cfg.get("grad_clip", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx, lr
