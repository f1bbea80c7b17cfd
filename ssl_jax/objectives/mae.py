"""MAE: reconstruct the masked patches of an image from the visible ones.

"Masked Autoencoders Are Scalable Vision Learners" (He et al., 2021,
https://arxiv.org/abs/2111.06377). Per example, ``mask_ratio`` of the patches
(75% by default) are masked at random; the ViT encoder sees only the visible
ones, a light decoder predicts the pixels of every patch, and the loss is the
mean squared error over the masked patches only:

    L = sum_i m_i * mean_pixels((pred_i - target_i)^2) / sum_i m_i

With ``norm_pix_loss`` the target of each patch is its pixels normalised by
that patch's own mean and variance (the paper's better-representation choice).
Evaluators use the encoder on whole, unmasked images (class token or mean of
the patch tokens, by the backbone's ``pool``).
"""

import jax
import jax.numpy as jnp

from ssl_jax.models import get_model, vit
from ssl_jax.models.mae import MAE
from ssl_jax.objectives import submodule_variables


def patch_targets(images, patch_size: int, norm_pix: bool):
    """[B, L, p*p*C] reconstruction targets, per-patch normalised if asked."""
    target = vit.patchify(images, patch_size)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    return target


def masked_mse(pred, target, mask):
    """Mean over masked patches (mask = 1) of the per-patch mean squared error."""
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Objective:
    views = ("view1",)

    def __init__(self, config, *, num_classes: int = 0):
        del num_classes
        kw = config.objective.kw
        if not config.model.name.startswith("vit"):
            raise ValueError(
                f"MAE needs a ViT backbone (model.name 'vit:...'), got {config.model.name!r}"
            )
        self.norm_pix = kw.norm_pix_loss
        encoder = get_model(config.model.name, **config.model.kw)
        self.patch_size = encoder.config["patch_size"]
        self.net = MAE(
            encoder=encoder,
            mask_ratio=kw.mask_ratio,
            decoder_width=kw.decoder_width,
            decoder_depth=kw.decoder_depth,
            decoder_heads=kw.decoder_heads,
        )

    def init(self, rng, batch):
        k_params, k_mask = jax.random.split(rng)
        return self.net.init(k_params, batch["view1"], k_mask, train=False)

    def loss(self, params, model_state, batch, rng, train=True):
        images = batch["view1"]
        pred, mask = self.net.apply({"params": params, **model_state}, images, rng, train=train)
        loss = masked_mse(pred, patch_targets(images, self.patch_size, self.norm_pix), mask)
        return loss, ({"mask_fraction": jnp.mean(mask)}, model_state)

    def after_step(self, state):
        return state

    def encode(self, params, model_state, images):
        return self.net.apply({"params": params, **model_state}, images, method=MAE.encode)

    def visualize(self, params, model_state, images, rng):
        """Test images, their masked versions and the reconstructions (visible
        patches pasted back, as in the paper's figures)."""
        pred, mask = self.net.apply({"params": params, **model_state}, images, rng)
        p = self.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        patches = vit.patchify(images, p)
        if self.norm_pix:  # back to pixels with each patch's own statistics
            mean = patches.mean(axis=-1, keepdims=True)
            std = jnp.sqrt(patches.var(axis=-1, keepdims=True) + 1e-6)
            pred = pred * std + mean
        m = mask[..., None]
        fill = jnp.min(images)
        to_image = lambda x: vit.unpatchify(x, p, grid, images.shape[-1])
        return {
            "mae_reconstructions": {
                "original": to_image(patches),
                "masked": to_image(patches * (1 - m) + fill * m),
                "reconstruction": to_image(patches * (1 - m) + pred * m),
            }
        }

    def backbone_variables(self, params, model_state):
        return submodule_variables({"params": params, **model_state}, "encoder")
