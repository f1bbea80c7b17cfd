"""Active learning on MNIST: test accuracy against the number of labels, per strategy.

  .venv/bin/python experiments/active_mnist.py                    # every strategy, seeds 0 1 2
  .venv/bin/python experiments/active_mnist.py --strategies random margin --seeds 0
  .venv/bin/python experiments/active_mnist.py --table-only --plot experiments/active_mnist.png

Every run is ``configs/active.py:mnist`` on the frozen SimCLR encoder of
``runs/ssl_mnist/simclr_s0`` (``--encoder``), stage ``active`` only: labels
10 → 20 → 50 → 100 → 200 → 500 → 1,000, a linear probe on the frozen features
trained each round, the dataset as oracle. Seed S changes the acquisition
randomness (random draws, k-means, BADGE sampling). The uncertainty and
diversity strategies start from 10 random labels, as in their papers;
TypiClust and ProbCover start with themselves (their cold start).

A strategy ``START-THEN`` (e.g. ``typiclust-badge``) selects with START up to
``--start-until`` labels (``active.start_until``, default 100) and with THEN
after that: a cold-start strategy while the model is weak, then one that uses it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = (
    "random",
    "least_confidence",
    "entropy",
    "margin",
    "bald",
    "coreset",
    "badge",
    "typiclust",
    "probcover",
)
SCHEDULE = (10, 20, 50, 100, 200, 500, 1000)  # labels after each round, by default


def parse_strategy(text: str) -> tuple[str, str, bool]:
    """'badge' -> (start, 'badge', False); 'typiclust-badge' -> ('typiclust', 'badge', True)."""
    first, sep, then = text.partition("-")
    for name in (first, then) if sep else (first,):
        if name not in STRATEGIES:
            raise argparse.ArgumentTypeError(
                f"unknown strategy {name!r} in {text!r}: {', '.join(STRATEGIES)} or START-THEN"
            )
    if sep:
        return first, then, True
    return (first if first in ("typiclust", "probcover") else "random"), first, False


def run_one(root, encoder, strategy, seed, extra, start_until=100, schedule=SCHEDULE):
    wd = os.path.join(root, f"{strategy}_s{seed}")
    if os.path.exists(os.path.join(wd, "active", "done.json")):
        return
    start, strategy, switch = parse_strategy(strategy)
    if switch:
        extra = [f"--config.active.start_until={start_until}", *extra]
    cmd = [
        sys.executable,
        "-m",
        "ssl_jax",
        "--config",
        "configs/active.py:mnist",
        "--workdir",
        wd,
        f"--config.init_from={encoder}",
        "--config.stages=('active',)",
        f"--config.active.strategy={strategy}",
        f"--config.active.start={start}",
        f"--config.active.schedule={tuple(schedule)}",
        f"--config.seed={seed}",
        # The probe the table was measured with (L-BFGS is the default since).
        "--config.eval.linear.method=adam",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    with open(os.path.join(wd, "wall_s.json"), "w") as f:
        json.dump({"wall_s": time.perf_counter() - t0, "command": cmd[1:]}, f)


def curves(root, strategies, seeds) -> dict:
    """{strategy: {num_labels: [test acc per seed]}}"""
    out = {}
    for strategy in strategies:
        for seed in seeds:
            path = os.path.join(root, f"{strategy}_s{seed}", "active", "results.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                for r in json.load(f)["rounds"]:
                    out.setdefault(strategy, {}).setdefault(r["num_labels"], []).append(
                        r["test_acc"]
                    )
    return out


def walls(root, strategy, seeds) -> list[float]:
    out = []
    for seed in seeds:
        path = os.path.join(root, f"{strategy}_s{seed}", "wall_s.json")
        if os.path.exists(path):
            with open(path) as f:
                out.append(json.load(f)["wall_s"])
    return out


def table(data, root, seeds) -> str:
    counts = sorted({n for c in data.values() for n in c})
    lines = [
        "| strategy | " + " | ".join(str(n) for n in counts) + " | wall (s), mean |",
        "|---|" + "---|" * (len(counts) + 1),
    ]
    for strategy, c in data.items():
        cells = []
        for n in counts:
            accs = c.get(n, [])
            if not accs:
                cells.append("—")
            elif len(accs) == 1:
                cells.append(f"{100 * accs[0]:.2f}")
            else:
                cells.append(
                    f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}"
                )
        w = walls(root, strategy, seeds)
        cells.append(f"{statistics.mean(w):.0f}" if w else "—")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, c in data.items():
        counts = sorted(c)
        means = np.array([100 * statistics.mean(c[n]) for n in counts])
        stds = np.array([100 * statistics.stdev(c[n]) if len(c[n]) > 1 else 0.0 for n in counts])
        (line,) = ax.plot(counts, means, marker="o", markersize=3, label=strategy)
        ax.fill_between(counts, means - stds, means + stds, color=line.get_color(), alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST, linear probe on frozen SimCLR features")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), metavar="STRATEGY")
    p.add_argument("--start-until", type=int, default=100, help="labels for START of START-THEN")
    p.add_argument(
        "--schedule",
        nargs="+",
        type=int,
        default=list(SCHEDULE),
        help="labels after each round (active.schedule)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--encoder", default=os.path.join(REPO, "runs", "ssl_mnist", "simclr_s0"))
    p.add_argument("--root", default=os.path.join(REPO, "runs", "active_mnist"))
    p.add_argument("--plot", default="")
    p.add_argument("--table-only", action="store_true")
    a, extra = p.parse_known_args(argv)  # other arguments go to every run
    for strategy in a.strategies:
        try:
            parse_strategy(strategy)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if not a.table_only:
        for seed in a.seeds:
            for strategy in a.strategies:
                run_one(a.root, a.encoder, strategy, seed, extra, a.start_until, a.schedule)
    data = curves(a.root, a.strategies, a.seeds)
    print(table(data, a.root, a.seeds))
    if a.plot:
        plot(data, a.plot)


if __name__ == "__main__":
    main()
