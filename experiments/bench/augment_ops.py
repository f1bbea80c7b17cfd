"""SimCLR's 224 views op by op; the blur, hue shift and crop before and after, side by side.

  .venv/bin/python experiments/bench/augment_ops.py            # batch 128, 5 repeats
  .venv/bin/python experiments/bench/augment_ops.py --toy      # checks it runs

Part 1 (``ops``): each op of ``configs/common.py``'s IMAGENET_VIEW1/VIEW2
built alone with ``pp.build(spec, chunk_size=1)`` (one example at a time, the
CPU default for colour images), then the two whole views. Ops that fire with
a probability run with p = 1. "cores busy" is process CPU time over wall time.

Part 2 (``blur``): the blur as ssl_jax runs it (one banded matmul per axis,
``ssl_jax.pp.ops._blur_matrix``) against the form it replaced (23 shifted
slices summed per axis, kept here as the reference) and two other matmul
forms that were tried, on the same images and sigmas; each form's largest
difference from the reference is printed. ``--parts ops`` alone also runs in
a checkout from before ``_blur_matrix`` existed.

Parts 3 (``hue``) and 4 (``crop``): an op built from its spec the way the
pipeline builds it (``pp.build(spec, chunk_size=1)``), once with the ssl_jax
function inside it and once with the one it replaced, kept here as the
reference; same images and keys, so the same draws. Part 3 is the 224 views'
colour jitter (at p = 1) with ``ssl_jax.pp.ops._hue`` (one fused pass with
selects) against ``rgb_to_hsv``, ``jnp.mod`` on h, ``hsv_to_rgb``. Part 4 is
``random_resized_crop`` with ``ssl_jax.pp.ops.crop_linear`` (two-tap
gathers) against ``jax.image.scale_and_translate`` (dense weight matrices),
at 224 and in MNIST's view (``configs/common.py``'s MNIST_VIEW, 28x28, in
vmapped chunks of 64 as the CPU default runs one channel), where
``crop_linear`` uses small matmuls instead of gathers.

The hue shift is timed inside colour jitter with all four parts because its
cost depends on where it sits. Alone in the one-example loop body
(``color_jitter(0, 0, 0, 0.5, p=1.0)``, or a bare function in a
``lax.map``) the old and new forms took 2.4 and 1.8 ms an image on
2026-12-05; inside colour jitter's random-order ``lax.switch``, as the views
run it, the new form adds ~0.2 ms to the other three parts.

Part 5 (``chunks``): whole views at several image sides (``--sides``), in
each of the ways ``pp.build`` can batch them: one example at a time
(``chunk_size=1``), vmapped chunks (``--chunks``), and one vmap over the
batch (0). The recipes of ``configs/common.py``, each with its crop set to
the side: SimCLR's two CIFAR views (crop, flip, colour jitter, grayscale, no
blur), the two ImageNet views (blur, solarize; sources 8/7 larger than the
side), FixMatch's weak and strong CIFAR views (pad and crop, flip; then
RandAugment and cutout), and MNIST's two SimCLR views, weak and strong views
(grayscale). Sources have the side unless said. ``pp.build``'s auto choice
(``chunk_size=-1``) was set by what this part measured. "pixels off" is the
largest share, over the ways, of pixels that differ from one at a time by
more than 1e-3: the draws are the same, but a sample position that rounds to
the other side of a pixel or of the image's edge changes a few pixels.

All settings of a part run in turn (A B A B ...) in one process, medians of
``--repeats``.
"""

import argparse
import functools
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import common  # noqa: E402
from ssl_jax import pp  # noqa: E402
from ssl_jax.pp import ops  # noqa: E402


def blur_slices(x, s, radius):
    """The previous form: reflect-pad, then sum the shifted, weighted copies."""
    h, w = x.shape[0], x.shape[1]
    wts = ops.gaussian_taps(s, radius)
    xp = jnp.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(wts[i] * xp[i : i + h] for i in range(2 * radius + 1))
    xp = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    x = sum(wts[i] * xp[:, i : i + w] for i in range(2 * radius + 1))
    return jnp.clip(x, 0.0, 1.0)


def blur_matmuls(x, s, radius):
    """ssl_jax's form (``pp.ops.gaussian_blur``)."""
    return jnp.clip(ops.separable_blur(x, ops.gaussian_taps(s, radius), radius), 0.0, 1.0)


def blur_channels_first(x, s, radius):
    """Tried: channels first, so that both axes are plain [n, n] @ [n, m] matmuls."""
    wts = ops.gaussian_taps(s, radius)
    y = jnp.transpose(x, (2, 0, 1))
    y = jnp.einsum("ij,cjw->ciw", ops._blur_matrix(wts, x.shape[0], radius), y)
    y = jnp.einsum("ciw,vw->civ", y, ops._blur_matrix(wts, x.shape[1], radius))
    return jnp.clip(jnp.transpose(y, (1, 2, 0)), 0.0, 1.0)


def blur_kron(x, s, radius):
    """Tried: the width axis as one [w·c, w·c] matmul (Kronecker product with the channels)."""
    h, w, c = x.shape
    wts = ops.gaussian_taps(s, radius)
    y = ops._blur_matrix(wts, h, radius) @ x.reshape(h, w * c)
    y = y @ jnp.kron(ops._blur_matrix(wts, w, radius).T, jnp.eye(c))
    return jnp.clip(y.reshape(h, w, c), 0.0, 1.0)


def hue_round_trip(x, d):
    """The previous form of the hue shift: to HSV, shift h modulo 1, back to RGB."""
    hsv = ops.rgb_to_hsv(x)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + d, 1.0))
    return jnp.clip(ops.hsv_to_rgb(hsv), 0.0, 1.0)


def crop_scale_and_translate(x, y0, x0, ch, cw, out_h, out_w):
    """The previous form of the crop's resize: dense [out, in] weights per axis."""
    sc = jnp.stack([out_h / ch, out_w / cw])
    shape = (out_h, out_w, x.shape[2])
    tr = -jnp.stack([y0, x0]) * sc
    return jax.image.scale_and_translate(x, shape, (0, 1), sc, tr, method="linear", antialias=False)


CROPS = {
    "scale_and_translate (before)": crop_scale_and_translate,
    "ssl_jax (gathers; small images: matmuls)": ops.crop_linear,
    "gathers at every size": functools.partial(ops.crop_linear, dense_max=0),
}

HUES = {"HSV round trip (before)": hue_round_trip, "fused, selects (ssl_jax)": ops._hue}

BLURS = {
    "shifted slices (before)": blur_slices,
    "matmuls (ssl_jax)": blur_matmuls,
    "matmuls, channels first": blur_channels_first,
    "matmuls, width ⊗ channels": blur_kron,
}


def _time(fns: dict, repeats: int) -> dict:
    """{name: (median seconds, spread, cores busy)}; fns take no argument."""
    for f in fns.values():
        jax.block_until_ready(f())
    t = {k: [] for k in fns}
    busy = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            dt = time.perf_counter() - t0
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
            t[k].append(dt)
            busy[k].append(cpu / dt)
    out = {}
    for k in fns:
        m = statistics.median(t[k])
        out[k] = (m, (max(t[k]) - min(t[k])) / m, statistics.median(busy[k]))
    return out


def op_specs(size: int) -> dict:
    """{name: (spec, input is the source image)} for the ops of the 224 views."""
    crop = ("random_resized_crop(224)", f"random_resized_crop({size})")
    view1, view2 = common.IMAGENET_VIEW1.replace(*crop), common.IMAGENET_VIEW2.replace(*crop)
    return {
        "crop and resize": (f"random_resized_crop({size})", True),
        "flip": ("flip_lr(p=1.0)", False),
        "colour jitter": ("color_jitter(0.8, 0.8, 0.8, 0.2, p=1.0)", False),
        "colour jitter, no hue": ("color_jitter(0.8, 0.8, 0.8, 0.0, p=1.0)", False),
        "grayscale": ("grayscale(p=1.0)", False),
        "gaussian blur": ("gaussian_blur(p=1.0)", False),
        "solarize": ("solarize(p=1.0)", False),
        "normalize": (common.IMAGENET_NORM, False),
        "view 1": (view1, True),
        "view 2": (view2, True),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--source", type=int, default=256, help="side of the images before the crop")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("ops", "blur", "hue", "crop", "chunks"),
        default=["ops", "blur", "hue", "crop"],
    )
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96, 128, 160, 224])
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 64], help="besides 1 and 0")
    p.add_argument("--recipes", nargs="+", default=[], help="part chunks: these only (names)")
    p.add_argument("--toy", action="store_true", help="batch 4, 32 from 40, 1 repeat")
    a = p.parse_args(argv)
    if a.toy:
        a.batch, a.size, a.source, a.repeats = 4, 32, 40, 1
        a.sides, a.chunks = [8, 16], [2]
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.integers(0, 256, (a.batch, a.source, a.source, 3), dtype=np.uint8))
    img = jnp.asarray(rng.random((a.batch, a.size, a.size, 3), dtype=np.float32))
    key = jax.random.PRNGKey(0)
    rows = []

    if "ops" in a.parts:
        rows += _ops(a, src, img, key)
    if "blur" in a.parts:
        radius = max(3, int(0.1 * a.size) | 1) // 2  # gaussian_blur's default kernel
        blurs = {k: (lambda x, s, f=f: f(x, s, radius)) for k, f in BLURS.items()}
        sigma = jnp.linspace(0.1, 2.0, a.batch)
        rows += _forms(a, "blur", f"blur, {2 * radius + 1} taps", blurs, img, sigma)
    if "hue" in a.parts:
        spec = "color_jitter(0.8, 0.8, 0.8, 0.2, p=1.0)"
        rows += _op_forms(a, "hue", "colour jitter, hue by", spec, "_hue", HUES, img, key)
    if "crop" in a.parts:
        spec, title = f"random_resized_crop({a.size})", f"crop {a.source} → {a.size}"
        rows += _op_forms(a, "crop", title, spec, "crop_linear", CROPS, src, key)
        digits = jnp.asarray(rng.integers(0, 256, (4 * a.batch, 28, 28, 1), dtype=np.uint8))
        title = f"MNIST view, batch {4 * a.batch}, chunks of 64"
        rows += _op_forms(
            a, "crop", title, common.MNIST_VIEW, "crop_linear", CROPS, digits, key, 64
        )
    if "chunks" in a.parts:
        rows += _chunks(a, rng, key)
    return rows


def chunk_recipes(side: int) -> dict:
    """{recipe: (views, source side, channels)} at output side ``side``: the
    configs' recipes (``configs/common.py``) with their crop set to ``side``."""
    from configs import simclr

    cifar = common.CIFAR_VIEW.replace("random_resized_crop(32", f"random_resized_crop({side}")
    crop = ("random_resized_crop(224)", f"random_resized_crop({side})")
    imagenet = [common.IMAGENET_VIEW1.replace(*crop), common.IMAGENET_VIEW2.replace(*crop)]
    cifar_pp = simclr.get_config("cifar10").pp  # FixMatch's views of CIFAR (self-training)
    weak, strong = (
        v.replace("random_crop(32", f"random_crop({side}") for v in (cifar_pp.weak, cifar_pp.strong)
    )
    mnist = {
        name: v.replace("random_resized_crop(28", f"random_resized_crop({side}")
        for name, v in (("view", common.MNIST_VIEW), ("weak", common.MNIST_WEAK))
    }
    return {
        "CIFAR views": ([cifar, cifar], side, 3),
        "ImageNet views": (imagenet, round(side * 8 / 7), 3),
        "CIFAR weak": ([weak], side, 3),
        "CIFAR strong": ([strong], side, 3),
        "MNIST views": ([mnist["view"]] * 2, side, 1),
        "MNIST weak": ([mnist["weak"]], side, 1),
        "MNIST strong": ([common.MNIST_STRONG], side, 1),
    }


def _chunks(a, rng, key) -> list[dict]:
    """Each recipe at each side, built with every chunk size, timed in turn."""
    rows = []
    settings = {
        "one at a time (1)": 1,
        **{f"chunks of {c}": c for c in a.chunks},
        "one vmap (0)": 0,
    }
    print("\n| recipe | side | " + " | ".join(f"{k}: ms an image" for k in settings), end="")
    print(" | fastest | spreads | pixels off |\n|---|---|" + "---|" * (len(settings) + 3))
    for side in a.sides:
        for recipe, (views, source, channels) in chunk_recipes(side).items():
            if a.recipes and recipe not in a.recipes:
                continue
            shape = (a.batch, source, source, channels)
            src = jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
            fns = {}
            for name, chunk in settings.items():
                f = jax.jit(
                    pp.build_views(
                        {f"v{i}": v for i, v in enumerate(views)}, chunk_size=chunk or None
                    )
                )
                fns[name] = lambda f=f, x=src: f(key, x)
            # The same views whichever way they are batched, up to float rounding:
            # a sample position that rounds to the other side of a pixel or of
            # the image's edge changes a few pixels, so count those.
            outs = {k: jax.tree.leaves(f()) for k, f in fns.items()}
            ref = next(iter(outs.values()))
            diff = max(
                float(jnp.mean(jnp.abs(o - r) > 1e-3))
                for out in outs.values()
                for o, r in zip(out, ref, strict=True)
            )
            times = _time(fns, a.repeats)
            ms = {k: 1000 * t[0] / a.batch for k, t in times.items()}
            best = min(ms, key=ms.get)
            for name, (_, spread, _) in times.items():
                rows.append(
                    {
                        "part": "chunks",
                        "recipe": recipe,
                        "side": side,
                        "name": name,
                        "chunk": settings[name],
                        "ms": ms[name],
                        "spread": spread,
                        "diff": diff,
                    }
                )
            cells = " | ".join(f"{v:.3f}" for v in ms.values())
            spreads = ", ".join(f"{t[1]:.0%}" for t in times.values())
            print(f"| {recipe} | {side} | {cells} | {best} | {spreads} | {diff:.1e} |", flush=True)
    return rows


def _ops(a, src, img, key) -> list[dict]:
    rows, fns = [], {}
    for name, (spec, on_source) in op_specs(a.size).items():
        f = jax.jit(pp.build(spec, chunk_size=1))
        fns[name] = lambda f=f, x=(src if on_source else img): f(key, x)
    print("| op, one example at a time | ms an image | spread | cores busy |\n|---|---|---|---|")
    for name, (m, spread, busy) in _time(fns, a.repeats).items():
        ms = 1000 * m / a.batch
        rows.append({"part": "ops", "name": name, "ms": ms, "spread": spread, "busy": busy})
        print(f"| {name} | {ms:.3f} | {spread:.0%} | {busy:.2f} |")
    return rows


def _op_forms(a, part, title, spec, attr, forms, images, key, chunk_size=1) -> list[dict]:
    """``spec`` built once per form with ``ops.<attr>`` replaced by it; each
    is traced and compiled while replaced. The first form is the reference."""
    saved, compiled = getattr(ops, attr), {}
    try:
        for name, fn in forms.items():
            setattr(ops, attr, fn)
            f = jax.jit(pp.build(spec, chunk_size=chunk_size))
            compiled[name] = f.lower(key, images).compile()
    finally:
        setattr(ops, attr, saved)
    fns = {k: (lambda f=f: f(key, images)) for k, f in compiled.items()}
    return _report(a, part, title, fns, images.shape[0])


def _report(a, part, title, fns: dict, n: int) -> list[dict]:
    """Time ``fns`` side by side and print each against the first."""
    outs = {name: f() for name, f in fns.items()}
    ref_name = next(iter(fns))
    times = _time(fns, a.repeats)
    first = times[ref_name][0]
    rows = []
    print(f"\n| {title} | ms an image | spread | speed vs before | max diff |")
    print("|---|---|---|---|---|")
    for name, (m, spread, _) in times.items():
        err = float(jnp.abs(outs[name] - outs[ref_name]).max())
        ms = 1000 * m / n
        rows.append({"part": part, "name": name, "ms": ms, "speedup": first / m, "error": err})
        print(f"| {name} | {ms:.3f} | {spread:.0%} | {first / m:.2f}× | {err:.1e} |")
    return rows


def _forms(a, part: str, title: str, forms: dict, img, param) -> list[dict]:
    """Time ``forms`` (``fn(image, param)``, the first is the reference) one
    example at a time over the batch in a ``lax.map``."""
    jitted = {
        name: jax.jit(lambda x, p, fn=fn: jax.lax.map(lambda xs: fn(xs[0], xs[1]), (x, p)))
        for name, fn in forms.items()
    }
    fns = {k: (lambda f=f: f(img, param)) for k, f in jitted.items()}
    return _report(a, part, title, fns, img.shape[0])


if __name__ == "__main__":
    main()
