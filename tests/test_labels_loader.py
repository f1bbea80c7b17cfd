import json
import os

import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.data.labels import LabelStore, atomic_write_json
from ssl_jax.data.loader import Loader, batched


def test_label_store_per_class_is_balanced_seeded_and_round_trips(tmp_path):
    y = np.repeat(np.arange(10), 50)
    a = LabelStore.choose(y, per_class=3, seed=1)
    b = LabelStore.choose(y, per_class=3, seed=1)
    c = LabelStore.choose(y, per_class=3, seed=2)
    assert len(a) == 30
    assert np.array_equal(np.bincount(a.label_array()[a.indices()]), np.full(10, 3))
    assert np.array_equal(a.indices(), b.indices())
    assert not np.array_equal(a.indices(), c.indices())
    assert np.all(a.label_array()[a.indices()] == y[a.indices()])
    path = tmp_path / "labels.json"
    a.save(str(path))
    back = LabelStore.load(str(path))
    assert back.labels == a.labels and back.pool_size == 500


def test_label_store_count_and_errors():
    y = np.array([0, 0, 1, -1, 1])
    store = LabelStore.choose(y, count=3, seed=0)
    assert len(store) == 3 and 3 not in store.labels  # never an unlabelled item
    with pytest.raises(ValueError, match="per_class"):
        LabelStore.choose(y, per_class=3)
    with pytest.raises(ValueError, match="count"):
        LabelStore.choose(y, count=5)
    assert len(LabelStore.choose(y, count=-1)) == 4  # every labelled item
    assert len(LabelStore.choose(y)) == 0  # none: labels will come from elsewhere


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "x.json")
    atomic_write_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": Boom()})
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # no temporary left behind


def test_loader_is_deterministic_resumable_and_covers_each_epoch():
    mesh = parallel.make_mesh()
    data = {"x": np.arange(100, dtype=np.int32)}
    a = Loader(data, 16, mesh, seed=3)
    seq = [np.asarray(next(a)["x"]) for _ in range(9)]
    epoch0 = np.concatenate(seq[:6])  # 100 // 16 = 6 batches per epoch
    assert len(np.unique(epoch0)) == 96
    b = Loader(data, 16, mesh, seed=3, position=4)
    assert np.array_equal(np.asarray(next(b)["x"]), seq[4])
    assert not np.array_equal(seq[0], seq[6])  # a new permutation each epoch
    assert next(a)["x"].sharding.spec == parallel.data_sharded(mesh).spec


def test_loader_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="divisible"):
        Loader({"x": np.zeros(100)}, 12, parallel.make_mesh())


def test_batched_pads_last_batch():
    out = list(batched(10, 4))
    assert [v for _, v in out] == [4, 4, 2]
    assert all(len(i) == 4 for i, _ in out)


def test_loader_mixes_labelled_rows_into_every_batch_and_resumes():
    mesh = parallel.make_mesh()
    labels = np.full(200, -1, np.int32)
    labelled = np.array([3, 50, 77, 120, 199])
    labels[labelled] = [0, 1, 2, 0, 1]
    data = {"x": np.arange(200, dtype=np.int32), "label": labels}
    a = Loader(data, 16, mesh, seed=1, labels=labels, labelled_per_batch=8)
    seq = [np.asarray(next(a)["x"]) for _ in range(5)]
    for batch in seq:
        assert np.isin(batch[8:], labelled).all()  # the last 8 rows are labelled items
    stream = np.concatenate([b[8:] for b in seq])
    # Each labelled item appears once per pass over the 5 labelled items.
    for start in range(0, 40, 5):
        assert sorted(stream[start : start + 5]) == sorted(labelled)
    b = Loader(data, 16, mesh, seed=1, labels=labels, labelled_per_batch=8, position=3)
    assert np.array_equal(np.asarray(next(b)["x"]), seq[3])


def test_loader_balanced_labelled_stream_and_all_labelled_batches():
    mesh = parallel.make_mesh()
    labels = np.full(300, -1, np.int32)
    labels[:30] = 0  # class 0 has 30 items, class 1 only 3, class 2 has 7
    labels[100:103] = 1
    labels[200:207] = 2
    data = {"x": np.arange(300, dtype=np.int32), "label": labels}
    # Every row labelled (a supervised batch), 24 rows > the 40 labelled items' classes.
    a = Loader(data, 24, mesh, labels=labels, labelled_per_batch=24, balanced=True)
    for _ in range(4):
        batch = next(a)
        counts = np.bincount(np.asarray(batch["label"]), minlength=3)
        assert counts.tolist() == [8, 8, 8]


def test_loader_rejects_labelled_rows_without_labels():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="no item carries a label"):
        Loader({"x": np.zeros(64)}, 16, mesh, labels=np.full(64, -1), labelled_per_batch=4)
    with pytest.raises(ValueError, match="needs the items' labels"):
        Loader({"x": np.zeros(64)}, 16, mesh, labelled_per_batch=4)
