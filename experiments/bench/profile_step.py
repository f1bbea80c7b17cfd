"""Where the time of a model step goes: XLA's executed ops, grouped.

  .venv/bin/python experiments/bench/profile_step.py            # SimCLR ResNet-18, batch 256
  .venv/bin/python experiments/bench/profile_step.py --job mae_step
  .venv/bin/python experiments/bench/profile_step.py --toy      # CI: the script runs

The step is peers.py's (the same config, inputs and compiler options). It runs
``--steps`` times under ``jax.profiler.trace``; the trace's per-op events
(one per executed HLO instruction of the step's entry computation) are summed
by name and grouped by what the instruction is: convolutions split into
forward, input gradient and weight gradient (from their metadata), matmuls,
copies and transposes, and the remaining fusions (element-wise, BatchNorm
statistics, the optimizer). Op events can overlap
when XLA runs independent ops at once, so shares are of summed op time.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from experiments.bench import jax_side  # noqa: E402
from experiments.bench.peers import JOBS  # noqa: E402

GROUPS = (
    "convolution, forward",
    "convolution, input gradient",
    "convolution, weight gradient",
    "matmul (dot)",
    "copy / transpose",
    "other fusions (element-wise, reductions, optimizer)",
    "other",
)


def entry_instructions(hlo_text: str) -> dict[str, str]:
    """{instruction name: group} for the entry computation of compiled HLO text."""
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    entry = entry[: entry.index("\n}\n")]
    groups = {}
    for line in entry.splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT )?%(\S+) = .*? ([a-z][a-z\-]*)\(", line)
        if not m:
            continue
        name, op = m.groups()
        backward = "transpose(jvp" in line
        if op == "convolution":
            # Forward convolutions carry the model's op_name; input gradients
            # its transpose(jvp(...)); XLA builds the weight gradients itself (from
            # transposed activations and output gradients), with no op_name.
            if "op_name=" not in line:
                groups[name] = GROUPS[2]
            elif backward:
                groups[name] = GROUPS[1]
            else:
                groups[name] = GROUPS[0]
        elif op == "dot":
            groups[name] = GROUPS[3]
        elif op in ("copy", "transpose") or name.startswith(("transpose", "copy")):
            groups[name] = GROUPS[4]
        elif op == "fusion":
            groups[name] = GROUPS[5]
        else:
            groups[name] = GROUPS[6]
    return groups


def op_times(trace_dir: str, names) -> dict[str, float]:
    """Summed duration (µs) per op name found in the perfetto trace."""
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not path:
        raise FileNotFoundError(f"no perfetto trace under {trace_dir}")
    with gzip.open(path[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            total[e["name"]] += float(e.get("dur", 0.0))
    return total


def profile(job: str, params: dict, steps: int):
    run, flops = _step(job, params)
    groups = entry_instructions(run.compiled.as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run(steps)
        times = op_times(d, groups)
    by_group = collections.Counter()
    for name, us in times.items():
        by_group[groups[name]] += us / steps
    return by_group, times, flops


def _step(job, params):
    """(run, flops) of the job's step, built as jax_side builds it."""
    captured = {}
    real = jax_side.pretrain_step

    def keep(*a, **kw):
        captured["out"] = real(*a, **kw)
        return captured["out"]

    jax_side.pretrain_step = keep
    try:
        jax_side.JOBS[job](params)
    finally:
        jax_side.pretrain_step = real
    return captured["out"]


def table(by_group, times, steps, top=10) -> str:
    total = sum(by_group.values())
    lines = ["| group | ms / step | share |", "|---|---|---|"]
    for g in GROUPS:
        if by_group.get(g):
            lines.append(f"| {g} | {by_group[g] / 1e3:,.1f} | {by_group[g] / total:.0%} |")
    lines.append(f"| all ops | {total / 1e3:,.1f} | 100% |")
    lines += ["", f"The {top} longest ops:", "", "| op | ms / step |", "|---|---|"]
    for name, us in times.most_common(top):
        lines.append(f"| `{name}` | {us / steps / 1e3:,.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="simclr_step", choices=["simclr_step", "mae_step"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--toy", action="store_true", help="tiny sizes (CI)")
    a = ap.parse_args(argv)
    full, toy, _, _ = JOBS[a.job]
    params = {**full, **toy} if a.toy else dict(full)
    by_group, times, flops = profile(a.job, params, a.steps)
    print(
        f"{a.job}, batch {params['batch']}, {a.steps} steps profiled; "
        f"XLA's count {flops / 1e9:,.1f} GFLOP per step\n"
    )
    print(table(by_group, times, a.steps))
    return by_group


if __name__ == "__main__":
    main()
