"""A backbone with a linear head: the model of fine-tuning, self-training and prediction.

Parameters are ``{"backbone": <the backbone's own tree>, "head": {"fc": ...}}``,
so a pretrained backbone (``Objective.backbone_variables``) drops in unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ssl_jax.models import get_model
from ssl_jax.models.heads import LinearClassifier


class Classifier(nn.Module):
    backbone: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_backbone: bool = False):
        """Logits [B, num_classes]. With ``frozen_backbone`` the backbone runs in
        inference mode (BatchNorm uses its running statistics) and no gradient
        flows into it, which also skips its backward pass."""
        features = self.backbone(x, train=train and not frozen_backbone)
        if frozen_backbone:
            features = jax.lax.stop_gradient(features)
        return LinearClassifier(self.num_classes, name="head")(features)

    def features(self, x):
        """The backbone's features in inference mode (the head's input)."""
        return self.backbone(x, train=False)


def build(config, num_classes: int) -> Classifier:
    # As an attribute named "backbone" its parameters sit under "backbone", as
    # in the objectives' networks, so the trees line up.
    return Classifier(get_model(config.model.name, **config.model.kw), num_classes)
