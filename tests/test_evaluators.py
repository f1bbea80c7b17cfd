import numpy as np
import pytest

from ssl_jax.evaluators import get_evaluator
from ssl_jax.evaluators.knn import knn_predict


def blobs(n, seed, classes=3, dim=6, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = np.eye(dim)[:classes] * 3
    y = rng.integers(0, classes, n)
    return (centers[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


def test_knn_predict_hand_made():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1])
    queries = np.array([[1.0, 0.05], [0.05, 1.0]], np.float32)
    pred = knn_predict(train, labels, queries, k=1, temperature=0.1, num_classes=2, chunk=4)
    assert list(np.asarray(pred)) == [0, 1]
    # with k=3 the two class-0 neighbours outvote the single class-1 neighbour for a middle query
    mid = np.array([[0.7, 0.7]], np.float32)
    pred = knn_predict(train, labels, mid, k=3, temperature=10.0, num_classes=2, chunk=4)
    assert int(pred[0]) == 0


def test_knn_evaluator_on_separable_blobs():
    train, test = blobs(60, 0), blobs(50, 1)
    out = get_evaluator("knn", k=5).run({"train": train, "test": test})
    assert out["knn_test_acc"] > 0.95
    # shuffled labels: chance level
    bad = get_evaluator("knn", k=5).run(
        {"train": (train[0], np.random.default_rng(0).permutation(train[1])), "test": test}
    )
    assert bad["knn_test_acc"] < 0.8


def test_linear_probe_learns_and_selects_l2_on_val():
    feats = {
        "train": blobs(40, 0, spread=0.7),
        "val": blobs(200, 1, spread=0.7),
        "test": blobs(200, 2, spread=0.7),
    }
    out = get_evaluator("linear_probe", l2_grid=(1e-4, 1e3), steps=200).run(feats)
    assert out["linear_test_acc"] > 0.9
    assert out["linear_l2"] == 1e-4  # an absurd L2 (all-zero weights) must lose on val


def test_linear_probe_lbfgs_reaches_scikit_learns_optimum():
    # The same objective as scikit-learn's multinomial LogisticRegression
    # (unpenalised intercept): mean cross-entropy + l2/2 |w|^2 is its
    # |w|^2/2 + C * sum of losses with C = 1 / (l2 * n).
    import jax.numpy as jnp
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from ssl_jax.evaluators import linear_probe

    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    l2 = 1e-2
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-8, max_iter=5000).fit(x, y)
    w, b = linear_probe.fit(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray([l2, 10 * l2]),
        num_classes=10,
        steps=300,
        lr=0.0,
        method="lbfgs",
        tol=1e-5,
    )
    # Softmax weights are defined up to a constant per feature: compare centred.
    centred = lambda a: a - a.mean(-1, keepdims=True)
    np.testing.assert_allclose(centred(np.asarray(w[0])), centred(ref.coef_.T), atol=2e-3)
    np.testing.assert_allclose(centred(np.asarray(b[0])), centred(ref.intercept_), atol=2e-3)
    # Each L2 strength of the grid gets its own optimum: the stronger one is smaller.
    assert np.abs(w[1]).sum() < 0.8 * np.abs(w[0]).sum()


def test_linear_probe_lbfgs_evaluator_and_unknown_method():
    feats = {
        "train": blobs(40, 0, spread=0.7),
        "val": blobs(200, 1, spread=0.7),
        "test": blobs(200, 2, spread=0.7),
    }
    out = get_evaluator("linear_probe", l2_grid=(1e-4, 1e3), steps=50, method="lbfgs").run(feats)
    assert out["linear_test_acc"] > 0.9 and out["linear_l2"] == 1e-4
    with pytest.raises(ValueError, match="unknown linear probe method 'sgd'"):
        get_evaluator("linear_probe", method="sgd")


def test_linear_probe_class_balanced_equals_replicating_the_rare_class():
    # Balanced weights n / (C * n_c) give 30 items of class 0 the weight 2/3 and
    # 10 items of class 1 the weight 2: the same objective as class 1's items
    # repeated three times, unweighted. Both fits must reach the same optimum.
    import jax.numpy as jnp

    from ssl_jax.evaluators import linear_probe

    x, y = blobs(200, 3, classes=2, spread=1.5)
    keep = np.concatenate([np.flatnonzero(y == 0)[:30], np.flatnonzero(y == 1)[:10]])
    x, y = x[keep], y[keep]
    rare = y == 1
    x_rep = np.concatenate([x[~rare], x[rare], x[rare], x[rare]])
    y_rep = np.concatenate([y[~rare], y[rare], y[rare], y[rare]])
    kw = dict(num_classes=2, steps=300, lr=0.0, method="lbfgs", tol=1e-6)
    l2 = jnp.asarray([1e-2])
    balanced = linear_probe.fit(jnp.asarray(x), jnp.asarray(y), l2, class_balanced=True, **kw)
    replicated = linear_probe.fit(jnp.asarray(x_rep), jnp.asarray(y_rep), l2, **kw)
    plain = linear_probe.fit(jnp.asarray(x), jnp.asarray(y), l2, **kw)
    for a, b in zip(balanced, replicated, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)
    # ... and not the unweighted optimum: the rare class's bias is higher.
    margin = lambda b: float(b[0, 1] - b[0, 0])
    assert margin(balanced[1]) > margin(plain[1]) + 0.1


def test_linear_probe_standardises_by_the_given_statistics():
    feats = {
        "train": blobs(40, 0, spread=0.7),
        "val": blobs(200, 1, spread=0.7),
        "test": blobs(200, 2, spread=0.7),
    }
    probe = get_evaluator("linear_probe", l2_grid=(1e-4,), steps=50)
    own, _ = probe.fit(feats)
    np.testing.assert_allclose(own.mean, feats["train"][0].mean(0), rtol=1e-6)
    pool = blobs(500, 4, spread=0.7)[0] * 2.0 + 1.0
    model, out = probe.fit(feats, stats_from=pool)
    np.testing.assert_allclose(model.mean, pool.mean(0), rtol=1e-6)
    np.testing.assert_allclose(model.std, pool.std(0) + 1e-6, rtol=1e-6)
    assert out["linear_test_acc"] > 0.9
