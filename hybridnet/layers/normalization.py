"""Normalization layers: BatchNormalization (stateful) and LayerNormalization."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner


def _normalize_axes(layer: Layer, axis, rank: int, input_shape) -> list[int]:
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -rank <= a < rank:
            raise ValueError(f"{_owner(layer)}: axis {a!r} is out of bounds for inputs of rank "
                             f"{rank}. Received: axis={axis!r}, input.shape={tuple(input_shape)}")
        out.append(int(a) % rank)
    if 0 in out:
        raise ValueError(f"{_owner(layer)}: cannot normalize over the batch axis. "
                         f"Received: axis={axis!r}")
    for a in out:
        if input_shape[a] is None:
            raise ValueError(f"{_owner(layer)}: axis {a} of the input must be known. "
                             f"Received: input.shape={tuple(input_shape)}")
    return sorted(set(out))


class BatchNormalization(Layer):
    """Normalizes with batch statistics in training and moving statistics in inference.

    In training (and when the layer is trainable) it returns updated
    ``moving_mean``/``moving_variance``::

        moving = moving * momentum + batch_stat * (1 - momentum)

    Args:
        axis: the feature axis (default -1, channels last).
        momentum: momentum of the moving averages (default 0.99).
        epsilon: added to the variance (default 1e-3).
        center: learn an offset ``beta``.
        scale: learn a scale ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: initializer names.

    Example:
        >>> BatchNormalization()(Input((8, 8, 16)))  # (None, 8, 8, 16)
    """

    supports_masking = True

    def __init__(self, axis=-1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{_owner(self)}: `axis` must be an int. Received: axis={axis!r}")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer

    def _check_input(self, input_shape):
        if isinstance(input_shape, list):
            raise ValueError(f"{_owner(self)} expects a single input. "
                             f"Received: {len(input_shape)} inputs")
        _normalize_axes(self, self.axis, len(input_shape), input_shape)
        if self.built and input_shape[self.axis] != self.input_shape[self.axis]:
            raise ValueError(f"{_owner(self)} expects axis {self.axis} of size "
                             f"{self.input_shape[self.axis]}. "
                             f"Received: input.shape={tuple(input_shape)}")

    def build(self, input_shape):
        dim = (input_shape[self.axis],)
        if self.scale:
            self.gamma = self.add_weight(shape=dim, initializer=self.gamma_initializer,
                                         name="gamma", axes=("norm",))
        if self.center:
            self.beta = self.add_weight(shape=dim, initializer=self.beta_initializer,
                                        name="beta", axes=("norm",))
        self.moving_mean = self.add_weight(shape=dim, initializer=self.moving_mean_initializer,
                                           trainable=False, name="moving_mean", axes=("norm",))
        self.moving_variance = self.add_weight(
            shape=dim, initializer=self.moving_variance_initializer, trainable=False,
            name="moving_variance", axes=("norm",))

    def _moments(self, x, axes, mask):
        if mask is None:
            return jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
        m = jnp.broadcast_to(jnp.expand_dims(mask.astype(bool), -1), x.shape)
        count = jnp.sum(m.astype(x.dtype), axis=axes, keepdims=True)
        eps = 1e-7  # keras.backend.epsilon()
        mean = jnp.sum(jnp.where(m, x, 0), axis=axes, keepdims=True) / (count + eps)
        var = jnp.sum(jnp.square(jnp.where(m, x - mean, 0)), axis=axes,
                      keepdims=True) / (count + eps)
        return jnp.squeeze(mean, axes), jnp.squeeze(var, axes)

    def call(self, inputs, training=False, mask=None):
        x = inputs
        axis = self.axis % x.ndim
        if mask is not None and mask.ndim != x.ndim - 1:
            raise ValueError(f"{_owner(self)}: the mask should have one dimension less than "
                             f"the inputs. Received: mask.shape={mask.shape}, "
                             f"inputs.shape={x.shape}")
        out_dtype = x.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
        moving_mean = self.moving_mean.value.astype(x.dtype)
        moving_var = self.moving_variance.value.astype(x.dtype)
        if training and self.trainable:
            mean, var = self._moments(x, reduce_axes, mask)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_var * self.momentum
                                        + var * (1.0 - self.momentum))
        else:
            mean, var = moving_mean, moving_var
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        inv = lax.rsqrt(var + self.epsilon)
        if self.scale:
            inv = inv * self.gamma.value.astype(x.dtype)
        offset = -mean * inv
        if self.center:
            offset = offset + self.beta.value.astype(x.dtype)
        y = x * inv.reshape(shape) + offset.reshape(shape)
        return y.astype(out_dtype)

    def merge_microbatch_updates(self, old: dict, updates: list) -> dict:
        """One moving-statistics update from those of ``m`` equal microbatches (each
        computed from ``old``), as if the statistics were of the whole batch: the mean of
        the microbatch means, and the variance by the law of total variance (mean of the
        variances plus the variance of the means). Masked inputs weigh the microbatches
        equally. Used by pipelines; ``old`` is unused (the updates carry it)."""
        del old
        if len(updates) == 1 or self.momentum == 1.0:
            return dict(updates[0])
        means = jnp.stack([u["moving_mean"] for u in updates])
        variances = jnp.stack([u["moving_variance"] for u in updates])
        # moving_j = moving * momentum + stat_j * (1 - momentum): the spread of the updated
        # means is (1 - momentum) times that of the microbatch means.
        between = jnp.var(means, axis=0) / (1.0 - self.momentum)
        return {"moving_mean": jnp.mean(means, axis=0),
                "moving_variance": jnp.mean(variances, axis=0) + between}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": self.beta_initializer,
                "gamma_initializer": self.gamma_initializer,
                "moving_mean_initializer": self.moving_mean_initializer,
                "moving_variance_initializer": self.moving_variance_initializer}


class LayerNormalization(Layer):
    """Normalizes each example over ``axis`` (default the last) and applies gamma/beta.

    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``, statistics per example.

    Args:
        axis: int or list of ints to normalize over (not the batch axis).
        epsilon: added to the variance (default 1e-3).
        center: learn an offset ``beta``.
        scale: learn a scale ``gamma``.
        beta_initializer, gamma_initializer: initializer names.

    Example:
        >>> LayerNormalization()(Input((10, 64)))  # (None, 10, 64)
    """

    supports_masking = True

    def __init__(self, axis=-1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 beta_initializer="zeros", gamma_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            axis = [int(a) for a in axis]
        elif isinstance(axis, (int, np.integer)):
            axis = int(axis)
        else:
            raise ValueError(f"{_owner(self)}: `axis` must be an int or a list of ints. "
                             f"Received: axis={axis!r}")
        self.axis = axis
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer

    def _check_input(self, input_shape):
        if isinstance(input_shape, list):
            raise ValueError(f"{_owner(self)} expects a single input. "
                             f"Received: {len(input_shape)} inputs")
        _normalize_axes(self, self.axis, len(input_shape), input_shape)

    def build(self, input_shape):
        self._axes = _normalize_axes(self, self.axis, len(input_shape), input_shape)
        shape = tuple(input_shape[a] for a in self._axes)
        axes = ("norm",) + (None,) * (len(shape) - 1)
        if self.scale:
            self.gamma = self.add_weight(shape=shape, initializer=self.gamma_initializer,
                                         name="gamma", axes=axes)
        if self.center:
            self.beta = self.add_weight(shape=shape, initializer=self.beta_initializer,
                                        name="beta", axes=axes)

    def call(self, inputs):
        x = inputs
        axes = tuple(a % x.ndim for a in (self.axis if isinstance(self.axis, list)
                                          else [self.axis]))
        out_dtype = x.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
        inv = lax.rsqrt(var + self.epsilon)
        if self.scale:
            inv = inv * self.gamma.value.astype(x.dtype).reshape(bshape)
        y = x * inv - mean * inv
        if self.center:
            y = y + self.beta.value.astype(x.dtype).reshape(bshape)
        return y.astype(out_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": self.beta_initializer,
                "gamma_initializer": self.gamma_initializer}
