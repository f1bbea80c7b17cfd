r"""DINO pretraining (self-distillation, multi-crop), then kNN and a linear probe.

  ./launch.sh --config configs/dino.py:mnist --workdir runs/dino_mnist
  ./launch.sh --config configs/dino.py:cifar10 --config.data.data_dir=/data/tfds
  python -m ssl_jax --config configs/dino.py:imagenet --workdir gs://...

Variants: mnist (the small CNN, 2 global 28² + 4 local 14² crops), cifar10
(ResNet-18, CIFAR stem), imagenet (ViT-S/16, the paper's 100-epoch recipe with
2 x 224² + 10 x 96² crops).
"""

from configs import common

VARIANTS = common.VARIANTS


def multi_crop(c, global_view: str, local_view: str, num_local: int, global_view2: str = ""):
    c.objective.kw.num_local_crops = num_local
    c.pp.views.global1 = global_view
    c.pp.views.global2 = global_view2 or global_view
    for i in range(num_local):
        c.pp.views[f"local{i + 1}"] = local_view


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "dino.py")
    c.objective.name = "dino"
    c.objective.kw.update(
        out_dim=65536,
        hidden_dim=2048,
        bottleneck_dim=256,
        head_layers=3,
        norm_last_layer=True,
        student_temp=0.1,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_steps=0,
        momentum_teacher=0.996,
        center_momentum=0.9,
        num_local_crops=0,
        freeze_last_layer_steps=0,
    )
    c.pretrain.optimizer.update(name="adamw", lr=5e-4, scale_lr=True, weight_decay=0.04)
    c.pretrain.optimizer.grad_clip = 3.0

    if variant == "mnist":
        c.model.name = "cnn"
        # The dense layer keeps the stroke layout; dense_grid lets it take the
        # 14x14 local crops too.
        c.model.kw.dense_dim = 256
        c.model.kw.dense_grid = 7
        c.objective.kw.update(out_dim=1024, hidden_dim=1024, bottleneck_dim=128)
        local = (
            "random_affine(15, translate=(0.1, 0.1), scale=(0.8, 1.1), shear=10)"
            "|random_resized_crop(14, scale=(0.2, 0.5), ratio=(0.8, 1.25))"
            "|color_jitter(0.4, 0.4, 0.0, 0.0, p=0.8)|value_range(-1, 1)"
        )
        multi_crop(c, common.MNIST_VIEW, local, num_local=4)
        c.pretrain.steps = 3000
        c.pretrain.optimizer.update(lr=1e-3, warmup_steps=300)
        c.objective.kw.warmup_teacher_temp_steps = 300
        c.objective.kw.freeze_last_layer_steps = 215  # one epoch, as in the paper
    elif variant == "cifar10":
        c.model.name = "resnet:18"
        c.model.kw.cifar_stem = True
        c.objective.kw.out_dim = 4096
        local = (
            "random_resized_crop(16, scale=(0.05, 0.3))|flip_lr"
            f"|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)|grayscale(p=0.2)|{common.CIFAR_NORM}"
        )
        global_view = common.CIFAR_VIEW.replace("scale=(0.2, 1.0)", "scale=(0.3, 1.0)")
        multi_crop(c, global_view, local, num_local=6)
        c.pretrain.steps = 195 * 400
        c.pretrain.optimizer.warmup_steps = 195 * 10
        c.objective.kw.warmup_teacher_temp_steps = 195 * 30
        c.pretrain.ckpt_every = c.pretrain.eval_every = 5000
    elif variant == "imagenet":
        c.model.name = "vit:s/16"
        c.objective.kw.update(
            teacher_temp=0.07, warmup_teacher_temp_steps=2502 * 30, norm_last_layer=False
        )
        c.pretrain.batch_size = 512
        c.pretrain.steps = 2502 * 100
        c.pretrain.optimizer.warmup_steps = 2502 * 10
        norm = common.IMAGENET_NORM
        jitter = "flip_lr|color_jitter(0.4, 0.4, 0.2, 0.1, p=0.8)|grayscale(p=0.2)"
        g1 = f"random_resized_crop(224, scale=(0.25, 1.0))|{jitter}|gaussian_blur(p=1.0)|{norm}"
        g2 = (
            f"random_resized_crop(224, scale=(0.25, 1.0))|{jitter}|gaussian_blur(p=0.1)"
            f"|solarize(p=0.2)|{norm}"
        )
        local = f"random_resized_crop(96, scale=(0.05, 0.25))|{jitter}|gaussian_blur(p=0.5)|{norm}"
        multi_crop(c, g1, local, num_local=10, global_view2=g2)
        c.pretrain.ckpt_every = 2000
        c.pretrain.eval_every = 10000
    return common.lock(c)
