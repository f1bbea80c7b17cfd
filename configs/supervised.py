r"""Supervised training from scratch on the labelled items only: the baseline for
every self-supervised objective, evaluated the same way (kNN and linear probe
on its frozen backbone features).

  ./launch.sh --config configs/supervised.py:mnist --workdir runs/supervised_mnist

Every batch is drawn from the labelled items (class-balanced), with the
dataset's usual augmentation; same backbone and budget as configs/simclr.py.
"""

from configs import common, simclr

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    c = simclr.get_config(arg)
    c.objective.name = "supervised"
    c.pretrain.labelled_per_batch = c.pretrain.batch_size
    c.pretrain.balanced_labels = True
    with c.unlocked():
        c.objective.kw = {"label_smoothing": 0.0}
        del c.pp.views["view2"]
    return c
