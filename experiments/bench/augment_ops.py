"""SimCLR's 224 views op by op, and the Gaussian blur's two forms side by side.

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

Part 3 (``hue``): colour jitter's hue shift as ssl_jax runs it
(``ssl_jax.pp.ops._hue``, one fused pass with selects) against the form it
replaced (``rgb_to_hsv``, ``jnp.mod`` on h, ``hsv_to_rgb``, kept here as the
reference), on the same images and shifts.

Part 4 (``crop``): the bilinear crop-and-resize of ``random_resized_crop`` as
ssl_jax runs it (``ssl_jax.pp.ops.crop_linear``, two-tap gathers) against
``jax.image.scale_and_translate`` (dense weight matrices, the reference), on
the same source images and boxes.

All settings of a part run in turn (A B A B ...) in one process, medians of
``--repeats``.
"""

import argparse
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
    "gathers (ssl_jax)": ops.crop_linear,
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
        choices=("ops", "blur", "hue", "crop"),
        default=["ops", "blur", "hue", "crop"],
    )
    p.add_argument("--toy", action="store_true", help="batch 4, 32 from 40, 1 repeat")
    a = p.parse_args(argv)
    if a.toy:
        a.batch, a.size, a.source, a.repeats = 4, 32, 40, 1
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
        shift = jnp.linspace(-0.5, 0.5, a.batch)
        rows += _forms(a, "hue", "hue shift", HUES, img, shift)
    if "crop" in a.parts:
        # Boxes as random_resized_crop draws them: area 8-100%, aspect 3/4-4/3.
        n = a.source
        side = np.sqrt(rng.uniform(0.08, 1.0, a.batch)) * n
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), a.batch))
        ch, cw = np.minimum(side / np.sqrt(aspect), n), np.minimum(side * np.sqrt(aspect), n)
        box = np.stack([rng.random(a.batch) * (n - ch), rng.random(a.batch) * (n - cw), ch, cw], 1)
        crops = {k: (lambda x, b, f=f: f(x, *b, a.size, a.size)) for k, f in CROPS.items()}
        title = f"crop {a.source} → {a.size}"
        rows += _forms(
            a, "crop", title, crops, src.astype(jnp.float32) / 255, jnp.asarray(box, jnp.float32)
        )
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


def _forms(a, part: str, title: str, forms: dict, img, param) -> list[dict]:
    """Time ``forms`` (``fn(image, param)``, the first is the reference) one
    example at a time over the batch; print and return their rows."""
    rows = []
    jitted = {
        name: jax.jit(lambda x, p, fn=fn: jax.lax.map(lambda xs: fn(xs[0], xs[1]), (x, p)))
        for name, fn in forms.items()
    }
    outs = {name: f(img, param) for name, f in jitted.items()}
    ref_name = next(iter(forms))
    times = _time({name: (lambda f=f: f(img, param)) for name, f in jitted.items()}, a.repeats)
    first = times[ref_name][0]
    print(f"\n| {title} | ms an image | spread | speed vs before | max diff |")
    print("|---|---|---|---|---|")
    for name, (m, spread, _) in times.items():
        err = float(jnp.abs(outs[name] - outs[ref_name]).max())
        ms = 1000 * m / a.batch
        rows.append({"part": part, "name": name, "ms": ms, "speedup": first / m, "error": err})
        print(f"| {name} | {ms:.3f} | {spread:.0%} | {first / m:.2f}× | {err:.1e} |")
    return rows


if __name__ == "__main__":
    main()
