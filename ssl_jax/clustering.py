"""Clustering-based acquisition for the low-budget regime: TypiClust and ProbCover.

Both work on self-supervised embeddings and need no trained classifier, so they
also choose the cold-start set before any label exists.

* k-means: Lloyd iterations with k-means++ initialisation on a sample; the
  assignment step is a blocked [chunk, K] distance matmul, so memory stays
  O(chunk * K) whatever the pool size.
* TypiClust ("Active Learning on a Budget", Hacohen et al., 2022,
  https://arxiv.org/abs/2202.02794): cluster the pool into |L| + B clusters
  (at most ``max_clusters``); B times, take the cluster with the fewest labelled
  or chosen items (the largest on ties) and choose its most typical unlabelled
  item, typicality(x) = 1 / mean distance to its ``knn`` nearest neighbours in
  the cluster.
  ``restarts`` > 1 runs k-means that many times and keeps the clustering of
  lowest inertia (a single k-means++ run can split one class and merge two:
  experiments/active_mnist.md, cold start).
* ProbCover ("Active Learning Through a Covering Lens", Yehuda et al., 2022,
  https://arxiv.org/abs/2205.11320): connect items closer than delta; B times,
  choose the item whose delta-ball covers the most items not yet covered (by
  labelled or chosen items). delta is the largest candidate whose balls are
  ``purity`` pure with respect to k-means clusters (one cluster per class), as
  the paper chooses it. The delta-graph is built once in blocks and kept
  sparse on the host; the greedy coverage then touches each edge once. The
  graph has O(N^2) candidate pairs, so ProbCover suits pools up to a few
  hundred thousand items.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.acquisition import _check, _need, sq_dists_to


def _assign_blocks(x, centroids, chunk: int):
    """(nearest centroid, its squared distance) per row, in row blocks."""
    c_sq = jnp.sum(centroids * centroids, 1)
    n = x.shape[0]
    pad = (-n) % chunk
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])

    def block(xc):
        d = jnp.maximum(jnp.sum(xc * xc, 1)[:, None] - 2.0 * xc @ centroids.T + c_sq[None, :], 0.0)
        return jnp.argmin(d, 1), jnp.min(d, 1)

    idx, dist = jax.lax.map(block, xb)
    return idx.reshape(-1)[:n], dist.reshape(-1)[:n]


def kmeans(x, key, *, k: int, iters: int = 20, chunk: int = 4096, init_sample: int = 20000):
    """(centroids [k, D], assignment [N]) of Lloyd's k-means with k-means++
    initialisation on a random sample of at most ``init_sample`` rows."""
    centroids, assign, _ = _kmeans(x, key, k=k, iters=iters, chunk=chunk, init_sample=init_sample)
    return centroids, assign


@functools.partial(jax.jit, static_argnames=("k", "iters", "chunk", "init_sample"))
def _kmeans(x, key, *, k: int, iters: int, chunk: int, init_sample: int):
    """kmeans's (centroids, assignment) and the clustering's inertia (sum of
    squared distances to the assigned centroids)."""
    n = x.shape[0]
    k_sample, k_init = jax.random.split(key)
    m = min(n, max(init_sample, k))
    sample = x[jax.random.choice(k_sample, n, (m,), replace=False)]
    s_sq = jnp.sum(sample * sample, 1)

    def plus_plus(i, state):
        centroids, mind = state
        logits = jnp.where(mind > 0, jnp.log(jnp.where(mind > 0, mind, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.isfinite(logits).any(), logits, 0.0)  # all on centres: uniform
        c = jax.random.categorical(jax.random.fold_in(k_init, i), logits)
        d = jnp.maximum(s_sq - 2.0 * sample @ sample[c] + s_sq[c], 0.0)
        return centroids.at[i].set(sample[c]), jnp.minimum(mind, d)

    first = jax.random.randint(k_init, (), 0, m)
    mind = jnp.maximum(s_sq - 2.0 * sample @ sample[first] + s_sq[first], 0.0)
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(sample[first])
    centroids, _ = jax.lax.fori_loop(1, k, plus_plus, (centroids, mind))

    def lloyd(_, centroids):
        idx, _ = _assign_blocks(x, centroids, chunk)
        sums = jax.ops.segment_sum(x, idx, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(n), idx, num_segments=k)
        # An empty cluster keeps its centroid.
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)

    centroids = jax.lax.fori_loop(0, iters, lloyd, centroids)
    assign, dist = _assign_blocks(x, centroids, chunk)
    return centroids, assign, jnp.sum(dist)


def typicality(x: np.ndarray, knn: int) -> np.ndarray:
    """1 / mean Euclidean distance to each row's ``knn`` nearest other rows."""
    n = len(x)
    if n == 1:
        return np.ones(1)
    k = min(knn, n - 1)
    sq = np.sum(x * x, 1)
    d = np.sqrt(np.maximum(sq[:, None] - 2.0 * x @ x.T + sq[None, :], 0.0))
    np.fill_diagonal(d, np.inf)
    nearest = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (nearest.mean(1) + 1e-12)


def kmeans_best(
    x,
    key,
    *,
    k: int,
    restarts: int = 1,
    iters: int = 20,
    chunk: int = 4096,
    init_sample: int = 20000,
):
    """The assignment [N] of the lowest-inertia clustering among ``restarts``
    k-means runs (each its own k-means++ initialisation)."""
    if restarts < 1:
        raise ValueError(f"k-means restarts must be >= 1, got {restarts}")
    best, best_inertia = None, np.inf
    for r in range(restarts):
        k_r = key if r == 0 else jax.random.fold_in(key, r)  # restarts=1: the plain k-means
        _, assign, inertia = _kmeans(x, k_r, k=k, iters=iters, chunk=chunk, init_sample=init_sample)
        inertia = float(inertia)
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return np.asarray(best)


def select_typiclust(pool, budget, key, mesh=None, max_clusters=500, knn=20, iters=20, restarts=1):
    _check(pool, budget)
    x = np.asarray(_need(pool, "embeddings", "typiclust"), np.float32)
    k = int(min(pool.labelled.sum() + budget, max_clusters, len(x)))
    assign = kmeans_best(jnp.asarray(x), key, k=k, restarts=restarts, iters=iters)
    sizes = np.bincount(assign, minlength=k)
    covered = np.bincount(assign[pool.labelled], minlength=k)
    taken = pool.labelled.copy()
    out = []
    for _ in range(budget):
        free = np.bincount(assign[~taken], minlength=k)
        # Fewest labelled first, then the largest; clusters with nothing left to take last.
        order = np.lexsort((-sizes, covered, free == 0))
        c = int(order[0])
        members = np.flatnonzero(assign == c)
        typ = typicality(x[members], knn)
        typ[taken[members]] = -np.inf
        item = int(members[np.argmax(typ)])
        out.append(item)
        taken[item] = True
        covered[c] += 1
    return np.asarray(out, np.int64)


# ---------------------------------------------------------------- ProbCover


@functools.partial(jax.jit, static_argnames=("chunk",))
def _ball_block(x, sq, rows, delta_sq, chunk):
    del chunk
    return sq_dists_to(x, sq, x[rows]).T < delta_sq  # [rows, N]


def delta_graph(x: np.ndarray, delta: float, chunk: int = 1024) -> list[np.ndarray]:
    """Neighbours (distance < delta, self included) of every row, built in blocks."""
    xj = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(xj * xj, 1)
    n = len(x)
    neighbours = []
    for start in range(0, n, chunk):
        rows = jnp.arange(start, min(start + chunk, n))
        block = np.asarray(_ball_block(xj, sq, rows, delta * delta, chunk))
        neighbours.extend(np.flatnonzero(r) for r in block)
    return neighbours


def ball_purity(x: np.ndarray, clusters: np.ndarray, deltas, sample: int, key) -> np.ndarray:
    """For each delta, the fraction of sampled items whose delta-ball holds only
    items of their own cluster."""
    idx = np.asarray(jax.random.choice(key, len(x), (min(sample, len(x)),), replace=False))
    xj = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(xj * xj, 1)
    cj = jnp.asarray(clusters)
    # An item's ball is pure iff delta <= its distance to the nearest item of another cluster.
    nearest_other = []
    for start in range(0, len(idx), 128):  # [128, N] distances at a time
        rows = jnp.asarray(idx[start : start + 128])
        d = sq_dists_to(xj, sq, xj[rows]).T
        d = jnp.where(cj[None, :] != cj[rows][:, None], d, jnp.inf)
        nearest_other.append(np.sqrt(np.asarray(d.min(1))))
    nearest_other = np.concatenate(nearest_other)
    return np.array([(nearest_other >= delta).mean() for delta in deltas])


def choose_delta(x, num_classes, key, purity=0.95, sample=2000, candidates=20):
    """The largest delta whose balls are ``purity`` pure w.r.t. k-means clusters."""
    _, clusters = kmeans(jnp.asarray(x), key, k=num_classes)
    clusters = np.asarray(clusters)
    # Candidates between the typical nearest-neighbour distance and the median distance.
    rng = np.random.default_rng(0)
    probe = x[rng.choice(len(x), min(1000, len(x)), replace=False)]
    sq = np.sum(probe * probe, 1)
    d = np.sqrt(np.maximum(sq[:, None] - 2 * probe @ probe.T + sq[None, :], 0))
    np.fill_diagonal(d, np.inf)
    lo, hi = np.median(d.min(1)), np.median(d[np.isfinite(d)])
    deltas = np.linspace(lo, hi, candidates)
    pure = ball_purity(x, clusters, deltas, sample, key)
    ok = deltas[pure >= purity]
    return float(ok.max()) if len(ok) else float(deltas[0])


def select_probcover(pool, budget, key, mesh=None, delta=0.0, num_classes=10, purity=0.95):
    _check(pool, budget)
    x = np.asarray(_need(pool, "embeddings", "probcover"), np.float32)
    if not delta:
        delta = choose_delta(x, num_classes, key, purity)
    neighbours = delta_graph(x, delta)
    covered = np.zeros(len(x), bool)
    for i in np.flatnonzero(pool.labelled):
        covered[neighbours[i]] = True
    # gain[i] = number of not-yet-covered items in i's ball; the graph is symmetric,
    # so covering item j lowers the gain of every item in j's ball.
    gain = np.array([np.count_nonzero(~covered[nb]) for nb in neighbours])
    taken = pool.labelled.copy()
    out = []
    for _ in range(budget):
        c = int(np.argmax(np.where(taken, -1, gain)))
        out.append(c)
        taken[c] = True
        newly = neighbours[c][~covered[neighbours[c]]]
        covered[newly] = True
        for j in newly:
            gain[neighbours[j]] -= 1
    return np.asarray(out, np.int64)


SELECTORS = {"typiclust": select_typiclust, "probcover": select_probcover}
