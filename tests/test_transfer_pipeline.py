"""pretrain → finetune → selftrain → predict → report through the CLI on real
8×8 digits: the predictions file, human labels kept as given, and exact resume
of a killed fine-tuning and self-training."""

import csv
import json
import os

import jax
import numpy as np
import pytest

from tests.test_pipeline import TINY, cli

STAGES = "--config.stages=('pretrain', 'finetune', 'selftrain', 'predict', 'report')"
TRANSFER = [
    "--config.finetune.batch_size=16",
    "--config.finetune.head.steps=4",
    "--config.finetune.body.steps=4",
    "--config.finetune.eval_every=2",
    "--config.finetune.ckpt_every=2",
    "--config.finetune.log_every=2",
    "--config.selftrain.steps=4",
    "--config.selftrain.labelled_batch=16",
    "--config.selftrain.unlabelled_ratio=3",
    "--config.selftrain.eval_every=2",
    "--config.selftrain.ckpt_every=2",
    "--config.selftrain.log_every=2",
    "--config.selftrain.threshold=0.5",
    "--config.pp.weak=random_resized_crop(8, scale=(0.7, 1.0))|value_range(-1, 1)",
    "--config.pp.strong=random_resized_crop(8, scale=(0.7, 1.0))|rand_augment(2, fill=0)"
    "|cutout(0.5, fill=0)|value_range(-1, 1)",
]


def _args(folder, workdir, stages=STAGES):
    return ["--workdir", workdir, f"--config.data.name=folder:{folder}", *TINY, *TRANSFER, stages]


def _final_params(workdir, stage, sub="checkpoints"):
    import orbax.checkpoint as ocp

    from ssl_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, stage, sub))
    out = ckpt.manager.restore(
        ckpt.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    ckpt.close()
    return out.state["params"]


@pytest.mark.slow
def test_transfer_pipeline_predictions_and_human_labels(digits_folder, tmp_path):
    workdir = str(tmp_path / "run")
    no_predict = "--config.stages=('pretrain', 'finetune', 'selftrain')"
    views = "--config.eval.tta_views=2"  # every stage scores with 2 test-time views too
    cli([*_args(digits_folder, workdir, no_predict), views])
    for stage in ("finetune", "selftrain"):
        with open(os.path.join(workdir, stage, "results.json")) as f:
            res = json.load(f)
        assert 0.0 <= res["test_acc"] <= 1.0 and res["num_labels"] == 50
    # A person labels two more items (one of them against the truth): kept as given.
    with open(os.path.join(workdir, "labels.json")) as f:
        store = json.load(f)
    given = {d["index"] for d in store["items"]}
    new = [i for i in range(store["pool_size"]) if i not in given][:2]
    store["items"] += [
        {"index": new[0], "label": 7, "source": "human"},
        {"index": new[1], "label": 0, "source": "human"},
    ]
    with open(os.path.join(workdir, "labels.json"), "w") as f:
        json.dump(store, f)
    proc = cli([*_args(digits_folder, workdir), views])
    assert "predictions for" in proc.stdout
    with open(os.path.join(workdir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "source", "confidence", "entropy", "model_label"]
    assert len(rows) == store["pool_size"]  # one row per pool item
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["id"].startswith("train/") and r["id"].endswith(".png") for r in rows)
    conf = np.array([float(r["confidence"]) for r in rows])
    ent = np.array([float(r["entropy"]) for r in rows])
    assert (conf >= 0.1 - 1e-6).all() and (conf <= 1).all()  # top probability of 10 classes
    assert (ent >= 0).all() and (ent <= np.log(10) + 1e-5).all()
    sources = [r["source"] for r in rows]
    assert sources.count("dataset") == 50 and sources.count("human") == 2
    predicted = [r for r in rows if r["source"] == "predicted"]
    assert all(r["label"] == r["model_label"] for r in predicted)
    assert [float(r["confidence"]) for r in predicted] == sorted(
        float(r["confidence"]) for r in predicted
    )  # least confident first
    assert sources[: len(predicted)] == ["predicted"] * len(predicted)  # given labels last
    by_id = {r["id"]: r for r in rows}
    from ssl_jax.data.folder import read_folder

    ids = read_folder(digits_folder, image_size=8)[0]["train"][2]
    # The pool is train minus val, in source order; find the human items by their labels.
    humans = [r for r in rows if r["source"] == "human"]
    assert sorted(r["label"] for r in humans) == ["0", "7"]
    assert set(by_id) <= set(ids)
    report = open(os.path.join(workdir, "report.md")).read()
    assert "Fine-tuning" in report and "Self-training" in report


@pytest.mark.slow
def test_killed_finetune_and_selftrain_resume_to_the_same_parameters(digits_folder, tmp_path):
    stages = "--config.stages=('pretrain', 'finetune', 'selftrain')"
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    cli(_args(digits_folder, full, stages))
    for point in ("finetune/body:2", "selftrain:2"):
        proc = cli(
            _args(digits_folder, killed, stages),
            env={"SSL_JAX_KILL_AFTER_STEP": point},
            check=False,
        )
        assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = cli(_args(digits_folder, killed, stages))
    assert "resuming self-training at step 2" in resumed.stdout
    for stage, sub in (("finetune", "best"), ("selftrain", "checkpoints"), ("selftrain", "best")):
        a, b = _final_params(full, stage, sub), _final_params(killed, stage, sub)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
