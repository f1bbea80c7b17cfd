"""Val and test accuracy of runs' kept self-trained models, with and without test-time views.

  .venv/bin/python experiments/tta_eval.py runs/cold100_s0 runs/cold100_s1 --views 0 2 4 8

For each workdir, the model of ``selftrain/best`` (or an active-learning run's
last round, as ``experiments/per_class_recall.py`` finds it) is scored on val
and test with its eval view alone (0) and averaged with N views of the run's
weak recipe (``eval.tta_views=N``, ssl_jax/transfer.py's Predictor). The model
is the same in every column: the columns differ in how it is evaluated only.
Prints a markdown table, one row per workdir, and the mean gain per column.
"""

import argparse
import json
import os
import sys

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.per_class_recall import best_dir  # noqa: E402
from ssl_jax import parallel, transfer  # noqa: E402
from ssl_jax.stages import common  # noqa: E402


def accuracies(workdir: str, views: list[int]) -> dict:
    """{(split, n): accuracy} of the run's kept model, for n test-time views."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    ds = common.dataset(config)
    mesh = parallel.make_mesh(1)
    model, params, model_state, _ = transfer.load_best(config, best_dir(workdir), mesh, ds)
    out = {}
    for n in views:
        predictor = transfer.predictor(config, model, mesh, views=n)
        for split in ("val", "test"):
            out[split, n] = predictor.accuracy(params, model_state, ds.splits[split])
    return out


def table(rows: dict, views: list[int]) -> str:
    head = [f"{s} acc, {n} views" for s in ("val", "test") for n in views]
    lines = ["| workdir | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for workdir, acc in rows.items():
        cells = [f"{100 * acc[s, n]:.2f}" for s in ("val", "test") for n in views]
        lines.append(f"| `{workdir}` | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        cells = []
        for s in ("val", "test"):
            for n in views:
                gain = [100 * (acc[s, n] - acc[s, views[0]]) for acc in rows.values()]
                cells.append(f"{np.mean(gain):+.2f}")
        lines.append(f"| mean change from {views[0]} views | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--views", type=int, nargs="+", default=[0, 2, 4, 8])
    a = p.parse_args()
    if any(n < 0 for n in a.views):
        raise SystemExit(f"--views must be >= 0, got {a.views}")
    rows = {}
    for workdir in a.workdirs:
        rows[workdir] = accuracies(workdir, a.views)
        print(workdir, {f"{s}/{n}": round(100 * v, 2) for (s, n), v in rows[workdir].items()})
    print(table(rows, a.views))


if __name__ == "__main__":
    main()
