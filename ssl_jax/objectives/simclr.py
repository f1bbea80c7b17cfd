"""SimCLR: two augmented views of each image, pulled together against the batch.

"A Simple Framework for Contrastive Learning of Visual Representations"
(Chen et al., 2020, https://arxiv.org/abs/2002.05709). Backbone → projection
MLP → NT-Xent over both views of the global batch. Evaluators use the backbone
features (before the projection head), as in the paper.
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.models import get_model
from ssl_jax.models.heads import ProjectionHead
from ssl_jax.objectives import BackboneObjective


class Net(nn.Module):
    backbone: nn.Module
    head: nn.Module

    def __call__(self, x, train: bool = False):
        features = self.backbone(x, train=train)
        return features, self.head(features, train=train)

    def encode(self, x):
        return self.backbone(x, train=False)


class Objective(BackboneObjective):
    views = ("view1", "view2")

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes  # SimCLR uses no labels
        kw = config.objective.kw
        self.temperature = kw.temperature
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw),
            head=ProjectionHead(
                hidden_dim=kw.proj_hidden_dim, out_dim=kw.proj_dim, num_layers=kw.proj_layers
            ),
        )

    def init(self, rng, batch):
        return self.net.init(rng, batch[self.views[0]], train=False)

    def positive_ids(self, batch):
        """[B] ids; items with equal ids are positives. SimCLR: each image is
        only its own positive (its other view)."""
        return jnp.arange(batch[self.views[0]].shape[0])

    def forward(self, params, model_state, batch, rng, train=True):
        """(loss, metrics, new model_state, backbone features [V*B, D] view-major)."""
        del rng  # SimCLR's randomness is all in the augmentation
        x = jnp.concatenate([batch[v] for v in self.views])
        (features, z), new_state = self.net.apply(
            {"params": params, **model_state}, x, train=train, mutable=list(model_state)
        )
        ids = jnp.tile(self.positive_ids(batch), len(self.views))
        loss, metrics = losses.contrastive(z, ids, temperature=self.temperature)
        return loss, metrics, dict(new_state), features

    def loss(self, params, model_state, batch, rng, train=True):
        loss, metrics, new_state, _ = self.forward(params, model_state, batch, rng, train)
        return loss, (metrics, new_state)
