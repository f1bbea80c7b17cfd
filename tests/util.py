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


TINY_VIEW = "random_resized_crop(8, scale=(0.5, 1.0))|value_range(-1, 1)"
TINY_LOCAL_VIEW = "random_resized_crop(4, scale=(0.2, 0.5))|value_range(-1, 1)"


def tiny_config(data_name: str, objective: str = "simclr", variant: str = "mnist", **overrides):
    """configs/<objective>.py:<variant> shrunk to seconds: 8×8 digits, tiny networks, few steps."""
    import importlib

    c = importlib.import_module(f"configs.{objective}").get_config(variant)
    c.data.name = data_name
    c.data.image_size, c.data.channels, c.data.val_size = 8, 1, 200
    c.labels.per_class = 5
    for name in c.pp.views:
        c.pp.views[name] = TINY_LOCAL_VIEW if name.startswith("local") else TINY_VIEW
    kw = c.objective.kw
    if "proj_dim" in kw:
        kw.update(proj_hidden_dim=32, proj_dim=16)
    if objective == "dino" or kw.get("base") == "dino":
        kw.update(out_dim=64, hidden_dim=32, bottleneck_dim=16, num_local_crops=2)
        kw.freeze_last_layer_steps = 0  # tested on its own (test_dino.py)
        with c.pp.views.unlocked():
            for name in [n for n in c.pp.views if n.startswith("local")][2:]:
                del c.pp.views[name]
    if objective in ("autoencoder", "colorization"):
        kw.decoder_width = 8
    if objective == "gan":
        kw.update(z_dim=8, width=8)
        c.model.kw.update(width=8, feature_dim=16)
    if objective == "rbm":
        c.model.kw.hidden = (32, 16)
    if objective == "patch_position":
        kw.update(patch=2, gap=1, jitter=0)
    if objective == "mae":
        with c.model.kw.unlocked():
            c.model.kw.update(depth=2, width=32, num_heads=2, mlp_dim=64, patch_size=2)
        kw.update(decoder_width=16, decoder_depth=1, decoder_heads=2)
    labelled_share = c.pretrain.labelled_per_batch / c.pretrain.batch_size
    c.pretrain.update(
        steps=6, batch_size=64, log_every=2, ckpt_every=3, eval_every=3, eval_val_items=100
    )
    # The same share of labelled rows as the full config (all of them for "supervised").
    c.pretrain.labelled_per_batch = round(labelled_share * 64)
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
