"""Losses as small pure functions over arrays.

Every loss takes keyword-only options and returns a scalar (plus, where useful,
a dict of diagnostics), so objectives stay thin and tests can check values by hand.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def contrastive(
    z: jax.Array, ids: jax.Array, *, temperature: float = 0.1
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Multi-positive InfoNCE over a batch of embeddings.

    Items with equal ``ids`` are positives of each other; every other item is a
    negative. With ids = image index over two views this is SimCLR's NT-Xent
    ("A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709); with ids = class label it is the
    supervised contrastive loss L_out of "Supervised Contrastive Learning"
    (https://arxiv.org/abs/2004.11362): for anchor i with positives P(i),

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) )

    with s the cosine similarity. Anchors without any positive are left out of
    the mean. Under ``jax.jit`` on a sharded global batch, ``z`` holds every
    device's items, so negatives span the whole global batch.

    Args:
      z: [N, D] embeddings (normalised here).
      ids: [N] integer ids; equal ids are positives.
      temperature: softmax temperature t.

    Returns:
      (mean loss, {"contrastive_acc": fraction of anchors whose most similar
      other item is a positive}).
    """
    z = l2_normalize(z.astype(jnp.float32))
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = jnp.eye(n, dtype=bool)
    logits = jnp.where(self_mask, -jnp.inf, logits)
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    positives = (ids[:, None] == ids[None, :]) & ~self_mask
    num_pos = positives.sum(axis=-1)
    per_anchor = -jnp.where(positives, log_prob, 0.0).sum(axis=-1) / jnp.maximum(num_pos, 1)
    has_pos = num_pos > 0
    loss = jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(has_pos.sum(), 1)
    nearest = jnp.argmax(logits, axis=-1)
    hit = jnp.take_along_axis(positives, nearest[:, None], axis=-1)[:, 0]
    acc = jnp.sum(hit & has_pos) / jnp.maximum(has_pos.sum(), 1)
    return loss, {"contrastive_acc": acc}


def softmax_xent(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0):
    """Mean cross-entropy with integer labels; labels < 0 are ignored."""
    num_classes = logits.shape[-1]
    valid = labels >= 0
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes)
    if label_smoothing:
        onehot = onehot * (1 - label_smoothing) + label_smoothing / num_classes
    per_item = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(jnp.where(valid, per_item, 0.0)) / jnp.maximum(valid.sum(), 1)


def pearson_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """[N, D] → [N, N] Pearson correlations between rows (each row's D values
    centred on their mean and scaled to unit norm)."""
    x = x.astype(jnp.float32)
    x = l2_normalize(x - jnp.mean(x, axis=-1, keepdims=True), eps=eps)
    return x @ x.T


def same_class_correlation(features: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss that raises the correlation between representations of one class.

        L = mean over ordered pairs (i, j), i != j, y_i = y_j >= 0, of (1 - rho_ij)

    with rho_ij the Pearson correlation of feature vectors i and j over their
    dimensions. Items with label < 0 take no part. Returns (L, mean rho over
    those pairs); both are 0 when the batch has no same-class pair.
    """
    rho = pearson_rows(features)
    n = labels.shape[0]
    pairs = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~jnp.eye(n, dtype=bool)
    count = jnp.maximum(pairs.sum(), 1)
    mean_rho = jnp.sum(jnp.where(pairs, rho, 0.0)) / count
    loss = jnp.sum(jnp.where(pairs, 1.0 - rho, 0.0)) / count
    return loss, mean_rho


def dino(
    student: list[jax.Array],
    teacher: list[jax.Array],
    center: jax.Array,
    *,
    student_temp: float = 0.1,
    teacher_temp: float | jax.Array = 0.04,
) -> jax.Array:
    """DINO's self-distillation loss ("Emerging Properties in Self-Supervised
    Vision Transformers", https://arxiv.org/abs/2104.14294, Algorithm 1):

        P_t = softmax((t - center) / teacher_temp),  log P_s = log_softmax(s / student_temp)
        L   = mean over pairs (t_i, s_v) with v != i of  mean_batch( -sum_k P_t[k] log P_s[k] )

    ``student`` holds the logits of every view ([B, K] each, global views first,
    in the same order as ``teacher``), ``teacher`` those of the global views.
    The teacher side gets no gradient.
    """
    center = jax.lax.stop_gradient(center)
    targets = [
        jax.nn.softmax(jax.lax.stop_gradient(t - center) / teacher_temp, axis=-1) for t in teacher
    ]
    log_probs = [jax.nn.log_softmax(s / student_temp, axis=-1) for s in student]
    total, pairs = 0.0, 0
    for i, p_t in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v == i:
                continue
            total = total + jnp.mean(-jnp.sum(p_t * log_p, axis=-1))
            pairs += 1
    return total / pairs


def soft_xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against target distributions [N, C] (label smoothing, mixup)."""
    return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))
