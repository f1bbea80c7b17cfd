"""The training loop every stage shares: steps, logging, evaluation, checkpoints.

The loop only moves data and bookkeeping; the work is in the stage's jitted
step. Metrics stay on device until a log step, so the host never waits on the
device between steps. A non-finite loss stops the run with a clear message;
the step function is expected to have left the state unchanged for that step
(see ``guard_finite``), and the last good checkpoint is kept.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import metrics


class NonFiniteLoss(RuntimeError):
    pass


def guard_finite(loss, new_state, old_state):
    """``new_state`` if ``loss`` is finite, else ``old_state`` with its step
    counted, so one bad batch cannot poison the parameters."""
    finite = jnp.isfinite(loss)
    skipped = old_state.replace(step=old_state.step + 1)
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_state, skipped), finite


def _non_finite(step_metrics) -> str:
    """The step's non-finite metrics as "name=value, ..." (which term broke)."""
    bad = [
        f"{k}={float(v)}"
        for k, v in step_metrics.items()
        if k != "finite" and np.ndim(v) == 0 and not np.isfinite(v)
    ]
    return ", ".join(bad) or "loss not finite"


def _maybe_inject_crash(ckpt, name: str, step: int):
    """Fault injection for the resume tests: SIGKILL this process right after the
    checkpoint of step $SSL_JAX_KILL_AFTER_STEP is on disk ("STEP" for any loop,
    "NAME:STEP" for one loop)."""
    want = os.environ.get("SSL_JAX_KILL_AFTER_STEP", "")
    if want in (str(step), f"{name}:{step}"):
        ckpt.manager.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)


def run(
    state,
    step_fn,
    loader,
    *,
    name: str,
    steps: int,
    ckpt,
    writer,
    log_every: int,
    ckpt_every: int,
    images_per_step: int,
    eval_every: int = 0,
    evaluate=None,
    hint: str = "",
):
    """Runs ``step_fn(state, batch) -> (state, metrics)`` until ``state.step == steps``.

    ``metrics`` must hold ``loss`` and ``finite``. ``evaluate(state, step) -> dict``
    runs every ``eval_every`` steps and at the end; its scalars are logged.
    Checkpoints hold the state and the loader position. Returns (state, the
    last logged means).
    """
    step = int(state.step)
    progress = metrics.Progress(steps, step, desc=name, images_per_step=images_per_step)
    pending, last = [], {}
    try:
        while step < steps:
            state, step_metrics = step_fn(state, next(loader))
            step += 1
            pending.append(step_metrics)
            if step % log_every == 0 or step == steps:
                fetched = jax.device_get(pending)
                pending = []
                if not all(m["finite"] for m in fetched):
                    first = [bool(m["finite"]) for m in fetched].index(False)
                    bad = step - len(fetched) + first
                    which = _non_finite(fetched[first])
                    latest = ckpt.latest_step()
                    kept = (
                        f"The last good checkpoint (step {latest}) is kept in {ckpt.directory}."
                        if latest is not None
                        else "No checkpoint had been written yet."
                    )
                    raise NonFiniteLoss(
                        f"non-finite loss at step {bad + 1} of {name} ({which}); stopped. {kept}"
                        + (f" {hint}" if hint else "")
                    )
                last = {
                    k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "finite"
                }
                last["images_per_s"] = progress.images_per_second(step)
                writer.write(step, last)
                progress.update(step, loss=last["loss"])
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == steps):
                result = evaluate(state, step)
                writer.write(step, result)
                last.update(result)
            if step % ckpt_every == 0 or step == steps:
                ckpt.save(step, state, {"loader_position": loader.position})
                _maybe_inject_crash(ckpt, name, step)
    finally:
        progress.close()
    return state, last
