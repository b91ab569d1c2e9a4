"""Convolution layers: Conv2D (NHWC inputs, HWIO kernels)."""
from __future__ import annotations

import functools
import warnings

import numpy as np
from jax import lax

from hybridnet import activations, utils
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
    if layer.kernel == "pallas" and not ok:
        raise ValueError(f"{_owner(layer)}: kernel='pallas' cannot run this layer: {why}")
    use = ok and (layer.kernel == "pallas" or backend != "cpu")
    if layer.kernel == "auto" and not ok and backend != "cpu":
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
        raise ValueError(f"{_owner(layer)}: only data_format='channels_last' (NHWC) is "
                         f"supported. Received: data_format={data_format!r}")
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
                 **kwargs):
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
        if kernel not in _KERNEL_CHOICES:
            raise ValueError(f"{owner}: `kernel` must be one of {_KERNEL_CHOICES}. "
                             f"Received: kernel={kernel!r}")
        self.kernel = kernel

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
        self.add_weight("kernel", (kh, kw, input_shape[-1], self.filters),
                        self.kernel_initializer,
                        axes=("kernel_h", "kernel_w", "conv_in", "conv_out"))
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer, axes=("conv_out",))
        if self.kernel == "pallas":
            from hybridnet import kernels
            ok, why = kernels.supports_conv2d(
                None, self.weight_specs["kernel"].shape, dtype=self.dtype, strides=self.strides,
                padding=self.padding, dilation_rate=self.dilation_rate,
                activation=self._fused_activation())
            if not ok:
                raise ValueError(f"{_owner(self)}: kernel='pallas' cannot run this layer: {why}")

    @property
    def kernel_choice(self) -> str:
        """The implementation in use: "xla", "pallas", or "auto" until first traced."""
        return getattr(self, "_resolved_kernel", None) or self.kernel

    def _fused_activation(self):
        """The activation the Pallas kernel fuses ("relu"), or None."""
        return "relu" if self.activation is activations.relu else None

    def _use_pallas(self, x) -> bool:
        """Resolves ``kernel=`` for this input: raises under "pallas" if the kernel cannot
        run it; under "auto" uses Pallas on GPU/TPU where supported, else XLA."""
        if self.kernel == "xla":
            self._resolved_kernel = "xla"
            return False
        from hybridnet import kernels
        backend = kernels.current_backend()
        ok, why = kernels.supports_conv2d(
            tuple(x.shape), self.weight_specs["kernel"].shape, dtype=x.dtype,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            activation=self._fused_activation(), backend=backend)
        return resolve_kernel(self, ok, why, backend)

    def _conv(self, x, w):
        """The XLA convolution without bias/activation: NHWC ``x`` with HWIO ``w``."""
        return lax.conv_general_dilated(
            x, w, window_strides=self.strides, padding=self.padding.upper(),
            rhs_dilation=self.dilation_rate, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def call(self, weights, x):
        w = weights["kernel"].astype(x.dtype)
        if self._use_pallas(x):
            from hybridnet import kernels
            fused = self._fused_activation()
            conv = functools.partial(kernels.conv2d, strides=self.strides, padding=self.padding,
                                     activation=fused)
            bias = weights["bias"] if self.use_bias else None
            y = kernels.per_shard(conv, x.shape[0])(x, w, bias)
            return y if fused else self.activation(y)
        y = self._conv(x, w)
        if self.use_bias:
            y = y + weights["bias"]
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
                "bias_initializer": self.bias_initializer, "kernel": self.kernel}
