"""ssl_jax's own kernels for XLA's CPU backend, each chosen by a config key.

``KERNELS`` maps each key (configs/common.py) to its module, which has
``MODES``, ``configure(mode)`` and ``runs_on()``; ``KERNEL_OPS`` names the op
each one runs, as a run's first line reports it.
"""

from ssl_jax.kernels import attention, gelu, layernorm, onednn

KERNELS = {
    "cpu_conv": onednn,
    "cpu_attention": attention,
    "cpu_gelu": gelu,
    "cpu_layernorm": layernorm,
}
KERNEL_OPS = {
    "cpu_conv": "convolutions",
    "cpu_attention": "attention",
    "cpu_gelu": "GELU",
    "cpu_layernorm": "LayerNorm",
}
