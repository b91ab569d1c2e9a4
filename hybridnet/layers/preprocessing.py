"""Preprocessing layers that run inside the model: Rescaling and Normalization (with
``adapt``, which computes its statistics on the host with numpy)."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner
from hybridnet.ops.core import epsilon


def _plain(value):
    """A config value for a number, list or array (arrays become nested lists)."""
    return np.asarray(value).tolist() if isinstance(value, (np.ndarray, jnp.ndarray)) else value


class Rescaling(Layer):
    """Rescales inputs: ``inputs * scale + offset``, in the layer's dtype.

    Args:
        scale: a number, or one per channel (broadcast against the last axis).
        offset: a number, or one per channel.

    Example:
        >>> Rescaling(1.0 / 255)(Input((28, 28, 1)))  # pixels to [0, 1]
    """

    supports_masking = True

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.offset = offset

    def call(self, inputs):
        scale = jnp.asarray(self.scale, self.dtype)
        offset = jnp.asarray(self.offset, self.dtype)
        return inputs.astype(self.dtype) * scale + offset

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "scale": _plain(self.scale),
                "offset": _plain(self.offset)}


def _first_input(batch):
    """The inputs of an ``(x, y)`` or ``(x, y, sample_weight)`` batch, as Keras's adapt."""
    return batch[0] if isinstance(batch, tuple) else batch


def _batches(data):
    """Arrays yielded by ``data``: one array, a PyDataset-like (``num_batches`` and
    indexing) or any iterable of batches."""
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")):
        return [np.asarray(data)]
    length = getattr(data, "num_batches", None)
    if isinstance(length, int) and hasattr(data, "__getitem__"):
        return (np.asarray(_first_input(data[i])) for i in range(length))
    if hasattr(data, "__iter__"):
        return (np.asarray(_first_input(b)) for b in data)
    raise TypeError(f"Normalization.adapt: unsupported data type {type(data).__name__}. "
                    f"Expected an array, a PyDataset or an iterable of batches.")


def _merge_moments(total, batch_stats):
    """Chan's parallel update of (mean, variance, count) with one more batch."""
    mean, var, count = total
    b_mean, b_var, b_count = batch_stats
    new_count = count + b_count
    w = b_count / new_count
    new_mean = mean * (1 - w) + b_mean * w
    new_var = ((var + (mean - new_mean) ** 2) * (1 - w)
               + (b_var + (b_mean - new_mean) ** 2) * w)
    return new_mean, new_var, new_count


class Normalization(Layer):
    """Normalizes features: ``(x - mean) / sqrt(variance)`` with per-feature statistics
    over ``axis``, set by ``mean=``/``variance=`` or learned from data by :meth:`adapt`.

    Learned statistics are non-trainable weights ``mean``, ``variance`` and ``count``, as in
    Keras, so they are saved with the model and copied by ``set_weights``.

    Args:
        axis: the axis or axes that keep their own statistics (default -1, the features);
            None for one scalar mean and variance.
        mean, variance: fixed statistics (both or neither), broadcast to the kept axes.
        invert: apply the inverse transform, ``mean + x * sqrt(variance)``.

    Example:
        >>> norm = Normalization()
        >>> norm.adapt(np.array([[1.0, 2.0], [3.0, 6.0]]))
        >>> norm(np.array([[1.0, 2.0]]))  # [[-1., -1.]]
    """

    supports_masking = True

    def __init__(self, axis=-1, mean=None, variance=None, invert: bool = False, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        if axis is None:
            axis = ()
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            axis = (int(axis),)
        elif isinstance(axis, (list, tuple)) and all(
                isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis):
            axis = tuple(int(a) for a in axis)
        else:
            raise ValueError(f"{owner}: `axis` must be None, an int or a list of ints. "
                             f"Received: axis={axis!r}")
        self.axis = axis
        if (mean is None) != (variance is None):
            raise ValueError(f"{owner}: when setting values directly, both `mean` and "
                             f"`variance` must be set. Received: mean={mean!r} and "
                             f"variance={variance!r}")
        if mean is not None:
            if np.shape(mean) != np.shape(variance):
                raise ValueError(f"{owner}: `mean` and `variance` must have the same shape. "
                                 f"Received: mean.shape={np.shape(mean)} and "
                                 f"variance.shape={np.shape(variance)}")
            if np.ndim(mean) > len(self.axis):
                raise ValueError(f"{owner}: the rank of `mean` must be at most the number of "
                                 f"axes ({len(self.axis)}). Received: mean.shape="
                                 f"{np.shape(mean)} for axis={self.axis}")
        self.input_mean = mean
        self.input_variance = variance
        self.invert = bool(invert)

    def _keep_axes(self, input_shape) -> tuple[int, ...]:
        ndim = len(input_shape)
        if any(not -ndim <= a < ndim for a in self.axis):
            raise ValueError(f"{_owner(self)}: all `axis` values must be in the range "
                             f"[-ndim, ndim). Received: axis={self.axis}, "
                             f"input.shape={tuple(input_shape)}")
        return tuple(sorted(a % ndim for a in self.axis))

    def _check_input(self, input_shape):
        if isinstance(input_shape, list):
            raise ValueError(f"{_owner(self)} expects a single input. "
                             f"Received: {len(input_shape)} inputs")
        keep = self._keep_axes(input_shape)
        for d in keep:
            if input_shape[d] is None:
                raise ValueError(f"{_owner(self)}: the kept axes must have a known size. "
                                 f"Received: axis={self.axis}, input.shape={tuple(input_shape)}")
        if self.built and (len(input_shape) != len(self.input_shape) or any(
                input_shape[d] != self.input_shape[d] for d in keep)):
            raise ValueError(f"{_owner(self)} was built for inputs of shape "
                             f"{tuple(self.input_shape)}. Received: input.shape="
                             f"{tuple(input_shape)}")

    def build(self, input_shape):
        keep = self._keep_axes(input_shape)
        self._reduce_axes = tuple(d for d in range(len(input_shape)) if d not in keep)
        self._broadcast_shape = tuple(input_shape[d] if d in keep else 1
                                      for d in range(len(input_shape)))
        shape = tuple(input_shape[d] for d in keep)
        if self.input_mean is None:
            self.adapt_mean = self.add_weight(shape=shape, initializer="zeros",
                                              trainable=False, name="mean")
            self.adapt_variance = self.add_weight(shape=shape, initializer="ones",
                                                  trainable=False, name="variance")
            self.count = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                         trainable=False, name="count")
        else:
            self._fixed = tuple(self._broadcast(np.asarray(v, np.float64), keep)
                                for v in (self.input_mean, self.input_variance))

    def _broadcast(self, value: np.ndarray, keep) -> np.ndarray:
        """A given mean or variance placed on the kept axes (trailing ones first)."""
        expanded = [1] * len(self._broadcast_shape)
        for i in range(1, value.ndim + 1):
            expanded[keep[-i]] = value.shape[-i]
        return np.broadcast_to(value.reshape(expanded), self._broadcast_shape)

    def adapt(self, data) -> None:
        """Sets ``mean`` and ``variance`` to the statistics of ``data`` over every axis but
        the kept ones, computed on the host.

        Args:
            data: an array, an iterable of batches (arrays, or ``(x, y)`` tuples whose
                first element is used) or a PyDataset.
        """
        owner = _owner(self)
        if self.input_mean is not None:
            raise ValueError(f"{owner}: adapt() cannot change the `mean` and `variance` given "
                             f"to the constructor. Received: mean={self.input_mean!r}")
        batches = iter(_batches(data))
        first = next(batches, None)
        if first is None:
            raise ValueError(f"{owner}: adapt() received no batches. Expected at least one.")
        if not self.built:
            shape = (None,) + tuple(first.shape[1:])
            self._check_input(shape)
            self._maybe_build(shape)
        total = (0.0, 0.0, 0)
        for batch in _chain(first, batches):
            self._check_input((None,) + tuple(batch.shape[1:]))
            x = batch.astype(np.float64)
            count = math.prod(batch.shape[d] for d in self._reduce_axes)
            total = _merge_moments(total, (x.mean(axis=self._reduce_axes),
                                           x.var(axis=self._reduce_axes), count))
        mean, var, _ = total
        self._weight_values()  # every weight has a value before two are replaced
        self.adapt_mean.assign(np.asarray(mean, np.float32).reshape(self.adapt_mean.shape))
        self.adapt_variance.assign(
            np.asarray(var, np.float32).reshape(self.adapt_variance.shape))

    def _statistics(self):
        if self.input_mean is not None:
            mean, var = self._fixed
            return jnp.asarray(mean, self.dtype), jnp.asarray(var, self.dtype)
        return (jnp.reshape(self.adapt_mean.value, self._broadcast_shape).astype(self.dtype),
                jnp.reshape(self.adapt_variance.value, self._broadcast_shape).astype(self.dtype))

    def call(self, inputs):
        x = inputs.astype(self.dtype)
        mean, var = self._statistics()
        std = jnp.maximum(jnp.sqrt(var), epsilon())
        return mean + x * std if self.invert else (x - mean) / std

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": list(self.axis), "invert": self.invert,
                "mean": None if self.input_mean is None else _plain(np.asarray(self.input_mean)),
                "variance": (None if self.input_variance is None
                             else _plain(np.asarray(self.input_variance)))}


def _chain(first, rest):
    yield first
    yield from rest
