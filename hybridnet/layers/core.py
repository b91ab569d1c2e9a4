"""Core layers: Dense, Activation, Flatten, Reshape, Dropout, Lambda."""
from __future__ import annotations

import inspect
import math


import jax.numpy as jnp
import numpy as np

from hybridnet import activations, random, regularizers
from hybridnet.layers.base import Layer
from hybridnet.variables import SeedGenerator


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
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Layer '{self.name}' (Dense): `units` must be a positive int. "
                             f"Received: units={units!r}")
        self.units = int(units)
        self.activation = activations.get(activation, owner=f"Layer '{self.name}' (Dense)")
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

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
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                      initializer=self.kernel_initializer, name="kernel",
                                      regularizer=self.kernel_regularizer,
                                      axes=("embed", "mlp"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                        name="bias", regularizer=self.bias_regularizer,
                                        axes=("mlp",))

    def call(self, inputs):
        y = jnp.matmul(inputs, self.kernel.value)
        if self.use_bias:
            y = y + self.bias.value
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer,
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class Activation(Layer):
    """Applies an activation function by name, e.g. ``Activation("relu")``."""

    supports_masking = True

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation, owner=f"Layer '{self.name}' (Activation)")

    def call(self, inputs):
        return self.activation(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Flatten(Layer):
    """Flattens all but the batch dimension."""

    def _check_input(self, input_shape):
        _check_min_rank(self, input_shape, 1)

    def call(self, inputs):
        return jnp.reshape(inputs, (inputs.shape[0], -1))

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

    def call(self, inputs):
        return jnp.reshape(inputs, (inputs.shape[0],) + self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Dropout(Layer):
    """Randomly zeroes a fraction ``rate`` of inputs in training, scaling the rest.

    Args:
        rate: fraction of units to drop, in [0, 1).
        noise_shape: optional broadcast shape of the keep mask (None = input shape).
        seed: optional int seeding the layer's SeedGenerator.
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
        self.seed_generator = SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        return random.dropout(inputs, self.rate, self.noise_shape, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed,
                "noise_shape": list(self.noise_shape) if self.noise_shape else None}


class Lambda(Layer):
    """Wraps a function of tensors as a layer, as ``keras.layers.Lambda``.

    In memory only: a model holding a Lambda cannot be saved, because the file would have
    to carry code. For a saveable layer, subclass ``Layer`` and register it with
    ``hybridnet.saving.register_serializable``.

    Args:
        function: ``fn(inputs, **arguments)``; it may take ``mask`` and ``training``.
        output_shape: unused for inference (shapes are traced); kept for Keras parity.
        mask: None (no output mask), a mask tensor, or ``fn(inputs, mask)``.
        arguments: extra keyword arguments for ``function``.

    Example:
        >>> Lambda(lambda x: x ** 2)(Input((4,)))
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise ValueError(f"Layer '{self.name}' (Lambda): `function` must be callable. "
                             f"Received: function={function!r}")
        self.function = function
        self.output_shape_arg = output_shape
        self.mask = mask
        self.arguments = dict(arguments or {})
        self.supports_masking = mask is not None
        params = inspect.signature(function).parameters
        self._fn_kwargs = {k for k in ("mask", "training") if k in params}

    def call(self, inputs, mask=None, training=None):
        kwargs = dict(self.arguments)
        if "mask" in self._fn_kwargs:
            kwargs["mask"] = mask
        if "training" in self._fn_kwargs:
            kwargs["training"] = training
        return self.function(inputs, **kwargs)

    def compute_mask(self, inputs, mask):
        return self.mask(inputs, mask) if callable(self.mask) else self.mask

    def get_config(self):
        name = getattr(self.function, "__name__", type(self.function).__name__)
        raise ValueError(f"Layer '{self.name}' (Lambda) wraps Python code ('{name}'), which "
                         f"hybridnet never writes to a file (loading it would run code). "
                         f"Replace it with a Layer subclass that has get_config() and "
                         f"register it with hybridnet.saving.register_serializable.")


class Masking(Layer):
    """Masks the timesteps whose features all equal ``mask_value`` (they are zeroed, and
    the output mask is False there for downstream layers such as LSTM or
    GlobalAveragePooling1D).

    Args:
        mask_value: the value that marks a padded timestep.

    Example:
        >>> Masking(0.0)(Input((10, 8)))  # (None, 10, 8), mask (None, 10)
    """

    supports_masking = True

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = mask_value

    def _check_input(self, input_shape):
        _check_min_rank(self, input_shape, 2)

    def call(self, inputs):
        keep = jnp.any(inputs != self.mask_value, axis=-1, keepdims=True)
        return jnp.where(keep, inputs, 0).astype(inputs.dtype)

    def compute_mask(self, inputs, mask):
        return jnp.any(inputs != self.mask_value, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}
