"""Active learning: which images should a person label next?

Round r (``workdir/active/round_NN/``) brings the run's labels up to
``active.schedule[r]`` and trains on them:

  1. acquire: round 0 keeps the run's labels (``workdir/labels.json``) or, when
     there are none, picks a cold-start set (``active.start``: TypiClust by
     default, no model needed); later rounds score the unlabelled pool with the
     previous round's model and select (``active.strategy``; ``active.start``
     again while the round's label count is <= ``active.start_until``)
     → ``queries.csv``;
  2. label: the ``dataset`` oracle reveals the dataset's labels; the ``human``
     oracle writes ``queries.csv`` and ``contact_sheet.png`` and stops until
     ``python -m ssl_jax label import`` has merged the labels, then the same
     command continues;
  3. train (``active.train``): a linear probe on the frozen self-supervised
     features, or the finetune / selftrain stages in ``round_NN/train/``; the
     last round may train otherwise (``active.final_train``): choose the
     labels with a cheap probe, train the model you keep with self-training;
  4. evaluate on val and test → ``metrics.json``; the model's outputs
     (penultimate features and head) go to ``model.npz`` for the next round.

Every step leaves a file, and a re-run skips what is there, so a killed loop
continues at the round (and, inside fine-tuning or self-training, the step)
where it stopped. Labels live only in ``workdir/labels.json``, saved
atomically.
"""

import copy
import csv
import io
import json
import os
import signal
import time

import jax
import numpy as np

from ssl_jax import acquisition
from ssl_jax.data.labels import LabelStore, atomic_write_json, atomic_write_text
from ssl_jax.evaluators.embed import Embedder
from ssl_jax.stages import common

STAGE = "active"


class WaitingForLabels(Exception):
    """The human oracle's queries are out; the run continues once they are labelled."""


def ssl_features(config, workdir: str, mesh, ds) -> dict:
    """Frozen self-supervised features of pool, val and test (cached in active/)."""
    path = os.path.join(workdir, STAGE, "ssl_features.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return dict(z)
    source = workdir if os.path.isdir(os.path.join(workdir, "pretrain")) else config.init_from
    if not source:
        raise FileNotFoundError(
            f"active learning needs a pretrained encoder: {workdir}/pretrain is missing and "
            "config.init_from is not set"
        )
    model = common.PretrainModel(config, mesh, ds.splits["train"].images.shape[1:], ds.num_classes)
    params, model_state = model.encoder_variables(source, config.seed)
    embed = Embedder(model.objective, model.eval_fn, mesh, batch_size=config.eval.batch_size)
    feats = {s: embed(params, model_state, ds.splits[s].images) for s in ("train", "val", "test")}
    if jax.process_index() == 0:
        tmp = path + ".tmp.npz"
        np.savez(tmp, **feats)
        os.replace(tmp, path)
    return feats


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def round_strategy(ac, r: int) -> str:
    """The selector of round r: ``active.start`` for the cold start and for every
    round whose label count is <= ``active.start_until``, then ``active.strategy``."""
    return ac.start if r == 0 or ac.schedule[r] <= ac.start_until else ac.strategy


def pool_state(
    model: dict, store: LabelStore, feats: dict, config, key, strategy: str
) -> acquisition.Pool:
    """What ``strategy`` reads: the model's probabilities (and MC-dropout ones
    for bald), its penultimate features (coreset, badge) and the
    self-supervised features (typiclust, probcover, and the cold start)."""
    ac = config.active
    labelled = store.label_array() >= 0
    unit = feats["train"] / (np.linalg.norm(feats["train"], axis=1, keepdims=True) + 1e-12)
    if model is None:
        return acquisition.Pool(labelled=labelled, embeddings=unit)
    h, w, b = model["features"], model["w"], model["b"]
    pool = acquisition.Pool(labelled=labelled, probs=_softmax(h @ w + b), embeddings=h)
    if strategy == "bald":
        keep = 1.0 - ac.mc_dropout
        masks = jax.random.bernoulli(key, keep, (ac.mc_passes, *h.shape))
        pool.mc_probs = np.stack([_softmax((h * m / keep) @ w + b) for m in np.asarray(masks)])
    if strategy in ("typiclust", "probcover"):
        pool.embeddings = unit
    return pool


def _options(config, strategy):
    ac = config.active
    if strategy == "typiclust":
        return {"max_clusters": ac.max_clusters, "knn": ac.knn, "restarts": ac.kmeans_restarts}
    if strategy == "probcover":
        return {"delta": ac.probcover_delta, "purity": ac.probcover_purity}
    return {}


def write_queries(path, ids, scores, ds):
    """queries.csv: rank, id, path (folder datasets), score, and an empty label column to fill."""
    pool = ds.splits["train"]
    root = ds.report.get("root", "")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "id", "path", "score", "label"])
    for rank, i in enumerate(ids):
        item = str(pool.ids[i])
        file = os.path.join(root, item) if root else ""
        score = "" if scores is None else f"{scores[rank]:.6g}"
        writer.writerow([rank + 1, item, file, score, ""])
    atomic_write_text(path, out.getvalue())


def read_queries(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def contact_sheet(path, images, titles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, title in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def acquire(config, workdir, rdir, r, store, ds, feats, mesh):
    """Brings the labels up to schedule[r]; raises WaitingForLabels for a person."""
    ac = config.active
    qpath = os.path.join(rdir, "queries.csv")
    target = ac.schedule[r]
    if not os.path.exists(qpath):
        need = target - len(store)
        if need <= 0:
            write_queries(qpath, [], None, ds)
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(config.seed), r)
            prev = os.path.join(workdir, STAGE, f"round_{r - 1:02d}", "model.npz")
            model = dict(np.load(prev)) if r > 0 and len(store) else None
            strategy = round_strategy(ac, r) if model is not None else ac.start
            pool = pool_state(model, store, feats, config, key, strategy)
            if strategy == "probcover":
                opts = dict(_options(config, strategy), num_classes=ds.num_classes)
            else:
                opts = _options(config, strategy)
            ids = acquisition.select(strategy, pool, need, key, mesh=mesh, **opts)
            scores = None
            if strategy in acquisition.SCORES:
                values = pool.mc_probs.transpose(1, 0, 2) if strategy == "bald" else pool.probs
                scores = acquisition.score_pool(strategy, values, mesh)[ids]
            write_queries(qpath, ids, scores, ds)
    queried = read_queries(qpath)
    index_of = {str(item): i for i, item in enumerate(ds.splits["train"].ids)}
    missing = [q for q in queried if index_of[q] not in store.labels]
    if missing and ac.oracle == "dataset":
        truth = ds.splits["train"].labels
        new = {index_of[q]: (int(truth[index_of[q]]), "dataset") for q in missing}
        store.labels.update(new)
        store.save(os.path.join(workdir, "labels.json"))
    elif missing:
        sheet = os.path.join(rdir, "contact_sheet.png")
        if not os.path.exists(sheet):
            idx = [index_of[q] for q in missing[: ac.contact_sheet_items]]
            titles = [f"{k + 1}: {q[-24:]}" for k, q in enumerate(missing)]
            contact_sheet(sheet, ds.splits["train"].images[idx], titles)
        raise WaitingForLabels(
            f"round {r}: {len(missing)} of {len(queried)} queried images need labels.\n"
            f"  look at:   {sheet}\n"
            f"  fill in:   the label column of {qpath} (class names: "
            f"{', '.join(ds.class_names[:20])}{', ...' if len(ds.class_names) > 20 else ''})\n"
            f"  hand back: python -m ssl_jax label import --workdir {workdir} {qpath}\n"
            "  then run this same command again to continue."
        )
    return [index_of[q] for q in queried]


def train_round(config, workdir, rdir, store, ds, feats, mesh, train=None) -> tuple[dict, dict]:
    """(model outputs for the next round, metrics) of a model trained on ``store``
    by ``train`` (default ``active.train``)."""
    ac = config.active
    train = train or ac.train
    labels = store.label_array()
    idx = store.indices()
    if train == "probe":
        probe = common.linear_evaluator(config, num_classes=ds.num_classes)
        split = lambda s: (feats[s], np.asarray(ds.splits[s].labels))
        linear, metrics = probe.fit(
            {
                "train": (feats["train"][idx], labels[idx]),
                "val": split("val"),
                "test": split("test"),
            },
            stats_from=feats["train"] if ac.standardize == "pool" else None,
        )
        model = {
            "features": np.asarray(linear.standardize(feats["train"])),
            "w": np.asarray(linear.w),
            "b": np.asarray(linear.b),
        }
        return model, {"val_acc": metrics["linear_val_acc"], "test_acc": metrics["linear_test_acc"]}
    from ssl_jax.stages import finetune, selftrain
    from ssl_jax.transfer import classifier_outputs

    tdir = os.path.join(rdir, "train")
    os.makedirs(tdir, exist_ok=True)
    store.save(os.path.join(tdir, "labels.json"))  # this round's labels, for its stages
    sub = copy.deepcopy(config)
    with sub.unlocked():
        sub.init_from = config.init_from or workdir
    results = finetune.run(sub, tdir, mesh)
    best = os.path.join(tdir, "finetune", "best")
    if train == "selftrain":
        results = selftrain.run(sub, tdir, mesh)
        best = os.path.join(tdir, "selftrain", "best")
    model = classifier_outputs(sub, best, mesh, ds)
    return model, {"val_acc": results["val_acc"], "test_acc": results["test_acc"]}


def check(config):
    """Refuse bad settings before any stage runs (called by the command line too)."""
    ac = config.active
    counts = list(ac.schedule)
    if (
        not counts
        or counts[0] < 1
        or any(b <= a for a, b in zip(counts[:-1], counts[1:], strict=True))
    ):
        raise ValueError(
            f"active.schedule must be strictly rising positive label counts, got {ac.schedule}"
        )
    if ac.start_until < 0:
        raise ValueError(f"active.start_until must be >= 0 (a label count), got {ac.start_until}")
    if ac.kmeans_restarts < 1:
        raise ValueError(f"active.kmeans_restarts must be >= 1, got {ac.kmeans_restarts}")
    trainers = ("probe", "finetune", "selftrain")
    if ac.train not in trainers:
        raise ValueError(f"unknown active.train {ac.train!r}: probe, finetune or selftrain")
    if ac.final_train not in ("", *trainers):
        raise ValueError(
            f"unknown active.final_train {ac.final_train!r}: probe, finetune, selftrain "
            "or '' (as active.train)"
        )
    if ac.standardize not in ("labelled", "pool"):
        raise ValueError(f"unknown active.standardize {ac.standardize!r}: labelled or pool")
    used = {ac.train, ac.final_train}
    if used & {"finetune", "selftrain"}:
        from ssl_jax.stages import finetune, selftrain

        finetune.check(config)
        if "selftrain" in used:
            selftrain.check(config)


def round_trainer(ac, r: int) -> str:
    """How round r trains: ``active.train``, or ``active.final_train`` in the last round."""
    return ac.final_train if ac.final_train and r == len(ac.schedule) - 1 else ac.train


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    ac = config.active
    check(config)
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    feats = ssl_features(config, workdir, mesh, ds)
    rounds = []
    for r in range(len(ac.schedule)):
        rdir = os.path.join(sdir, f"round_{r:02d}")
        os.makedirs(rdir, exist_ok=True)
        done = os.path.join(rdir, "done.json")
        if os.path.exists(done):
            with open(done) as f:
                rounds.append(json.load(f))
            continue
        t0 = time.perf_counter()
        queried = acquire(config, workdir, rdir, r, store, ds, feats, mesh)
        atomic_write_json(
            os.path.join(rdir, "received.json"),
            {str(ds.splits["train"].ids[i]): ds.class_names[store.labels[i][0]] for i in queried},
        )
        train = round_trainer(ac, r)
        model, metrics = train_round(config, workdir, rdir, store, ds, feats, mesh, train)
        if jax.process_index() == 0:
            np.savez(os.path.join(rdir, "model.npz"), **model)
        strategy = round_strategy(ac, r) if r or queried else "labels.json"
        result = dict(
            metrics,
            round=r,
            num_labels=len(store),
            strategy=strategy,
            train=train,
            wall_s=time.perf_counter() - t0,
        )
        atomic_write_json(os.path.join(rdir, "metrics.json"), result)
        atomic_write_json(done, result)
        if os.environ.get("SSL_JAX_KILL_AFTER_ROUND") == str(r):  # for the resume tests
            os.kill(os.getpid(), signal.SIGKILL)
        print(
            f"active round {r}: {len(store)} labels ({strategy}), {train}, "
            f"test acc {100 * metrics['test_acc']:.2f}%"
        )
        rounds.append(result)
    results = {"strategy": ac.strategy, "rounds": rounds}
    common.mark_done(workdir, STAGE, results)
    return results
