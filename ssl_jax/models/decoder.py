"""A convolutional decoder from a feature vector back to an image-shaped output,
shared by the autoencoder, colorization and the GAN generator.

Dense → a (H/4, W/4, 4·width) map → two ×2 upsamplings (BatchNorm + ReLU)
→ a 3×3 conv to ``channels`` outputs; resized at the end when H or W is not a
multiple of 4.

Each ×2 upsampling is a sub-pixel convolution (Shi et al., 2016,
https://arxiv.org/abs/1609.05158): a k×k conv (``up_kernel``, 3 by default)
to 4× the features, then depth-to-space. It spans what a stride-2 transposed
convolution does, without its checkerboard artefacts, and runs as a plain
convolution: XLA's CPU backend lowers transposed convolutions (input
dilation) to a slow generic loop, which made an MNIST autoencoder step at
batch 256 take 4.9 s (experiments/bench). With ``up_kernel=2`` each output
pixel sees a 2×2 input window, the footprint (and the multiply-adds) of
DCGAN's 4×4 stride-2 transposed convolution, at 4/9 of the 3×3 version's cost.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def depth_to_space(x, r: int):
    """[B, H, W, r·r·C] → [B, r·H, r·W, C]: channel block (i, j) becomes the
    pixel at offset (i, j) of each r×r output cell."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


class ConvDecoder(nn.Module):
    out_shape: tuple[int, int, int]  # (H, W, channels)
    width: int = 32
    final_activation: str = "none"  # none | tanh
    up_kernel: int = 3  # side of the sub-pixel convolutions' kernels
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        h, w, c = self.out_shape
        h0, w0 = -(-h // 4), -(-w // 4)
        bn = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=name
        )
        x = nn.Dense(h0 * w0 * 4 * self.width, dtype=self.dtype, name="fc")(z.astype(self.dtype))
        x = nn.relu(bn("bn_fc")(x)).reshape(z.shape[0], h0, w0, 4 * self.width)
        for i, features in enumerate((2 * self.width, self.width)):
            k = (self.up_kernel, self.up_kernel)
            x = nn.Conv(4 * features, k, padding="SAME", dtype=self.dtype, name=f"up{i}")(x)
            x = nn.relu(bn(f"bn{i}")(depth_to_space(x, 2)))
        x = nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype, name="out")(x)
        if x.shape[1:3] != (h, w):
            x = jax.image.resize(x, (x.shape[0], h, w, c), "linear")
        x = x.astype(jnp.float32)
        return jnp.tanh(x) if self.final_activation == "tanh" else x
