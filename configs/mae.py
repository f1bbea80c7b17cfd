r"""MAE pretraining (masked autoencoder, ViT), then kNN and a linear probe.

  ./launch.sh --config configs/mae.py:mnist --workdir runs/mae_mnist
  ./launch.sh --config configs/mae.py:cifar10 --config.data.data_dir=/data/tfds
  python -m ssl_jax --config configs/mae.py:imagenet --workdir gs://...

Variants: mnist (a 4-block, 128-wide ViT with 4x4 patches on 28x28: 49 patches),
cifar10 (ViT-Ti/4 on 32x32, decoder width 128, depth 2), imagenet (ViT-B/16,
the paper's recipe: decoder 512 wide and 8 deep, normalised-pixel loss).
The report shows test images, their masked versions and the reconstructions.
"""

from configs import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None):
    variant = arg or "mnist"
    c = common.base_config()
    common.set_dataset(c, variant, "mae.py")
    c.objective.name = "mae"
    c.objective.kw.update(
        mask_ratio=0.75, decoder_width=512, decoder_depth=8, decoder_heads=16, norm_pix_loss=True
    )
    c.model.kw.posemb = "sincos2d"
    c.model.kw.pool = "gap"
    c.pretrain.optimizer.update(name="adamw", lr=1.5e-4, scale_lr=True, weight_decay=0.05, b2=0.95)

    if variant == "mnist":
        # A small ViT for a 2-core CPU: ViT-Ti/4 at depth 6 took 0.83 s per step.
        c.model.name = "vit:ti/4"
        c.model.kw.update(width=128, depth=4, num_heads=4, mlp_dim=512)
        c.objective.kw.update(decoder_width=128, decoder_depth=2, decoder_heads=4)
        c.pp.views.view1 = (
            "random_resized_crop(28, scale=(0.6, 1.0), ratio=(0.8, 1.25))|value_range(-1, 1)"
        )
        c.pretrain.steps = 3000
        c.pretrain.optimizer.update(lr=1e-3, scale_lr=False, warmup_steps=300)
    elif variant == "cifar10":
        c.model.name = "vit:ti/4"
        c.objective.kw.update(decoder_width=128, decoder_depth=2, decoder_heads=4)
        c.pp.views.view1 = f"random_resized_crop(32, scale=(0.35, 1.0))|flip_lr|{common.CIFAR_NORM}"
        c.pretrain.steps = 195 * 800
        c.pretrain.optimizer.warmup_steps = 195 * 40
        c.pretrain.ckpt_every = c.pretrain.eval_every = 5000
    elif variant == "imagenet":
        c.model.name = "vit:b/16"
        c.pp.views.view1 = (
            f"random_resized_crop(224, scale=(0.2, 1.0))|flip_lr|{common.IMAGENET_NORM}"
        )
        c.pretrain.batch_size = 4096
        c.pretrain.steps = 312 * 800
        c.pretrain.optimizer.warmup_steps = 312 * 40
        c.pretrain.ckpt_every = 2000
        c.pretrain.eval_every = 10000
    return common.lock(c)
