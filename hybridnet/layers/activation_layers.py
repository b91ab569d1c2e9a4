"""Activation layers with arguments: ReLU, LeakyReLU and Softmax (with a mask)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner


def _non_negative(layer: Layer, value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if value is None or not isinstance(value, (int, float, np.number)) or value < 0:
        raise ValueError(f"{_owner(layer)}: `{name}` must be a non-negative number. "
                         f"Received: {name}={value!r}")
    return float(value)


def relu(x, negative_slope: float = 0.0, max_value: float | None = None,
         threshold: float = 0.0):
    """Keras's ``relu``: ``x`` above ``threshold`` (clipped at ``max_value``), else
    ``negative_slope * (x - threshold)``."""
    if negative_slope != 0 and max_value is None and threshold == 0:
        return jax.nn.leaky_relu(x, negative_slope)
    negative = jax.nn.relu(threshold - x) if negative_slope != 0 else 0
    y = jnp.where(x > threshold, x, 0).astype(x.dtype) if threshold != 0 else jax.nn.relu(x)
    if max_value is not None:
        y = jnp.clip(y, 0, max_value)
    return y - negative_slope * negative


class ReLU(Layer):
    """Rectified linear unit with Keras's options.

    ``f(x) = max_value`` for ``x >= max_value``, ``x`` for ``threshold <= x < max_value``,
    ``negative_slope * (x - threshold)`` otherwise.

    Args:
        max_value: upper bound of the output (None for none).
        negative_slope: slope below the threshold (default 0).
        threshold: where the output starts to follow ``x`` (default 0).

    Example:
        >>> ReLU(max_value=6.0)(Input((8,)))  # ReLU6
    """

    supports_masking = True

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = _non_negative(self, max_value, "max_value", allow_none=True)
        self.negative_slope = _non_negative(self, negative_slope, "negative_slope")
        self.threshold = _non_negative(self, threshold, "threshold")

    def call(self, inputs):
        return relu(inputs, self.negative_slope, self.max_value, self.threshold)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


class LeakyReLU(Layer):
    """Leaky rectified linear unit: ``x`` for ``x >= 0``, ``negative_slope * x`` otherwise.

    Args:
        negative_slope: the slope for negative inputs (default 0.3, as in Keras; the
            deprecated Keras name ``alpha`` is accepted).

    Example:
        >>> LeakyReLU(0.1)(Input((8,)))
    """

    supports_masking = True

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:
            negative_slope = kwargs.pop("alpha")
            warnings.warn("LeakyReLU: argument `alpha` is deprecated. Use `negative_slope` "
                          "instead.", stacklevel=2)
        super().__init__(**kwargs)
        self.negative_slope = _non_negative(self, negative_slope, "negative_slope")

    def call(self, inputs):
        return jax.nn.leaky_relu(inputs, self.negative_slope)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class Softmax(Layer):
    """Softmax over ``axis``; masked positions (mask False, or <= 0.5 for a float mask)
    get probability 0, as in Keras.

    Args:
        axis: int or list of ints to normalize over (default -1).

    Call arguments:
        mask: optional, broadcastable to the inputs (each of its trailing dimensions 1 or
            equal to the input's); passed on by the model from a masking layer.

    Example:
        >>> Softmax()(Input((10,)))
    """

    supports_masking = True

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            axis = [int(a) for a in axis]
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            axis = int(axis)
        else:
            raise ValueError(f"{_owner(self)}: `axis` must be an int or a list of ints. "
                             f"Received: axis={axis!r}")
        self.axis = axis

    def _check_input(self, input_shape):
        if isinstance(input_shape, list):
            raise ValueError(f"{_owner(self)} expects a single input. "
                             f"Received: {len(input_shape)} inputs")
        rank = len(input_shape)
        for a in self.axis if isinstance(self.axis, list) else [self.axis]:
            if not -rank <= a < rank:
                raise ValueError(f"{_owner(self)}: axis {a} is out of bounds for inputs of "
                                 f"rank {rank}. Received: axis={self.axis!r}, "
                                 f"input.shape={tuple(input_shape)}")

    def _check_mask(self, inputs, mask):
        ok = mask.ndim <= inputs.ndim and all(
            m in (1, i) for m, i in zip(mask.shape[::-1], inputs.shape[::-1]))
        if not ok:
            raise ValueError(f"{_owner(self)}: the `mask` must be broadcastable to the inputs "
                             f"(each mask dimension 1 or equal to the input's). Received: "
                             f"inputs.shape={tuple(inputs.shape)}, mask.shape={tuple(mask.shape)}")

    def call(self, inputs, mask=None):
        x = inputs
        if mask is not None:
            self._check_mask(x, mask)
            mask = mask if mask.dtype == jnp.bool_ else mask > 0.5
            x = jnp.where(mask, x, -3e4 if x.dtype == jnp.float16 else -1e9).astype(x.dtype)
        if isinstance(self.axis, list) and len(self.axis) > 1:
            axes = tuple(self.axis)
            y = jnp.exp(x - jax.nn.logsumexp(x, axis=axes, keepdims=True))
        else:
            y = jax.nn.softmax(x, axis=self.axis[0] if isinstance(self.axis, list) else self.axis)
        if mask is not None:
            y = jnp.where(mask, y, 0.0).astype(y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
