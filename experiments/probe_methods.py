"""The linear probe's two optimizers on one pretraining run's frozen features.

  .venv/bin/python experiments/probe_methods.py --workdir runs/ssl_mnist/supervised_s0 \
      --config configs/supervised.py:mnist --seed 0

Embeds the run's labelled items, val, test and all 55,000 training images
once, then fits the probe of ``config.eval.linear`` (its L2 grid) with 500
full-batch Adam steps and with L-BFGS to convergence, with the 100 labels and
with all of them; prints val/test accuracy, the chosen L2 and the median fit
time of 3 (after a compile run).
"""

import argparse
import importlib
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssl_jax import parallel  # noqa: E402
from ssl_jax.evaluators.embed import Embedder  # noqa: E402
from ssl_jax.stages import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a run with a pretraining checkpoint")
    ap.add_argument("--config", required=True, help="configs/<name>.py:<variant>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    path, _, variant = a.config.partition(":")
    module = os.path.splitext(path)[0].replace("/", ".")
    config = importlib.import_module(module).get_config(variant or None)
    config.seed = config.labels.seed = a.seed
    mesh = parallel.make_mesh()
    ds = common.dataset(config, a.workdir)
    store = common.label_store(config, a.workdir, ds)
    pool = ds.splits["train"]
    model = common.PretrainModel(config, mesh, pool.images.shape[1:], ds.num_classes)
    params, model_state = model.encoder_variables(a.workdir, a.seed)
    embed = Embedder(model.objective, model.eval_fn, mesh, batch_size=config.eval.batch_size)
    feats = common.labelled_features(embed, params, model_state, ds, store)
    known = pool.labels >= 0
    every = (embed(params, model_state, pool.images[known]), pool.labels[known])
    print("| labels | method | val acc | test acc | L2 | fit (s) |\n|---|---|---|---|---|---|")
    for name, train in (("100", feats["train"]), (f"all {len(every[1]):,}", every)):
        for method in ("adam", "lbfgs"):
            ev = common.linear_evaluator(config, steps=500, method=method)
            ev.run({**feats, "train": train})  # compiles
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                out = ev.run({**feats, "train": train})
                times.append(time.perf_counter() - t0)
            print(
                f"| {name} | {method} | {out['linear_val_acc']:.2%} | {out['linear_test_acc']:.2%}"
                f" | {out['linear_l2']:g} | {statistics.median(times):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
