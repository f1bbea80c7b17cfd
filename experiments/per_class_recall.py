"""Per-class test recall of a run's best self-trained model, and how often each class is predicted.

  .venv/bin/python experiments/per_class_recall.py runs/cold10_s1 [more workdirs]
  .venv/bin/python experiments/per_class_recall.py runs/few_labels/transfer_s1 --show 7 --out 7s.png

Reads the model of ``selftrain/best`` (or, for an active-learning run, its last
round's ``active/round_NN/train/selftrain/best``) and the run's config.json;
shows which classes a run with few labels never predicts
(experiments/active_mnist.md, 10 labels). ``--show C`` also says where the test
images of class C went and draws, for the first workdir, the run's labelled
images of class C above test images of C that the model got wrong.
"""

import argparse
import glob
import json
import os
import sys

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ssl_jax import parallel, transfer  # noqa: E402
from ssl_jax.stages import common  # noqa: E402


def best_dir(workdir: str) -> str:
    rounds = sorted(glob.glob(os.path.join(workdir, "active", "round_*", "train", "selftrain")))
    stage = rounds[-1] if rounds else os.path.join(workdir, "selftrain")
    path = os.path.join(stage, "best")
    if not os.path.isdir(path):
        raise SystemExit(f"{workdir}: no self-trained model ({path} does not exist)")
    return path


def per_class(workdir: str):
    """(test accuracy, recall per class, count of test predictions per class,
    test predictions, the dataset)."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    ds = common.dataset(config)
    test = ds.splits["test"]
    mesh = parallel.make_mesh(1)
    model, params, model_state, _ = transfer.load_best(config, best_dir(workdir), mesh, ds)
    predictor = transfer.predictor(config, model, mesh, views=0)
    pred = np.asarray(predictor(params, model_state, test.images)).argmax(1)
    y = np.asarray(test.labels)
    recall = [float(np.mean(pred[y == c] == c)) for c in range(ds.num_classes)]
    counts = np.bincount(pred, minlength=ds.num_classes)
    return float(np.mean(pred == y)), recall, counts, pred, ds


def draw(path, workdir, ds, pred, c, cols=10, wrong_rows=3):
    """The run's labelled images of class c, then test images of c predicted otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(workdir, "labels.json")) as f:
        labelled = [d["index"] for d in json.load(f)["items"] if d["label"] == c]
    test = ds.splits["test"]
    wrong = np.flatnonzero((np.asarray(test.labels) == c) & (pred != c))[: cols * wrong_rows]
    rows = -(-len(labelled) // cols) + -(-len(wrong) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, 1.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    cells = [(ds.splits["train"].images[i], "labelled") for i in labelled]
    cells += [None] * (-len(cells) % cols)  # wrong ones start on a new row
    cells += [(test.images[i], f"as {pred[i]}") for i in wrong]
    for ax, cell in zip(axes.ravel(), cells, strict=False):
        if cell is not None:
            ax.imshow(cell[0][..., 0], cmap="gray")
            ax.set_title(cell[1], fontsize=7)
    fig.suptitle(f"{workdir}: class {c}, labelled (top) and test errors", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--show", type=int, default=-1, metavar="CLASS")
    p.add_argument("--out", default="", help="with --show: PNG of the first workdir's images")
    a = p.parse_args(argv)
    for k, workdir in enumerate(a.workdirs):
        acc, recall, counts, pred, ds = per_class(workdir)
        print(f"{workdir}: test acc {100 * acc:.2f}%")
        print("  class      " + " ".join(f"{c:>6d}" for c in range(len(recall))))
        print("  recall     " + " ".join(f"{r:6.3f}" for r in recall))
        print("  predicted  " + " ".join(f"{n:6d}" for n in counts))
        if a.show >= 0:
            of_class = np.asarray(ds.splits["test"].labels) == a.show
            went = np.bincount(pred[of_class], minlength=len(recall))
            print(f"  test {a.show}s predicted as " + " ".join(f"{n:6d}" for n in went))
            if a.out and k == 0:
                draw(a.out, workdir, ds, pred, a.show)


if __name__ == "__main__":
    main()
