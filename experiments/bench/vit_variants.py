"""Where the ViT step's time goes on the CPU: ssl_jax's encoder blocks against
rewrites of their parts and against XLA CPU options, in one process.

  .venv/bin/python experiments/bench/vit_variants.py            # ViT-Ti: 12 blocks, 256 x 16 tokens
  .venv/bin/python experiments/bench/vit_variants.py --toy      # CI: the script runs
  .venv/bin/python experiments/bench/vit_variants.py --cpu-attention fused   # the fused core

Every variant is the forward and backward (``jax.value_and_grad`` of the mean
square output, no optimizer) of a stack of pre-LN transformer blocks on the
same [batch, tokens, width] input; the shapes default to mae_step's encoder
(ViT-Ti on the 16 visible tokens of 256 images). The baseline is
``ssl_jax.models.vit.Encoder`` compiled as ssl_jax compiles its steps (the
Eigen conv path); "before" is the same blocks as ssl_jax built them before
its ViT applied its dense layers to flattened rows. The rewrites keep the
function (the same math up to float rounding); the ablations drop a part to
show what it costs; the options recompile the baseline. The rewrites and
ablations are built from the rebuilt blocks: compare them with the check row
("same blocks, rebuilt here"), whose graph differs from the baseline's by a
fusion per block (RESULTS.md, "The MAE step, op by op"). All are timed in
turn (A B C ... A B C ...) after a warm-up, medians of ``--repeats``;
"speed" is the baseline's median over the variant's (above 1: faster).
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench import data  # noqa: E402
from experiments.bench.dot_variants import wgrad_reoriented  # noqa: E402
from experiments.bench.jax_side import EIGEN_CONV, grad_executable  # noqa: E402
from ssl_jax.kernels import attention, gelu, layernorm  # noqa: E402
from ssl_jax.models import vit  # noqa: E402

XAVIER = nn.initializers.xavier_uniform()


@jax.custom_vjp
def layer_norm(x, scale, bias):
    """LayerNorm over the last axis (eps 1e-6) with a hand-written backward:
    two row reductions instead of autodiff's chain through mean and variance."""
    return _layer_norm_fwd(x, scale, bias)[0]


def _layer_norm_fwd(x, scale, bias):
    centred = x - jnp.mean(x, -1, keepdims=True)
    inv = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + 1e-6)
    xhat = centred * inv
    return xhat * scale + bias, (xhat, inv, scale)


def _layer_norm_bwd(res, dy):
    xhat, inv, scale = res
    g = dy * scale
    mean_g = jnp.mean(g, -1, keepdims=True)
    dx = inv * (g - mean_g - xhat * jnp.mean(g * xhat, -1, keepdims=True))
    rows = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * xhat, rows), jnp.sum(dy, rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class HandLayerNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        return layer_norm(x, scale, self.param("bias", nn.initializers.zeros, (d,)))


def gelu_sigmoid(x):
    """tanh-approximate GELU written as x * sigmoid(2z): the same function."""
    return x * jax.nn.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


_C = 0.7978845608028654  # sqrt(2 / pi)


@jax.custom_vjp
def gelu_hand(x):
    """tanh-approximate GELU with a hand-written backward that reuses the
    forward's tanh (kept as the one residual besides x)."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def _gelu_bwd(res, dy):
    x, t = res
    dz = _C * (1.0 + 3 * 0.044715 * x * x)
    return (dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dz),)


gelu_hand.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def matmul_reoriented(x, w):
    """``x @ w`` on rows whose kernel gradient is computed as (g^T x)^T
    (dot_variants.wgrad_reoriented) instead of autodiff's x^T g."""
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, g):
    x, w = res
    return g @ w.T, wgrad_reoriented(x, g)


matmul_reoriented.defvjp(_matmul_fwd, _matmul_bwd)


class ReorientedDense(nn.Module):
    """nn.Dense on [N, in] rows (the same parameters) through
    ``matmul_reoriented`` where the layer narrows (in > out, the MLP's fc2);
    a plain matmul elsewhere."""

    features: int

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", XAVIER, (x.shape[-1], self.features))
        narrows = w.shape[0] > w.shape[1]
        y = matmul_reoriented(x, w) if narrows else x @ w
        return y + self.param("bias", nn.initializers.zeros, (self.features,))


class FusedAttention(nn.Module):
    """``kind`` "einsum" or "sdpa" (jax.nn.dot_product_attention, XLA
    implementation): one [width, 3*width] projection for q, k, v on the rows;
    "per_head": see ``_per_head``."""

    heads: int
    kind: str = "einsum"

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        if self.kind == "per_head":
            return self._per_head(x)
        qkv = vit.dense_tokens(nn.Dense(3 * d, kernel_init=XAVIER, name="qkv"), x)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, d // self.heads), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        if self.kind == "sdpa":
            out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        else:
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // self.heads)
            out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
        return vit.dense_tokens(nn.Dense(d, kernel_init=XAVIER, name="out"), out.reshape(b, n, d))

    def _per_head(self, x):
        """Each head's q, k, v from its own [width, width/heads] matmul on the
        rows, attention batched over images only, and the output projection
        as a sum over heads: no [B, L, H, Dh] <-> [B, H, L, Dh] transposes."""
        b, n, d = x.shape
        h, dh = self.heads, d // self.heads
        rows = x.reshape(b * n, d)
        out = 0.0
        for i in range(h):
            q, k, v = (
                nn.Dense(dh, kernel_init=XAVIER, name=f"{t}{i}")(rows).reshape(b, n, dh)
                for t in "qkv"
            )
            s = jnp.einsum("bqd,bkd->bqk", q, k) / np.sqrt(dh)
            o = jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(s, axis=-1), v).reshape(b * n, dh)
            out = out + nn.Dense(d, use_bias=i == 0, kernel_init=XAVIER, name=f"out{i}")(o)
        return out.reshape(b, n, d)


class Block(nn.Module):
    """vit.Block with swappable parts: attention ("ssl_jax": vit.SelfAttention
    as in vit.Block, "flax": flax's MultiHeadDotProductAttention on 3-D
    tokens, "einsum", "sdpa", "per_head", "none"), gelu ("tanh" as in vit.Block, "erf",
    "sigmoid", "hand", "none"), norm ("flax", "hand", "none"), ``rows``: the MLP's
    dense layers on [batch * tokens, width] rows (vit.dense_tokens, as
    vit.Block) or on the 3-D tokens, and ``wgrad``: the MLP's kernel gradients
    by autodiff or "reoriented" (ReorientedDense, on rows)."""

    heads: int
    mlp: int
    attention: str = "ssl_jax"
    gelu: str = "tanh"
    norm: str = "flax"
    rows: bool = True
    wgrad: str = "autodiff"

    def _norm(self, x):
        if self.norm == "none":
            return x
        return HandLayerNorm()(x) if self.norm == "hand" else nn.LayerNorm(epsilon=1e-6)(x)

    def _dense(self, features, x):
        if self.wgrad == "reoriented":
            return vit.dense_tokens(ReorientedDense(features), x)
        layer = nn.Dense(features, kernel_init=XAVIER)
        return vit.dense_tokens(layer, x) if self.rows else layer(x)

    @nn.compact
    def __call__(self, x):
        if self.attention != "none":
            y = self._norm(x)
            if self.attention == "ssl_jax":
                y = vit.SelfAttention(self.heads)(y)
            elif self.attention == "flax":
                y = nn.MultiHeadDotProductAttention(
                    num_heads=self.heads, kernel_init=XAVIER, deterministic=True
                )(y, y)
            else:
                y = FusedAttention(self.heads, self.attention)(y)
            x = x + y
        y = self._dense(self.mlp, self._norm(x))
        y = {
            "tanh": nn.gelu,
            "erf": lambda v: nn.gelu(v, approximate=False),
            "sigmoid": gelu_sigmoid,
            "hand": gelu_hand,
            "remat": jax.checkpoint(nn.gelu),
            "none": lambda v: v,
        }[self.gelu](y)
        return x + self._dense(x.shape[-1], y)


class Stack(nn.Module):
    depth: int
    heads: int
    mlp: int
    parts: dict

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = Block(self.heads, self.mlp, **self.parts)(x)
        return x if self.parts.get("norm") == "none" else nn.LayerNorm(epsilon=1e-6)(x)


# name -> (what changes, Stack parts or None for ssl_jax's vit.Encoder, XLA options)
BASE = "ssl_jax vit.Encoder"
VARIANTS = {
    BASE: ("baseline", None, {}),
    "same blocks, rebuilt here": ("check: the same function from flax parts", {}, {}),
    "before: flax attention, dense layers on 3-D tokens": (
        "before",
        {"attention": "flax", "rows": False},
        {},
    ),
    "fused qkv, einsum attention": ("rewrite", {"attention": "einsum"}, {}),
    "fused qkv, jax.nn.dot_product_attention": ("rewrite", {"attention": "sdpa"}, {}),
    "per-head q/k/v matmuls, no head transposes": ("rewrite", {"attention": "per_head"}, {}),
    "GELU as x*sigmoid(2z)": ("rewrite", {"gelu": "sigmoid"}, {}),
    "GELU with hand-written backward": ("rewrite", {"gelu": "hand"}, {}),
    "GELU recomputed in the backward (jax.checkpoint)": ("rewrite", {"gelu": "remat"}, {}),
    "LayerNorm with hand-written backward": ("rewrite", {"norm": "hand"}, {}),
    "MLP fc2's kernel gradient as (g^T x)^T": ("rewrite", {"wgrad": "reoriented"}, {}),
    "exact (erf) GELU, as torch's": ("other function", {"gelu": "erf"}, {}),
    "no attention": ("ablation", {"attention": "none"}, {}),
    "no GELU": ("ablation", {"gelu": "none"}, {}),
    "no LayerNorm": ("ablation", {"norm": "none"}, {}),
    "matmuls only": ("ablation", {"attention": "none", "gelu": "none", "norm": "none"}, {}),
    "XLA default (YNNPACK)": ("option", None, {"xla_cpu_experimental_ynn_fusion_type": None}),
    "YNNPACK dots": (
        "option",
        None,
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    ),
    "XNNPACK dots": (
        "option",
        None,
        {"xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    ),
    "oneDNN": ("option", None, {"xla_cpu_use_onednn": True}),
    "vector width 512": ("option", None, {"xla_cpu_prefer_vector_width": 512}),
    "single-threaded Eigen": ("option", None, {"xla_cpu_multi_thread_eigen": False}),
    "concurrency-optimised scheduler": (
        "option",
        None,
        {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    ),
    "fast math": ("option", None, {"xla_cpu_enable_fast_math": True}),
    "no fusion emitters": ("option", None, {"xla_cpu_use_fusion_emitters": False}),
    "codegen split in 8": ("option", None, {"xla_cpu_parallel_codegen_split_count": 8}),
    "XNNPACK graph fusion": (
        "option",
        None,
        {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    ),
}


def build(name, args):
    kind, parts, extra = VARIANTS[name]
    if parts is None:
        module = vit.Encoder(args.depth, args.heads, args.mlp)
    else:
        module = Stack(args.depth, args.heads, args.mlp, parts)
    x = jnp.asarray(data.tokens(args.batch, args.tokens, args.width))
    options = {k: v for k, v in {**EIGEN_CONV, **extra}.items() if v is not None}
    exe, variables = grad_executable(module, x, options)

    def run():
        return jax.block_until_ready(exe(variables, x))

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--mlp", type=int, default=768)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--cpu-attention",
        choices=("xla", "fused"),
        default="xla",
        help="the attention core in ssl_jax's blocks (config.cpu_attention; the CPU default "
        "is fused where it builds); the rewrites of attention are XLA's either way",
    )
    p.add_argument(
        "--cpu-norm-gelu",
        choices=("xla", "fused"),
        default="xla",
        help="the LayerNorm and GELU in ssl_jax's vit.Encoder (config.cpu_layernorm and "
        "cpu_gelu; the CPU default is fused where they build); the rebuilt blocks use flax's",
    )
    p.add_argument("--toy", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    kernels = {attention: a.cpu_attention, gelu: a.cpu_norm_gelu, layernorm: a.cpu_norm_gelu}
    before = {k: k.mode() for k in kernels}
    try:
        for kernel, mode in kernels.items():
            kernel.configure(mode)
        return _run(a)
    finally:  # called in-process (tests), leave the modes as they were
        for kernel, mode in before.items():
            kernel.configure(mode)


def _run(a):
    if a.toy:
        a.batch, a.tokens, a.width, a.depth, a.heads, a.mlp, a.repeats = 2, 4, 16, 1, 2, 32, 1
    names = [BASE, *[n for n in a.variants if n != BASE]]
    runs, outs = {}, {}
    for name in names:
        print(f"compiling {name} ...", file=sys.stderr, flush=True)
        runs[name] = build(name, a)
        outs[name] = runs[name]()  # warm-up
    times = {n: [] for n in runs}
    for _ in range(a.repeats):
        for n, run in runs.items():
            t = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times[BASE])
    print(
        f"{a.depth} blocks, [{a.batch}, {a.tokens}, {a.width}] tokens, {a.heads} heads, "
        f"MLP {a.mlp}; attention core by {attention.runs_on()}, GELU by {gelu.runs_on()}, "
        f"LayerNorm by {layernorm.runs_on()}; forward+backward; "
        f"medians of {a.repeats}; jax {jax.__version__}\n"
    )
    print("| variant | kind | ms | spread | speed vs baseline |\n|---|---|---|---|---|")
    rows = []
    for n, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": n, "kind": VARIANTS[n][0], "ms": 1e3 * med, "speed": base / med})
        spread = (max(ts) - min(ts)) / med
        cells = f"{1e3 * med:.1f} | {100 * spread:.0f}% | {base / med:.2f}x"
        print(f"| {n} | {VARIANTS[n][0]} | {cells} |")
    return rows, outs


if __name__ == "__main__":
    main()
