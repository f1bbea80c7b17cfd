r"""Supervised contrastive pretraining on the few labels plus the unlabelled pool.

  ./launch.sh --config configs/supcon.py:mnist --workdir runs/supcon_mnist

SimCLR's network and recipe, with labels as positive ids: labelled items of a
class are positives of each other, unlabelled items only of their other view.
``pretrain.labelled_per_batch`` rows of every batch come from the labelled items
(class-balanced), so each batch holds several same-class positives.
"""

from configs import common, simclr

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    c = simclr.get_config(arg)
    c.objective.name = "supcon"
    c.pretrain.labelled_per_batch = c.pretrain.batch_size // 4
    c.pretrain.balanced_labels = True
    return c
