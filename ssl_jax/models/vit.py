"""Vision Transformer backbone.

``get_model("vit:s/16")`` builds a ViT-S with 16x16 patches; the letter picks the size
(ti, s, b, l) and the number after the slash the patch size. Explicit ``width``,
``depth``, ``num_heads``, ``mlp_dim`` and ``patch_size`` override the variant.

The building blocks are kept separate so that a masked autoencoder can reuse them:
``patchify``/``unpatchify`` convert between images and flattened patches (also the
MAE reconstruction target), ``sincos_posemb_2d`` gives fixed position embeddings,
and ``Encoder`` is the stack of pre-LN blocks plus the final LayerNorm.

Choices worth knowing:
  * Patch embedding is a Dense layer on flattened patches, which is the same map
    (and parameter count) as a conv with kernel = stride = patch size.
  * Position embeddings are learned by default (``posemb="learn"``, N(0, 0.02)),
    and cover the patch tokens only; the class token gets none, since its position
    carries no information. ``posemb="sincos2d"`` uses fixed 2-D sin-cos ones.
    Learned embeddings tie the parameters to the input resolution.
  * ``pool="gap"`` averages the encoder outputs (after the final LayerNorm) and
    adds no class token; ``pool="cls"`` returns the class token's output.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.kernels import attention, gelu
from ssl_jax.kernels.layernorm import LayerNorm

# Size name -> (width, depth, num_heads, mlp_dim), as in Dosovitskiy et al. / DeiT.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
}


def parse_variant(variant: str | None) -> tuple[tuple[int, int, int, int], int]:
    """``"s/16"`` -> ((384, 12, 6, 1536), 16). None means "s/16"."""
    variant = "s/16" if variant is None else variant.lower()
    size, sep, patch = variant.partition("/")
    if size not in SIZES or not sep or not patch.isdigit():
        raise ValueError(f"Bad ViT variant {variant!r}; expected e.g. 'ti/4', 's/16', 'b/16'.")
    return SIZES[size], int(patch)


def patchify(x, patch_size: int):
    """Images [B, H, W, C] -> flattened patches [B, (H/p)*(W/p), p*p*C], row-major."""
    b, h, w, c = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"Image size {h}x{w} is not divisible by patch size {p}.")
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, patch_size: int, grid: tuple[int, int], channels: int):
    """Inverse of ``patchify``: [B, gh*gw, p*p*C] -> [B, gh*p, gw*p, C]."""
    b = x.shape[0]
    (gh, gw), p = grid, patch_size
    x = x.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, channels)


def sincos_posemb_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10_000.0):
    """Fixed 2-D sin-cos position embeddings [1, grid_h*grid_w, dim] (row-major grid)."""
    if dim % 4:
        raise ValueError(f"sincos2d position embeddings need width divisible by 4, got {dim}.")
    y, x = np.mgrid[:grid_h, :grid_w]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe[None], dtype=jnp.float32)


def layer_key(path: tuple[str, ...]) -> tuple[int, int]:
    """Patch/position embeddings and class token, each block, then the final
    LayerNorm (see ``models.layer_ids``), as in MAE's layer-wise decay."""
    if path[0] != "encoder":
        return (0, 0)
    if path[1].startswith("block"):
        return (1, int(path[1].removeprefix("block")))
    return (2, 0)


def resize_posemb(pe, grid: tuple[int, int]):
    """Learned embeddings [1, g*g, D] of a square grid, bilinearly resized to
    ``grid`` when the input has another size (DINO's local crops, fine-tuning
    at a new resolution); unchanged otherwise."""
    n, dim = pe.shape[1], pe.shape[2]
    if n == grid[0] * grid[1]:
        return pe
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"cannot resize position embeddings of {n} tokens (not a square grid)")
    pe = jax.image.resize(pe.reshape(1, g, g, dim), (1, *grid, dim), "linear", antialias=False)
    return pe.reshape(1, grid[0] * grid[1], dim)


def dense_tokens(layer: nn.Module, x):
    """Apply a Dense ``layer`` to tokens [..., D] as one [N, D] matrix.

    Same function and parameters as ``layer(x)``. On a 3-D input the weight
    gradient contracts two axes (batch and tokens), and XLA's CPU backend
    feeds that dot a transposed copy of one operand (in every layer, every
    step); on the flattened rows it contracts one axis and needs no copy.
    """
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class _HeadsDense(nn.Module):
    """flax's DenseGeneral as MultiHeadDotProductAttention uses it (same
    parameter names, shapes and initialisation), computed on [N, in] rows:
    kernel (D, H, Dh) with bias (H, Dh) projects to heads, kernel (H, Dh, D)
    with bias (D,) back from them."""

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    kernel_init: Any = nn.initializers.xavier_uniform()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        out_dim = int(np.prod(self.bias_shape))
        in_dim = int(np.prod(self.kernel_shape)) // out_dim

        def kernel_init(rng, shape, dtype=jnp.float32):  # on (in, out), as DenseGeneral
            return self.kernel_init(rng, (in_dim, out_dim), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros, self.bias_shape)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return x @ kernel.reshape(in_dim, out_dim) + bias.reshape(out_dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention, the function and parameters of flax's
    ``nn.MultiHeadDotProductAttention`` (query/key/value/out, no dropout on
    the weights), with its projections on [B*L, D] rows (see ``dense_tokens``)."""

    num_heads: int
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        h = self.num_heads
        if d % h:
            raise ValueError(f"width {d} is not divisible by num_heads {h}")
        rows = x.reshape(b * n, d)
        kw = dict(kernel_init=self.kernel_init, dtype=self.dtype)
        q, k, v = (
            _HeadsDense((d, h, d // h), (h, d // h), name=name, **kw)(rows).reshape(b, n, h, -1)
            for name in ("query", "key", "value")
        )
        out = attention_core(q, k, v).reshape(b * n, d)
        return _HeadsDense((h, d // h, d), (d,), name="out", **kw)(out).reshape(b, n, d)


def attention_core(q, k, v):
    """softmax(q k^T / sqrt(head_dim)) v per head; q, k, v and the result are
    [batch, tokens, heads, head_dim]. Fused in C++ on a single CPU device when
    ``config.cpu_attention`` selects it (ssl_jax/kernels/attention.py), else XLA's."""
    return attention.attention_core(q, k, v)


class DenseGelu(nn.Module):
    """``nn.gelu(nn.Dense(features)(x))`` on [N, in] rows: the same parameters
    (kernel, bias, initialised in the same order) and function. The bias add
    and GELU go through ``kernels.gelu.bias_gelu``: fused in C++ on a single
    CPU device when ``config.cpu_gelu`` selects it, else XLA's."""

    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        return gelu.bias_gelu(x @ kernel, bias)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # rows: see dense_tokens
        dense = dict(
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        )
        x = DenseGelu(self.mlp_dim, name="fc1", **dense)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(shape[-1], name="fc2", **dense)(x).reshape(shape)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = SelfAttention(self.num_heads, self.dtype, name="attn")(y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class Encoder(nn.Module):
    """A stack of ``depth`` pre-LN blocks followed by a final LayerNorm.

    Works on any token sequence [B, L, width]; it adds no embeddings itself, so an
    MAE encoder (visible tokens only) and decoder (different width) can both use it.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_dim, self.dropout, self.dtype, name=f"block{i}")(
                x, train
            )
        return LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)


class Model(nn.Module):
    """ViT feature extractor: images [B, H, W, C] -> features [B, width].

    Attributes:
      variant: "<size>/<patch>", size in {ti, s, b, l}; None means "s/16".
      width, depth, num_heads, mlp_dim, patch_size: override the variant when set.
      pool: "cls" (class token output) or "gap" (mean of patch-token outputs).
      posemb: "learn" (learned) or "sincos2d" (fixed).
      dropout: dropout rate after the embeddings and inside every block.
      dtype: compute dtype; parameters and the returned features stay float32.
    """

    variant: str | None = "s/16"
    width: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_dim: int | None = None
    patch_size: int | None = None
    pool: str = "cls"
    posemb: str = "learn"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @property
    def config(self) -> dict[str, int]:
        """The resolved architecture: variant defaults with explicit overrides applied."""
        (width, depth, heads, mlp), patch = parse_variant(self.variant)
        return dict(
            width=self.width or width,
            depth=depth if self.depth is None else self.depth,  # 0: no blocks
            num_heads=self.num_heads or heads,
            mlp_dim=self.mlp_dim or mlp,
            patch_size=self.patch_size or patch,
        )

    @property
    def num_features(self) -> int:
        return self.config["width"]

    @nn.compact
    def tokens(self, x, train: bool = False, keep=None):
        """Encoder outputs before pooling: [B, 1+N, width] ("cls") or [B, N, width] ("gap").

        ``keep`` ([B, K] patch indices) runs the encoder on those patches only
        (after their position embeddings are added), as a masked autoencoder does;
        then N = K.
        """
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}.")
        cfg = self.config
        width, p = cfg["width"], cfg["patch_size"]
        grid = (x.shape[1] // p, x.shape[2] // p)

        x = dense_tokens(nn.Dense(width, dtype=self.dtype, name="embedding"), patchify(x, p))
        if self.posemb == "learn":
            if self.has_variable("params", "pos_embedding"):
                # Read, not declared: flax would check the declared shape against
                # this input's grid, which may differ (then it is resized).
                pe = self.get_variable("params", "pos_embedding")
            else:
                shape = (1, x.shape[1], width)
                pe = self.param("pos_embedding", nn.initializers.normal(0.02), shape)
            pe = resize_posemb(pe, grid)
        elif self.posemb == "sincos2d":
            pe = sincos_posemb_2d(*grid, width)
        else:
            raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}.")
        x = x + pe.astype(x.dtype)
        if keep is not None:
            x = jnp.take_along_axis(x, keep[..., None], axis=1)

        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width))
            cls = jnp.broadcast_to(cls, (x.shape[0], 1, width)).astype(x.dtype)
            x = jnp.concatenate([cls, x], axis=1)

        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Encoder(
            cfg["depth"], cfg["num_heads"], cfg["mlp_dim"], self.dropout, self.dtype, name="encoder"
        )(x, train)

    def __call__(self, x, train: bool = False):
        x = self.tokens(x, train)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        return x.astype(jnp.float32)
