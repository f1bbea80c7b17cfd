"""Linear probe: multinomial logistic regression on frozen, standardised features.

Every L2 strength of the grid is fitted full-batch in one jitted program; the
strength with the best val accuracy is kept and its test accuracy reported,
the protocol of SimCLR's linear evaluation on cached features. The loss is
mean cross-entropy + ``l2`` / 2 · |w|² (bias unpenalised), scikit-learn's
LogisticRegression objective with C = 1 / (l2 · n). With ``class_balanced``
each item's cross-entropy is weighted by n / (C · n_class), so every class
weighs the same however unevenly the labelled items fall (scikit-learn's
``class_weight="balanced"``): the case of labels chosen by an acquisition
strategy rather than drawn per class.

Two optimizers (``method``):

- ``lbfgs`` (default): L-BFGS with a zoom line search, at most ``steps``
  iterations per strength, stopping once the largest gradient entry is below
  ``tol``. The strengths run one after another from the strongest down, each
  starting from the previous solution (a regularisation path), so weak L2,
  the slow end, starts close to its optimum. On 55,000 MNIST features this
  reached the optimum 3.7× faster than 500 Adam steps, which stopped short of
  it (experiments/bench/RESULTS.md, from experiments/probe_methods.py). The
  strengths are not vmapped: a vmapped loop runs until its slowest member
  ends, and the line searches of different strengths take different counts.
- ``adam``: ``steps`` full-batch Adam steps at cosine-decayed ``lr``, all
  strengths at once (vmap), for a fixed compute budget.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

METHODS = ("lbfgs", "adam")


@partial(jax.jit, static_argnames=("num_classes", "steps", "method", "class_balanced"))
def fit(x, y, l2_grid, *, num_classes, steps, lr, method="lbfgs", tol=1e-4, class_balanced=False):
    """Returns (weights [G, D, C], biases [G, C]) for each L2 strength."""
    if method not in METHODS:
        raise ValueError(f"unknown linear probe method {method!r}; known: {', '.join(METHODS)}")
    onehot = jax.nn.one_hot(y, num_classes)
    item_weight = jnp.ones(len(y))
    if class_balanced:
        counts = onehot.sum(0)
        present = jnp.sum(counts > 0)  # classes with no item weigh nothing
        item_weight = (len(y) / (present * counts))[y]

    def loss_for(l2):
        def loss_fn(p):
            logits = x @ p["w"] + p["b"]
            ce = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
            xent = jnp.mean(item_weight * ce)
            return xent + 0.5 * l2 * jnp.sum(p["w"] ** 2)

        return loss_fn

    p0 = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    if method == "lbfgs":
        order = jnp.argsort(-l2_grid)  # strongest first

        def one(p, l2):
            p = _lbfgs(loss_for(l2), p, steps, tol)
            return p, p

        _, path = jax.lax.scan(one, p0, l2_grid[order])
        back = jnp.argsort(order)
        return path["w"][back], path["b"][back]

    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def train_one(l2):
        loss_fn = loss_for(l2)

        def body(_, carry):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, _ = jax.lax.fori_loop(0, steps, body, (p0, tx.init(p0)))
        return p["w"], p["b"]

    return jax.vmap(train_one)(l2_grid)


def _lbfgs(loss_fn, p, steps, tol):
    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def body(carry):
        p, s, i, _ = carry
        value, g = value_and_grad(p, state=s)
        u, s = tx.update(g, s, p, value=value, grad=g, value_fn=loss_fn)
        gmax = optax.tree_utils.tree_max(jax.tree.map(jnp.abs, g))
        return optax.apply_updates(p, u), s, i + 1, gmax

    def more(carry):
        _, _, i, gmax = carry
        return (i < steps) & (gmax > tol)

    init = (p, tx.init(p), jnp.int32(0), jnp.float32(jnp.inf))
    return jax.lax.while_loop(more, body, init)[0]


class LinearModel(NamedTuple):
    """A fitted probe: logits = ((x - mean) / std) @ w + b."""

    mean: np.ndarray
    std: np.ndarray
    w: jax.Array  # [D, C]
    b: jax.Array  # [C]
    l2: float

    def standardize(self, x):
        return jnp.asarray((x - self.mean) / self.std)

    def logits(self, x):
        return self.standardize(x) @ self.w + self.b


class Evaluator:
    def __init__(
        self,
        l2_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        steps: int = 500,
        lr: float = 0.01,
        method: str = "lbfgs",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        prefix: str = "linear",
        num_classes: int = 0,
        class_balanced: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown linear probe method {method!r}; known: {', '.join(METHODS)}")
        self.l2_grid, self.steps, self.lr, self.method = tuple(l2_grid), steps, lr, method
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.prefix = prefix
        self.num_classes = num_classes  # 0: one more than the largest label seen
        self.class_balanced = class_balanced

    def _num_classes(self, features):
        if self.num_classes:
            return self.num_classes
        labels = [features[s][1] for s in (self.train_split, self.val_split, self.test_split)]
        return int(max(y.max() for y in labels if len(y))) + 1

    def fit(self, features: dict, stats_from=None) -> tuple[LinearModel, dict]:
        """(the probe with the best val accuracy, {metric: value}).

        Features are standardised by the mean and std of ``stats_from`` (for
        example every pool item's, labelled or not), by default of the train
        split's items.
        """
        x, y = features[self.train_split]
        ref = x if stats_from is None else stats_from
        mean, std = ref.mean(0), ref.std(0) + 1e-6
        norm = lambda a: jnp.asarray((a - mean) / std)
        w, b = fit(
            norm(x),
            jnp.asarray(y),
            jnp.asarray(self.l2_grid, jnp.float32),
            num_classes=self._num_classes(features),
            steps=self.steps,
            lr=self.lr,
            method=self.method,
            class_balanced=self.class_balanced,
        )

        def accuracy(split):
            xs, ys = features[split]
            pred = jnp.argmax(jnp.einsum("nd,gdc->gnc", norm(xs), w) + b[:, None], axis=-1)
            return np.mean(np.asarray(pred) == ys[None], axis=1)

        has = lambda s: s in features and len(features[s][0]) > 0
        # Without a val split, fall back to the middle of the grid rather than test-set selection.
        best = (
            int(np.argmax(accuracy(self.val_split)))
            if has(self.val_split)
            else len(self.l2_grid) // 2
        )
        out = {f"{self.prefix}_l2": float(self.l2_grid[best])}
        for split in (self.val_split, self.test_split):
            if has(split):
                out[f"{self.prefix}_{split}_acc"] = float(accuracy(split)[best])
        return LinearModel(mean, std, w[best], b[best], float(self.l2_grid[best])), out

    def run(self, features: dict) -> dict:
        return self.fit(features)[1]
