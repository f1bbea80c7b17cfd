"""Pretraining objectives compared on MNIST with 100 labels (experiments/ssl_mnist.md).

  .venv/bin/python experiments/ssl_mnist.py                      # every objective, seeds 0 1
  .venv/bin/python experiments/ssl_mnist.py --objectives dino --seeds 0
  .venv/bin/python experiments/ssl_mnist.py --table-only         # rebuild the table from runs
  .venv/bin/python experiments/ssl_mnist.py --objectives dino --config.pretrain.batch_size=128

Each (objective, seed) is ``python -m ssl_jax --config configs/<objective>.py:mnist``
with ``--config.seed=S --config.labels.seed=S`` (network, augmentation and which
100 images carry labels all change with the seed; the val carve-out stays
fixed), in ``runs/ssl_mnist/<objective>_s<S>``; a finished or recorded run is
not repeated.
Its results (probe accuracies, wall times, commit) are also kept as a small
record in ``experiments/ssl_mnist_runs/<objective>_s<S>.json``, which is
committed, so the table can be rebuilt without the run directories.
Every config's pretraining budget is the same: ``pretrain.steps`` × batch 256
source images (set here with ``--steps``). The table (mean ± std over seeds)
is printed and written to ``--out``.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = (
    "simclr",
    "dino",
    "mae",
    "supcon",
    "semisup",
    "supervised",
    "autoencoder",
    "gan",
    "rbm",
    "rotation",
    "patch_position",
)
METRICS = (
    ("labelled/knn_test_acc", "kNN, 100 labels"),
    ("labelled/linear_test_acc", "linear, 100 labels"),
    ("all/knn_test_acc", "kNN, all labels"),
    ("all/linear_test_acc", "linear, all labels"),
)


def workdir(root, objective, seed):
    return os.path.join(root, f"{objective}_s{seed}")


def run_one(root, records, objective, seed, steps, extra):
    wd = workdir(root, objective, seed)
    if os.path.exists(os.path.join(wd, "report", "done.json")):
        return
    if os.path.exists(os.path.join(records, f"{objective}_s{seed}.json")):
        print(f"{objective} seed {seed}: recorded in {records}, not run again", flush=True)
        return
    cmd = [
        sys.executable,
        "-m",
        "ssl_jax",
        "--config",
        f"configs/{objective}.py:mnist",
        "--workdir",
        # Relative to the repository (the command's cwd) where it lies inside
        # it, so the record's command runs from any clone.
        os.path.relpath(wd, REPO) if not os.path.relpath(wd, REPO).startswith("..") else wd,
        f"--config.seed={seed}",
        f"--config.labels.seed={seed}",
        f"--config.pretrain.steps={steps}",
        "--config.stages=('pretrain', 'probe', 'report')",
        # The table's protocol: the rows measured before L-BFGS became the
        # default probe used 500 Adam steps, so every row does.
        "--config.eval.linear.method=adam",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    commit = git_commit()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    with open(os.path.join(wd, "wall_s.json"), "w") as f:
        json.dump({"wall_s": time.perf_counter() - t0, "command": cmd[1:], "commit": commit}, f)


def git_commit() -> str:
    """Short hash of HEAD, with "+" when tracked files have uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def load(root, records, objective, seed):
    """The record of one finished run: from ``records`` if kept there, else
    from its run directory (and then kept in ``records``); None if not run."""
    path = os.path.join(records, f"{objective}_s{seed}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    wd = workdir(root, objective, seed)
    try:
        with open(os.path.join(wd, "probe", "results.json")) as f:
            probe = json.load(f)
        with open(os.path.join(wd, "pretrain", "results.json")) as f:
            pretrain = json.load(f)
        with open(os.path.join(wd, "wall_s.json")) as f:
            wall = json.load(f)
    except FileNotFoundError:
        return None
    record = {
        "objective": objective,
        "seed": seed,
        **{key: probe[key] for key, _ in METRICS},
        "wall_s": wall["wall_s"],
        "pretrain_s": pretrain["wall_s"],
        "commit": wall.get("commit", "unknown"),
        "command": wall["command"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d", time.localtime(os.path.getmtime(wd))),
    }
    os.makedirs(records, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return record


def fmt(values, scale=100.0, digits=2):
    if not values:
        return "—"
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def table(root, records, objectives, seeds):
    lines = [
        "| objective | "
        + " | ".join(name for _, name in METRICS)
        + " | wall (min) | seeds | commit |",
        "|---|" + "---|" * (len(METRICS) + 3),
    ]
    for obj in objectives:
        runs = [r for s in seeds if (r := load(root, records, obj, s)) is not None]
        if not runs:
            continue
        cells = [fmt([r[key] for r in runs]) for key, _ in METRICS]
        wall = fmt([r["wall_s"] for r in runs], scale=1 / 60, digits=1)
        commits = ", ".join(sorted({f"`{r['commit']}`" for r in runs}))
        seeds_run = " ".join(str(r["seed"]) for r in runs)
        lines.append(f"| {obj} | " + " | ".join(cells) + f" | {wall} | {seeds_run} | {commits} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--root", default=os.path.join(REPO, "runs", "ssl_mnist"))
    p.add_argument("--records", default=os.path.join(REPO, "experiments", "ssl_mnist_runs"))
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--table-only", action="store_true")
    # Any other argument (--config.x=y) is passed on to every run.
    a, extra = p.parse_known_args(argv)
    a.extra = extra
    if not a.table_only:
        for seed in a.seeds:
            for obj in a.objectives:
                run_one(a.root, a.records, obj, seed, a.steps, a.extra)
                load(a.root, a.records, obj, seed)  # keep its record as soon as it is done
    text = table(a.root, a.records, a.objectives, a.seeds)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n\n{text}")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
