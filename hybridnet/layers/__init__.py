"""Keras-named layers, all written to Keras 3's layer contract (``build`` + ``add_weight``,
``call(self, inputs)``)."""
from hybridnet.layers.base import Input, InputLayer, KerasTensor, Layer, Node, WeightSpec, init_weights
from hybridnet.layers.core import Activation, Dense, Dropout, Flatten, Lambda, Reshape
from hybridnet.layers.attention import Attention, MultiHeadAttention
from hybridnet.layers.conv import Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
from hybridnet.layers.activation_layers import LeakyReLU, ReLU, Softmax
from hybridnet.layers.core import Masking
from hybridnet.layers.preprocessing import Normalization, Rescaling
from hybridnet.layers.regularization import (GaussianDropout, GaussianNoise, SpatialDropout1D,
                                             SpatialDropout2D)
from hybridnet.layers.embedding import Embedding
from hybridnet.layers.merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply,
                                      Subtract, add, average, concatenate, maximum, minimum,
                                      multiply, subtract)
from hybridnet.layers.normalization import BatchNormalization, LayerNormalization
from hybridnet.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                                      MaxPooling2D)
from hybridnet.layers.pooling import (AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D,
                                      MaxPooling1D)
from hybridnet.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from hybridnet.layers.reshaping import ZeroPadding2D
from hybridnet.layers.reshaping import Cropping2D, Permute, RepeatVector, UpSampling2D
from hybridnet.layers.wrappers import TimeDistributed

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
             Bidirectional, Add, Concatenate, Multiply, Average, Subtract, Maximum, Minimum,
             Attention, Lambda, GRU, SimpleRNN, TimeDistributed, MultiHeadAttention,
             Conv1D, Conv2DTranspose, SeparableConv2D, DepthwiseConv2D, UpSampling2D, Cropping2D,
             RepeatVector, Permute, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D,
             GlobalMaxPooling1D, Masking, ReLU, LeakyReLU, Softmax, Rescaling, Normalization,
             SpatialDropout1D, SpatialDropout2D, GaussianNoise, GaussianDropout]:
    register_layer(_cls)
