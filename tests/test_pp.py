import builtins
import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.pp import OPS, build, build_views, parse
from ssl_jax.pp.ops import _CROP_DENSE_MAX, _hue, crop_linear, hsv_to_rgb, rgb_to_hsv

B, H, W = 8, 16, 16


def _images(c=3, h=H, w=W, b=B, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (b, h, w, c)).astype(np.uint8)


@functools.cache
def _jitted(spec, chunk_size=64):
    # One compiled function per spec, so repeated calls do not recompile.
    return jax.jit(build(spec, chunk_size=chunk_size))


def _run(spec, images, seed=0, **kw):
    return np.asarray(_jitted(spec, **kw)(jax.random.key(seed), images))


# Random ops, set up so that two keys must give different outputs.
RANDOM_SPECS = [
    "random_resized_crop(12)",
    "random_resized_crop((10, 12), scale=(0.3, 1.0))",
    "random_crop(12, padding=2)",
    "random_crop(16, padding=4, padding_mode='reflect')",
    "flip_lr",
    "color_jitter(p=1)",
    "color_jitter(0.4, 0.4, 0.4, 0.1, p=1, random_order=False)",
    "grayscale(p=0.5)",
    "gaussian_blur(p=1)",
    "solarize(p=0.5)",
]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_op_shape_range_and_keys(spec):
    x = _images()
    a, a2, b = _run(spec, x, 0), _run(spec, x, 0), _run(spec, x, 1)
    assert a.dtype == np.float32
    assert a.shape[0] == B and a.shape[-1] == 3
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b)


def test_examples_get_their_own_randomness():
    x = np.repeat(_images(b=1), B, axis=0)  # B copies of one image
    for spec in ("random_resized_crop(12)", "color_jitter(p=1)", "gaussian_blur(p=1)"):
        y = _run(spec, x)
        assert not np.allclose(y[0], y[1]), spec


def test_output_sizes():
    x = _images()
    assert _run("random_resized_crop(12)", x).shape == (B, 12, 12, 3)
    assert _run("random_resized_crop((10, 12))", x).shape == (B, 10, 12, 3)
    assert _run("random_crop(12, padding=2)", x).shape == (B, 12, 12, 3)
    assert _run("center_crop(8)", x).shape == (B, 8, 8, 3)
    assert _run("resize((8, 10))", x).shape == (B, 8, 10, 3)
    # An int resizes the shorter side and keeps the aspect ratio.
    assert _run("resize(8)", _images(h=16, w=12)).shape == (B, 11, 8, 3)


PROB_OPS = ["flip_lr", "color_jitter", "grayscale", "gaussian_blur", "solarize"]


@pytest.mark.parametrize("name", PROB_OPS)
def test_p_zero_is_identity(name):
    x = _images() / np.float32(255)  # float input: no conversion, so exact
    np.testing.assert_array_equal(_run(f"{name}(p=0)", x), x)


@pytest.mark.parametrize(
    "spec",
    [
        "color_jitter(0, 0, 0, 0, p=1)",
        f"random_crop({H}, padding=0)",
        f"random_resized_crop({H}, scale=(1, 1), ratio=(1, 1))",
        "gaussian_blur(sigma=1e-3, p=1)",
        "resize(16)",
        "center_crop(16)",
        "value_range(0, 1)",
        "normalize(0, 1)",
    ],
)
def test_zero_strength_is_identity(spec):
    x = _images()
    np.testing.assert_allclose(_run(spec, x), x / 255.0, atol=1e-5)


def test_hue_zero_shift_is_identity():
    x = _images()
    np.testing.assert_allclose(_run("color_jitter(0, 0, 0, 1e-9, p=1)", x), x / 255.0, atol=1e-5)


def test_flip_lr_p1():
    x = _images() / np.float32(255)
    np.testing.assert_array_equal(_run("flip_lr(p=1)", x), x[:, :, ::-1])


def test_grayscale_p1():
    x = _images()
    y = _run("grayscale(p=1)", x)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[..., 0], y[..., 1])
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    luma = (x / 255.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(y[..., 0], luma, atol=1e-5)


def test_single_channel():
    x = _images(c=1)
    spec = "random_resized_crop(12)|color_jitter(p=1)|grayscale(p=1)|gaussian_blur(p=1)"
    y = _run(spec, x)
    assert y.shape == (B, 12, 12, 1) and y.min() >= 0 and y.max() <= 1
    x = x / np.float32(255)
    np.testing.assert_array_equal(_run("grayscale(p=1)", x), x)
    # Saturation and hue have no meaning for one channel and must not alter it.
    np.testing.assert_array_equal(_run("color_jitter(0, 0, 0.8, 0.4, p=1)", x), x)


def test_random_crop_is_window_of_zero_padded_image():
    x = _images() / np.float32(255)
    pad = 3
    y = _run(f"random_crop({H}, padding={pad})", x)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = []
    for b in range(B):
        hits = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if np.array_equal(y[b], padded[b, i : i + H, j : j + W])
        ]
        assert hits, f"example {b} is not a window of the padded image"
        offsets.append(hits[0])
    assert any(o != (pad, pad) for o in offsets)  # some crop is really shifted


def test_center_crop_values():
    x = _images() / np.float32(255)
    np.testing.assert_array_equal(_run("center_crop(8)", x), x[:, 4:12, 4:12])


@pytest.mark.parametrize(
    "box",
    [
        (0.0, 0.0, 40.0, 24.0),  # the whole height, downscaled
        (3.3, 10.1, 7.2, 9.9),  # small box, upscaled
        (0.0, 0.0, 1.0, 1.0),  # one pixel, at each corner
        (39.0, 23.0, 1.0, 1.0),
        (25.5, 0.0, 14.5, 24.0),  # touching the bottom and both sides
    ],
)
@pytest.mark.parametrize("n", [28, 40])  # small images take the dense path
def test_crop_linear_matches_scale_and_translate(box, n):
    assert (n * (n - 4) <= _CROP_DENSE_MAX) == (n == 28)
    x = jnp.asarray(np.random.RandomState(3).rand(n, n - 4, 3).astype(np.float32))
    y0, x0, ch, cw = box
    y0, ch = y0 * n / 40, ch * n / 40  # the boxes are given for n = 40
    sc = jnp.array([24 / ch, 20 / cw])
    ref = jax.image.scale_and_translate(
        x, (24, 20, 3), (0, 1), sc, -jnp.array([y0, x0]) * sc, method="linear", antialias=False
    )
    y = jax.jit(crop_linear, static_argnums=(5, 6))(x, y0, x0, ch, cw, 24, 20)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)


def test_random_resized_crop_full_box_downscale():
    # A constant image stays constant whatever box is drawn.
    x = np.full((B, H, W, 3), 128, np.uint8)
    np.testing.assert_allclose(_run("random_resized_crop(8)", x), 128 / 255.0, atol=1e-5)


def test_solarize_values():
    x = _images() / np.float32(255)
    y = _run("solarize(0.5, p=1)", x)
    np.testing.assert_allclose(y, np.where(x >= 0.5, 1 - x, x), atol=1e-7)


def test_value_range_and_normalize():
    x = _images()
    y = _run("value_range(-1, 1)", x)
    np.testing.assert_allclose(y, x / 255.0 * 2 - 1, atol=1e-6)
    assert y.min() >= -1 and y.max() <= 1
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    y = _run(f"normalize({mean}, {std})", x)
    np.testing.assert_allclose(y, (x / 255.0 - np.array(mean)) / np.array(std), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        _run("normalize((0.5, 0.5), 0.2)", x)


def test_gaussian_blur_smooths():
    x = _images()
    y = _run("gaussian_blur(sigma=2.0, p=1)", x)
    assert y.std() < 0.6 * (x / 255.0).std()
    flat = np.full((2, H, W, 3), 77, np.uint8)
    np.testing.assert_allclose(_run("gaussian_blur(p=1)", flat), 77 / 255.0, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 64])
def test_gaussian_blur_equals_a_reflect_padded_convolution(chunk_size):
    # Reference: pad each axis by reflection (numpy's "reflect", edge not
    # repeated), then sum the shifted, weighted copies. 5 taps on 12x16.
    x = _images(h=12, w=16)
    y = _run("gaussian_blur(sigma=1.3, kernel_size=5, p=1)", x, chunk_size=chunk_size)
    t = np.arange(-2, 3)
    wts = np.exp(-0.5 * (t / 1.3) ** 2)
    wts /= wts.sum()
    ref = x / 255.0
    for axis, n in ((1, 12), (2, 16)):
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        xp = np.pad(ref, pad, mode="reflect")
        ref = sum(wt * np.take(xp, np.arange(i, i + n), axis=axis) for i, wt in enumerate(wts))
    np.testing.assert_allclose(y, np.clip(ref, 0, 1), atol=1e-5)


def test_color_jitter_changes_pixels_within_range():
    x = _images()
    y = _run("color_jitter(0.8, 0.8, 0.8, 0.4, p=1)", x)
    assert y.min() >= 0 and y.max() <= 1
    assert np.abs(y - x / 255.0).mean() > 0.01


def test_hsv_matches_colorsys():
    rgb = np.random.RandomState(1).rand(200, 3).astype(np.float32)
    rgb[:5] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 0, 1]]
    hsv = np.asarray(rgb_to_hsv(jnp.asarray(rgb)))
    ref = np.array([colorsys.rgb_to_hsv(*map(float, p)) for p in rgb])
    np.testing.assert_allclose(hsv, ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(hsv_to_rgb(jnp.asarray(hsv))), rgb, atol=1e-5)


@pytest.mark.parametrize("d", [-0.5, -0.2, 0.0, 0.1, 0.37, 0.5])
def test_hue_shift_matches_colorsys(d):
    rgb = np.random.RandomState(2).rand(300, 3).astype(np.float32)
    # Gray, black, white, each primary and secondary, and ties for the max.
    rgb[:9] = [
        [0, 0, 0],
        [1, 1, 1],
        [0.5, 0.5, 0.5],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [0, 1, 1],
        [1, 1, 0],
        [0.2, 0.7, 0.7],
    ]
    hsv = (colorsys.rgb_to_hsv(*map(float, p)) for p in rgb)
    ref = np.array([colorsys.hsv_to_rgb((h + d) % 1.0, s, v) for h, s, v in hsv])
    np.testing.assert_allclose(np.asarray(_hue(jnp.asarray(rgb), d)), ref, atol=2e-6)


# --- parser -------------------------------------------------------------


def test_parse_args_and_kwargs():
    spec = (
        "random_resized_crop(28, scale=(0.3, 1.0), ratio=(3/4, 4/3))|flip_lr"
        "| color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8) |value_range(-1, 1)"
        "|random_crop(12, padding_mode='reflect')"
    )
    assert parse(spec) == [
        ("random_resized_crop", (28,), {"scale": (0.3, 1.0), "ratio": (0.75, 4 / 3)}),
        ("flip_lr", (), {}),
        ("color_jitter", (0.4, 0.4, 0.4, 0.1), {"p": 0.8}),
        ("value_range", (-1, 1), {}),
        ("random_crop", (12,), {"padding_mode": "reflect"}),
    ]
    assert parse("") == []


def test_parse_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'flip_ud'") as err:
        parse("flip_lr|flip_ud")
    assert "random_resized_crop" in str(err.value)


@pytest.mark.parametrize(
    "spec",
    [
        "flip_lr(",
        "flip_lr(p=)",
        "flip_lr||grayscale",
        "flip_lr|",
        "flip_lr(p)",
        "flip_lr(*a)",
        "flip_lr(**{'p': 1})",
        "ops.flip_lr",
        "flip_lr(__import__('os').getcwd())",
        "__import__('os').getcwd()",
        "flip_lr(p=(lambda: 1)())",
    ],
)
def test_parse_malformed(spec, monkeypatch):
    def no_eval(*args, **kwargs):
        raise AssertionError("eval must not be used")

    monkeypatch.setattr(builtins, "eval", no_eval)
    with pytest.raises(ValueError, match="malformed"):
        parse(spec)


def test_bad_arguments():
    with pytest.raises(ValueError, match="flip_lr"):
        build("flip_lr(p=2)")
    with pytest.raises(ValueError, match="random_resized_crop"):
        build("random_resized_crop(8, bogus=1)")


def test_registry_has_required_ops():
    required = {
        "random_resized_crop",
        "random_crop",
        "center_crop",
        "resize",
        "flip_lr",
        "color_jitter",
        "grayscale",
        "gaussian_blur",
        "solarize",
        "value_range",
        "normalize",
    }
    assert required <= set(OPS)


# --- builder ------------------------------------------------------------

SIMCLR = (
    "random_resized_crop(12)|flip_lr|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
    "|grayscale(p=0.2)|gaussian_blur(p=0.5)|solarize(p=0.2)|value_range(-1, 1)"
)
# A cheaper chain for tests that are about the plumbing, not the ops.
LIGHT = "random_resized_crop(12)|flip_lr|solarize(p=0.5)|value_range(-1, 1)"


def test_chunked_equals_unchunked():
    x = _images()
    chunked = _run(SIMCLR, x, chunk_size=4)  # B = 8: two chunks via lax.map
    plain = _run(SIMCLR, x, chunk_size=None)
    assert chunked.shape == (B, 12, 12, 3)
    # Separately compiled programs may round differently in the last bit.
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    # B not a multiple of the chunk falls back to a single vmap.
    light = _run(LIGHT, x, chunk_size=None)
    np.testing.assert_allclose(_run(LIGHT, x[:6], chunk_size=4), light[:6], atol=1e-5)


def test_one_example_at_a_time_equals_vmap():
    # chunk_size=1: no vmap, so probabilities and colour jitter's random order
    # are real branches; the draws, hence the images, must not change.
    x = _images()
    np.testing.assert_allclose(
        _run(SIMCLR, x, chunk_size=1), _run(SIMCLR, x, chunk_size=None), atol=1e-5, rtol=0
    )


def test_uint8_and_float_inputs_agree():
    x = _images()
    np.testing.assert_allclose(_run(LIGHT, x), _run(LIGHT, x / np.float32(255)), atol=1e-5)
    with pytest.raises(ValueError):
        build("flip_lr")(jax.random.key(0), x[0])


def test_editing_one_op_keeps_others_randomness():
    x = _images()
    a = _run("random_crop(12, padding=2)|solarize(p=0)", x)
    b = _run("random_crop(12, padding=2)|flip_lr(p=0)", x)
    np.testing.assert_array_equal(a, b)


def test_jit_matches_eager_and_legacy_keys():
    x = _images()
    spec = "random_crop(12, padding=2)|flip_lr"
    eager = np.asarray(build(spec)(jax.random.key(3), x))
    np.testing.assert_allclose(_run(spec, x, seed=3), eager, atol=1e-6)
    legacy = jax.jit(build(spec))(jax.random.PRNGKey(3), x)
    assert legacy.shape == eager.shape and legacy.dtype == jnp.float32


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_one_key_per_example_is_used_as_given(make_key):
    x = _images()
    fn = build("random_crop(12, padding=2)|color_jitter(p=1)")
    key = make_key(5)
    keys = jax.random.split(key, B)
    np.testing.assert_array_equal(fn(keys, x), fn(key, x))  # the same keys as split(key, B)
    # Example b's output depends on keys[b] only: reversed keys, reversed outputs.
    np.testing.assert_array_equal(fn(keys[::-1], x[::-1]), np.asarray(fn(key, x))[::-1])
    with pytest.raises(ValueError, match="one key or 8 keys"):
        fn(keys[:3], x)


def test_build_views():
    x = _images()
    views = {"view1": LIGHT, "view2": LIGHT, "eval": "center_crop(12)|value_range(-1, 1)"}
    out = jax.jit(build_views(views))(jax.random.key(0), x)
    assert set(out) == set(views)
    assert all(v.shape == (B, 12, 12, 3) for v in out.values())
    assert not np.allclose(out["view1"], out["view2"])
    np.testing.assert_allclose(out["eval"], x[:, 2:14, 2:14] / 255.0 * 2 - 1, atol=1e-6)
    # Keys follow sorted names, so dict order does not matter.
    swapped = jax.jit(build_views(dict(reversed(views.items()))))(jax.random.key(0), x)
    np.testing.assert_allclose(swapped["view1"], out["view1"], atol=1e-5)


def _op_names(spec):
    return [name for name, _, _ in parse(spec)]


def test_auto_chunk_size_picks_by_ops_and_image_size(monkeypatch):
    from configs import common
    from ssl_jax.pp import chunk_size_for
    from ssl_jax.pp.builder import AUTO, auto_chunk_size

    cifar_weak = "random_crop(32, padding=4, padding_mode='reflect')|flip_lr|normalize(0.5, 0.5)"
    cifar_strong = "random_crop(32, padding=4)|flip_lr|rand_augment(2)|cutout(0.5)"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    for spec, shape in (
        (common.CIFAR_VIEW, (32, 32, 3)),
        (cifar_weak, (32, 32, 3)),
        (common.MNIST_VIEW, (28, 28, 1)),
        (common.MNIST_WEAK, (28, 28, 1)),
    ):
        # larger colour images: one at a time; grayscale stays vmapped
        for side in (shape[0], 33, 224):
            want = 256 if shape[2] == 1 or side == shape[0] else 1
            if spec == cifar_weak:  # crops and flips: chunks up to 2**26 values an array
                want = {32: 16384, 33: 16384, 224: 256}[side]
            assert auto_chunk_size(_op_names(spec), (side, side, shape[2])) == want, spec
    assert auto_chunk_size(_op_names(cifar_weak), (1024, 1024, 3)) == 256
    # colour jitter is cheap under vmap on small images only (not measured larger)
    jitter = "random_crop(64, padding=4)|flip_lr|color_jitter(0.4, 0.4, 0.4, 0.1)"
    assert auto_chunk_size(_op_names(jitter), (32, 32, 3)) == 256
    assert auto_chunk_size(_op_names(jitter), (64, 64, 3)) == 1
    for spec, shape in (
        (cifar_strong, (32, 32, 3)),  # RandAugment: every op computed under vmap
        (common.MNIST_STRONG, (28, 28, 1)),
        (common.IMAGENET_VIEW1, (32, 32, 3)),  # the blur
        (common.IMAGENET_VIEW1, (256, 256, 3)),
    ):
        assert auto_chunk_size(_op_names(spec), shape) == 1, spec
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert auto_chunk_size(_op_names(common.IMAGENET_VIEW1), (256, 256, 3)) == 64
    assert chunk_size_for(-1) == AUTO
    assert chunk_size_for(0) is None and chunk_size_for(16) == 16
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_size_for(-2)


@pytest.mark.parametrize("side, one_at_a_time", [(8, False), (40, True)])
def test_auto_chunk_size_is_resolved_from_the_traced_images(monkeypatch, side, one_at_a_time):
    from ssl_jax.pp.builder import AUTO

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    fn = build("flip_lr|grayscale(p=0.5)", chunk_size=AUTO)
    x = jnp.zeros((6, side, side, 3))
    jaxpr = str(jax.make_jaxpr(fn)(jax.random.PRNGKey(0), x))
    # one at a time: lax.map over the 6 examples (a scan) with real branches (cond)
    assert ("length=6" in jaxpr and "cond[" in jaxpr) == one_at_a_time
    assert ("scan[" in jaxpr) == one_at_a_time
    np.testing.assert_allclose(
        fn(jax.random.PRNGKey(0), x + 0.5),
        build("flip_lr|grayscale(p=0.5)", chunk_size=None)(jax.random.PRNGKey(0), x + 0.5),
        atol=1e-6,
    )


STRONG = (  # self-training's MNIST strong view (configs/common.py)
    "random_affine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))"
    "|rand_augment(2, magnitude=(0.0, 0.5), fill=0)|cutout(0.25, fill=0)|value_range(-1, 1)"
)


@pytest.mark.parametrize("chunk_size", [1, 4])
@pytest.mark.parametrize("spec,channels", [(SIMCLR, 3), (STRONG, 1)])
def test_chunks_on_a_sharded_batch_stay_on_their_device(chunk_size, spec, channels):
    # lax.map over a batch sharded across devices gathers the whole batch onto
    # every device; under the mesh each device loops over its own rows only,
    # and the images are the same as on one device.
    from ssl_jax import parallel

    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    x = _images(c=channels, b=64)
    xs = jax.device_put(x, parallel.data_sharded(mesh))
    fn = jax.jit(build(spec, chunk_size=chunk_size, mesh=mesh))
    hlo = fn.lower(jax.random.key(5), xs).compile().as_text()
    assert "all-gather" not in hlo
    out = fn(jax.random.key(5), xs)
    assert out.sharding.is_equivalent_to(parallel.data_sharded(mesh), out.ndim)
    single = _run(spec, x, seed=5, chunk_size=None)
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=0)
    # Without the mesh the same program gathers: the check above can fail.
    plain = jax.jit(build(spec, chunk_size=chunk_size)).lower(jax.random.key(5), xs)
    assert "all-gather" in plain.compile().as_text()
    # A batch the 8 devices cannot share evenly runs whole, with the same images.
    small = x[:4]
    out = jax.jit(build(spec, chunk_size=chunk_size, mesh=mesh))(jax.random.key(5), small)
    single = _run(spec, small, seed=5, chunk_size=None)
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=0)
