"""The ssl_jax side of experiments/bench/peers.py: one setup function per job.

``JOBS[name](params, peer_info) -> (variants, info)``: ``variants`` maps a
setting name to a callable that does one timed repeat of the job and returns
the number of items it processed (images, rows, queries); it has already been
called once (compilation and warm-up are never timed). ``info`` carries what
the table needs besides time: FLOPs per item for model steps (XLA's cost
analysis of the compiled step) and the accuracy reached for the probe and kNN.
"""

import functools
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import mae as mae_config  # noqa: E402
from configs import simclr  # noqa: E402
from experiments.bench import data  # noqa: E402
from ssl_jax import acquisition, parallel  # noqa: E402
from ssl_jax.evaluators import knn as knn_lib  # noqa: E402
from ssl_jax.evaluators import linear_probe  # noqa: E402
from ssl_jax.kernels import attention as attention_kernels  # noqa: E402
from ssl_jax.kernels import gelu as gelu_kernels  # noqa: E402
from ssl_jax.kernels import layernorm as layernorm_kernels  # noqa: E402
from ssl_jax.kernels import native, onednn  # noqa: E402
from ssl_jax.models import vit  # noqa: E402
from ssl_jax.stages.common import PretrainModel  # noqa: E402
from ssl_jax.stages.pretrain import make_step  # noqa: E402

# What config.xla_fast_cpu_conv selects (ssl_jax/cli.py), per compile.
EIGEN_CONV = {"xla_cpu_experimental_ynn_fusion_type": ""}
YNN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def pretrain_step(config, image_shape, compiler_options=None, seed=0):
    """The jitted pretraining step of ``config`` on one fixed random batch
    (10 classes; ``pretrain.labelled_per_batch`` rows carry labels).

    Returns (run, flops): ``run(n)`` does n steps and waits for them; flops is
    XLA's count for one step."""
    mesh = parallel.make_mesh()
    model = PretrainModel(config, mesh, image_shape, num_classes=10)
    n = config.pretrain.batch_size
    batch = data.images(n, image_shape[0], image_shape[2], seed)
    # Labelled rows as the loader mixes them in (objectives that use labels).
    labels = np.full(n, -1, np.int32)
    k = min(config.pretrain.labelled_per_batch, n)
    labels[:k] = np.arange(k) % 10
    x = parallel.put_global_batch({"image": batch, "label": labels}, mesh)
    state = model.init_state(seed)
    exe = make_step(model).lower(state, x).compile(compiler_options=compiler_options)
    holder = {"state": state}

    def run(n):
        s = holder["state"]
        for _ in range(n):
            s, m = exe(s, x)
        jax.block_until_ready(m["loss"])
        holder["state"] = s

    run(1)
    return run, cost_flops(exe)


# (setting, [(kernel module, mode), ...]): ssl_jax's CPU kernels as a setting selects them.
ONEDNN_CONVS = ("jit, oneDNN convs (cpu_conv=onednn)", [(onednn, "onednn")])
FUSED_ATTENTION = ("jit, fused attention (cpu_attention=fused)", [(attention_kernels, "fused")])
VIT_KERNELS = (
    "jit, fused attention, GELU and LayerNorm (cpu_attention, cpu_gelu, cpu_layernorm = fused)",
    [(attention_kernels, "fused"), (gelu_kernels, "fused"), (layernorm_kernels, "fused")],
)


def with_kernels(setting, selection, build):
    """``build()`` with each (module, mode) of ``selection`` (ssl_jax's CPU
    kernels) configured, and XLA's again after; None, with a note naming the
    ``setting``, where one cannot be built."""
    try:
        for module, mode in selection:
            module.configure(mode)
        return build()
    except native.Unavailable as e:
        print(f"skipping the setting {setting!r}: {e}", file=sys.stderr)
        return None
    finally:
        for module, _ in selection:
            module.configure("xla")


class UnknownSetting(ValueError):
    """A setting name that a job does not have."""


def chosen(names, pick=None) -> list[str]:
    """The settings of a job to build: ``pick(names) -> names`` applied to all
    its setting names (in order), default all. A name the job lacks raises
    ``UnknownSetting``, listing the job's settings. Every job function takes ``pick``."""
    out = list(pick(names)) if pick else list(names)
    if unknown := [n for n in out if n not in names]:
        raise UnknownSetting(f"no setting {unknown} in this job; its settings: {list(names)}")
    return out


def _steps(config, shape, params, kernels=(), pick=None):
    """The pretraining step as ssl_jax compiles it with XLA's kernels ("jit"), and
    again with each of ``kernels`` ((setting, [(module, mode), ...]): ssl_jax's
    CPU kernels, as the config selects them) configured. FLOPs are the "jit" step's:
    XLA does not count the work of custom calls (no FLOPs where "jit" is not built).

    ``pick``: which settings to build (``chosen``). Each compile of a full
    step takes tens of seconds."""
    picked = chosen(["jit", *(setting for setting, _ in kernels)], pick)
    steps, runs, info = params["steps"], {}, {}
    if "jit" in picked:
        runs["jit"], flops = pretrain_step(config, shape, EIGEN_CONV)
        info["flops_per_item"] = flops / params["batch"]
    for setting, selection in kernels:
        if setting not in picked:
            continue
        build = functools.partial(pretrain_step, config, shape, EIGEN_CONV)
        if (own := with_kernels(setting, selection, build)) is not None:
            runs[setting] = own[0]

    def timed(run):
        def go():
            run(steps)
            return steps * params["batch"]

        return go

    return {k: timed(r) for k, r in runs.items()}, info


def simclr_step(params, peer_info=None, pick=None):
    """ResNet-18 (CIFAR stem), projection 512-2048-128, NT-Xent at T=0.5, LARS;
    the step also augments both views on the device (the peer gets them ready).
    ``pick``: which settings to build (``_steps``)."""
    c = simclr.get_config("cifar10")
    with c.unlocked():
        c.pretrain.batch_size = params["batch"]
        if params.get("width", 1.0) != 1.0:
            c.model.kw.width = params["width"]
    return _steps(c, (32, 32, 3), params, kernels=[ONEDNN_CONVS], pick=pick)


def mae_step(params, peer_info=None, pick=None):
    """ViT-Ti/4 on 32x32, 75% masking, decoder 128 wide and 2 deep, AdamW.
    ``pick``: which settings to build (``_steps``)."""
    c = mae_config.get_config("cifar10")
    with c.unlocked():
        c.pretrain.batch_size = params["batch"]
        if params.get("depth") is not None:  # 0: no encoder blocks (mae_rest)
            c.model.kw.depth = params["depth"]
    return _steps(c, (32, 32, 3), params, kernels=[FUSED_ATTENTION, VIT_KERNELS], pick=pick)


class DenseStack(nn.Module):
    """``depth`` residual pairs x + W2 W1 x (width -> mlp -> width, no bias):
    the matmuls of ViT blocks without anything between them. ``rows``: on
    the tokens flattened to [batch * tokens, width] rows, as ssl_jax's ViT
    applies its dense layers (vit.dense_tokens); else on [batch, tokens, width]."""

    depth: int
    mlp: int
    rows: bool = True

    @nn.compact
    def __call__(self, x):
        shape = x.shape
        if self.rows:
            x = x.reshape(-1, shape[-1])
        for _ in range(self.depth):
            h = nn.Dense(self.mlp, use_bias=False)(x)
            x = x + nn.Dense(x.shape[-1], use_bias=False)(h)
        return x.reshape(shape)


def grad_executable(module, x, compiler_options=None):
    """(exe, variables): forward and backward of mean(module(x)^2), compiled
    for ``x`` with ``compiler_options`` (default: the Eigen conv switch);
    ``exe(variables, x)`` returns (loss, gradients). No optimizer."""
    variables = module.init(jax.random.PRNGKey(0), x)

    def loss(v, x):
        return jnp.mean(jnp.square(module.apply(v, x)))

    options = EIGEN_CONV if compiler_options is None else compiler_options
    exe = jax.jit(jax.value_and_grad(loss)).lower(variables, x).compile(compiler_options=options)
    return exe, variables


def _grad_steps(module, params, setting="jit"):
    """``grad_executable`` on [batch, tokens, width] inputs, timed."""
    x = jnp.asarray(data.tokens(params["batch"], params["tokens"], params["width"]))
    exe, variables = grad_executable(module, x)

    def go():
        for _ in range(params["steps"]):
            out = exe(variables, x)
        jax.block_until_ready(out)
        return params["steps"] * params["batch"]

    go()
    return {setting: go}, {"flops_per_item": cost_flops(exe) / params["batch"]}


def _vit_grad_steps(module, params, pick=None):
    """``_grad_steps`` with XLA's kernels ("jit"), with the fused attention core,
    and with all of the ViT's fused kernels (attention core, GELU, LayerNorm).
    FLOPs are the "jit" setting's (none where it is not picked)."""
    kernels = (FUSED_ATTENTION, VIT_KERNELS)
    picked = chosen(["jit", *(setting for setting, _ in kernels)], pick)
    variants, info = _grad_steps(module, params) if "jit" in picked else ({}, {})
    for setting, selection in kernels:
        if setting not in picked:
            continue
        fused = with_kernels(setting, selection, lambda s=setting: _grad_steps(module, params, s))
        if fused is not None:
            variants.update(fused[0])
    return variants, info


def vit_blocks(params, peer_info=None, pick=None):
    """ssl_jax's ViT encoder blocks (vit.Encoder: pre-LN blocks, final LayerNorm)."""
    p = params
    return _vit_grad_steps(vit.Encoder(p["depth"], p["heads"], p["mlp"]), p, pick)


def attention(params, peer_info=None, pick=None):
    """ssl_jax's attention core (``vit.attention_core``), forward and backward
    of mean(out^2) with respect to q, k and v ([batch, tokens, heads, head_dim]),
    compiled as ssl_jax compiles (the Eigen switch), with YNNPACK dots, and fused
    in C++ (``config.cpu_attention = "fused"``)."""
    p = params
    q, k, v = (
        jnp.asarray(data.tokens(p["batch"], p["tokens"], p["heads"] * p["head_dim"], seed)).reshape(
            p["batch"], p["tokens"], p["heads"], p["head_dim"]
        )
        for seed in range(3)
    )

    def grad():
        loss = lambda q, k, v: jnp.mean(jnp.square(vit.attention_core(q, k, v)))  # noqa: E731
        return jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v)

    settings = {"jit": (EIGEN_CONV, "xla"), "jit, YNNPACK dots": (YNN_DOTS, "xla")}
    settings["jit, fused (cpu_attention=fused)"] = (EIGEN_CONV, "fused")
    variants, flops = {}, 0.0
    for name in chosen(list(settings), pick):
        options, mode = settings[name]
        compile_it = lambda options=options: grad().compile(compiler_options=options)  # noqa: E731
        if (exe := with_kernels(name, [(attention_kernels, mode)], compile_it)) is None:
            continue
        flops = flops or cost_flops(exe)  # of the first built, as XLA compiles it

        def go(exe=exe):
            for _ in range(p["steps"]):
                out = exe(q, k, v)
            jax.block_until_ready(out)
            return p["steps"] * p["batch"]

        go()
        variants[name] = go
    return variants, {"flops_per_item": flops / p["batch"]}


def dense_stack(params, peer_info=None, pick=None):
    """As ssl_jax's ViT runs them (rows, "jit"), and on 3-D tokens for comparison:
    there XLA's CPU backend feeds every weight gradient a transposed copy."""
    variants, info = {}, {}
    for name in chosen(["jit", "jit, 3-D tokens"], pick):
        module = DenseStack(params["depth"], params["mlp"], rows=name == "jit")
        built, flops = _grad_steps(module, params, name)
        variants.update(built)
        info = info or flops  # the first built's
    return variants, info


def augment(params, peer_info=None, pick=None):
    """SimCLR's two views of every image of a batch (crop, flip, colour jitter,
    grayscale; Gaussian blur at 224), ``batches`` batches per repeat."""
    size, src = params["size"], params["source"]
    variant = "cifar10" if size == 32 else "imagenet"
    c = simclr.get_config(variant)
    with c.unlocked():
        c.pretrain.batch_size = params["batch"]
    batches = [
        jnp.asarray(data.images(params["batch"], src, 3, seed=i)) for i in range(params["batches"])
    ]
    key = jax.random.PRNGKey(0)
    variants = {}
    # The default (pp.chunk_size=-1, auto: pp.builder.auto_chunk_size picks by
    # the ops and the image size) and, for comparison, the two explicit ways.
    chunks = {"jit": -1, "jit, one at a time": 1, "jit, vmap chunks of 64": 64}
    for name in chosen(list(chunks), pick):
        with c.unlocked():
            c.pp.chunk_size = chunks[name]
        views = jax.jit(PretrainModel(c, parallel.make_mesh(), (src, src, 3)).views_fn)

        def go(views=views):
            for i, b in enumerate(batches):
                out = views(jax.random.fold_in(key, i), b)
            jax.block_until_ready(out)
            return params["batch"] * len(batches)

        go()
        variants[name] = go
    return variants, {}


def linear_probe_job(params, peer_info=None, pick=None):
    """Multinomial logistic regression on standardised features, one L2
    strength, full-batch (``params["method"]``: L-BFGS or Adam) for as few
    iterations as reach the peer's val accuracy (the count is searched here,
    untimed)."""
    chosen(["jit"], pick)  # the one setting
    x, y, xv, yv = data.features(params["train"], params["val"], params["dim"], params["classes"])
    l2 = jnp.asarray([params["l2"]], jnp.float32)
    target = (peer_info or {}).get("val_acc", 0.0) - params.get("tolerance", 0.001)

    def fit_and_score(steps):
        mean, std = x.mean(0), x.std(0) + 1e-6
        w, b = linear_probe.fit(
            jnp.asarray((x - mean) / std),
            jnp.asarray(y),
            l2,
            num_classes=params["classes"],
            steps=steps,
            lr=params["lr"],
            method=params["method"],
            tol=0.0,  # exactly `steps` iterations: the count searched is the count timed
        )
        pred = jnp.argmax(jnp.asarray((xv - mean) / std) @ w[0] + b[0], axis=-1)
        return float(np.mean(np.asarray(pred) == yv))

    for steps in params["step_grid"]:
        acc = fit_and_score(steps)
        if acc >= target:
            break

    def go():
        fit_and_score(steps)
        return len(x)

    name = {"lbfgs": "L-BFGS iterations", "adam": "Adam steps"}[params["method"]]
    return {"jit": go}, {"val_acc": acc, "setting": f"{steps} {name}"}


def knn_job(params, peer_info=None, pick=None):
    """Cosine kNN, k neighbours, every test item against every train item."""
    chosen(["jit"], pick)  # the one setting
    x, y, xt, yt = data.features(params["train"], params["test"], params["dim"], params["classes"])
    x, y, xt = jnp.asarray(x), jnp.asarray(y), jnp.asarray(xt)
    out = {}

    def go():
        pred = knn_lib.knn_predict(
            x, y, xt, k=params["k"], temperature=0.07, num_classes=params["classes"]
        )
        out["acc"] = float(np.mean(np.asarray(pred) == yt))
        return len(xt)

    go()
    return {"jit": go}, {"test_acc": out["acc"]}


def acquisition_job(params, peer_info=None, pick=None):
    """Score the pool and select ``budget`` unlabelled items with one strategy;
    inputs are logits (softmax included in the timing) and embeddings."""
    chosen(["jit"], pick)  # the one setting
    emb, logits, _, labelled = data.pool(params["pool"], params["dim"], params["classes"])
    strategy = params["strategy"]
    softmax = jax.jit(jax.nn.softmax)
    calls = {"n": 0}

    def go():
        probs = np.asarray(softmax(logits))
        pool = acquisition.Pool(labelled=labelled, probs=probs, embeddings=emb)
        calls["n"] += 1
        acquisition.select(strategy, pool, params["budget"], jax.random.PRNGKey(calls["n"]))
        return len(logits)

    go()
    return {"jit": go}, {}


def matmul(params, peer_info=None, pick=None):
    """float32 n x n matmul: this CPU's reachable peak, in the same run."""
    chosen(["jit"], pick)  # the one setting
    n = params["n"]
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
    mm = jax.jit(jnp.dot)

    def go():
        for _ in range(params["reps"]):
            out = mm(a, b)
        jax.block_until_ready(out)
        return params["reps"]

    go()
    return {"jit": go}, {"flops_per_item": 2.0 * n**3}


JOBS = data.jobs(sys.modules[__name__])
