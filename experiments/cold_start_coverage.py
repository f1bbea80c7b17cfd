"""How many classes a 10-item cold start covers, over many selection keys.

  .venv/bin/python experiments/cold_start_coverage.py runs/ssl_mnist/simclr_s0 --keys 50

With 10 labels and 10 classes, a cold start that misses a class caps the
accuracy of everything trained on it (experiments/active_mnist.md, 10 labels).
This takes the frozen SimCLR features of the MNIST pool from a pretraining
workdir and, for keys 0..N-1, runs each cold-start selector with budget 10,
counting the distinct true classes among the picks. No training: seconds per key.

Rows: random; TypiClust as configured (k-means restarts 1, the earlier
behaviour, and ``--restarts`` R, keeping the lowest-inertia clustering);
ProbCover.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import simclr  # noqa: E402
from ssl_jax import acquisition, parallel  # noqa: E402
from ssl_jax.data.labels import LabelStore  # noqa: E402
from ssl_jax.stages import active, common  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "pretrained", help="workdir with a finished pretrain stage (configs/simclr.py:mnist)"
    )
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--probcover-keys", type=int, default=10, help="ProbCover is slower: fewer keys")
    a = p.parse_args(argv)
    config = simclr.get_config("mnist")
    config.init_from = os.path.abspath(a.pretrained)
    mesh = parallel.make_mesh()
    ds = common.dataset(config)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, active.STAGE))
        feats = active.ssl_features(config, tmp, mesh, ds)
    truth = ds.splits["train"].labels
    # The active stage's cold-start pool: nothing labelled, unit-length SSL features.
    pool = active.pool_state(None, LabelStore(len(truth)), feats, config, None, "typiclust")
    ac = config.active
    rows = {
        "random": ("random", {}),
        "typiclust, 1 k-means run": (
            "typiclust",
            dict(max_clusters=ac.max_clusters, knn=ac.knn, restarts=1),
        ),
        f"typiclust, best of {a.restarts} k-means runs": (
            "typiclust",
            dict(max_clusters=ac.max_clusters, knn=ac.knn, restarts=a.restarts),
        ),
        "probcover": ("probcover", dict(num_classes=ds.num_classes, purity=ac.probcover_purity)),
    }
    print(
        f"| cold start, {a.budget} picks | classes covered (mean) | all {ds.num_classes} covered | "
        f"min | s per selection |"
    )
    print("|---|---|---|---|---|")
    for name, (strategy, opts) in rows.items():
        covered, secs = [], []
        keys = a.probcover_keys if strategy == "probcover" else a.keys
        for k in range(keys):
            t0 = time.perf_counter()
            ids = acquisition.select(strategy, pool, a.budget, jax.random.key(k), mesh=mesh, **opts)
            secs.append(time.perf_counter() - t0)
            covered.append(len(np.unique(truth[ids])))
        covered = np.asarray(covered)
        full = np.mean(covered == ds.num_classes)
        print(
            f"| {name} | {covered.mean():.2f} | {100 * full:.0f}% ({int(full * keys)}/{keys}) | "
            f"{covered.min()} | {np.median(secs):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
