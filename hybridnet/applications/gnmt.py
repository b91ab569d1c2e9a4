"""GNMT v2 (Wu et al. 2016, as NVIDIA's reference implementation trains it) written with
the functional API, its normalised Bahdanau attention, a label-smoothed loss, and greedy
and beam-search decoding compiled as ``lax.scan`` loops over the model's weights.

The model, for ``layers = L`` and hidden size ``H``:

* encoder: an embedding; a bidirectional LSTM (``H`` units each way); a unidirectional
  LSTM; then ``L - 2`` more LSTMs, each with a residual connection (from the third layer
  on);
* decoder: an embedding; an LSTM whose output is the attention query; normalised
  Bahdanau attention over the encoder outputs; ``L - 1`` LSTMs, each reading its input
  concatenated with the attention context, with residual connections from the second
  on; a softmax layer over the target vocabulary (``vocab_parallel=True`` shards it and
  the embeddings over the ``model`` mesh axis);
* the decoder starts from zero states (GNMT v2: no bridge from the encoder).

The model takes ``[source_ids, target_in_ids]`` (padding id 0; the target input is the
target shifted right behind ``<s>``) and returns logits ``(batch, target_len, vocab)``;
masks come from the embeddings (``mask_zero=True``), so the loss averages over real
target tokens.

Example:
    >>> model = gnmt(vocab_size=256, hidden=64, layers=2)
    >>> model.compile("adam", loss=LabelSmoothedCrossentropy(0.1))
    >>> model.fit(batches, epochs=3)
    >>> ids = greedy_decode(model, source_ids, max_length=40)
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import losses
from hybridnet.layers.base import Layer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_NEG = -1.0e9

__all__ = ["gnmt", "BahdanauAttention", "LabelSmoothedCrossentropy", "greedy_decode",
           "beam_search", "model_weights", "bahdanau_scores", "parameter_count"]


# -------------------------------------------------------------------------- attention

def bahdanau_scores(processed_query, processed_keys, key_mask, v, g, b):
    """Normalised Bahdanau attention weights (Salimans & Kingma's weight normalisation of
    the score vector, as GNMT's ``normed_bahdanau``).

    ``score[q, k] = g * (v / |v|) . tanh(processed_query[q] + processed_keys[k] + b)``,
    masked keys set to -1e9, softmax over keys.

    Args:
        processed_query: ``(B, Tq, U)`` (``query @ query_kernel``).
        processed_keys: ``(B, Tk, U)`` (``keys @ key_kernel``).
        key_mask: ``(B, Tk)`` bool or None.
        v: ``(U,)``; g: scalar; b: ``(U,)``.

    Returns:
        ``(B, Tq, Tk)`` weights, each row summing to one over unmasked keys.

    Example:
        >>> w = bahdanau_scores(q @ wq, k @ wk, mask, v, g, b)
    """
    v_n = g * v / jnp.sqrt(jnp.sum(jnp.square(v)))
    hidden = jnp.tanh(processed_query[:, :, None, :] + processed_keys[:, None, :, :] + b)
    scores = jnp.einsum("bqku,u->bqk", hidden, v_n)
    if key_mask is not None:
        scores = jnp.where(key_mask[:, None, :].astype(bool), scores, _NEG)
    return jax.nn.softmax(scores, axis=-1)


class BahdanauAttention(Layer):
    """Normalised additive (Bahdanau) attention over ``[query, keys]``, as GNMT v2.

    Weights: ``query_kernel (Dq, U)``, ``key_kernel (Dk, U)``, ``attention_v (U,)``,
    ``attention_g`` (scalar, initialised to ``1 / sqrt(U)``) and ``attention_b (U,)``. The
    context is the weighted sum of the keys (which are also the values).

    Args:
        units: size ``U`` of the score's hidden layer.

    Call arguments:
        inputs: ``[query (B, Tq, Dq), keys (B, Tk, Dk)]``.
        mask: ``[query_mask, key_mask]`` (from the embeddings); masked keys get no weight.
        return_attention_scores: also return the ``(B, Tq, Tk)`` weights.

    Output: the context ``(B, Tq, Dk)``, with the query's mask.

    Example:
        >>> q, k = Input((5, 16)), Input((7, 32))
        >>> BahdanauAttention(16)([q, k])  # (None, 5, 32)
    """

    supports_masking = True

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"BahdanauAttention '{self.name}': `units` must be a positive "
                             f"int. Received: units={units!r}")
        self.units = int(units)

    def _check_input(self, input_shape):
        if not isinstance(input_shape, list) or len(input_shape) != 2 or any(
                len(s) != 3 for s in input_shape):
            raise ValueError(f"BahdanauAttention '{self.name}' must be called on "
                             f"[query (batch, Tq, d), keys (batch, Tk, d)]. "
                             f"Received: input_shape={input_shape!r}")

    def build(self, input_shape):
        q, k = input_shape
        u = self.units
        self.query_kernel = self.add_weight(shape=(q[-1], u), initializer="glorot_uniform",
                                            name="query_kernel", axes=("embed", None))
        self.key_kernel = self.add_weight(shape=(k[-1], u), initializer="glorot_uniform",
                                          name="key_kernel", axes=("embed", None))
        self.attention_v = self.add_weight(
            shape=(u,), name="attention_v",
            initializer=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                key, shape, dtype, -0.1, 0.1))
        self.attention_g = self.add_weight(
            shape=(), name="attention_g",
            initializer=lambda key, shape, dtype=jnp.float32: jnp.full(
                shape, 1.0 / math.sqrt(u), dtype))
        self.attention_b = self.add_weight(shape=(u,), initializer="zeros", name="attention_b")

    def call(self, inputs, mask=None, return_attention_scores=False):
        query, keys = inputs
        key_mask = mask[1] if isinstance(mask, (list, tuple)) else None
        weights = bahdanau_scores(jnp.matmul(query, self.query_kernel.value),
                                  jnp.matmul(keys, self.key_kernel.value), key_mask,
                                  self.attention_v.value, self.attention_g.value,
                                  self.attention_b.value)
        context = jnp.matmul(weights, keys)
        return [context, weights] if return_attention_scores else context

    def compute_mask(self, inputs, mask):
        return mask[0] if isinstance(mask, (list, tuple)) else None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


# ------------------------------------------------------------------------------- loss

class LabelSmoothedCrossentropy(losses.Loss):
    """Sparse categorical cross-entropy from logits with label smoothing, as GNMT trains:
    ``(1 - s) * nll(target) + s * mean over the vocabulary of -log p`` per token.

    Integer targets ``(B, T)``, logits ``(B, T, V)``; the model's output mask (padding)
    leaves padded tokens out of the mean.

    Example:
        >>> model.compile("adam", loss=LabelSmoothedCrossentropy(0.1))
    """

    def __init__(self, label_smoothing: float = 0.1, name="label_smoothed_crossentropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"LabelSmoothedCrossentropy: `label_smoothing` must be in "
                             f"[0, 1). Received: label_smoothing={label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        logp = jax.nn.log_softmax(jnp.asarray(y_pred, self.dtype), axis=-1)
        labels = jnp.asarray(y_true).astype(jnp.int32)
        nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        s = self.label_smoothing
        return (1.0 - s) * nll - s * jnp.mean(logp, axis=-1) if s else nll

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


# ---------------------------------------------------------------------------- builder

def _stage_of(block: int, blocks: int, stages: int | None):
    """Stage of the ``block``-th of ``blocks`` layer groups when split into ``stages``."""
    if not stages or stages == 1:
        return None
    return min(stages - 1, block * stages // blocks)


def gnmt(vocab_size: int = 512, target_vocab_size: int | None = None, *, hidden: int = 128,
         layers: int = 4, attention_units: int | None = None, dropout: float = 0.2,
         vocab_parallel: bool = False, stages: int | None = None, kernel: str = "xla",
         name: str = "gnmt"):
    """GNMT v2 as a functional :class:`~hybridnet.Model` (see the module docstring).

    Real GNMT: ``vocab_size=32000, hidden=1024, layers=4``; the defaults are CPU-sized.

    Args:
        vocab_size: source vocabulary (and target, unless ``target_vocab_size``).
        target_vocab_size: target vocabulary, if different.
        hidden: LSTM units, embedding size and attention size.
        layers: LSTM layers in the encoder (the bidirectional one counts once) and in the
            decoder (the attention LSTM counts); at least 2.
        attention_units: hidden size of the attention score (default ``hidden``).
        dropout: dropout between LSTM layers in training (0.2 in GNMT).
        vocab_parallel: annotate the embeddings and the softmax layer ``parallel="model"``
            so a ``model`` mesh axis shards their vocabulary dimension.
        stages: annotate ``stage=`` for a pipeline of this many stages (encoder first,
            decoder after; 2 puts the encoder and decoder on one stage each).
        kernel: the LSTMs' implementation ("xla", "pallas" or "auto").

    Returns:
        A model on ``[source (B, S), target_in (B, T)]`` int32 with logits ``(B, T, V)``.

    Example:
        >>> model = gnmt(vocab_size=32000, hidden=1024, layers=4)  # GNMT's size
    """
    from hybridnet import Input, Model
    from hybridnet.layers import (LSTM, Add, Bidirectional, Concatenate, Dense, Dropout,
                                  Embedding)
    for arg, value in (("vocab_size", vocab_size), ("hidden", hidden), ("layers", layers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"gnmt: `{arg}` must be a positive int. Received: {arg}={value!r}")
    if layers < 2:
        raise ValueError(f"gnmt: `layers` must be at least 2 (a bidirectional and a "
                         f"unidirectional encoder layer). Received: layers={layers}")
    if stages is not None and (not isinstance(stages, int) or not 1 <= stages <= 2 * layers):
        raise ValueError(f"gnmt: `stages` must be an int in [1, {2 * layers}]. "
                         f"Received: stages={stages!r}")
    target_vocab_size = target_vocab_size or vocab_size
    units = attention_units or hidden
    parallel = "model" if vocab_parallel else "data"
    blocks = 2 * layers  # encoder layers, then decoder layers
    st = functools.partial(_stage_of, blocks=blocks, stages=stages)

    def lstm(index, block, **kw):
        return LSTM(hidden, return_sequences=True, kernel=kernel, name=index, stage=st(block),
                    **kw)

    def drop(x, block, label):
        return Dropout(dropout, name=label, stage=st(block))(x) if dropout else x

    source = Input((None,), dtype="int32", name="source")
    target_in = Input((None,), dtype="int32", name="target_in")
    x = Embedding(vocab_size, hidden, mask_zero=True, name="encoder_embedding",
                  parallel=parallel, stage=st(0))(source)
    x = Bidirectional(LSTM(hidden, return_sequences=True, kernel=kernel),
                      name="encoder_lstm_0", stage=st(0))(x)
    x = drop(x, 0, "encoder_dropout_0")
    x = lstm("encoder_lstm_1", 1)(x)
    for i in range(2, layers):
        residual = x
        x = drop(x, i, f"encoder_dropout_{i - 1}")
        x = lstm(f"encoder_lstm_{i}", i)(x)
        x = Add(name=f"encoder_residual_{i}", stage=st(i))([x, residual])
    encoded = x

    d = layers  # first decoder block
    y = Embedding(target_vocab_size, hidden, mask_zero=True, name="decoder_embedding",
                  parallel=parallel, stage=st(d))(target_in)
    y = drop(y, d, "decoder_dropout_0")
    query = lstm("decoder_lstm_0", d)(y)
    context = BahdanauAttention(units, name="attention", stage=st(d))([query, encoded])
    y = drop(query, d, "decoder_dropout_1")
    y = Concatenate(name="decoder_concat_1", stage=st(d + 1))([y, context])
    y = lstm("decoder_lstm_1", d + 1)(y)
    for i in range(2, layers):
        residual = y
        y = drop(y, d + i, f"decoder_dropout_{i}")
        y = Concatenate(name=f"decoder_concat_{i}", stage=st(d + i))([y, context])
        y = lstm(f"decoder_lstm_{i}", d + i)(y)
        y = Add(name=f"decoder_residual_{i}", stage=st(d + i))([y, residual])
    logits = Dense(target_vocab_size, name="classifier", parallel=parallel,
                   stage=st(blocks - 1))(y)
    model = Model([source, target_in], logits, name=name)
    model.gnmt_config = {"vocab_size": int(vocab_size),
                         "target_vocab_size": int(target_vocab_size), "hidden": int(hidden),
                         "layers": int(layers), "attention_units": int(units)}
    model._gnmt_encoder = (source, encoded)
    return model


def parameter_count(vocab_size: int, hidden: int, layers: int,
                    target_vocab_size: int | None = None,
                    attention_units: int | None = None) -> int:
    """GNMT's parameter count by hand (what :func:`gnmt` builds).

    Example:
        >>> parameter_count(32000, 1024, 4)  # real GNMT, separate embeddings
        160...
    """
    v_t = target_vocab_size or vocab_size
    h, u = hidden, attention_units or hidden

    def lstm(inputs):
        return 4 * h * (inputs + h) + 4 * h
    encoder = vocab_size * h + 2 * lstm(h) + lstm(2 * h) + (layers - 2) * lstm(h)
    attention = h * u + h * u + 2 * u + 1
    decoder = v_t * h + lstm(h) + attention + (layers - 1) * lstm(2 * h) + h * v_t + v_t
    return encoder + decoder


# --------------------------------------------------------------------------- decoding

def model_weights(model) -> dict:
    """The model's weights as ``{layer name: {weight path: array}}`` on one device (what
    :func:`greedy_decode` and :func:`beam_search` take).

    Example:
        >>> weights = model_weights(model)
    """
    # Gathered onto one device: under a pipeline the stages' weights live on different
    # sub-meshes, which one jitted decoder cannot take as they are.
    device = jax.devices()[0]
    return {layer.name: {path: jax.device_put(value, device)
                         for path, value in layer._weight_values().items()}
            for layer in model.layers if layer.weights}


def _lstm_step(x, h, c, w):
    """One LSTM step (Keras gates i, f, c, o; sigmoid / tanh)."""
    z = x @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]
    zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zc)
    return jax.nn.sigmoid(zo) * jnp.tanh(c), c


def _decoder_step(weights, layers: int, token, states, keys, processed_keys, key_mask):
    """Logits ``(N, V)`` and new states for one target token per row; the pure,
    step-by-step form of the model's decoder (dropout off)."""
    new = []
    y = jnp.take(weights["decoder_embedding"]["embeddings"], token, axis=0)
    h, c = _lstm_step(y, *states[0], weights["decoder_lstm_0"])
    new.append((h, c))
    a = weights["attention"]
    attn = bahdanau_scores((h @ a["query_kernel"])[:, None, :], processed_keys, key_mask,
                           a["attention_v"], a["attention_g"], a["attention_b"])
    context = jnp.einsum("nk,nkd->nd", attn[:, 0, :], keys)
    y = h
    for i in range(1, layers):
        hi, ci = _lstm_step(jnp.concatenate([y, context], axis=-1), *states[i],
                            weights[f"decoder_lstm_{i}"])
        new.append((hi, ci))
        y = hi + y if i >= 2 else hi
    logits = y @ weights["classifier"]["kernel"] + weights["classifier"]["bias"]
    return logits, tuple(new)


def _encode(model, weights, source):
    """Encoder outputs ``(B, S, 2H or H)``, their attention projection, and the mask."""
    from hybridnet.models.graph import Graph
    source_input, encoded = model._gnmt_encoder
    graph = Graph([source_input], [encoded])
    outputs, _, _ = graph.run(weights, [source], training=False)
    keys = outputs[0]
    mask = source != PAD_ID
    return keys, keys @ weights["attention"]["key_kernel"], mask


def _zero_states(layers, n, hidden, dtype=jnp.float32):
    return tuple((jnp.zeros((n, hidden), dtype), jnp.zeros((n, hidden), dtype))
                 for _ in range(layers))


def _check_decode_args(model, source, max_length):
    if getattr(model, "_gnmt_encoder", None) is None:
        raise ValueError(f"decoding needs a model built by hybridnet.applications.gnmt. "
                         f"Received: model={model!r}")
    source = np.asarray(source)
    if source.ndim != 2 or not np.issubdtype(source.dtype, np.integer):
        raise ValueError(f"decoding expects integer source ids of shape (batch, length). "
                         f"Received: source.shape={source.shape}, dtype={source.dtype}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"decoding: `max_length` must be a positive int. "
                         f"Received: max_length={max_length!r}")
    return source.astype(np.int32)


@functools.lru_cache(maxsize=32)
def _greedy_fn(model_ref, layers, hidden, max_length):
    def run(weights, source):
        model = model_ref()
        keys, pk, mask = _encode(model, weights, source)
        n = source.shape[0]

        def step(carry, _):
            token, states, done = carry
            logits, states = _decoder_step(weights, layers, token, states, keys, pk, mask)
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            nxt = jnp.where(done, PAD_ID, nxt)
            return (nxt, states, done | (nxt == EOS_ID)), nxt
        init = (jnp.full((n,), BOS_ID, jnp.int32), _zero_states(layers, n, hidden),
                jnp.zeros((n,), bool))
        _, tokens = jax.lax.scan(step, init, None, length=max_length)
        return tokens.T
    return jax.jit(run)


def greedy_decode(model, source, max_length: int = 64, weights=None) -> np.ndarray:
    """Greedy translation of ``source`` ids ``(B, S)``: one compiled ``lax.scan`` of
    ``max_length`` decoder steps (the encoder runs once). Returns ``(B, max_length)``
    int32 ids, ``</s>`` then padding after each sentence's end.

    Example:
        >>> ids = greedy_decode(model, source_ids, max_length=60)
        >>> [tokenizer.decode(row) for row in ids]
    """
    import weakref
    source = _check_decode_args(model, source, max_length)
    cfg = model.gnmt_config
    fn = _greedy_fn(weakref.ref(model), cfg["layers"], cfg["hidden"], max_length)
    return np.asarray(fn(weights if weights is not None else model_weights(model), source))


@functools.lru_cache(maxsize=32)
def _beam_fn(model_ref, layers, hidden, max_length, width, length_penalty):
    def run(weights, source):
        model = model_ref()
        keys, pk, mask = _encode(model, weights, source)
        b = source.shape[0]
        tile = lambda a: jnp.repeat(a, width, axis=0)  # noqa: E731  (B*K, ...)
        keys, pk, mask = tile(keys), tile(pk), tile(mask)
        n = b * width

        def step(carry, t):
            token, states, scores, done, history, lengths = carry
            logits, new_states = _decoder_step(weights, layers, token, states, keys, pk, mask)
            logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, width, -1)
            vocab = logp.shape[-1]
            # A finished beam extends only with padding, at no cost.
            ended = jnp.full((vocab,), _NEG).at[PAD_ID].set(0.0)
            logp = jnp.where(done.reshape(b, width, 1), ended, logp)
            total = scores[..., None] + logp                            # (B, K, V)
            top, index = jax.lax.top_k(total.reshape(b, width * vocab), width)
            beam, word = index // vocab, (index % vocab).astype(jnp.int32)
            rows = (jnp.arange(b)[:, None] * width + beam).reshape(-1)  # (B*K,)
            new_states = jax.tree_util.tree_map(lambda s: s[rows], new_states)
            was_done = done[rows]
            word = word.reshape(-1)
            history = history[rows].at[:, t].set(word)
            lengths = jnp.where(was_done, lengths[rows], t + 1)
            done = was_done | (word == EOS_ID)
            return (word, new_states, top, done, history, lengths), None

        # Only the first beam is live at the start, so the K beams differ.
        scores = jnp.tile(jnp.asarray([0.0] + [_NEG] * (width - 1)), (b, 1))
        init = (jnp.full((n,), BOS_ID, jnp.int32), _zero_states(layers, n, hidden), scores,
                jnp.zeros((n,), bool), jnp.zeros((n, max_length), jnp.int32),
                jnp.zeros((n,), jnp.int32))
        (_, _, scores, _, history, lengths), _ = jax.lax.scan(
            step, init, jnp.arange(max_length))
        # GNMT's length penalty: ((5 + |Y|) / 6) ** alpha.
        penalty = ((5.0 + lengths.reshape(b, width)) / 6.0) ** length_penalty
        best = jnp.argmax(scores / penalty, axis=-1)
        return history.reshape(b, width, max_length)[jnp.arange(b), best]
    return jax.jit(run)


def beam_search(model, source, beam_width: int = 4, length_penalty: float = 0.6,
                max_length: int = 64, weights=None) -> np.ndarray:
    """Beam-search translation of ``source`` ids ``(B, S)`` as one compiled ``lax.scan``:
    ``beam_width`` hypotheses per sentence, the encoder run once and tiled, LSTM states
    carried and reordered by beam each step; the best finished hypothesis by
    ``log p / ((5 + length) / 6) ** length_penalty`` (Wu et al. 2016). Returns
    ``(B, max_length)`` int32 ids.

    Example:
        >>> ids = beam_search(model, source_ids, beam_width=5, length_penalty=0.6)
    """
    import weakref
    source = _check_decode_args(model, source, max_length)
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_search: `beam_width` must be a positive int. "
                         f"Received: beam_width={beam_width!r}")
    if not length_penalty >= 0:
        raise ValueError(f"beam_search: `length_penalty` must be >= 0. "
                         f"Received: length_penalty={length_penalty!r}")
    cfg = model.gnmt_config
    fn = _beam_fn(weakref.ref(model), cfg["layers"], cfg["hidden"], max_length, beam_width,
                  float(length_penalty))
    return np.asarray(fn(weights if weights is not None else model_weights(model), source))
