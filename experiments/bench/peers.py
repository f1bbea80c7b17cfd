"""ssl_jax against the tools users would pick instead, the same work on both sides.

  ./launch.sh bench-peers                                # every job (creates .venv-bench)
  .venv/bin/python experiments/bench/peers.py --jobs knn linear_probe --repeats 7
  .venv/bin/python experiments/bench/peers.py --toy --ssl-jax-only   # CI: the scripts run

Each side runs in its own worker process (ssl_jax in .venv, the peers in
.venv-bench with experiments/bench/requirements-bench.txt), set up and warmed
up first; then the driver asks them in turn for one timed repeat, A B A B ...,
so machine noise falls on both alike, and reports medians. A side may offer
several settings (PyTorch eager and torch.compile): all alternate, and the
ratio is taken against the fastest. ``matmul`` runs first: the float32 matmul
rate of this CPU, measured in the same run, is the peak that model steps' GFLOP/s
(XLA's FLOP count of the ssl_jax step, the same work on both sides) are a
fraction of.

``--settings`` builds only the named ssl_jax settings of each selected job
(every one of them must have them; ``matmul``, the peak, always runs); the
peers' settings all run.

Worker protocol (JSON lines): the driver writes {"job", "params", "peer_info",
"settings"} then {"run": variant} lines; the worker answers {"variants",
"info"} (or {"error"} where the settings are not the job's) and then
{"seconds", "items"}; it answers on a private copy of stdout, so whatever the
libraries print goes to stderr.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))

# job → (parameters, toy overrides, what an item is, default repeats)
JOBS = {
    "matmul": ({"n": 2048, "reps": 4}, {"n": 128}, "matmul", 5),
    "simclr_step": ({"batch": 256, "steps": 1}, {"batch": 8, "width": 0.125}, "image", 5),
    "mae_step": ({"batch": 256, "steps": 2}, {"batch": 8, "depth": 1}, "image", 5),
    # mae_step without its 12 encoder blocks (depth 0): patch embedding,
    # masking, decoder, loss and AdamW, what the step adds to vit_blocks.
    "mae_rest": ({"batch": 256, "steps": 2, "depth": 0}, {"batch": 8}, "image", 5),
    # Parts of mae_step, forward and backward only (no optimizer): ViT-Ti's 12
    # encoder blocks on the 16 visible tokens of 256 images, and the same
    # blocks' matmuls alone (a residual stack of bias-free dense pairs).
    "vit_blocks": (
        {"batch": 256, "tokens": 16, "width": 192, "depth": 12, "heads": 3, "mlp": 768, "steps": 1},
        {"batch": 4, "depth": 1},
        "image",
        5,
    ),
    # mae_step's decoder blocks alone, forward and backward: 2 blocks 128 wide,
    # 4 heads, on all 64 patch tokens of 256 images (configs/mae.py: no class token).
    "decoder_blocks": (
        {"batch": 256, "tokens": 64, "width": 128, "depth": 2, "heads": 4, "mlp": 512, "steps": 1},
        {"batch": 4, "depth": 1},
        "image",
        5,
    ),
    # The decoder's attention core alone (softmax(q k^T / sqrt(d)) v, no
    # projections), forward and backward, per block.
    "attention": (
        {"batch": 256, "tokens": 64, "heads": 4, "head_dim": 32, "steps": 1},
        {"batch": 4},
        "image",
        5,
    ),
    "dense_stack": (
        {"batch": 256, "tokens": 16, "width": 192, "depth": 12, "mlp": 768, "steps": 1},
        {"batch": 4, "depth": 1},
        "image",
        5,
    ),
    "augment32": (
        {"size": 32, "source": 32, "batch": 256, "batches": 4, "workers": 2},
        {"batch": 8, "batches": 1},
        "image (2 views)",
        5,
    ),
    "augment224": (
        {"size": 224, "source": 256, "batch": 256, "batches": 2, "workers": 2},
        {"batch": 4, "batches": 1, "source": 240},
        "image (2 views)",
        5,
    ),
    "linear_probe": (
        {
            "train": 60000,
            "val": 10000,
            "dim": 512,
            "classes": 10,
            "l2": 1e-4,
            "method": "lbfgs",
            "lr": 0.01,  # Adam only
            "step_grid": [5, 10, 20, 40, 80, 160],
        },
        {"train": 300, "val": 100, "dim": 16, "step_grid": [5]},
        "train row",
        5,
    ),
    "knn": (
        {"train": 60000, "test": 10000, "dim": 512, "classes": 10, "k": 20},
        {"train": 300, "test": 50, "dim": 16},
        "query",
        5,
    ),
    "entropy": (
        {"strategy": "entropy", "pool": 1_000_000, "dim": 8, "classes": 10, "budget": 1000},
        {"pool": 500, "budget": 10},
        "pool item",
        5,
    ),
    "margin": (
        {"strategy": "margin", "pool": 1_000_000, "dim": 8, "classes": 10, "budget": 1000},
        {"pool": 500, "budget": 10},
        "pool item",
        5,
    ),
    "coreset": (
        {"strategy": "coreset", "pool": 100_000, "dim": 512, "classes": 10, "budget": 1000},
        {"pool": 500, "dim": 8, "budget": 10},
        "pool item",
        3,
    ),
    "badge": (
        {"strategy": "badge", "pool": 20_000, "dim": 512, "classes": 10, "budget": 1000},
        {"pool": 500, "dim": 8, "budget": 10},
        "pool item",
        3,
    ),
    "typiclust": (
        {"strategy": "typiclust", "pool": 20_000, "dim": 512, "classes": 10, "budget": 1000},
        {"pool": 500, "dim": 8, "budget": 10},
        "pool item",
        3,
    ),
}


# ------------------------------------------------------------------ worker side


def worker(side: str):
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to stderr
    sys.stdout = sys.stderr
    sys.path.insert(0, REPO)
    if side == "jax":
        from experiments.bench import jax_side as impl
    else:
        from experiments.bench import torch_side as impl
    import time

    variants = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if "job" in msg:
            kw = {}
            if settings := msg.get("settings"):  # the ssl_jax side only
                kw["pick"] = lambda names, settings=settings: settings
            try:
                variants, info = impl.JOBS[msg["job"]](msg["params"], msg.get("peer_info"), **kw)
            except getattr(impl, "UnknownSetting", ()) as e:  # jax_side's only
                out.write(json.dumps({"error": str(e)}) + "\n")
                continue
            out.write(json.dumps({"variants": list(variants), "info": info}) + "\n")
        elif "run" in msg:
            t = time.perf_counter()
            items = variants[msg["run"]]()
            out.write(json.dumps({"seconds": time.perf_counter() - t, "items": items}) + "\n")


# ------------------------------------------------------------------ driver side


class Worker:
    def __init__(self, side: str, python: str):
        self.side = side
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", side],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the {self.side} worker died (exit {self.proc.wait()}); its error is above"
            )
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def measure(workers: dict, job: str, params: dict, repeats: int, settings=None) -> dict:
    """{(side, variant): {"times": [...], "items": n, "info": {...}}}; peers are
    set up first so the ssl_jax side can aim at the peer's accuracy.
    ``settings``: the ssl_jax settings to build (default all)."""
    results, peer_info = {}, {}
    for side in sorted(workers, key=lambda s: s == "ssl_jax"):
        msg = {"job": job, "params": params, "peer_info": peer_info}
        if side == "ssl_jax" and settings:
            msg["settings"] = settings
        setup = workers[side].ask(msg)
        if "error" in setup:
            sys.exit(f"{job}: --settings {settings}: {setup['error']}")
        if side != "ssl_jax":
            peer_info = setup["info"]
        for v in setup["variants"]:
            results[(side, v)] = {"times": [], "items": 0, "info": setup["info"]}
    for _ in range(repeats):
        for side, v in results:
            r = workers[side].ask({"run": v})
            results[(side, v)]["times"].append(r["seconds"])
            results[(side, v)]["items"] = r["items"]
    return results


def rows_for(job: str, unit: str, results: dict, peak_gflops: float) -> list[dict]:
    rows = []
    for (side, variant), r in results.items():
        med = statistics.median(r["times"])
        row = {
            "job": job,
            "side": side,
            "setting": r["info"].get("setting", variant),
            "unit": unit,
            "median_s": med,
            "per_s": r["items"] / med,
            "spread": (max(r["times"]) - min(r["times"])) / med,
            "accuracy": r["info"].get("val_acc", r["info"].get("test_acc")),
        }
        flops = results.get(("ssl_jax", "jit"), {}).get("info", {}).get("flops_per_item")
        if flops and job != "matmul":  # the same work on both sides: XLA's count
            row["gflops"] = flops * row["per_s"] / 1e9
            row["of_peak"] = row["gflops"] / peak_gflops if peak_gflops else None
        if job == "matmul":
            row["gflops"] = r["info"]["flops_per_item"] * row["per_s"] / 1e9
        rows.append(row)
    ours = [r for r in rows if r["side"] == "ssl_jax"]
    peers = [r for r in rows if r["side"] != "ssl_jax"]
    if ours and peers:
        best = max(peers, key=lambda r: r["per_s"])
        for r in rows:  # every ssl_jax setting against the fastest peer
            r["ratio"] = r["per_s"] / best["per_s"] if r["side"] == "ssl_jax" else None
            r["fastest_peer"] = r is best
    return rows


def format_table(rows: list[dict]) -> str:
    out = [
        "| job | side | setting | per second | median (s) | spread | accuracy "
        "| GFLOP/s | of peak | ssl_jax / fastest peer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = "" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}%"
        gf = f"{r['gflops']:.1f}" if r.get("gflops") else ""
        peak = f"{100 * r['of_peak']:.0f}%" if r.get("of_peak") else ""
        ratio = f"**{r['ratio']:.2f}x**" if r.get("ratio") else ""
        setting = r["setting"] + (" (fastest peer)" if r.get("fastest_peer") else "")
        out.append(
            f"| {r['job']} | {r['side']} | {setting} | {r['per_s']:,.0f} {r['unit']}/s "
            f"| {r['median_s']:.3f} | {100 * r['spread']:.0f}% | {acc} | {gf} | {peak} | {ratio} |"
        )
    return "\n".join(out)


def versions(peer_python: str | None) -> str:
    import jax

    text = f"jax {jax.__version__}"
    if peer_python:
        probe = (
            "import torch, torchvision, lightly, sklearn, skactiveml;"
            "print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, "
            "lightly {lightly.__version__}, scikit-learn {sklearn.__version__}, "
            "scikit-activeml {skactiveml.__version__}')"
        )
        got = subprocess.run([peer_python, "-c", probe], capture_output=True, text=True)
        text += ", " + (got.stdout.strip() or "peer versions unknown")
    return text


def parse_overrides(items, job_params) -> dict:
    """``KEY=VALUE`` strings → {key: int, float or str}; a key that none of
    ``job_params`` (the selected jobs' parameter dicts) has is an error."""
    known = {k for params in job_params for k in params}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--set takes KEY=VALUE, got {item!r}")
        if key not in known:
            sys.exit(f"--set {key}: no selected job has it (they have: {', '.join(sorted(known))})")
        for cast in (int, float, str):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--repeats", type=int, default=0, help="0: each job's default (5 or 3)")
    p.add_argument("--peer-python", default=os.path.join(REPO, ".venv-bench", "bin", "python"))
    p.add_argument("--ssl-jax-only", action="store_true", help="no peer environment needed")
    p.add_argument("--toy", action="store_true", help="tiny sizes: checks the scripts run")
    p.add_argument("--out", default="", help="also write the table (markdown) here")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (e.g. width=128) in every selected job that has it",
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=[],
        metavar="NAME",
        help="build only these ssl_jax settings (e.g. jit) in every selected job but matmul",
    )
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker)
    if not a.ssl_jax_only and not os.path.exists(a.peer_python):
        sys.exit(
            f"no peer environment at {a.peer_python}: run ./launch.sh bench-peers once "
            "(it installs experiments/bench/requirements-bench.txt), or pass --ssl-jax-only"
        )
    overrides = parse_overrides(a.set, [JOBS[j][0] for j in a.jobs])
    workers = {"ssl_jax": Worker("jax", sys.executable)}
    if not a.ssl_jax_only:
        workers["peer"] = Worker("torch", a.peer_python)
    header = (
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; {versions(None if a.ssl_jax_only else a.peer_python)}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        + (f"; --set {' '.join(a.set)}" if a.set else "")
        + (f"; --settings {a.settings}" if a.settings else "")
    )
    print(header, flush=True)
    jobs = ["matmul", *[j for j in a.jobs if j != "matmul"]]
    rows, peak = [], 0.0
    try:
        for job in jobs:
            params, toy, unit, repeats = JOBS[job]
            params = {**params, **(toy if a.toy else {})}
            if job != "matmul":
                params.update({k: v for k, v in overrides.items() if k in JOBS[job][0]})
            n = 1 if a.toy else (a.repeats or repeats)
            print(f"{job}: {n} repeats per setting ...", file=sys.stderr, flush=True)
            settings = a.settings if job != "matmul" else None
            new = rows_for(job, unit, measure(workers, job, params, n, settings), peak)
            if job == "matmul":
                peak = max(r["gflops"] for r in new)
            if job in a.jobs:
                rows += new
                print("\n".join(format_table(new).splitlines()[-len(new) :]), flush=True)
    finally:
        for w in workers.values():
            w.close()
    text = f"{header}; float32 matmul peak {peak:.1f} GFLOP/s\n\n{format_table(rows)}\n"
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return rows


if __name__ == "__main__":
    main()
