"""Autoencoder, plain or denoising: reconstruct the clean image from the
encoder's feature vector.

"Extracting and Composing Robust Features with Denoising Autoencoders"
(Vincent et al., 2008). The encoder is the configured backbone (any of
ssl_jax.models: it yields a feature vector), the decoder a small transposed-
convolution network (ssl_jax.models.decoder). The loss is the mean squared
error to the clean input x:

    L = mean (D(E(corrupt(x))) - x)^2

with ``corruption`` "none" (a plain autoencoder), "gaussian" (x + N(0, noise^2))
or "mask" (each pixel set to the image minimum with probability ``noise``).
Evaluators use the encoder on clean images. The report shows inputs, their
corrupted versions and the reconstructions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import get_model
from ssl_jax.models.decoder import ConvDecoder
from ssl_jax.objectives import BackboneObjective

CORRUPTIONS = ("none", "gaussian", "mask")


class Net(nn.Module):
    backbone: nn.Module
    decoder: nn.Module

    def __call__(self, x, train: bool = False):
        return self.decoder(self.backbone(x, train=train), train=train)

    def encode(self, x):
        return self.backbone(x, train=False)


def corrupt(key, x, kind: str, noise: float):
    """The corrupted input of a denoising autoencoder (``kind`` in CORRUPTIONS)."""
    if kind == "none":
        return x
    if kind == "gaussian":
        return x + noise * jax.random.normal(key, x.shape, x.dtype)
    if kind == "mask":
        lo = jnp.min(x, axis=(1, 2, 3), keepdims=True)
        drop = jax.random.bernoulli(key, noise, x.shape[:3] + (1,))
        return jnp.where(drop, lo, x)
    raise ValueError(f"unknown objective.kw.corruption {kind!r}: {', '.join(CORRUPTIONS)}")


class Objective(BackboneObjective):
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        if kw.corruption not in CORRUPTIONS:
            raise ValueError(
                f"unknown objective.kw.corruption {kw.corruption!r}: {', '.join(CORRUPTIONS)}"
            )
        self.corruption, self.noise = kw.corruption, kw.noise
        d = config.data
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw),
            decoder=ConvDecoder((d.image_size, d.image_size, d.channels), width=kw.decoder_width),
        )

    def init(self, rng, batch):
        return self.net.init(rng, batch["view1"], train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        x = batch["view1"]
        recon, new_state = self.net.apply(
            {"params": params, **model_state},
            corrupt(rng, x, self.corruption, self.noise),
            train=train,
            mutable=list(model_state),
        )
        return jnp.mean((recon - x) ** 2), ({}, dict(new_state))

    def visualize(self, params, model_state, images, rng):
        corrupted = corrupt(rng, images, self.corruption, self.noise)
        recon = self.net.apply({"params": params, **model_state}, corrupted)
        return {
            "autoencoder_reconstructions": {
                "input": images,
                "corrupted": corrupted,
                "reconstruction": recon,
            }
        }
