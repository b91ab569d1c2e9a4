"""Spatial reshaping layers: ZeroPadding2D."""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _check_rank, _normalize_data_format, _owner


def _pair(value, owner: str, which: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
            for v in value)):
        raise ValueError(f"{owner}: the {which} entry of `padding` must be an int or a pair "
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

    def call(self, weights, x):
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
