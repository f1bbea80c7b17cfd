"""Per-class test recall of a run's best self-trained model, and how often each class is predicted.

  .venv/bin/python experiments/per_class_recall.py runs/cold10_s1 [more workdirs]

Reads the model of ``selftrain/best`` (or, for an active-learning run, its last
round's ``active/round_NN/train/selftrain/best``) and the run's config.json;
shows which classes a run with few labels never predicts
(experiments/active_mnist.md, 10 labels).
"""

import glob
import json
import os
import sys

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssl_jax import optim, parallel, transfer  # noqa: E402
from ssl_jax import pp as pp_lib  # noqa: E402
from ssl_jax.models import classifier  # noqa: E402
from ssl_jax.stages import common  # noqa: E402


def best_dir(workdir: str) -> str:
    rounds = sorted(glob.glob(os.path.join(workdir, "active", "round_*", "train", "selftrain")))
    stage = rounds[-1] if rounds else os.path.join(workdir, "selftrain")
    path = os.path.join(stage, "best")
    if not os.path.isdir(path):
        raise SystemExit(f"{workdir}: no self-trained model ({path} does not exist)")
    return path


def per_class(workdir: str):
    """(test accuracy, recall per class, count of test predictions per class)."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    ds = common.dataset(config)
    test = ds.splits["test"]
    mesh = parallel.make_mesh(1)
    model = classifier.build(config, ds.num_classes)
    tx = optim.make(config.selftrain.optimizer, 1, 1)[0]
    like = transfer.init_state(model, tx, mesh, test.images.shape[1:], 0)
    best = transfer.Best(best_dir(workdir))
    params, model_state, _ = best.restore(like)
    best.close()
    predictor = transfer.Predictor(
        model, pp_lib.build(config.pp.eval, chunk_size=None), mesh, config.eval.batch_size
    )
    pred = np.asarray(predictor(params, model_state, test.images)).argmax(1)
    y = np.asarray(test.labels)
    recall = [float(np.mean(pred[y == c] == c)) for c in range(ds.num_classes)]
    return float(np.mean(pred == y)), recall, np.bincount(pred, minlength=ds.num_classes)


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    for workdir in argv:
        acc, recall, counts = per_class(workdir)
        print(f"{workdir}: test acc {100 * acc:.2f}%")
        print("  class      " + " ".join(f"{c:>6d}" for c in range(len(recall))))
        print("  recall     " + " ".join(f"{r:6.3f}" for r in recall))
        print("  predicted  " + " ".join(f"{n:6d}" for n in counts))


if __name__ == "__main__":
    main(sys.argv[1:])
