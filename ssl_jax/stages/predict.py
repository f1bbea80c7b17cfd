"""Labels for the whole repository: the final classifier over every pool item.

Writes ``workdir/predictions.csv`` (atomically), one row per item of the train
pool, least confident first, with the items that carry a given label after
the predicted ones:

    id           item id (the file path, relative to the folder, for folder datasets)
    label        the label to use: the given one where there is one, else the prediction
    source       human | dataset (given labels, as the label store records them) | predicted
    confidence   the model's top class probability
    entropy      of the model's class probabilities (nats)
    model_label  the model's prediction, also for items with a given label

Labels are class names. The model is the self-training stage's best if it ran,
else the fine-tuning stage's best.
"""

import csv
import io
import os

import jax
import numpy as np

from ssl_jax import transfer
from ssl_jax.data.labels import atomic_write_text
from ssl_jax.stages import common

STAGE = "predict"
COLUMNS = ("id", "label", "source", "confidence", "entropy", "model_label")


def final_model_dir(workdir: str) -> str:
    for stage in ("selftrain", "finetune"):
        path = os.path.join(workdir, stage, "best")
        if common.done_results(workdir, stage) is not None and os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"no trained classifier in {workdir}: the predict stage needs the finetune "
        "or selftrain stage to have run"
    )


def prediction_rows(ids, probs, store, class_names) -> list[dict]:
    """One row per item, sorted: predicted items by rising confidence, then
    items with a given label (kept exactly as given)."""
    conf = probs.max(-1)
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=-1)
    pred = probs.argmax(-1)
    rows = []
    for i in range(len(ids)):
        given = store.labels.get(i)
        rows.append(
            {
                "id": str(ids[i]),
                "label": class_names[given[0] if given else pred[i]],
                "source": given[1] if given else "predicted",
                "confidence": float(conf[i]),
                "entropy": float(entropy[i]),
                "model_label": class_names[pred[i]],
            }
        )
    rows.sort(key=lambda r: (r["source"] != "predicted", r["confidence"]))
    return rows


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    common.stage_dir(workdir, STAGE)
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    pool = ds.splits["train"]
    model, params, model_state, _ = transfer.load_best(config, final_model_dir(workdir), mesh, ds)
    predictor = transfer.predictor(config, model, mesh, config.predict.batch_size)
    probs = predictor(params, model_state, pool.images)
    rows = prediction_rows(pool.ids, probs, store, ds.class_names)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {**r, "confidence": f"{r['confidence']:.6f}", "entropy": f"{r['entropy']:.6f}"}
        )
    path = os.path.join(workdir, "predictions.csv")
    if jax.process_index() == 0:
        atomic_write_text(path, out.getvalue())
    predicted = np.array([i not in store.labels for i in range(len(pool))])
    conf = probs.max(-1)
    results = {
        "path": path,
        "num_items": len(pool),
        "num_predicted": int(predicted.sum()),
        "mean_confidence": float(conf[predicted].mean()) if predicted.any() else None,
        "fraction_confident_0.95": float((conf[predicted] >= 0.95).mean())
        if predicted.any()
        else None,
    }
    # Where the dataset knows the hidden labels (experiments), how right the predictions are.
    known = predicted & (pool.labels >= 0)
    if known.any():
        results["predicted_acc"] = float((probs.argmax(-1)[known] == pool.labels[known]).mean())
    print(f"predictions for {len(pool)} items: {path}")
    common.mark_done(workdir, STAGE, results)
    return results
