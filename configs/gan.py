r"""DCGAN pretraining; the discriminator's penultimate features are the representation.

  ./launch.sh --config configs/gan.py:mnist --workdir runs/gan_mnist

Variants: mnist, cifar10, imagenet (the same DCGAN, sized to the images). Two
Adam optimizers (lr 2e-4, beta1 0.5) live in one TrainState; pretrain.optimizer
is not used. The report shows generated samples.
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "gan.py")
    c.objective.name = "gan"
    # up_kernel=2: the generator's sub-pixel convolutions see a 2x2 window, the
    # footprint of DCGAN's 4x4 stride-2 transposed convolutions; the 3x3
    # default made the MNIST step 1.43x slower (experiments/bench/README.md).
    c.objective.kw.update(z_dim=64, width=64, up_kernel=2, g_lr=2e-4, d_lr=2e-4)
    c.pp.views.view1 = c.pp.eval
    c.model.name = "dcgan"  # the discriminator's body: ssl_jax/models/dcgan.py
    c.model.kw.update(width=64, feature_dim=256)
    return common.lock(c)
