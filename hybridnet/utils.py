"""Small shared utilities: seeding, name generation, shape formatting."""
from __future__ import annotations

import collections
import os
import re

import numpy as np

_SEEDS: list = [None]  # a numpy Generator after set_random_seed, else None
_NAME_COUNTS: collections.Counter = collections.Counter()


def set_random_seed(seed: int) -> None:
    """Seeds parameter initialisation, dropout and shuffling (like Keras).

    After it, every new layer and model draws its own seed from one sequence: models
    built one after the other get distinct weights, and repeating the same calls after
    the same ``set_random_seed`` reproduces them.

    Example:
        >>> hybridnet.utils.set_random_seed(42)
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: `seed` must be a non-negative int. "
                         f"Received: seed={seed!r}")
    _SEEDS[0] = np.random.default_rng(int(seed))
    np.random.seed(int(seed))
    _NAME_COUNTS.clear()


def next_seed() -> int:
    """The next seed of the global sequence (fresh entropy when no seed was set)."""
    if _SEEDS[0] is not None:
        return int(_SEEDS[0].integers(0, 2**31 - 1))
    return int.from_bytes(os.urandom(4), "little") >> 1


def next_rng_key():
    """A fresh PRNG key from the global sequence (eager layers in training mode)."""
    import jax
    return jax.random.PRNGKey(next_seed())


def snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base: str) -> str:
    """``dense``, ``dense_1``, ``dense_2``... as Keras names layers."""
    count = _NAME_COUNTS[base]
    _NAME_COUNTS[base] += 1
    return base if count == 0 else f"{base}_{count}"


def format_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")")


def normalize_tuple(value, n: int, name: str, owner: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; validates a tuple of ``n`` positive ints."""
    if isinstance(value, int):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"{owner}: `{name}` must be an int or a tuple of {n} positive ints. "
                         f"Received: {name}={value!r}")
    return tuple(int(v) for v in value)


def to_categorical(y, num_classes: int | None = None, dtype="float32") -> np.ndarray:
    """One-hot encodes integer labels, as ``keras.utils.to_categorical``."""
    y = np.asarray(y, dtype="int64")
    shape = y.shape[:-1] if y.ndim > 1 and y.shape[-1] == 1 else y.shape
    y = y.reshape(-1)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    out = np.zeros((y.size, num_classes), dtype=dtype)
    out[np.arange(y.size), y] = 1
    return out.reshape(shape + (num_classes,))
