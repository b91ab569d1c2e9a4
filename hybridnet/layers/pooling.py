"""Pooling layers over NHWC images: MaxPooling2D, AveragePooling2D and the global ones."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from hybridnet import utils
from hybridnet.layers.base import Layer
from hybridnet.layers.conv import (_check_rank, _normalize_data_format, _normalize_padding,
                                   _owner, _window_output_length)


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.pool_size = utils.normalize_tuple(pool_size, 2, "pool_size", owner)
        self.strides = (self.pool_size if strides is None
                        else utils.normalize_tuple(strides, 2, "strides", owner))
        self.padding = _normalize_padding(self, padding)
        self.data_format = _normalize_data_format(self, data_format)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")
        self.compute_output_shape(input_shape)

    def _window(self):
        return (1,) + self.pool_size + (1,), (1,) + self.strides + (1,)

    def compute_output_shape(self, input_shape):
        out = [input_shape[0]]
        for i in range(2):
            n = _window_output_length(input_shape[1 + i], self.pool_size[i], self.strides[i],
                                      self.padding)
            if n is not None and n <= 0:
                raise ValueError(
                    f"{_owner(self)}: computed output size would be zero or negative. "
                    f"Received: input.shape={tuple(input_shape)}, pool_size={self.pool_size}, "
                    f"strides={self.strides}, padding={self.padding!r}")
            out.append(n)
        return tuple(out) + (input_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding,
                "data_format": self.data_format}


class MaxPooling2D(_Pooling2D):
    """Max over ``pool_size`` windows of an NHWC image.

    Args:
        pool_size: int or (ph, pw); default (2, 2).
        strides: int or (sh, sw); None means ``pool_size``.
        padding: ``"valid"`` or ``"same"`` (padded positions never win the max).

    Example:
        >>> MaxPooling2D()(Input((28, 28, 8)))  # (None, 14, 14, 8)
    """

    def call(self, weights, x):
        window, strides = self._window()
        return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, self.padding.upper())


class AveragePooling2D(_Pooling2D):
    """Mean over ``pool_size`` windows of an NHWC image.

    With ``padding="same"`` each window is averaged over its valid (unpadded)
    positions only, as Keras does.

    Args:
        pool_size: int or (ph, pw); default (2, 2).
        strides: int or (sh, sw); None means ``pool_size``.
        padding: ``"valid"`` or ``"same"``.

    Example:
        >>> AveragePooling2D(3, strides=2, padding="same")(Input((7, 7, 4)))  # (None, 4, 4, 4)
    """

    def call(self, weights, x):
        window, strides = self._window()
        padding = self.padding.upper()
        total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
        if self.padding == "valid":
            return total / (self.pool_size[0] * self.pool_size[1])
        ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
        counts = lax.reduce_window(ones, 0.0, lax.add, window, strides,
                                   padding)
        return total / counts


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _normalize_data_format(self, data_format)
        self.keepdims = bool(keepdims)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return (input_shape[0], 1, 1, input_shape[-1])
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format,
                "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean over height and width: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``keepdims``.

    Example:
        >>> GlobalAveragePooling2D()(Input((7, 7, 64)))  # (None, 64)
    """

    def call(self, weights, x):
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """Max over height and width: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``keepdims``.

    Example:
        >>> GlobalMaxPooling2D(keepdims=True)(Input((7, 7, 64)))  # (None, 1, 1, 64)
    """

    def call(self, weights, x):
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims)
