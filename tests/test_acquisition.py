"""Acquisition scores and selectors."""

import jax
import numpy as np
import pytest

from ssl_jax import acquisition, clustering, parallel
from ssl_jax.acquisition import Pool

STRATEGIES = [
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "bald",
    "coreset",
    "badge",
    "typiclust",
    "probcover",
]


def random_pool(n=300, c=5, d=8, t=4, labelled=30, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, n, c)) * 2
    mc = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mask = np.zeros(n, bool)
    mask[rng.choice(n, labelled, replace=False)] = True
    return Pool(
        labelled=mask,
        probs=mc.mean(0),
        mc_probs=mc,
        embeddings=rng.normal(size=(n, d)).astype(np.float32),
    )


def test_scores_on_hand_made_probabilities():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [0.7, 0.2, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(acquisition.score_pool("entropy", p)[0], np.log(4), rtol=1e-6)
    np.testing.assert_allclose(acquisition.score_pool("entropy", p)[2], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        acquisition.score_pool("least_confidence", p), [0.75, 0.3, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(acquisition.score_pool("margin", p), [0.0, -0.5, -1.0], atol=1e-6)


def test_bald_is_zero_when_all_passes_agree_and_positive_when_they_disagree():
    agree = np.tile(np.array([[0.6, 0.3, 0.1]]), (5, 1))[None]  # [N=1, T=5, C=3]
    np.testing.assert_allclose(acquisition.score_pool("bald", agree), 0.0, atol=1e-6)
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # two confident passes, opposite classes
    np.testing.assert_allclose(acquisition.score_pool("bald", disagree), np.log(2), rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_scoring_equals_unchunked(chunk):
    pool = random_pool(n=301)
    for name in ("entropy", "margin", "least_confidence"):
        ref = np.asarray(getattr(acquisition, name)(pool.probs))
        np.testing.assert_allclose(
            acquisition.score_pool(name, pool.probs, chunk=chunk), ref, rtol=1e-6
        )
    ref = np.asarray(acquisition.bald(np.moveaxis(pool.mc_probs, 0, 1)))
    got = acquisition.score_pool("bald", np.moveaxis(pool.mc_probs, 0, 1), chunk=chunk)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_selectors_return_distinct_unlabelled_ids_deterministically(name):
    pool = random_pool()
    opts = {"num_classes": 5} if name == "probcover" else {}
    a = acquisition.select(name, pool, 25, jax.random.PRNGKey(0), **opts)
    b = acquisition.select(name, pool, 25, jax.random.PRNGKey(0), **opts)
    assert len(a) == 25 and len(set(a)) == 25
    assert not pool.labelled[a].any()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["random", "entropy", "margin", "bald", "coreset", "badge"])
def test_one_and_eight_devices_select_the_same_ids(name):
    pool = random_pool(n=203)
    key = jax.random.PRNGKey(3)
    one = acquisition.select(name, pool, 20, key, mesh=parallel.make_mesh(1))
    eight = acquisition.select(name, pool, 20, key, mesh=parallel.make_mesh(8))
    np.testing.assert_array_equal(one, eight)


def test_budget_errors():
    pool = random_pool(n=50, labelled=45)
    with pytest.raises(ValueError, match="exceeds the 5 unlabelled"):
        acquisition.select("entropy", pool, 6, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="at least 1"):
        acquisition.select("random", pool, 0, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="unknown acquisition strategy"):
        acquisition.select("oracle", pool, 1, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs pool.embeddings"):
        acquisition.select("coreset", Pool(labelled=pool.labelled), 1, jax.random.PRNGKey(0))


def test_kcenter_greedy_picks_the_known_farthest_points():
    x = np.array([[0, 0], [1, 0], [0, 1], [10, 0], [0, 10], [9, 9], [5, 5]], np.float32)
    labelled = np.zeros(7, bool)
    labelled[0] = True
    ids = acquisition.select(
        "coreset", Pool(labelled=labelled, embeddings=x), 3, jax.random.PRNGKey(0)
    )
    # Farthest from (0,0): (9,9) at 162; then from {(0,0), (9,9)}: (10,0) and (0,10) tie at 82
    # (the lower id first), then the other.
    np.testing.assert_array_equal(ids, [5, 3, 4])


def test_badge_distances_equal_explicit_gradient_embeddings():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    h = rng.normal(size=(6, 3)).astype(np.float32)
    a = p - np.eye(4)[p.argmax(1)]
    g = (a[:, :, None] * h[:, None, :]).reshape(6, -1)
    # The first BADGE centre is the largest explicit gradient embedding.
    ids = acquisition.select(
        "badge", Pool(labelled=np.zeros(6, bool), probs=p, embeddings=h), 6, jax.random.PRNGKey(0)
    )
    assert ids[0] == np.argmax(np.linalg.norm(g, axis=1))
    # And the implicit squared distance matches the explicit one.
    norm_sq = (a * a).sum(1) * (h * h).sum(1)
    implicit = norm_sq + norm_sq[0] - 2 * (a @ a[0]) * (h @ h[0])
    np.testing.assert_allclose(implicit, ((g - g[0]) ** 2).sum(1), rtol=1e-4, atol=1e-5)


def _blobs(centres, per, spread, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [c + spread * rng.normal(size=(per, 2)) for c in np.asarray(centres, np.float32)]
    ).astype(np.float32)


def test_typiclust_picks_the_dense_centre_of_each_cluster():
    centres = [[0, 0], [20, 0], [0, 20]]
    x = _blobs(centres, 60, 1.0)
    ids = acquisition.select(
        "typiclust", Pool(labelled=np.zeros(len(x), bool), embeddings=x), 3, jax.random.PRNGKey(0)
    )
    picked = x[ids]
    # One item per cluster, each close to its cluster's centre (typical, not an outlier).
    nearest = np.argmin(((picked[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest) == [0, 1, 2]
    assert (np.linalg.norm(picked - np.array(centres)[nearest], axis=1) < 1.0).all()


def test_typiclust_and_probcover_skip_covered_clusters():
    centres = [[0, 0], [20, 0], [0, 20]]
    x = _blobs(centres, 60, 1.0)
    labelled = np.zeros(len(x), bool)
    labelled[:3] = True  # cluster 0 already has labels
    for name, opts in (("typiclust", {}), ("probcover", {"num_classes": 3})):
        ids = acquisition.select(
            name, Pool(labelled=labelled, embeddings=x), 2, jax.random.PRNGKey(1), **opts
        )
        assert sorted(ids // 60) == [1, 2], name


def test_probcover_delta_graph_and_coverage():
    x = np.array([[0, 0], [0.5, 0], [5, 0], [5.5, 0], [5, 0.5], [20, 0]], np.float32)
    nb = clustering.delta_graph(x, 1.0)
    assert [sorted(n) for n in nb] == [[0, 1], [0, 1], [2, 3, 4], [2, 3, 4], [2, 3, 4], [5]]
    ids = acquisition.select(
        "probcover",
        Pool(labelled=np.zeros(6, bool), embeddings=x),
        3,
        jax.random.PRNGKey(0),
        delta=1.0,
    )
    assert ids[0] == 2  # covers three
    assert sorted(ids[1:]) == [0, 5]


def test_kmeans_recovers_separated_clusters():
    import jax.numpy as jnp

    x = _blobs([[0, 0], [10, 0], [0, 10], [10, 10]], 50, 0.5)
    _, assign = clustering.kmeans(jnp.asarray(x), jax.random.PRNGKey(0), k=4, iters=10)
    assign = np.asarray(assign).reshape(4, 50)
    assert all(len(set(row)) == 1 for row in assign) and len({row[0] for row in assign}) == 4
    # The inertia kmeans_best compares: squared distances to the assigned centroids.
    c, a, inertia = clustering._kmeans(
        jnp.asarray(x), jax.random.PRNGKey(0), k=4, iters=10, chunk=64, init_sample=100
    )
    c, a = np.asarray(c), np.asarray(a)
    np.testing.assert_allclose(float(inertia), np.sum((x - c[a]) ** 2), rtol=1e-4)


def test_kmeans_restarts_keep_the_lowest_inertia_run():
    import jax.numpy as jnp

    # Nine blobs on a grid: a single k-means++ run often leaves two centres in
    # one blob and merges two others; the best of several runs does not.
    grid = [[3 * i, 3 * j] for i in range(3) for j in range(3)]
    x = jnp.asarray(_blobs(grid, 40, 0.3))

    def recovered(assign):
        rows = np.asarray(assign).reshape(9, 40)
        return all(len(set(r)) == 1 for r in rows) and len({r[0] for r in rows}) == 9

    keys = [jax.random.PRNGKey(k) for k in range(10)]
    single = [clustering.kmeans_best(x, key, k=9, restarts=1, iters=10) for key in keys]
    for key, assign in zip(keys, single, strict=True):  # one run is the plain k-means of that key
        np.testing.assert_array_equal(assign, clustering.kmeans(x, key, k=9, iters=10)[1])
    assert not all(recovered(a) for a in single)
    assert all(recovered(clustering.kmeans_best(x, key, k=9, restarts=8, iters=10)) for key in keys)
    with pytest.raises(ValueError, match="restarts"):
        clustering.kmeans_best(x, keys[0], k=9, restarts=0)


@pytest.mark.parametrize("budget", [1, 5, 40, 99, 100])
def test_top_unlabelled_equals_a_full_stable_sort_with_ties(budget):
    rng = np.random.default_rng(budget)
    scores = rng.integers(0, 6, 100).astype(np.float32)  # many ties
    labelled = rng.random(100) < 0.3
    budget = min(budget, int((~labelled).sum()))
    got = acquisition.top_unlabelled(scores, labelled, budget)
    s = np.where(labelled, -np.inf, scores.astype(np.float64))
    np.testing.assert_array_equal(got, np.argsort(-s, kind="stable")[:budget])


def test_margin_equals_the_top_two_gap_with_tied_maxima():
    p = np.array([[0.4, 0.4, 0.2], [0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
    top2 = np.sort(p, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(acquisition.margin(p), top2[:, 1] - top2[:, 0], atol=1e-7)
