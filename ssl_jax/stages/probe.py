"""Frozen-feature evaluation of the pretrained encoder: kNN and a linear probe,
with the run's few labels and (for reference) with every pool label."""

import os

import numpy as np

from ssl_jax.evaluators.embed import Embedder
from ssl_jax.stages import common

STAGE = "probe"


def check(config):
    """Refuse bad settings before any stage runs (called by the command line too)."""
    for label_set in config.probe.label_sets:
        if label_set not in ("labelled", "all"):
            raise ValueError(f"unknown probe.label_sets entry {label_set!r}: labelled or all")


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    check(config)
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    pool = ds.splits["train"]
    model = common.PretrainModel(config, mesh, pool.images.shape[1:], ds.num_classes)
    params, model_state = model.encoder_variables(workdir, config.seed)
    embed = Embedder(model.objective, model.eval_fn, mesh, batch_size=config.eval.batch_size)

    feats = common.labelled_features(embed, params, model_state, ds, store)
    evaluators = [common.knn_evaluator(config), common.linear_evaluator(config)]
    results = {}
    for label_set in config.probe.label_sets:
        if label_set == "labelled":
            train = feats["train"]
        else:  # "all" (check refuses anything else)
            known = pool.labels >= 0
            train = (embed(params, model_state, pool.images[known]), pool.labels[known])
        for ev in evaluators:
            out = ev.run({**feats, "train": train})
            results.update({f"{label_set}/{k}": v for k, v in out.items()})
        results[f"{label_set}/num_labels"] = len(train[1])
    if "test" in feats:  # for the report's 2-D embedding plot
        x, y = feats["test"]
        n = min(len(x), config.report.embedding_points)
        np.savez(os.path.join(sdir, "test_features.npz"), features=x[:n], labels=y[:n])
    common.mark_done(workdir, STAGE, results)
    return results
