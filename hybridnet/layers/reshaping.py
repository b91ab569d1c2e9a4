"""Reshaping layers: ZeroPadding2D, Cropping2D, UpSampling2D, RepeatVector, Permute."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import utils
from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _check_rank, _normalize_data_format, _owner


def _pair(value, owner: str, which: str, arg: str = "padding") -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
            for v in value)):
        raise ValueError(f"{owner}: the {which} entry of `{arg}` must be an int or a pair "
                         f"of non-negative ints. Received: {value!r}")
    return int(value[0]), int(value[1])


class ZeroPadding2D(Layer):
    """Pads an NHWC image with zero rows (top/bottom) and columns (left/right).

    Args:
        padding: ``int`` (same on all sides), ``(h, w)`` (symmetric) or
            ``((top, bottom), (left, right))``. Default ``(1, 1)``.

    Example:
        >>> ZeroPadding2D(((1, 2), (3, 4)))(Input((5, 5, 3)))  # (None, 8, 12, 3)
    """

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.data_format = _normalize_data_format(self, data_format)
        if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
            if padding < 0:
                raise ValueError(f"{owner}: `padding` must be non-negative. "
                                 f"Received: padding={padding!r}")
            padding = ((int(padding),) * 2,) * 2
        elif isinstance(padding, (tuple, list)) and len(padding) == 2:
            padding = (_pair(padding[0], owner, "1st"), _pair(padding[1], owner, "2nd"))
        else:
            raise ValueError(
                f"{owner}: `padding` should be an int, a tuple of 2 ints (symmetric_height_pad, "
                "symmetric_width_pad) or a tuple of 2 tuples of 2 ints ((top_pad, bottom_pad), "
                f"(left_pad, right_pad)). Received: padding={padding!r}")
        self.padding = padding

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")

    def call(self, x):
        return jnp.pad(x, ((0, 0), self.padding[0], self.padding[1], (0, 0)))

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for i in range(2):
            if out[1 + i] is not None:
                out[1 + i] += sum(self.padding[i])
        return tuple(out)

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding],
                "data_format": self.data_format}


class Cropping2D(Layer):
    """Crops rows (top/bottom) and columns (left/right) of an NHWC image.

    Args:
        cropping: ``int`` (same on all sides), ``(h, w)`` (symmetric) or
            ``((top, bottom), (left, right))``. Default no cropping.

    Example:
        >>> Cropping2D(((1, 2), (0, 1)))(Input((8, 8, 3)))  # (None, 5, 7, 3)
    """

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.data_format = _normalize_data_format(self, data_format)
        if isinstance(cropping, (int, np.integer)) and not isinstance(cropping, bool):
            if cropping < 0:
                raise ValueError(f"{owner}: `cropping` cannot be negative. "
                                 f"Received: cropping={cropping!r}")
            cropping = ((int(cropping),) * 2,) * 2
        elif isinstance(cropping, (tuple, list)) and len(cropping) == 2:
            cropping = (_pair(cropping[0], owner, "1st", "cropping"),
                        _pair(cropping[1], owner, "2nd", "cropping"))
        else:
            raise ValueError(
                f"{owner}: `cropping` should be an int, a tuple of 2 ints (symmetric_height_crop, "
                "symmetric_width_crop) or a tuple of 2 tuples of 2 ints ((top_crop, bottom_crop), "
                f"(left_crop, right_crop)). Received: cropping={cropping!r}")
        self.cropping = cropping

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")
        self.compute_output_shape(input_shape)

    def call(self, x):
        (top, bottom), (left, right) = self.cropping
        return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for i in range(2):
            n = input_shape[1 + i]
            if n is not None and sum(self.cropping[i]) >= n:
                raise ValueError(f"{_owner(self)}: values in `cropping` should be smaller than "
                                 f"the corresponding spatial dimension of the input. Received: "
                                 f"input.shape={tuple(input_shape)}, cropping={self.cropping}")
            out[1 + i] = None if n is None else n - sum(self.cropping[i])
        return tuple(out)

    def get_config(self):
        return {**super().get_config(), "cropping": [list(c) for c in self.cropping],
                "data_format": self.data_format}


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


class UpSampling2D(Layer):
    """Repeats (``"nearest"``) or interpolates the rows and columns of an NHWC image by
    ``size``.

    Args:
        size: int or (sh, sw) upsampling factors.
        interpolation: ``"nearest"``, ``"bilinear"``, ``"bicubic"``, ``"lanczos3"`` or
            ``"lanczos5"`` (``jax.image.resize`` without antialiasing, as Keras on JAX).

    Example:
        >>> UpSampling2D(2, interpolation="bilinear")(Input((4, 4, 3)))  # (None, 8, 8, 3)
    """

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.size = utils.normalize_tuple(size, 2, "size", owner)
        self.data_format = _normalize_data_format(self, data_format)
        value = interpolation.lower() if isinstance(interpolation, str) else interpolation
        if value not in _INTERPOLATIONS:
            raise ValueError(f"{owner}: `interpolation` must be one of {_INTERPOLATIONS}. "
                             f"Received: interpolation={interpolation!r}")
        self.interpolation = value

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")

    def call(self, x):
        if self.interpolation == "nearest":
            return jnp.repeat(jnp.repeat(x, self.size[0], axis=1), self.size[1], axis=2)
        b, h, w, c = x.shape
        return jax.image.resize(x, (b, h * self.size[0], w * self.size[1], c),
                                method=self.interpolation, antialias=False)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], c)

    def get_config(self):
        return {**super().get_config(), "size": list(self.size),
                "data_format": self.data_format, "interpolation": self.interpolation}


class RepeatVector(Layer):
    """Repeats a (batch, features) input ``n`` times: -> (batch, n, features).

    Args:
        n: the number of repetitions.

    Example:
        >>> RepeatVector(3)(Input((8,)))  # (None, 3, 8)
    """

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"{_owner(self)}: `n` must be a positive int. Received: n={n!r}")
        self.n = int(n)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 2, " (batch, features)")

    def call(self, x):
        return jnp.repeat(x[:, None, :], self.n, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, input_shape[1])

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class Permute(Layer):
    """Permutes the non-batch dimensions: ``dims`` lists them (numbered from 1) in their
    new order.

    Args:
        dims: a permutation of ``1..rank-1``, e.g. ``(2, 1)`` swaps the two axes of a
            (batch, steps, features) input.

    Example:
        >>> Permute((2, 1))(Input((10, 64)))  # (None, 64, 10)
    """

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        dims = tuple(dims)
        if sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"{_owner(self)}: the set of indices in `dims` must be "
                             f"consecutive and start from 1. Received: dims={dims}")
        self.dims = tuple(int(d) for d in dims)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, len(self.dims) + 1, "")

    def call(self, x):
        return jnp.transpose(x, (0,) + self.dims)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}
