"""Pooling layers over channels_last inputs: max and average pooling over windows
(1D and 2D) and the global ones."""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from hybridnet import utils
from hybridnet.layers.base import Layer
from hybridnet.layers.conv import (_check_rank, _normalize_data_format, _normalize_padding,
                                   _owner, _window_output_length)

_EXPECTED = {1: " (batch, steps, features)", 2: " (batch, height, width, channels)"}


class _Pooling(Layer):
    rank = 2

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.pool_size = utils.normalize_tuple(pool_size, self.rank, "pool_size", owner)
        self.strides = (self.pool_size if strides is None
                        else utils.normalize_tuple(strides, self.rank, "strides", owner))
        self.padding = _normalize_padding(self, padding)
        self.data_format = _normalize_data_format(self, data_format)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, self.rank + 2, _EXPECTED[self.rank])
        self.compute_output_shape(input_shape)

    def _window(self):
        return (1,) + self.pool_size + (1,), (1,) + self.strides + (1,)

    def compute_output_shape(self, input_shape):
        out = [input_shape[0]]
        for i in range(self.rank):
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


def _max_pool(layer: _Pooling, x):
    window, strides = layer._window()
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, layer.padding.upper())


def _average_pool(layer: _Pooling, x):
    """Window means; with ``padding="same"`` over each window's unpadded positions only,
    as Keras does."""
    window, strides = layer._window()
    padding = layer.padding.upper()
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
    if layer.padding == "valid":
        return total / math.prod(layer.pool_size)
    ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, window, strides, padding)


class _Pooling2D(_Pooling):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class MaxPooling2D(_Pooling2D):
    """Max over ``pool_size`` windows of an NHWC image.

    Args:
        pool_size: int or (ph, pw); default (2, 2).
        strides: int or (sh, sw); None means ``pool_size``.
        padding: ``"valid"`` or ``"same"`` (padded positions never win the max).

    Example:
        >>> MaxPooling2D()(Input((28, 28, 8)))  # (None, 14, 14, 8)
    """

    def call(self, x):
        return _max_pool(self, x)


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

    def call(self, x):
        return _average_pool(self, x)


class _GlobalPooling(Layer):
    rank = 2

    def __init__(self, data_format=None, keepdims: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _normalize_data_format(self, data_format)
        self.keepdims = bool(keepdims)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, self.rank + 2, _EXPECTED[self.rank])

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return (input_shape[0],) + (1,) * self.rank + (input_shape[-1],)
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format,
                "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling):
    """Mean over height and width: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``keepdims``.

    Example:
        >>> GlobalAveragePooling2D()(Input((7, 7, 64)))  # (None, 64)
    """

    def call(self, x):
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims)


class GlobalMaxPooling2D(_GlobalPooling):
    """Max over height and width: (B, H, W, C) -> (B, C), or (B, 1, 1, C) with ``keepdims``.

    Example:
        >>> GlobalMaxPooling2D(keepdims=True)(Input((7, 7, 64)))  # (None, 1, 1, 64)
    """

    def call(self, x):
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims)


class MaxPooling1D(_Pooling):
    """Max over ``pool_size`` windows of a (batch, steps, features) sequence.

    Args:
        pool_size: int; default 2.
        strides: int; None means ``pool_size``.
        padding: ``"valid"`` or ``"same"`` (padded positions never win the max).

    Example:
        >>> MaxPooling1D(3, strides=2, padding="same")(Input((9, 4)))  # (None, 5, 4)
    """

    rank = 1

    def call(self, x):
        return _max_pool(self, x)


class AveragePooling1D(_Pooling):
    """Mean over ``pool_size`` windows of a (batch, steps, features) sequence; with
    ``padding="same"`` over each window's unpadded positions only, as Keras does.

    Args:
        pool_size: int; default 2.
        strides: int; None means ``pool_size``.
        padding: ``"valid"`` or ``"same"``.

    Example:
        >>> AveragePooling1D()(Input((10, 4)))  # (None, 5, 4)
    """

    rank = 1

    def call(self, x):
        return _average_pool(self, x)


class GlobalAveragePooling1D(_GlobalPooling):
    """Mean over steps: (B, T, C) -> (B, C), or (B, 1, C) with ``keepdims``. With a mask
    (B, T) the mean is over the unmasked steps only; the output has no mask.

    Example:
        >>> GlobalAveragePooling1D()(Embedding(100, 8, mask_zero=True)(Input((5,))))  # (None, 8)
    """

    rank = 1
    supports_masking = True

    def call(self, x, mask=None):
        if mask is None:
            return jnp.mean(x, axis=1, keepdims=self.keepdims)
        keep = jnp.expand_dims(mask.astype(bool), 2)
        total = jnp.sum(jnp.where(keep, x, 0), axis=1, keepdims=self.keepdims)
        return total / jnp.sum(keep.astype(x.dtype), axis=1, keepdims=self.keepdims)

    def compute_mask(self, inputs, mask):
        return None


class GlobalMaxPooling1D(_GlobalPooling):
    """Max over steps: (B, T, C) -> (B, C), or (B, 1, C) with ``keepdims``. Like Keras,
    it does not use a mask (masked steps take part in the max).

    Example:
        >>> GlobalMaxPooling1D()(Input((10, 4)))  # (None, 4)
    """

    rank = 1

    def call(self, x):
        return jnp.max(x, axis=1, keepdims=self.keepdims)
