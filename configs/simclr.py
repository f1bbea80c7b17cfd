r"""SimCLR pretraining, then kNN and a linear probe with few labels.

  ./launch.sh --config configs/simclr.py:mnist --workdir runs/simclr_mnist
  ./launch.sh --config configs/simclr.py:cifar10 --config.data.data_dir=/data/tfds
  python -m ssl_jax --config configs/simclr.py:imagenet --workdir gs://...

Variants: mnist (default; a small CNN, minutes on a CPU), cifar10
(ResNet-18 with CIFAR stem, the paper's CIFAR recipe), imagenet (ResNet-50,
batch 4096, LARS), the last two reading prepared TFDS datasets.
"""

from configs import common

VARIANTS = ("mnist", "cifar10", "imagenet")


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    c.objective.name = "simclr"
    c.objective.kw.temperature = 0.2
    c.objective.kw.proj_hidden_dim = 512
    c.objective.kw.proj_dim = 128
    c.objective.kw.proj_layers = 2

    if variant == "mnist":
        c.data.name = "mnist"
        c.data.image_size, c.data.channels = 28, 1
        c.model.name = "cnn"
        c.model.kw.dense_dim = 256  # keep the stroke layout; see experiments/few_labels_mnist.md
        # Digits: small rotations, shifts, scalings and shears plus mild crops;
        # aggressive crops or flips change which digit it is.
        view = (
            "random_affine(15, translate=(0.1, 0.1), scale=(0.8, 1.1), shear=10)"
            "|random_resized_crop(28, scale=(0.5, 1.0), ratio=(0.8, 1.25))"
            "|color_jitter(0.4, 0.4, 0.0, 0.0, p=0.8)|value_range(-1, 1)"
        )
        c.pp.views.view1 = view
        c.pp.views.view2 = view
        c.pretrain.steps = 3000  # ~8 min on 2 CPU cores
        c.pretrain.batch_size = 256
        c.pretrain.optimizer.lr = 2e-3
    elif variant == "cifar10":
        c.data.name = "tfds:cifar10"
        c.data.image_size, c.data.channels = 32, 3
        c.labels.per_class = 25  # 250 labels
        c.model.name = "resnet:18"
        c.model.kw.cifar_stem = True
        c.objective.kw.temperature = 0.5
        c.objective.kw.proj_hidden_dim = 2048
        view = (
            "random_resized_crop(32, scale=(0.2, 1.0))|flip_lr"
            "|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)|grayscale(p=0.2)"
            "|normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))"
        )
        c.pp.views.view1 = view
        c.pp.views.view2 = view
        c.pp.eval = "normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))"
        c.pretrain.steps = 195 * 800  # 800 epochs at batch 256
        c.pretrain.optimizer.update(
            name="lars", lr=0.3, scale_lr=True, weight_decay=1e-6, warmup_steps=195 * 10
        )
        c.pretrain.ckpt_every = 5000
        c.pretrain.eval_every = 5000
    elif variant == "imagenet":
        c.data.name = "tfds:imagenet2012"
        c.data.image_size, c.data.channels = 224, 3
        c.data.val_size = 10000
        c.labels.per_class = 0
        c.labels.count = 12811  # the 1% subset size
        c.model.name = "resnet:50"
        c.objective.kw.temperature = 0.1
        c.objective.kw.proj_hidden_dim = 2048
        c.objective.kw.proj_layers = 3
        mean_std = "normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
        c.pp.views.view1 = (
            "random_resized_crop(224)|flip_lr|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)"
            f"|grayscale(p=0.2)|gaussian_blur(p=1.0)|{mean_std}"
        )
        c.pp.views.view2 = (
            "random_resized_crop(224)|flip_lr|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)"
            f"|grayscale(p=0.2)|gaussian_blur(p=0.1)|solarize(p=0.2)|{mean_std}"
        )
        c.pp.eval = f"resize(256)|center_crop(224)|{mean_std}"
        c.pretrain.batch_size = 4096
        c.pretrain.steps = 312 * 100  # 100 epochs
        c.pretrain.optimizer.update(
            name="lars", lr=0.3, scale_lr=True, weight_decay=1e-6, warmup_steps=312 * 10
        )
        c.pretrain.ckpt_every = 2000
        c.pretrain.eval_every = 5000
    else:
        raise ValueError(
            f"unknown variant {variant!r} of configs/simclr.py: mnist, cifar10, imagenet"
        )
    return common.lock(c)
