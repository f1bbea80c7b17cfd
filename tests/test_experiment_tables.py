"""The experiment scripts' bookkeeping: records kept per run, tables from them."""

import json
import os

import pytest

from experiments import ssl_mnist


def _fake_run(root, objective, seed, acc):
    wd = ssl_mnist.workdir(root, objective, seed)
    os.makedirs(os.path.join(wd, "probe"))
    os.makedirs(os.path.join(wd, "pretrain"))
    probe = {key: acc for key, _ in ssl_mnist.METRICS}
    with open(os.path.join(wd, "probe", "results.json"), "w") as f:
        json.dump(probe, f)
    with open(os.path.join(wd, "pretrain", "results.json"), "w") as f:
        json.dump({"wall_s": 50.0}, f)
    with open(os.path.join(wd, "wall_s.json"), "w") as f:
        json.dump({"wall_s": 60.0 * (seed + 1), "command": ["x"], "commit": "abc1234"}, f)


def test_ssl_mnist_table_is_kept_in_records(tmp_path):
    root, records = str(tmp_path / "runs"), str(tmp_path / "records")
    _fake_run(root, "rbm", 0, 0.90)
    _fake_run(root, "rbm", 1, 0.92)
    text = ssl_mnist.table(root, records, ["rbm", "gan"], [0, 1])
    assert "| rbm | 91.00 ± 1.41 |" in text
    assert "| 1.5 ± 0.7 | 0 1 | `abc1234` |" in text
    assert "gan" not in text  # never run: no row
    saved = json.load(open(os.path.join(records, "rbm_s1.json")))
    assert saved["seed"] == 1 and saved["all/linear_test_acc"] == 0.92
    # The run directories can go: the table is rebuilt from the records alone.
    os.rename(root, root + ".gone")
    assert ssl_mnist.table(root, records, ["rbm"], [0, 1]) == text


def test_ssl_mnist_does_not_rerun_a_recorded_run(tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    (records / "rbm_s0.json").write_text("{}")
    calls = []
    monkeypatch.setattr(ssl_mnist.subprocess, "run", lambda *a, **k: calls.append(a))
    ssl_mnist.run_one(str(tmp_path / "runs"), str(records), "rbm", 0, 10, [])
    assert calls == []


def test_few_labels_variant_rows(tmp_path):
    from experiments import few_labels_mnist as fl

    def result(*parts, acc):
        os.makedirs(os.path.join(tmp_path, *parts[:-1]), exist_ok=True)
        with open(os.path.join(tmp_path, *parts), "w") as f:
            json.dump({"test_acc": acc, "wall_s": 10.0}, f)

    for seed, acc in ((0, 0.97), (1, 0.99)):
        result(f"transfer_s{seed}", "selftrain", "results.json", acc=acc - 0.01)
        result(f"selftrain-ema_s{seed}", "selftrain", "results.json", acc=acc)
    variants = [fl.parse_variant("ema:--config.selftrain.ema_decay=0.999 --config.x=1")]
    assert variants == [("ema", ["--config.selftrain.ema_decay=0.999", "--config.x=1"])]
    text = fl.table(str(tmp_path), str(tmp_path / "none"), [0, 1], variants)
    assert "| SimCLR pretraining + fine-tuning + self-training | 97.00 ± 1.41 |" in text
    assert (
        "self-training, ema: `--config.selftrain.ema_decay=0.999 --config.x=1` | 98.00 ± 1.41 "
        "| 97.00, 99.00 |" in text
    )
    for bad in ("no_colon", ":--config.a=1", "a b:--config.a=1"):
        with pytest.raises(SystemExit, match="NAME:OVERRIDES"):
            fl.parse_variant(bad)


def test_active_mnist_strategy_names():
    from experiments import active_mnist

    assert active_mnist.parse_strategy("badge") == ("random", "badge", False)
    assert active_mnist.parse_strategy("probcover") == ("probcover", "probcover", False)
    assert active_mnist.parse_strategy("typiclust-margin") == ("typiclust", "margin", True)
    for bad in ("badg", "typiclust-", "typiclust-bogus"):
        with pytest.raises(Exception, match="unknown strategy"):
            active_mnist.parse_strategy(bad)


def test_active_mnist_table_from_round_results(tmp_path):
    from experiments import active_mnist

    def fake(strategy, seed, accs, wall):
        wd = tmp_path / f"{strategy}_s{seed}"
        os.makedirs(wd / "active")
        rounds = [{"num_labels": n, "test_acc": a} for n, a in accs.items()]
        (wd / "active" / "results.json").write_text(json.dumps({"rounds": rounds}))
        (wd / "wall_s.json").write_text(json.dumps({"wall_s": wall}))

    fake("random", 0, {10: 0.50, 20: 0.60}, 100.0)
    fake("random", 1, {10: 0.70, 20: 0.80}, 300.0)
    fake("badge", 0, {10: 0.55}, 50.0)  # one seed, stopped after one round
    data = active_mnist.curves(str(tmp_path), ["random", "badge", "margin"], [0, 1])
    assert set(data) == {"random", "badge"}  # margin never ran
    lines = active_mnist.table(data, str(tmp_path), [0, 1]).splitlines()
    assert lines[0] == "| strategy | 10 | 20 | wall (s), mean |"
    assert lines[2] == "| random | 60.00 ± 14.14 | 70.00 ± 14.14 | 200 |"
    assert lines[3] == "| badge | 55.00 | — | 50 |"


def test_tta_table_gains_are_per_run_differences():
    from experiments import tta_eval

    rows = {
        "a": {("val", 0): 0.98, ("val", 4): 0.99, ("test", 0): 0.97, ("test", 4): 0.975},
        "b": {("val", 0): 0.96, ("val", 4): 0.96, ("test", 0): 0.99, ("test", 4): 0.995},
    }
    text = tta_eval.table(rows, [0, 4]).splitlines()
    assert text[0] == (
        "| workdir | val acc, 0 views | val acc, 4 views | test acc, 0 views | test acc, 4 views |"
    )
    assert text[2] == "| `a` | 98.00 | 99.00 | 97.00 | 97.50 |"
    assert text[-1] == "| mean change from 0 views | +0.00 | +0.50 | +0.00 | +0.50 |"
