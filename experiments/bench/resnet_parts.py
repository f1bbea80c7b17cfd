"""Where ResNet-18's training time goes on the CPU once its convolutions run
through oneDNN (config.cpu_conv): the encoder alone, forward and backward in
train mode, with parts taken out; then BatchNorm's reductions on their own.

  .venv/bin/python experiments/bench/resnet_parts.py              # batch 512, 5 repeats
  .venv/bin/python experiments/bench/resnet_parts.py --toy        # checks it runs

Part 1, ResNet-18 (CIFAR stem) on 32×32×3, loss = sum of features², each
variant compiled as ssl_jax compiles the step (Eigen convolutions) and timed in
turn (A B C D ...), medians of ``--repeats``:

  xla convs / onednn convs        the model as it is, each convolution path
                                  (onednn: XLA's for maps of at most
                                  onednn.XLA_MAX_PIXELS pixels, the 4×4 stage);
  onednn convs at every map size  the 4×4 stage through oneDNN too;
  flax BatchNorm                  with flax.linen.BatchNorm instead of ssl_jax's
                                  (models/batchnorm.py: sums as matrix products);
  no BatchNorm (, no ReLU)        BatchNorm (and ReLU) replaced by the identity.

Part 2, one array the size of the first stage's activations
([batch, 32, 32, 64]): the per-channel sum as XLA reduces it, as a matmul with a
vector of ones, flax's and ssl_jax's BatchNorm forward and forward+backward,
and a plain elementwise pass over the array for scale.
"""

import argparse
import os
import statistics
import sys
import time
import types
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.bench.jax_side import EIGEN_CONV  # noqa: E402
from ssl_jax.kernels import onednn  # noqa: E402
from ssl_jax.models import get_model, resnet  # noqa: E402
from ssl_jax.models.batchnorm import BatchNorm  # noqa: E402


class _Identity(nn.Module):
    """Takes BatchNorm's arguments, returns its input."""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        return x


def _compile(f, *args):
    exe = jax.jit(f).lower(*args).compile(compiler_options=EIGEN_CONV)
    jax.block_until_ready(exe(*args))  # warm-up
    return lambda: jax.block_until_ready(exe(*args))


def _resnet(x, width, conv, batchnorm=BatchNorm, relu=True, xla_max_pixels=None):
    """The compiled forward+backward of ResNet-18 with the parts asked for;
    ``xla_max_pixels``: onednn.XLA_MAX_PIXELS while tracing (None: as it is)."""
    ns = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")})
    if not relu:
        ns.relu = lambda v: v
    onednn.configure(conv)
    resnet.nn = ns  # the module reads flax.linen through this name
    resnet.BatchNorm = batchnorm
    limit = onednn.XLA_MAX_PIXELS
    onednn.XLA_MAX_PIXELS = limit if xla_max_pixels is None else xla_max_pixels
    try:
        net = get_model("resnet:18", cifar_stem=True, width=width)
        v = net.init(jax.random.PRNGKey(0), x[:2], train=True)

        def loss(p, x):
            y, _ = net.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(y**2)

        return _compile(jax.value_and_grad(loss), v["params"], x)
    finally:
        resnet.nn = nn
        resnet.BatchNorm = BatchNorm
        onednn.XLA_MAX_PIXELS = limit
        onednn.configure("xla")


def _in_turn(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def _table(title, times, base):
    print(f"\n{title}\n\n| variant | ms | spread | speed vs {base} |\n|---|---|---|---|")
    ref = statistics.median(times[base])
    rows = []
    for k, ts in times.items():
        m = statistics.median(ts)
        rows.append({"variant": k, "ms": 1e3 * m, "ratio": ref / m})
        print(f"| {k} | {1e3 * m:.1f} | {100 * (max(ts) - min(ts)) / m:.0f}% | {ref / m:.2f}× |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--toy", action="store_true", help="batch 4, width 1/8, 1 repeat")
    a = ap.parse_args(argv)
    batch, width, repeats = (4, 0.125, 1) if a.toy else (a.batch, 1.0, a.repeats)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 32, 32, 3))
    convs = ["xla"]
    try:
        onednn.load()
        convs.append("onednn")
    except onednn.Unavailable as e:
        print(f"leaving out the onednn rows: {e}", file=sys.stderr)
    last = convs[-1]
    part1 = {f"{c} convs": _resnet(x, width, c) for c in convs}
    if last == "onednn":  # by default maps of <= XLA_MAX_PIXELS pixels stay with XLA
        part1["onednn convs at every map size"] = _resnet(x, width, last, xla_max_pixels=0)
    part1[f"{last} convs, flax BatchNorm"] = _resnet(x, width, last, nn.BatchNorm)
    part1[f"{last} convs, no BatchNorm"] = _resnet(x, width, last, _Identity)
    part1[f"{last} convs, no BatchNorm, no ReLU"] = _resnet(x, width, last, _Identity, False)
    rows = _table(
        f"ResNet-18 forward+backward, batch {batch}, train mode, medians of {repeats} "
        f"({jax.device_count()} device(s); oneDNN runs only on one)",
        _in_turn(part1, repeats),
        f"{last} convs",
    )
    c = max(1, int(64 * width))
    act = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, c))
    dy = jax.random.normal(jax.random.PRNGKey(2), act.shape)

    def bn_parts(module, name):
        bn = module(use_running_average=False, momentum=0.9, epsilon=1e-5)
        v = bn.init(jax.random.PRNGKey(0), act[:2])

        def fwd(p, x):
            return bn.apply({**v, "params": p}, x, mutable=["batch_stats"])[0]

        return {
            f"{name} BatchNorm forward": _compile(fwd, v["params"], act),
            f"{name} BatchNorm forward+backward": _compile(
                lambda p, x, d: jax.vjp(fwd, p, x)[1](d), v["params"], act, dy
            ),
        }

    part2 = {
        "elementwise pass (x * 2)": _compile(lambda x: x * 2, act),
        "per-channel sum, XLA reduce": _compile(lambda x: jnp.sum(x, (0, 1, 2)), act),
        "per-channel sum, ones @ x": _compile(
            lambda x: jnp.ones((1, x.size // c), x.dtype) @ x.reshape(-1, c), act
        ),
        **bn_parts(nn.BatchNorm, "flax"),
        **bn_parts(BatchNorm, "ssl_jax"),
    }
    rows += _table(
        f"One [{batch}, 32, 32, {c}] array, medians of {repeats}",
        _in_turn(part2, repeats),
        "elementwise pass (x * 2)",
    )
    return rows


if __name__ == "__main__":
    main()
