"""End to end: the whole default pipeline on small real data, through the CLI,
plus kill-and-resume and config errors."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.util import REPO

TINY = [
    "--config.data.image_size=8",
    "--config.data.val_size=200",
    "--config.labels.per_class=5",
    "--config.pp.views.view1=random_resized_crop(8, scale=(0.5, 1.0))|value_range(-1, 1)",
    "--config.pp.views.view2=random_resized_crop(8, scale=(0.5, 1.0))|value_range(-1, 1)",
    "--config.objective.kw.proj_hidden_dim=32",
    "--config.objective.kw.proj_dim=16",
    "--config.pretrain.steps=6",
    "--config.pretrain.batch_size=64",
    "--config.pretrain.log_every=2",
    "--config.pretrain.ckpt_every=2",
    "--config.pretrain.eval_every=3",
    "--config.pretrain.eval_val_items=100",
    "--config.eval.linear.steps=50",
    "--config.report.embedding=pca",
    "--config.report.embedding_points=200",
]


def cli(args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_jax", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def params_of(workdir):
    from ssl_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, "pretrain", "checkpoints"))
    import orbax.checkpoint as ocp

    out = ckpt.manager.restore(
        ckpt.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    ckpt.close()
    return out.state["params"]


@pytest.fixture
def messy_digits(digits_folder, tmp_path):
    """The digits folder plus a corrupt image and an empty class folder."""
    root = tmp_path / "messy"
    shutil.copytree(digits_folder, root)
    (root / "train" / "3" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    (root / "train" / "zz_empty").mkdir()
    return str(root)


@pytest.mark.slow
def test_default_pipeline_end_to_end_on_digits(messy_digits, tmp_path):
    workdir = str(tmp_path / "run")
    proc = cli(
        [
            "--config",
            "configs/simclr.py:mnist",
            "--workdir",
            workdir,
            f"--config.data.name=folder:{messy_digits}",
            *TINY,
        ]
    )
    assert "skipped 1 unreadable file(s)" in proc.stdout and "zz_empty" in proc.stdout
    # The first line names who runs each op the CPU kernels cover.
    ops = ", ".join(f"{op} by (\\w+)" for op in ("convolutions", "attention", "GELU", "LayerNorm"))
    assert re.search(r"cpu device\(s\), " + ops + "\n", proc.stdout), proc.stdout[:500]
    with open(os.path.join(workdir, "data_report.json")) as f:
        assert json.load(f)["skipped_files"] == [os.path.join("train", "3", "corrupt.png")]
    assert "| labelled (50) |" in proc.stdout and "| all (" in proc.stdout
    for path in [
        "config.json",
        "labels.json",
        "report.md",
        "plots/loss.png",
        "plots/knn_accuracy.png",
        "plots/embedding.png",
        "pretrain/metrics.jsonl",
        "pretrain/done.json",
        "probe/done.json",
        "report/done.json",
    ]:
        assert os.path.exists(os.path.join(workdir, path)), path
    assert glob.glob(os.path.join(workdir, "pretrain", "events.out.tfevents.*"))
    assert sorted(os.listdir(os.path.join(workdir, "pretrain", "checkpoints"))) == ["4", "6"]
    with open(os.path.join(workdir, "probe", "results.json")) as f:
        probe = json.load(f)
    # Even 6 steps of a tiny CNN give features far above chance (10%) on digits.
    assert probe["all/linear_test_acc"] > 0.5
    assert 0.0 <= probe["labelled/knn_test_acc"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "pretrain", "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    report = open(os.path.join(workdir, "report.md")).read()
    assert "linear probe test acc" in report and "plots/embedding.png" in report
    # A re-run finds every stage done and only prints the table again.
    again = cli(["--workdir", workdir, f"--config.data.name=folder:{messy_digits}", *TINY])
    assert "| labelled (50) |" in again.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(digits_folder, tmp_path):
    args = [f"--config.data.name=folder:{digits_folder}", *TINY, "--config.stages=('pretrain',)"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    cli(["--workdir", full, *args])
    proc = cli(["--workdir", killed, *args], env={"SSL_JAX_KILL_AFTER_STEP": "2"}, check=False)
    assert proc.returncode == -9  # SIGKILL right after the step-2 checkpoint
    assert not os.path.exists(os.path.join(killed, "pretrain", "done.json"))
    resumed = cli(["--workdir", killed, *args])
    assert "resuming pretraining at step 2" in resumed.stdout
    a, b = params_of(full), params_of(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.pretrain.stepz=3", "stepz"),
        ("--config.pretrain.steps=abc", "steps"),
        ("--config.stages=('pretrain','probez')", "unknown stage 'probez'"),
        ("--config.eval.linear.method=newton", "unknown eval.linear.method 'newton'"),
        ("--config.probe.label_sets=('labelled','every')", "label_sets entry 'every'"),
        ("--config.eval.tta_views=-2", "eval.tta_views must be an integer >= 0"),
        ("--config.eval.tta_views=2 --config.pp.weak=", "eval.tta_views > 0 needs pp.weak"),
        (  # a later stage's setting: refused before the first stage starts
            "--config.stages=('pretrain','selftrain') --config.selftrain.pseudo_labels=ema",
            "needs selftrain.ema_decay > 0",
        ),
        ("--config.report.embedding=umap", "unknown report.embedding 'umap'"),
        (
            "--config.stages=('pretrain','selftrain') --config.selftrain.bn_joint=True",
            "bn_joint needs selftrain.bn_train=True",
        ),
        (
            "--config.stages=('pretrain','selftrain') --config.selftrain.alignment_momentum=1.0",
            "alignment_momentum must be in [0, 1)",
        ),
        (
            "--config.stages=('selftrain',) --config.selftrain.class_threshold_momentum=-1",
            "class_threshold_momentum must be in [0, 1)",
        ),
        (
            "--config.stages=('pretrain','active') --config.active.kmeans_restarts=0",
            "kmeans_restarts must be >= 1",
        ),
    ],
)
def test_bad_override_is_one_clear_error(override, message, tmp_path):
    proc = cli(["--workdir", str(tmp_path), *override.split()], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "config.json"))


def test_stages_are_found_by_module_name():
    from ssl_jax import stages

    assert stages.names() == sorted(
        ["pretrain", "probe", "finetune", "selftrain", "active", "predict", "report"]
    )
    assert stages.get_stage("probe").STAGE == "probe"
    for not_a_stage in ("common", "loop", "nope"):
        with pytest.raises(ValueError, match=f"unknown stage '{not_a_stage}'"):
            stages.get_stage(not_a_stage)


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(
    digits_folder, tmp_path
):
    workdir = str(tmp_path / "nan")
    # lr 0 for the first step (warm-up), then 1e12: the parameters blow up a step or two later.
    proc = cli(
        [
            "--workdir",
            workdir,
            f"--config.data.name=folder:{digits_folder}",
            *TINY,
            "--config.pretrain.ckpt_every=1",
            "--config.pretrain.log_every=1",
            "--config.pretrain.optimizer.name=sgd",
            "--config.pretrain.optimizer.lr=1e12",
            "--config.pretrain.optimizer.warmup_steps=3",
        ],
        check=False,
    )
    assert proc.returncode == 1
    assert "error: non-finite loss at step" in proc.stderr and "Traceback" not in proc.stderr
    assert "The last good checkpoint (step " in proc.stderr  # ckpt_every=1: one was written
    assert not os.path.exists(os.path.join(workdir, "pretrain", "done.json"))
    leaves = jax.tree.leaves(params_of(workdir))
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
