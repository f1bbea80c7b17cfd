"""Defaults shared by every experiment config.

Unset strings are "" and unset counts 0 (not None), so that every key has a
type and ``--config.x.y=...`` overrides are type-checked against it.
"""

import ml_collections as mlc


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.stages = ("pretrain", "probe", "report")
    # XLA's CPU backend: route convolutions to its Eigen path instead of YNNPACK,
    # measured faster for training convs (experiments/bench). No effect on GPU/TPU.
    c.xla_fast_cpu_conv = True
    c.init_from = ""  # checkpoint dir for transfer: parameters only

    c.distributed = mlc.ConfigDict(dict(coordinator="", num_processes=1, process_id=0))

    c.data = mlc.ConfigDict()
    c.data.name = "mnist"  # mnist | tfds:NAME[:CONFIG] | folder:PATH
    c.data.data_dir = ""  # default: $SSL_JAX_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.image_size = 0  # 0 keeps the native size
    c.data.channels = 0  # 0 keeps the source's channels
    c.data.val_size = 5000  # carved from train, seeded by data.seed
    c.data.seed = 0

    c.labels = mlc.ConfigDict(dict(per_class=10, count=0, seed=0))

    c.model = mlc.ConfigDict(dict(name="cnn", kw=mlc.ConfigDict()))
    c.objective = mlc.ConfigDict(dict(name="simclr", kw=mlc.ConfigDict()))

    c.pp = mlc.ConfigDict()
    c.pp.views = mlc.ConfigDict()
    c.pp.eval = "value_range(-1, 1)"
    c.pp.chunk_size = 64

    c.pretrain = mlc.ConfigDict()
    c.pretrain.steps = 1000
    c.pretrain.batch_size = 256
    c.pretrain.optimizer = mlc.ConfigDict(
        dict(
            name="adamw",
            lr=1e-3,
            weight_decay=1e-4,
            warmup_steps=100,
            momentum=0.9,
            scale_lr=False,
            min_lr_ratio=0.0,
            grad_clip=0.0,
        )
    )
    c.pretrain.log_every = 50
    c.pretrain.ckpt_every = 500
    c.pretrain.keep_ckpts = 2
    c.pretrain.eval_every = 500  # kNN (labelled items as memory, val as queries); 0 = off
    c.pretrain.eval_val_items = 2000

    c.eval = mlc.ConfigDict()
    c.eval.batch_size = 1024
    c.eval.knn = mlc.ConfigDict(dict(k=20, temperature=0.07))
    c.eval.linear = mlc.ConfigDict(dict(steps=500, lr=0.01, l2_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1)))

    c.probe = mlc.ConfigDict()
    c.probe.label_sets = ("labelled", "all")  # evaluate with the chosen few and with every label

    c.report = mlc.ConfigDict(dict(embedding="tsne", embedding_points=2000))
    return c


def lock(c: mlc.ConfigDict) -> mlc.ConfigDict:
    c.lock()
    return c
