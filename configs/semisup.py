r"""Semi-supervised contrastive pretraining: SimCLR (or DINO) plus a linear
classifier on the representation and a same-class correlation term, both on the
few labelled items (formula in ssl_jax/objectives/semisup.py).

  ./launch.sh --config configs/semisup.py:mnist --workdir runs/semisup_mnist
  ./launch.sh --config configs/semisup.py:mnist --config.objective.kw.corr_weight=0
  ./launch.sh --config configs/semisup.py:mnist_dino    # DINO as the base objective

Variants: mnist, cifar10, imagenet (SimCLR base) and the same with "_dino".
"""

from configs import common, dino, simclr

VARIANTS = common.VARIANTS + tuple(f"{v}_dino" for v in common.VARIANTS)


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    base = "dino" if variant.endswith("_dino") else "simclr"
    source = variant.removesuffix("_dino")
    c = (dino if base == "dino" else simclr).get_config(source)
    with c.unlocked():
        c.objective.kw.base = base
        c.objective.kw.ce_weight = 1.0
        c.objective.kw.corr_weight = 1.0
    c.objective.name = "semisup"
    c.pretrain.labelled_per_batch = c.pretrain.batch_size // 4
    c.pretrain.balanced_labels = True
    return c
