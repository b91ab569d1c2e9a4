"""Layer wrappers: TimeDistributed."""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner


def serialize_layer(layer: Layer) -> dict:
    """``{"class_name", "config"}`` of a wrapped layer."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize_layer(config: dict) -> Layer:
    """The layer :func:`serialize_layer` describes (built-in or registered classes)."""
    from hybridnet.layers import get_layer_class  # late import: the registry imports us
    return get_layer_class(config["class_name"]).from_config(copy.deepcopy(config["config"]))


def _merge_time(tree, batch: int, steps: int):
    return jax.tree_util.tree_map(lambda a: jnp.reshape(a, (batch * steps,) + a.shape[2:]),
                                  tree)


def _split_time(tree, batch: int, steps: int):
    return jax.tree_util.tree_map(lambda a: jnp.reshape(a, (batch, steps) + a.shape[1:]),
                                  tree)


class TimeDistributed(Layer):
    """Applies a layer to every temporal slice of its input, as
    ``keras.layers.TimeDistributed``.

    The input is ``(batch, time, ...)``; the wrapped layer sees ``(batch * time, ...)``
    (one call, the same weights for every step) and its output is split back into
    ``(batch, time, ...)``. The wrapped layer is a tracked sublayer: its weights are
    this layer's, at ``layer/<weight>``. A ``(batch, time)`` mask is passed to the
    wrapped layer (as ``(batch * time,)``) if its ``call`` takes one, and passed
    through to the output.

    Args:
        layer: the layer to apply at each step (e.g. ``Dense`` or ``Conv2D``).

    Call arguments:
        inputs: ``(batch, time, ...)``.
        training: passed to the wrapped layer.
        mask: optional ``(batch, time)`` bool.

    Example:
        >>> x = Input((10, 32, 32, 3))
        >>> TimeDistributed(Conv2D(8, 3))(x)  # (None, 10, 30, 30, 8)
    """

    supports_masking = True

    def __init__(self, layer: Layer, **kwargs):
        if isinstance(layer, dict):
            layer = deserialize_layer(layer)
        super().__init__(**kwargs)
        if not isinstance(layer, Layer):
            raise ValueError(f"{_owner(self)}: `layer` must be a hybridnet layer instance. "
                             f"Received: layer={layer!r}")
        self.layer = layer

    @staticmethod
    def _child_shape(input_shape):
        return (input_shape[0],) + tuple(input_shape[2:])

    def _check_input(self, input_shape):
        if isinstance(input_shape, list) or len(input_shape) < 3:
            raise ValueError(f"{_owner(self)} expects an input of rank >= 3 (batch, time, "
                             f"...). Received: input.shape={input_shape!r}")
        self.layer._check_input(self._child_shape(input_shape))

    def build(self, input_shape):
        self.layer._maybe_build(self._child_shape(input_shape))

    def call(self, inputs, training=False, mask=None):
        batch, steps = inputs.shape[0], inputs.shape[1]
        kwargs = {"training": training}  # dropped if the wrapped call takes none
        if mask is not None:
            if tuple(mask.shape[:2]) != (batch, steps):
                raise ValueError(f"{_owner(self)}: the mask must start with the input's "
                                 f"(batch, time) dimensions ({batch}, {steps}). Received: "
                                 f"mask.shape={tuple(mask.shape)}")
            kwargs["mask"] = _merge_time(mask, batch, steps)
        outputs = self.layer(_merge_time(inputs, batch, steps), **kwargs)
        return _split_time(outputs, batch, steps)

    def compute_output_shape(self, input_shape):
        child = self.layer.compute_output_shape(self._child_shape(input_shape))
        return (child[0], input_shape[1]) + tuple(child[1:])

    def get_config(self):
        return {**super().get_config(), "layer": serialize_layer(self.layer)}

    @classmethod
    def from_config(cls, config: dict) -> "TimeDistributed":
        config = copy.deepcopy(config)
        config["layer"] = deserialize_layer(config["layer"])
        return cls(**config)
