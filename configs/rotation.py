r"""Rotation-prediction pretraining (0/90/180/270 degrees), then kNN and a linear probe.

  ./launch.sh --config configs/rotation.py:mnist --workdir runs/rotation_mnist

Variants: mnist (the small CNN), cifar10 (ResNet-18), imagenet (ResNet-50).
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "rotation.py")
    c.objective.name = "rotation"
    c.pp.views.view1 = c.pp.weak
    common.classic_backbone(c, variant)
    return common.lock(c)
