"""Regularization layers active in training only: SpatialDropout1D/2D, GaussianNoise and
GaussianDropout. In inference (and at rate or stddev 0) each is the identity."""
from __future__ import annotations

import math

from hybridnet import random
from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _check_rank, _normalize_data_format, _owner
from hybridnet.variables import SeedGenerator


def _fraction(layer: Layer, value, name: str, *, closed: bool) -> float:
    """``value`` in [0, 1] (``closed``) or [0, 1), else a Keras-style error."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0 <= value <= 1 if closed else 0 <= value < 1)
    if not ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{_owner(layer)}: `{name}` must be a float in {interval}. "
                         f"Received: {name}={value!r}")
    return float(value)


class _SpatialDropout(Layer):
    supports_masking = True
    rank = 1
    _what = " (batch, steps, channels)"

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _fraction(self, rate, "rate", closed=False)
        self.seed = seed
        self.seed_generator = SeedGenerator(seed)

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, self.rank + 2, self._what)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        noise_shape = (inputs.shape[0],) + (1,) * self.rank + (inputs.shape[-1],)
        return random.dropout(inputs, self.rate, noise_shape, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class SpatialDropout1D(_SpatialDropout):
    """Dropout of whole channels of a (batch, steps, channels) input: in training each
    channel of each sample is zeroed with probability ``rate`` at every step, the rest
    scaled by ``1 / (1 - rate)``.

    Args:
        rate: fraction of channels to drop, in [0, 1).
        seed: optional int seeding the layer's SeedGenerator.

    Example:
        >>> SpatialDropout1D(0.2)(Input((10, 16)))
    """


class SpatialDropout2D(_SpatialDropout):
    """Dropout of whole feature maps of an NHWC input: in training each channel of each
    sample is zeroed with probability ``rate`` over all positions, the rest scaled by
    ``1 / (1 - rate)``.

    Args:
        rate: fraction of channels to drop, in [0, 1).
        seed: optional int seeding the layer's SeedGenerator.

    Example:
        >>> SpatialDropout2D(0.2)(Input((8, 8, 16)))
    """

    rank = 2
    _what = " (batch, height, width, channels)"

    def __init__(self, rate: float, data_format=None, seed: int | None = None, **kwargs):
        super().__init__(rate, seed=seed, **kwargs)
        self.data_format = _normalize_data_format(self, data_format)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class GaussianNoise(Layer):
    """Adds zero-mean Gaussian noise of standard deviation ``stddev`` in training.

    Args:
        stddev: standard deviation of the noise, in [0, 1] (as Keras).
        seed: optional int seeding the layer's SeedGenerator.

    Example:
        >>> GaussianNoise(0.1)(Input((16,)))
    """

    supports_masking = True

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = _fraction(self, stddev, "stddev", closed=True)
        self.seed = seed
        if self.stddev > 0:
            self.seed_generator = SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.stddev == 0:
            return inputs
        noise = random.normal(inputs.shape, 0.0, self.stddev, dtype=inputs.dtype,
                              seed=self.seed_generator)
        return inputs + noise

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class GaussianDropout(Layer):
    """Multiplies inputs by Gaussian noise of mean 1 and standard deviation
    ``sqrt(rate / (1 - rate))`` in training (the mean is kept).

    Args:
        rate: drop probability of the equivalent Dropout, in [0, 1).
        seed: optional int seeding the layer's SeedGenerator.

    Example:
        >>> GaussianDropout(0.3)(Input((16,)))
    """

    supports_masking = True

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _fraction(self, rate, "rate", closed=False)
        self.seed = seed
        if self.rate > 0:
            self.seed_generator = SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        return inputs * random.normal(inputs.shape, 1.0, stddev, dtype=inputs.dtype,
                                      seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
