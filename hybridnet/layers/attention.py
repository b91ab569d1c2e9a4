"""Attention layers: dot-product (Luong-style) ``Attention`` and ``MultiHeadAttention``,
as in Keras."""
from __future__ import annotations

import math
import string

import jax
import jax.numpy as jnp

from hybridnet import random, regularizers
from hybridnet.layers.base import Layer
from hybridnet.variables import SeedGenerator
from hybridnet.layers.conv import _owner


class Attention(Layer):
    """Dot-product attention over ``[query, value]`` or ``[query, value, key]``.

    ``scores = query @ key^T`` (``"dot"``) or
    ``concat_score_weight * sum(tanh(query + key))`` (``"concat"``), optionally
    scaled by a learned scalar; masked positions get ``-1e9``; the softmax over
    the value axis weights ``value``. Output ``(B, Tq, dim_v)``.

    Args:
        use_scale: learn a scalar ``scale`` (initialised to 1) for the scores.
        score_mode: ``"dot"`` or ``"concat"``.
        dropout: fraction of the attention weights dropped in training.
        seed: optional int seeding the dropout's SeedGenerator.

    Call arguments:
        inputs: ``[query (B, Tq, d), value (B, Tv, d)]`` or ``[query, value, key (B, Tv, d)]``.
        mask: ``[query_mask (B, Tq), value_mask (B, Tv)]`` (either may be None):
            value positions where the mask is False get no weight; outputs at query
            positions where the mask is False are zero.
        return_attention_scores: also return the ``(B, Tq, Tv)`` weights (after
            masking and softmax). Because it changes the number of outputs,
            :meth:`__call__` records it in ``self._return_attention_scores`` before
            the symbolic call computes output shapes: a layer object called
            symbolically more than once should use the same value each time.
        use_causal_mask: forbid query ``i`` from attending to value ``j > i``.
        training: dropout of the attention weights.

    Example:
        >>> q, v = Input((5, 16)), Input((7, 16))
        >>> out, scores = Attention()([q, v], return_attention_scores=True)
        >>> # out: (None, 5, 16), scores: (None, 5, 7)
    """

    supports_masking = True

    def __init__(self, use_scale: bool = False, score_mode: str = "dot", dropout: float = 0.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{_owner(self)}: invalid value for argument score_mode; expected "
                             f"one of {{'dot', 'concat'}}. Received: score_mode={score_mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{_owner(self)}: `dropout` must be in [0, 1). "
                             f"Received: dropout={dropout!r}")
        self.use_scale = bool(use_scale)
        self.score_mode = score_mode
        self.dropout = float(dropout)
        self.seed = seed
        self.seed_generator = SeedGenerator(seed)
        self._return_attention_scores = False

    def __call__(self, *args, **kwargs):
        """Records ``return_attention_scores`` (which decides the number of outputs)
        for :meth:`compute_output_shape`, then calls :meth:`Layer.__call__`."""
        self._return_attention_scores = bool(kwargs.get("return_attention_scores", False))
        return super().__call__(*args, **kwargs)

    def _check_input(self, input_shape):
        if not isinstance(input_shape, list) or not 2 <= len(input_shape) <= 3:
            raise ValueError(
                f"{_owner(self)} must be called on a list of inputs, namely [query, value] or "
                f"[query, value, key]. Received: input_shape={input_shape!r}")
        q, v = input_shape[0], input_shape[1]
        k = input_shape[2] if len(input_shape) > 2 else v
        for arg, s in (("query", q), ("value", v), ("key", k)):
            if len(s) < 3:
                raise ValueError(f"{_owner(self)} expects `{arg}` of rank >= 3 (batch, steps, "
                                 f"dim). Received: {arg}.shape={tuple(s)}")
        if q[-1] is not None and k[-1] is not None and q[-1] != k[-1]:
            raise ValueError(f"{_owner(self)}: query and key must have the same last "
                             f"dimension. Received: query.shape={tuple(q)}, key.shape={tuple(k)}")
        if v[-2] is not None and k[-2] is not None and v[-2] != k[-2]:
            raise ValueError(f"{_owner(self)}: value and key must have the same number of "
                             f"steps. Received: value.shape={tuple(v)}, key.shape={tuple(k)}")

    def build(self, input_shape):
        if self.use_scale:
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        if self.score_mode == "concat":
            self.concat_score_weight = self.add_weight(shape=(), initializer="ones",
                                                       name="concat_score_weight")

    def _scores(self, q, k):
        scale = self.scale.value if self.use_scale else None
        if self.score_mode == "dot":
            scores = jnp.matmul(q, jnp.swapaxes(k, -2, -1))
            return scores if scale is None else scores * scale
        s = jnp.expand_dims(q, -2) + jnp.expand_dims(k, -3)  # (B, Tq, Tv, d)
        if scale is not None:
            s = scale * s
        return self.concat_score_weight.value * jnp.sum(jnp.tanh(s), axis=-1)

    def call(self, inputs, mask=None, training=False, return_attention_scores=False,
             use_causal_mask=False):
        q, v = inputs[0], inputs[1]
        k = inputs[2] if len(inputs) > 2 else v
        q_mask = mask[0] if mask else None
        v_mask = mask[1] if mask else None
        scores = self._scores(q, k)
        scores_mask = None if v_mask is None else jnp.expand_dims(v_mask.astype(bool), -2)
        if use_causal_mask:
            tq, tv = scores.shape[-2], scores.shape[-1]
            causal = (jnp.arange(tq)[:, None] >= jnp.arange(tv)[None, :])[None]
            scores_mask = causal if scores_mask is None else jnp.logical_and(scores_mask, causal)
        if scores_mask is not None:
            big = 65504.0 if scores.dtype == jnp.float16 else 1.0e9
            scores = jnp.where(scores_mask, scores, scores - big)
        attn = jax.nn.softmax(scores, axis=-1)
        if training and self.dropout > 0:
            attn = random.dropout(attn, self.dropout, seed=self.seed_generator)
        out = jnp.matmul(attn, v)
        if q_mask is not None:
            out = jnp.where(jnp.expand_dims(q_mask.astype(bool), -1), out, 0)
        if return_attention_scores:
            return [out, attn]
        return out

    def compute_output_shape(self, input_shape):
        q, v = tuple(input_shape[0]), tuple(input_shape[1])
        k = tuple(input_shape[2]) if len(input_shape) > 2 else v
        out = q[:-1] + (v[-1],)
        if self._return_attention_scores:
            return [out, q[:-1] + (k[-2],)]
        return out

    def compute_mask(self, inputs, mask):
        """The query mask (Keras); ``[query_mask, None]`` when scores are returned."""
        q_mask = None if not mask or mask[0] is None else mask[0]
        if self._return_attention_scores:
            return [q_mask, None]
        return q_mask

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale,
                "score_mode": self.score_mode, "dropout": self.dropout, "seed": self.seed}


_VARIANCE_SCALING = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                     "lecun_uniform", "lecun_normal")


def _projection_initializer(name, in_axes: tuple, out_axes: tuple):
    """A variance-scaling initializer whose fans count ``in_axes`` / ``out_axes`` of the
    kernel, as Keras's EinsumDense does; other initializers are used as given."""
    if isinstance(name, str) and name in _VARIANCE_SCALING:
        return getattr(jax.nn.initializers, name)(in_axis=in_axes, out_axis=out_axes)
    return name


class _Projection(Layer):
    """The einsum projection inside MultiHeadAttention (Keras builds an ``EinsumDense``):
    contracts the last ``contract`` input dimensions with a kernel
    ``input_shape[-contract:] + output_shape`` and adds a bias ``output_shape``."""

    def __init__(self, output_shape: tuple, contract: int, *, use_bias: bool,
                 kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
                 kernel_axes: tuple, bias_axes: tuple, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.projection_shape = tuple(output_shape)
        self.contract = contract
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.kernel_axes = kernel_axes
        self.bias_axes = bias_axes
        self.activation = activation

    def build(self, input_shape):
        n_in, n_out = self.contract, len(self.projection_shape)
        init = _projection_initializer(self.kernel_initializer, tuple(range(n_in)),
                                       tuple(range(n_in, n_in + n_out)))
        self.kernel = self.add_weight(
            shape=tuple(input_shape[-n_in:]) + self.projection_shape, initializer=init,
            regularizer=self.kernel_regularizer, name="kernel", axes=self.kernel_axes)
        if self.use_bias:
            self.bias = self.add_weight(shape=self.projection_shape,
                                        initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias",
                                        axes=self.bias_axes)

    def call(self, inputs):
        y = jnp.tensordot(inputs, self.kernel.value, axes=self.contract)
        if self.use_bias:
            y = y + self.bias.value
        return y if self.activation is None else self.activation(y)


def _letters(indices) -> str:
    return "".join(string.ascii_lowercase[i] for i in indices)


def attention_equations(rank: int, attention_axes: tuple) -> tuple[str, str]:
    """Keras's einsum equations for projected ``(batch, ..., heads, dim)`` tensors of
    ``rank``: ``key, query -> scores (batch dims, heads, query axes, key axes)`` and
    ``scores, value -> output``.

    Example:
        >>> attention_equations(4, (1,))
        ('aecd,abcd->acbe', 'acbe,aecd->abcd')
    """
    target = _letters(range(rank))
    batch_dims = [i for i in range(rank) if i not in attention_axes and i != rank - 1]
    source, offset = "", rank
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += _letters([offset])
            offset += 1
    product = ("".join(target[i] for i in batch_dims)
               + "".join(target[i] for i in attention_axes)
               + "".join(source[i] for i in attention_axes))
    return f"{source},{target}->{product}", f"{product},{source}->{target}"


def _masked_softmax(scores, mask, axes: tuple, zero_masked: bool):
    """Softmax over ``axes`` where False entries of ``mask`` get no weight; with
    ``zero_masked`` a fully masked row is all zeros instead of uniform."""
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.asarray(-1e9 if scores.dtype != jnp.float16
                                                     else -3e4, scores.dtype))
    if len(axes) == 1:
        probs = jax.nn.softmax(scores, axis=axes[0])
    else:
        probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=axes, keepdims=True))
    if mask is not None and zero_masked:
        probs = jnp.where(mask, probs, 0.0).astype(probs.dtype)
    return probs


class MultiHeadAttention(Layer):
    """Multi-head attention (Vaswani et al. 2017), as ``keras.layers.MultiHeadAttention``.

    ``query``, ``key`` and ``value`` are projected to ``num_heads`` heads by the
    sublayers ``query``, ``key`` and ``value`` (kernel ``(dim, num_heads, key_dim)``,
    bias ``(num_heads, key_dim)``), attention runs per head over ``attention_axes``,
    and ``attention_output`` (kernel ``(num_heads, value_dim, dim)``) projects back.
    Weights are created in Keras's order (query, key, [gate], value,
    attention_output), so ``set_weights(keras_layer.get_weights())`` works. Their
    logical axes put heads on ``"heads"``, which ``ModelParallel`` shards.

    Masks: the query's mask (``query_mask``, or the mask a model passes) and the
    masks of ``value`` and ``key`` (``value_mask``, ``key_mask``; taken from the
    query's mask when ``value``/``key`` is the query tensor itself) are combined with
    ``attention_mask`` and the causal mask into one ``(B, T, S)`` mask, as Keras. A
    query position with nothing to attend to gets zero weights where Keras' explicit
    path does (``dropout > 0``, ``return_attention_scores``, inputs of rank > 3) and
    uniform weights otherwise (Keras' fused path), so outputs equal Keras' everywhere.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head for query and key.
        value_dim: size of each head for value (default ``key_dim``).
        dropout: fraction of attention weights dropped in training.
        use_bias: add biases in the projections.
        output_shape: trailing output dimensions (default: the query's last dimension).
        attention_axes: axes attention runs over (default: all but batch, heads, features).
        sliding_window: optional int; position ``i`` attends only to ``|i - j| < window``.
        flash_attention: accepted for Keras compatibility; the computation is the
            same (plain XLA). True refuses dropout and returned scores, as Keras.
        kernel_initializer, bias_initializer: names (glorot_uniform, zeros).
        kernel_regularizer, bias_regularizer: optional regularizers of every projection's
            weights (added to the training loss).
        use_gate: multiply the attention output by a sigmoid gate projected from the query.
        seed: optional int seeding the dropout.

    Call arguments:
        query: ``(B, T, dim)``; value: ``(B, S, dim_v)``;
        key: ``(B, S, dim_k)`` (default: ``value``).
        query_mask, value_mask, key_mask: optional ``(B, T)`` / ``(B, S)`` bool.
        attention_mask: optional ``(B, T, S)`` bool, True where attention is allowed.
        return_attention_scores: also return the ``(B, num_heads, T, S)`` weights.
            Because it changes the number of outputs, :meth:`__call__` records it for
            :meth:`compute_mask`: a layer object called symbolically more than once
            should use the same value each time.
        training: dropout of the attention weights.
        use_causal_mask: forbid query ``i`` from attending to key ``j > i``.
        mask: the query's mask as a model passes it (used when ``query_mask`` is None).

    Example:
        >>> x = Input((8, 16))
        >>> y = MultiHeadAttention(num_heads=4, key_dim=8)(x, x)  # (None, 8, 16)
    """

    supports_masking = True

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, output_shape=None,
                 attention_axes=None, sliding_window: int | None = None,
                 flash_attention: bool | None = None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 use_gate: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        for arg, value in (("num_heads", num_heads), ("key_dim", key_dim),
                           ("value_dim", value_dim), ("sliding_window", sliding_window)):
            if (value is not None or arg in ("num_heads", "key_dim")) and (
                    not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{owner}: `{arg}` must be a positive int. "
                                 f"Received: {arg}={value!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: `dropout` must be in [0, 1). Received: dropout={dropout!r}")
        if flash_attention and dropout > 0:
            raise ValueError(f"{owner}: dropout is not supported with flash attention. "
                             f"Received: dropout={dropout!r}, flash_attention=True")
        if isinstance(output_shape, int):
            output_shape = (output_shape,)
        if isinstance(attention_axes, int):
            attention_axes = (attention_axes,)
        elif attention_axes is not None and not isinstance(attention_axes, (list, tuple)):
            raise ValueError(f"{owner}: `attention_axes` must be an int, list, or tuple. "
                             f"Received: attention_axes={attention_axes!r}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self.output_shape_arg = tuple(output_shape) if output_shape else None
        self.attention_axes = tuple(attention_axes) if attention_axes is not None else None
        self.sliding_window = sliding_window
        self.flash_attention = flash_attention
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.use_gate = bool(use_gate)
        self.seed = seed
        self.seed_generator = SeedGenerator(seed)
        self._return_attention_scores = False

    def __call__(self, *args, **kwargs):
        """Takes ``query``, ``value`` and ``key`` positionally or by name (so build sees
        every shape) and records ``return_attention_scores`` for :meth:`compute_mask`."""
        args = list(args)
        for position, name in enumerate(("query", "value", "key")):
            if kwargs.get(name) is not None:
                if len(args) != position:
                    raise TypeError(f"{_owner(self)}: `{name}` must be input number "
                                    f"{position + 1} (query, value, key). Received: "
                                    f"{len(args)} inputs before {name}=")
                args.append(kwargs.pop(name))
            kwargs.pop(name, None)
        if len(args) < 2:
            raise TypeError(f"{_owner(self)} takes `query` and `value`. Received: "
                            f"{len(args)} positional inputs")
        self._return_attention_scores = bool(kwargs.get("return_attention_scores", False))
        return super().__call__(*args, **kwargs)

    def _check_input(self, input_shape):
        if isinstance(input_shape, list) or len(input_shape) < 3:
            raise ValueError(f"{_owner(self)} expects `query` of rank >= 3 (batch, steps, "
                             f"dim). Received: query.shape={input_shape!r}")

    def _check_shapes(self, query_shape, value_shape, key_shape):
        owner = _owner(self)
        if len(value_shape) != len(query_shape) or len(key_shape) != len(query_shape):
            raise ValueError(f"{owner}: `query`, `value` and `key` must have the same rank. "
                             f"Received: query.shape={tuple(query_shape)}, "
                             f"value.shape={tuple(value_shape)}, key.shape={tuple(key_shape)}")
        if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
            raise ValueError(f"{owner}: all dimensions of `value` and `key`, except the last "
                             f"one, must be equal. Received: value.shape={tuple(value_shape)} "
                             f"and key.shape={tuple(key_shape)}")

    def _projection(self, name, output_shape, contract, kernel_axes, bias_axes,
                    activation=None):
        return _Projection(output_shape, contract, use_bias=self.use_bias,
                           kernel_initializer=self.kernel_initializer,
                           bias_initializer=self.bias_initializer,
                           kernel_regularizer=self.kernel_regularizer,
                           bias_regularizer=self.bias_regularizer, kernel_axes=kernel_axes,
                           bias_axes=bias_axes, activation=activation, name=name,
                           dtype=self.dtype)

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        self._check_shapes(query_shape, value_shape, key_shape)
        heads = ("embed", "heads", None)
        self.query_dense = self._projection("query", (self.num_heads, self.key_dim), 1,
                                            heads, ("heads", None))
        self.key_dense = self._projection("key", (self.num_heads, self.key_dim), 1,
                                          heads, ("heads", None))
        if self.use_gate:
            self.gate_dense = self._projection("gate", (self.num_heads, self.value_dim), 1,
                                               heads, ("heads", None), jax.nn.sigmoid)
        self.value_dense = self._projection("value", (self.num_heads, self.value_dim), 1,
                                            heads, ("heads", None))
        out = self.output_shape_arg or (query_shape[-1],)
        rest = (None,) * (len(out) - 1)
        self.output_dense = self._projection("attention_output", out, 2,
                                             ("heads", None, "embed") + rest,
                                             ("embed",) + rest)
        self.query_dense._maybe_build(tuple(query_shape))
        self.key_dense._maybe_build(tuple(key_shape))
        if self.use_gate:
            self.gate_dense._maybe_build(tuple(query_shape))
        self.value_dense._maybe_build(tuple(value_shape))
        self.output_dense._maybe_build(tuple(query_shape[:-1])
                                       + (self.num_heads, self.value_dim))

    def _sublayer_prefix(self, attr_path: str) -> str:
        return {"query_dense": "query/", "key_dense": "key/", "gate_dense": "gate/",
                "value_dense": "value/", "output_dense": "attention_output/"}.get(
            attr_path, attr_path + "/")

    def _attention_axes(self, rank: int) -> tuple:
        """The attention axes of projected tensors of ``rank`` (negative ones resolved)."""
        if self.attention_axes is None:
            return tuple(range(1, rank - 2))
        return tuple(a if a >= 0 else (rank - 1) + a for a in self.attention_axes)

    def _combined_mask(self, query, value, query_mask, value_mask, key_mask, attention_mask,
                       use_causal_mask):
        """Keras' ``_compute_attention_mask``: every mask ANDed into ``(B, T, S)``."""
        masks = []
        if query_mask is not None:
            masks.append(jnp.expand_dims(query_mask.astype(bool), -1))
        for m in (value_mask, key_mask):
            if m is not None:
                masks.append(jnp.expand_dims(m.astype(bool), -2))
        rows = jnp.arange(query.shape[1])[:, None]
        cols = jnp.arange(value.shape[1])[None, :]
        if use_causal_mask:
            masks.append((rows >= cols)[None])
        if self.sliding_window is not None:
            masks.append((jnp.abs(rows - cols) < self.sliding_window)[None])
        if attention_mask is not None:
            masks.append(jnp.asarray(attention_mask).astype(bool))
        if not masks:
            return None
        combined = masks[0]
        for m in masks[1:]:
            combined = combined & m
        return combined

    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None,
             attention_mask=None, return_attention_scores=False, training=False,
             use_causal_mask=False, mask=None):
        if self.flash_attention and return_attention_scores:
            raise ValueError(f"{_owner(self)}: returning attention scores is not supported "
                             f"with flash attention. Received: return_attention_scores=True, "
                             f"flash_attention=True")
        # A model passes the query's mask as `mask`; for self-attention it is also the
        # mask of value and key.
        if query_mask is None:
            query_mask = mask
        if value_mask is None and value is query:
            value_mask = mask
        if key_mask is None and key is not None and key is query:
            key_mask = mask
        key = value if key is None else key
        self._check_shapes(query.shape, value.shape, key.shape)
        attention_mask = self._combined_mask(query, value, query_mask, value_mask, key_mask,
                                             attention_mask, use_causal_mask)
        gate = self.gate_dense(query) if self.use_gate else None
        q = self.query_dense(query)
        k = self.key_dense(key)
        v = self.value_dense(value)
        rank = q.ndim
        axes = self._attention_axes(rank)
        dot_equation, combine_equation = attention_equations(rank, axes)
        q = q * jnp.asarray(1.0 / math.sqrt(float(self.key_dim)), q.dtype)
        scores = jnp.einsum(dot_equation, k, q)
        if attention_mask is not None:
            for _ in range(scores.ndim - attention_mask.ndim):
                attention_mask = jnp.expand_dims(attention_mask, -len(axes) * 2 - 1)
        zero_masked = self.dropout > 0 or return_attention_scores or rank != 4
        norm_axes = tuple(range(scores.ndim - len(axes), scores.ndim))
        scores = _masked_softmax(scores, attention_mask, norm_axes, zero_masked)
        weights = scores
        if training and self.dropout > 0:
            weights = random.dropout(scores, self.dropout, seed=self.seed_generator)
        output = jnp.einsum(combine_equation, weights, v)
        if gate is not None:
            output = output * gate
        output = self.output_dense(output)
        return [output, scores] if return_attention_scores else output

    def compute_mask(self, inputs, mask):
        """The query's mask (Keras); ``[query_mask, None]`` when scores are returned."""
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        return [mask, None] if self._return_attention_scores else mask

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": list(self.output_shape_arg) if self.output_shape_arg else None,
                "attention_axes": (list(self.attention_axes)
                                   if self.attention_axes is not None else None),
                "sliding_window": self.sliding_window, "flash_attention": self.flash_attention,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer,
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "use_gate": self.use_gate, "seed": self.seed}
