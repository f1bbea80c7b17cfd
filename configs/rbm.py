r"""Stacked RBMs trained greedily with contrastive divergence, as an MLP encoder.

  ./launch.sh --config configs/rbm.py:mnist --workdir runs/rbm_mnist
  ./launch.sh --config configs/rbm.py:mnist --config.objective.kw.persistent=True
  ./launch.sh --config configs/rbm.py:mnist "--config.stages=('pretrain','finetune')"

Variants: mnist (784-500-500, the classic deep-belief-net shape), cifar10 and
imagenet (the same on flattened pixels: they build, but RBMs on natural
images at that size are of historical interest only). The pretraining steps
are shared evenly between the layers. Plain SGD: weight decay or momentum
would keep moving a layer after its share of the steps.
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "rbm.py")
    c.objective.name = "rbm"
    c.objective.kw.update(cd_steps=1, persistent=False)
    c.model.name = "mlp"
    c.model.kw.update(hidden=(500, 500), activation="sigmoid")
    # RBMs see pixels in [0, 1] (binarised at 0.5 for the first layer).
    c.pp.eval = c.pp.views.view1 = "value_range(0, 1)"
    c.pp.weak = c.pp.strong = ""  # fine-tuning: the eval recipe
    c.pretrain.optimizer = common.optimizer(
        name="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, warmup_steps=0
    )
    return common.lock(c)
