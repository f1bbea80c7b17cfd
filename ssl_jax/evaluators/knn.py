"""Weighted k-nearest-neighbour classification on frozen features.

Cosine similarity, top-k neighbours, votes weighted by exp(s / T) as in
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
(Wu et al., 2018, https://arxiv.org/abs/1805.01978), the protocol DINO and
solo-learn report. Queries run in fixed-size chunks inside one jitted function.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.losses import l2_normalize


@partial(jax.jit, static_argnames=("k", "num_classes", "chunk"))
def knn_predict(train, train_labels, queries, *, k, temperature, num_classes, chunk=1024):
    train = l2_normalize(train)
    n = queries.shape[0]
    pad = (-n) % chunk
    q = l2_normalize(jnp.pad(queries, ((0, pad), (0, 0)))).reshape(-1, chunk, queries.shape[1])

    def one_chunk(qc):
        sims, idx = jax.lax.top_k(qc @ train.T, k)
        votes = (
            jax.nn.one_hot(train_labels[idx], num_classes) * jnp.exp(sims / temperature)[..., None]
        )
        return votes.sum(axis=1)

    scores = jax.lax.map(one_chunk, q).reshape(-1, num_classes)[:n]
    return jnp.argmax(scores, axis=-1)


class Evaluator:
    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        train_split: str = "train",
        eval_splits=("val", "test"),
        prefix: str = "knn",
    ):
        self.k, self.temperature = k, temperature
        self.train_split, self.eval_splits, self.prefix = train_split, tuple(eval_splits), prefix

    def run(self, features: dict) -> dict:
        train, train_labels = features[self.train_split]
        num_classes = (
            int(
                max(
                    train_labels.max(),
                    *(
                        features[s][1].max()
                        for s in self.eval_splits
                        if s in features and len(features[s][1])
                    ),
                )
            )
            + 1
        )
        k = min(self.k, len(train))
        out = {}
        for split in self.eval_splits:
            if split not in features or not len(features[split][0]):
                continue
            x, y = features[split]
            pred = knn_predict(
                jnp.asarray(train),
                jnp.asarray(train_labels),
                jnp.asarray(x),
                k=k,
                temperature=self.temperature,
                num_classes=num_classes,
            )
            out[f"{self.prefix}_{split}_acc"] = float(np.mean(np.asarray(pred) == y))
        return out
