"""Small real data and tiny configs shared by the tests."""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_digits_folder(root: str, *, test_fraction: float = 0.2, seed: int = 0) -> str:
    """scikit-learn's 8×8 digits (1,797 real images) as a folder dataset:
    root/train/<digit>/*.png and root/test/<digit>/*.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    is_test = np.random.default_rng(seed).random(len(images)) < test_fraction
    for i, (img, y) in enumerate(zip(images, digits.target, strict=True)):
        d = os.path.join(root, "test" if is_test[i] else "train", str(y))
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img, mode="L").save(os.path.join(d, f"{i:04d}.png"))
    return root


def tiny_config(data_name: str, **overrides):
    """configs/simclr.py:mnist shrunk to seconds: 8×8 digits, a small CNN, few steps."""
    from configs import simclr

    c = simclr.get_config("mnist")
    c.data.name = data_name
    c.data.image_size, c.data.channels, c.data.val_size = 8, 1, 200
    c.labels.per_class = 5
    view = "random_resized_crop(8, scale=(0.5, 1.0))|value_range(-1, 1)"
    c.pp.views.view1 = view
    c.pp.views.view2 = view
    c.objective.kw.proj_hidden_dim = 32
    c.objective.kw.proj_dim = 16
    c.pretrain.update(
        steps=6, batch_size=64, log_every=2, ckpt_every=3, eval_every=3, eval_val_items=100
    )
    c.eval.batch_size = 256
    c.eval.linear.steps = 50
    c.report.embedding = "pca"
    c.report.embedding_points = 200
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c
