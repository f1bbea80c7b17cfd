"""Supervised training from scratch on the labelled items only: the baseline
that every self-supervised objective must beat with the same few labels.

Backbone → linear classifier, cross-entropy on augmented labelled images.
Unlabelled rows in a batch (label -1) are ignored, so the config draws every
row from the labelled items (``pretrain.labelled_per_batch = batch_size``).
Evaluators use the backbone features, like every other objective.
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models import get_model
from ssl_jax.models.heads import LinearClassifier
from ssl_jax.objectives import BackboneObjective


class Net(nn.Module):
    backbone: nn.Module
    classifier: nn.Module

    def __call__(self, x, train: bool = False):
        return self.classifier(self.backbone(x, train=train))

    def encode(self, x):
        return self.backbone(x, train=False)


class Objective(BackboneObjective):
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        if num_classes < 2:
            raise ValueError(f"the supervised objective needs >= 2 classes, got {num_classes}")
        self.label_smoothing = config.objective.kw.get("label_smoothing", 0.0)
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw),
            classifier=LinearClassifier(num_classes),
        )

    def init(self, rng, batch):
        return self.net.init(rng, batch["view1"], train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        del rng
        logits, new_state = self.net.apply(
            {"params": params, **model_state},
            batch["view1"],
            train=train,
            mutable=list(model_state),
        )
        labels = batch["label"]
        loss = losses.softmax_xent(logits, labels, label_smoothing=self.label_smoothing)
        valid = labels >= 0
        hit = (jnp.argmax(logits, -1) == labels) & valid
        acc = hit.sum() / jnp.maximum(valid.sum(), 1)
        return loss, ({"train_acc": acc}, dict(new_state))
