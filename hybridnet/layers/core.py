"""Core layers: Dense, Activation, Flatten, Reshape, Dropout."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import activations
from hybridnet.layers.base import Layer


def _check_min_rank(layer: Layer, input_shape, rank: int) -> None:
    if isinstance(input_shape, list):
        raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) expects a single input. "
                         f"Received: {len(input_shape)} inputs")
    if len(input_shape) < rank:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) expects inputs of rank >= {rank}. "
            f"Received: input.shape={tuple(input_shape)}")


class Dense(Layer):
    """Densely connected layer: ``activation(x @ kernel + bias)``.

    Args:
        units: output features.
        activation: a Keras activation name or callable; None for linear.
        use_bias: add a bias vector.
        kernel_initializer, bias_initializer: initializer names.

    Example:
        >>> Dense(64, activation="relu")
    """

    supports_masking = True

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Layer '{self.name}' (Dense): `units` must be a positive int. "
                             f"Received: units={units!r}")
        self.units = int(units)
        self.activation = activations.get(activation, owner=f"Layer '{self.name}' (Dense)")
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def _check_input(self, input_shape):
        _check_min_rank(self, input_shape, 2)
        if self.built and input_shape[-1] != self.input_shape[-1]:
            raise ValueError(
                f"Layer '{self.name}' (Dense) expects inputs with last dimension "
                f"{self.input_shape[-1]}. Received: input.shape={tuple(input_shape)}")
        if input_shape[-1] is None:
            raise ValueError(f"Layer '{self.name}' (Dense) needs a known last input dimension. "
                             f"Received: input.shape={tuple(input_shape)}")

    def build(self, input_shape):
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer,
                        axes=("embed", "mlp"))
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer, axes=("mlp",))

    def call(self, weights, x):
        y = jnp.matmul(x, weights["kernel"])
        if self.use_bias:
            y = y + weights["bias"]
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Activation(Layer):
    """Applies an activation function by name, e.g. ``Activation("relu")``."""

    supports_masking = True

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation, owner=f"Layer '{self.name}' (Activation)")

    def call(self, weights, x):
        return self.activation(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Flatten(Layer):
    """Flattens all but the batch dimension."""

    def _check_input(self, input_shape):
        _check_min_rank(self, input_shape, 1)

    def call(self, weights, x):
        return jnp.reshape(x, (x.shape[0], -1))

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if any(d is None for d in rest) else int(math.prod(rest)))


class Reshape(Layer):
    """Reshapes the non-batch dimensions to ``target_shape`` (one entry may be -1)."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape[1:]) if None not in input_shape[1:] else None
        target = list(self.target_shape)
        if target.count(-1) > 1:
            raise ValueError(f"Layer '{self.name}' (Reshape): at most one -1 allowed. "
                             f"Received: target_shape={self.target_shape}")
        known = math.prod(d for d in target if d != -1)
        if size is not None:
            if -1 in target:
                if size % known:
                    raise ValueError(self._mismatch(input_shape))
                target[target.index(-1)] = size // known
            elif known != size:
                raise ValueError(self._mismatch(input_shape))
        return (input_shape[0],) + tuple(None if d == -1 else d for d in target)

    def _mismatch(self, input_shape):
        return (f"Layer '{self.name}' (Reshape): the input size must match "
                f"target_shape={self.target_shape}. Received: input.shape={tuple(input_shape)}")

    def call(self, weights, x):
        return jnp.reshape(x, (x.shape[0],) + self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Dropout(Layer):
    """Randomly zeroes a fraction ``rate`` of inputs in training, scaling the rest.

    Args:
        rate: fraction of units to drop, in [0, 1).
        noise_shape: optional broadcast shape of the keep mask (None = input shape).
        seed: optional int, folded into the step's key.
    """

    supports_masking = True

    def __init__(self, rate: float, noise_shape=None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Layer '{self.name}' (Dropout): `rate` must be in [0, 1). "
                             f"Received: rate={rate!r}")
        self.rate = float(rate)
        self.noise_shape = tuple(noise_shape) if noise_shape is not None else None
        self.seed = seed

    def call(self, weights, x, *, training=False, rng=None):
        if not training or self.rate == 0:
            return x
        if rng is None:
            raise ValueError(f"Layer '{self.name}' (Dropout) needs an rng in training mode.")
        if self.seed is not None:
            rng = jax.random.fold_in(rng, self.seed)
        shape = x.shape if self.noise_shape is None else tuple(
            x.shape[i] if d is None else d for i, d in enumerate(self.noise_shape))
        keep = jax.random.bernoulli(rng, 1.0 - self.rate, shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed,
                "noise_shape": list(self.noise_shape) if self.noise_shape else None}
