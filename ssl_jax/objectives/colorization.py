"""Colorization: predict an image's colour from its gray version.

"Colorful Image Colorization" (Zhang, Isola and Efros, 2016,
https://arxiv.org/abs/1603.08511) as a pretext task, here as regression: the
image x (RGB) is split into luma Y = 0.299 R + 0.587 G + 0.114 B and the two
chroma channels U = B - Y, V = R - Y. The backbone sees only the luma
(repeated over the three input channels, so its stem is that of an RGB
network) and a convolutional decoder predicts (U, V) at every pixel:

    L = mean (D(E(Y, Y, Y)) - (U, V))^2

Evaluators use the backbone on the gray version of their images, as it was
trained. Grayscale datasets have no colour to predict: the objective refuses
them with a clear message.
"""

import jax.numpy as jnp

from ssl_jax.models import get_model
from ssl_jax.models.decoder import ConvDecoder
from ssl_jax.objectives import BackboneObjective
from ssl_jax.objectives.autoencoder import Net

LUMA = jnp.array([0.299, 0.587, 0.114])


def split_colour(x):
    """RGB [..., 3] → (luma [..., 1], chroma (U, V) [..., 2])."""
    y = x @ LUMA
    return y[..., None], jnp.stack([x[..., 2] - y, x[..., 0] - y], axis=-1)


def gray_input(x):
    return jnp.repeat(split_colour(x)[0], 3, axis=-1)


class Objective(BackboneObjective):
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        d = config.data
        if d.channels != 3:
            raise ValueError(
                f"colorization predicts colour from gray, so it needs colour images; "
                f"{d.name} is configured with data.channels={d.channels}"
            )
        self.net = Net(
            backbone=get_model(config.model.name, **config.model.kw),
            decoder=ConvDecoder(
                (d.image_size, d.image_size, 2), width=config.objective.kw.decoder_width
            ),
        )

    def init(self, rng, batch):
        return self.net.init(rng, gray_input(batch["view1"]), train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        del rng
        x = batch["view1"]
        _, chroma = split_colour(x)
        pred, new_state = self.net.apply(
            {"params": params, **model_state},
            gray_input(x),
            train=train,
            mutable=list(model_state),
        )
        return jnp.mean((pred - chroma) ** 2), ({}, dict(new_state))

    def encode(self, params, model_state, images):
        return self.net.apply(
            {"params": params, **model_state}, gray_input(images), method=Net.encode
        )

    def visualize(self, params, model_state, images, rng):
        y, _ = split_colour(images)
        uv = self.net.apply({"params": params, **model_state}, gray_input(images))
        # Back to RGB: R = Y + V, B = Y + U, G from the luma equation.
        r, b = y[..., 0] + uv[..., 1], y[..., 0] + uv[..., 0]
        g = (y[..., 0] - LUMA[0] * r - LUMA[2] * b) / LUMA[1]
        return {
            "colorization": {
                "input": images,
                "gray": jnp.repeat(y, 3, -1),
                "colourised": jnp.stack([r, g, b], -1),
            }
        }
