"""Embedding: integer ids -> dense vectors, with an optional padding mask."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hybridnet.layers.base import Layer
from hybridnet.layers.conv import _owner


class Embedding(Layer):
    """Looks up rows of an ``(input_dim, output_dim)`` table for integer inputs.

    Inputs of any integer (or float) dtype are cast to int32; the output has the
    layer's dtype (float32 by default) and shape ``input.shape + (output_dim,)``.

    Args:
        input_dim: vocabulary size (largest id + 1).
        output_dim: embedding size.
        embeddings_initializer: initializer name; default ``"uniform"``
            (uniform in [-0.05, 0.05]).
        mask_zero: if True, id 0 is padding and the layer outputs the mask
            ``inputs != 0`` for downstream layers (LSTM, Attention, ...).
        input_length: deprecated in Keras 3 and ignored.

    Example:
        >>> ids = Input((20,), dtype="int32")
        >>> Embedding(1000, 64, mask_zero=True)(ids)  # (None, 20, 64)
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform",
                 mask_zero: bool = False, input_length=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{_owner(self)}: `{arg}` must be a positive integer. "
                                 f"Received: {arg}={value!r}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)

    def _check_input(self, input_shape):
        if isinstance(input_shape, list):
            raise ValueError(f"{_owner(self)} expects a single input. "
                             f"Received: {len(input_shape)} inputs")

    def build(self, input_shape):
        self.embeddings = self.add_weight(shape=(self.input_dim, self.output_dim),
                                          initializer=self.embeddings_initializer,
                                          name="embeddings", axes=("vocab", "embed"))

    def call(self, inputs):
        ids = jnp.asarray(inputs)
        if ids.dtype not in (jnp.int32, jnp.int64):
            ids = ids.astype(jnp.int32)
        return jnp.take(self.embeddings.value, ids, axis=0).astype(self.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def compute_output_dtype(self, input_dtype):
        """Float outputs (the layer dtype) whatever the integer input dtype."""
        return self.dtype

    def compute_mask(self, inputs, mask):
        if not self.mask_zero:
            return None
        return jnp.not_equal(inputs, 0)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "embeddings_initializer": self.embeddings_initializer,
                "mask_zero": self.mask_zero}
