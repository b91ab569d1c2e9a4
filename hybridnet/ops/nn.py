"""Neural-network ops (``keras.ops.nn``): activations, convolutions, pooling, losses, normalisation.

Images are channels_last by default (``data_format=None`` means ``"channels_last"``).
"""
from __future__ import annotations

import math as _math
import warnings

import jax
import jax.numpy as jnp
from jax import lax

from hybridnet.ops.core import EPSILON, FLOATX, cast, convert_to_tensor, result_type, standardize_dtype

_t = convert_to_tensor


def _named(fn, name, doc):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.__module__ = __name__
    return fn


def _activation(name, jfn):
    def op(x):
        return jfn(_t(x))
    return _named(op, name, f"The ``{name}`` activation, element-wise.")


_ACTIVATIONS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "sigmoid": jax.nn.sigmoid,
                "sparse_sigmoid": jax.nn.sparse_sigmoid, "softplus": jax.nn.softplus,
                "softsign": jax.nn.soft_sign, "sparse_plus": jax.nn.sparse_plus, "silu": jax.nn.silu,
                "log_sigmoid": jax.nn.log_sigmoid, "hard_sigmoid": jax.nn.hard_sigmoid,
                "hard_silu": jax.nn.hard_silu, "selu": jax.nn.selu, "hard_tanh": jax.nn.hard_tanh,
                "tanh_shrink": lambda x: x - jnp.tanh(x)}
for _n, _f in _ACTIVATIONS.items():
    globals()[_n] = _activation(_n, _f)
del _n, _f

swish = silu  # noqa: F821
hard_swish = hard_silu  # noqa: F821


def squareplus(x, b=4):
    """Squareplus: ``(x + sqrt(x**2 + b)) / 2``."""
    return jax.nn.squareplus(_t(x), b=b)


def leaky_relu(x, negative_slope=0.2):
    """Leaky ReLU: ``x`` if positive, else ``negative_slope * x``."""
    return jax.nn.leaky_relu(_t(x), negative_slope=negative_slope)


def elu(x, alpha=1.0):
    """Exponential linear unit."""
    return jax.nn.elu(_t(x), alpha=alpha)


def celu(x, alpha=1.0):
    """Continuously differentiable exponential linear unit."""
    return jax.nn.celu(_t(x), alpha=alpha)


def gelu(x, approximate=True):
    """Gaussian error linear unit (tanh approximation by default)."""
    return jax.nn.gelu(_t(x), approximate)


def glu(x, axis=-1):
    """Gated linear unit: halves of ``x`` along ``axis``, ``a * sigmoid(b)``."""
    return jax.nn.glu(_t(x), axis=axis)


def soft_shrink(x, threshold=0.5):
    """Shrinks values towards zero by ``threshold``; zero inside ``[-threshold, threshold]``."""
    x = _t(x)
    return jnp.where(x > threshold, x - threshold, jnp.where(x < -threshold, x + threshold, 0.0))


def hard_shrink(x, threshold=0.5):
    """``x`` where ``|x| > threshold``, else zero."""
    x = _t(x)
    return jnp.where(jnp.abs(x) > threshold, x, 0.0)


def threshold(x, threshold, default_value):
    """``x`` where ``x > threshold``, else ``default_value``."""
    x = _t(x)
    return jnp.where(x > threshold, x, default_value)


def _over_axes(fn, x, axis):
    # Applies a last-axis function over several axes by flattening them together.
    keep = [a for a in range(x.ndim) if a not in axis]
    moved = jnp.transpose(x, (*keep, *axis))
    out = fn(jnp.reshape(moved, (*[x.shape[a] for a in keep], -1)), axis=-1)
    order = [*keep, *axis]
    return jnp.transpose(jnp.reshape(out, moved.shape), sorted(range(len(order)), key=order.__getitem__))


def softmax(x, axis=-1):
    """Softmax of ``x`` along ``axis`` (an int or a tuple of axes)."""
    x = _t(x)
    if isinstance(axis, int) and -x.ndim <= axis < x.ndim and x.shape[axis] == 1:
        warnings.warn(f"You are using a softmax over axis {axis} of a tensor of shape {x.shape}. This axis has "
                      "size 1. The softmax operation will always return the value 1, which is likely not what "
                      "you intended. Did you mean to use a sigmoid instead?", stacklevel=2)
    if isinstance(axis, tuple):
        return _over_axes(jax.nn.softmax, x, axis)
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    """Log of the softmax of ``x`` along ``axis`` (an int or a tuple of axes)."""
    x = _t(x)
    if isinstance(axis, tuple):
        return _over_axes(jax.nn.log_softmax, x, axis)
    return jax.nn.log_softmax(x, axis=axis)


def sparsemax(x, axis=-1):
    """Sparsemax: the Euclidean projection of ``x`` onto the probability simplex along ``axis``."""
    x = _t(x)
    srt = -jnp.sort(-x, axis=axis)
    csum = jnp.cumsum(srt, axis=axis)
    r_shape = [1] * x.ndim
    r_shape[axis] = -1
    r = jnp.arange(1, x.shape[axis] + 1).reshape(r_shape)
    support = srt - (csum - 1) / r > 0
    k = jnp.sum(support, axis=axis, keepdims=True)
    tau = (jnp.sum(jnp.where(support, csum, 0.0), axis=axis, keepdims=True) - 1) / k
    return jnp.maximum(x - tau, 0.0)


# Convolution and pooling.

def _data_format(data_format, op):
    data_format = (data_format or "channels_last").lower()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"{op}: `data_format` must be 'channels_last' or 'channels_first'. "
                         f"Received: data_format={data_format!r}")
    return data_format


def _padding(padding, op):
    p = padding.lower()
    if p not in ("valid", "same"):
        raise ValueError(f"{op}: `padding` must be 'valid' or 'same'. Received: padding={padding!r}")
    return p


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _dimension_numbers(n, data_format):
    spatial = tuple(range(1, n + 1)) if data_format == "channels_last" else tuple(range(2, n + 2))
    lhs = (0, n + 1) + spatial if data_format == "channels_last" else (0, 1) + spatial
    rhs = (n + 1, n) + tuple(range(n))
    return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def _channels(x, data_format):
    return x.shape[-1] if data_format == "channels_last" else x.shape[1]


def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """N-D convolution (1-D to 3-D); ``kernel`` is ``spatial + (in_channels, out_channels)``.

    Grouped convolution follows from ``inputs``' channels being a multiple of the kernel's.
    """
    data_format, padding = _data_format(data_format, "conv"), _padding(padding, "conv")
    kernel = _t(kernel)
    inputs = _t(inputs, dtype=kernel.dtype)
    n = inputs.ndim - 2
    channels, k_in = _channels(inputs, data_format), kernel.shape[-2]
    if channels % k_in:
        raise ValueError("conv: the input channels must be a multiple of the kernel's in_channels. "
                         f"Received: inputs.shape={inputs.shape}, kernel.shape={kernel.shape}")
    out = lax.conv_general_dilated(inputs, kernel, _tuple(strides, n), padding.upper(),
                                   rhs_dilation=_tuple(dilation_rate, n),
                                   dimension_numbers=_dimension_numbers(n, data_format),
                                   feature_group_count=channels // k_in)
    if out.size == 0 and inputs.size != 0:
        raise ValueError("conv: the output is empty; the input is too small for the kernel, strides, dilation "
                         f"and padding. Received: inputs.shape={inputs.shape}, kernel.shape={kernel.shape}")
    return out


def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """Depthwise convolution; ``kernel`` is ``spatial + (in_channels, depth_multiplier)``."""
    data_format, padding = _data_format(data_format, "depthwise_conv"), _padding(padding, "depthwise_conv")
    inputs, kernel = _t(inputs), _t(kernel)
    n = inputs.ndim - 2
    channels = _channels(inputs, data_format)
    if channels != kernel.shape[-2]:
        raise ValueError("depthwise_conv: the input channels must equal the kernel's in_channels. "
                         f"Received: inputs.shape={inputs.shape}, kernel.shape={kernel.shape}")
    kernel = jnp.reshape(kernel, kernel.shape[:-2] + (1, channels * kernel.shape[-1]))
    return lax.conv_general_dilated(inputs, kernel, _tuple(strides, n), padding.upper(),
                                    rhs_dilation=_tuple(dilation_rate, n),
                                    dimension_numbers=_dimension_numbers(n, data_format),
                                    feature_group_count=channels)


def separable_conv(inputs, depthwise_kernel, pointwise_kernel, strides=1, padding="valid", data_format=None,
                   dilation_rate=1):
    """A depthwise convolution followed by a pointwise (1x1) convolution."""
    out = depthwise_conv(inputs, depthwise_kernel, strides, padding, data_format, dilation_rate)
    return conv(out, pointwise_kernel, strides=1, padding="valid", data_format=data_format,
                dilation_rate=dilation_rate)


def _transpose_padding(kernel_size, stride, dilation, padding, output_padding):
    k = (kernel_size - 1) * dilation + 1
    if padding == "valid":
        output_padding = max(k, stride) - k if output_padding is None else output_padding
        return k - 1, k - 1 + output_padding
    total = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(total // 2 + total % 2, k - 1)
    return left, total - left


def conv_transpose(inputs, kernel, strides=1, padding="valid", output_padding=None, data_format=None,
                   dilation_rate=1):
    """Transposed convolution; ``kernel`` is ``spatial + (out_channels, in_channels)``."""
    data_format, padding = _data_format(data_format, "conv_transpose"), _padding(padding, "conv_transpose")
    inputs, kernel = _t(inputs), _t(kernel)
    n = inputs.ndim - 2
    if _channels(inputs, data_format) != kernel.shape[-1]:
        raise ValueError("conv_transpose: the input channels must equal the kernel's last dimension. "
                         f"Received: inputs.shape={inputs.shape}, kernel.shape={kernel.shape}")
    strides, dilation = _tuple(strides, n), _tuple(dilation_rate, n)
    out_pad = (output_padding,) * n if output_padding is None or isinstance(output_padding, int) \
        else tuple(output_padding)
    pads = [_transpose_padding(kernel.shape[i], strides[i], dilation[i], padding, out_pad[i]) for i in range(n)]
    return lax.conv_transpose(inputs, kernel, strides, padding=pads, rhs_dilation=dilation,
                              dimension_numbers=_dimension_numbers(n, data_format), transpose_kernel=True)


def _pool(inputs, init, reducer, pool_size, strides, padding, data_format):
    n = inputs.ndim - 2
    pool_size = _tuple(pool_size, n)
    strides = pool_size if strides is None else _tuple(strides, n)
    full = (lambda s: (1,) + s + (1,)) if data_format == "channels_last" else (lambda s: (1, 1) + s)
    window, strides = full(pool_size), full(strides)
    out = lax.reduce_window(inputs, init, reducer, window, strides, padding.upper())
    return out, window, strides


def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    """Max pooling over windows of ``pool_size`` (1-D to 3-D)."""
    data_format, padding = _data_format(data_format, "max_pool"), _padding(padding, "max_pool")
    inputs = _t(inputs)
    return _pool(inputs, -jnp.inf, lax.max, pool_size, strides, padding, data_format)[0]


def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    """Average pooling; with ``"same"`` padding the mean is over the valid entries only."""
    data_format, padding = _data_format(data_format, "average_pool"), _padding(padding, "average_pool")
    inputs = _t(inputs)
    summed, window, strides = _pool(inputs, 0.0, lax.add, pool_size, strides, padding, data_format)
    if padding == "valid":
        return summed / _math.prod(window)
    ones = jnp.ones([a if w != 1 else 1 for a, w in zip(inputs.shape, window)], inputs.dtype)
    counts = lax.reduce_window(ones, 0.0, lax.add, window, strides, "SAME")
    return summed / counts


def _adaptive_pool(inputs, output_size, data_format, reduce, op):
    data_format = _data_format(data_format, op)
    x = _t(inputs)
    n = x.ndim - 2
    if n not in (1, 2, 3):
        raise ValueError(f"{op}: inputs must be 3-D, 4-D or 5-D. Received: inputs.shape={x.shape}")
    out_sizes = _tuple(output_size, n)
    first = 1 if data_format == "channels_last" else 2
    for i, out in enumerate(out_sizes):
        axis, size = first + i, x.shape[first + i]
        parts = [reduce(lax.slice_in_dim(x, (j * size) // out, -(-((j + 1) * size) // out), axis=axis),
                        axis=axis, keepdims=True) for j in range(out)]
        x = jnp.concatenate(parts, axis=axis)
    return x


def adaptive_average_pool(inputs, output_size, data_format=None):
    """Average pooling to a fixed ``output_size`` (windows as in PyTorch's adaptive pooling)."""
    return _adaptive_pool(inputs, output_size, data_format, jnp.mean, "adaptive_average_pool")


def adaptive_max_pool(inputs, output_size, data_format=None):
    """Max pooling to a fixed ``output_size``."""
    return _adaptive_pool(inputs, output_size, data_format, jnp.max, "adaptive_max_pool")


# Encodings.

def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    """One-hot encodes the int tensor ``x`` into ``num_classes`` along ``axis`` (floatx by default)."""
    if sparse:
        raise ValueError(f"one_hot: sparse outputs are not supported. Received: sparse={sparse}")
    return jax.nn.one_hot(_t(x), num_classes, axis=axis, dtype=standardize_dtype(dtype) or FLOATX)


def multi_hot(inputs, num_classes=None, axis=-1, dtype=None, sparse=False, **kwargs):
    """Multi-hot encodes each row of ``inputs`` (a bag of class ids) into ``num_classes``."""
    if num_classes is None and "num_tokens" in kwargs:
        num_classes = kwargs.pop("num_tokens")
    if num_classes is None:
        raise ValueError("multi_hot: argument `num_classes` must be specified. Received: num_classes=None")
    if sparse:
        raise ValueError(f"multi_hot: sparse outputs are not supported. Received: sparse={sparse}")
    x = _t(inputs)
    reduction_axis = 1 if x.ndim > 1 else 0
    return jnp.max(one_hot(cast(x, "int32"), num_classes, axis=axis, dtype=dtype), axis=reduction_axis)


# Losses.

def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy between one-hot (or soft) ``target`` and probabilities (or logits) ``output``."""
    target, output = _t(target), _t(output)
    if target.shape != output.shape:
        raise ValueError("categorical_crossentropy: `target` and `output` must have the same shape. "
                         f"Received: target.shape={target.shape}, output.shape={output.shape}")
    if target.ndim < 1:
        raise ValueError("categorical_crossentropy: `target` and `output` must be at least rank 1. "
                         f"Received: target.shape={target.shape}, output.shape={output.shape}")
    return -jnp.sum(target * _log_probs(output, from_logits, axis), axis=axis)


def _log_probs(output, from_logits, axis):
    if from_logits:
        return jax.nn.log_softmax(output, axis=axis)
    output = output / jnp.sum(output, axis, keepdims=True)
    return jnp.log(jnp.clip(output, EPSILON, 1.0 - EPSILON))


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy between int class ids ``target`` and probabilities (or logits) ``output``."""
    target, output = _t(target, dtype="int32"), _t(output)
    if target.ndim == output.ndim and target.shape[-1] == 1:
        target = jnp.squeeze(target, axis=-1)
    if output.ndim < 1:
        raise ValueError(f"sparse_categorical_crossentropy: `output` must be at least rank 1. "
                         f"Received: output.shape={output.shape}")
    if target.shape != output.shape[:-1]:
        raise ValueError("sparse_categorical_crossentropy: `target` must have the shape of `output` without "
                         f"its last axis. Received: target.shape={target.shape}, output.shape={output.shape}")
    log_prob = _log_probs(output, from_logits, axis)
    return -jnp.sum(jax.nn.one_hot(target, output.shape[axis], axis=axis) * log_prob, axis=axis)


def binary_crossentropy(target, output, from_logits=False):
    """Element-wise binary crossentropy between ``target`` and probabilities (or logits) ``output``."""
    target, output = _t(target), _t(output)
    if target.shape != output.shape:
        raise ValueError("binary_crossentropy: `target` and `output` must have the same shape. "
                         f"Received: target.shape={target.shape}, output.shape={output.shape}")
    if from_logits:
        return -target * jax.nn.log_sigmoid(output) - (1.0 - target) * jax.nn.log_sigmoid(-output)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    return -(target * jnp.log(output) + (1.0 - target) * jnp.log(1.0 - output))


def ctc_loss(target, output, target_length, output_length, mask_index=0):
    """CTC loss per sequence: ``target`` (batch, max_label) ids, ``output`` (batch, time, classes) logits.

    ``mask_index`` is the blank class.
    """
    target = _t(target, dtype="int32")
    output = _t(output)
    output = cast(output, result_type(output.dtype, "float32"))
    target_length, output_length = _t(target_length, "int32"), _t(output_length, "int32")
    batch, max_time, num_classes = output.shape
    max_label = target.shape[1]
    neg = -1e5
    dt = output.dtype
    out_pad = (jnp.arange(max_time)[None, :] >= output_length[:, None]).astype(dt)
    logprobs = jax.nn.log_softmax(output)
    repeat = jnp.pad((target[:, :-1] == target[:, 1:]).astype(dt), ((0, 0), (0, 1)))
    logprobs_phi = jnp.transpose(logprobs[:, :, mask_index:mask_index + 1], (1, 0, 2))
    logprobs_emit = jnp.transpose(jnp.einsum("btk,bnk->btn", logprobs,
                                             jax.nn.one_hot(target, num_classes, dtype=dt)), (1, 0, 2))
    phi0 = jnp.full((batch, max_label + 1), neg, dt).at[:, 0].set(0.0)
    emit0 = jnp.full((batch, max_label), neg, dt)

    def add_to_phi(phi, score):
        return jnp.concatenate([phi[:, :1], jnp.logaddexp(phi[:, 1:], score)], axis=-1)

    def step(carry, xs):
        prev_phi, prev_emit = carry
        lp_emit, lp_phi, pad = xs
        phi = add_to_phi(prev_phi, prev_emit + neg * repeat)
        emit = jnp.logaddexp(phi[:, :-1] + lp_emit, prev_emit + lp_emit)
        nphi = add_to_phi(phi + lp_phi, prev_emit + lp_phi + neg * (1.0 - repeat))
        pad = pad[:, None]
        return (pad * prev_phi + (1.0 - pad) * nphi, pad * prev_emit + (1.0 - pad) * emit), None

    (phi, emit), _ = lax.scan(step, (phi0, emit0), (logprobs_emit, logprobs_phi, out_pad.T))
    phi = add_to_phi(phi, emit)
    label_lengths = jnp.sum(jnp.arange(max_label)[None, :] < target_length[:, None], axis=1)
    return -jnp.einsum("bn,bn->b", phi, jax.nn.one_hot(label_lengths, max_label + 1, dtype=dt))


# Normalisation.

def moments(x, axes, keepdims=False, synchronized=False):
    """Mean and variance of ``x`` over ``axes`` (half precision is computed in float32)."""
    if synchronized:
        raise NotImplementedError(f"moments: `synchronized=True` is not supported. Received: "
                                  f"synchronized={synchronized}")
    x = _t(x)
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    orig = standardize_dtype(x.dtype)
    half = orig in ("float16", "bfloat16")
    if half:
        x = cast(x, "float32")
    mean = jnp.mean(x, axes, keepdims=True)
    variance = jnp.var(x, axis=axes, keepdims=True)
    if not keepdims:
        mean, variance = jnp.squeeze(mean, axes), jnp.squeeze(variance, axes)
    if half:
        lim = jnp.finfo(jnp.float16)
        mean = cast(jnp.clip(mean, lim.min, lim.max), orig)
        variance = cast(jnp.clip(variance, lim.min, lim.max), orig)
    return mean, variance


def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=0.001):
    """Normalises ``x`` with the given per-channel statistics along ``axis``."""
    x, mean, variance = _t(x), _t(mean), _t(variance)
    shape = [1] * x.ndim
    shape[axis] = mean.shape[0]
    inv = lax.rsqrt(jnp.reshape(variance, shape) + epsilon)
    if scale is not None:
        inv = inv * jnp.reshape(_t(scale), shape)
    res = -jnp.reshape(mean, shape) * inv
    if offset is not None:
        res = res + jnp.reshape(_t(offset), shape)
    return jnp.add(x * inv, res)


def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None, **kwargs):
    """Layer normalisation over ``axis``, computed in at least float32."""
    rms_scaling = kwargs.pop("rms_scaling", False)
    if kwargs:
        raise TypeError(f"layer_normalization: unexpected arguments. Received: {sorted(kwargs)}")
    epsilon = EPSILON if epsilon is None else epsilon
    x = _t(x)
    orig = standardize_dtype(x.dtype)
    x = cast(x, result_type(x.dtype, "float32"))
    axis = sorted([axis] if isinstance(axis, int) else axis)
    bshape = [1] * x.ndim
    for a in axis:
        bshape[a] = x.shape[a]

    def bcast(v):
        if v is None:
            return None
        v = _t(v, x.dtype)
        return jnp.reshape(v, bshape) if v.ndim != x.ndim and axis != [x.ndim - 1] else v

    gamma, beta = bcast(gamma), bcast(beta)
    if rms_scaling:
        out = x * lax.rsqrt(jnp.var(x, axis=axis, keepdims=True) + epsilon)
        out = out if gamma is None else out * gamma
    else:
        mean, variance = moments(x, axes=axis, keepdims=True)
        inv = lax.rsqrt(variance + epsilon)
        inv = inv if gamma is None else inv * gamma
        res = -mean * inv
        res = res if beta is None else res + beta
        out = x * inv + res
    return cast(out, orig)


def rms_normalization(x, scale=None, axis=-1, epsilon=None):
    """Root-mean-square normalisation over ``axis``, optionally scaled."""
    epsilon = EPSILON if epsilon is None else epsilon
    x = _t(x)
    orig = standardize_dtype(x.dtype)
    x = cast(x, result_type(x.dtype, "float32"))
    axis = tuple(sorted(axis)) if isinstance(axis, (tuple, list)) else axis
    if x.ndim == 0:
        x = jnp.expand_dims(x, 0)
    out = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + epsilon)
    if scale is not None:
        out = out * _t(scale, x.dtype)
    return cast(out, orig)


def normalize(x, axis=-1, order=2, epsilon=None):
    """Divides ``x`` by its ``order``-norm along ``axis``."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"normalize: argument `order` must be an int >= 1. Received: order={order!r}")
    x = _t(x)
    if x.ndim == 0:
        x = jnp.expand_dims(x, 0)
    epsilon = EPSILON if epsilon is None else epsilon
    if order == 2:
        inv = lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
        return x * jnp.minimum(inv, 1.0 / epsilon)
    from hybridnet.ops.linalg import norm
    return jnp.divide(x, jnp.maximum(norm(x, ord=order, axis=axis, keepdims=True), epsilon))


def psnr(x1, x2, max_val):
    """Peak signal-to-noise ratio between ``x1`` and ``x2``."""
    x1, x2 = _t(x1), _t(x2)
    if x1.shape != x2.shape:
        raise ValueError(f"psnr: inputs must have the same shape. Received: x1.shape={x1.shape}, "
                         f"x2.shape={x2.shape}")
    max_val = _t(max_val, dtype=x2.dtype)
    return 20 * jnp.log10(max_val) - 10 * jnp.log10(jnp.mean(jnp.square(x1 - x2)))


def dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                          flash_attention=None, attn_logits_soft_cap=None):
    """Scaled dot-product attention on ``(batch, time, heads, depth)`` tensors.

    ``flash_attention=True`` asks for the cuDNN kernel (GPU only); logit soft-capping is not supported.
    """
    if attn_logits_soft_cap is not None:
        raise ValueError("dot_product_attention: `attn_logits_soft_cap` is not supported. "
                         f"Received: attn_logits_soft_cap={attn_logits_soft_cap}")
    query, key, value = _t(query), _t(key), _t(value)
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError("dot_product_attention: only 4-D inputs are supported. Received: "
                         f"query.shape={query.shape}, key.shape={key.shape}, value.shape={value.shape}")
    dt = result_type(query.dtype, key.dtype, value.dtype)
    query, key, value = cast(query, dt), cast(key, dt), cast(value, dt)
    if bias is not None:
        bias = _t(bias, dtype=dt)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                        is_causal=is_causal,
                                        implementation="cudnn" if flash_attention else "xla")


def polar(abs_, angle):
    """The complex tensor ``abs_ * exp(1j * angle)``."""
    abs_, angle = _t(abs_), _t(angle)
    return lax.complex(abs_ * jnp.cos(angle), abs_ * jnp.sin(angle))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """Extracts sliding blocks of an NCHW image batch: ``(N, C*kH*kW, L)``."""
    x = _t(x)
    if x.ndim != 4:
        raise ValueError(f"unfold: input must be a 4-D tensor. Received: x.shape={x.shape}")
    p = _pair(padding)
    if any(v > 0 for v in p):
        x = jnp.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    patches = lax.conv_general_dilated_patches(x, filter_shape=_pair(kernel_size), window_strides=_pair(stride),
                                               padding="VALID", rhs_dilation=_pair(dilation),
                                               dimension_numbers=("NCHW", "OIHW", "NCHW"))
    n, ckk, oh, ow = patches.shape
    return patches.reshape(n, ckk, oh * ow)


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sums sliding blocks ``(N, C*kH*kW, L)`` back into an NCHW image (the adjoint of ``unfold``)."""
    x = _t(x)
    if x.ndim != 3:
        raise ValueError(f"fold: input must be a 3-D tensor. Received: x.shape={x.shape}")
    (oh, ow), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = map(_pair, (output_size, kernel_size, dilation, padding,
                                                                   stride))
    n, ckk, _ = x.shape
    if ckk % (kh * kw):
        raise ValueError(f"fold: x.shape[1] must be a multiple of kH*kW={kh * kw}. Received: x.shape={x.shape}")
    c = ckk // (kh * kw)

    def unfold_fn(img):
        return unfold(img, (kh, kw), (dh, dw), (ph, pw), (sh, sw))

    zeros = jnp.zeros((n, c, oh, ow), x.dtype)
    _, vjp = jax.vjp(unfold_fn, zeros)
    return vjp(x)[0]


def depth_to_space(x, block_size, data_format="channels_last"):
    """Moves channel blocks into ``block_size x block_size`` spatial blocks (pixel shuffle)."""
    data_format = _data_format(data_format, "depth_to_space")
    if block_size < 2:
        raise ValueError(f"depth_to_space: `block_size` must be at least 2. Received: block_size={block_size}")
    x, b = _t(x), block_size
    if data_format == "channels_last":
        n, h, w, c = x.shape
        x = jnp.transpose(jnp.reshape(x, (n, h, w, b, b, c // b ** 2)), (0, 1, 3, 2, 4, 5))
        return jnp.reshape(x, (n, h * b, w * b, c // b ** 2))
    n, c, h, w = x.shape
    x = jnp.transpose(jnp.reshape(x, (n, c // b ** 2, b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return jnp.reshape(x, (n, c // b ** 2, h * b, w * b))


def space_to_depth(x, block_size, data_format="channels_last"):
    """Moves ``block_size x block_size`` spatial blocks into channels (pixel unshuffle)."""
    data_format = _data_format(data_format, "space_to_depth")
    if block_size < 2:
        raise ValueError(f"space_to_depth: `block_size` must be at least 2. Received: block_size={block_size}")
    x, b = _t(x), block_size
    if data_format == "channels_last":
        n, h, w, c = x.shape
        x = jnp.transpose(jnp.reshape(x, (n, h // b, b, w // b, b, c)), (0, 1, 3, 2, 4, 5))
        return jnp.reshape(x, (n, h // b, w // b, c * b ** 2))
    n, c, h, w = x.shape
    x = jnp.transpose(jnp.reshape(x, (n, c, h // b, b, w // b, b)), (0, 1, 3, 5, 2, 4))
    return jnp.reshape(x, (n, c * b ** 2, h // b, w // b))


__all__ = sorted(n for n, v in list(globals().items())
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == __name__)
