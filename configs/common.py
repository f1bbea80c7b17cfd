"""Defaults shared by every experiment config.

Unset strings are "" and unset counts 0 (not None), so that every key has a
type and ``--config.x.y=...`` overrides are type-checked against it.
"""

import ml_collections as mlc


def optimizer(**kw) -> mlc.ConfigDict:
    """An optimizer section (see ssl_jax/optim.py) with every key present, so
    that each can be overridden from the command line."""
    defaults = dict(
        name="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        warmup_steps=0,
        momentum=0.9,
        b1=0.9,
        b2=0.999,
        nesterov=False,
        scale_lr=False,
        min_lr_ratio=0.0,
        grad_clip=0.0,
    )
    unknown = set(kw) - set(defaults)
    if unknown:
        raise ValueError(f"unknown optimizer keys {sorted(unknown)}")
    return mlc.ConfigDict({**defaults, **kw})


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.stages = ("pretrain", "probe", "report")
    # XLA's CPU backend: route convolutions to its Eigen path instead of YNNPACK,
    # measured faster for training convs (experiments/bench). No effect on GPU/TPU.
    c.xla_fast_cpu_conv = True
    # Who runs the ResNet and CNN convolutions on the CPU backend: "onednn"
    # (ssl_jax/kernels/onednn.py: a small C++ kernel built on first use against
    # the oneDNN wheels; SimCLR steps 1.3-1.45x faster, experiments/bench/RESULTS.md),
    # "xla", or "auto": oneDNN where it builds and loads, else XLA. Only on a
    # single CPU device; no effect on GPU/TPU.
    c.cpu_conv = "auto"
    # Who runs the ViT's attention core softmax(q k^T / sqrt(d)) v on the CPU
    # backend: "fused" (ssl_jax/kernels/attention.py: one C++ pass per image and
    # head, built on first use), "xla", or "auto": fused where it builds and
    # loads, else XLA. Only on a single CPU device; no effect on GPU/TPU.
    c.cpu_attention = "auto"
    # Who runs the bias add and GELU after the ViT MLP's first dense layer on the
    # CPU backend: "fused" (ssl_jax/kernels/gelu.py: one C++ pass forward, one
    # backward, built on first use), "xla", or "auto": fused where it builds and
    # loads, else XLA. Only on a single CPU device; no effect on GPU/TPU.
    c.cpu_gelu = "auto"
    # Who runs the ViT's LayerNorms on the CPU backend: "fused"
    # (ssl_jax/kernels/layernorm.py: each row whole in cache, built on first use),
    # "xla", or "auto": fused where it builds and loads, else flax's. Only on a
    # single CPU device; no effect on GPU/TPU.
    c.cpu_layernorm = "auto"
    c.init_from = ""  # checkpoint dir for transfer: parameters only

    c.distributed = mlc.ConfigDict(dict(coordinator="", num_processes=1, process_id=0))

    c.data = mlc.ConfigDict()
    c.data.name = "mnist"  # mnist | tfds:NAME[:CONFIG] | folder:PATH
    c.data.data_dir = ""  # default: $SSL_JAX_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.image_size = 0  # 0 keeps the native size
    c.data.channels = 0  # 0 keeps the source's channels
    c.data.val_size = 5000  # carved from train, seeded by data.seed
    c.data.seed = 0

    # Which pool items reveal their label: per_class of each class, or count in all
    # (-1: every one); both 0: none (labels come from active learning or a person).
    c.labels = mlc.ConfigDict(dict(per_class=10, count=0, seed=0))

    c.model = mlc.ConfigDict(dict(name="cnn", kw=mlc.ConfigDict()))
    c.objective = mlc.ConfigDict(dict(name="simclr", kw=mlc.ConfigDict()))

    c.pp = mlc.ConfigDict()
    c.pp.views = mlc.ConfigDict()
    c.pp.eval = "value_range(-1, 1)"
    # Weak augmentation (fine-tuning; self-training's pseudo-labelling view) and
    # strong augmentation (self-training's training view); "" = the eval recipe.
    c.pp.weak = ""
    c.pp.strong = ""
    # Examples per vmapped chunk of the training pipelines (lax.map over chunks).
    # -1: auto, per pipeline and image size (pp.builder.auto_chunk_size): on
    # CPU, vmapped chunks of 256 for cheap ops on small or grayscale images,
    # larger chunks (up to 256 MB an array) for crops and flips without
    # resampling at any size, else one example at a time (random ops branch
    # for real); chunks of 64 on GPU/TPU. 0: one vmap; 1: one at a time.
    c.pp.chunk_size = -1

    c.pretrain = mlc.ConfigDict()
    c.pretrain.steps = 1000
    c.pretrain.batch_size = 256
    # Rows of each batch drawn from the labelled items (objectives that use labels:
    # supcon, semisup, supervised); the rest come from the whole shuffled pool.
    c.pretrain.labelled_per_batch = 0
    c.pretrain.balanced_labels = False  # those rows evenly across classes
    c.pretrain.optimizer = optimizer(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=100)
    c.pretrain.log_every = 50
    c.pretrain.ckpt_every = 500
    c.pretrain.keep_ckpts = 2
    c.pretrain.eval_every = 500  # kNN (labelled items as memory, val as queries); 0 = off
    c.pretrain.eval_val_items = 2000

    c.eval = mlc.ConfigDict()
    c.eval.batch_size = 1024
    # > 0: a classifier's probabilities (val selection, test accuracy, predictions)
    # are the mean over the eval view and this many views of pp.weak
    # (test-time augmentation; experiments/few_labels_mnist.md).
    c.eval.tta_views = 0
    c.eval.knn = mlc.ConfigDict(dict(k=20, temperature=0.07))
    # method lbfgs: at most `steps` iterations per L2 strength, to convergence
    # (ssl_jax/evaluators/linear_probe.py); adam: `steps` full-batch steps at `lr`.
    # class_balanced: each class weighs the same in the loss (for uneven label sets).
    c.eval.linear = mlc.ConfigDict(
        dict(
            method="lbfgs",
            steps=500,
            lr=0.01,
            l2_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
            class_balanced=False,
        )
    )

    # Fine-tuning: phase "head" trains a new linear head on the frozen backbone,
    # phase "body" the top `unfreeze` layers (-1: all) and the head, at a lower
    # lr with layer-wise decay. Batches hold labelled items only.
    c.finetune = mlc.ConfigDict()
    c.finetune.init = "pretrain"  # pretrain (this workdir's, else init_from) | scratch
    c.finetune.batch_size = 64
    c.finetune.balanced = True  # every batch draws evenly across classes
    c.finetune.label_smoothing = 0.0
    c.finetune.mixup_alpha = 0.0  # > 0: mixup with Beta(alpha, alpha)
    c.finetune.bn_train = False  # BatchNorm: pretraining's statistics (False) or batch ones
    c.finetune.head = mlc.ConfigDict(
        dict(steps=200, optimizer=optimizer(name="adamw", lr=1e-2, weight_decay=0.0))
    )
    c.finetune.body = mlc.ConfigDict(
        dict(
            steps=800,
            unfreeze=-1,
            layer_decay=1.0,
            optimizer=optimizer(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=50),
        )
    )
    c.finetune.eval_every = 50  # val accuracy; the best model is kept
    c.finetune.eval_val_items = 0  # 0 = all of val
    c.finetune.log_every = 25
    c.finetune.ckpt_every = 500

    # Self-training (FixMatch by default): labelled items with weak augmentation,
    # unlabelled items pseudo-labelled on a weak view and trained on a strong one.
    c.selftrain = mlc.ConfigDict()
    c.selftrain.init = "finetune"  # finetune (its best model) | pretrain (backbone + new head)
    c.selftrain.steps = 1000
    c.selftrain.labelled_batch = 64
    c.selftrain.unlabelled_ratio = 7  # unlabelled items per labelled item in a batch (mu)
    c.selftrain.balanced = True  # labelled items drawn evenly across classes
    c.selftrain.threshold = 0.95  # pseudo-label only where the confidence reaches this
    c.selftrain.pseudo_labels = "current"  # current (this step's model) | snapshot | ema
    c.selftrain.refresh_every = 100  # snapshot: copied from the model every N steps
    c.selftrain.ema_decay = 0.0  # > 0: evaluate (and keep as best) a moving average of the params
    # Rescale pseudo-label probabilities by labelled prior / running mean prediction.
    c.selftrain.distribution_alignment = False
    c.selftrain.alignment_momentum = 0.99  # of the running mean prediction over the pool
    c.selftrain.class_thresholds = False  # FlexMatch: per-class thresholds by learning status
    c.selftrain.class_threshold_momentum = 0.99  # of the running per-class confident share
    c.selftrain.unlabelled_weight = 1.0  # lambda_u, reached after the ramp
    c.selftrain.ramp = "linear"  # linear | sigmoid | none
    c.selftrain.ramp_steps = 200
    c.selftrain.bn_train = False  # BatchNorm: pretraining's statistics (False) or batch ones
    c.selftrain.bn_joint = False  # with bn_train: labelled and strong views share one batch
    c.selftrain.uncertainty_weighting = False  # weight items by exp(-H(p_T))
    c.selftrain.uncertainty_temperature = 2.0  # T > 1 softens p before its entropy
    c.selftrain.optimizer = optimizer(
        name="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        warmup_steps=0,
        # With BatchNorm in inference mode nothing renormalises the activations:
        # one seed's run diverged at step 112 without clipping (few_labels_mnist.md).
        grad_clip=1.0,
    )
    c.selftrain.eval_every = 100
    c.selftrain.eval_val_items = 0
    c.selftrain.log_every = 25
    c.selftrain.ckpt_every = 500

    c.predict = mlc.ConfigDict(dict(batch_size=1024))

    # Active learning: each round acquires labels up to schedule[r] (round 0: the
    # run's labels, or a cold-start set when it has none), trains, evaluates.
    c.active = mlc.ConfigDict()
    c.active.schedule = (10, 20, 50, 100)  # total labels after each round's labelling
    c.active.strategy = "entropy"  # see ssl_jax/acquisition.py
    c.active.start = "typiclust"  # cold start with no labels: random | typiclust | probcover
    # Rounds whose label count is <= start_until also select with `start` (then
    # `strategy`): e.g. TypiClust while the model is weak, then BADGE. 0: cold start only.
    c.active.start_until = 0
    c.active.oracle = "dataset"  # dataset (reveal the true labels) | human (queries.csv, wait)
    c.active.train = "probe"  # probe (frozen features) | finetune | selftrain
    # The last round's training, if not active.train's: e.g. choose with the probe
    # (seconds a round), then self-train the model that is kept. '': active.train.
    c.active.final_train = ""
    # probe: standardise features by the labelled items' statistics or by the whole pool's.
    c.active.standardize = "labelled"  # labelled | pool
    c.active.mc_passes = 10  # bald: MC dropout passes on the classifier's input features
    c.active.mc_dropout = 0.5
    c.active.max_clusters = 500  # typiclust
    # typiclust: k-means runs, the lowest-inertia one is used. One run covered all
    # 10 MNIST classes with 10 picks for 18 of 50 keys, the best of 10 for 50 of 50
    # (experiments/active_mnist.md); each run costs a k-means over the whole pool.
    c.active.kmeans_restarts = 10
    c.active.knn = 20  # typiclust: neighbours for typicality
    c.active.probcover_delta = 0.0  # 0: chosen by cluster purity
    c.active.probcover_purity = 0.95
    c.active.contact_sheet_items = 64  # human oracle: images on the contact sheet

    c.probe = mlc.ConfigDict()
    c.probe.label_sets = ("labelled", "all")  # evaluate with the chosen few and with every label

    # num_images: test images in the grids of objectives that draw (reconstructions, samples)
    c.report = mlc.ConfigDict(dict(embedding="tsne", embedding_points=2000, num_images=8))
    return c


# Standard augmentations, shared by the objectives' configs.
# Digits: small rotations, shifts, scalings and shears plus mild crops; aggressive
# crops or flips change which digit it is.
MNIST_VIEW = (
    "random_affine(15, translate=(0.1, 0.1), scale=(0.8, 1.1), shear=10)"
    "|random_resized_crop(28, scale=(0.5, 1.0), ratio=(0.8, 1.25))"
    "|color_jitter(0.4, 0.4, 0.0, 0.0, p=0.8)|value_range(-1, 1)"
)
# Weak: small shifts and rotations that keep every digit what it is. Strong:
# RandAugment at up to half its magnitudes (digits on black: geometric ops fill
# with 0) and a cutout of a quarter side; at full magnitude and half-side
# cutout a 28x28 digit was often no longer recognisable, and self-training
# learned from noise (experiments/few_labels_mnist.md).
MNIST_WEAK = "random_affine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))|value_range(-1, 1)"
MNIST_STRONG = (
    "random_affine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))"
    "|rand_augment(2, magnitude=(0.0, 0.5), fill=0)|cutout(0.25, fill=0)|value_range(-1, 1)"
)
CIFAR_NORM = "normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))"
IMAGENET_NORM = "normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
CIFAR_VIEW = (
    "random_resized_crop(32, scale=(0.2, 1.0))|flip_lr"
    f"|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)|grayscale(p=0.2)|{CIFAR_NORM}"
)
# SimCLR/BYOL's asymmetric pair: blur always on the first view, rarely on the
# second, which also solarizes sometimes.
IMAGENET_VIEW1 = (
    "random_resized_crop(224)|flip_lr|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)"
    f"|grayscale(p=0.2)|gaussian_blur(p=1.0)|{IMAGENET_NORM}"
)
IMAGENET_VIEW2 = (
    "random_resized_crop(224)|flip_lr|color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8)"
    f"|grayscale(p=0.2)|gaussian_blur(p=0.1)|solarize(p=0.2)|{IMAGENET_NORM}"
)
VARIANTS = ("mnist", "cifar10", "imagenet")


def set_dataset(c: mlc.ConfigDict, variant: str, config_file: str) -> None:
    """Data source, image size, label budget and eval recipe of a variant."""
    if variant == "mnist":
        c.data.name = "mnist"
        c.data.image_size, c.data.channels = 28, 1
        c.pp.weak = MNIST_WEAK
        c.pp.strong = MNIST_STRONG
    elif variant == "cifar10":
        c.data.name = "tfds:cifar10"
        c.data.image_size, c.data.channels = 32, 3
        c.labels.per_class = 25  # 250 labels
        c.pp.eval = CIFAR_NORM
        c.pp.weak = f"random_crop(32, padding=4, padding_mode='reflect')|flip_lr|{CIFAR_NORM}"
        c.pp.strong = (
            "random_crop(32, padding=4, padding_mode='reflect')|flip_lr"
            f"|rand_augment(2)|cutout(0.5)|{CIFAR_NORM}"
        )
    elif variant == "imagenet":
        c.data.name = "tfds:imagenet2012"
        c.data.image_size, c.data.channels = 224, 3
        c.data.val_size = 10000
        c.labels.per_class = 0
        c.labels.count = 12811  # the 1% subset size
        c.pp.eval = f"resize(256)|center_crop(224)|{IMAGENET_NORM}"
        c.pp.weak = f"random_resized_crop(224, scale=(0.08, 1.0))|flip_lr|{IMAGENET_NORM}"
        c.pp.strong = (
            f"random_resized_crop(224, scale=(0.08, 1.0))|flip_lr|rand_augment(2)"
            f"|cutout(0.5)|{IMAGENET_NORM}"
        )
    else:
        raise ValueError(
            f"unknown variant {variant!r} of configs/{config_file}: {', '.join(VARIANTS)}"
        )


def classic_backbone(c: mlc.ConfigDict, variant: str) -> None:
    """The backbone of the classic objectives: SimCLR's per dataset (the small CNN
    with a dense feature layer on MNIST, ResNet-18 with the CIFAR stem, ResNet-50)."""
    if variant == "mnist":
        c.model.name = "cnn"
        c.model.kw.dense_dim = 256
    elif variant == "cifar10":
        c.model.name = "resnet:18"
        c.model.kw.cifar_stem = True
    else:
        c.model.name = "resnet:50"


def lock(c: mlc.ConfigDict) -> mlc.ConfigDict:
    c.lock()
    return c
