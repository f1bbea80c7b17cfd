"""Masked autoencoder around the ViT backbone ("Masked Autoencoders Are Scalable
Vision Learners", He et al., 2021, https://arxiv.org/abs/2111.06377).

The encoder is ``ssl_jax.models.vit.Model`` itself (parameters under
``encoder``), run on the visible patches only; evaluators and fine-tuning use
it unchanged on whole images. The decoder is a light transformer of its own
width: encoded visible tokens are projected to it, one shared learned mask
token fills every masked position, the sequence is put back into patch order
("unshuffled"), fixed 2-D sin-cos position embeddings are added, and a linear
layer predicts each patch's pixels.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import vit


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float):
    """Per-example random masking of exactly ``round(num_patches * mask_ratio)`` patches.

    Returns (keep [B, K] indices of visible patches, in shuffled order;
    restore [B, L], the permutation that puts [visible..., masked...] tokens back
    into patch order; mask [B, L], 1.0 where a patch is masked).
    """
    num_masked = int(round(num_patches * mask_ratio))
    if not 0 < num_masked < num_patches:
        raise ValueError(
            f"mask_ratio {mask_ratio} masks {num_masked} of {num_patches} patches; "
            "at least one must stay visible and one be masked"
        )
    noise = jax.random.uniform(rng, (batch, num_patches))
    shuffle = jnp.argsort(noise, axis=1)  # ascending: the first K stay visible
    restore = jnp.argsort(shuffle, axis=1)
    keep = shuffle[:, : num_patches - num_masked]
    mask = jnp.concatenate(
        [jnp.zeros((batch, num_patches - num_masked)), jnp.ones((batch, num_masked))], axis=1
    )
    return keep, restore, jnp.take_along_axis(mask, restore, axis=1)


def unshuffle(tokens, restore):
    """[B, L, D] tokens in shuffled order ([visible..., masked...]) → patch order."""
    return jnp.take_along_axis(tokens, restore[..., None], axis=1)


class MAE(nn.Module):
    """images [B, H, W, C] → (predicted patches [B, L, p*p*C], mask [B, L])."""

    encoder: vit.Model
    mask_ratio: float = 0.75
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 0  # 0: 4 * decoder_width
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_rng, train: bool = False):
        p = self.encoder.config["patch_size"]
        b, h, w, c = x.shape
        grid = (h // p, w // p)
        num_patches = grid[0] * grid[1]
        keep, restore, mask = random_masking(mask_rng, b, num_patches, self.mask_ratio)
        tokens = self.encoder.tokens(x, train=train, keep=keep)
        has_cls = self.encoder.pool == "cls"

        y = vit.dense_tokens(
            nn.Dense(self.decoder_width, dtype=self.dtype, name="decoder_embed"), tokens
        )
        cls, visible = (y[:, :1], y[:, 1:]) if has_cls else (None, y)
        mask_token = self.param(
            "mask_token", nn.initializers.normal(0.02), (1, 1, self.decoder_width)
        )
        masked = jnp.broadcast_to(
            mask_token.astype(y.dtype), (b, num_patches - visible.shape[1], self.decoder_width)
        )
        y = unshuffle(jnp.concatenate([visible, masked], axis=1), restore)
        y = y + vit.sincos_posemb_2d(*grid, self.decoder_width).astype(y.dtype)
        if has_cls:
            y = jnp.concatenate([cls, y], axis=1)
        y = vit.Encoder(
            self.decoder_depth,
            self.decoder_heads,
            self.decoder_mlp_dim or 4 * self.decoder_width,
            dtype=self.dtype,
            name="decoder",
        )(y, train)
        y = y[:, 1:] if has_cls else y
        pred = vit.dense_tokens(nn.Dense(p * p * c, dtype=self.dtype, name="decoder_pred"), y)
        return pred.astype(jnp.float32), mask

    def encode(self, x):
        return self.encoder(x, train=False)
