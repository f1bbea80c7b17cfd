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
    """Class probabilities of a classifier over many images, in sharded batches.

    With ``views`` > 0 (test-time augmentation) each image's probabilities are
    the mean over its eval view and ``views`` views of ``pp_views`` (the weak
    training recipe). View ``v`` of the image at position ``i`` of the images
    scored uses a key made from ``v`` and ``i`` only, so a model is always
    scored on the same views and an evaluation repeats exactly, whatever the
    batch size or the number of devices.
    """

    def __init__(self, model, pp_eval, mesh, batch_size: int, *, pp_views=None, views: int = 0):
        if views < 0:
            raise ValueError(f"test-time views must be >= 0, got {views}")
        if views and pp_views is None:
            raise ValueError("test-time views need the recipe that makes them (pp_views)")
        predictor = self

        class _Probs:  # the Embedder's "objective": one encode method, on raw images
            @staticmethod
            def encode(params, model_state, images, index):
                def probs(x):
                    return jax.nn.softmax(predictor.logits(params, model_state, x))

                p = probs(pp_eval(jax.random.PRNGKey(0), images))  # eval recipes are deterministic
                if not views:
                    return p

                def add(total, view):
                    key = jax.random.fold_in(jax.random.PRNGKey(1), view)
                    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
                    return total + probs(pp_views(keys, images)), None

                total, _ = jax.lax.scan(add, p, jnp.arange(views))
                return total / (views + 1)

        self.model = model
        self.views = views
        self._embed = Embedder(
            _Probs, lambda key, images: images, mesh, batch_size=batch_size, indexed=True
        )

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


def predictor(config, model, mesh, batch_size: int = 0, views: int | None = None):
    """The Predictor of the stages: ``pp.eval``, plus ``eval.tta_views`` views of
    ``pp.weak`` when that is > 0 (``views`` overrides it)."""
    from ssl_jax import pp as pp_lib

    views = config.eval.tta_views if views is None else views
    pp_views = None
    if views:
        chunk = pp_lib.chunk_size_for(config.pp.chunk_size)
        pp_views = pp_lib.build(config.pp.weak, chunk_size=chunk, mesh=mesh)
    return Predictor(
        model,
        pp_lib.build(config.pp.eval, chunk_size=None),
        mesh,
        batch_size or config.eval.batch_size,
        pp_views=pp_views,
        views=views,
    )


def load_best(config, best_dir: str, mesh, ds):
    """(model, params, model_state, meta) of the classifier kept in ``best_dir``."""
    from ssl_jax import optim
    from ssl_jax.models import classifier

    model = classifier.build(config, ds.num_classes)
    shape = ds.splits["train"].images.shape[1:]
    like = init_state(model, optim.make(config.finetune.head.optimizer, 1, 1)[0], mesh, shape, 0)
    best = Best(best_dir)
    try:
        params, model_state, meta = best.restore(like)
    finally:
        best.close()
    return model, params, model_state, meta


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
    from ssl_jax import pp as pp_lib

    model, params, model_state, _ = load_best(config, best_dir, mesh, ds)

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
