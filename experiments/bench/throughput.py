"""Throughput of the SimCLR pretraining step and of the augmentation pipeline.

  ./launch.sh bench                              # default model and ResNet-18, batch 256
  ./launch.sh bench --models cnn --repeats 7     # one model, more repeats
  ./launch.sh bench --models --objectives simclr dino mae   # objectives' mnist steps

For each model the jitted pretrain step (augmentation included, two views) is
compiled twice in this one process: with XLA's default CPU convolutions and
with the Eigen path that ``config.xla_fast_cpu_conv`` selects
(``xla_cpu_experimental_ynn_fusion_type=""``), and a third time with the
convolutions through oneDNN (``config.cpu_conv``; on one device only, so with
several the third is XLA's too). The executables are timed
alternately (A B A B ...) after a warm-up, and the table reports medians and
their ratio, so machine noise hits both sides alike. ``--objectives`` times the
pretraining step of each objective's ``mnist`` config the same way, in turn.
"""

import argparse
import ast
import functools
import importlib
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import simclr  # noqa: E402
from experiments.bench import data, jax_side  # noqa: E402
from experiments.ssl_mnist import OBJECTIVES  # noqa: E402
from ssl_jax import parallel  # noqa: E402
from ssl_jax.kernels import attention, gelu, layernorm, onednn  # noqa: E402
from ssl_jax.stages.common import PretrainModel  # noqa: E402

MODELS = {  # name → (config variant, image shape, model overrides)
    "cnn": ("mnist", (28, 28, 1), {}),
    "resnet18": ("cifar10", (32, 32, 3), {}),
}
CONV_PATHS = {"default": None, "eigen": jax_side.EIGEN_CONV}


def timed(fn, steps: int) -> float:
    t = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t


def alternate(jobs: dict, steps: int, repeats: int) -> dict:
    """{name: [seconds per step, one per repeat]}, the jobs timed in turn."""
    times = {k: [] for k in jobs}
    for _ in range(repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn, steps) / steps)
    return times


def summary(model: str, job: str, ts: list, batch: int) -> dict:
    med = statistics.median(ts)
    return {
        "model": model,
        "job": job,
        "ms": 1e3 * med,
        "images_s": batch / med,
        "spread": (max(ts) - min(ts)) / med,
    }


def bench_model(name: str, batch: int, steps: int, repeats: int, toy: bool) -> list[dict]:
    variant, shape, _ = MODELS[name]
    config = simclr.get_config(variant)
    config.pretrain.batch_size = batch
    if toy and name == "resnet18":  # only checks that the script runs
        with config.unlocked():
            config.model.kw.width = 0.125
    jobs = {f"step/{k}": jax_side.pretrain_step(config, shape, v)[0] for k, v in CONV_PATHS.items()}
    # Eigen's compile options, and the convolutions through oneDNN (config.cpu_conv)
    build = functools.partial(jax_side.pretrain_step, config, shape, jax_side.EIGEN_CONV)
    if (own := jax_side.with_kernels("step/onednn", [(onednn, "onednn")], build)) is not None:
        jobs["step/onednn"] = own[0]
    key = jax.random.PRNGKey(0)
    images = jnp.asarray(data.images(batch, shape[0], shape[2]))
    # The config's pipeline (pp.chunk_size=-1, auto) and its two explicit settings.
    for job, chunk in (("augment", -1), ("augment/chunks of 64", 64), ("augment/one at a time", 1)):
        with config.unlocked():
            config.pp.chunk_size = chunk
        views = jax.jit(PretrainModel(config, parallel.make_mesh(), shape).views_fn)

        def run_pp(n, views=views):
            for i in range(n):
                out = views(jax.random.fold_in(key, i), images)
            jax.block_until_ready(out)

        run_pp(1)
        jobs[job] = run_pp
    rows = [summary(name, k, ts, batch) for k, ts in alternate(jobs, steps, repeats).items()]
    base = next(r for r in rows if r["job"] == "step/default")["ms"]
    for r in rows:
        r["ratio"] = base / r["ms"] if r["job"].startswith("step/") else float("nan")
    return rows


# ssl_jax's CPU kernels as the config's cpu_* keys = "auto" select them on one CPU
# device: the oneDNN convolutions, the fused attention core, GELU and LayerNorm.
CPU_KERNELS = ((onednn, "onednn"), (attention, "fused"), (gelu, "fused"), (layernorm, "fused"))


def bench_objectives(names, batch: int, steps: int, repeats: int, toy: bool) -> list[dict]:
    """The pretraining step of each objective's ``mnist`` config (Eigen conv
    path, as config.xla_fast_cpu_conv runs it) with XLA's kernels ("step/eigen")
    and with ssl_jax's CPU kernels ("step/cpu kernels"), all timed in turn."""
    jobs = {}
    for spec in names:
        name, _, settings = spec.partition("@")
        config = importlib.import_module(f"configs.{name}").get_config("mnist")
        with config.unlocked():
            for setting in filter(None, settings.split(",")):
                path, _, value = setting.partition("=")
                *parents, leaf = path.split(".")
                node = functools.reduce(getattr, parents, config)
                node[leaf] = ast.literal_eval(value)
            pc = config.pretrain  # the labelled share of a batch stays the config's
            pc.labelled_per_batch = pc.labelled_per_batch * batch // pc.batch_size
            pc.batch_size = batch
            if toy and config.model.name.startswith("vit"):
                config.model.kw.depth = 1
        build = functools.partial(jax_side.pretrain_step, config, (28, 28, 1), jax_side.EIGEN_CONV)
        jobs[(spec, "step/eigen")] = build()[0]
        if (own := jax_side.with_kernels("step/cpu kernels", CPU_KERNELS, build)) is not None:
            jobs[(spec, "step/cpu kernels")] = own[0]
    rows = [summary(*k, ts, batch) for k, ts in alternate(jobs, steps, repeats).items()]
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["job"] == "step/eigen")
        r["ratio"] = base["ms"] / r["ms"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        "--objectives",
        nargs="*",
        default=[],
        metavar="NAME[@KEY=VALUE,...]",
        help="also time these objectives' mnist pretraining steps; after @, config "
        "settings for that job, e.g. gan@objective.kw.up_kernel=2",
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--toy", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    for spec in a.objectives:
        if spec.partition("@")[0] not in OBJECTIVES:
            p.error(f"--objectives {spec!r}: unknown objective; known: {', '.join(OBJECTIVES)}")
    print(
        f"jax {jax.__version__}, {jax.default_backend()} x{len(jax.devices())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    rows = [r for m in a.models for r in bench_model(m, a.batch, a.steps, a.repeats, a.toy)]
    if a.objectives:
        rows += bench_objectives(a.objectives, a.batch, a.steps, a.repeats, a.toy)
    print(
        f"\nbatch {a.batch} (two views per image), median of {a.repeats} repeats "
        f"x {a.steps} steps\n"
    )
    print("| model | job | ms / batch | source images/s | spread | speed vs its first step row |")
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
