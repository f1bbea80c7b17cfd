"""Fine-tuning: the classic transfer recipe on the few labelled items.

Phase ``head`` trains a new, zero-initialised linear head on the frozen
pretrained backbone (inference-mode BatchNorm, no backward pass through the
backbone). Phase ``body`` then trains the top ``finetune.body.unfreeze`` layers
of the backbone (-1: all) with the head, at a lower learning rate and with
layer-wise decay (``layer_decay``; MAE's fine-tuning recipe). Frozen
parameters are frozen through optax (``multi_transform`` with ``set_to_zero``),
so they cost no optimizer memory. BatchNorm runs in inference mode by default
(``finetune.bn_train=False``): its statistics, estimated over the whole pool
during pretraining, are better than any a few hundred labelled images give
(measured: with batch statistics of the labelled items, val accuracy drifted
down during training). With ``bn_train`` the unfrozen layers use and update
batch statistics; those of frozen layers are kept as they were. The
pretraining checkpoint is only read: a copy of its backbone is trained.

Batches hold labelled items only (class-balanced by default), weakly
augmented (``pp.weak``); label smoothing and mixup are optional. Every
``eval_every`` steps the val accuracy is measured and the best model so far is
kept (``finetune/best``); its test accuracy is the result. Each phase is
checkpointed and resumes exactly, like every stage.

``finetune.init = "scratch"`` trains the same classifier from random
initialisation instead: the supervised-only baseline.
"""

import os
import time

import jax
import jax.numpy as jnp

from ssl_jax import checkpoint, losses, metrics, optim, parallel, transfer
from ssl_jax import pp as pp_lib
from ssl_jax.data.loader import Loader
from ssl_jax.models import classifier, layer_ids
from ssl_jax.stages import common, loop

STAGE = "finetune"
PHASES = ("head", "body")


def phase_layers(config, params, phase: str):
    """(layer id of every parameter with the head on top, first trainable id)."""
    backbone = layer_ids(config.model.name, params["backbone"])
    top = max(jax.tree.leaves(backbone)) + 1
    layers = {"backbone": backbone, "head": jax.tree.map(lambda _: top, params["head"])}
    if phase == "head":
        return layers, top
    k = config.finetune.body.unfreeze
    return layers, 0 if k < 0 else max(top - k, 0)


def make_step(model, pp_fn, tx_lr, mesh, *, num_classes, frozen_backbone, stats_frozen, fc):
    """finetune_step(state, batch) -> (state, metrics); ``stats_frozen`` is a
    tree of bools over the model state: True where BatchNorm statistics belong
    to a frozen layer and must not change."""

    def finetune_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_aug, k_mix = jax.random.split(rng)
        x = pp_fn(k_aug, batch["image"])
        targets = transfer.soft_targets(batch["label"], num_classes, fc.label_smoothing)
        if fc.mixup_alpha:
            x, targets = transfer.mixup(k_mix, x, targets, fc.mixup_alpha)

        def loss_fn(params):
            logits, new_ms = model.apply(
                {"params": params, **state.model_state},
                x,
                # From scratch there are no pretrained statistics to keep.
                train=fc.bn_train or fc.init == "scratch",
                frozen_backbone=frozen_backbone,
                mutable=list(state.model_state),
            )
            return losses.soft_xent(logits, targets), (logits, new_ms)

        (loss, (logits, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_ms = jax.tree.map(
            lambda frozen, old, new: jnp.where(frozen, old, new),
            stats_frozen,
            state.model_state,
            dict(new_ms),
        )
        new, finite = loop.guard_finite(
            loss, state.apply_gradients(grads, model_state=new_ms), state
        )
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return new, {"loss": loss, "train_acc": acc, "lr": tx_lr(state.step), "finite": finite}

    repl = parallel.replicated(mesh)
    return jax.jit(
        finetune_step,
        in_shardings=(repl, parallel.data_sharded(mesh)),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def check(config):
    """Refuse bad settings before any stage runs (called by the command line too)."""
    if config.finetune.init not in ("pretrain", "scratch"):
        raise ValueError(f"unknown finetune.init {config.finetune.init!r}: pretrain or scratch")


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    fc = config.finetune
    check(config)
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    if not len(store):
        raise ValueError("fine-tuning needs labelled items; the label store is empty")
    pool = ds.splits["train"]
    shape = pool.images.shape[1:]
    model = classifier.build(config, ds.num_classes)
    if fc.init == "pretrain":
        backbone = transfer.pretrained_backbone(config, workdir, mesh, ds)
    elif fc.init == "scratch":
        backbone = None
    else:
        raise ValueError(f"unknown finetune.init {fc.init!r}: pretrain or scratch")
    labels = store.label_array()
    chunk = pp_lib.chunk_size_for(config.pp.chunk_size)
    weak = pp_lib.build(config.pp.weak or config.pp.eval, chunk_size=chunk, mesh=mesh)
    predictor = transfer.predictor(config, model, mesh)
    best = transfer.Best(os.path.join(sdir, "best"))
    writer = metrics.MetricWriter(sdir)
    t0 = time.perf_counter()
    variables, offset = None, 0
    try:
        for phase in PHASES:
            pcfg = fc[phase]
            if not pcfg.steps or (phase == "head" and fc.init == "scratch"):
                continue
            variables = _run_phase(
                config,
                mesh,
                phase,
                sdir,
                model,
                shape,
                backbone,
                variables,
                labels,
                weak,
                predictor,
                best,
                writer,
                ds,
                offset,
            )
            offset += pcfg.steps
        if best.step < 0:
            raise ValueError("finetune: no phase has steps; set finetune.head.steps or body.steps")
        like = transfer.init_state(model, optim.make(fc.head.optimizer, 1, 1)[0], mesh, shape, 0)
        params, model_state, meta = best.restore(like)
    finally:
        writer.close()
        best.close()
    results = {
        "val_acc": float(meta["val_acc"]),
        "test_acc": predictor.accuracy(params, model_state, ds.splits["test"]),
        "best_step": int(meta["step"]),
        "best_phase": meta["phase"],
        "num_labels": len(store),
        "wall_s": time.perf_counter() - t0,
    }
    common.mark_done(workdir, STAGE, results)
    return results


def _run_phase(
    config,
    mesh,
    phase,
    sdir,
    model,
    shape,
    backbone,
    variables,
    labels,
    weak,
    predictor,
    best,
    writer,
    ds,
    offset,
):
    """Trains one phase (resuming it if checkpointed); returns its final variables.
    A phase is done when its ``final`` checkpoint exists."""
    fc, pcfg = config.finetune, config.finetune[phase]
    pdir = os.path.join(sdir, phase)
    final = checkpoint.Checkpointer(os.path.join(pdir, "final"), keep=1)
    template = transfer.init_state(
        model, optim.make(pcfg.optimizer, 1, 1)[0], mesh, shape, config.seed, backbone, variables
    )
    layers, trainable_from = phase_layers(config, template.params, phase)
    tx, lr = optim.make(
        pcfg.optimizer,
        pcfg.steps,
        fc.batch_size,
        layers=layers,
        trainable_from=trainable_from,
        layer_decay=pcfg.get("layer_decay", 1.0),
    )
    state = template.replace(tx=tx, opt_state=tx.init(template.params))
    state = jax.device_put(state, parallel.replicated(mesh))
    if final.latest_step() is not None:  # phase finished earlier
        state, _ = final.restore(state)
        final.close()
        return {"params": state.params, **state.model_state}
    stats_layers = layer_ids(
        config.model.name,
        state.params["backbone"],
        state.model_state.get("batch_stats", {}).get("backbone", {}),
    )
    stats_frozen = {
        k: (
            {"backbone": jax.tree.map(lambda i: i < trainable_from, stats_layers)}
            if k == "batch_stats"
            else jax.tree.map(lambda _: True, v)
        )
        for k, v in state.model_state.items()
    }
    loader = Loader(
        {"image": ds.splits["train"].images, "label": labels},
        fc.batch_size,
        mesh,
        seed=config.seed,
        labels=labels,
        labelled_per_batch=fc.batch_size,
        balanced=fc.balanced,
    )
    ckpt = checkpoint.Checkpointer(os.path.join(pdir, "checkpoints"), keep=1)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loader.position = meta["loader_position"]
        print(f"resuming fine-tuning phase {phase} at step {int(state.step)}")
    step_fn = make_step(
        model,
        weak,
        lr,
        mesh,
        num_classes=ds.num_classes,
        frozen_backbone=phase == "head",
        stats_frozen=stats_frozen,
        fc=fc,
    )

    def evaluate(state, step):
        acc = predictor.accuracy(
            state.params, state.model_state, ds.splits["val"], fc.eval_val_items
        )
        best.offer(state, acc, offset + step, phase=phase)
        return {"val_acc": acc, "best_val_acc": best.acc}

    try:
        state, _ = loop.run(
            state,
            step_fn,
            loader,
            name=f"{STAGE}/{phase}",
            steps=pcfg.steps,
            ckpt=ckpt,
            writer=_Offset(writer, offset),
            log_every=fc.log_every,
            ckpt_every=fc.ckpt_every,
            images_per_step=fc.batch_size,
            eval_every=fc.eval_every,
            evaluate=evaluate,
            hint=f"Lower finetune.{phase}.optimizer.lr.",
        )
        final.save(pcfg.steps, state, {"phase": phase}, wait=True)
    finally:
        ckpt.close()
        final.close()
    return {"params": state.params, **state.model_state}


class _Offset:
    """A metric writer that numbers steps across phases."""

    def __init__(self, writer, offset: int):
        self.writer, self.offset = writer, offset

    def write(self, step, scalars):
        self.writer.write(self.offset + step, scalars)
