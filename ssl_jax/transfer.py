"""What fine-tuning, self-training and prediction share: the pretrained backbone,
the classifier's state, its accuracy on a split, and the best model so far."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, parallel
from ssl_jax.evaluators.embed import Embedder
from ssl_jax.state import TrainState


def pretrained_backbone(config, workdir: str, mesh, ds) -> dict:
    """The backbone's variables ({"params", "batch_stats"...}) from this
    workdir's pretraining, else from ``config.init_from`` (a pretraining workdir
    or checkpoint directory of the same objective and model)."""
    from ssl_jax.stages.common import PretrainModel

    source = workdir
    if not os.path.isdir(os.path.join(workdir, "pretrain", "checkpoints")):
        if not config.init_from:
            raise FileNotFoundError(
                f"no pretrained backbone: {workdir}/pretrain has no checkpoint and "
                "config.init_from is not set (or set finetune.init='scratch')"
            )
        source = config.init_from
    model = PretrainModel(config, mesh, ds.splits["train"].images.shape[1:], ds.num_classes)
    params, model_state = model.encoder_variables(source, config.seed)
    return model.objective.backbone_variables(params, model_state)


def init_state(model, tx, mesh, image_shape, seed: int, backbone=None, variables=None):
    """A replicated TrainState for ``model`` (a Classifier): fresh, with the
    given backbone variables, or with all ``variables`` (params and collections)
    of an earlier classifier."""

    def init(rng):
        k_init, k_state = jax.random.split(rng)
        v = dict(model.init(k_init, jnp.zeros((1, *image_shape), jnp.float32)))
        if backbone is not None:
            for col, tree in backbone.items():
                v[col] = {**v[col], "backbone": tree}
        if variables is not None:
            v = dict(variables)
        params = v.pop("params")
        return TrainState.create(params=params, model_state=v, tx=tx, rng=k_state)

    return jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(seed))


class Predictor:
    """Class probabilities of a classifier over many images, in sharded batches."""

    def __init__(self, model, pp_eval, mesh, batch_size: int):
        predictor = self

        class _Probs:  # the Embedder's "objective": one encode method
            @staticmethod
            def encode(params, model_state, x):
                return jax.nn.softmax(predictor.logits(params, model_state, x))

        self.model = model
        self._embed = Embedder(_Probs, pp_eval, mesh, batch_size=batch_size)

    def logits(self, params, model_state, x):
        return self.model.apply({"params": params, **model_state}, x, train=False)

    def __call__(self, params, model_state, images: np.ndarray) -> np.ndarray:
        return self._embed(params, model_state, images)

    def accuracy(self, params, model_state, split, max_items: int = 0) -> float:
        n = min(len(split), max_items) if max_items else len(split)
        if not n:
            return float("nan")
        probs = self(params, model_state, split.images[:n])
        return float(np.mean(probs.argmax(-1) == split.labels[:n]))


class Best:
    """The best classifier so far by val accuracy, as a checkpoint of
    {"params", "model_state"} with its accuracy and step in the metadata."""

    def __init__(self, directory: str):
        self.ckpt = checkpoint.Checkpointer(directory, keep=1)
        self.acc, self.step = -1.0, -1
        if self.ckpt.latest_step() is not None:
            meta = self.ckpt.meta()
            self.acc, self.step = meta["val_acc"], meta["step"]

    def offer(self, state, val_acc: float, step: int, **meta) -> bool:
        """Keeps ``state`` if strictly better than the best so far (a replay of
        the same step after a resume is never better, so nothing is saved twice)."""
        if not val_acc > self.acc:
            return False
        self.acc, self.step = val_acc, step
        variables = {"params": state.params, "model_state": state.model_state}
        self.ckpt.save(step, variables, {"val_acc": val_acc, "step": step, **meta}, wait=True)
        return True

    def restore(self, like_state):
        """(params, model_state) of the best checkpoint, shaped like ``like_state``."""
        like = {"params": like_state.params, "model_state": like_state.model_state}
        variables, meta = self.ckpt.restore(like)
        return variables["params"], variables["model_state"], meta

    def close(self):
        self.ckpt.close()


def soft_targets(labels, num_classes: int, smoothing: float = 0.0):
    onehot = jax.nn.one_hot(labels, num_classes)
    return onehot * (1 - smoothing) + smoothing / num_classes if smoothing else onehot


def mixup(key, images, targets, alpha: float):
    """mixup ("mixup: Beyond Empirical Risk Minimization", https://arxiv.org/abs/1710.09412):
    one lambda ~ Beta(alpha, alpha) per batch, each item mixed with a permuted partner."""
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha)
    perm = jax.random.permutation(k_perm, images.shape[0])
    mix = lambda a: lam * a + (1 - lam) * a[perm]
    return mix(images), mix(targets)


def classifier_outputs(config, best_dir: str, mesh, ds) -> dict:
    """The best classifier in ``best_dir`` as active learning reads it: its
    penultimate (backbone) features of the pool and its head's weights."""
    from ssl_jax import optim
    from ssl_jax import pp as pp_lib
    from ssl_jax.models import classifier

    model = classifier.build(config, ds.num_classes)
    shape = ds.splits["train"].images.shape[1:]
    like = init_state(model, optim.make(config.finetune.head.optimizer, 1, 1)[0], mesh, shape, 0)
    best = Best(best_dir)
    params, model_state, _ = best.restore(like)
    best.close()

    class _Backbone:  # the Embedder's "objective": one encode method
        @staticmethod
        def encode(params, model_state, x):
            return model.apply({"params": params, **model_state}, x, method="features")

    embed = Embedder(
        _Backbone,
        pp_lib.build(config.pp.eval, chunk_size=None),
        mesh,
        batch_size=config.eval.batch_size,
    )
    fc = params["head"]["fc"]
    return {
        "features": embed(params, model_state, ds.splits["train"].images),
        "w": np.asarray(fc["kernel"]),
        "b": np.asarray(fc["bias"]),
    }
