"""LabelStore: which pool items carry labels, and where each label came from.

It is the single record of known labels for a run. Saves are atomic (write a
temporary file in the same directory, fsync, rename), so a crash at any moment
leaves the old or the new file, never a mix, and a human's labels are never lost.
"""

import json
import os
import signal
import tempfile

import numpy as np


def atomic_write_text(path: str, text: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("SSL_JAX_KILL_BEFORE_RENAME") == os.path.basename(path):
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the crash tests
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class LabelStore:
    """Maps pool index → (label, source). Sources: 'dataset' (revealed ground
    truth for experiments) and 'human' (imported by a person)."""

    def __init__(self, pool_size: int, labels: dict[int, tuple[int, str]] | None = None):
        self.pool_size = pool_size
        self.labels = dict(labels or {})

    @classmethod
    def choose(
        cls, true_labels: np.ndarray, *, per_class: int = 0, count: int = 0, seed: int = 0
    ) -> "LabelStore":
        """Reveals ground-truth labels for a seeded subset: ``per_class`` items of
        every class, or ``count`` items drawn uniformly from labelled items
        (``count=-1``: every labelled item). With neither, the store starts empty
        (labels then come from active learning or a person)."""
        rng = np.random.default_rng(seed)
        known = np.flatnonzero(true_labels >= 0)
        if per_class:
            chosen = []
            for c in np.unique(true_labels[known]):
                members = known[true_labels[known] == c]
                if len(members) < per_class:
                    raise ValueError(
                        f"class {c} has only {len(members)} items, "
                        f"fewer than labels.per_class={per_class}"
                    )
                chosen.append(rng.choice(members, per_class, replace=False))
            chosen = np.sort(np.concatenate(chosen))
        elif count == -1:
            chosen = known
        elif count:
            if count > len(known):
                raise ValueError(f"labels.count={count} exceeds the {len(known)} labelled items")
            chosen = np.sort(rng.choice(known, count, replace=False))
        else:
            chosen = known[:0]
        return cls(len(true_labels), {int(i): (int(true_labels[i]), "dataset") for i in chosen})

    def indices(self) -> np.ndarray:
        return np.asarray(sorted(self.labels), dtype=np.int64)

    def label_array(self) -> np.ndarray:
        """[pool_size] int32 labels, -1 where unknown."""
        out = np.full(self.pool_size, -1, np.int32)
        for i, (y, _) in self.labels.items():
            out[i] = y
        return out

    def __len__(self):
        return len(self.labels)

    def save(self, path: str):
        items = [{"index": i, "label": y, "source": s} for i, (y, s) in sorted(self.labels.items())]
        atomic_write_json(path, {"pool_size": self.pool_size, "items": items})

    @classmethod
    def load(cls, path: str) -> "LabelStore":
        with open(path) as f:
            data = json.load(f)
        return cls(
            data["pool_size"], {d["index"]: (d["label"], d["source"]) for d in data["items"]}
        )
