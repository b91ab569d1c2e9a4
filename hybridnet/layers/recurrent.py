"""Recurrent layers: LSTM, GRU and SimpleRNN (lax.scan) and the Bidirectional wrapper."""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hybridnet import activations, initializers, regularizers
from hybridnet.layers.base import Layer
from hybridnet.variables import SeedGenerator
from hybridnet.layers.conv import _owner, resolve_kernel
from hybridnet.layers.wrappers import deserialize_layer, serialize_layer

_KERNEL_CHOICES = ("xla", "pallas", "auto")


def _lstm_bias_initializer(units: int, bias_initializer, owner: str):
    """Keras' ``unit_forget_bias``: [init(units), ones(units), init(2 * units)]."""
    base = initializers.get(bias_initializer, owner=owner)

    def init(key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return jnp.concatenate([base(k1, (units,), dtype), jnp.ones((units,), dtype),
                                base(k2, (2 * units,), dtype)])
    return init


def lstm_recurrence(xw, recurrent_kernel, h0, c0, mask=None, *, activation=jnp.tanh,
                    recurrent_activation=jax.nn.sigmoid, reverse=False,
                    zero_output_for_mask=False, recurrent_dropout_mask=None, kernel=None,
                    bias=None):
    """The LSTM time loop, with Keras 3 (JAX) semantics.

    Args:
        xw: ``(T, B, 4U)`` time-major ``x @ kernel + bias``; gates ordered i, f, c, o.
            With ``kernel`` given: the ``(T, B, F)`` time-major inputs, projected inside
            each step (``x_t @ kernel + bias``), as Keras does.
        recurrent_kernel: ``(U, 4U)``.
        kernel, bias: optional ``(F, 4U)`` and ``(4U,)``; see ``xw``.
        h0, c0: ``(B, U)`` initial states.
        mask: optional ``(T, B)`` bool; at a masked step the states are carried
            over and the output is the previous ``h`` (or zeros if
            ``zero_output_for_mask``).
        reverse: process the sequence from the end (``go_backwards``).
        recurrent_dropout_mask: optional ``(B, U)`` multiplier applied to ``h``
            before the recurrent matmul.

    Returns:
        ``(outputs, h, c)`` with ``outputs`` ``(T, B, U)`` in *processing* order
        (reversed when ``reverse``), as Keras returns them.
    """
    def step(carry, inp):
        h, c = carry
        z_t, m_t = inp
        if kernel is not None:
            z_t = jnp.matmul(z_t, kernel)
            if bias is not None:
                z_t = z_t + bias
        h_in = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        z = z_t + jnp.matmul(h_in, recurrent_kernel)
        zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
        i = recurrent_activation(zi)
        f = recurrent_activation(zf)
        o = recurrent_activation(zo)
        c_new = f * c + i * activation(zc)
        h_new = o * activation(c_new)
        if m_t is None:
            return (h_new, c_new), h_new
        m = m_t[:, None]
        out = jnp.where(m, h_new, jnp.zeros_like(h_new) if zero_output_for_mask else h)
        return (jnp.where(m, h_new, h), jnp.where(m, c_new, c)), out

    (h, c), outputs = lax.scan(step, (h0, c0), (xw, mask), reverse=reverse)
    if reverse:
        outputs = jnp.flip(outputs, axis=0)
    return outputs, h, c


def _project_inside_steps() -> bool:
    """Where the LSTM's input projection runs: inside each step of the time loop on
    XLA:CPU, as Keras does: a two-layer training step (B64 T32 F128 U128) ran 1.45x
    faster there than with the whole-sequence projection, whose (T, B, 4U) buffer and
    gradient pass through the loop's dynamic slices. Elsewhere (GPU, TPU) it is one
    matmul over all steps before the loop, since one large matmul keeps the accelerator
    busy."""
    from hybridnet import kernels
    return kernels.current_backend() == "cpu"


def _check_sequence_input(layer: Layer, input_shape) -> None:
    """A recurrent layer's input: one rank-3 (batch, timesteps, features) tensor."""
    if isinstance(input_shape, list):
        raise ValueError(f"{_owner(layer)} expects a single sequence input. "
                         f"Received: {len(input_shape)} inputs")
    if len(input_shape) != 3:
        raise ValueError(f"{_owner(layer)} expects inputs of rank 3 (batch, timesteps, "
                         f"features). Received: input.shape={tuple(input_shape)}")
    if input_shape[-1] is None:
        raise ValueError(f"{_owner(layer)} needs a known feature dimension. "
                         f"Received: input.shape={tuple(input_shape)}")
    if layer.built and input_shape[-1] != layer.input_shape[-1]:
        raise ValueError(f"{_owner(layer)} expects {layer.input_shape[-1]} features. "
                         f"Received: input.shape={tuple(input_shape)}")


class LSTM(Layer):
    """Long short-term memory layer (Hochreiter 1997), as ``keras.layers.LSTM``.

    Gates are ordered i, f, c, o in ``kernel`` ``(features, 4*units)``,
    ``recurrent_kernel`` ``(units, 4*units)`` and ``bias`` ``(4*units,)``.
    On XLA:CPU the input projection runs inside each step of the ``lax.scan`` (as in
    Keras); elsewhere it is one matmul over all steps before the loop.

    Masking follows Keras 3: at masked steps ``h`` and ``c`` are carried over and
    the sequence output repeats the previous ``h`` (zeros if
    ``zero_output_for_mask``). With ``go_backwards`` the returned sequence is in
    reversed (processing) order, as in Keras.

    Args:
        units: size of the hidden state.
        activation, recurrent_activation: names or callables (tanh, sigmoid).
        use_bias: add a bias.
        kernel_initializer, recurrent_initializer, bias_initializer: names
            (glorot_uniform, orthogonal, zeros).
        unit_forget_bias: initialise the forget-gate bias to ones.
        dropout: fraction of the inputs dropped in training (one mask per
            sequence, shared by all steps, as Keras).
        recurrent_dropout: fraction of ``h`` dropped before the recurrent matmul
            in training (one ``(batch, units)`` mask shared by all steps).
        seed: optional int folded into the dropout key.
        return_sequences: return the whole sequence ``(B, T, U)`` instead of ``(B, U)``.
        return_state: also return the final ``h`` and ``c``: ``[output, h, c]``.
        go_backwards: process the sequence backwards.
        zero_output_for_mask: output zeros at masked steps (used by Bidirectional).
        kernel: implementation, ``"xla"``, ``"pallas"`` or ``"auto"``; see :meth:`_recurrence`.

    Call arguments:
        x: ``(B, T, features)``.
        initial_state: optional ``[h0, c0]``, each ``(B, units)``.
        mask: optional ``(B, T)`` bool.

    Example:
        >>> x = Input((20, 8))
        >>> seq, h, c = LSTM(16, return_sequences=True, return_state=True)(x)
    """

    supports_masking = True

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 use_bias: bool = True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias: bool = True, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, seed: int | None = None,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, zero_output_for_mask: bool = False,
                 kernel="xla", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"{owner}: `units` must be a positive int. Received: units={units!r}")
        for arg, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{owner}: `{arg}` must be in [0, 1). Received: {arg}={rate!r}")
        if kernel not in _KERNEL_CHOICES:
            raise ValueError(f"{owner}: `kernel` must be one of {_KERNEL_CHOICES}. "
                             f"Received: kernel={kernel!r}")
        self.units = int(units)
        self.activation = activations.get(activation, owner=owner)
        self.recurrent_activation = activations.get(recurrent_activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.unit_forget_bias = bool(unit_forget_bias)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.kernel_impl = kernel
        self.seed_generator = SeedGenerator(seed)

    def _check_input(self, input_shape):
        _check_sequence_input(self, input_shape)

    def build(self, input_shape):
        u4 = 4 * self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], u4),
                                      initializer=self.kernel_initializer, name="kernel",
                                      axes=("embed", "lstm_gates"))
        self.recurrent_kernel = self.add_weight(shape=(self.units, u4),
                                                initializer=self.recurrent_initializer,
                                                name="recurrent_kernel",
                                                axes=("lstm_hidden", "lstm_gates"))
        if self.use_bias:
            init = (_lstm_bias_initializer(self.units, self.bias_initializer, _owner(self))
                    if self.unit_forget_bias else self.bias_initializer)
            self.bias = self.add_weight(shape=(u4,), initializer=init, name="bias",
                                        axes=("lstm_gates",))
        if self.kernel_impl == "pallas":
            ok, why = self._pallas_support(None, self.dtype)
            if not ok:
                raise ValueError(f"{_owner(self)}: kernel='pallas' cannot run this layer: {why}")

    @property
    def kernel_choice(self) -> str:
        """The implementation in use: "xla", "pallas", or "auto" until first traced."""
        return getattr(self, "_resolved_kernel", None) or self.kernel_impl

    def _pallas_support(self, x_shape, dtype, backend=None) -> tuple[bool, str]:
        from hybridnet import kernels
        ok, why = kernels.supports_lstm(
            x_shape, self.units, dtype=dtype,
            activation=activations.serialize(self.activation),
            recurrent_activation=activations.serialize(self.recurrent_activation),
            use_bias=self.use_bias, dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, backend=backend)
        return ok, why

    def _use_pallas(self, x) -> bool:
        """Resolves ``kernel=``: raises under "pallas" if the kernel cannot run this layer;
        under "auto" uses Pallas on GPU/TPU where supported, else XLA."""
        if self.kernel_impl == "xla":
            self._resolved_kernel = "xla"
            return False
        from hybridnet import kernels
        backend = kernels.current_backend()
        ok, why = self._pallas_support(tuple(x.shape), x.dtype, backend)
        return resolve_kernel(self, ok, why, backend)

    def _recurrence(self, xw, recurrent_kernel, h0, c0, mask, recurrent_dropout_mask,
                    kernel=None, bias=None):
        """The XLA time loop (time-major in and out), see :func:`lstm_recurrence`."""
        return lstm_recurrence(xw, recurrent_kernel, h0, c0, mask,
                               activation=self.activation,
                               recurrent_activation=self.recurrent_activation,
                               reverse=self.go_backwards,
                               zero_output_for_mask=self.zero_output_for_mask,
                               recurrent_dropout_mask=recurrent_dropout_mask,
                               kernel=kernel, bias=bias)

    def _call_pallas(self, x, h0, c0, mask):
        from hybridnet import kernels
        bias = self.bias.value if self.use_bias else jnp.zeros((4 * self.units,), x.dtype)

        def run(x, h0, c0, mask, kernel, recurrent_kernel, bias):
            return kernels.lstm(x, kernel, recurrent_kernel, bias, initial_state=(h0, c0),
                                mask=mask, return_sequences=self.return_sequences,
                                go_backwards=self.go_backwards)
        output, h, c = kernels.per_shard(run, x.shape[0], batch_argnums=(0, 1, 2, 3))(
            x, h0, c0, mask, self.kernel.value, self.recurrent_kernel.value, bias)
        if self.zero_output_for_mask and self.return_sequences and mask is not None:
            steps = mask[:, ::-1] if self.go_backwards else mask
            output = jnp.where(steps[..., None], output, 0).astype(output.dtype)
        return [output, h, c] if self.return_state else output

    def call(self, inputs, initial_state=None, mask=None, training=False):
        x = inputs
        batch = x.shape[0]
        rec_mask = None
        if training and (self.dropout > 0 or self.recurrent_dropout > 0):
            k_in, k_rec = jax.random.split(self.seed_generator.next())
            if self.dropout > 0:
                keep = jax.random.bernoulli(k_in, 1.0 - self.dropout, (batch, 1, x.shape[-1]))
                x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
            if self.recurrent_dropout > 0:
                keep = jax.random.bernoulli(k_rec, 1.0 - self.recurrent_dropout,
                                            (batch, self.units))
                rec_mask = keep.astype(x.dtype) / (1.0 - self.recurrent_dropout)
        if initial_state is None:
            h0 = jnp.zeros((batch, self.units), x.dtype)
            c0 = jnp.zeros((batch, self.units), x.dtype)
        else:
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2:
                raise ValueError(f"{_owner(self)}: `initial_state` must be a list [h, c]. "
                                 f"Received: {type(initial_state).__name__} of length "
                                 f"{len(initial_state) if hasattr(initial_state, '__len__') else '?'}")
            h0, c0 = (jnp.asarray(s, x.dtype) for s in initial_state)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if self._use_pallas(x):
            return self._call_pallas(x, h0, c0,
                                     None if mask is None else mask.astype(bool))
        tmask = None if mask is None else jnp.swapaxes(mask.astype(bool), 0, 1)
        bias = self.bias.value if self.use_bias else None
        if _project_inside_steps():
            outputs, h, c = self._recurrence(
                jnp.swapaxes(x, 0, 1), self.recurrent_kernel.value, h0, c0, tmask, rec_mask,
                kernel=self.kernel.value, bias=bias)
        else:
            # The input projection of every step at once: (B, T, F) @ (F, 4U).
            xw = jnp.matmul(x, self.kernel.value)
            if bias is not None:
                xw = xw + bias
            outputs, h, c = self._recurrence(jnp.swapaxes(xw, 0, 1),  # (T, B, 4U)
                                             self.recurrent_kernel.value, h0, c0, tmask,
                                             rec_mask)
        output = jnp.swapaxes(outputs, 0, 1) if self.return_sequences else outputs[-1]
        if self.return_state:
            return [output, h, c]
        return output

    def compute_output_shape(self, input_shape):
        batch, steps = input_shape[0], input_shape[1]
        out = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
        if self.return_state:
            return [out, (batch, self.units), (batch, self.units)]
        return out

    def compute_mask(self, inputs, mask):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out = mask if self.return_sequences else None
        if self.return_state:
            return [out, None, None]
        return out

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation),
                "recurrent_activation": activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "recurrent_initializer": self.recurrent_initializer,
                "bias_initializer": self.bias_initializer,
                "unit_forget_bias": self.unit_forget_bias, "dropout": self.dropout,
                "recurrent_dropout": self.recurrent_dropout, "seed": self.seed,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards,
                "zero_output_for_mask": self.zero_output_for_mask, "kernel": self.kernel_impl}


def rnn_scan(cell, inputs, states, mask=None, *, reverse=False, zero_output_for_mask=False):
    """Runs ``cell`` over time with Keras 3's semantics (``keras.src.backend.jax.rnn``).

    Args:
        cell: ``cell(x_t, states) -> (output, new_states)``; ``states`` is a tuple
            whose first entry is the previous output.
        inputs: time-major ``(T, B, ...)`` per-step inputs.
        states: tuple of initial states, each ``(B, ...)``.
        mask: optional ``(T, B)`` bool. At a masked step the states are carried
            over and the output is the previous output (zeros if
            ``zero_output_for_mask``).
        reverse: process the sequence from the end (``go_backwards``).

    Returns:
        ``(outputs, states)``: ``outputs`` ``(T, B, ...)`` in processing order
        (reversed when ``reverse``), as Keras returns them, and the final states.

    Example:
        >>> cell = lambda x, s: (x + s[0], (x + s[0],))  # a running sum
        >>> outputs, (h,) = rnn_scan(cell, xs, (h0,))
    """
    def step(carry, inp):
        x_t, m_t = inp
        out, new = cell(x_t, carry)
        new = tuple(new)
        if m_t is None:
            return new, out
        m = m_t[:, None]
        out = jnp.where(m, out, jnp.zeros_like(out) if zero_output_for_mask else carry[0])
        return tuple(jnp.where(m, n, s) for n, s in zip(new, carry)), out

    states, outputs = lax.scan(step, tuple(states), (inputs, mask), reverse=reverse)
    if reverse:
        outputs = jnp.flip(outputs, axis=0)
    return outputs, states


def gru_cell(xw_t, h, recurrent_kernel, recurrent_bias=None, *, reset_after=True,
             activation=jnp.tanh, recurrent_activation=jax.nn.sigmoid,
             recurrent_dropout_mask=None):
    """One step of Keras's ``GRUCell`` after the input projection.

    Args:
        xw_t: ``(B, 3U)`` ``x @ kernel + input_bias``; gates ordered z, r, h.
        h: ``(B, U)`` previous state.
        recurrent_kernel: ``(U, 3U)``.
        recurrent_bias: optional ``(3U,)`` (``reset_after`` only).
        reset_after: apply the reset gate after the recurrent matmul (Keras' default).
        recurrent_dropout_mask: optional ``(3, B, U)``: one multiplier of ``h`` per gate.

    Returns:
        The new state ``(B, U)`` (also the output).

    Example:
        >>> h = gru_cell(x @ kernel + bias[0], h, recurrent_kernel, bias[1])
    """
    units = h.shape[-1]

    def gate(i, v):
        return jnp.matmul(v, recurrent_kernel[:, i * units:(i + 1) * units])
    if recurrent_dropout_mask is None:
        h_z = h_r = h_h = h
        inner = jnp.matmul(h, recurrent_kernel if reset_after
                           else recurrent_kernel[:, :2 * units])
    else:
        h_z, h_r, h_h = (h * recurrent_dropout_mask[i] for i in range(3))
        inner = jnp.concatenate([gate(0, h_z), gate(1, h_r)]
                                + ([gate(2, h_h)] if reset_after else []), axis=-1)
    if recurrent_bias is not None:
        inner = inner + recurrent_bias
    x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
    z = recurrent_activation(x_z + inner[:, :units])
    r = recurrent_activation(x_r + inner[:, units:2 * units])
    candidate_in = r * inner[:, 2 * units:] if reset_after else gate(2, r * h_h)
    candidate = activation(x_h + candidate_in)
    return z * h + (1 - z) * candidate


def simple_rnn_cell(xw_t, h, recurrent_kernel, *, activation=jnp.tanh,
                    recurrent_dropout_mask=None):
    """One step of Keras's ``SimpleRNNCell``: ``activation(xw_t + h @ recurrent_kernel)``.

    Args:
        xw_t: ``(B, U)`` ``x @ kernel + bias``.
        h: ``(B, U)`` previous output.
        recurrent_kernel: ``(U, U)``.
        recurrent_dropout_mask: optional ``(1, B, U)`` multiplier of ``h``.

    Example:
        >>> h = simple_rnn_cell(x @ kernel + bias, h, recurrent_kernel)
    """
    if recurrent_dropout_mask is not None:
        h = h * recurrent_dropout_mask[0]
    return activation(xw_t + jnp.matmul(h, recurrent_kernel))


def _dropout_masks(key, rate: float, count: int, shape) -> jnp.ndarray:
    """``count`` Keras dropout masks of ``shape`` (kept entries ``1 / (1 - rate)``)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (count,) + tuple(shape))
    return keep.astype(jnp.float32) / (1.0 - rate)


class _SingleStateRNN(Layer):
    """What GRU and SimpleRNN share: arguments, checks, dropout masks, the time loop and
    outputs. Subclasses define ``build`` and ``_cell``."""

    supports_masking = True

    def __init__(self, units, activation, use_bias, kernel_initializer, recurrent_initializer,
                 bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer,
                 dropout, recurrent_dropout, seed, return_sequences, return_state, go_backwards,
                 zero_output_for_mask, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"{owner}: `units` must be a positive int. Received: units={units!r}")
        for arg, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ValueError(f"{owner}: `{arg}` must be in [0, 1). Received: {arg}={rate!r}")
        self.units = int(units)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.seed_generator = SeedGenerator(seed)

    def _check_input(self, input_shape):
        _check_sequence_input(self, input_shape)

    @property
    def _mask_count(self) -> int:
        """Dropout masks per call: one shared by all gates, as Keras (GRU overrides)."""
        return 1

    def _dropout_masks(self, x, training):
        """``(input masks (n, B, F) or None, recurrent masks (n, B, U) or None)``, one
        draw per call shared by every step, as Keras' ``DropoutRNNCell``."""
        if not training or (self.dropout == 0 and self.recurrent_dropout == 0):
            return None, None
        k_in, k_rec = jax.random.split(self.seed_generator.next())
        batch, n = x.shape[0], self._mask_count
        x_masks = (_dropout_masks(k_in, self.dropout, n, (batch, x.shape[-1])).astype(x.dtype)
                   if self.dropout > 0 else None)
        h_masks = (_dropout_masks(k_rec, self.recurrent_dropout, n,
                                  (batch, self.units)).astype(x.dtype)
                   if self.recurrent_dropout > 0 else None)
        return x_masks, h_masks

    def _initial_state(self, x, initial_state):
        if initial_state is None:
            return jnp.zeros((x.shape[0], self.units), x.dtype)
        if isinstance(initial_state, (list, tuple)):
            if len(initial_state) != 1:
                raise ValueError(f"{_owner(self)}: `initial_state` must be one tensor (or a "
                                 f"list of one) of shape (batch, {self.units}). Received: a "
                                 f"list of {len(initial_state)} tensors")
            initial_state = initial_state[0]
        h0 = jnp.asarray(initial_state, x.dtype)
        if h0.shape != (x.shape[0], self.units):
            raise ValueError(f"{_owner(self)}: `initial_state` must have shape (batch, "
                             f"{self.units}). Received: initial_state.shape={tuple(h0.shape)}")
        return h0

    def _input_projection(self, x, x_masks, kernel, bias):
        """``x @ kernel + bias`` for every step; with per-gate dropout masks each gate's
        columns see their own masked copy of ``x``."""
        if x_masks is None:
            xw = jnp.matmul(x, kernel)
        else:
            n = x_masks.shape[0]
            xg = x[None] * x_masks[:, :, None, :]  # (n, B, T, F)
            xw = jnp.einsum("nbtf,fnu->btnu", xg, kernel.reshape(kernel.shape[0], n, -1))
            xw = xw.reshape(x.shape[:2] + (kernel.shape[-1],))
        return xw if bias is None else xw + bias

    def _cell(self, h_masks):
        """``(input bias or None, step)`` for this call's weights and recurrent dropout
        masks, with ``step(xw_t, states) -> (output, new_states)``."""
        raise NotImplementedError

    def call(self, inputs, initial_state=None, mask=None, training=False):
        x = inputs
        h0 = self._initial_state(x, initial_state)
        x_masks, h_masks = self._dropout_masks(x, training)
        input_bias, step = self._cell(h_masks)
        xw = jnp.swapaxes(self._input_projection(x, x_masks, self.kernel.value, input_bias),
                          0, 1)  # time-major (T, B, G*U)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        tmask = None if mask is None else jnp.swapaxes(mask.astype(bool), 0, 1)
        outputs, (h,) = rnn_scan(step, xw, (h0,), tmask, reverse=self.go_backwards,
                                 zero_output_for_mask=self.zero_output_for_mask)
        output = jnp.swapaxes(outputs, 0, 1) if self.return_sequences else outputs[-1]
        return [output, h] if self.return_state else output

    def compute_output_shape(self, input_shape):
        batch, steps = input_shape[0], input_shape[1]
        out = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
        return [out, (batch, self.units)] if self.return_state else out

    def compute_mask(self, inputs, mask):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out = mask if self.return_sequences else None
        return [out, None] if self.return_state else out

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "recurrent_initializer": self.recurrent_initializer,
                "bias_initializer": self.bias_initializer,
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
                "seed": self.seed, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "zero_output_for_mask": self.zero_output_for_mask}

    def _add_weights(self, kernel_shape, recurrent_shape, bias_shape, bias_axes):
        """kernel, recurrent_kernel and (with ``use_bias``) bias, in Keras' order."""
        self.kernel = self.add_weight(shape=kernel_shape, initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, name="kernel",
                                      axes=("embed", "lstm_gates"))
        self.recurrent_kernel = self.add_weight(shape=recurrent_shape,
                                                initializer=self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer,
                                                name="recurrent_kernel",
                                                axes=("lstm_hidden", "lstm_gates"))
        if self.use_bias:
            self.bias = self.add_weight(shape=bias_shape, initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias",
                                        axes=bias_axes)


class GRU(_SingleStateRNN):
    """Gated recurrent unit (Cho et al. 2014), as ``keras.layers.GRU``.

    Gates are ordered z (update), r (reset), h (candidate) in ``kernel``
    ``(features, 3*units)`` and ``recurrent_kernel`` ``(units, 3*units)``. With
    ``reset_after`` (the default, cuDNN's convention) ``bias`` is ``(2, 3*units)``:
    row 0 is added to the input projection, row 1 to the recurrent one, and the
    reset gate multiplies ``h @ recurrent_kernel_h + bias[1]_h``; without it ``bias``
    is ``(3*units,)`` and the reset gate multiplies ``h`` before the matmul.

    Masking follows Keras 3: at masked steps the state is carried over and the
    sequence output repeats it (zeros if ``zero_output_for_mask``). With
    ``go_backwards`` the returned sequence is in reversed (processing) order.

    Args:
        units: size of the hidden state.
        activation, recurrent_activation: names or callables (tanh, sigmoid).
        use_bias: add biases.
        kernel_initializer, recurrent_initializer, bias_initializer: names
            (glorot_uniform, orthogonal, zeros).
        kernel_regularizer, recurrent_regularizer, bias_regularizer: optional
            regularizers of the weights (added to the training loss).
        dropout: fraction of the inputs dropped in training (one mask per call,
            shared by all steps; one per gate when ``recurrent_dropout`` > 0, as Keras).
        recurrent_dropout: fraction of ``h`` dropped before the recurrent matmuls in
            training (one ``(batch, units)`` mask per gate, shared by all steps).
        seed: optional int seeding the dropout masks.
        return_sequences: return the whole sequence ``(B, T, U)`` instead of ``(B, U)``.
        return_state: also return the final state: ``[output, h]``.
        go_backwards: process the sequence backwards.
        reset_after: see above.
        zero_output_for_mask: output zeros at masked steps (set by Bidirectional).

    Call arguments:
        inputs: ``(B, T, features)``.
        initial_state: optional ``(B, units)`` tensor or ``[h0]``.
        mask: optional ``(B, T)`` bool.

    Example:
        >>> x = Input((20, 8))
        >>> seq, h = GRU(16, return_sequences=True, return_state=True)(x)
    """

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 use_bias: bool = True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: int | None = None,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, reset_after: bool = True,
                 zero_output_for_mask: bool = False, **kwargs):
        super().__init__(units, activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, dropout, recurrent_dropout,
                         seed, return_sequences, return_state, go_backwards,
                         zero_output_for_mask, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation, owner=_owner(self))
        self.reset_after = bool(reset_after)

    @property
    def _mask_count(self) -> int:
        # Keras switches to per-gate matmuls (and per-gate masks) with recurrent dropout.
        return 3 if self.recurrent_dropout > 0 else 1

    def build(self, input_shape):
        u3 = 3 * self.units
        bias_shape, bias_axes = (((2, u3), (None, "lstm_gates")) if self.reset_after
                                 else ((u3,), ("lstm_gates",)))
        self._add_weights((input_shape[-1], u3), (self.units, u3), bias_shape, bias_axes)

    def _cell(self, h_masks):
        input_bias = recurrent_bias = None
        if self.use_bias:
            bias = self.bias.value
            input_bias, recurrent_bias = (bias[0], bias[1]) if self.reset_after else (bias, None)
        recurrent_kernel = self.recurrent_kernel.value

        def step(xw_t, states):
            h = gru_cell(xw_t, states[0], recurrent_kernel, recurrent_bias,
                         reset_after=self.reset_after, activation=self.activation,
                         recurrent_activation=self.recurrent_activation,
                         recurrent_dropout_mask=h_masks)
            return h, (h,)
        return input_bias, step

    def get_config(self):
        return {**super().get_config(),
                "recurrent_activation": activations.serialize(self.recurrent_activation),
                "reset_after": self.reset_after}


class SimpleRNN(_SingleStateRNN):
    """Fully connected recurrent layer, as ``keras.layers.SimpleRNN``:
    ``h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel)``.

    Masking, ``go_backwards`` and outputs follow Keras 3, as for :class:`GRU`.

    Args:
        units: size of the output (and state).
        activation: name or callable (tanh).
        use_bias: add a bias.
        kernel_initializer, recurrent_initializer, bias_initializer: names
            (glorot_uniform, orthogonal, zeros).
        kernel_regularizer, recurrent_regularizer, bias_regularizer: optional
            regularizers of the weights (added to the training loss).
        dropout: fraction of the inputs dropped in training (one mask per call,
            shared by all steps).
        recurrent_dropout: fraction of ``h`` dropped before the recurrent matmul in
            training (one ``(batch, units)`` mask, shared by all steps).
        seed: optional int seeding the dropout masks.
        return_sequences: return the whole sequence ``(B, T, U)`` instead of ``(B, U)``.
        return_state: also return the final state: ``[output, h]``.
        go_backwards: process the sequence backwards.
        zero_output_for_mask: output zeros at masked steps (set by Bidirectional).

    Call arguments:
        inputs: ``(B, T, features)``.
        initial_state: optional ``(B, units)`` tensor or ``[h0]``.
        mask: optional ``(B, T)`` bool.

    Example:
        >>> x = Input((20, 8))
        >>> SimpleRNN(16)(x)  # (None, 16)
    """

    def __init__(self, units: int, activation="tanh", use_bias: bool = True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, seed: int | None = None,
                 zero_output_for_mask: bool = False, **kwargs):
        super().__init__(units, activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer,
                         recurrent_regularizer, bias_regularizer, dropout, recurrent_dropout,
                         seed, return_sequences, return_state, go_backwards,
                         zero_output_for_mask, **kwargs)

    def build(self, input_shape):
        self._add_weights((input_shape[-1], self.units), (self.units, self.units),
                          (self.units,), ("lstm_gates",))

    def _cell(self, h_masks):
        recurrent_kernel = self.recurrent_kernel.value

        def step(xw_t, states):
            h = simple_rnn_cell(xw_t, states[0], recurrent_kernel, activation=self.activation,
                                recurrent_dropout_mask=h_masks)
            return h, (h,)
        return (self.bias.value if self.use_bias else None), step


def _removeprefix(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and a copy of it backwards and merges the outputs.

    The backward layer is rebuilt from the forward layer's config with
    ``go_backwards=True`` unless ``backward_layer`` is given. Weights are named
    ``forward_<w>`` and ``backward_<w>``. With ``return_sequences`` the backward
    sequence is flipped back to input order and both layers output zeros at
    masked steps (Keras forces ``zero_output_for_mask = return_sequences``).

    Args:
        layer: an ``LSTM``, ``GRU`` or ``SimpleRNN`` (any layer with ``go_backwards``,
            ``return_sequences``, ``return_state`` and ``from_config``).
        merge_mode: ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"`` or
            None (a list ``[forward, backward]``).
        backward_layer: optional explicit backward layer (must have
            ``go_backwards`` different from ``layer``).

    Outputs: the merged output; with ``return_state`` the forward then the backward
    states follow it (LSTM: ``[output, h_f, c_f, h_b, c_b]``; GRU and SimpleRNN:
    ``[output, h_f, h_b]``); ``merge_mode=None`` returns both outputs first.

    Example:
        >>> x = Input((20, 8))
        >>> Bidirectional(LSTM(16, return_sequences=True))(x)  # (None, 20, 32)
    """

    supports_masking = True

    def __init__(self, layer: Layer, merge_mode="concat", backward_layer: Layer | None = None,
                 **kwargs):
        if isinstance(layer, dict):
            layer = deserialize_layer(layer)
        if isinstance(backward_layer, dict):
            backward_layer = deserialize_layer(backward_layer)
        super().__init__(**kwargs)
        owner = _owner(self)
        if not isinstance(layer, Layer) or not hasattr(layer, "go_backwards"):
            raise ValueError(f"{owner}: `layer` must be a recurrent hybridnet layer (LSTM, "
                             f"GRU or SimpleRNN). Received: layer={layer!r}")
        if backward_layer is not None and not isinstance(backward_layer, Layer):
            raise ValueError(f"{owner}: `backward_layer` must be a layer. "
                             f"Received: backward_layer={backward_layer!r}")
        if merge_mode not in ("sum", "mul", "ave", "concat", None):
            raise ValueError(f"{owner}: invalid `merge_mode`; expected one of "
                             f"'sum', 'mul', 'ave', 'concat' or None. "
                             f"Received: merge_mode={merge_mode!r}")
        config = layer.get_config()
        config["name"] = "forward_" + _removeprefix(layer.name, "forward_")
        self.forward_layer = type(layer).from_config(copy.deepcopy(config))
        if backward_layer is None:
            config = layer.get_config()
            config["go_backwards"] = True
            config["name"] = "backward_" + _removeprefix(layer.name, "backward_")
            self.backward_layer = type(layer).from_config(copy.deepcopy(config))
        else:
            self.backward_layer = backward_layer
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            raise ValueError(f"{owner}: forward and backward layers should have different "
                             f"`go_backwards` values. Received: forward_layer.go_backwards="
                             f"{self.forward_layer.go_backwards}, backward_layer.go_backwards="
                             f"{self.backward_layer.go_backwards}")
        for attr in ("return_sequences", "return_state"):
            fv, bv = getattr(self.forward_layer, attr), getattr(self.backward_layer, attr)
            if fv != bv:
                raise ValueError(f"{owner}: forward and backward layers must have the same "
                                 f"`{attr}`. Received: {fv} (forward) and {bv} (backward)")
        for sub in (self.forward_layer, self.backward_layer):
            if hasattr(sub, "zero_output_for_mask"):
                sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state

    def _check_input(self, input_shape):
        if isinstance(input_shape, list) or len(input_shape) != 3:
            raise ValueError(f"{_owner(self)} expects inputs of rank 3 (batch, timesteps, "
                             f"features). Received: input.shape={input_shape!r}")
        self.forward_layer._check_input(input_shape)
        self.backward_layer._check_input(input_shape)

    def build(self, input_shape):
        self.forward_layer._maybe_build(input_shape)
        self.backward_layer._maybe_build(input_shape)

    def _sublayer_prefix(self, attr_path: str) -> str:
        return {"forward_layer": "forward_", "backward_layer": "backward_"}.get(
            attr_path, attr_path + "/")

    def call(self, inputs, initial_state=None, mask=None, training=False):
        fw_state = bw_state = None
        if initial_state is not None:
            half = len(initial_state) // 2
            fw_state, bw_state = list(initial_state[:half]), list(initial_state[half:])
        y = self.forward_layer(inputs, training=training, mask=mask, initial_state=fw_state)
        y_rev = self.backward_layer(inputs, training=training, mask=mask,
                                    initial_state=bw_state)
        states = []
        if self.return_state:
            states = list(y[1:]) + list(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = jnp.flip(y_rev, axis=1)
        if self.merge_mode == "concat":
            output = [jnp.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            output = [y + y_rev]
        elif self.merge_mode == "ave":
            output = [(y + y_rev) / 2]
        elif self.merge_mode == "mul":
            output = [y * y_rev]
        else:
            output = [y, y_rev]
        output = output + states
        return output[0] if len(output) == 1 else output

    def compute_output_shape(self, input_shape):
        shape = self.forward_layer.compute_output_shape(input_shape)
        back = self.backward_layer.compute_output_shape(input_shape)
        states, back_states = [], []
        if self.return_state:
            shape, states = shape[0], list(shape[1:])
            back, back_states = back[0], list(back[1:])
        if self.merge_mode == "concat":
            out = [tuple(shape[:-1]) + (shape[-1] + back[-1],)]
        elif self.merge_mode is None:
            out = [tuple(shape), tuple(back)]
        else:
            out = [tuple(shape)]
        out = out + states + back_states
        return out[0] if len(out) == 1 else out

    def compute_mask(self, inputs, mask):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out_mask = mask if self.return_sequences else None
        masks = [out_mask, out_mask] if self.merge_mode is None else [out_mask]
        if self.return_state:
            states = len(self.forward_layer.compute_mask(inputs, mask)) - 1
            masks += [None] * (2 * states)
        return masks[0] if len(masks) == 1 else masks

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": serialize_layer(self.forward_layer),
                "backward_layer": serialize_layer(self.backward_layer)}

    @classmethod
    def from_config(cls, config: dict) -> "Bidirectional":
        config = copy.deepcopy(config)
        config["layer"] = deserialize_layer(config["layer"])
        if config.get("backward_layer") is not None:
            config["backward_layer"] = deserialize_layer(config["backward_layer"])
        return cls(**config)
