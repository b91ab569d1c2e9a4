"""Sequential: a linear stack of layers, built when its input shape is known."""
from __future__ import annotations

import numpy as np

from hybridnet import utils
from hybridnet.layers.base import Input, InputLayer, KerasTensor, Layer
from hybridnet.models.model import Model


class Sequential(Model):
    """A plain stack of layers, as ``keras.Sequential``.

    Example:
        >>> model = Sequential([Input((8, 8, 1)), layers.Conv2D(16, 3), layers.Flatten(),
        ...                     layers.Dense(10)])
        >>> model.add(layers.Activation("softmax"))
    """

    def __init__(self, layers=None, name: str | None = None, trainable: bool = True):
        super().__init__(name=name or utils.unique_name("sequential"))
        self._stack: list[Layer] = []
        self._input: KerasTensor | None = None
        for layer in layers or []:
            self.add(layer)
        if not trainable:
            self.trainable = False

    def add(self, layer) -> None:
        """Appends a layer (or an ``Input``) and rebuilds the graph if the input is known."""
        if isinstance(layer, KerasTensor) and isinstance(layer.node.layer, InputLayer):
            if self._stack or self._input is not None:
                raise ValueError(f"Sequential '{self.name}': an Input must come first.")
            self._input = layer
            return
        if isinstance(layer, InputLayer):
            self.add(layer.output)
            return
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential '{self.name}': add() expects a Layer. "
                             f"Received: {layer!r}")
        if any(layer is other or layer.name == other.name for other in self._stack):
            raise ValueError(f"Sequential '{self.name}': all layers must have unique names; "
                             f"a layer cannot be added twice. Received: layer '{layer.name}'")
        if layer._input_shape_arg is not None and self._input is None and not self._stack:
            self._input = Input(layer._input_shape_arg, batch_size=layer._batch_size_arg)
        self._stack.append(layer)
        self._reset_runner()
        if self._input is not None:
            self._rebuild()

    def pop(self) -> Layer:
        layer = self._stack.pop()
        self._reset_runner()
        self.graph = None
        if self._input is not None and self._stack:
            self._rebuild()
        return layer

    def _rebuild(self):
        x = self._input
        for layer in self._stack:
            x = layer(x)
        self._init_graph(self._input, x)

    def build(self, input_shape=None) -> None:
        """Builds the graph for ``input_shape`` (batch dimension first)."""
        if self._input is None:
            if input_shape is None:
                raise ValueError(f"Sequential '{self.name}': build() needs an input_shape.")
            self._input = Input(tuple(input_shape)[1:])
        if self._stack:
            self._rebuild()

    def _build_from_data(self, xs):
        if len(xs) != 1:
            raise ValueError(f"Sequential '{self.name}' takes one input. Received: {len(xs)}")
        array = xs[0]
        dtype = "int32" if np.issubdtype(np.dtype(array.dtype), np.integer) else "float32"
        self._input = Input(tuple(array.shape[1:]), dtype=dtype)
        self._rebuild()

    @property
    def layers(self):
        return list(self._stack)

    def get_config(self) -> dict:
        config = {"name": self.name, "layers": [
            {"class_name": type(layer).__name__, "config": layer.get_config()}
            for layer in self._stack]}
        if self._input is not None:
            config["build_input_shape"] = list(self._input.shape)
            config["input_dtype"] = self._input.dtype.name
        return config

    @classmethod
    def from_config(cls, config: dict, get_class=None) -> "Sequential":
        from hybridnet.layers import get_layer_class
        get_class = get_class or get_layer_class
        model = cls(name=config.get("name"))
        if config.get("build_input_shape") is not None:
            model.add(Input(tuple(config["build_input_shape"])[1:],
                            dtype=config.get("input_dtype", "float32")))
        for entry in config["layers"]:
            model.add(get_class(entry["class_name"]).from_config(dict(entry["config"])))
        return model
