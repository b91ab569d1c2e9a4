"""Pallas kernels (conv2d, LSTM) with custom_vjp backward kernels, each beside
the plain-JAX reference it is tested against.

Layers choose with ``kernel=``; a typical dispatch::

    ok, why = supports_conv2d(x.shape, w.shape, dtype=x.dtype, strides=s,
                              padding=p, activation=a)
    if kernel == "pallas" and not ok:
        raise ValueError(f"Conv2D {name}: {why}")
    fn = conv2d if ok and kernel in ("auto", "pallas") else conv2d_reference
    # under kernel="auto" with not ok: log one line with `why`, use XLA.

On CPU the kernels run in Pallas interpret mode (slow; meant for tests). On
GPU they lower through Triton, on TPU through Mosaic.
``triton_compile.compile_gpu_kernels`` compiles the GPU kernels for Hopper on
any machine and reports their registers, spills and shared memory.
"""

from ._common import autotune, cache_path, resolve_backend, shard_batch
from .conv2d import (conv2d, conv2d_reference, default_conv2d_block_sizes,
                     supports_conv2d)
from .lstm import lstm, lstm_reference, default_lstm_block_sizes, supports_lstm
from .context import current_backend, per_shard, placement

__all__ = [
    "conv2d", "conv2d_reference", "supports_conv2d",
    "default_conv2d_block_sizes",
    "lstm", "lstm_reference", "supports_lstm", "default_lstm_block_sizes",
    "shard_batch", "autotune", "cache_path", "resolve_backend", "per_shard", "placement", "current_backend",
]
