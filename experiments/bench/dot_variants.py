"""XLA's CPU dots at the MAE step's shapes, alone: a dense layer's weight
gradient in its two orientations, and independent dots side by side against
the same dots one at a time.

  .venv/bin/python experiments/bench/dot_variants.py                  # both parts
  .venv/bin/python experiments/bench/dot_variants.py --part wgrad --repeats 31
  .venv/bin/python experiments/bench/dot_variants.py --toy            # CI: the script runs

``wgrad``: for rows x [N, in] and the output's gradient g [N, out], the
kernel's gradient dW = x^T g [in, out] as autodiff computes it (the VJP of
``x @ w``, jitted: a dot contracting the rows, producing [in, out]) against
``(g^T x)^T``: the dot producing [out, in], kept from being folded back by an
``optimization_barrier``, then transposed. The shapes default to mae_step's
dense layers: the encoder's on 256 x 16 visible tokens (attention
projections, MLP in and out, the decoder embedding), the decoder's on
256 x 64 tokens (attention projections, MLP in and out, the pixel
prediction).

``concurrency``: k independent dots [N, in] . [in, out] in one jit, which
XLA's CPU runtime may run at the same time, against the same k dots chained
through an ``optimization_barrier`` so that each waits for the one before.

Every form is compiled as ssl_jax compiles its steps (the Eigen switch,
``EIGEN_CONV``). The forms of one row are timed in turn (A B A B ...) after a
warm-up, ``--calls`` calls per timed repeat, medians of ``--repeats``;
"speed" is the first form's median over the second's (above 1: the second
is faster).
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

# (rows, in, out, which layer)
WGRAD_SHAPES = [
    (4096, 192, 192, "encoder attention projection"),
    (4096, 192, 768, "encoder MLP fc1"),
    (4096, 768, 192, "encoder MLP fc2"),
    (4096, 192, 128, "decoder embedding"),
    (16384, 128, 128, "decoder attention projection"),
    (16384, 128, 512, "decoder MLP fc1"),
    (16384, 512, 128, "decoder MLP fc2"),
    (16384, 128, 48, "decoder pixel prediction"),
]
# (dots, rows, in, out)
CONCURRENCY_SHAPES = [
    (3, 16384, 128, 128),
    (3, 4096, 192, 192),
    (2, 16384, 128, 512),
    (2, 4096, 192, 768),
]
TOY_WGRAD = [(64, 16, 8, "narrowing"), (64, 8, 16, "widening")]
TOY_CONCURRENCY = [(2, 64, 16, 8)]


def wgrad_autodiff(x, g):
    """dW = x^T g as the VJP of ``x @ w`` (what jax.grad runs)."""
    w = jnp.zeros((x.shape[1], g.shape[1]), x.dtype)
    return jax.vjp(lambda w: x @ w, w)[1](g)[0]


def wgrad_reoriented(x, g):
    """dW = (g^T x)^T: the dot produces [out, in]; the barrier keeps XLA from
    folding the transpose back into it."""
    dt = jax.lax.dot_general(g, x, (((0,), (0,)), ((), ())))
    return jax.lax.optimization_barrier(dt).T


def dots_together(xs, ws):
    return [x @ w for x, w in zip(xs, ws, strict=True)]


def dots_in_turn(xs, ws):
    """The same dots, each input held back until the dot before is done."""
    outs = []
    for x, w in zip(xs, ws, strict=True):
        if outs:
            x, _ = jax.lax.optimization_barrier((x, outs[-1]))
        outs.append(x @ w)
    return outs


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=EIGEN_CONV)


def time_in_turn(calls, repeats, per_call):
    """Medians (s) of each of ``calls`` (callables), timed in turn, ``per_call``
    calls per repeat, after one warm-up each."""
    for c in calls:
        jax.block_until_ready(c())
    times = [[] for _ in calls]
    for _ in range(repeats):
        for c, ts in zip(calls, times, strict=True):
            t = time.perf_counter()
            for _ in range(per_call):
                out = c()
            jax.block_until_ready(out)
            ts.append((time.perf_counter() - t) / per_call)
    return [statistics.median(ts) for ts in times], times


def _spread(ts):
    return (max(ts) - min(ts)) / statistics.median(ts)


def compare_forms(fns, args, repeats, per_call):
    """Compiles each of ``fns`` on ``args``, runs each once, then times them in
    turn. Returns their outputs (numpy), medians (s) and spreads (formatted)."""
    forms = [compiled(f, *args) for f in fns]
    outs = [jax.tree.map(np.asarray, f(*args)) for f in forms]
    medians, times = time_in_turn([lambda f=f: f(*args) for f in forms], repeats, per_call)
    return outs, medians, " / ".join(f"{100 * _spread(ts):.0f}%" for ts in times)


def wgrad(shapes, repeats, per_call):
    rng = np.random.default_rng(0)
    print(
        "\n| layer | x [N, in] -> dW [in, out] | autodiff ms | GFLOP/s | (g^T x)^T ms "
        "| GFLOP/s | speed | spreads | max abs diff |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for n, d_in, d_out, layer in shapes:
        x = jnp.asarray(rng.normal(size=(n, d_in)).astype(np.float32))
        g = jnp.asarray(rng.normal(size=(n, d_out)).astype(np.float32))
        (a, b), (ta, tb), spreads = compare_forms(
            (wgrad_autodiff, wgrad_reoriented), (x, g), repeats, per_call
        )
        diff = float(np.max(np.abs(a - b)))
        flops = 2.0 * n * d_in * d_out
        row = {
            "layer": layer,
            "shape": (n, d_in, d_out),
            "autodiff_ms": 1e3 * ta,
            "reoriented_ms": 1e3 * tb,
            "speed": ta / tb,
            "diff": diff,
        }
        rows.append(row)
        print(
            f"| {layer} | [{n}, {d_in}] -> [{d_in}, {d_out}] | {1e3 * ta:.2f} | "
            f"{flops / ta / 1e9:.0f} | {1e3 * tb:.2f} | {flops / tb / 1e9:.0f} | "
            f"{ta / tb:.2f}x | {spreads} | {diff:.1e} |"
        )
    return rows


def concurrency(shapes, repeats, per_call):
    rng = np.random.default_rng(1)
    print(
        "\n| dots | together ms | in turn ms | speed of in turn | spreads |\n|---|---|---|---|---|"
    )
    rows = []
    for k, n, d_in, d_out in shapes:
        xs = [jnp.asarray(rng.normal(size=(n, d_in)).astype(np.float32)) for _ in range(k)]
        ws = [jnp.asarray(rng.normal(size=(d_in, d_out)).astype(np.float32)) for _ in range(k)]
        (a, b), (ta, tb), spreads = compare_forms(
            (dots_together, dots_in_turn), (xs, ws), repeats, per_call
        )
        assert np.array_equal(np.stack(a), np.stack(b)), "the chained dots changed the result"
        rows.append(
            {
                "dots": (k, n, d_in, d_out),
                "together_ms": 1e3 * ta,
                "in_turn_ms": 1e3 * tb,
                "speed": ta / tb,
            }
        )
        print(
            f"| {k} x [{n}, {d_in}] . [{d_in}, {d_out}] | {1e3 * ta:.2f} | {1e3 * tb:.2f} | "
            f"{ta / tb:.2f}x | {spreads} |"
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("wgrad", "concurrency", "both"), default="both")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--calls", type=int, default=5, help="calls per timed repeat")
    p.add_argument("--toy", action="store_true", help="tiny shapes, 1 repeat: the script runs")
    a = p.parse_args(argv)
    repeats, calls = (1, 1) if a.toy else (a.repeats, a.calls)
    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}; medians of {repeats} "
        f"repeats of {calls} calls, forms in turn"
    )
    out = {}
    if a.part in ("wgrad", "both"):
        out["wgrad"] = wgrad(TOY_WGRAD if a.toy else WGRAD_SHAPES, repeats, calls)
    if a.part in ("concurrency", "both"):
        shapes = TOY_CONCURRENCY if a.toy else CONCURRENCY_SHAPES
        out["concurrency"] = concurrency(shapes, repeats, calls)
    return out


if __name__ == "__main__":
    main()
