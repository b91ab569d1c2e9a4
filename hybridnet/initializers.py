"""Weight initializers by Keras name (glorot_uniform, zeros, orthogonal, ...).

Each initializer is a function ``(key, shape, dtype) -> array``, as in
``jax.nn.initializers``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit


def _random_uniform(minval=-0.05, maxval=0.05):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    return init


def _random_normal(stddev=0.05):
    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)
    return init


_INITIALIZERS = {
    "glorot_uniform": jinit.glorot_uniform,
    "glorot_normal": jinit.glorot_normal,
    "he_uniform": jinit.he_uniform,
    "he_normal": jinit.he_normal,
    "lecun_uniform": jinit.lecun_uniform,
    "lecun_normal": jinit.lecun_normal,
    "orthogonal": jinit.orthogonal,
    "zeros": lambda: jinit.zeros,
    "ones": lambda: jinit.ones,
    "random_uniform": _random_uniform,
    "uniform": _random_uniform,
    "random_normal": _random_normal,
    "normal": _random_normal,
}


def get(identifier, *, owner: str = "initializer"):
    """Returns an ``(key, shape, dtype) -> array`` initializer."""
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in _INITIALIZERS:
        return _INITIALIZERS[identifier]()
    raise ValueError(
        f"{owner}: unknown initializer. Expected one of {sorted(_INITIALIZERS)} or a "
        f"callable. Received: {identifier!r}")


def check_serializable(identifier, *, owner: str):
    if not isinstance(identifier, str):
        raise ValueError(f"{owner}: only initializers given by name can be saved. "
                         f"Received: {identifier!r}")
    return identifier
