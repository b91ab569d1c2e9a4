"""hybridnet: Keras-style deep learning on JAX with data, tensor and pipeline parallelism.

Example:
    >>> from hybridnet import Sequential, Input
    >>> from hybridnet.layers import Dense
    >>> model = Sequential([Input((64,)), Dense(128, activation="relu"), Dense(10)])
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
"""
from hybridnet import activations, initializers, layers, losses, metrics, ops, optimizers, strategies, utils
from hybridnet.layers import Input
from hybridnet.models import Model, Sequential, load_model
from hybridnet.strategies import Shard
from hybridnet.execution.state import TrainState
from hybridnet import callbacks, distributed

__version__ = "0.1.0"
__all__ = ["Input", "Model", "Shard", "Sequential", "TrainState", "load_model", "activations", "callbacks",
           "initializers", "layers", "losses", "metrics", "ops", "optimizers", "strategies", "utils"]
