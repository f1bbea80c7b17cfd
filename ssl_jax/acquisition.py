"""Acquisition: which unlabelled pool items a person should label next.

Every selector has one shape:

    select(name, pool, budget, key, mesh=None, **options) -> item ids (int64 [budget])

``pool`` is a ``Pool``: the already-labelled mask and whatever the strategy
reads (class probabilities, MC-dropout probabilities, embeddings). Already
labelled items are never selected, ids are distinct, and the result is a
deterministic function of ``key``. A budget larger than the unlabelled pool
is an error.

Strategies:
  random             uniformly at random (the baseline)
  least_confidence   1 - max_c p_c
  margin             -(p_top1 - p_top2)  (smallest margin first)
  entropy            -sum_c p_c log p_c
  bald               mutual information between prediction and weights under MC
                     dropout ("Deep Bayesian Active Learning with Image Data",
                     https://arxiv.org/abs/1703.02910): H(mean_t p_t) - mean_t H(p_t)
  coreset            k-center greedy on embeddings ("Active Learning for CNNs: A
                     Core-Set Approach", https://arxiv.org/abs/1708.00489)
  badge              k-means++ seeding on last-layer gradient embeddings ("Deep Batch
                     Active Learning by Diverse, Uncertain Gradient Lower Bounds",
                     https://arxiv.org/abs/1906.03671)
  typiclust          the most typical item of the largest uncovered k-means clusters
                     ("Active Learning on a Budget", https://arxiv.org/abs/2202.02794)
  probcover          greedy maximum coverage of delta-balls ("Active Learning Through a
                     Covering Lens", https://arxiv.org/abs/2205.11320)

Scores are computed in fixed-size chunks on each device of the mesh
(``shard_map`` over the pool's ``data`` axis, ``lax.map`` over chunks), so a
pool of 1,000,000 items never materialises more than one chunk of
intermediates per device. TypiClust and ProbCover live in ``ssl_jax.clustering``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import parallel


@dataclasses.dataclass
class Pool:
    labelled: np.ndarray  # bool [N]
    probs: np.ndarray | None = None  # [N, C] class probabilities of the current model
    mc_probs: np.ndarray | None = None  # [T, N, C] under MC dropout (bald)
    embeddings: np.ndarray | None = None  # [N, D] (coreset, badge: the model's penultimate
    # features; typiclust, probcover: self-supervised features)

    def __len__(self):
        return len(self.labelled)


# ---------------------------------------------------------------- chunked scoring


def least_confidence(p):
    return 1.0 - jnp.max(p, axis=-1)


def margin(p):
    # Second largest by masking the argmax: one pass each, where top_k sorts
    # (3x slower on the CPU at 1M x 10); equal maxima give a margin of 0 either way.
    first = jnp.max(p, axis=-1)
    at_first = jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1], dtype=bool)
    second = jnp.max(jnp.where(at_first, -jnp.inf, p), axis=-1)
    return second - first


def entropy(p):
    return -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12)), axis=-1)


def bald(mc):
    """mc: [..., T, C] (the pool axis first, then the passes)."""
    return entropy(jnp.mean(mc, axis=-2)) - jnp.mean(entropy(mc), axis=-1)


SCORES = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "bald": bald,
}


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    pad = (-len(x)) % multiple
    if not pad:
        return x
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])


@functools.lru_cache(maxsize=32)
def _chunked(score_name: str, mesh, chunk: int):
    fn = SCORES[score_name]

    def local(x):  # this device's rows, [n_local, ...]
        xs = x.reshape(-1, chunk, *x.shape[1:])
        return jax.lax.map(fn, xs).reshape(-1)

    spec = P(parallel.DATA_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec))


def score_pool(score_name: str, values: np.ndarray, mesh=None, chunk: int = 4096) -> np.ndarray:
    """Per-item scores (higher = more worth labelling) of ``values`` ([N, C]
    probabilities, or [N, T, C] MC probabilities for bald), chunked and sharded."""
    if score_name not in SCORES:
        raise ValueError(f"unknown score {score_name!r}; known: {sorted(SCORES)}")
    mesh = mesh or parallel.make_mesh()
    n = len(values)
    n_dev = mesh.devices.size
    chunk = max(1, min(chunk, -(-n // n_dev)))
    x = _pad_rows(np.asarray(values, np.float32), n_dev * chunk)
    x = jax.device_put(x, NamedSharding(mesh, P(parallel.DATA_AXIS)))
    return np.asarray(_chunked(score_name, mesh, chunk)(x))[:n]


# ---------------------------------------------------------------- selectors


def _check(pool: Pool, budget: int) -> np.ndarray:
    unlabelled = np.flatnonzero(~pool.labelled)
    if budget < 1:
        raise ValueError(f"the budget must be at least 1, got {budget}")
    if budget > len(unlabelled):
        raise ValueError(
            f"budget {budget} exceeds the {len(unlabelled)} unlabelled items of the pool"
        )
    return unlabelled


def _need(pool: Pool, field: str, strategy: str):
    value = getattr(pool, field)
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs pool.{field}")
    return value


def top_unlabelled(scores: np.ndarray, labelled: np.ndarray, budget: int) -> np.ndarray:
    """The ``budget`` highest-scoring unlabelled items, best first; ties go to the
    lower id (a stable order, so the choice is deterministic)."""
    s = np.where(labelled, -np.inf, np.asarray(scores, np.float64))
    if budget < len(s):  # the candidates: everything at least the budget-th best score
        kth = -np.partition(-s, budget - 1)[budget - 1]
        ids = np.flatnonzero(s >= kth)  # ascending, so the stable sort keeps ties by id
    else:
        ids = np.arange(len(s))
    order = ids[np.argsort(-s[ids], kind="stable")]
    return order[:budget].astype(np.int64)


def select_random(pool, budget, key, mesh=None):
    _check(pool, budget)
    scores = np.asarray(jax.random.uniform(key, (len(pool),)))
    return top_unlabelled(scores, pool.labelled, budget)


def _by_score(name, field):
    def select_fn(pool, budget, key, mesh=None, chunk=4096):
        del key  # deterministic given the model
        _check(pool, budget)
        values = _need(pool, field, name)
        if name == "bald":
            values = np.moveaxis(values, 0, 1)  # [N, T, C]: shard the pool axis
        return top_unlabelled(score_pool(name, values, mesh, chunk), pool.labelled, budget)

    return select_fn


def _shard_rows(mesh, taken: np.ndarray, *arrays):
    """Arrays padded to a multiple of the mesh size and sharded by rows; padding
    rows are marked taken, so they are never chosen."""
    mesh = mesh or parallel.make_mesh()
    n_dev = mesh.devices.size
    sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
    pad = (-len(taken)) % n_dev
    taken = np.concatenate([taken, np.ones(pad, bool)])
    padded = [_pad_rows(np.asarray(a, np.float32), n_dev) for a in arrays]
    return [jax.device_put(a, sharding) for a in (*padded, taken)]


def select_coreset(pool, budget, key, mesh=None, chunk=4096):
    """k-center greedy: repeatedly the item farthest (Euclidean) from every
    labelled or already chosen item. With nothing labelled, the first centre is
    drawn at random."""
    _check(pool, budget)
    x = _need(pool, "embeddings", "coreset")
    centers = np.flatnonzero(pool.labelled)
    first = None
    if not len(centers):
        first = int(
            top_unlabelled(np.asarray(jax.random.uniform(key, (len(x),))), pool.labelled, 1)[0]
        )
        centers = np.array([first])
    taken = pool.labelled.copy()
    taken[centers] = True
    xs, taken = _shard_rows(mesh, taken, x)
    count = budget - (first is not None)
    chosen = np.asarray(_kcenter(xs, taken, jnp.asarray(centers), count, chunk))
    return chosen if first is None else np.concatenate([[first], chosen]).astype(np.int64)


def sq_dists_to(x, sq_norms, centers):
    """[N, K] squared distances of rows of x to ``centers`` [K, D] (clipped at 0)."""
    c_sq = jnp.sum(centers * centers, axis=1)
    return jnp.maximum(sq_norms[:, None] - 2.0 * x @ centers.T + c_sq[None, :], 0.0)


@functools.partial(jax.jit, static_argnames=("budget", "chunk"))
def _kcenter(x, taken, centers, budget, chunk):
    sq = jnp.sum(x * x, axis=1)
    # Distance to the nearest existing centre, in blocks of centres (padded by
    # repeating one, which cannot change a minimum).
    pad = (-len(centers)) % chunk
    blocks = jnp.concatenate([centers, jnp.repeat(centers[:1], pad)]).reshape(-1, chunk)

    def nearest(carry, idx):
        return jnp.minimum(carry, jnp.min(sq_dists_to(x, sq, x[idx]), axis=1)), None

    mind, _ = jax.lax.scan(nearest, jnp.full(x.shape[0], jnp.inf), blocks)

    def pick(i, state):
        mind, taken, out = state
        # -1 ranks taken items below every free one, even when all distances are 0.
        c = jnp.argmax(jnp.where(taken, -1.0, mind))
        d = jnp.maximum(sq - 2.0 * x @ x[c] + sq[c], 0.0)
        return jnp.minimum(mind, d), taken.at[c].set(True), out.at[i].set(c)

    init = (mind, taken, jnp.zeros(budget, jnp.int32))
    return jax.lax.fori_loop(0, budget, pick, init)[2]


def select_badge(pool, budget, key, mesh=None):
    """k-means++ seeding on gradient embeddings g_i = (p_i - onehot(argmax p_i)) ⊗ h_i.

    g is never materialised (it would be N x C*D): with a_i = p_i - onehot,
    <g_i, g_j> = <a_i, a_j> <h_i, h_j>, so squared distances need only the two
    factors. The first centre is the largest gradient; each next one is drawn
    with probability proportional to its squared distance to the nearest centre.
    """
    _check(pool, budget)
    p, h, taken = _shard_rows(
        mesh, pool.labelled, _need(pool, "probs", "badge"), _need(pool, "embeddings", "badge")
    )
    return np.asarray(_badge(p, h, taken, budget, key)).astype(np.int64)


@functools.partial(jax.jit, static_argnames=("budget",))
def _badge(p, h, labelled, budget, key):
    a = p - jax.nn.one_hot(jnp.argmax(p, axis=1), p.shape[1])
    norm_sq = jnp.sum(a * a, 1) * jnp.sum(h * h, 1)

    def dist_to(c):
        return jnp.maximum(norm_sq + norm_sq[c] - 2.0 * (a @ a[c]) * (h @ h[c]), 0.0)

    first = jnp.argmax(jnp.where(labelled, -1.0, norm_sq))
    taken = labelled.at[first].set(True)
    mind = dist_to(first)

    def pick(i, state):
        mind, taken, out = state
        free = (mind > 0) & ~taken
        log_d2 = jnp.log(jnp.where(free, mind, 1.0))
        # D^2 sampling; if every free item sits on a centre, uniformly among them.
        logits = jnp.where(
            free.any(), jnp.where(free, log_d2, -jnp.inf), jnp.where(taken, -jnp.inf, 0.0)
        )
        c = jax.random.categorical(jax.random.fold_in(key, i), logits)
        return jnp.minimum(mind, dist_to(c)), taken.at[c].set(True), out.at[i].set(c)

    init = (mind, taken, jnp.zeros(budget, jnp.int32).at[0].set(first))
    return jax.lax.fori_loop(1, budget, pick, init)[2]


SELECTORS = {
    "random": select_random,
    "least_confidence": _by_score("least_confidence", "probs"),
    "margin": _by_score("margin", "probs"),
    "entropy": _by_score("entropy", "probs"),
    "bald": _by_score("bald", "mc_probs"),
    "coreset": select_coreset,
    "badge": select_badge,
}


def select(name: str, pool: Pool, budget: int, key, mesh=None, **options) -> np.ndarray:
    """Item ids to label next (see the module docstring)."""
    if name in ("typiclust", "probcover"):
        from ssl_jax import clustering

        fn = clustering.SELECTORS[name]
    elif name in SELECTORS:
        fn = SELECTORS[name]
    else:
        known = sorted([*SELECTORS, "typiclust", "probcover"])
        raise ValueError(f"unknown acquisition strategy {name!r}; known: {known}")
    ids = np.asarray(fn(pool, budget, key, mesh=mesh, **options), np.int64)
    # The contract, checked on every call: distinct, unlabelled, exactly the budget.
    if len(ids) != budget or len(np.unique(ids)) != budget or pool.labelled[ids].any():
        raise RuntimeError(f"strategy {name!r} broke the selection contract: {ids}")
    return ids
