"""Self-training with pseudo-labels on the labelled few plus the unlabelled pool.

The default recipe is FixMatch ("FixMatch: Simplifying Semi-Supervised Learning
with Consistency and Confidence", Sohn et al., 2020, https://arxiv.org/abs/2001.07685).
Each batch holds ``labelled_batch`` labelled items (class-balanced by default)
and ``unlabelled_ratio`` times as many pool items. Per step:

    L_l = mean_i  w_i  * CE(f(weak(x_i)), y_i)                      labelled items
    q_j = softmax(f'(weak(u_j))),  yhat_j = argmax q_j,  m_j = [max q_j >= threshold]
    L_u = mean_j  w_j * m_j * CE(f(strong(u_j)), yhat_j)            unlabelled items
    L   = L_l + lambda(t) * L_u

f' is the model of this step (``pseudo_labels="current"``), a snapshot copied
from it every ``refresh_every`` steps (``"snapshot"``), or the exponential
moving average of its parameters (``"ema"``, the mean-teacher choice); it
predicts in inference mode and no gradient flows through the pseudo-labels.
lambda(t) ramps from 0 to ``unlabelled_weight`` over ``ramp_steps`` (linear, or the sigmoid
exp(-5 (1 - t)^2) of temporal ensembling). With ``uncertainty_weighting`` the
per-item weight is w = exp(-H(softmax(logits / T))) (T =
``uncertainty_temperature`` > 1 softens the prediction before its entropy H;
w is 1 for a one-hot prediction and 1/C for a uniform one, never 0, so a new
head still learns), from the labelled item's own prediction and the unlabelled
item's weak-view prediction; otherwise w = 1. BatchNorm runs in inference mode by default
(``bn_train=False``: the pool's statistics from pretraining); with ``bn_train``
each pass uses its batch statistics and the running averages follow the
labelled items only, unless ``bn_joint``: then labelled and strong views go
through the model as one batch (FixMatch's choice), whose statistics both
use and the running averages follow. Without ``bn_joint``, with
``threshold=1`` and weight 0 this is exactly supervised training on the
labelled items.

The model starts from the fine-tuning stage's best model (``init="finetune"``)
or from the pretrained backbone with a new head (``"pretrain"``); the best
model by val accuracy is kept and its test accuracy reported. With
``ema_decay`` = d > 0 the stage also keeps theta_ema <- d theta_ema + (1 - d) theta
after every step (FixMatch evaluates this average, d = 0.999), and the average
is what is evaluated, kept as the best model and reported.

With ``distribution_alignment`` (ReMixMatch's, Berthelot et al., 2020,
https://arxiv.org/abs/1911.09785) the teacher's weak-view probabilities are
rescaled before the threshold and the argmax:

    q_j <- normalise(q_j * prior / running)

``prior`` is the class distribution of the labelled items (add-one smoothed,
so no class is ever ruled out) and ``running`` the moving average of the
teacher's mean prediction over the pool, running <- m running + (1 - m) mean_j q_j
(m = ``alignment_momentum``; it starts at the prior, where the rescaling is the
identity). A model that over-predicts some classes, the usual failure with a
handful of labels, has those classes' pseudo-labels scaled down until its
predictions over the pool match the labelled marginal.

With ``class_thresholds`` (FlexMatch's curriculum pseudo-labelling, Zhang et
al., 2021, https://arxiv.org/abs/2110.08263) each class c gets its own
threshold from how well it is learnt so far:

    sigma_c = share of pool items predicted c with confidence > threshold
    beta_c  = sigma_c / max(max_k sigma_k, unused)     unused = 1 - sum_k sigma_k
    threshold_c = threshold * beta_c / (2 - beta_c)

so the class predicted confidently most often keeps ``threshold`` and a class
the model is still unsure of passes more of its pseudo-labels (its threshold
falls). FlexMatch counts sigma over each pool item's latest prediction; here it
is a moving average over the steps' unlabelled batches (momentum
``class_threshold_momentum``), starting from "nothing learnt yet" (unused = 1:
every threshold 0, FlexMatch's warm-up, rising as the model grows confident).
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, metrics, optim, parallel, transfer
from ssl_jax import pp as pp_lib
from ssl_jax.data.loader import Loader
from ssl_jax.models import classifier
from ssl_jax.stages import common, loop

STAGE = "selftrain"
SNAPSHOT = "snapshot"
EMA = "ema"
ALIGN = "alignment"  # the running mean prediction of distribution alignment
LEARNING = "learning"  # class thresholds: running (sigma_1..sigma_C, unused)
AUX = (SNAPSHOT, EMA, ALIGN, LEARNING)  # kept in model_state, but not model variables


def model_variables(model_state) -> dict:
    """``model_state`` without the parameter copies of AUX (what ``model.apply`` takes)."""
    return {k: v for k, v in model_state.items() if k not in AUX}


def eval_variables(state):
    """(params, model variables) to evaluate: the moving average where one is kept."""
    return state.model_state.get(EMA, state.params), model_variables(state.model_state)


def teacher_params(state, source: str):
    """The parameters that make the pseudo-labels, per ``selftrain.pseudo_labels``."""
    key = {"current": None, SNAPSHOT: SNAPSHOT, EMA: EMA}[source]
    return state.params if key is None else state.model_state[key]


def ramp(sc, step):
    """lambda(step): the unlabelled loss weight."""
    if sc.ramp == "none" or not sc.ramp_steps:
        frac = 1.0
    else:
        t = jnp.clip(step / sc.ramp_steps, 0.0, 1.0)
        if sc.ramp == "linear":
            frac = t
        elif sc.ramp == "sigmoid":
            frac = jnp.exp(-5.0 * (1.0 - t) ** 2)
        else:
            raise ValueError(f"unknown selftrain.ramp {sc.ramp!r}: linear, sigmoid or none")
    return sc.unlabelled_weight * frac


def align(probs, prior, running):
    """Distribution alignment: ``probs`` rescaled by prior / running, rows renormalised."""
    q = probs * (prior / running)
    return q / jnp.sum(q, axis=-1, keepdims=True)


def label_prior(labels, num_classes: int):
    """Add-one smoothed class distribution of the labelled items (label -1: unlabelled)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float32)
    return (counts + 1.0) / (counts.sum() + num_classes)


def pseudo_labels(logits, threshold, prior=None, running=None):
    """(argmax labels, mask of items whose confidence reaches the threshold, confidence),
    from the softmax of ``logits``, aligned to ``prior`` when it is given.
    ``threshold``: one for every class, or a [C] array (the label's entry applies)."""
    probs = jax.nn.softmax(logits)
    if prior is not None:
        probs = align(probs, prior, running)
    conf = jnp.max(probs, axis=-1)
    label = jnp.argmax(probs, axis=-1)
    threshold = jnp.asarray(threshold)
    return label, conf >= (threshold[label] if threshold.ndim else threshold), conf


def class_thresholds(threshold: float, learning):
    """FlexMatch's per-class thresholds from ``learning`` = (sigma_1..sigma_C, unused)."""
    sigma, unused = learning[:-1], learning[-1]
    beta = sigma / jnp.maximum(jnp.maximum(jnp.max(sigma), unused), 1e-12)
    return threshold * beta / (2.0 - beta)


def confident_shares(label, conf, threshold: float, num_classes: int):
    """This batch's (share predicted c with confidence > threshold for each c, share of
    the rest): what ``class_thresholds``' running average follows; sums to 1."""
    confident = (conf > threshold).astype(jnp.float32)
    sigma = jnp.mean(jax.nn.one_hot(label, num_classes) * confident[:, None], axis=0)
    return jnp.concatenate([sigma, (1.0 - jnp.mean(confident))[None]])


def certainty_weights(logits, temperature: float):
    """exp(-H(softmax(logits / T))), in [1/C, 1]: 1 for a one-hot prediction."""
    p = jax.nn.softmax(logits / temperature)
    entropy = -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12)), axis=-1)
    return jnp.exp(-entropy)


def xent(logits, labels):
    """Per-item cross-entropy with integer labels."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def make_step(model, weak, strong, lr, mesh, sc, prior=None):
    """The jitted step; ``prior`` (class distribution of the labelled items) is
    needed with ``sc.distribution_alignment``."""
    if sc.distribution_alignment and prior is None:
        raise ValueError("selftrain.distribution_alignment needs the labelled class prior")
    prior = jnp.asarray(prior, jnp.float32) if sc.distribution_alignment else None
    n_l = sc.labelled_batch  # global batch sizes, like every stage's
    n_u = n_l * sc.unlabelled_ratio

    def selftrain_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_lw, k_uw, k_us = jax.random.split(rng, 3)
        # The loader puts the pool rows first, then the labelled rows.
        x_u, x_l, y_l = batch["image"][:n_u], batch["image"][n_u:], batch["label"][n_u:]
        xl = weak(k_lw, x_l)
        xu_weak, xu_strong = weak(k_uw, x_u), strong(k_us, x_u)
        ms = model_variables(state.model_state)
        teacher = teacher_params(state, sc.pseudo_labels)
        logits_w = jax.lax.stop_gradient(model.apply({"params": teacher, **ms}, xu_weak))
        running = state.model_state.get(ALIGN)
        learning = state.model_state.get(LEARNING)
        threshold = sc.threshold if learning is None else class_thresholds(sc.threshold, learning)
        pl, mask, conf = pseudo_labels(logits_w, threshold, prior, running)
        lambda_u = ramp(sc, state.step)

        def loss_fn(params):
            if sc.bn_train and sc.bn_joint:
                # One pass over both: batch statistics (and the running
                # averages) of labelled and strong views together.
                logits, new_ms = model.apply(
                    {"params": params, **ms},
                    jnp.concatenate([xl, xu_strong]),
                    train=True,
                    mutable=list(ms),
                )
                logits_l, logits_s = logits[:n_l], logits[n_l:]
            else:
                logits_l, new_ms = model.apply(
                    {"params": params, **ms}, xl, train=sc.bn_train, mutable=list(ms)
                )
                # Statistics of the strong pass are dropped: only labelled items set them.
                logits_s, _ = model.apply(
                    {"params": params, **ms}, xu_strong, train=sc.bn_train, mutable=list(ms)
                )
            w_l = jnp.ones(n_l)
            w_u = mask.astype(jnp.float32)
            if sc.uncertainty_weighting:
                t = sc.uncertainty_temperature
                w_l = certainty_weights(jax.lax.stop_gradient(logits_l), t)
                w_u = w_u * certainty_weights(logits_w, t)
            loss_l = jnp.mean(w_l * xent(logits_l, y_l))
            loss_u = jnp.mean(w_u * xent(logits_s, pl))
            return loss_l + lambda_u * loss_u, (loss_l, loss_u, logits_l, dict(new_ms))

        (loss, (loss_l, loss_u, logits_l, new_ms)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        new = state.apply_gradients(grads, model_state={**state.model_state, **new_ms})
        if SNAPSHOT in state.model_state:
            refresh = new.step % sc.refresh_every == 0
            snapshot = jax.tree.map(
                lambda p, s: jnp.where(refresh, p, s), new.params, state.model_state[SNAPSHOT]
            )
            new = new.replace(model_state={**new.model_state, SNAPSHOT: snapshot})
        if EMA in state.model_state:
            d = sc.ema_decay
            ema = jax.tree.map(
                lambda e, p: d * e + (1.0 - d) * p, state.model_state[EMA], new.params
            )
            new = new.replace(model_state={**new.model_state, EMA: ema})
        if ALIGN in state.model_state:
            m = sc.alignment_momentum
            mean_q = jnp.mean(jax.nn.softmax(logits_w), axis=0)
            running = m * running + (1.0 - m) * mean_q
            new = new.replace(model_state={**new.model_state, ALIGN: running})
        if learning is not None:
            m = sc.class_threshold_momentum
            shares = confident_shares(pl, conf, sc.threshold, logits_w.shape[-1])
            new = new.replace(
                model_state={**new.model_state, LEARNING: m * learning + (1.0 - m) * shares}
            )
        new, finite = loop.guard_finite(loss, new, state)
        out = {
            "loss": loss,
            "labelled_loss": loss_l,
            "unlabelled_loss": loss_u,
            "mask_rate": jnp.mean(mask),
            "min_threshold": jnp.min(threshold),
            "mean_confidence": jnp.mean(conf),
            "unlabelled_weight": lambda_u,
            "train_acc": jnp.mean(jnp.argmax(logits_l, -1) == y_l),
            "lr": lr(state.step),
            "finite": finite,
        }
        return new, out

    repl = parallel.replicated(mesh)
    return jax.jit(
        selftrain_step,
        in_shardings=(repl, parallel.data_sharded(mesh)),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def initial_variables(config, workdir, mesh, model, ds, shape):
    """Variables to start from, per ``selftrain.init``."""
    init = config.selftrain.init
    if init == "finetune":
        best_dir = os.path.join(workdir, "finetune", "best")
        if not os.path.isdir(best_dir):
            raise FileNotFoundError(
                f"self-training starts from the fine-tuned model, but {best_dir} does not "
                "exist: run the finetune stage first, or set selftrain.init='pretrain'"
            )
        best = transfer.Best(best_dir)
        like = transfer.init_state(
            model, optim.make(config.selftrain.optimizer, 1, 1)[0], mesh, shape, 0
        )
        params, model_state, _ = best.restore(like)
        best.close()
        return {"params": params, **model_state}
    if init == "pretrain":
        backbone = transfer.pretrained_backbone(config, workdir, mesh, ds)
        like = transfer.init_state(
            model,
            optim.make(config.selftrain.optimizer, 1, 1)[0],
            mesh,
            shape,
            config.seed,
            backbone,
        )
        return {"params": like.params, **like.model_state}
    raise ValueError(f"unknown selftrain.init {init!r}: finetune or pretrain")


def check(config):
    """Refuse bad settings before any stage runs (called by the command line too)."""
    sc = config.selftrain
    if sc.pseudo_labels not in ("current", SNAPSHOT, EMA):
        raise ValueError(
            f"unknown selftrain.pseudo_labels {sc.pseudo_labels!r}: current, snapshot or ema"
        )
    if not 0.0 <= sc.ema_decay < 1.0:
        raise ValueError(f"selftrain.ema_decay must be in [0, 1), got {sc.ema_decay}")
    if sc.pseudo_labels == EMA and not sc.ema_decay:
        raise ValueError("selftrain.pseudo_labels='ema' needs selftrain.ema_decay > 0")
    if sc.ramp not in ("linear", "sigmoid", "none"):
        raise ValueError(f"unknown selftrain.ramp {sc.ramp!r}: linear, sigmoid or none")
    if sc.init not in ("finetune", "pretrain"):
        raise ValueError(f"unknown selftrain.init {sc.init!r}: finetune or pretrain")
    if not 0.0 <= sc.alignment_momentum < 1.0:
        raise ValueError(
            f"selftrain.alignment_momentum must be in [0, 1), got {sc.alignment_momentum}"
        )
    if not 0.0 <= sc.class_threshold_momentum < 1.0:
        raise ValueError(
            "selftrain.class_threshold_momentum must be in [0, 1), "
            f"got {sc.class_threshold_momentum}"
        )
    if sc.bn_joint and not sc.bn_train:
        raise ValueError("selftrain.bn_joint needs selftrain.bn_train=True (batch statistics)")


def run(config, workdir: str, mesh) -> dict:
    if (done := common.done_results(workdir, STAGE)) is not None:
        return done
    sdir = common.stage_dir(workdir, STAGE)
    sc = config.selftrain
    check(config)
    ds = common.dataset(config, workdir)
    store = common.label_store(config, workdir, ds)
    if not len(store):
        raise ValueError("self-training needs labelled items; the label store is empty")
    pool = ds.splits["train"]
    shape = pool.images.shape[1:]
    model = classifier.build(config, ds.num_classes)
    variables = initial_variables(config, workdir, mesh, model, ds, shape)
    if sc.pseudo_labels == SNAPSHOT:
        variables[SNAPSHOT] = variables["params"]
    if sc.ema_decay:
        variables[EMA] = variables["params"]
    labels = store.label_array()
    prior = label_prior(labels, ds.num_classes)
    if sc.distribution_alignment:
        variables[ALIGN] = jnp.asarray(prior)
    if sc.class_thresholds:  # nothing learnt yet: every item unused
        variables[LEARNING] = jnp.zeros(ds.num_classes + 1).at[-1].set(1.0)
    tx, lr = optim.make(sc.optimizer, sc.steps, sc.labelled_batch * (1 + sc.unlabelled_ratio))
    state = transfer.init_state(model, tx, mesh, shape, config.seed, variables=variables)
    loader = Loader(
        {"image": pool.images, "label": labels},
        sc.labelled_batch * (1 + sc.unlabelled_ratio),
        mesh,
        seed=config.seed,
        labels=labels,
        labelled_per_batch=sc.labelled_batch,
        balanced=sc.balanced,
    )
    chunk = pp_lib.chunk_size_for(config.pp.chunk_size)
    weak = pp_lib.build(config.pp.weak or config.pp.eval, chunk_size=chunk, mesh=mesh)
    strong = pp_lib.build(
        config.pp.strong or config.pp.weak or config.pp.eval, chunk_size=chunk, mesh=mesh
    )
    predictor = transfer.predictor(config, model, mesh)
    ckpt = checkpoint.Checkpointer(os.path.join(sdir, "checkpoints"), keep=1)
    best = transfer.Best(os.path.join(sdir, "best"))
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        loader.position = meta["loader_position"]
        print(f"resuming self-training at step {int(state.step)} from {ckpt.directory}")

    def evaluate(state, step):
        params, ms = eval_variables(state)
        acc = predictor.accuracy(params, ms, ds.splits["val"], sc.eval_val_items)
        best.offer(state.replace(params=params, model_state=ms), acc, step)
        return {"val_acc": acc, "best_val_acc": best.acc}

    writer = metrics.MetricWriter(sdir)
    t0 = time.perf_counter()
    try:
        state, last = loop.run(
            state,
            make_step(model, weak, strong, lr, mesh, sc, prior),
            loader,
            name=STAGE,
            steps=sc.steps,
            ckpt=ckpt,
            writer=writer,
            log_every=sc.log_every,
            ckpt_every=sc.ckpt_every,
            images_per_step=loader.batch_size,
            eval_every=sc.eval_every,
            evaluate=evaluate,
            hint="Lower selftrain.optimizer.lr or selftrain.optimizer.grad_clip.",
        )
        params, model_state, meta = best.restore(
            state.replace(model_state=model_variables(state.model_state))
        )
    finally:
        writer.close()
        ckpt.close()
        best.close()
    results = {
        "val_acc": float(meta["val_acc"]),
        "test_acc": predictor.accuracy(params, model_state, ds.splits["test"]),
        "best_step": int(meta["step"]),
        "final_mask_rate": last.get("mask_rate"),
        "num_labels": len(store),
        "wall_s": time.perf_counter() - t0,
    }
    common.mark_done(workdir, STAGE, results)
    return results
