"""The DCGAN discriminator as a backbone: images → its penultimate features.

Radford et al. (2015, https://arxiv.org/abs/1511.06434): stride-2 4x4
convolutions with LeakyReLU (0.2), BatchNorm from the second one, then a dense
feature layer. The GAN objective puts a one-unit logit on top; evaluators and
fine-tuning use these features.
"""

from __future__ import annotations

import flax.linen as nn


def layer_key(path: tuple[str, ...]) -> tuple[int, int]:
    """conv0, conv1 (+ bn1), fc (see ``models.layer_ids``)."""
    order = {"conv0": 0, "conv1": 1, "bn1": 1, "fc": 2}
    return (order[path[0]], 0)


class Model(nn.Module):
    variant: str | None = None
    width: int = 64
    feature_dim: int = 256

    @property
    def num_features(self) -> int:
        return self.feature_dim

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=(2, 2), name="conv0")(x), 0.2)
        x = nn.Conv(2 * self.width, (4, 4), strides=(2, 2), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
        x = nn.leaky_relu(x, 0.2)
        return nn.leaky_relu(nn.Dense(self.feature_dim, name="fc")(x.reshape(x.shape[0], -1)), 0.2)
