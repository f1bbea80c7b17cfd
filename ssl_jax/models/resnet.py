"""ResNet backbones (v1.5: the stride of a bottleneck sits on its 3x3 conv).

``get_model("resnet:18")``, ``"resnet:34"`` and ``"resnet:50"`` return features after
global average pooling, with no classifier: D = 512*width for 18/34 and
2048*width for 50.

Choices worth knowing:
  * Convolutions have no bias (BatchNorm follows each one) and use Kaiming-normal
    (fan_out) init, as in the torchvision reference, so parameter counts match it.
  * ``zero_init_residual`` (default True) starts the last BatchNorm scale of every
    residual block at zero. Each block then begins as the identity, which makes
    early training of deep nets with the large batches common in self-supervised
    learning more stable (Goyal et al., 2017; also used by SimCLR).
  * ``cifar_stem`` swaps the 7x7/stride-2 conv and max-pool for one 3x3/stride-1
    conv; on 32x32 or 28x28 inputs the ImageNet stem would throw away 3/4 of the
    spatial resolution before the first block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.kernels import onednn
from ssl_jax.models.batchnorm import BatchNorm

# Depth -> (block type, number of blocks per stage).
DEPTHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "18": ("basic", (2, 2, 2, 2)),
    "34": ("basic", (3, 4, 6, 3)),
    "50": ("bottleneck", (3, 4, 6, 3)),
    "101": ("bottleneck", (3, 4, 23, 3)),
    "152": ("bottleneck", (3, 8, 36, 3)),
}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def layer_key(path: tuple[str, ...]) -> tuple[int, int]:
    """The stem, then each residual block in order (see ``models.layer_ids``)."""
    if path[0] == "stem":
        return (0, 0)
    stage, block = path[0].removeprefix("stage").split("_block")
    return (int(stage), int(block))


def _pad(kernel: int) -> Sequence[tuple[int, int]]:
    # Explicit symmetric padding (as in the reference implementation) rather than
    # "SAME", which pads asymmetrically for strided convs on even-sized inputs.
    p = (kernel - 1) // 2
    return ((p, p), (p, p))


class _ConvBN(nn.Module):
    """Conv (no bias) followed by BatchNorm and an optional ReLU."""

    features: int
    kernel: int = 3
    stride: int = 1
    relu: bool = True
    zero_scale: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=_pad(self.kernel),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            conv_general_dilated=onednn.conv_general_dilated,  # XLA's unless cpu_conv=onednn
            name="conv",
        )(x)
        x = BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=nn.initializers.zeros if self.zero_scale else nn.initializers.ones,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
    """Two 3x3 convs; used by ResNet-18/34. Output channels = ``features``."""

    features: int
    stride: int = 1
    zero_init_residual: bool = True
    dtype: Any = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype)
        y = _ConvBN(self.features, 3, self.stride, name="conv1", **kw)(x, train)
        y = _ConvBN(
            self.features, 3, 1, relu=False, zero_scale=self.zero_init_residual, name="conv2", **kw
        )(y, train)
        if x.shape[-1] != self.features or self.stride != 1:
            x = _ConvBN(self.features, 1, self.stride, relu=False, name="proj", **kw)(x, train)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand; used by ResNet-50+. Output = 4*features."""

    features: int
    stride: int = 1
    zero_init_residual: bool = True
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype)
        out = self.features * self.expansion
        y = _ConvBN(self.features, 1, 1, name="conv1", **kw)(x, train)
        y = _ConvBN(self.features, 3, self.stride, name="conv2", **kw)(y, train)
        y = _ConvBN(out, 1, 1, relu=False, zero_scale=self.zero_init_residual, name="conv3", **kw)(
            y, train
        )
        if x.shape[-1] != out or self.stride != 1:
            x = _ConvBN(out, 1, self.stride, relu=False, name="proj", **kw)(x, train)
        return nn.relu(x + y)


class Model(nn.Module):
    """ResNet feature extractor: images [B, H, W, C] -> pooled features [B, D].

    Attributes:
      variant: depth as a string, "18", "34" or "50" (also "101", "152"); None means "18".
      width: multiplies every channel count (base 64*width).
      cifar_stem: 3x3/stride-1 stem without max-pool, for small (28-32 px) images.
      zero_init_residual: start the last BN scale of each block at zero.
      dtype: compute dtype; parameters and the returned features stay float32.
    """

    variant: str | None = "18"
    width: float = 1.0
    cifar_stem: bool = False
    zero_init_residual: bool = True
    dtype: Any = jnp.float32

    @property
    def depth(self) -> str:
        v = "18" if self.variant is None else str(self.variant)
        if v not in DEPTHS:
            raise ValueError(f"Unknown ResNet depth {v!r}; choose from {sorted(DEPTHS, key=int)}.")
        return v

    @property
    def base_channels(self) -> int:
        return max(1, int(round(64 * self.width)))

    @property
    def num_features(self) -> int:
        kind, _ = DEPTHS[self.depth]
        expansion = Bottleneck.expansion if kind == "bottleneck" else BasicBlock.expansion
        return self.base_channels * 8 * expansion

    @nn.compact
    def __call__(self, x, train: bool = False):
        kind, stages = DEPTHS[self.depth]
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        base = self.base_channels
        x = x.astype(self.dtype)

        if self.cifar_stem:
            x = _ConvBN(base, 3, 1, dtype=self.dtype, name="stem")(x, train)
        else:
            x = _ConvBN(base, 7, 2, dtype=self.dtype, name="stem")(x, train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        for i, num_blocks in enumerate(stages):
            for j in range(num_blocks):
                # The first block of every stage but the first halves the resolution.
                stride = 2 if (i > 0 and j == 0) else 1
                x = block_cls(
                    base * 2**i,
                    stride=stride,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)

        # Pool in float32 so low-precision compute does not lose accuracy in the mean.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
