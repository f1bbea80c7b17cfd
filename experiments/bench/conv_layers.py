"""The ResNet-18 step's 3×3 convolutions one layer at a time: XLA's convolution
(the Eigen path ssl_jax compiles with) against the same work as matmuls.

  .venv/bin/python experiments/bench/conv_layers.py                 # batch 512, 5 repeats
  .venv/bin/python experiments/bench/conv_layers.py --toy           # checks it runs
  .venv/bin/python experiments/bench/conv_layers.py --stages 4x64 4x512 --variants xla onednn

For each stage's shape (batch 512 = two views of 256, CIFAR stem) it times the
forward convolution, the gradient with respect to the input (dX) and to the
weights (dW), each as

  xla     lax.conv_general_dilated and its autodiff (what the step runs);
  shift   9 matmuls, one per kernel tap, over shifted views of the input;
  im2col  one matmul over the 9 taps concatenated along channels;
  winograd  Winograd's F(2×2, 3×3): each 4×4 input tile and each kernel
          transformed, 16 matmuls (one per tile position, 2.25× fewer
          multiply-adds than the convolution), the result transformed back;
          dX and dW are JAX's autodiff of that forward;
  onednn  oneDNN's convolution and its two backward passes, as
          ``config.cpu_conv = "onednn"`` runs them (left out, with a note, where
          its kernels cannot be built);

and, apart, the layout transpose XLA inserts before each weight-gradient
convolution (batch moved to the feature dimension) against a plain copy of the
same array. All variants of a pass run in turn (A B C A B C ...) in one
process; medians of ``--repeats``; "speed vs first" is the first variant's
time (xla; copy for the layout rows) over this one's. Every variant's result
is checked against ``xla``'s (max error relative to its largest entry).
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench.jax_side import EIGEN_CONV  # noqa: E402
from ssl_jax.kernels import onednn  # noqa: E402

# (height = width, channels in = out) of ResNet-18's stages on 32×32 inputs.
STAGES = ((32, 64), (16, 128), (8, 256), (4, 512))
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def _taps(x):
    """The 9 views of ``x`` (zero-padded by 1) that a 3×3 kernel's taps read."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]


def _bt(d):
    """Winograd F(2, 3)'s input transform Bᵀ·d along one axis (d: the 4 taps)."""
    d0, d1, d2, d3 = d
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _at(m):
    """Its output transform Aᵀ·m along one axis: 4 values to 2 outputs."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd(x, w):
    """3×3 convolution, stride 1, zero padding 1, as Winograd's F(2×2, 3×3).

    Needs even height and width. The 16 transformed arrays are each 1/4 of
    the input's size, so together they are 4× the input: memory traffic that
    the saved multiply-adds have to pay for.
    """
    b, h, wd, c = x.shape
    n, co = b * (h // 2) * (wd // 2), w.shape[-1]
    g = jnp.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], w.dtype)
    u = jnp.einsum("ai,ijcd,bj->abcd", g, w, g).reshape(16, c, co)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = _bt([xp[:, k : k + h : 2] for k in range(4)])
    v = [t for r in rows for t in _bt([r[:, :, k : k + wd : 2] for k in range(4)])]
    m = [(vi.reshape(n, c) @ u[i]).reshape(b, h // 2, wd // 2, co) for i, vi in enumerate(v)]
    cols = [_at([m[4 * i + j] for i in range(4)]) for j in range(4)]
    out = [_at([cols[j][r] for j in range(4)]) for r in range(2)]
    return jnp.stack([jnp.stack(o, 3) for o in out], 2).reshape(b, h, wd, co)


def _im2col(x):
    return jnp.concatenate(_taps(x), -1)  # [B, H, W, 9C]


VARIANTS = {
    "fwd": {
        "xla": lambda x, w, dy: conv(x, w),
        "shift": lambda x, w, dy: sum(
            t @ k for t, k in zip(_taps(x), w.reshape(9, *w.shape[2:]), strict=True)
        ),
        "im2col": lambda x, w, dy: _im2col(x) @ w.reshape(-1, w.shape[-1]),
        "winograd": lambda x, w, dy: winograd(x, w),
    },
    "dX": {
        "xla": lambda x, w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0],
        # conv(dY, W flipped in space with in/out swapped)
        "shift": lambda x, w, dy: sum(
            t @ k
            for t, k in zip(
                _taps(dy),
                jnp.flip(w, (0, 1)).swapaxes(2, 3).reshape(9, w.shape[3], -1),
                strict=True,
            )
        ),
        "winograd": lambda x, w, dy: jax.vjp(lambda x_: winograd(x_, w), x)[1](dy)[0],
    },
    "dW": {
        "xla": lambda x, w, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0],
        "shift": lambda x, w, dy: jnp.stack(
            [jnp.einsum("bhwc,bhwd->cd", t, dy) for t in _taps(x)]
        ).reshape(w.shape),
        "im2col": lambda x, w, dy: jnp.einsum("bhwk,bhwd->kd", _im2col(x), dy).reshape(w.shape),
        "winograd": lambda x, w, dy: jax.vjp(lambda w_: winograd(x, w_), w)[1](dy)[0],
    },
    "layout": {
        "copy": lambda x, w, dy: x * 2.0,
        "transpose": lambda x, w, dy: x.transpose(3, 1, 2, 0),
    },
}


def _onednn(x, w):
    return onednn.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))


ONEDNN = {
    "fwd": lambda x, w, dy: _onednn(x, w),
    "dX": lambda x, w, dy: jax.vjp(lambda x_: _onednn(x_, w), x)[1](dy)[0],
    "dW": lambda x, w, dy: jax.vjp(lambda w_: _onednn(x, w_), w)[1](dy)[0],
}


def _time_in_turn(fns, args, repeats):
    exes = [jax.jit(f).lower(*args).compile(compiler_options=EIGEN_CONV) for f in fns]
    outs = [np.asarray(jax.block_until_ready(e(*args))) for e in exes]  # warm-up
    times = [[] for _ in exes]
    for _ in range(repeats):
        for e, t in zip(exes, times, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(e(*args))
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], outs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--toy", action="store_true", help="batch 2, 1 repeat, channels / 16")
    ap.add_argument(
        "--stages",
        nargs="+",
        metavar="SIZExCHANNELS",
        help="layers to time instead of ResNet-18's, e.g. 4x64 4x512 (maps of 4x4)",
    )
    ap.add_argument(
        "--variants", nargs="+", metavar="NAME", help="only these variants (xla, onednn, ...)"
    )
    args = ap.parse_args(argv)
    batch, repeats, shrink = (2, 1, 16) if args.toy else (args.batch, args.repeats, 1)
    variants = {k: dict(v) for k, v in VARIANTS.items()}
    try:
        onednn.load()
        for pass_, fn in ONEDNN.items():
            variants[pass_]["onednn"] = fn
    except onednn.Unavailable as e:
        print(f"leaving out onednn: {e}", file=sys.stderr)
    if args.variants:  # the layout rows compare other variants: dropped with a choice
        variants = {
            p: {n: f for n, f in fns.items() if n in args.variants}
            for p, fns in variants.items()
            if p != "layout"
        }
    stages = STAGES
    if args.stages:
        stages = [tuple(int(v) for v in s.lower().split("x")) for s in args.stages]
    rows = []
    print("| layer | pass | variant | ms | GFLOP/s | speed vs first | max rel. error |")
    print("|---|---|---|---|---|---|---|")
    for size, ch in stages:
        ch //= shrink
        k = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(k[0], (batch, size, size, ch))
        w = jax.random.normal(k[1], (3, 3, ch, ch)) * (2.0 / (9 * ch)) ** 0.5
        dy = jax.random.normal(k[2], (batch, size, size, ch))
        flops = 2 * batch * size * size * 9 * ch * ch
        layer = f"{batch}×{size}×{size}×{ch}"
        for pass_, fns in variants.items():
            names = list(fns)
            med, outs = _time_in_turn([fns[n] for n in names], (x, w, dy), repeats)
            for name, m, out in zip(names, med, outs, strict=True):
                err = (
                    float(np.abs(out - outs[0]).max() / np.abs(outs[0]).max())
                    if pass_ != "layout"
                    else float("nan")
                )
                row = {"layer": layer, "pass": pass_, "variant": name, "ms": m * 1e3}
                row.update(ratio=med[0] / m, error=err)
                row["gflops"] = flops / m / 1e9 if pass_ != "layout" else float("nan")
                rows.append(row)
                gf = f"{row['gflops']:.0f}" if pass_ != "layout" else ""
                e = f"{err:.1e}" if pass_ != "layout" else ""
                print(
                    f"| {layer} | {pass_} | {name} | {row['ms']:.0f} | {gf} | "
                    f"{row['ratio']:.2f}× | {e} |",
                    flush=True,
                )
    print(f"\njax {jax.__version__}, {jax.devices()[0].platform}, batch {batch}, {repeats} repeats")
    return rows


if __name__ == "__main__":
    main()
