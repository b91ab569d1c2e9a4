"""Math ops (``keras.ops.math``): segment reductions, top-k, FFTs, special functions.

Complex results are returned as ``(real, imag)`` pairs, as Keras does.
"""
from __future__ import annotations

import math as _math

import jax
import jax.numpy as jnp

from hybridnet.ops.core import cast, convert_to_tensor, standardize_dtype

_t = convert_to_tensor


def _segment(name, jfn):
    def op(data, segment_ids, num_segments=None, sorted=False):
        if num_segments is None:
            raise ValueError(f"{name}: argument `num_segments` must be set. Received: num_segments=None")
        data, segment_ids = _t(data), _t(segment_ids)
        if segment_ids.ndim != 1:
            raise ValueError(f"{name}: `segment_ids` must be 1-D. Received: segment_ids.shape={segment_ids.shape}")
        if data.shape[:1] != segment_ids.shape:
            raise ValueError(f"{name}: `data` and `segment_ids` must have the same first dimension. Received: "
                             f"data.shape={data.shape}, segment_ids.shape={segment_ids.shape}")
        return jfn(data, segment_ids, num_segments, indices_are_sorted=sorted)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"``{name}`` of the rows of ``data`` grouped by ``segment_ids`` into ``num_segments``."
    return op


segment_sum = _segment("segment_sum", jax.ops.segment_sum)
segment_max = _segment("segment_max", jax.ops.segment_max)
segment_min = _segment("segment_min", jax.ops.segment_min)
segment_prod = _segment("segment_prod", jax.ops.segment_prod)


def top_k(x, k, sorted=True):
    """The ``k`` largest values of ``x`` along the last axis and their indices (always sorted)."""
    return jax.lax.top_k(_t(x), k)


def in_top_k(targets, predictions, k):
    """Whether each ``targets`` id is among the ``k`` largest ``predictions`` (ties count for it)."""
    targets, predictions = _t(targets), _t(predictions)
    at_label = jnp.take_along_axis(predictions, jnp.expand_dims(targets, axis=-1), axis=-1)
    at_label = jnp.where(jnp.isnan(at_label), -jnp.inf, at_label)
    return jnp.less_equal(1 + jnp.sum(jnp.greater(predictions, at_label), axis=-1), k)


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` along ``axis``, computed stably."""
    axis = tuple(axis) if isinstance(axis, list) else axis
    return jax.scipy.special.logsumexp(_t(x), axis=axis, keepdims=keepdims)


def cdist(x, y):
    """Euclidean distances between the rows of ``x`` (..., m, d) and ``y`` (..., n, d)."""
    x, y = _t(x), _t(y)
    if x.ndim < 2 or y.ndim < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError("cdist: inputs must have rank >= 2 and the same last dimension. "
                         f"Received: x.shape={x.shape}, y.shape={y.shape}")
    diff = jnp.expand_dims(x, -2) - jnp.expand_dims(y, -3)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def extract_sequences(x, sequence_length, sequence_stride):
    """Frames of ``sequence_length`` taken every ``sequence_stride`` along the last axis."""
    x = _t(x)
    *batch, length = x.shape
    frames = jax.lax.conv_general_dilated_patches(jnp.reshape(x, (_math.prod(batch), length, 1)),
                                                  (sequence_length,), (sequence_stride,), "VALID",
                                                  dimension_numbers=("NTC", "OIT", "NTC"))
    return jnp.reshape(frames, (*batch, *frames.shape[-2:]))


def _complex(x, op):
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"{op}: input `x` must be a tuple (real, imag) of two tensors. Received: x={x!r}")
    real, imag = _t(x[0]), _t(x[1])
    if real.shape != imag.shape:
        raise ValueError(f"{op}: the real and imaginary parts must have the same shape. Received: "
                         f"x[0].shape={real.shape}, x[1].shape={imag.shape}")
    if not (jnp.issubdtype(real.dtype, jnp.floating) and jnp.issubdtype(imag.dtype, jnp.floating)):
        raise ValueError(f"{op}: the real and imaginary parts must be floats. Received: "
                         f"x[0].dtype={real.dtype}, x[1].dtype={imag.dtype}")
    return jax.lax.complex(real, imag)


def _pair(z):
    return jnp.real(z), jnp.imag(z)


def fft(x):
    """FFT along the last axis of the complex ``x = (real, imag)``."""
    return _pair(jnp.fft.fft(_complex(x, "fft")))


def fft2(x):
    """2-D FFT over the last two axes of ``x = (real, imag)``."""
    return _pair(jnp.fft.fft2(_complex(x, "fft2")))


def ifft2(x):
    """Inverse 2-D FFT over the last two axes of ``x = (real, imag)``."""
    return _pair(jnp.fft.ifft2(_complex(x, "ifft2")))


def rfft(x, fft_length=None):
    """FFT of the real ``x`` along the last axis: ``(real, imag)`` of the non-negative frequencies."""
    return _pair(jnp.fft.rfft(_t(x), n=fft_length, axis=-1, norm="backward"))


def irfft(x, fft_length=None):
    """Inverse of :func:`rfft`: a real signal from ``x = (real, imag)``."""
    return jnp.fft.irfft(_complex(x, "irfft"), n=fft_length, axis=-1, norm="backward")


def _window(window, sequence_length, dtype, op):
    if window is None:
        return None
    if isinstance(window, str):
        if window not in ("hann", "hamming"):
            raise ValueError(f'{op}: a string `window` must be "hann" or "hamming". Received: window={window!r}')
        a = 0.5 if window == "hann" else 0.54
        n = jnp.arange(sequence_length, dtype="float32")
        return cast(a - (1 - a) * jnp.cos(2 * jnp.pi * n / sequence_length), dtype)
    win = _t(window, dtype=dtype)
    if win.shape != (sequence_length,):
        raise ValueError(f"{op}: `window` must have shape (sequence_length,). Received: window.shape={win.shape}")
    return win


def stft(x, sequence_length, sequence_stride, fft_length, window="hann", center=True):
    """Short-time Fourier transform along the last axis: ``(real, imag)`` of shape ``(..., frames, bins)``."""
    if not isinstance(sequence_stride, int) or sequence_stride <= 0:
        raise ValueError(f"stft: `sequence_stride` must be a positive int. Received: "
                         f"sequence_stride={sequence_stride!r}")
    x = _t(x)
    if standardize_dtype(x.dtype) not in ("float32", "float64"):
        raise TypeError(f"stft: input must be float32 or float64. Received: x.dtype={x.dtype}")
    if fft_length < sequence_length:
        raise ValueError(f"stft: `fft_length` must be >= `sequence_length`. Received: fft_length={fft_length}, "
                         f"sequence_length={sequence_length}")
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(fft_length // 2, fft_length // 2)]
        x = jnp.pad(x, pad, mode="reflect")
    l_pad = (fft_length - sequence_length) // 2
    r_pad = fft_length - sequence_length - l_pad
    win = _window(window, sequence_length, x.dtype, "stft")
    win = jnp.ones((fft_length,), x.dtype) if win is None else jnp.pad(win, [(l_pad, r_pad)])
    frames = extract_sequences(x, fft_length, sequence_stride) * win
    spec = jnp.fft.rfft(frames, n=fft_length, axis=-1)
    return _pair(spec)


def istft(x, sequence_length, sequence_stride, fft_length, length=None, window="hann", center=True):
    """Inverse of :func:`stft` by weighted overlap-add."""
    if not isinstance(sequence_stride, int) or sequence_stride <= 0:
        raise ValueError(f"istft: `sequence_stride` must be a positive int. Received: "
                         f"sequence_stride={sequence_stride!r}")
    z = _complex(x, "istft")
    if z.ndim < 2:
        raise ValueError(f"istft: input must have at least 2 dimensions. Received: x[0].shape={z.shape}")
    dtype = jnp.real(z).dtype
    l_pad = (fft_length - sequence_length) // 2
    r_pad = fft_length - sequence_length - l_pad
    win = _window(window, sequence_length, dtype, "istft")
    win = jnp.ones((fft_length,), dtype) if win is None else jnp.pad(win, [(l_pad, r_pad)])
    frames = jnp.fft.irfft(z, n=fft_length, axis=-1) * win
    num = frames.shape[-2]
    out_len = fft_length + sequence_stride * (num - 1)
    starts = jnp.arange(num) * sequence_stride
    idx = (starts[:, None] + jnp.arange(fft_length)[None, :]).reshape(-1)
    signal = jnp.zeros(frames.shape[:-2] + (out_len,), dtype).at[..., idx].add(
        frames.reshape(frames.shape[:-2] + (-1,)))
    norm = jnp.zeros((out_len,), dtype).at[idx].add(jnp.tile(jnp.square(win), num))
    signal = signal / jnp.where(norm > 1e-10, norm, 1.0)
    if window is None:
        signal = signal * (fft_length / sequence_stride)
    start = fft_length // 2 if center else 0
    if length is not None:
        end = start + length
    elif center:
        end = out_len - fft_length // 2
    else:
        end = out_len
    return signal[..., start:end]


def rsqrt(x):
    """``1 / sqrt(x)``, element-wise."""
    return jax.lax.rsqrt(_t(x))


def erf(x):
    """The error function, element-wise."""
    return jax.lax.erf(_t(x))


def erfc(x):
    """The complementary error function ``1 - erf(x)``."""
    return jax.scipy.special.erfc(_t(x))


def erfinv(x):
    """The inverse error function."""
    return jax.scipy.special.erfinv(_t(x))


def logdet(x):
    """``log(det(x))`` of Hermitian positive-definite matrices, computed stably."""
    return jnp.linalg.slogdet(_t(x))[1]


def view_as_complex(x):
    """A complex tensor from ``x`` whose last axis of size 2 holds (real, imag)."""
    x = _t(x)
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ValueError(f"view_as_complex: the last dimension must be 2 (real, imag). Received: x.shape={x.shape}")
    return cast(x[..., 0], "complex64") + 1j * cast(x[..., 1], "complex64")


def view_as_real(x):
    """The real tensor ``(..., 2)`` holding (real, imag) of the complex ``x``."""
    x = _t(x)
    return jnp.stack((jnp.real(x), jnp.imag(x)), axis=-1)


__all__ = sorted(n for n, v in list(globals().items())
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == __name__)
