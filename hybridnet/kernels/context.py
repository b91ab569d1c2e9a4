"""A scoped placement context: the executor tells kernels the mesh and batch axes.

Layers know nothing of devices. While the executor traces a step it opens
``placement(mesh, batch_axes)``; a layer that calls a Pallas kernel asks
:func:`per_shard` to wrap it in ``shard_map`` over the batch, so the compiler runs
the kernel on each device's shard and never gathers the batch around it.
"""
from __future__ import annotations

import contextlib
import math
import threading

from hybridnet.kernels._common import shard_batch

_LOCAL = threading.local()


@contextlib.contextmanager
def placement(mesh, batch_axes: tuple[str, ...]):
    """Within this block, :func:`per_shard` splits kernels over ``batch_axes`` of ``mesh``."""
    previous = getattr(_LOCAL, "value", None)
    _LOCAL.value = (mesh, tuple(batch_axes))
    try:
        yield
    finally:
        _LOCAL.value = previous


def current():
    """``(mesh, batch_axes)`` of the innermost :func:`placement`, or None."""
    return getattr(_LOCAL, "value", None)


def current_backend() -> str:
    """The platform kernels compile for: the placement's devices, else JAX's default."""
    value = current()
    if value is not None:
        return value[0].devices.flat[0].platform
    import jax
    return jax.default_backend()


def per_shard(fn, batch_size: int, batch_argnums=(0,)):
    """``fn`` wrapped to run per batch shard under the current placement (unchanged if
    there is none, the batch is not split, or it does not divide evenly)."""
    value = current()
    if value is None:
        return fn
    mesh, axes = value
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    shards = math.prod(mesh.shape[a] for a in axes)
    if shards <= 1 or batch_size % shards:
        return fn
    return shard_batch(fn, mesh, axes, batch_argnums=batch_argnums)
