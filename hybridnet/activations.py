"""Activation functions by Keras name.

Example:
    >>> from hybridnet import activations
    >>> activations.get("relu")(jnp.array([-1.0, 2.0]))
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def linear(x):
    return x


def relu(x):
    return jax.nn.relu(x)


def leaky_relu(x, negative_slope=0.2):
    return jax.nn.leaky_relu(x, negative_slope)


def gelu(x, approximate=False):
    return jax.nn.gelu(x, approximate=approximate)


def softmax(x, axis=-1):
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)


sigmoid = jax.nn.sigmoid
tanh = jnp.tanh
elu = jax.nn.elu
selu = jax.nn.selu
silu = jax.nn.silu
swish = jax.nn.silu
softplus = jax.nn.softplus
relu6 = jax.nn.relu6

_ACTIVATIONS = {
    "linear": linear, "relu": relu, "leaky_relu": leaky_relu, "gelu": gelu,
    "softmax": softmax, "log_softmax": log_softmax, "sigmoid": sigmoid,
    "tanh": tanh, "elu": elu, "selu": selu, "silu": silu, "swish": swish,
    "softplus": softplus, "relu6": relu6,
}


def get(identifier, *, owner: str = "activation"):
    """Returns the activation function for a Keras name, a callable or None."""
    if identifier is None:
        return linear
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in _ACTIVATIONS:
        return _ACTIVATIONS[identifier]
    raise ValueError(
        f"{owner}: unknown activation. Expected one of {sorted(_ACTIVATIONS)} or a "
        f"callable. Received: activation={identifier!r}")


def serialize(fn) -> str | None:
    """Returns the Keras name of an activation, for configs."""
    for name, f in _ACTIVATIONS.items():
        if f is fn:
            return name
    raise ValueError(
        f"Cannot serialize a custom activation {fn!r}; use one of {sorted(_ACTIVATIONS)}.")
