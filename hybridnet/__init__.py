"""hybridnet: Keras-style deep learning on JAX with data, tensor and pipeline parallelism.

Keras 3 code runs with the imports changed (``import hybridnet as keras``).

Example:
    >>> from hybridnet import Sequential, Input
    >>> from hybridnet.layers import Dense
    >>> model = Sequential([Input((64,)), Dense(128, activation="relu"), Dense(10)])
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
"""
from hybridnet import (activations, initializers, layers, losses, metrics, ops, optimizers,
                       random, regularizers, saving, strategies, utils)
from hybridnet.layers import Input, Layer
from hybridnet.models import Model, Sequential, load_model
from hybridnet.strategies import Shard
from hybridnet.execution.state import TrainState
from hybridnet.variables import Variable
from hybridnet import applications, callbacks, checkpoint, distributed, ensemble, models

__version__ = "0.1.0"
__all__ = ["Input", "Layer", "Model", "Shard", "Sequential", "TrainState", "Variable",
           "activations", "applications", "callbacks", "checkpoint", "distributed", "ensemble", "initializers", "layers",
           "load_model", "losses", "metrics", "models", "ops", "optimizers", "random",
           "regularizers", "saving", "strategies", "utils"]
