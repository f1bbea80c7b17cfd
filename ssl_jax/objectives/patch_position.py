"""Relative patch position: where does a patch sit relative to the centre patch?

"Unsupervised Visual Representation Learning by Context Prediction" (Doersch
et al., 2015, https://arxiv.org/abs/1505.05192). The image holds a 3x3 grid of
cells of side ``patch + gap``; per example, the centre cell's patch and the
patch of one of its 8 neighbours (the label, 0..7 in reading order, skipping
the centre) are cut out, each shifted by up to ``jitter`` pixels. The gap
(always > 2 * jitter, so patches never touch) keeps the task from being solved
by continuing edges across the border. Both patches go through the backbone
(shared weights); their features, concatenated, feed an MLP that predicts the
neighbour's position. Evaluators use the backbone on whole images.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models import get_model
from ssl_jax.objectives import BackboneObjective

# Grid (row, col) of the 8 neighbours of the centre cell (1, 1), in label order.
NEIGHBOURS = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]


def sample_pairs(key, images, patch: int, gap: int, jitter: int):
    """(centre patches, neighbour patches, labels, top-left corners [B, 2, 2])."""
    b, h, w, _ = images.shape
    cell = patch + gap
    span = 3 * cell - gap + 2 * jitter
    if span > min(h, w):
        raise ValueError(
            f"patch {patch}, gap {gap}, jitter {jitter} need images of at least {span} px, "
            f"got {h}x{w}"
        )
    if gap <= 2 * jitter:
        raise ValueError(f"gap ({gap}) must exceed 2 x jitter ({jitter}) so patches never touch")
    k_label, k_jit, k_off = jax.random.split(key, 3)
    labels = jax.random.randint(k_label, (b,), 0, 8)
    grid = jnp.asarray(NEIGHBOURS)[labels]  # [B, 2]
    # The grid's own random placement within the image, then per-patch jitter.
    origin = jax.random.randint(k_off, (b, 1, 2), jitter, jnp.array([h, w]) - span + jitter + 1)
    cells = jnp.stack([jnp.ones_like(grid), grid], axis=1)  # [B, 2 (centre, neighbour), 2]
    shift = jax.random.randint(k_jit, (b, 2, 2), -jitter, jitter + 1)
    corners = origin + cells * cell + shift

    def cut(img, corner):
        return jax.lax.dynamic_slice(img, (corner[0], corner[1], 0), (patch, patch, img.shape[-1]))

    centre = jax.vmap(cut)(images, corners[:, 0])
    neighbour = jax.vmap(cut)(images, corners[:, 1])
    return centre, neighbour, labels, corners


class Net(nn.Module):
    backbone: nn.Module
    hidden: int = 256

    @nn.compact
    def __call__(self, centre, neighbour, train: bool = False):
        both = self.backbone(jnp.concatenate([centre, neighbour]), train=train)
        f = jnp.concatenate(jnp.split(both, 2), axis=-1)
        f = nn.relu(nn.Dense(self.hidden, name="fc0")(f))
        return nn.Dense(8, name="fc1")(f)

    def encode(self, x):
        return self.backbone(x, train=False)


class Objective(BackboneObjective):
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        self.patch, self.gap, self.jitter = kw.patch, kw.gap, kw.jitter
        self.net = Net(backbone=get_model(config.model.name, **config.model.kw))

    def init(self, rng, batch):
        c, n, _, _ = sample_pairs(rng, batch["view1"], self.patch, self.gap, self.jitter)
        return self.net.init(rng, c, n, train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        c, n, labels, _ = sample_pairs(rng, batch["view1"], self.patch, self.gap, self.jitter)
        logits, new_state = self.net.apply(
            {"params": params, **model_state}, c, n, train=train, mutable=list(model_state)
        )
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return losses.softmax_xent(logits, labels), ({"position_acc": acc}, dict(new_state))
