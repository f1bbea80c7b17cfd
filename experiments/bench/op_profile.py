"""Where a peers.py job's time goes, op by op, on the ssl_jax side.

  .venv/bin/python experiments/bench/op_profile.py --job mae_rest     # decoder, loss, AdamW
  .venv/bin/python experiments/bench/op_profile.py --job mae_step --top 30
  .venv/bin/python experiments/bench/op_profile.py --toy               # CI: the script runs

The job is set up as ``peers.py`` sets it up (experiments/bench/jax_side.py,
same parameters; ``--set`` overrides them), in one of its settings (default:
the last, ssl_jax's defaults, e.g. the fused ViT kernels for the MAE jobs;
only that one is built), warmed up, then run ``--repeats``
times under ``jax.profiler.trace``.

On XLA's CPU backend each op of the compiled step leaves a start event
(named after the HLO instruction) and an ``end: <name>`` event when it is
done; ops with no dependency between them run at the same time on the
thread pool. An op's span is its start to its end. Wall time in which k ops
are in flight is shared among them, 1/k each, so the ops' shares add up to
the time in which anything ran ("busy"). Printed per step: the shares by
kind of op (the HLO name without its numeric suffix: ``dot``,
``dot_general``, ``ffi_call`` for ssl_jax's C++ kernels, fusions by name),
the largest single ops, and how the busy time splits by what ran together
(one dot alone, a dot next to a C++ kernel, ...). A share is time, not
work: an op slowed by a neighbour gets a larger share.
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

from experiments.bench import peers  # noqa: E402

END = "end: "


def op_spans(events) -> list[tuple[float, float, str]]:
    """(start, end, op) for each run of an HLO op in a trace's events (perfetto
    JSON, times in microseconds): a start event carries ``args.hlo_op``; its
    end is the first ``end: <op>`` event that finishes after it starts."""
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        if "hlo_op" in e.get("args", {}):
            starts[e["args"]["hlo_op"]].append(e["ts"])
        elif e.get("name", "").startswith(END):
            ends[e["name"][len(END) :]].append(e["ts"] + e.get("dur", 0.0))
    spans = []
    for op, ss in starts.items():
        ee, j = sorted(ends.get(op, [])), 0
        for s in sorted(ss):
            while j < len(ee) and ee[j] < s:
                j += 1
            if j < len(ee):
                spans.append((s, ee[j], op))
                j += 1
    return spans


def kind(op: str) -> str:
    """The HLO op's name without its numeric suffix: ``dot_general.61`` -> ``dot_general``."""
    return re.sub(r"\.\d+$", "", op)


def group(op: str) -> str:
    """dot, C++ kernel (ffi_call) or other, for the concurrency table."""
    k = kind(op)
    return "dot" if k in ("dot", "dot_general") else "C++ kernel" if k == "ffi_call" else "other"


def shares(spans):
    """({op: share}, {(group, count)...: time}, busy) from ``op_spans``: the
    wall time when k ops are in flight is split 1/k among them, and also
    tallied under which groups of ops ran together."""
    edges = sorted(
        [(s, 1, op) for s, _, op in spans] + [(e, -1, op) for _, e, op in spans],
        key=lambda x: (x[0], -x[1]),
    )
    active, share, together = collections.Counter(), collections.Counter(), collections.Counter()
    busy, last = 0.0, None
    for t, step, op in edges:
        if last is not None and active:
            dt, n = t - last, sum(active.values())
            busy += dt
            for a, c in active.items():
                share[a] += dt * c / n
            groups = collections.Counter()
            for a, c in active.items():
                groups[group(a)] += c
            together[tuple(sorted(groups.items()))] += dt
        active[op] += step
        if active[op] == 0:
            del active[op]
        last = t
    return share, together, busy


def trace_events(run, repeats: int) -> list[dict]:
    """The perfetto trace events of ``repeats`` calls of ``run``."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(repeats):
                run()
        (path,) = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            return json.load(f)["traceEvents"]


def _together_name(key) -> str:
    return " + ".join(f"{n} {g}{'s' if n > 1 else ''}" for g, n in key)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", default="mae_rest", choices=list(peers.JOBS))
    p.add_argument("--setting", default="", help="one of the job's settings (default: the last)")
    p.add_argument("--repeats", type=int, default=4, help="traced calls (steps=2: 2 steps each)")
    p.add_argument("--top", type=int, default=20, help="kinds of op and single ops to print")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--toy", action="store_true", help="the job's toy sizes, 1 traced call")
    a = p.parse_args(argv)
    from experiments.bench import jax_side

    params, toy, _, _ = peers.JOBS[a.job]
    params = {**params, **(toy if a.toy else {})}
    params.update(peers.parse_overrides(a.set, [params]))
    setup = jax_side.JOBS[a.job]
    # Build only the setting traced (a model step compiles for tens of seconds).
    try:
        variants, _ = setup(params, None, pick=lambda names: [a.setting or names[-1]])
    except jax_side.UnknownSetting as e:
        sys.exit(f"--setting {a.setting!r}: {e}")
    if not variants:
        sys.exit(f"{a.job}: the setting {a.setting or '(the last)'} could not be built (see above)")
    setting = a.setting or list(variants)[-1]
    run, repeats = variants[setting], 1 if a.toy else a.repeats
    run()
    steps = repeats * params.get("steps", 1)
    share, together, busy = shares(op_spans(trace_events(run, repeats)))
    if not share:
        sys.exit("the trace has no HLO op events (is JAX's backend the CPU?)")

    def ms(t):
        return t / 1000 / steps

    print(f"\n{a.job}, {setting}: {params}\nbusy {ms(busy):.1f} ms a step ({steps} steps traced)")
    by_kind = collections.Counter()
    for op, t in share.items():
        by_kind[kind(op)] += t
    kinds = dict(by_kind.most_common(a.top))
    if len(by_kind) > a.top:
        rest = sum(by_kind.values()) - sum(kinds.values())
        kinds[f"the other {len(by_kind) - a.top} kinds"] = rest
    rows = []
    for title, table in (("kind of op", kinds), ("op", dict(share.most_common(a.top)))):
        print(f"\n| {title} | ms a step | of busy |\n|---|---|---|")
        for name, t in table.items():  # largest first, "the other kinds" last
            print(f"| {name} | {ms(t):.2f} | {100 * t / busy:.1f}% |")
            rows.append({"table": title, "name": name, "ms": ms(t), "of_busy": t / busy})
    print("\n| running together | ms a step | of busy |\n|---|---|---|")
    for key, t in together.most_common():
        print(f"| {_together_name(key)} | {ms(t):.2f} | {100 * t / busy:.1f}% |")
        rows.append({"table": "together", "name": _together_name(key), "ms": ms(t)})
    return rows


if __name__ == "__main__":
    main()
