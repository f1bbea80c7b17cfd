"""What every stage shares: its directory and done marker, the dataset, the
label store, and the pretraining model built from config."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, optim, parallel
from ssl_jax import pp as pp_lib
from ssl_jax.data import sources
from ssl_jax.data.labels import LabelStore, atomic_write_json
from ssl_jax.evaluators import get_evaluator
from ssl_jax.objectives import get_objective
from ssl_jax.state import TrainState


def stage_dir(workdir: str, stage: str) -> str:
    path = os.path.join(workdir, stage)
    os.makedirs(path, exist_ok=True)
    return path


def done_results(workdir: str, stage: str) -> dict | None:
    """The results of a finished stage, or None if it has not finished."""
    path = os.path.join(workdir, stage, "done.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["results"]


def mark_done(workdir: str, stage: str, results: dict):
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, stage, "results.json"), results)
        atomic_write_json(os.path.join(workdir, stage, "done.json"), {"results": results})


@functools.lru_cache(maxsize=2)
def _load(name, data_dir, image_size, val_size, seed, channels):
    return sources.load(
        name,
        data_dir=data_dir or None,
        image_size=image_size or None,
        val_size=val_size,
        seed=seed,
        channels=channels or None,
    )


def dataset(config, workdir: str | None = None) -> sources.Dataset:
    """The configured dataset (loaded once per process). Given a workdir, its
    report (sizes, skipped unreadable files, empty classes) is written there as
    ``data_report.json`` and summarised on stdout the first time."""
    d = config.data
    ds = _load(d.name, d.data_dir, d.image_size, d.val_size, d.seed, d.channels)
    path = os.path.join(workdir or "", "data_report.json")
    if workdir and not os.path.exists(path) and jax.process_index() == 0:
        sizes = {k: len(v.labels) for k, v in ds.splits.items()}
        report = {
            "name": ds.name,
            "sizes": sizes,
            "num_classes": ds.num_classes,
            "class_names": ds.class_names,
            **ds.report,
        }
        atomic_write_json(path, report)
        shape = "x".join(map(str, ds.splits["train"].images.shape[1:]))
        line = f"data {ds.name}: {sizes} images of {shape}, {ds.num_classes} classes"
        if ds.report.get("num_skipped"):
            line += f"; skipped {ds.report['num_skipped']} unreadable file(s), listed in {path}"
        if ds.report.get("empty_classes"):
            line += f"; empty classes: {ds.report['empty_classes']}"
        print(line)
    return ds


def label_store(config, workdir: str, ds) -> LabelStore:
    """The run's labels: loaded from ``workdir/labels.json`` when present (it may
    hold a human's labels), otherwise chosen from config and saved."""
    path = os.path.join(workdir, "labels.json")
    if os.path.exists(path):
        store = LabelStore.load(path)
        if store.pool_size != len(ds.splits["train"].labels):
            raise ValueError(
                f"{path} is for a pool of {store.pool_size} items, but the "
                f"dataset's train pool has {len(ds.splits['train'].labels)}"
            )
        return store
    lc = config.labels
    store = LabelStore.choose(
        ds.splits["train"].labels, per_class=lc.per_class, count=lc.count, seed=lc.seed
    )
    if jax.process_index() == 0:
        store.save(path)
    return store


class PretrainModel:
    """Objective, augmentation and optimizer of the pretraining run, built once."""

    def __init__(self, config, mesh, image_shape, num_classes: int = 0):
        self.config, self.mesh = config, mesh
        self.objective = get_objective(config, num_classes=num_classes)
        missing = [v for v in self.objective.views if v not in config.pp.views]
        if missing:
            raise ValueError(f"objective {config.objective.name!r} needs pp.views {missing}")
        views = {v: config.pp.views[v] for v in self.objective.views}
        chunk = pp_lib.chunk_size_for(config.pp.chunk_size)
        self.views_fn = pp_lib.build_views(views, chunk_size=chunk, mesh=mesh)
        self.eval_fn = pp_lib.build(config.pp.eval, chunk_size=None)
        pc = config.pretrain
        if hasattr(self.objective, "optimizer"):  # objectives with their own (GAN: two)
            self.tx, self.lr = self.objective.optimizer(pc)
        else:
            self.tx, self.lr = optim.make(pc.optimizer, pc.steps, pc.batch_size)
        self.image_shape = tuple(image_shape)

    def inputs(self, key, batch: dict) -> dict:
        """The objective's input: its augmented views and the items' labels
        (-1 = unlabelled; all -1 when the batch carries none)."""
        images = batch["image"]
        labels = batch.get("label")
        if labels is None:
            labels = jnp.full(images.shape[0], -1, jnp.int32)
        return {**self.views_fn(key, images), "label": labels}

    def init_state(self, seed: int) -> TrainState:
        n = self.mesh.devices.size

        def init(rng):
            k_init, k_views, k_state = jax.random.split(rng, 3)
            dummy = {"image": jnp.zeros((n, *self.image_shape), jnp.uint8)}
            variables = self.objective.init(k_init, self.inputs(k_views, dummy))
            variables = dict(variables)
            params = variables.pop("params")
            return TrainState.create(params=params, model_state=variables, tx=self.tx, rng=k_state)

        return jax.jit(init, out_shardings=parallel.replicated(self.mesh))(jax.random.PRNGKey(seed))

    def encoder_variables(self, source: str, seed: int):
        """(params, model_state) of a pretraining run: ``source`` is its workdir
        (holding pretrain/checkpoints) or a checkpoint directory."""
        path = os.path.join(source, "pretrain", "checkpoints")
        path = path if os.path.isdir(path) else source
        ckpt = checkpoint.Checkpointer(path)
        if ckpt.latest_step() is None:
            raise FileNotFoundError(
                f"no pretraining checkpoint under {source}; run the pretrain stage first"
            )
        state, _ = ckpt.restore(self.init_state(seed))
        ckpt.close()
        return state.params, state.model_state


def labelled_features(embed, params, model_state, ds, store, val_items: int = 0) -> dict:
    """Features of the labelled items (as 'train') and of val and test."""
    idx = store.indices()
    train = ds.splits["train"]
    out = {"train": (embed(params, model_state, train.images[idx]), store.label_array()[idx])}
    for split in ("val", "test"):
        s = ds.splits[split]
        n = min(len(s.images), val_items) if val_items else len(s.images)
        if n:
            out[split] = (embed(params, model_state, s.images[:n]), np.asarray(s.labels[:n]))
    return out


def knn_evaluator(config, **kw):
    """The kNN evaluator of ``config.eval.knn``."""
    return get_evaluator("knn", k=config.eval.knn.k, temperature=config.eval.knn.temperature, **kw)


def linear_evaluator(config, **kw):
    """The linear probe of ``config.eval.linear``; ``kw`` overrides its settings."""
    lc = config.eval.linear
    settings = dict(
        l2_grid=tuple(lc.l2_grid),
        steps=lc.steps,
        lr=lc.lr,
        method=lc.method,
        class_balanced=lc.class_balanced,
    )
    return get_evaluator("linear_probe", **{**settings, **kw})
