"""The human label round trip: validation, all-or-nothing atomic merge, export."""

import csv
import os
import subprocess
import sys

import pytest

from ssl_jax import labelling
from ssl_jax.data.labels import LabelStore
from tests.util import REPO, tiny_config


@pytest.fixture
def run_dir(digits_folder, tmp_path):
    """A run's workdir over the digits folder: config.json and 50 dataset labels."""
    from ssl_jax.stages import common

    config = tiny_config(f"folder:{digits_folder}")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    ds = common.dataset(config)
    store = common.label_store(config, workdir, ds)
    return workdir, ds, store


def _write(path, rows, header=("id", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _unlabelled(ds, store, n):
    ids = ds.splits["train"].ids
    free = [i for i in range(len(ids)) if i not in store.labels][:n]
    truth = [ds.class_names[ds.splits["train"].labels[i]] for i in free]
    return [str(ids[i]) for i in free], truth


def test_valid_file_is_merged_as_human_labels(run_dir, tmp_path):
    workdir, ds, store = run_dir
    ids, truth = _unlabelled(ds, store, 3)
    given = next(iter(store.labels))  # a dataset label, repeated identically: not a conflict
    same = ds.class_names[store.labels[given][0]]
    rows = [
        *zip(ids, truth, strict=True),
        (str(ds.splits["train"].ids[given]), same),
        ("whatever", ""),
    ]
    path = _write(tmp_path / "l.csv", rows)
    summary = labelling.import_labels(workdir, path)
    assert summary == {"rows": 4, "new_labels": 3, "total_labels": 53}
    back = LabelStore.load(os.path.join(workdir, "labels.json"))
    index = {str(x): i for i, x in enumerate(ds.splits["train"].ids)}
    for item, label in zip(ids, truth, strict=True):
        assert back.labels[index[item]] == (ds.class_names.index(label), "human")
    assert back.labels[given][1] == "dataset"  # untouched


def test_every_problem_is_reported_with_its_line_and_nothing_is_merged(run_dir, tmp_path):
    workdir, ds, store = run_dir
    ids, truth = _unlabelled(ds, store, 2)
    given = next(iter(store.labels))
    other = ds.class_names[(store.labels[given][0] + 1) % 10]
    rows = [
        (ids[0], truth[0]),  # line 2: fine
        ("train/9/nope.png", "9"),  # line 3: unknown id
        (ids[1], "eleven"),  # line 4: unknown class
        (ids[0], truth[0]),  # line 5: duplicate of line 2
        (str(ds.splits["train"].ids[given]), other),  # line 6: conflicts with a held label
    ]
    path = _write(tmp_path / "bad.csv", rows)
    before = open(os.path.join(workdir, "labels.json"), "rb").read()
    with pytest.raises(labelling.LabelFileError) as err:
        labelling.import_labels(workdir, path)
    problems = err.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5", "line 6"]
    assert "unknown item id" in problems[0] and "not one of the dataset's classes" in problems[1]
    assert "first on line 2" in problems[2] and "already holds" in problems[3]
    assert open(os.path.join(workdir, "labels.json"), "rb").read() == before


def test_header_without_label_column_is_an_error(run_dir, tmp_path):
    workdir, _, _ = run_dir
    path = _write(tmp_path / "h.csv", [("a", "b")], header=("id", "class"))
    with pytest.raises(labelling.LabelFileError, match="columns id and label"):
        labelling.import_labels(workdir, path)


def _cli(args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ssl_jax", "label", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
def test_cli_errors_and_a_kill_between_write_and_rename(run_dir, tmp_path):
    workdir, ds, store = run_dir
    bad = _write(tmp_path / "bad.csv", [("nope", "3")])
    proc = _cli(["import", "--workdir", workdir, bad])
    assert proc.returncode == 2 and "line 2: unknown item id" in proc.stderr
    assert "Traceback" not in proc.stderr
    ids, truth = _unlabelled(ds, store, 5)
    good = _write(tmp_path / "good.csv", list(zip(ids, truth, strict=True)))
    before = open(os.path.join(workdir, "labels.json")).read()
    proc = _cli(
        ["import", "--workdir", workdir, good], env={"SSL_JAX_KILL_BEFORE_RENAME": "labels.json"}
    )
    assert proc.returncode == -9
    # The old label set, whole and loadable; at most a stray temporary file beside it.
    assert open(os.path.join(workdir, "labels.json")).read() == before
    assert len(LabelStore.load(os.path.join(workdir, "labels.json"))) == 50
    proc = _cli(["import", "--workdir", workdir, good])
    assert proc.returncode == 0 and "merged 5 new label(s)" in proc.stdout
    out = tmp_path / "export.csv"
    proc = _cli(["export", "--workdir", workdir, str(out)])
    assert proc.returncode == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 55 and {r["source"] for r in rows} == {"dataset", "human"}
    assert all(r["label"] in ds.class_names for r in rows)
    exported = {r["id"]: r["label"] for r in rows}
    assert all(exported[i] == t for i, t in zip(ids, truth, strict=True))
