"""Time to score a pool and select a batch, per acquisition strategy.

  .venv/bin/python experiments/bench/acquisition.py                        # 100k and 1M pools
  .venv/bin/python experiments/bench/acquisition.py --pool 100000 --strategies coreset
  .venv/bin/python experiments/bench/acquisition.py --toy                  # checks it runs

A synthetic pool: N items with D-dim embeddings (Gaussian, around 10 cluster
centres, so k-means and coverage have structure), class probabilities over C
classes and T MC-dropout passes, 1% of the pool already labelled. Each
strategy selects ``--budget`` items; the first call (compilation) is reported
apart from the median of ``--repeats`` timed calls. Strategies whose cost
grows with N^2 (ProbCover's delta-graph) run only up to ``--max-quadratic``.
"""

import argparse
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import acquisition  # noqa: E402

STRATEGIES = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "bald",
    "coreset",
    "badge",
    "typiclust",
    "probcover",
)
QUADRATIC = {"probcover"}


def make_pool(n, d, c, t, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d)).astype(np.float32) * 3
    emb = centres[rng.integers(0, 10, n)] + rng.normal(size=(n, d)).astype(np.float32)
    logits = rng.normal(size=(n, c)).astype(np.float32) * 2
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    noise = rng.normal(size=(t, n, c)).astype(np.float32) * 0.5
    mc = np.exp(logits[None] + noise)
    mc /= mc.sum(-1, keepdims=True)
    labelled = np.zeros(n, bool)
    labelled[rng.choice(n, max(1, n // 100), replace=False)] = True
    return acquisition.Pool(labelled=labelled, probs=probs, mc_probs=mc, embeddings=emb)


def bench(strategy, pool, budget, repeats, num_classes):
    opts = {"num_classes": num_classes} if strategy == "probcover" else {}
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    acquisition.select(strategy, pool, budget, key, **opts)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        acquisition.select(strategy, pool, budget, jax.random.PRNGKey(i + 1), **opts)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), (max(times) - min(times)) / statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", nargs="+", type=int, default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-quadratic", type=int, default=100_000)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--toy", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    if a.toy:
        a.pool, a.dim, a.budget, a.repeats, a.passes = [400], 8, 10, 1, 3
    print(
        f"jax {jax.__version__}, {jax.default_backend()} x{len(jax.devices())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"D={a.dim}, C={a.classes}, T={a.passes}, budget {a.budget}, median of {a.repeats}\n"
    )
    print("| pool | strategy | first call (s) | select (s) | spread |")
    print("|---|---|---|---|---|")
    rows = []
    for n in a.pool:
        pool = make_pool(n, a.dim, a.classes, a.passes)
        for strategy in a.strategies:
            if strategy in QUADRATIC and n > a.max_quadratic:
                print(f"| {n:,} | {strategy} | — | not run: O(N²) graph | |")
                continue
            first, med, spread = bench(strategy, pool, a.budget, a.repeats, a.classes)
            rows.append({"pool": n, "strategy": strategy, "first_s": first, "select_s": med})
            print(
                f"| {n:,} | {strategy} | {first:.2f} | {med:.2f} | {100 * spread:.0f}% |",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
