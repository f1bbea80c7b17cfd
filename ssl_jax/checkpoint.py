"""orbax checkpoints of the whole TrainState plus JSON metadata.

Resume order (big_vision's): latest checkpoint in the stage's workdir →
``config.init_from`` (parameters only, for transfer) → from scratch. The
metadata holds the loader position so a resumed run sees the same batches.
"""

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, *, wait: bool = False):
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        if wait:
            self.manager.wait_until_finished()

    def restore(self, state_like, step: int | None = None):
        """Restores into the structure, dtypes and shardings of ``state_like``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.meta

    def meta(self, step: int | None = None) -> dict:
        """The JSON metadata of a checkpoint (default: the latest), without its arrays."""
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path: str, params_like, model_state_like=None):
    """Parameters (and model state) from another run's checkpoint directory, for transfer."""
    ckpt = Checkpointer(path)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint found under {path}")
    meta = ckpt.manager.restore(
        ckpt.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    ckpt.close()
    restored = meta.state
    params = _match(restored["params"], params_like, "params")
    model_state = restored.get("model_state") if model_state_like is not None else None
    return params, model_state


def _match(tree, like, what):
    if jax.tree.structure(tree) != jax.tree.structure(like):
        raise ValueError(f"checkpoint {what} do not match the configured model")
    return jax.tree.map(lambda a, b: jax.numpy.asarray(a, b.dtype), tree, like)
