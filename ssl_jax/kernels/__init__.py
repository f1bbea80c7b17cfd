"""ssl_jax's own kernels for XLA's CPU backend, each chosen by a config key.

``KERNELS`` maps each key (configs/common.py) to the op it covers, as a run's
first line names it, and its module, which has ``MODES``,
``configure(mode)`` and ``runs_on()``.
"""

from ssl_jax.kernels import attention, gelu, layernorm, onednn

KERNELS = {
    "cpu_conv": ("convolutions", onednn),
    "cpu_attention": ("attention", attention),
    "cpu_gelu": ("GELU", gelu),
    "cpu_layernorm": ("LayerNorm", layernorm),
}
