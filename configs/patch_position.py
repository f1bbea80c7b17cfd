r"""Relative-patch-position pretraining (8-way, with gaps and jitter), then kNN and a linear probe.

  ./launch.sh --config configs/patch_position.py:mnist --workdir runs/patch_mnist

Variants: mnist (6x6 patches, gap 3, jitter 1 in 28x28), cifar10 (8x8, gap 3, jitter 1),
imagenet (64x64, gap 8, jitter 3). The backbone sees single patches; its
dense layer (mnist) resizes their small feature maps to the whole image's.
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "patch_position.py")
    c.objective.name = "patch_position"
    c.pp.views.view1 = c.pp.eval  # cutting the patches is the augmentation
    common.classic_backbone(c, variant)
    patch, gap, jitter = {"mnist": (6, 3, 1), "cifar10": (8, 3, 1), "imagenet": (64, 8, 3)}[variant]
    c.objective.kw.update(patch=patch, gap=gap, jitter=jitter)
    if variant == "mnist":
        c.model.kw.dense_grid = 7
    return common.lock(c)
