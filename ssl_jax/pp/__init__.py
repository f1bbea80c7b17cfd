"""On-device batched image augmentation built from spec strings."""

from ssl_jax.pp import ops_geometry, ops_strong  # noqa: F401  (register their ops)
from ssl_jax.pp.builder import build, build_views, chunk_size_for, parse
from ssl_jax.pp.ops import OPS, register

__all__ = ["OPS", "build", "build_views", "chunk_size_for", "parse", "register"]
