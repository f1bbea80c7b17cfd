"""Turns spec strings like ``"random_resized_crop(28)|flip_lr|value_range(-1, 1)"``
into batched, jittable augmentation functions.

Specs come from config files, so they are parsed with ``ast`` and only
literal arguments are accepted; nothing in a spec is ever executed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssl_jax.pp.ops import OPS

BatchFn = Callable[[jax.Array, jax.Array], jax.Array]
_OPEN, _CLOSE = "([{", ")]}"

# ``build(chunk_size=AUTO)`` (config.pp.chunk_size = -1) picks per pipeline and
# input size; see auto_chunk_size.
AUTO = -1
# Ops that ran faster under vmap than one example at a time on small images: the
# ops of SimCLR's CIFAR and MNIST views and of FixMatch's weak views. Any other
# op (RandAugment, blur, cutout, ops added with ``pp.register``) makes the auto
# choice one at a time on the CPU.
VMAP_OPS = frozenset(
    {
        "random_resized_crop",
        "random_crop",
        "random_affine",
        "flip_lr",
        "color_jitter",
        "grayscale",
        "normalize",
        "value_range",
    }
)
# Colour images of at most this many pixels count as small (32x32). Above it,
# random_resized_crop resizes by gathers instead of matmuls, and vmapped
# gathers on colour images are slow.
SMALL_PIXELS = 32 * 32
# Ops that ran faster under vmap on colour images of any size measured (up to
# 224x224): they move or copy pixels without resampling (FixMatch's weak views).
# Such pipelines run in vmapped chunks of up to VMAP_VALUES values an array (256
# MB in float32): one vmap was faster than chunks of 256 at batches of 512 and 2048.
ANY_SIZE_VMAP_OPS = frozenset({"random_crop", "flip_lr", "normalize", "value_range"})
VMAP_VALUES = 2**26


def _split_top_level(spec: str) -> list[str]:
    """Splits on ``|`` outside brackets and string literals."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(spec):
        if quote:
            if ch == quote and spec[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "|" and depth == 0:
            pieces.append(spec[start:i])
            start = i + 1
    pieces.append(spec[start:])
    return pieces


# Plain arithmetic on numbers is allowed on top of ast.literal_eval so that
# defaults can be written the way papers state them, e.g. ratio=(3/4, 4/3).
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_ARITH[ast.Div] = operator.truediv


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        pass
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        a, b = _literal(node.left), _literal(node.right)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
            return _ARITH[type(node.op)](a, b)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _literal(node.operand)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    elif isinstance(node, ast.Tuple | ast.List):
        vals = [_literal(e) for e in node.elts]
        return tuple(vals) if isinstance(node, ast.Tuple) else vals
    raise ValueError("not a literal")


def _parse_piece(piece: str) -> tuple[str, tuple, dict]:
    text = piece.strip()
    bad = ValueError(f"malformed op {piece!r}: expected name or name(literal args)")
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise bad from None
    if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            raise bad
        try:
            args = tuple(_literal(a) for a in node.args)
            kwargs = {k.arg: _literal(k.value) for k in node.keywords}
        except ValueError:
            raise ValueError(f"malformed op {piece!r}: arguments must be literals") from None
        name = node.func.id
    else:
        raise bad
    if name not in OPS:
        raise ValueError(f"unknown op {name!r} in {piece!r}; known ops: {', '.join(sorted(OPS))}")
    return name, args, kwargs


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
    """``"a(1, k=2)|b"`` -> ``[("a", (1,), {"k": 2}), ("b", (), {})]``.

    An empty or blank spec is the empty pipeline; an empty element between
    ``|`` separators is an error.
    """
    if not spec.strip():
        return []
    return [_parse_piece(piece) for piece in _split_top_level(spec)]


def _to_float(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [B, H, W, C] with C in (1, 3), got {images.shape}")
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)  # assumed to be in [0, 1] already
    raise ValueError(f"images must be uint8 or floating, got {images.dtype}")


def build(spec: str, *, chunk_size: int | None = 64, mesh=None) -> BatchFn:
    """Returns a pure ``fn(key, images) -> float32 images`` applying ``spec``.

    Example ``b`` uses key ``split(key, B)[b]`` (or ``key[b]`` when ``key``
    holds B keys, one per example), and op ``i`` of the chain folds ``i``
    into it, so editing one op leaves the others' draws intact.
    Ops run under vmap, so every example has the same output shape. When
    ``B`` is a multiple of ``chunk_size`` larger than it, the batch is
    processed in chunks with ``lax.map``, which keeps intermediates small
    (measured 1.4x faster than one vmap at 224x224) and gives the same
    result as the unchunked path. ``chunk_size=1`` runs the examples one by
    one without vmap: random choices (an op's probability, colour jitter's
    order) are then real branches, and only the chosen one is computed; on a
    2-core CPU that was about 2x faster than chunks of 64 for SimCLR's
    224x224 views, but slower for small images whose ops are too cheap to
    amortise a loop iteration. ``chunk_size=AUTO`` (-1) picks one of the two
    when the function is traced, from the ops of ``spec`` and the images'
    size (``auto_chunk_size``).

    ``mesh``: the device mesh the batch is sharded on (its ``data`` axis).
    With more than one device the chunked paths run under ``shard_map``, so
    each device loops over its own rows; a ``lax.map`` over a sharded batch
    axis would otherwise gather the whole batch onto every device and repeat
    the work there. Results are the same as on one device.
    """
    fns, names = [], []
    for name, args, kwargs in parse(spec):
        names.append(name)
        try:
            fns.append(OPS[name](*args, **kwargs))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad arguments for op {name!r} in {spec!r}: {e}") from e

    def one(key, image):
        for i, fn in enumerate(fns):
            image = fn(jax.random.fold_in(key, i), image)
        return image

    def rows(keys, x):  # [b, ...] keys and images, all on one device or this device's rows
        b = x.shape[0]
        chunk = auto_chunk_size(names, x.shape[1:]) if chunk_size == AUTO else chunk_size
        if chunk == 1:
            return jax.lax.map(lambda kx: one(*kx), (keys, x))
        if chunk and b > chunk and b % chunk == 0:
            n = b // chunk
            xs = x.reshape(n, chunk, *x.shape[1:])
            ks = keys.reshape(n, chunk, *keys.shape[1:])
            out = jax.lax.map(lambda kx: jax.vmap(one)(*kx), (ks, xs))
            return out.reshape(b, *out.shape[2:])
        return jax.vmap(one)(keys, x)

    per_device = rows
    n_dev = mesh.devices.size if mesh is not None else 1
    if n_dev > 1 and chunk_size:
        batch_axis = P(mesh.axis_names[0])
        # No collectives inside: every row is independent. check_vma=False because
        # some ops mix per-device values with constants in ways the checker rejects.
        per_device = jax.shard_map(
            rows,
            mesh=mesh,
            in_specs=(batch_axis, batch_axis),
            out_specs=batch_axis,
            check_vma=False,
        )

    def apply(key, images):
        x = _to_float(images)
        keys = _example_keys(key, x.shape[0])
        # A batch the devices cannot share evenly (never a training batch, whose
        # size is checked against the mesh) runs whole, as without a mesh.
        return (per_device if x.shape[0] % n_dev == 0 else rows)(keys, x)

    return apply


def _example_keys(key, n: int) -> jax.Array:
    """One key per example: ``split(key, n)`` of one key, or ``key`` itself when
    it already holds ``n`` keys."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):
        return jax.random.split(key, n)
    if key.ndim != (1 if typed else 2) or key.shape[0] != n:
        raise ValueError(f"expected one key or {n} keys (one per example), got shape {key.shape}")
    return key


def chunk_size_for(setting: int) -> int | None:
    """The ``chunk_size`` of ``build`` that ``config.pp.chunk_size`` asks for:
    -1 is ``AUTO`` (``auto_chunk_size`` picks per pipeline and image size), 0
    one vmap over the whole batch (None), n > 0 chunks of n."""
    if setting < AUTO:
        raise ValueError(f"pp.chunk_size must be -1 (auto), 0 (no chunks) or > 0, got {setting}")
    return setting or None


def auto_chunk_size(op_names, image_shape) -> int:
    """The chunk size ``build(chunk_size=AUTO)`` uses for a pipeline of the ops
    ``op_names`` on input images of ``image_shape`` ([H, W, C]).

    On GPU/TPU: chunks of 64 (many small per-example kernels would serialise).
    On the CPU backend, by what ``experiments/bench/augment_ops.py --parts
    chunks`` measured on a 2-core CPU (experiments/bench/RESULTS.md):
      * vmapped chunks of 256 (one vmap for batches up to 256) where every op
        is in ``VMAP_OPS`` and the images are grayscale or small (at most
        ``SMALL_PIXELS``): SimCLR's CIFAR and MNIST views and FixMatch's weak
        views ran 1.6-4.8x faster than one example at a time at 28x28 and
        32x32 (MNIST's views 3.5x at 48x48), where loop overhead dominates
        ops on so few pixels; and, at any size, where every op is in
        ``ANY_SIZE_VMAP_OPS`` (no resampling): FixMatch's weak CIFAR view ran
        2.5x faster in one vmap at 48x48, 1.17x at 96x96, 1.05x at 224x224,
        and there in chunks as large as ``VMAP_VALUES`` values an array allow
        (one vmap was 1.4-2x faster than chunks of 256 for 512 and 2048 images);
      * otherwise one example at a time, with real branches: under vmap every
        branch of a random choice is computed (each of RandAugment's ops, a
        blur that fires for 1 example in 10), and on larger colour images the
        crop's gathers are slow. FixMatch's strong views (RandAugment,
        cutout) ran 1.1-5.3x faster one at a time even at 28x28 and 32x32,
        and SimCLR's CIFAR and ImageNet views at 48x48 and above 1.1-2.3x.
    """
    if jax.default_backend() != "cpu":
        return 64
    h, w, c = image_shape
    ops = set(op_names)
    if ops <= ANY_SIZE_VMAP_OPS:  # 256 times a power of two (batches divide it)
        chunk = 256
        while 2 * chunk * h * w * c <= VMAP_VALUES:
            chunk *= 2
        return chunk
    return 256 if ops <= VMAP_OPS and (c == 1 or h * w <= SMALL_PIXELS) else 1


def build_views(views: dict[str, str], *, chunk_size: int | None = 64, mesh=None) -> Callable:
    """Returns ``fn(key, images) -> {name: images}``, one pipeline per view.

    View ``name`` gets ``fold_in(key, i)`` with ``i`` its position among the
    *sorted* view names, so the randomness does not depend on dict order
    (which config round-trips may not preserve). Distinct views thus differ
    even when their specs are identical, as a two-view SimCLR recipe needs.
    """
    fns = {name: build(spec, chunk_size=chunk_size, mesh=mesh) for name, spec in views.items()}
    index = {name: i for i, name in enumerate(sorted(views))}

    def apply(key, images):
        return {name: fn(jax.random.fold_in(key, index[name]), images) for name, fn in fns.items()}

    return apply
