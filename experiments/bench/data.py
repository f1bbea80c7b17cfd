"""Inputs of the side-by-side benchmarks, made with numpy only so that the
ssl_jax side and the peer side (another virtual environment) build the very
same arrays from the same seed."""

import numpy as np

# Job name (experiments/bench/peers.py) → the function that sets it up, the
# same name in jax_side.py and torch_side.py.
JOB_FUNCTIONS = {
    "matmul": "matmul",
    "simclr_step": "simclr_step",
    "mae_step": "mae_step",
    "mae_rest": "mae_step",
    "vit_blocks": "vit_blocks",
    "decoder_blocks": "vit_blocks",
    "dense_stack": "dense_stack",
    "attention": "attention",
    "augment32": "augment",
    "augment224": "augment",
    "linear_probe": "linear_probe_job",
    "knn": "knn_job",
    "entropy": "acquisition_job",
    "margin": "acquisition_job",
    "coreset": "acquisition_job",
    "badge": "acquisition_job",
    "typiclust": "acquisition_job",
}


def jobs(module) -> dict:
    """{job: setup function} of one side's module."""
    return {job: getattr(module, fn) for job, fn in JOB_FUNCTIONS.items()}


def images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """[n, size, size, channels] uint8: smooth random blobs rather than white
    noise, so crops and colour ops see image-like statistics."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, channels)).astype(np.float32)
    reps = -(-size // 8)
    big = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    noise = rng.normal(0, 12, big.shape).astype(np.float32)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def tokens(n: int, length: int, width: int, seed: int = 0) -> np.ndarray:
    """[n, length, width] float32 standard normal: a transformer's inputs."""
    return np.random.default_rng(seed).normal(size=(n, length, width)).astype(np.float32)


def features(n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """Frozen-feature stand-ins: a Gaussian cluster per class whose centres are
    close enough that a linear probe reaches ~90%, not 100%.
    Returns (x_train, y_train, x_test, y_test), float32 / int64."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.12
    y = rng.integers(0, classes, n_train + n_test)
    x = centres[y] + rng.normal(size=(n_train + n_test, dim)).astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def pool(n: int, dim: int, classes: int, labelled_fraction: float = 0.01, seed: int = 0):
    """An acquisition pool: (embeddings [n, dim], logits [n, classes],
    labels [n], labelled mask [n]). Embeddings sit around 10 centres so
    clustering has structure; the logits are a noisy linear read-out of them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim)).astype(np.float32) * 3
    which = rng.integers(0, 10, n)
    emb = centres[which] + rng.normal(size=(n, dim)).astype(np.float32)
    labels = which % classes
    readout = rng.normal(size=(dim, classes)).astype(np.float32) / np.sqrt(dim)
    logits = (emb @ readout + rng.normal(size=(n, classes)).astype(np.float32)).astype(np.float32)
    labelled = np.zeros(n, bool)
    labelled[rng.choice(n, max(1, int(n * labelled_fraction)), replace=False)] = True
    return emb, logits, labels, labelled
