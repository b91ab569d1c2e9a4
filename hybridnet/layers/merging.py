"""Merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate) and their
lowercase functional forms, called on a list of tensors."""
from __future__ import annotations

import functools

import jax.numpy as jnp

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner


class _Merge(Layer):
    supports_masking = True

    def _check_input(self, input_shape):
        if not isinstance(input_shape, list) or not input_shape or not all(
                isinstance(s, tuple) for s in input_shape):
            raise ValueError(f"{_owner(self)} should be called on a list of at least 1 input. "
                             f"Received: input_shape={input_shape!r}")
        self.compute_output_shape(input_shape)

    def _broadcast(self, a, b, input_shape):
        if len(a) < len(b):
            a, b = b, a
        lead, a = list(a[:len(a) - len(b)]), a[len(a) - len(b):]
        out = []
        for i, j in zip(a, b):
            if i is None or j is None:
                out.append(None)
            elif i == 1:
                out.append(j)
            elif j == 1 or i == j:
                out.append(i)
            else:
                raise ValueError(f"{_owner(self)}: inputs must have broadcast-compatible "
                                 f"shapes. Received: input_shape={input_shape}")
        return tuple(lead + out)

    def compute_output_shape(self, input_shape):
        return functools.reduce(lambda a, b: self._broadcast(a, b, input_shape),
                                [tuple(s) for s in input_shape])

    def compute_mask(self, inputs, mask):
        """Logical OR of the input masks; None if any input has none (as Keras)."""
        if mask is None:
            return None
        if any(m is None for m in mask):
            return None
        out = mask[0]
        for m in mask[1:]:
            out = jnp.logical_or(out, m)
        return out


class Add(_Merge):
    """Element-wise sum of a list of tensors (broadcasting like Keras).

    Example:
        >>> Add()([Input((4,)), Input((4,))])  # (None, 4)
    """

    def call(self, inputs):
        return functools.reduce(jnp.add, inputs)


class Multiply(_Merge):
    """Element-wise product of a list of tensors.

    Example:
        >>> Multiply()([Input((4,)), Input((4,))])  # (None, 4)
    """

    def call(self, inputs):
        return functools.reduce(jnp.multiply, inputs)


class Average(_Merge):
    """Element-wise mean of a list of tensors.

    Example:
        >>> Average()([Input((4,)), Input((4,))])  # (None, 4)
    """

    def call(self, inputs):
        return functools.reduce(jnp.add, inputs) / len(inputs)


class Concatenate(_Merge):
    """Concatenates a list of tensors along ``axis``.

    Args:
        axis: concatenation axis (default -1).

    Example:
        >>> Concatenate()([Input((4, 3)), Input((4, 5))])  # (None, 4, 8)
    """

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ValueError(f"{_owner(self)} requires inputs of the same rank. "
                             f"Received: input_shape={shapes}")
        if not -rank <= self.axis < rank:
            raise ValueError(f"{_owner(self)}: axis {self.axis} is out of bounds for inputs of "
                             f"rank {rank}. Received: input_shape={shapes}")
        axis = self.axis % rank
        out = []
        for d in range(rank):
            dims = [s[d] for s in shapes]
            if d == axis:
                out.append(None if any(v is None for v in dims) else sum(dims))
                continue
            known = {v for v in dims if v is not None}
            if len(known) > 1:
                raise ValueError(f"{_owner(self)} requires inputs with matching shapes except "
                                 f"for the concatenation axis. Received: input_shape={shapes}")
            out.append(known.pop() if known else None)
        return tuple(out)

    def call(self, inputs):
        return jnp.concatenate(inputs, axis=self.axis)

    def compute_mask(self, inputs, mask):
        """As Keras: unmasked inputs count as all-True; masks are concatenated on
        ``axis`` (broadcast to the input's shape) and reduced with ``any`` over the
        last axis."""
        if mask is None or all(m is None for m in mask):
            return None
        masks = []
        for x, m in zip(inputs, mask):
            if m is None:
                masks.append(jnp.ones(x.shape, bool))
            elif m.ndim < x.ndim:
                masks.append(jnp.broadcast_to(jnp.expand_dims(m.astype(bool), -1), x.shape))
            else:
                masks.append(m.astype(bool))
        return jnp.any(jnp.concatenate(masks, axis=self.axis), axis=-1)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Subtract(_Merge):
    """Element-wise difference of exactly two tensors.

    Example:
        >>> Subtract()([Input((4,)), Input((4,))])  # (None, 4)
    """

    def _check_input(self, input_shape):
        super()._check_input(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"{_owner(self)} should be called on exactly 2 inputs. "
                             f"Received: {len(input_shape)} inputs")

    def call(self, inputs):
        return jnp.subtract(inputs[0], inputs[1])


class Maximum(_Merge):
    """Element-wise maximum of a list of tensors."""

    def call(self, inputs):
        return functools.reduce(jnp.maximum, inputs)


class Minimum(_Merge):
    """Element-wise minimum of a list of tensors."""

    def call(self, inputs):
        return functools.reduce(jnp.minimum, inputs)


def add(inputs, **kwargs):
    """Functional interface to :class:`Add`: ``add([x1, x2])``."""
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    """Functional interface to :class:`Subtract`."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """Functional interface to :class:`Multiply`."""
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    """Functional interface to :class:`Average`."""
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """Functional interface to :class:`Maximum`."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """Functional interface to :class:`Minimum`."""
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    """Functional interface to :class:`Concatenate`: ``concatenate([x1, x2], axis=-1)``."""
    return Concatenate(axis=axis, **kwargs)(inputs)
