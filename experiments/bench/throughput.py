"""Throughput of the SimCLR pretraining step and of the augmentation pipeline.

  ./launch.sh bench                              # default model and ResNet-18, batch 256
  ./launch.sh bench --models cnn --repeats 7     # one model, more repeats

For each model the jitted pretrain step (augmentation included, two views) is
compiled twice in this one process: with XLA's default CPU convolutions and
with the Eigen path that ``config.xla_fast_cpu_conv`` selects
(``xla_cpu_experimental_ynn_fusion_type=""``). The two executables are timed
alternately (A B A B ...) after a warm-up, and the table reports medians and
their ratio, so machine noise hits both sides alike.
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

from configs import simclr  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.stages.common import PretrainModel  # noqa: E402
from ssl_jax.stages.pretrain import make_step  # noqa: E402

MODELS = {  # name → (config variant, image shape, model overrides)
    "cnn": ("mnist", (28, 28, 1), {}),
    "resnet18": ("cifar10", (32, 32, 3), {}),
}
CONV_PATHS = {"default": None, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def timed(fn, steps: int) -> float:
    t = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t


def bench_model(name: str, batch: int, steps: int, repeats: int, toy: bool) -> list[dict]:
    variant, shape, _ = MODELS[name]
    config = simclr.get_config(variant)
    config.pretrain.batch_size = batch
    if toy and name == "resnet18":  # only checks that the script runs
        with config.unlocked():
            config.model.kw.width = 0.125
    mesh = parallel.make_mesh()
    model = PretrainModel(config, mesh, shape)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    x = parallel.put_global_batch({"image": images}, mesh)
    step = make_step(model)
    state = model.init_state(0)
    compiled = {k: step.lower(state, x).compile(compiler_options=v) for k, v in CONV_PATHS.items()}
    views = jax.jit(model.views_fn)
    key = jax.random.PRNGKey(0)

    holder = {"state": state}

    def run_step(exe):
        def go(n):
            s = holder["state"]
            for _ in range(n):
                s, m = exe(s, x)
            jax.block_until_ready(m["loss"])
            holder["state"] = s

        return go

    def run_pp(n):
        for i in range(n):
            out = views(jax.random.fold_in(key, i), x["image"])
        jax.block_until_ready(out)

    jobs = {f"step/{k}": run_step(v) for k, v in compiled.items()}
    jobs["augment"] = run_pp
    for fn in jobs.values():  # warm-up
        fn(1)
    times = {k: [] for k in jobs}
    for _ in range(repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn, steps) / steps)
    rows = []
    for k, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "model": name,
                "job": k,
                "ms": 1e3 * med,
                "images_s": batch / med,
                "spread": (max(ts) - min(ts)) / med,
            }
        )
    base = next(r for r in rows if r["job"] == "step/default")["ms"]
    for r in rows:
        r["ratio"] = base / r["ms"] if r["job"].startswith("step/") else float("nan")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--toy", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    print(
        f"jax {jax.__version__}, {jax.default_backend()} x{len(jax.devices())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    rows = [r for m in a.models for r in bench_model(m, a.batch, a.steps, a.repeats, a.toy)]
    print(
        f"\nbatch {a.batch} (two views per image), median of {a.repeats} repeats "
        f"x {a.steps} steps\n"
    )
    print("| model | job | ms / batch | source images/s | spread | speed vs default conv |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if np.isnan(r["ratio"]) else f"{r['ratio']:.2f}x"
        print(
            f"| {r['model']} | {r['job']} | {r['ms']:.1f} | {r['images_s']:.0f} | "
            f"{100 * r['spread']:.0f}% | {ratio} |"
        )
    return rows


if __name__ == "__main__":
    main()
