"""Keras-named layers. Every layer is configuration plus pure ``build``/``call``."""
from hybridnet.layers.base import Input, InputLayer, KerasTensor, Layer, Node, WeightSpec, init_weights
from hybridnet.layers.core import Activation, Dense, Dropout, Flatten, Reshape
from hybridnet.layers.attention import Attention
from hybridnet.layers.conv import Conv2D
from hybridnet.layers.embedding import Embedding
from hybridnet.layers.merging import Add, Average, Concatenate, Multiply
from hybridnet.layers.normalization import BatchNormalization, LayerNormalization
from hybridnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                                      MaxPooling2D)
from hybridnet.layers.recurrent import LSTM, Bidirectional
from hybridnet.layers.reshaping import ZeroPadding2D

_REGISTRY: dict[str, type] = {}


def register_layer(cls: type) -> type:
    """Registers a custom layer class so saved models that use it can be loaded.

    Example:
        >>> @register_layer
        ... class Scale(Layer): ...
    """
    _REGISTRY[cls.__name__] = cls
    return cls


def get_layer_class(class_name: str) -> type:
    """A built-in layer class by name, else a custom one registered with
    ``hybridnet.saving.register_serializable`` or given in an active
    ``custom_object_scope`` (how ``load_model(custom_objects=...)`` finds them)."""
    if class_name not in _REGISTRY:
        from hybridnet.saving.registry import find_class
        custom = find_class(class_name, Layer)
        if custom is not None:
            return custom
        raise ValueError(f"Unknown layer class '{class_name}'. Register custom layers with "
                         f"hybridnet.layers.register_layer. Known: {sorted(_REGISTRY)}")
    return _REGISTRY[class_name]


for _cls in [InputLayer, Activation, Dense, Dropout, Flatten, Reshape,
             Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
             ZeroPadding2D, BatchNormalization, LayerNormalization, Embedding, LSTM,
             Bidirectional, Add, Concatenate, Multiply, Average, Attention]:
    register_layer(_cls)
