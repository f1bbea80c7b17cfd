"""Self-supervised pretraining: one jitted step, checkpointed and resumable.

Each step augments the uint8 batch on device (one key per example, folded
from the state's key and step), computes the objective's loss and updates the
state. A step whose loss is not finite leaves the state unchanged; the host
notices at the next log and stops, keeping the last good checkpoint.
"""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, metrics, parallel
from ssl_jax.data.loader import Loader
from ssl_jax.evaluators import get_evaluator
from ssl_jax.evaluators.embed import Embedder
from ssl_jax.stages import common

STAGE = "pretrain"


class NonFiniteLoss(RuntimeError):
    pass


def make_step(model):
    objective, views_fn, lr_fn = model.objective, model.views_fn, model.lr

    def pretrain_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_aug, k_loss = jax.random.split(rng)
        views = views_fn(k_aug, batch["image"])
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, (step_metrics, model_state)), grads = grad_fn(
            state.params, state.model_state, views, k_loss, True
        )
        new = objective.after_step(state.apply_gradients(grads, model_state=model_state))
        finite = jnp.isfinite(loss)
        skipped = state.replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, skipped)
        out = dict(step_metrics, loss=loss, lr=lr_fn(state.step), finite=finite)
        return new, out

    repl = parallel.replicated(model.mesh)
    return jax.jit(
        pretrain_step,
        in_shardings=(repl, parallel.data_sharded(model.mesh)),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def _maybe_inject_crash(ckpt, step: int):
    """Fault injection for the resume tests: SIGKILL this process right after the
    checkpoint of step $SSL_JAX_KILL_AFTER_STEP is on disk."""
    if os.environ.get("SSL_JAX_KILL_AFTER_STEP") == str(step):
        ckpt.manager.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    pc = config.pretrain
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    pool = ds.splits["train"]
    model = common.PretrainModel(config, mesh, pool.images.shape[1:])
    state = model.init_state(config.seed)
    loader = Loader({"image": pool.images}, pc.batch_size, mesh, seed=config.seed)

    ckpt = checkpoint.Checkpointer(os.path.join(sdir, "checkpoints"), keep=pc.keep_ckpts)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loader.position = meta["loader_position"]
        print(f"resuming pretraining at step {int(state.step)} from {ckpt.directory}")
    elif config.init_from:
        params, _ = checkpoint.load_params(config.init_from, state.params)
        state = state.replace(params=jax.device_put(params, parallel.replicated(mesh)))
        print(f"initialised parameters from {config.init_from}")

    step_fn = make_step(model)
    embed = Embedder(model.objective, model.eval_fn, mesh, batch_size=config.eval.batch_size)
    knn = get_evaluator(
        "knn", k=config.eval.knn.k, temperature=config.eval.knn.temperature, eval_splits=("val",)
    )
    writer = metrics.MetricWriter(sdir)
    step = int(state.step)
    progress = metrics.Progress(
        pc.steps, step, desc="pretrain", images_per_step=pc.batch_size * len(model.objective.views)
    )
    t0, pending, last = time.perf_counter(), [], {}
    try:
        while step < pc.steps:
            state, step_metrics = step_fn(state, next(loader))
            step += 1
            pending.append(step_metrics)
            if step % pc.log_every == 0 or step == pc.steps:
                fetched = jax.device_get(pending)
                pending = []
                if not all(m["finite"] for m in fetched):
                    bad = step - len(fetched) + [bool(m["finite"]) for m in fetched].index(False)
                    raise NonFiniteLoss(
                        f"non-finite loss at step {bad + 1}; stopped. The last good checkpoint "
                        f"(step {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower "
                        "pretrain.optimizer.lr or add pretrain.optimizer.grad_clip."
                    )
                last = {
                    k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "finite"
                }
                last["images_per_s"] = progress.images_per_second(step)
                writer.write(step, last)
                progress.update(step, loss=last["loss"])
            if pc.eval_every and (step % pc.eval_every == 0 or step == pc.steps):
                feats = common.labelled_features(
                    embed, state.params, state.model_state, ds, store, val_items=pc.eval_val_items
                )
                writer.write(step, knn.run(feats))
            if step % pc.ckpt_every == 0 or step == pc.steps:
                ckpt.save(step, state, {"loader_position": loader.position})
                _maybe_inject_crash(ckpt, step)
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    results = {
        "steps": step,
        "final_loss": last.get("loss"),
        "images_per_s": last.get("images_per_s"),
        "wall_s": time.perf_counter() - t0,
    }
    common.mark_done(workdir, STAGE, results)
    return results
