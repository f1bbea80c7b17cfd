r"""Denoising autoencoder pretraining (the encoder is the backbone), then kNN and a linear probe.

  ./launch.sh --config configs/autoencoder.py:mnist --workdir runs/ae_mnist
  ./launch.sh --config configs/autoencoder.py:mnist --config.objective.kw.corruption=none

Variants: mnist (the small CNN of configs/simclr.py), cifar10 (ResNet-18),
imagenet (ResNet-50). The report shows inputs, corrupted inputs and reconstructions.
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "autoencoder.py")
    c.objective.name = "autoencoder"
    c.objective.kw.update(corruption="gaussian", noise=0.3, decoder_width=32)
    c.pp.views.view1 = c.pp.weak
    common.classic_backbone(c, variant)
    return common.lock(c)
