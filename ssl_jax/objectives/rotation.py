"""Rotation prediction: which of 0, 90, 180 or 270 degrees was an image turned by?

"Unsupervised Representation Learning by Predicting Image Rotations" (Gidaris
et al., 2018, https://arxiv.org/abs/1803.07728). As in the paper, every image
of the batch enters in all four rotations (the batch is 4x larger), and a
linear classifier on the backbone's features is trained with cross-entropy
on the rotation index k (the image turned by k x 90 degrees counter-clockwise).
Needs square images. Evaluators use the backbone.
"""

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models import get_model
from ssl_jax.models.heads import LinearClassifier
from ssl_jax.objectives import BackboneObjective
from ssl_jax.objectives.supervised import Net


def rotate_all(images):
    """[B, H, H, C] → (the batch in all 4 rotations [4B, H, H, C], rotation labels [4B]);
    block k holds every image turned by k x 90 degrees counter-clockwise."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rotation prediction needs square images, got {images.shape[1:3]}")
    rotated = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    labels = jnp.repeat(jnp.arange(4), images.shape[0])
    return jnp.concatenate(rotated), labels


class Objective(BackboneObjective):
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw), classifier=LinearClassifier(4)
        )

    def init(self, rng, batch):
        return self.net.init(rng, batch["view1"], train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        del rng
        x, labels = rotate_all(batch["view1"])
        logits, new_state = self.net.apply(
            {"params": params, **model_state}, x, train=train, mutable=list(model_state)
        )
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return losses.softmax_xent(logits, labels), ({"rotation_acc": acc}, dict(new_state))
