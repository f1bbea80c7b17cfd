r"""Colorization pretraining: predict colour (chroma) from the gray image.

  ./launch.sh --config configs/colorization.py:cifar10 --config.data.data_dir=/data/tfds
  ./launch.sh --config configs/colorization.py:cifar10 --config.data.name=folder:/my/colour/images

Variants: cifar10 (ResNet-18), imagenet (ResNet-50). MNIST is grayscale: the
mnist variant refuses with a message, as does the objective for any
1-channel data.
"""

from configs import common

VARIANTS = ("cifar10", "imagenet")


def get_config(arg: str | None = None):
    variant = arg or "cifar10"
    if variant == "mnist":
        raise ValueError(
            "colorization predicts colour from gray images: MNIST has no colour. "
            "Use configs/colorization.py:cifar10 or a folder of colour images"
        )
    c = common.base_config()
    common.set_dataset(c, variant, "colorization.py")
    c.objective.name = "colorization"
    c.objective.kw.decoder_width = 32
    # Plain [-1, 1] pixels, not per-channel normalisation: luma and chroma are
    # defined on the image's own colours.
    size = c.data.image_size
    c.pp.eval = (
        "value_range(-1, 1)"
        if variant == "cifar10"
        else ("resize(256)|center_crop(224)|value_range(-1, 1)")
    )
    c.pp.views.view1 = f"random_resized_crop({size}, scale=(0.5, 1.0))|flip_lr|value_range(-1, 1)"
    common.classic_backbone(c, variant)
    return common.lock(c)
