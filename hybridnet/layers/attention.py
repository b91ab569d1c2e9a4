"""Dot-product (Luong-style) attention, as ``keras.layers.Attention``."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybridnet.layers.base import Layer
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
        seed: optional int folded into the dropout key.

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
        training, rng: dropout of the attention weights.

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
            self.add_weight("scale", (), "ones")
        if self.score_mode == "concat":
            self.add_weight("concat_score_weight", (), "ones")

    def _scores(self, weights, q, k):
        scale = weights.get("scale") if self.use_scale else None
        if self.score_mode == "dot":
            scores = jnp.matmul(q, jnp.swapaxes(k, -2, -1))
            return scores if scale is None else scores * scale
        s = jnp.expand_dims(q, -2) + jnp.expand_dims(k, -3)  # (B, Tq, Tv, d)
        if scale is not None:
            s = scale * s
        return weights["concat_score_weight"] * jnp.sum(jnp.tanh(s), axis=-1)

    def call(self, weights, inputs, *, mask=None, training=False, rng=None,
             return_attention_scores=False, use_causal_mask=False):
        q, v = inputs[0], inputs[1]
        k = inputs[2] if len(inputs) > 2 else v
        q_mask = mask[0] if mask else None
        v_mask = mask[1] if mask else None
        scores = self._scores(weights, q, k)
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
            if rng is None:
                raise ValueError(f"{_owner(self)} needs an rng in training mode with dropout.")
            if self.seed is not None:
                rng = jax.random.fold_in(rng, self.seed)
            keep = jax.random.bernoulli(rng, 1.0 - self.dropout, attn.shape)
            attn = jnp.where(keep, attn / (1.0 - self.dropout), 0).astype(attn.dtype)
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
