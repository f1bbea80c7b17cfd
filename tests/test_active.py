"""The active-learning loop through the CLI on real 8×8 digits: rounds, resume
after a kill, and the human round trip (queries.csv → label import → continue)."""

import csv
import json
import os
import shutil

import pytest

from tests.test_pipeline import TINY, cli
from tests.test_transfer_pipeline import TRANSFER

NO_LABELS = [a for a in TINY if not a.startswith("--config.labels")] + [
    "--config.labels.per_class=0",
    "--config.labels.count=0",
]


@pytest.fixture(scope="module")
def pretrained(digits_folder, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("active") / "pretrained")
    cli(
        [
            "--workdir",
            workdir,
            f"--config.data.name=folder:{digits_folder}",
            *NO_LABELS,
            "--config.stages=('pretrain',)",
        ]
    )
    return workdir


def _active(folder, workdir, *extra, schedule="(10, 20, 30)", env=None, check=True):
    # A tuple override given twice is concatenated by ml_collections: give it once.
    args = [
        "--config",
        "configs/active.py:mnist",
        "--workdir",
        workdir,
        f"--config.data.name=folder:{folder}",
        *NO_LABELS,
        "--config.stages=('pretrain', 'active', 'report')",
        f"--config.active.schedule={schedule}",
        "--config.active.strategy=margin",
        "--config.active.max_clusters=10",
        *extra,
    ]
    return cli(args, env=env, check=check)


def _queries(workdir, r):
    with open(os.path.join(workdir, "active", f"round_{r:02d}", "queries.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dataset_oracle_rounds_and_resume_after_a_kill(pretrained, digits_folder, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    shutil.copytree(pretrained, full)
    shutil.copytree(pretrained, killed)
    proc = _active(digits_folder, full)
    assert "active round 2: 30 labels (margin)" in proc.stdout
    with open(os.path.join(full, "labels.json")) as f:
        items = json.load(f)["items"]
    assert len(items) == 30 and {d["source"] for d in items} == {"dataset"}
    seen = set()
    for r in range(3):
        ids = [q["id"] for q in _queries(full, r)]
        assert len(ids) == 10 and not seen & set(ids)  # never an already labelled item
        seen |= set(ids)
        with open(os.path.join(full, "active", f"round_{r:02d}", "metrics.json")) as f:
            m = json.load(f)
        assert m["num_labels"] == 10 * (r + 1) and 0.0 <= m["test_acc"] <= 1.0
    assert _queries(full, 0)[0]["score"] == ""  # the typiclust cold start has no score
    assert float(_queries(full, 1)[0]["score"]) <= 0  # margin scores are -(p1 - p2)
    assert "## Active learning (margin)" in open(os.path.join(full, "report.md")).read()
    # Killed right after round 0, then resumed: the same queries in every round.
    proc = _active(digits_folder, killed, env={"SSL_JAX_KILL_AFTER_ROUND": "0"}, check=False)
    assert proc.returncode == -9
    round0 = os.path.getmtime(os.path.join(killed, "active", "round_00", "done.json"))
    proc = _active(digits_folder, killed)
    assert "active round 0" not in proc.stdout and "active round 1" in proc.stdout
    assert os.path.getmtime(os.path.join(killed, "active", "round_00", "done.json")) == round0
    for r in range(3):
        assert _queries(killed, r) == _queries(full, r)


@pytest.mark.slow
def test_human_oracle_round_trip(pretrained, digits_folder, tmp_path):
    workdir = str(tmp_path / "human")
    shutil.copytree(pretrained, workdir)
    extra = ("--config.active.oracle=human",)
    for r in range(2):
        proc = _active(digits_folder, workdir, *extra, schedule="(10, 20)")
        assert proc.returncode == 0 and "waiting for labels" in proc.stdout
        assert f"round {r}: 10 of 10 queried images need labels" in proc.stdout
        rdir = os.path.join(workdir, "active", f"round_{r:02d}")
        assert os.path.exists(os.path.join(rdir, "contact_sheet.png"))
        # A person fills in the label column (here: the class folder of each file).
        path = os.path.join(rdir, "queries.csv")
        rows = _queries(workdir, r)
        assert all(os.path.exists(q["path"]) for q in rows)  # real files to look at
        for q in rows:
            q["label"] = q["id"].split("/")[-2]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        proc = cli(["label", "import", "--workdir", workdir, path])
        assert "merged 10 new label(s)" in proc.stdout
    proc = _active(digits_folder, workdir, *extra, schedule="(10, 20)")
    assert "active round 1: 20 labels (margin)" in proc.stdout
    with open(os.path.join(workdir, "labels.json")) as f:
        items = json.load(f)["items"]
    assert len(items) == 20 and {d["source"] for d in items} == {"human"}


@pytest.mark.slow
def test_start_until_switches_from_the_cold_start_strategy(pretrained, digits_folder, tmp_path):
    # TypiClust up to 20 labels, then margin: round 1 picks what an all-TypiClust
    # run picks, round 2 what margin picks from the same 20 labels.
    switch, typiclust = str(tmp_path / "switch"), str(tmp_path / "typiclust")
    shutil.copytree(pretrained, switch)
    shutil.copytree(pretrained, typiclust)
    proc = _active(digits_folder, switch, "--config.active.start_until=20")
    assert "active round 1: 20 labels (typiclust)" in proc.stdout
    assert "active round 2: 30 labels (margin)" in proc.stdout
    _active(digits_folder, typiclust, "--config.active.strategy=typiclust")
    assert _queries(switch, 1) == _queries(typiclust, 1)
    assert _queries(switch, 1)[0]["score"] == ""  # typiclust has no score
    assert float(_queries(switch, 2)[0]["score"]) <= 0  # margin scores are -(p1 - p2)
    assert {q["id"] for q in _queries(switch, 2)} != {q["id"] for q in _queries(typiclust, 2)}


@pytest.mark.slow
def test_final_train_self_trains_the_last_round_only(pretrained, digits_folder, tmp_path):
    workdir = str(tmp_path / "final")
    shutil.copytree(pretrained, workdir)
    extra = (*TRANSFER, "--config.active.final_train=selftrain")
    proc = _active(digits_folder, workdir, *extra, schedule="(10, 20)")
    assert "active round 0: 10 labels (typiclust), probe," in proc.stdout
    assert "active round 1: 20 labels (margin), selftrain," in proc.stdout
    rdir = lambda r: os.path.join(workdir, "active", f"round_{r:02d}")
    metrics = []
    for r in range(2):
        with open(os.path.join(rdir(r), "metrics.json")) as f:
            metrics.append(json.load(f))
    assert [m["train"] for m in metrics] == ["probe", "selftrain"]
    assert not os.path.exists(os.path.join(rdir(0), "train"))  # the probe trains no stage
    with open(os.path.join(rdir(1), "train", "labels.json")) as f:
        assert len(json.load(f)["items"]) == 20  # self-trained on the round's labels
    with open(os.path.join(rdir(1), "train", "selftrain", "results.json")) as f:
        assert metrics[1]["test_acc"] == json.load(f)["test_acc"]
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| 0 | 10 | typiclust | probe |" in report
    assert "| 1 | 20 | margin | selftrain |" in report


@pytest.mark.parametrize("schedule", [(), (0, 10), (10, 10, 20), (20, 10)])
def test_schedule_must_rise(schedule):
    from configs import active as active_config
    from ssl_jax.stages import active

    config = active_config.get_config("mnist")
    active.check(config)  # the config's own schedule passes
    with config.unlocked():
        config.active.schedule = schedule
    with pytest.raises(ValueError, match="strictly rising"):
        active.check(config)


def test_start_until_must_be_a_label_count():
    from configs import active as active_config
    from ssl_jax.stages import active

    config = active_config.get_config("mnist")
    with config.unlocked():
        config.active.start_until = -1
    with pytest.raises(ValueError, match="start_until must be >= 0"):
        active.check(config)


@pytest.mark.parametrize(
    "key, good, bad", [("standardize", "pool", "val"), ("final_train", "selftrain", "selftraining")]
)
def test_active_choices_are_checked(key, good, bad):
    from configs import active as active_config
    from ssl_jax.stages import active

    config = active_config.get_config("mnist")
    with config.unlocked():
        config.active[key] = good
    active.check(config)
    with config.unlocked():
        config.active[key] = bad
    with pytest.raises(ValueError, match=f"unknown active.{key} '{bad}'"):
        active.check(config)


@pytest.mark.parametrize("standardize", ["labelled", "pool"])
def test_probe_round_standardises_by_the_chosen_items(standardize):
    # The features handed to the next round's selector are standardised by the
    # labelled items' statistics or by the whole pool's, as configured.
    from types import SimpleNamespace

    import numpy as np

    from configs import active as active_config
    from ssl_jax.stages import active

    config = active_config.get_config("mnist")
    with config.unlocked():
        config.active.standardize = standardize
        config.eval.linear.steps = 20
    rng = np.random.default_rng(0)
    pool_y = rng.integers(0, 3, 300)
    make = lambda y: (np.eye(8)[y] * 3 + rng.normal(size=(len(y), 8)) + 5).astype(np.float32)
    feats = {"train": make(pool_y), "val": make(pool_y[:50]), "test": make(pool_y[50:100])}
    labelled = np.flatnonzero(pool_y == 0)[:20]  # one class only: far from the pool's mean
    labels = np.full(300, -1, np.int32)
    labels[labelled] = 0
    labels[np.flatnonzero(pool_y == 1)[:5]] = 1
    store = SimpleNamespace(label_array=lambda: labels, indices=lambda: np.flatnonzero(labels >= 0))
    split = lambda y: SimpleNamespace(labels=y)
    ds = SimpleNamespace(
        num_classes=3, splits={"val": split(pool_y[:50]), "test": split(pool_y[50:100])}
    )
    model, metrics = active.train_round(config, None, None, store, ds, feats, None)
    pool_mean = np.abs(model["features"].mean(0)).max()
    labelled_mean = np.abs(model["features"][labels >= 0].mean(0)).max()
    if standardize == "pool":
        assert pool_mean < 1e-4 and labelled_mean > 0.1
    else:
        assert labelled_mean < 1e-4 and pool_mean > 0.1
    assert 0.0 <= metrics["test_acc"] <= 1.0
