"""Convolution layers over channels_last inputs: Conv1D, Conv2D, Conv2DTranspose,
DepthwiseConv2D and SeparableConv2D (kernels laid out as in Keras)."""
from __future__ import annotations

import functools
import warnings

import jax.numpy as jnp
import numpy as np
from jax import lax

from hybridnet import activations, regularizers, utils
from hybridnet.layers.base import Layer

_KERNEL_CHOICES = ("xla", "pallas", "auto")


# ------------------------------------------------------------------ helpers shared by
# the spatial layers (pooling, padding) of this package.
def _owner(layer: Layer) -> str:
    return f"Layer '{layer.name}' ({type(layer).__name__})"


def _check_rank(layer: Layer, input_shape, rank: int, what: str = "") -> None:
    """Raises a Keras-style ValueError unless ``input_shape`` is one shape of ``rank``."""
    if isinstance(input_shape, list):
        raise ValueError(f"{_owner(layer)} expects a single input. "
                         f"Received: {len(input_shape)} inputs")
    if len(input_shape) != rank:
        raise ValueError(f"{_owner(layer)} expects inputs of rank {rank}{what}. "
                         f"Received: input.shape={tuple(input_shape)}")


def resolve_kernel(layer: Layer, ok: bool, why: str, backend: str) -> bool:
    """Whether ``layer`` (with ``kernel="pallas"|"auto"``) runs its Pallas kernel, given the
    kernel's support check: "pallas" raises if unsupported; "auto" uses it on GPU/TPU where
    supported and otherwise falls back to XLA (with a one-line note off the CPU)."""
    if layer.kernel_impl == "pallas" and not ok:
        raise ValueError(f"{_owner(layer)}: kernel='pallas' cannot run this layer: {why}")
    use = ok and (layer.kernel_impl == "pallas" or backend != "cpu")
    if layer.kernel_impl == "auto" and not ok and backend != "cpu":
        warnings.warn(f"{_owner(layer)}: kernel='auto' falls back to XLA: {why}", stacklevel=3)
    layer._resolved_kernel = "pallas" if use else "xla"
    return use


def _normalize_padding(layer: Layer, padding) -> str:
    value = padding.lower() if isinstance(padding, str) else padding
    if value not in ("valid", "same"):
        raise ValueError(f"{_owner(layer)}: `padding` must be 'valid' or 'same'. "
                         f"Received: padding={padding!r}")
    return value


def _normalize_data_format(layer: Layer, data_format) -> str:
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{_owner(layer)}: only data_format='channels_last' is supported. "
                         f"Received: data_format={data_format!r}")
    return "channels_last"


def _window_output_length(n, window: int, stride: int, padding: str, dilation: int = 1):
    """Output length of a conv/pool window along one axis; None stays None."""
    if n is None:
        return None
    if padding == "same":
        return -(-n // stride)  # ceil(n / stride)
    effective = dilation * (window - 1) + 1
    return (n - effective) // stride + 1


class Conv2D(Layer):
    """2D convolution over NHWC images: ``activation(conv(x, kernel) + bias)``.

    The kernel has shape ``(kh, kw, in_channels, filters)`` (HWIO), as in Keras.

    Args:
        filters: number of output channels.
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw); ``strides > 1`` cannot be combined with
            ``dilation_rate > 1``.
        padding: ``"valid"`` or ``"same"`` (XLA/Keras SAME: extra padding at the end).
        dilation_rate: int or (dh, dw).
        activation: activation name or callable; None for linear.
        use_bias: add a bias vector.
        kernel_initializer, bias_initializer: initializer names.
        kernel: implementation, ``"xla"`` (``lax.conv_general_dilated``),
            ``"pallas"`` or ``"auto"``; see :meth:`_conv`.

    Example:
        >>> x = Input((28, 28, 1))
        >>> y = Conv2D(32, 3, padding="same", activation="relu")(x)  # (None, 28, 28, 32)
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding="valid",
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel="xla",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters <= 0:
            raise ValueError(f"{owner}: `filters` must be a positive int. "
                             f"Received: filters={filters!r}")
        self.filters = int(filters)
        self.kernel_size = utils.normalize_tuple(kernel_size, 2, "kernel_size", owner)
        self.strides = utils.normalize_tuple(strides, 2, "strides", owner)
        self.dilation_rate = utils.normalize_tuple(dilation_rate, 2, "dilation_rate", owner)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{owner}: `strides > 1` not supported in conjunction with "
                             f"`dilation_rate > 1`. Received: strides={self.strides} and "
                             f"dilation_rate={self.dilation_rate}")
        self.padding = _normalize_padding(self, padding)
        self.data_format = _normalize_data_format(self, data_format)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        if kernel not in _KERNEL_CHOICES:
            raise ValueError(f"{owner}: `kernel` must be one of {_KERNEL_CHOICES}. "
                             f"Received: kernel={kernel!r}")
        self.kernel_impl = kernel

    def _check_input(self, input_shape):
        _check_rank(self, input_shape, 4, " (batch, height, width, channels)")
        if input_shape[-1] is None:
            raise ValueError(f"{_owner(self)} needs a known channel dimension. "
                             f"Received: input.shape={tuple(input_shape)}")
        if self.built and input_shape[-1] != self.input_shape[-1]:
            raise ValueError(f"{_owner(self)} expects inputs with {self.input_shape[-1]} "
                             f"channels. Received: input.shape={tuple(input_shape)}")
        self.compute_output_shape(input_shape)  # raises on empty outputs

    def build(self, input_shape):
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(shape=(kh, kw, input_shape[-1], self.filters),
                                      initializer=self.kernel_initializer, name="kernel",
                                      axes=("kernel_h", "kernel_w", "conv_in", "conv_out"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", axes=("conv_out",))
        if self.kernel_impl == "pallas":
            from hybridnet import kernels
            ok, why = kernels.supports_conv2d(
                None, self.kernel.shape, dtype=self.dtype, strides=self.strides,
                padding=self.padding, dilation_rate=self.dilation_rate,
                activation=self._fused_activation())
            if not ok:
                raise ValueError(f"{_owner(self)}: kernel='pallas' cannot run this layer: {why}")

    @property
    def kernel_choice(self) -> str:
        """The implementation in use: "xla", "pallas", or "auto" until first traced."""
        return getattr(self, "_resolved_kernel", None) or self.kernel_impl

    def _fused_activation(self):
        """The activation the Pallas kernel fuses ("relu"), or None."""
        return "relu" if self.activation is activations.relu else None

    def _use_pallas(self, x) -> bool:
        """Resolves ``kernel=`` for this input: raises under "pallas" if the kernel cannot
        run it; under "auto" uses Pallas on GPU/TPU where supported, else XLA."""
        if self.kernel_impl == "xla":
            self._resolved_kernel = "xla"
            return False
        from hybridnet import kernels
        backend = kernels.current_backend()
        ok, why = kernels.supports_conv2d(
            tuple(x.shape), self.kernel.shape, dtype=x.dtype,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            activation=self._fused_activation(), backend=backend)
        return resolve_kernel(self, ok, why, backend)

    def _conv(self, x, w):
        """The XLA convolution without bias/activation: NHWC ``x`` with HWIO ``w``."""
        return lax.conv_general_dilated(
            x, w, window_strides=self.strides, padding=self.padding.upper(),
            rhs_dilation=self.dilation_rate, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def call(self, inputs):
        x = inputs
        w = self.kernel.value.astype(x.dtype)
        if self._use_pallas(x):
            from hybridnet import kernels
            fused = self._fused_activation()
            conv = functools.partial(kernels.conv2d, strides=self.strides, padding=self.padding,
                                     activation=fused)
            bias = self.bias.value if self.use_bias else None
            y = kernels.per_shard(conv, x.shape[0])(x, w, bias)
            return y if fused else self.activation(y)
        y = self._conv(x, w)
        if self.use_bias:
            y = y + self.bias.value
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        out = [input_shape[0]]
        for i in range(2):
            n = _window_output_length(input_shape[1 + i], self.kernel_size[i], self.strides[i],
                                      self.padding, self.dilation_rate[i])
            if n is not None and n <= 0:
                raise ValueError(
                    f"{_owner(self)}: computed output size would be zero or negative. "
                    f"Received: input.shape={tuple(input_shape)}, kernel_size={self.kernel_size}, "
                    f"strides={self.strides}, dilation_rate={self.dilation_rate}, "
                    f"padding={self.padding!r}")
            out.append(n)
        return tuple(out) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": list(self.dilation_rate),
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer, "kernel": self.kernel_impl,
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


# ------------------------------------------------------------ the other convolutions
def _positive_int(layer: Layer, value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{_owner(layer)}: `{name}` must be a positive int. "
                         f"Received: {name}={value!r}")
    return int(value)


def _no_strided_dilation(layer: Layer, strides, dilation_rate) -> None:
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(f"{_owner(layer)}: `strides > 1` not supported in conjunction with "
                         f"`dilation_rate > 1`. Received: strides={strides} and "
                         f"dilation_rate={dilation_rate}")


def _check_conv_input(layer: Layer, input_shape, rank: int, what: str) -> None:
    """Rank, a known channel dimension, the channels the layer was built for, and a
    non-empty output."""
    _check_rank(layer, input_shape, rank, what)
    if input_shape[-1] is None:
        raise ValueError(f"{_owner(layer)} needs a known channel dimension. "
                         f"Received: input.shape={tuple(input_shape)}")
    if layer.built and input_shape[-1] != layer.input_shape[-1]:
        raise ValueError(f"{_owner(layer)} expects inputs with {layer.input_shape[-1]} "
                         f"channels. Received: input.shape={tuple(input_shape)}")
    layer.compute_output_shape(input_shape)


def _conv_output_shape(layer: Layer, input_shape, channels: int) -> tuple:
    """Output shape of a channels_last convolution window (``"causal"`` sizes as "same")."""
    padding = "same" if layer.padding == "causal" else layer.padding
    out = [input_shape[0]]
    for i, k in enumerate(layer.kernel_size):
        n = _window_output_length(input_shape[1 + i], k, layer.strides[i], padding,
                                  layer.dilation_rate[i])
        if n is not None and n <= 0:
            raise ValueError(
                f"{_owner(layer)}: computed output size would be zero or negative. "
                f"Received: input.shape={tuple(input_shape)}, kernel_size={layer.kernel_size}, "
                f"strides={layer.strides}, dilation_rate={layer.dilation_rate}, "
                f"padding={layer.padding!r}")
        out.append(n)
    return tuple(out) + (channels,)


def _conv_config(layer: Layer) -> dict:
    return {"kernel_size": list(layer.kernel_size), "strides": list(layer.strides),
            "padding": layer.padding, "data_format": layer.data_format,
            "dilation_rate": list(layer.dilation_rate),
            "activation": activations.serialize(layer.activation), "use_bias": layer.use_bias,
            "bias_initializer": layer.bias_initializer}


class Conv1D(Layer):
    """1D convolution over (batch, steps, channels): ``activation(conv(x, kernel) + bias)``.

    The kernel has shape ``(kernel_size, in_channels // groups, filters)``, as in Keras.

    Args:
        filters: number of output channels.
        kernel_size: int or (k,).
        strides: int or (s,); ``strides > 1`` cannot be combined with ``dilation_rate > 1``.
        padding: ``"valid"``, ``"same"`` or ``"causal"`` (output ``t`` sees inputs ``<= t``).
        dilation_rate: int or (d,).
        groups: split the channels into this many groups convolved separately.
        activation: activation name or callable; None for linear.
        use_bias: add a bias vector.
        kernel_initializer, bias_initializer: initializer names.

    Example:
        >>> Conv1D(32, 3, padding="causal")(Input((10, 8)))  # (None, 10, 32)
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups: int = 1, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.filters = _positive_int(self, filters, "filters")
        self.groups = _positive_int(self, groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"{owner}: the number of filters must be evenly divisible by the "
                             f"number of groups. Received: groups={groups}, filters={filters}")
        self.kernel_size = utils.normalize_tuple(kernel_size, 1, "kernel_size", owner)
        self.strides = utils.normalize_tuple(strides, 1, "strides", owner)
        self.dilation_rate = utils.normalize_tuple(dilation_rate, 1, "dilation_rate", owner)
        _no_strided_dilation(self, self.strides, self.dilation_rate)
        value = padding.lower() if isinstance(padding, str) else padding
        if value not in ("valid", "same", "causal"):
            raise ValueError(f"{owner}: `padding` must be 'valid', 'same' or 'causal'. "
                             f"Received: padding={padding!r}")
        self.padding = value
        self.data_format = _normalize_data_format(self, data_format)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def _check_input(self, input_shape):
        _check_conv_input(self, input_shape, 3, " (batch, steps, channels)")
        if input_shape[-1] % self.groups:
            raise ValueError(f"{_owner(self)}: the number of input channels must be evenly "
                             f"divisible by the number of groups. Received: "
                             f"groups={self.groups}, input.shape={tuple(input_shape)}")

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(self.kernel_size[0], input_shape[-1] // self.groups, self.filters),
            initializer=self.kernel_initializer, name="kernel",
            axes=("kernel_w", "conv_in", "conv_out"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", axes=("conv_out",))

    def call(self, inputs):
        x, padding = inputs, self.padding.upper()
        if self.padding == "causal":
            x = jnp.pad(x, ((0, 0), (self.dilation_rate[0] * (self.kernel_size[0] - 1), 0),
                            (0, 0)))
            padding = "VALID"
        y = lax.conv_general_dilated(
            x, self.kernel.value.astype(x.dtype), window_strides=self.strides, padding=padding,
            rhs_dilation=self.dilation_rate, dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups)
        if self.use_bias:
            y = y + self.bias.value.astype(y.dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return _conv_output_shape(self, input_shape, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **_conv_config(self),
                "groups": self.groups, "kernel_initializer": self.kernel_initializer}


def _non_negative_pair(layer: Layer, value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  and v >= 0 for v in value):
        raise ValueError(f"{_owner(layer)}: `{name}` must be an int or a tuple of 2 "
                         f"non-negative ints. Received: {name}={value!r}")
    return int(value[0]), int(value[1])


def _transpose_pads(kernel: int, stride: int, dilation: int, padding: str,
                    output_padding: int | None) -> tuple[int, int]:
    """Keras's (JAX backend) padding of the stride-dilated input of a transposed conv."""
    k = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        return k - 1, k - 1 + extra
    total = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(total // 2 + total % 2, k - 1)
    return left, total - left


def _transpose_length(n, kernel: int, stride: int, dilation: int, padding: str,
                      output_padding: int | None):
    if n is None:
        return None
    left, right = _transpose_pads(kernel, stride, dilation, padding, output_padding)
    return (n - 1) * stride + 1 + left + right - (kernel - 1) * dilation


class Conv2DTranspose(Layer):
    """Transposed 2D convolution (the gradient of Conv2D with respect to its input).

    The kernel has shape ``(kh, kw, filters, in_channels)``, as in Keras. Output sizes
    follow Keras: ``"same"`` gives ``input * strides``, ``"valid"`` gives
    ``(input - 1) * strides + max(kernel, strides)``, unless ``output_padding`` is given.

    Args:
        filters: number of output channels.
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw); ``strides > 1`` cannot be combined with
            ``dilation_rate > 1``.
        padding: ``"valid"`` or ``"same"``.
        output_padding: None, int or (ph, pw), each less than its stride: extra rows and
            columns at the end of the output.
        dilation_rate: int or (dh, dw).
        activation, use_bias, kernel_initializer, bias_initializer: as in Conv2D.

    Example:
        >>> Conv2DTranspose(8, 3, strides=2, padding="same")(Input((7, 7, 16)))  # (None, 14, 14, 8)
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias: bool = True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.filters = _positive_int(self, filters, "filters")
        self.kernel_size = utils.normalize_tuple(kernel_size, 2, "kernel_size", owner)
        self.strides = utils.normalize_tuple(strides, 2, "strides", owner)
        self.dilation_rate = utils.normalize_tuple(dilation_rate, 2, "dilation_rate", owner)
        self.padding = _normalize_padding(self, padding)
        self.output_padding = (None if output_padding is None
                               else _non_negative_pair(self, output_padding, "output_padding"))
        if self.output_padding is not None and any(
                p >= s for p, s in zip(self.output_padding, self.strides)):
            raise ValueError(f"{owner}: `output_padding` must be strictly less than `strides` "
                             f"for all dimensions. Received: output_padding="
                             f"{self.output_padding}, strides={self.strides}")
        _no_strided_dilation(self, self.strides, self.dilation_rate)
        self.data_format = _normalize_data_format(self, data_format)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def _check_input(self, input_shape):
        _check_conv_input(self, input_shape, 4, " (batch, height, width, channels)")

    def build(self, input_shape):
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(shape=(kh, kw, self.filters, input_shape[-1]),
                                      initializer=self.kernel_initializer, name="kernel",
                                      axes=("kernel_h", "kernel_w", "conv_out", "conv_in"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", axes=("conv_out",))

    def _pads(self):
        return [_transpose_pads(k, s, d, self.padding,
                                None if self.output_padding is None else self.output_padding[i])
                for i, (k, s, d) in enumerate(zip(self.kernel_size, self.strides,
                                                  self.dilation_rate))]

    def call(self, inputs):
        y = lax.conv_transpose(inputs, self.kernel.value.astype(inputs.dtype), self.strides,
                               padding=self._pads(), rhs_dilation=self.dilation_rate,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               transpose_kernel=True)
        if self.use_bias:
            y = y + self.bias.value.astype(y.dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        sizes = [_transpose_length(input_shape[1 + i], k, s, d, self.padding,
                                   None if self.output_padding is None
                                   else self.output_padding[i])
                 for i, (k, s, d) in enumerate(zip(self.kernel_size, self.strides,
                                                   self.dilation_rate))]
        return (input_shape[0], *sizes, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **_conv_config(self),
                "output_padding": (None if self.output_padding is None
                                   else list(self.output_padding)),
                "kernel_initializer": self.kernel_initializer}


def _same_pads(n: int, window: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME" padding of one axis (the extra row at the end)."""
    total = max((-(-n // stride) - 1) * stride + window - n, 0)
    return total // 2, total - total // 2


def _depthwise(x, kernel, strides, padding: str, dilation_rate):
    """Per-channel convolution: NHWC ``x`` with a ``(kh, kw, C, M)`` kernel -> C*M channels
    (output channel ``c * M + m``, as Keras).

    Written as a sum of shifted products rather than a grouped convolution: XLA's SPMD
    partitioner (jax 0.10) gets the kernel gradient of a ``feature_group_count``
    convolution wrong, by the model-axis size, when its output is replicated over that
    axis and feeds a model-sharded layer.
    """
    kh, kw, c, m = kernel.shape
    x = jnp.repeat(x, m, axis=-1) if m > 1 else x
    w = kernel.reshape(kh, kw, c * m)
    (sh, sw), (dh, dw) = strides, dilation_rate
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if padding == "same":
        x = jnp.pad(x, ((0, 0), _same_pads(x.shape[1], eh, sh), _same_pads(x.shape[2], ew, sw),
                        (0, 0)))
    oh, ow = (x.shape[1] - eh) // sh + 1, (x.shape[2] - ew) // sw + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(x, (0, i * dh, j * dw, 0),
                               (x.shape[0], i * dh + (oh - 1) * sh + 1,
                                j * dw + (ow - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1))
            out = out + window * w[i, j]
    return out


class DepthwiseConv2D(Layer):
    """Depthwise 2D convolution: each input channel convolved with its own
    ``depth_multiplier`` filters (output channels ``in_channels * depth_multiplier``).

    The kernel has shape ``(kh, kw, in_channels, depth_multiplier)``, as in Keras.

    Args:
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw).
        padding: ``"valid"`` or ``"same"``.
        depth_multiplier: filters per input channel.
        dilation_rate: int or (dh, dw).
        activation, use_bias, bias_initializer: as in Conv2D.
        depthwise_initializer: initializer name of the kernel.

    Example:
        >>> DepthwiseConv2D(3, depth_multiplier=2)(Input((8, 8, 4)))  # (None, 6, 6, 8)
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier: int = 1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias: bool = True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.depth_multiplier = _positive_int(self, depth_multiplier, "depth_multiplier")
        self.kernel_size = utils.normalize_tuple(kernel_size, 2, "kernel_size", owner)
        self.strides = utils.normalize_tuple(strides, 2, "strides", owner)
        self.dilation_rate = utils.normalize_tuple(dilation_rate, 2, "dilation_rate", owner)
        self.padding = _normalize_padding(self, padding)
        self.data_format = _normalize_data_format(self, data_format)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = depthwise_initializer
        self.bias_initializer = bias_initializer

    def _check_input(self, input_shape):
        _check_conv_input(self, input_shape, 4, " (batch, height, width, channels)")

    def build(self, input_shape):
        kh, kw = self.kernel_size
        channels = input_shape[-1]
        # No model-sharded axes: tensor parallelism leaves this layer replicated.
        self.kernel = self.add_weight(shape=(kh, kw, channels, self.depth_multiplier),
                                      initializer=self.depthwise_initializer, name="kernel",
                                      axes=("kernel_h", "kernel_w", "conv_in",
                                            "depth_multiplier"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(channels * self.depth_multiplier,),
                                        initializer=self.bias_initializer, name="bias",
                                        axes=("depthwise_out",))

    def call(self, inputs):
        y = _depthwise(inputs, self.kernel.value.astype(inputs.dtype), self.strides,
                       self.padding, self.dilation_rate)
        if self.use_bias:
            y = y + self.bias.value.astype(y.dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return _conv_output_shape(self, input_shape, input_shape[-1] * self.depth_multiplier)

    def get_config(self):
        return {**super().get_config(), **_conv_config(self),
                "depth_multiplier": self.depth_multiplier,
                "depthwise_initializer": self.depthwise_initializer}


class SeparableConv2D(Layer):
    """Depthwise separable 2D convolution: a DepthwiseConv2D then a 1x1 convolution to
    ``filters`` channels, then bias and activation.

    Weights, in Keras's order: ``depthwise_kernel`` ``(kh, kw, in_channels,
    depth_multiplier)``, ``pointwise_kernel`` ``(1, 1, in_channels * depth_multiplier,
    filters)``, ``bias`` ``(filters,)``.

    Args:
        filters: number of output channels.
        kernel_size: int or (kh, kw) of the depthwise step.
        strides, padding, dilation_rate: of the depthwise step.
        depth_multiplier: depthwise filters per input channel.
        activation, use_bias, bias_initializer: as in Conv2D.
        depthwise_initializer, pointwise_initializer: initializer names.

    Example:
        >>> SeparableConv2D(16, 3, padding="same")(Input((8, 8, 4)))  # (None, 8, 8, 16)
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding="valid",
                 data_format=None, dilation_rate=(1, 1), depth_multiplier: int = 1,
                 activation=None, use_bias: bool = True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        owner = _owner(self)
        self.filters = _positive_int(self, filters, "filters")
        self.depth_multiplier = _positive_int(self, depth_multiplier, "depth_multiplier")
        self.kernel_size = utils.normalize_tuple(kernel_size, 2, "kernel_size", owner)
        self.strides = utils.normalize_tuple(strides, 2, "strides", owner)
        self.dilation_rate = utils.normalize_tuple(dilation_rate, 2, "dilation_rate", owner)
        self.padding = _normalize_padding(self, padding)
        self.data_format = _normalize_data_format(self, data_format)
        self.activation = activations.get(activation, owner=owner)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = depthwise_initializer
        self.pointwise_initializer = pointwise_initializer
        self.bias_initializer = bias_initializer

    def _check_input(self, input_shape):
        _check_conv_input(self, input_shape, 4, " (batch, height, width, channels)")

    def build(self, input_shape):
        kh, kw = self.kernel_size
        channels = input_shape[-1]
        self.depthwise_kernel = self.add_weight(
            shape=(kh, kw, channels, self.depth_multiplier),
            initializer=self.depthwise_initializer, name="depthwise_kernel",
            axes=("kernel_h", "kernel_w", "conv_in", "depth_multiplier"))
        self.pointwise_kernel = self.add_weight(
            shape=(1, 1, channels * self.depth_multiplier, self.filters),
            initializer=self.pointwise_initializer, name="pointwise_kernel",
            axes=("kernel_h", "kernel_w", "conv_in", "conv_out"))
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", axes=("conv_out",))

    def call(self, inputs):
        x = _depthwise(inputs, self.depthwise_kernel.value.astype(inputs.dtype), self.strides,
                       self.padding, self.dilation_rate)
        y = lax.conv_general_dilated(x, self.pointwise_kernel.value.astype(x.dtype), (1, 1),
                                     "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.bias.value.astype(y.dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return _conv_output_shape(self, input_shape, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **_conv_config(self),
                "depth_multiplier": self.depth_multiplier,
                "depthwise_initializer": self.depthwise_initializer,
                "pointwise_initializer": self.pointwise_initializer}
