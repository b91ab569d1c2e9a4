"""Random draws with Keras 3's signatures (``keras.random``), on ``jax.random``.

``seed`` is an int, a :class:`SeedGenerator` (inside a layer: each call and each step
draws differently, the step stays pure) or None (a key from the scope of the layer call,
else from the global seed sequence of ``utils.set_random_seed``).

Example:
    >>> self.seed_generator = random.SeedGenerator(42)           # in a layer's __init__
    >>> random.dropout(x, 0.5, seed=self.seed_generator)         # in its call
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybridnet.variables import SeedGenerator, current_scope


def draw_key(seed=None):
    """The ``jax.random`` key for one draw from ``seed`` (int, SeedGenerator, key or None)."""
    if isinstance(seed, SeedGenerator):
        return seed.next()
    if seed is None:
        scope = current_scope()
        key = scope.next_key() if scope is not None else None
        if key is not None:
            return key
        from hybridnet import utils
        return utils.next_rng_key()
    if isinstance(seed, int):
        return jax.random.PRNGKey(seed)
    if hasattr(seed, "shape") and hasattr(seed, "dtype"):
        return seed
    raise ValueError(f"`seed` must be an int, a SeedGenerator, a key or None. "
                     f"Received: seed={seed!r}")


def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    dtype = dtype or "float32"
    return mean + stddev * jax.random.normal(draw_key(seed), tuple(shape), dtype)


def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    dtype = dtype or "float32"
    return jax.random.uniform(draw_key(seed), tuple(shape), dtype, minval, maxval)


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    dtype = dtype or "float32"
    return mean + stddev * jax.random.truncated_normal(draw_key(seed), -2.0, 2.0, tuple(shape),
                                                       dtype)


def randint(shape, minval, maxval, dtype="int32", seed=None):
    return jax.random.randint(draw_key(seed), tuple(shape), minval, maxval, dtype)


def categorical(logits, num_samples, dtype="int32", seed=None):
    logits = jnp.asarray(logits)
    out = jax.random.categorical(draw_key(seed), logits[..., None, :], axis=-1,
                                 shape=logits.shape[:-1] + (num_samples,))
    return out.astype(dtype)


def shuffle(x, axis=0, seed=None):
    return jax.random.permutation(draw_key(seed), jnp.asarray(x), axis=axis, independent=False)


def dropout(inputs, rate, noise_shape=None, seed=None):
    """Zeroes a fraction ``rate`` of ``inputs`` and scales the rest by ``1 / (1 - rate)``."""
    inputs = jnp.asarray(inputs)
    if noise_shape is None:
        shape = inputs.shape
    else:
        shape = tuple(inputs.shape[i] if d is None else int(d) for i, d in enumerate(noise_shape))
    keep = jax.random.bernoulli(draw_key(seed), 1.0 - rate, shape)
    return jnp.where(keep, inputs / (1.0 - rate), 0).astype(inputs.dtype)


__all__ = ["SeedGenerator", "categorical", "dropout", "normal", "randint", "shuffle",
           "truncated_normal", "uniform"]
