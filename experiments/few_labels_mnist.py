"""MNIST with 100 labels: supervised from scratch, probe, fine-tuning, self-training.

  .venv/bin/python experiments/few_labels_mnist.py --seeds 0 1   # after experiments/ssl_mnist.py
  .venv/bin/python experiments/few_labels_mnist.py --table-only

For each seed S (the network's seed and which 100 images carry labels), on top
of the SimCLR pretraining of ``runs/ssl_mnist/simclr_sS`` (made by
experiments/ssl_mnist.py with the same seed, hence the same 100 labels):

  scratch     configs/simclr.py:mnist_long, finetune only, finetune.init=scratch: the CNN
              trained on the 100 labels alone (same augmentation, steps and evaluation)
  probe       the pretraining run's own linear probe (runs/ssl_mnist/simclr_sS/probe)
  finetune    configs/simclr.py:mnist_long, stage finetune, init_from the pretraining run
  selftrain   the same run's selftrain stage (3,000 FixMatch steps with FlexMatch class
              thresholds, SGD lr 0.03), then predict and report

``--variant NAME:OVERRIDES`` (repeatable) adds a row: self-training again from
the same fine-tuned model with the given config overrides, in
``runs/few_labels/selftrain-NAME_sS`` (the fine-tuning result is copied there,
not recomputed), e.g.

  .venv/bin/python experiments/few_labels_mnist.py --seeds 0 \
      --variant "ema:--config.selftrain.ema_decay=0.999 --config.selftrain.steps=6000"

Runs go to ``runs/few_labels/<row>_sS``; finished ones are not repeated.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = (
    ("scratch", "supervised only, from scratch"),
    ("probe", "SimCLR pretraining + linear probe"),
    ("finetune", "SimCLR pretraining + fine-tuning"),
    ("selftrain", "SimCLR pretraining + fine-tuning + self-training"),
)


def run(cmd, workdir, marker):
    if os.path.exists(marker):
        return
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    with open(os.path.join(workdir, "wall_s.json"), "w") as f:
        json.dump({"wall_s": time.perf_counter() - t0, "command": cmd[1:]}, f)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'NAME:--config.a=1 --config.b=2' -> (NAME, [overrides])."""
    name, sep, overrides = text.partition(":")
    if not sep or not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"--variant {text!r}: expected NAME:OVERRIDES with NAME of [A-Za-z0-9_]")
    return name, overrides.split()


def run_seed(root, ssl_root, seed, extra, variants=()):
    pretrained = os.path.join(ssl_root, f"simclr_s{seed}")
    if not os.path.exists(os.path.join(pretrained, "pretrain", "done.json")):
        raise SystemExit(f"{pretrained} has no finished pretraining: run experiments/ssl_mnist.py")
    base = [
        sys.executable,
        "-m",
        "ssl_jax",
        "--config",
        "configs/simclr.py:mnist_long",
        f"--config.seed={seed}",
        f"--config.labels.seed={seed}",
        *extra,
    ]
    wd = os.path.join(root, f"scratch_s{seed}")
    run(
        [*base, "--workdir", wd, "--config.finetune.init=scratch", "--config.stages=('finetune',)"],
        wd,
        os.path.join(wd, "finetune", "done.json"),
    )
    wd = os.path.join(root, f"transfer_s{seed}")
    stages = "--config.stages=('finetune', 'selftrain', 'predict', 'report')"
    run(
        [*base, "--workdir", wd, f"--config.init_from={pretrained}", stages],
        wd,
        os.path.join(wd, "report", "done.json"),
    )
    for name, overrides in variants:
        vwd = os.path.join(root, f"selftrain-{name}_s{seed}")
        if not os.path.exists(os.path.join(vwd, "finetune", "done.json")):
            os.makedirs(vwd, exist_ok=True)
            for item in ("labels.json", "data_report.json"):
                shutil.copy2(os.path.join(wd, item), vwd)
            shutil.copytree(os.path.join(wd, "finetune"), os.path.join(vwd, "finetune"))
        stages = "--config.stages=('finetune', 'selftrain')"  # finetune: already done
        run(
            [*base, "--workdir", vwd, f"--config.init_from={pretrained}", stages, *overrides],
            vwd,
            os.path.join(vwd, "selftrain", "done.json"),
        )


def results(root, ssl_root, seed, variants=()) -> dict:
    def load(*parts):
        path = os.path.join(*parts)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    out = {}
    if r := load(root, f"scratch_s{seed}", "finetune", "results.json"):
        out["scratch"] = (r["test_acc"], r["wall_s"])
    if r := load(ssl_root, f"simclr_s{seed}", "probe", "results.json"):
        pre = load(ssl_root, f"simclr_s{seed}", "pretrain", "results.json")
        out["probe"] = (r["labelled/linear_test_acc"], pre["wall_s"])
    for stage in ("finetune", "selftrain"):
        if r := load(root, f"transfer_s{seed}", stage, "results.json"):
            out[stage] = (r["test_acc"], r["wall_s"])
    for name, _ in variants:
        if r := load(root, f"selftrain-{name}_s{seed}", "selftrain", "results.json"):
            out[f"selftrain-{name}"] = (r["test_acc"], r["wall_s"])
    return out


def table(root, ssl_root, seeds, variants=()) -> str:
    per_seed = [results(root, ssl_root, s, variants) for s in seeds]
    lines = [
        "| with 100 labels | test acc (mean ± std) | per seed | stage wall time (s) |",
        "|---|---|---|---|",
    ]
    rows = [*ROWS]
    for name, overrides in variants:
        rows.append((f"selftrain-{name}", f"{ROWS[-1][1]}, {name}: `{' '.join(overrides)}`"))
    for key, name in rows:
        accs = [r[key][0] for r in per_seed if key in r]
        walls = [r[key][1] for r in per_seed if key in r]
        if not accs:
            continue
        mean = 100 * statistics.mean(accs)
        spread = f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        each = ", ".join(f"{100 * a:.2f}" for a in accs)
        lines.append(f"| {name} | {mean:.2f}{spread} | {each} | {statistics.mean(walls):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--root", default=os.path.join(REPO, "runs", "few_labels"))
    p.add_argument("--ssl-root", default=os.path.join(REPO, "runs", "ssl_mnist"))
    p.add_argument("--variant", action="append", default=[], metavar="NAME:OVERRIDES")
    p.add_argument("--table-only", action="store_true")
    a, extra = p.parse_known_args(argv)  # other arguments go to every run
    variants = [parse_variant(v) for v in a.variant]
    if not a.table_only:
        for seed in a.seeds:
            run_seed(a.root, a.ssl_root, seed, extra, variants)
    print(table(a.root, a.ssl_root, a.seeds, variants))


if __name__ == "__main__":
    main()
