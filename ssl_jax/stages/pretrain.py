"""Self-supervised pretraining: one jitted step, checkpointed and resumable.

Each step augments the uint8 batch on device (one key per example, folded
from the state's key and step), computes the objective's loss and updates the
state. A step whose loss is not finite leaves the state unchanged; the host
notices at the next log and stops, keeping the last good checkpoint.
"""

import os
import time

import jax

from ssl_jax import checkpoint, metrics, parallel
from ssl_jax.data.loader import Loader
from ssl_jax.evaluators.embed import Embedder
from ssl_jax.stages import common, loop

STAGE = "pretrain"


def make_step(model):
    objective, lr_fn = model.objective, model.lr

    def pretrain_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_aug, k_loss = jax.random.split(rng)
        inputs = model.inputs(k_aug, batch)
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, (step_metrics, model_state)), grads = grad_fn(
            state.params, state.model_state, inputs, k_loss, True
        )
        if hasattr(objective, "mask_grads"):  # e.g. DINO's frozen last layer early on
            grads = objective.mask_grads(grads, state.step)
        new = objective.after_step(state.apply_gradients(grads, model_state=model_state))
        new, finite = loop.guard_finite(loss, new, state)
        out = dict(step_metrics, loss=loss, lr=lr_fn(state.step), finite=finite)
        return new, out

    repl = parallel.replicated(model.mesh)
    return jax.jit(
        pretrain_step,
        in_shardings=(repl, parallel.data_sharded(model.mesh)),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    pc = config.pretrain
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    pool = ds.splits["train"]
    model = common.PretrainModel(config, mesh, pool.images.shape[1:], ds.num_classes)
    state = model.init_state(config.seed)
    labels = store.label_array()
    loader = Loader(
        {"image": pool.images, "label": labels},
        pc.batch_size,
        mesh,
        seed=config.seed,
        labels=labels,
        labelled_per_batch=pc.labelled_per_batch,
        balanced=pc.balanced_labels,
    )

    ckpt = checkpoint.Checkpointer(os.path.join(sdir, "checkpoints"), keep=pc.keep_ckpts)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loader.position = meta["loader_position"]
        print(f"resuming pretraining at step {int(state.step)} from {ckpt.directory}")
    elif config.init_from:
        params, _ = checkpoint.load_params(config.init_from, state.params)
        state = state.replace(params=jax.device_put(params, parallel.replicated(mesh)))
        print(f"initialised parameters from {config.init_from}")

    embed = Embedder(model.objective, model.eval_fn, mesh, batch_size=config.eval.batch_size)
    knn = common.knn_evaluator(config, eval_splits=("val",))

    def evaluate(state, step):
        if not len(store):  # no labels yet (e.g. before active learning): nothing to measure
            return {}
        feats = common.labelled_features(
            embed, state.params, state.model_state, ds, store, val_items=pc.eval_val_items
        )
        return knn.run(feats)

    writer = metrics.MetricWriter(sdir)
    t0 = time.perf_counter()
    try:
        state, last = loop.run(
            state,
            make_step(model),
            loader,
            name=STAGE,
            steps=pc.steps,
            ckpt=ckpt,
            writer=writer,
            log_every=pc.log_every,
            ckpt_every=pc.ckpt_every,
            images_per_step=pc.batch_size * len(model.objective.views),
            eval_every=pc.eval_every,
            evaluate=evaluate,
            hint=getattr(
                model.objective,
                "nonfinite_hint",
                "Lower pretrain.optimizer.lr or set pretrain.optimizer.grad_clip.",
            ),
        )
    finally:
        writer.close()
        ckpt.close()
    results = {
        "steps": int(state.step),
        "final_loss": last.get("loss"),
        "images_per_s": last.get("images_per_s"),
        "wall_s": time.perf_counter() - t0,
    }
    common.mark_done(workdir, STAGE, results)
    return results
