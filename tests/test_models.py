"""Tests for ssl_jax.models: name resolution, feature shapes, parameter counts, BN state."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models import get_model, parse_name
from ssl_jax.models.heads import LinearClassifier, ProjectionHead
from ssl_jax.models.vit import patchify, sincos_posemb_2d, unpatchify

KEY = jax.random.PRNGKey(0)


def _images(shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _abstract_init(model, shape):
    """Variables (as ShapeDtypeStructs) and output shape without running the model."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(KEY, x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return variables, out


def _num_params(variables):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


# --- name resolution -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, module, variant",
    [
        ("resnet:18", "resnet", "18"),
        ("resnet:50", "resnet", "50"),
        ("vit:ti/4", "vit", "ti/4"),
        ("vit:s/16", "vit", "s/16"),
        ("cnn", "cnn", None),
        ("cnn:small", "cnn", "small"),
        ("cnn:base", "cnn", "base"),
    ],
)
def test_get_model_resolves(name, module, variant):
    model = get_model(name)
    assert type(model) is importlib.import_module(f"ssl_jax.models.{module}").Model
    assert model.variant == variant
    assert parse_name(name) == (module, variant)


def test_get_model_passes_kwargs():
    model = get_model("resnet:34", width=0.5, cifar_stem=True)
    assert (model.variant, model.width, model.cifar_stem) == ("34", 0.5, True)
    assert model.num_features == 256


@pytest.mark.parametrize("name", ["nope", "nope:1", "heads", "resnet:", "", "../resnet"])
def test_get_model_unknown_raises(name):
    with pytest.raises(ValueError):
        get_model(name)


@pytest.mark.parametrize("name", ["resnet:99", "vit:xl/16", "vit:s", "cnn:huge"])
def test_bad_variant_raises(name):
    model = get_model(name)
    with pytest.raises(ValueError):
        _abstract_init(model, (1, 32, 32, 3))


# --- output shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kw, shape, dim",
    [
        ("resnet:18", dict(cifar_stem=True, width=0.25), (2, 16, 16, 3), 128),
        ("vit:ti/4", {}, (2, 32, 32, 3), 192),
        ("cnn", {}, (2, 28, 28, 1), 128),
        ("cnn:base", {}, (2, 28, 28, 1), 256),
    ],
)
def test_feature_dims(name, kw, shape, dim):
    model = get_model(name, **kw)
    x = _images(shape)
    variables = model.init(KEY, x)
    out = model.apply(variables, x)
    assert out.shape == (shape[0], dim)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize(
    "name, kw, shape, dim",
    [
        ("resnet:18", dict(cifar_stem=True), (2, 32, 32, 3), 512),
        ("resnet:18", dict(cifar_stem=True, width=0.5), (2, 32, 32, 3), 256),
        ("resnet:34", {}, (2, 224, 224, 3), 512),
        ("resnet:50", {}, (2, 224, 224, 3), 2048),
        ("resnet:50", dict(cifar_stem=True, width=0.5), (2, 32, 32, 3), 1024),
        ("resnet:18", {}, (2, 224, 224, 3), 512),
        ("vit:b/16", {}, (2, 224, 224, 3), 768),
        ("vit:s/16", dict(pool="gap"), (2, 224, 224, 3), 384),
    ],
)
def test_feature_dims_abstract(name, kw, shape, dim):
    # Shape inference only: full-size models are too slow to run eagerly on CPU.
    model = get_model(name, **kw)
    _, out = _abstract_init(model, shape)
    assert out.shape == (shape[0], dim)
    assert model.num_features == dim


def test_vit_tokens():
    x = _images((2, 32, 32, 3))
    model = get_model("vit:ti/4")
    variables = model.init(KEY, x)
    tokens = model.apply(variables, x, method=model.tokens)
    assert tokens.shape == (2, 1 + 64, 192)
    # The pooled feature of the "cls" model is the class token's output.
    np.testing.assert_allclose(model.apply(variables, x), tokens[:, 0], rtol=1e-6, atol=1e-6)

    gap = get_model("vit:ti/4", pool="gap", posemb="sincos2d")
    variables = gap.init(KEY, x)
    tokens = gap.apply(variables, x, method=gap.tokens)
    assert tokens.shape == (2, 64, 192)
    assert "pos_embedding" not in variables["params"]
    np.testing.assert_allclose(gap.apply(variables, x), tokens.mean(1), rtol=1e-5, atol=1e-5)


def test_vit_explicit_fields_override_variant():
    model = get_model("vit:s/16", width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=8)
    variables, out = _abstract_init(model, (2, 32, 32, 3))
    assert out.shape == (2, 64)
    enc = variables["params"]["encoder"]
    assert sorted(k for k in enc if k.startswith("block")) == ["block0", "block1"]
    assert variables["params"]["embedding"]["kernel"].shape == (8 * 8 * 3, 64)
    assert variables["params"]["pos_embedding"].shape == (1, 16, 64)
    # depth 0 is no blocks (the embeddings and the final LayerNorm), not the variant's 12.
    variables, out = _abstract_init(get_model("vit:ti/4", depth=0), (2, 32, 32, 3))
    assert out.shape == (2, 192)
    assert sorted(variables["params"]["encoder"]) == ["norm"]


def test_patchify_roundtrip_and_posemb():
    x = _images((2, 8, 12, 3))
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 4 * 4 * 3)
    # Patch 1 is the second patch of the first row: rows 0-3, columns 4-7.
    np.testing.assert_array_equal(patches[:, 1], x[:, :4, 4:8].reshape(2, -1))
    np.testing.assert_array_equal(unpatchify(patches, 4, (2, 3), 3), x)
    with pytest.raises(ValueError):
        patchify(x, 5)
    pe = sincos_posemb_2d(2, 3, 16)
    assert pe.shape == (1, 6, 16)
    assert len({tuple(np.round(np.asarray(r), 6)) for r in pe[0]}) == 6  # all positions differ


# --- parameter counts (reference: torchvision / original ViT, without classifier) -------


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("resnet:18", (1, 224, 224, 3), 11.18e6),
        ("resnet:50", (1, 224, 224, 3), 23.51e6),
        ("vit:b/16", (1, 224, 224, 3), 85.80e6),
    ],
)
def test_param_counts(name, shape, expected):
    variables, _ = _abstract_init(get_model(name), shape)
    n = _num_params(variables)
    assert abs(n - expected) / expected < 0.02, f"{name}: {n} params, expected ~{expected:.0f}"


# --- BatchNorm state, determinism, dtypes ----------------------------------------------


@pytest.mark.parametrize(
    "name, kw, shape",
    [
        ("cnn", {}, (4, 28, 28, 1)),
        ("resnet:18", dict(cifar_stem=True, width=0.25), (4, 16, 16, 3)),
        ("resnet:50", dict(cifar_stem=True, width=0.125), (4, 8, 8, 3)),
    ],
)
def test_batch_stats_train_and_eval(name, kw, shape):
    model = get_model(name, **kw)
    x = _images(shape) * 3.0 + 1.0
    variables = model.init(KEY, x)
    assert set(variables) == {"params", "batch_stats"}

    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape[0] == shape[0]
    before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates)
    assert len(before) == len(after)
    assert all(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(before, after, strict=True))

    # Eval mode needs no mutable collection and is deterministic.
    e1 = model.apply(variables, x, train=False)
    e2 = model.apply(variables, x)
    np.testing.assert_array_equal(e1, e2)
    # Eval uses running statistics, so it differs from the batch-statistics output.
    assert not np.allclose(e1, out)


def test_vit_dropout_only_in_train():
    model = get_model("vit:ti/4", depth=2, dropout=0.5)
    x = _images((2, 16, 16, 3))
    variables = model.init(KEY, x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(a, b)


def test_resnet_zero_init_residual():
    model = get_model("resnet:18", width=0.125, cifar_stem=True)
    variables = model.init(KEY, jnp.zeros((1, 32, 32, 3)))
    block = variables["params"]["stage2_block1"]
    assert np.all(np.asarray(block["conv2"]["bn"]["scale"]) == 0)
    assert np.all(np.asarray(block["conv1"]["bn"]["scale"]) == 1)
    assert "proj" in block  # channel change + stride needs a projection shortcut
    off = get_model("resnet:18", width=0.125, cifar_stem=True, zero_init_residual=False)
    block = off.init(KEY, jnp.zeros((1, 32, 32, 3)))["params"]["stage1_block1"]
    assert np.all(np.asarray(block["conv2"]["bn"]["scale"]) == 1)


@pytest.mark.parametrize("name", ["cnn", "resnet:18", "vit:ti/8"])
def test_low_precision_compute_keeps_float32_params(name):
    model = get_model(name, dtype=jnp.bfloat16)
    variables, out = _abstract_init(model, (2, 32, 32, 3))
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert out.dtype == jnp.float32


# --- heads ----------------------------------------------------------------------------


def test_projection_head():
    x = _images((4, 32))
    head = ProjectionHead(hidden_dim=64, out_dim=16)
    variables = head.init(KEY, x)
    assert head.apply(variables, x).shape == (4, 16)
    out, updates = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (4, 16)
    assert "bn0" in updates["batch_stats"]
    # No BN on the output layer, and the hidden Dense has no bias (BN supplies it).
    assert set(variables["params"]) == {"fc0", "bn0", "fc1"}
    assert "bias" not in variables["params"]["fc0"]

    deep = ProjectionHead(hidden_dim=64, out_dim=8, num_layers=3, use_bn=False)
    variables = deep.init(KEY, x)
    assert "batch_stats" not in variables
    assert set(variables["params"]) == {"fc0", "fc1", "fc2"}
    assert deep.apply(variables, x).shape == (4, 8)

    linear = ProjectionHead(out_dim=8, num_layers=1)
    assert set(linear.init(KEY, x)["params"]) == {"fc0"}


def test_linear_classifier_zero_init():
    x = _images((3, 32))
    clf = LinearClassifier(num_classes=10)
    variables = clf.init(KEY, x)
    logits = clf.apply(variables, x)
    assert logits.shape == (3, 10)
    np.testing.assert_array_equal(logits, np.zeros((3, 10), np.float32))


def test_cnn_dense_variant_keeps_layout_and_sets_feature_dim():
    model = get_model("cnn", dense_dim=64)
    x = jnp.zeros((2, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert model.apply(variables, x).shape == (2, 64)
    # flatten of the 7×7×128 map into 64 units: the layout is in the weights
    assert variables["params"]["dense"]["kernel"].shape == (7 * 7 * 128, 64)


def test_depth_to_space_puts_channel_block_ij_at_offset_ij():
    from ssl_jax.models.decoder import depth_to_space

    # One pixel, r = 2, C = 1: channels (0, 1, 2, 3) = blocks (0,0), (0,1), (1,0), (1,1).
    x = jnp.arange(4.0).reshape(1, 1, 1, 4)
    np.testing.assert_array_equal(depth_to_space(x, 2)[0, :, :, 0], [[0.0, 1.0], [2.0, 3.0]])
    y = jnp.arange(2 * 3 * 5 * 8.0).reshape(2, 3, 5, 8)  # C = 2 after the shuffle
    out = depth_to_space(y, 2)
    assert out.shape == (2, 6, 10, 2)
    np.testing.assert_array_equal(out[1, 2 * 2 + 1, 2 * 4 + 0], y[1, 2, 4].reshape(2, 2, 2)[1, 0])


@pytest.mark.parametrize("up_kernel", [2, 3])
def test_decoder_output_pixels_see_a_kernel_sized_window(up_kernel):
    from ssl_jax.models.decoder import ConvDecoder

    decoder = ConvDecoder((28, 28, 1), width=4, up_kernel=up_kernel)
    z = jnp.ones((1, 8))
    variables = decoder.init(jax.random.PRNGKey(0), z)
    assert variables["params"]["up1"]["kernel"].shape[:2] == (up_kernel, up_kernel)
    assert decoder.apply(variables, z).shape == (1, 28, 28, 1)

    # Last upsampling alone: which 14×14 input pixels reach output pixel (10, 11)?
    up = nn.Conv(4, (up_kernel, up_kernel), padding="SAME")
    x = jnp.ones((1, 14, 14, 1))
    p = up.init(jax.random.PRNGKey(1), x)

    from ssl_jax.models.decoder import depth_to_space

    def pixel(x):
        return depth_to_space(up.apply(p, x), 2)[0, 10, 11, 0]

    reach = np.argwhere(np.asarray(jax.grad(pixel)(x))[0, :, :, 0] != 0)
    assert len(reach) == up_kernel * up_kernel  # a k×k window around input (5, 5)
    assert {5} <= set(reach[:, 0]) and {5} <= set(reach[:, 1])


def test_vit_self_attention_is_flax_multi_head_attention():
    """Same parameter tree and initial values for the same key, same outputs
    and gradients: checkpoints made with flax's module load unchanged."""
    from ssl_jax.models.vit import SelfAttention

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 24))
    ours = SelfAttention(num_heads=4)
    ref = nn.MultiHeadDotProductAttention(
        num_heads=4, kernel_init=nn.initializers.xavier_uniform(), deterministic=True
    )
    p = ours.init(jax.random.PRNGKey(1), x)
    p_ref = ref.init(jax.random.PRNGKey(1), x, x)
    assert jax.tree.structure(p) == jax.tree.structure(p_ref)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    # Non-zero biases, so that their placement is checked too.
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), p)
    np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x, x), atol=1e-5, rtol=1e-5)

    def loss(f):
        return lambda p, x: jnp.sum(jnp.sin(f(p, x)))

    g = jax.grad(loss(ours.apply), argnums=(0, 1))(p, x)
    g_ref = jax.grad(loss(lambda p, x: ref.apply(p, x, x)), argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_vit_weight_gradients_contract_one_axis():
    """Every matmul of a ViT block's backward pass contracts a single axis
    (tokens are flattened to rows first): a dot contracting batch and tokens
    together costs a transposed copy of an operand on XLA's CPU backend."""
    from ssl_jax.models.vit import Block

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    block = Block(num_heads=2, mlp_dim=32)
    p = block.init(jax.random.PRNGKey(1), x)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(block.apply(p, x) ** 2)))(p, x)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    # Weight gradients: [rows, in]^T [rows, out], rows = batch * tokens = 10.
    rows = [e for e in dots if e.params["dimension_numbers"][0] == ((0,), (0,))]
    assert len(rows) == 6  # query, key, value, out, fc1, fc2
    assert all(e.invars[0].aval.shape[0] == 10 for e in rows)
    for e in dots:
        (lhs_c, rhs_c), _ = e.params["dimension_numbers"]
        assert len(lhs_c) == len(rhs_c) == 1, e
