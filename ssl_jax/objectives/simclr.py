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


class Net(nn.Module):
    backbone: nn.Module
    head: nn.Module

    def __call__(self, x, train: bool = False):
        features = self.backbone(x, train=train)
        return features, self.head(features, train=train)

    def encode(self, x):
        return self.backbone(x, train=False)


class Objective:
    views = ("view1", "view2")

    def __init__(self, config):
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

    def loss(self, params, model_state, batch, rng, train=True):
        del rng  # SimCLR's randomness is all in the augmentation
        x = jnp.concatenate([batch[v] for v in self.views])
        n = batch[self.views[0]].shape[0]
        (_, z), new_state = self.net.apply(
            {"params": params, **model_state}, x, train=train, mutable=list(model_state)
        )
        ids = jnp.tile(jnp.arange(n), len(self.views))
        loss, metrics = losses.contrastive(z, ids, temperature=self.temperature)
        return loss, (metrics, dict(new_state))

    def after_step(self, state):
        return state

    def encode(self, params, model_state, images):
        return self.net.apply({"params": params, **model_state}, images, method=Net.encode)
