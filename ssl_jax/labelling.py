"""Labels from people: import (validated, all or nothing, atomic) and export.

  python -m ssl_jax label import --workdir W labels.csv     (or ./launch.sh label import ...)
  python -m ssl_jax label export --workdir W [out.csv]

A label file is CSV with a header and at least the columns ``id`` and
``label`` (a class name); other columns are ignored, so the ``queries.csv`` an
active-learning round writes can be filled in and handed back as it is. Rows
with an empty label are skipped (not yet labelled).

Before anything is merged, every row is checked, and all problems are reported
together with their line numbers: unknown item ids, class names the dataset
does not have, an id given twice in the file, and a label that contradicts one
the run already holds. If there is any problem, nothing is merged. A valid
file is merged into ``W/labels.json`` with source "human" in one atomic
replace (temporary file, fsync, rename), so a crash at any moment leaves the
old or the new label set, never a mix.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

import numpy as np

from ssl_jax.data.labels import LabelStore, atomic_write_text


class LabelFileError(ValueError):
    """A label file with problems; ``problems`` lists them, each with its line."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        listed = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s), nothing merged:\n{listed}")


def read_rows(path: str) -> list[tuple[int, str, str]]:
    """(line number, id, label) of every row with a label; the header is line 1."""
    try:
        with open(path, newline="") as f:
            text = f.read()
    except OSError as e:
        raise LabelFileError(path, [f"cannot read the file: {e.strerror}"]) from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"id", "label"} - set(reader.fieldnames or ())
    if missing:
        raise LabelFileError(
            path, [f"line 1: the header needs the columns id and label (missing {sorted(missing)})"]
        )
    rows = []
    for row in reader:
        label = (row["label"] or "").strip()
        if label:
            rows.append((reader.line_num, (row["id"] or "").strip(), label))
    return rows


def validate(path: str, rows, ids: np.ndarray, class_names: list[str], store: LabelStore):
    """{pool index: class index} of a valid file; raises LabelFileError listing every problem."""
    index_of = {str(item): i for i, item in enumerate(ids)}
    class_of = {name: c for c, name in enumerate(class_names)}
    problems, items, first_line = [], {}, {}
    for line, item, label in rows:
        bad = False
        if item not in index_of:
            problems.append(f"line {line}: unknown item id {item!r}")
            bad = True
        if label not in class_of:
            problems.append(
                f"line {line}: class {label!r} is not one of the dataset's classes "
                f"({', '.join(class_names[:20])}{', ...' if len(class_names) > 20 else ''})"
            )
            bad = True
        if item in first_line:
            problems.append(
                f"line {line}: item {item!r} is given again (first on line {first_line[item]})"
            )
            continue
        first_line[item] = line
        if bad:
            continue
        i, c = index_of[item], class_of[label]
        held = store.labels.get(i)
        if held is not None and held[0] != c:
            problems.append(
                f"line {line}: item {item!r} is labelled {label!r}, but it already holds "
                f"{class_names[held[0]]!r} (from {held[1]})"
            )
            continue
        items[i] = c
    if problems:
        raise LabelFileError(path, problems)
    return items


def merge(store: LabelStore, items: dict[int, int], path: str) -> int:
    """Adds ``items`` as human labels and saves atomically; returns how many are new."""
    new = {i: (c, "human") for i, c in items.items() if i not in store.labels}
    merged = LabelStore(store.pool_size, {**store.labels, **new})
    merged.save(path)
    store.labels = merged.labels
    return len(new)


def export_csv(store: LabelStore, ids, class_names) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "label", "source"])
    for i, (c, source) in sorted(store.labels.items()):
        writer.writerow([ids[i], class_names[c], source])
    return out.getvalue()


def _run_context(workdir: str):
    """(dataset, label store, labels.json path) of the run in ``workdir``."""
    import ml_collections

    from ssl_jax.stages import common

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{workdir} holds no run (no config.json): run ssl_jax there first")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    ds = common.dataset(config)
    store = common.label_store(config, workdir, ds)
    return ds, store, os.path.join(workdir, "labels.json")


def import_labels(workdir: str, csv_path: str) -> dict:
    ds, store, path = _run_context(workdir)
    rows = read_rows(csv_path)
    items = validate(csv_path, rows, ds.splits["train"].ids, ds.class_names, store)
    added = merge(store, items, path)
    return {"rows": len(rows), "new_labels": added, "total_labels": len(store)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m ssl_jax label", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="validate a label file and merge it into the run")
    imp.add_argument("--workdir", required=True)
    imp.add_argument("file")
    exp = sub.add_parser("export", help="write the run's labels as CSV (id,label,source)")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("file", nargs="?", default="-", help="output file (default: stdout)")
    a = p.parse_args(argv)
    try:
        if a.command == "import":
            summary = import_labels(a.workdir, a.file)
            print(
                f"merged {summary['new_labels']} new label(s) from {a.file} "
                f"({summary['rows']} labelled rows); the run now holds {summary['total_labels']}. "
                "Run the same ssl_jax command again to continue."
            )
        else:
            ds, store, _ = _run_context(a.workdir)
            text = export_csv(store, ds.splits["train"].ids, ds.class_names)
            if a.file == "-":
                sys.stdout.write(text)
            else:
                atomic_write_text(a.file, text)
                print(f"wrote {len(store)} labels to {a.file}")
    except (LabelFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
