import numpy as np

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
