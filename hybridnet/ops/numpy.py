"""NumPy-like ops (``keras.ops.numpy``) on ``jax.numpy``.

Ops whose semantics are exactly their ``jnp`` counterpart's are generated from the
tables below; the others are written out. Promotion follows Keras: float-valued
functions of ints and bools return floatx (``float32``), Python scalars are weak.
"""
from __future__ import annotations

import builtins
import math as _math

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet.ops.core import (FLOATX, cast, convert_to_tensor, float_dtype, result_type, shape,
                                standardize_dtype)

_t = convert_to_tensor


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _to_float(x):
    x = _t(x)
    return cast(x, float_dtype(x.dtype))


def _is_int_or_bool(dtype) -> bool:
    name = standardize_dtype(dtype)
    return "int" in name or name == "bool"


def _named(fn, name, doc):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.__module__ = __name__
    return fn


def _unary(name, jfn, to_float=False):
    def op(x):
        return jfn(_to_float(x) if to_float else _t(x))
    return _named(op, name, f"Element-wise ``{name}`` of ``x``" + (" (ints give floats)." if to_float else "."))


def _binary(name, jfn, to_float=False):
    def op(x1, x2):
        x1, x2 = _t(x1), _t(x2)
        if to_float:
            dt = result_type(x1.dtype, x2.dtype, float)
            x1, x2 = cast(x1, dt), cast(x2, dt)
        return jfn(x1, x2)
    return _named(op, name, f"Element-wise ``{name}`` of ``x1`` and ``x2``.")


def _binary_xy(name, jfn):
    def op(x, y):
        return jfn(_t(x), _t(y))
    return _named(op, name, f"Element-wise ``{name}`` of ``x`` and ``y``.")


def _reduction(name, jfn, to_float=False):
    def op(x, axis=None, keepdims=False):
        x = _to_float(x) if to_float else _t(x)
        return jfn(x, axis=_axis(axis), keepdims=keepdims)
    return _named(op, name, f"``{name}`` of ``x`` along ``axis`` (all axes by default).")


_FLOAT_UNARY = ["arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctanh", "ceil", "cos", "cosh", "exp",
                "exp2", "expm1", "floor", "log", "log10", "log1p", "log2", "sin", "sinc", "sinh", "sqrt", "tan",
                "tanh", "angle"]
_UNARY = ["absolute", "cbrt", "conjugate", "copy", "deg2rad", "imag", "isfinite", "isinf", "isnan", "isneginf",
          "isposinf", "isreal", "logical_not", "negative", "rad2deg", "ravel", "real", "reciprocal", "sign",
          "signbit", "square", "fliplr", "flipud"]
_BINARY = ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "fmax", "fmin", "mod", "fmod",
           "floor_divide", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
           "logical_and", "logical_or", "logical_xor", "gcd", "lcm", "hypot", "heaviside", "nextafter", "kron",
           "inner", "vdot", "dot"]
_FLOAT_BINARY = ["arctan2", "logaddexp", "logaddexp2"]
_BITWISE = ["bitwise_and", "bitwise_or", "bitwise_xor"]
_REDUCTIONS = ["sum", "all", "any", "amax", "amin", "nanmax", "nanmin", "nanmean", "nanmedian", "nanprod",
               "nanstd", "nansum", "nanvar", "nanargmax", "nanargmin", "ptp"]
_FLOAT_REDUCTIONS = ["std"]

for _n in _FLOAT_UNARY:
    globals()[_n] = _unary(_n, getattr(jnp, _n), to_float=True)
for _n in _UNARY:
    globals()[_n] = _unary(_n, getattr(jnp, _n))
for _n in _BINARY:
    globals()[_n] = _binary(_n, getattr(jnp, _n))
for _n in _FLOAT_BINARY:
    globals()[_n] = _binary(_n, getattr(jnp, _n), to_float=True)
for _n in _BITWISE:
    globals()[_n] = _binary_xy(_n, getattr(jnp, _n))
for _n in _REDUCTIONS:
    globals()[_n] = _reduction(_n, getattr(jnp, _n))
for _n in _FLOAT_REDUCTIONS:
    globals()[_n] = _reduction(_n, getattr(jnp, _n), to_float=True)
del _n

abs = absolute  # noqa: F821
conj = conjugate  # noqa: F821
true_divide = divide  # noqa: F821


def fabs(x):
    """Element-wise absolute value of a real ``x``."""
    x = _t(x)
    if "complex" in standardize_dtype(x.dtype):
        raise TypeError(f"fabs does not support complex inputs. Received: x.dtype={x.dtype}")
    return jnp.fabs(x)


def i0(x):
    """Modified Bessel function of the first kind, order 0."""
    x = _t(x)
    dt = standardize_dtype(x.dtype)
    return jnp.i0(cast(x, dt if dt in ("bfloat16", "float16", "float64") else FLOATX))


def trunc(x):
    """Rounds towards zero; integer inputs are returned unchanged."""
    x = _t(x)
    return x if _is_int_or_bool(x.dtype) else jnp.trunc(x)


def round(x, decimals=0):
    """Rounds ``x`` to ``decimals`` decimal places (half to even)."""
    x = _t(x)
    dt = standardize_dtype(x.dtype)
    if "int" in dt and decimals < 0:
        factor = cast(_math.pow(10, decimals), FLOATX)
        return cast(jnp.round(cast(x, FLOATX) * factor) / factor, dt)
    return jnp.round(x, decimals=decimals)


def bitwise_invert(x):
    """Element-wise bitwise NOT."""
    return jnp.invert(_t(x))


bitwise_not = bitwise_invert


def bitwise_left_shift(x, y):
    """Shifts the bits of ``x`` left by ``y``."""
    return jnp.left_shift(_t(x), y if isinstance(y, int) else _t(y))


def bitwise_right_shift(x, y):
    """Shifts the bits of ``x`` right by ``y``."""
    return jnp.right_shift(_t(x), y if isinstance(y, int) else _t(y))


left_shift = bitwise_left_shift
right_shift = bitwise_right_shift


def ldexp(x1, x2):
    """``x1 * 2 ** x2`` for an integer ``x2``."""
    x1, x2 = _t(x1), _t(x2)
    if "int" not in standardize_dtype(x2.dtype):
        raise TypeError(f"ldexp exponent must be an integer type. Received: x2 dtype={x2.dtype}")
    return jnp.ldexp(x1, x2)


def matmul(x1, x2):
    """Matrix product of ``x1`` and ``x2`` (int8 x int8 accumulates in int32)."""
    x1, x2 = _t(x1), _t(x2)
    int8 = standardize_dtype(x1.dtype) == "int8" and standardize_dtype(x2.dtype) == "int8"
    return jnp.matmul(x1, x2, preferred_element_type="int32" if int8 else None)


def einsum(subscripts, *operands, **kwargs):
    """Einstein summation (int8 operands accumulate in int32)."""
    operands = [_t(x) for x in operands]
    int8 = {standardize_dtype(x.dtype) for x in operands} == {"int8"}
    kwargs["preferred_element_type"] = "int32" if int8 else None
    return jnp.einsum(subscripts, *operands, **kwargs)


def tensordot(x1, x2, axes=2):
    """Tensor dot product over ``axes``."""
    return jnp.tensordot(_t(x1), _t(x2), axes=axes)


def outer(x1, x2):
    """Outer product of the flattened ``x1`` and ``x2``."""
    return jnp.outer(_t(x1), _t(x2))


def cross(x1, x2, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Cross product of 3-vectors (or 2-vectors) along the given axes."""
    return jnp.cross(_t(x1), _t(x2), axisa=axisa, axisb=axisb, axisc=axisc, axis=axis)


def divide_no_nan(x1, x2):
    """``x1 / x2``, with 0 where ``x2`` is 0."""
    x1, x2 = _t(x1), _t(x2)
    safe = jnp.where(x2 == 0, 1, x2)
    return jnp.where(x2 == 0, 0, jnp.divide(x1, safe))


def clip(x, x_min, x_max):
    """Clips ``x`` to ``[x_min, x_max]`` (bools are clipped as int32)."""
    x = _t(x)
    if standardize_dtype(x.dtype) == "bool":
        x = cast(x, "int32")
    return jnp.clip(x, x_min, x_max)


# Reductions with their own dtype rules.

def mean(x, axis=None, keepdims=False):
    """Mean of ``x`` along ``axis``; ints and bools give floatx, computed in at least float32."""
    x = _t(x)
    compute = result_type(x.dtype, "float32")
    out_dtype = compute if _is_int_or_bool(x.dtype) else standardize_dtype(x.dtype)
    return cast(jnp.mean(x, axis=_axis(axis), keepdims=keepdims, dtype=compute), out_dtype)


def var(x, axis=None, keepdims=False):
    """Variance of ``x`` along ``axis``, computed in at least float32."""
    x = _t(x)
    out = jnp.var(x, axis=_axis(axis), keepdims=keepdims, dtype=result_type(x.dtype, "float32"))
    return cast(out, float_dtype(x.dtype))


def max(x, axis=None, keepdims=False, initial=None):
    """Maximum of ``x`` along ``axis``."""
    return jnp.max(_t(x), axis=_axis(axis), keepdims=keepdims, initial=initial)


def min(x, axis=None, keepdims=False, initial=None):
    """Minimum of ``x`` along ``axis``."""
    return jnp.min(_t(x), axis=_axis(axis), keepdims=keepdims, initial=initial)


def prod(x, axis=None, keepdims=False, dtype=None):
    """Product of ``x`` along ``axis``."""
    return jnp.prod(_t(x), axis=_axis(axis), keepdims=keepdims, dtype=standardize_dtype(dtype))


def median(x, axis=None, keepdims=False):
    """Median of ``x`` along ``axis`` (floats)."""
    x = _to_float(x)
    out = jnp.median(x, axis=_axis(axis), keepdims=keepdims)
    if keepdims and axis is None:
        out = jnp.reshape(out, (1,) * x.ndim)
    return out


def _flush_safe(x):
    # On CPU, XLA flushes denormals: -0.0 would tie with 0.0; nudge it below.
    return jnp.where((x == 0.0) & jnp.signbit(x), -jnp.finfo(x.dtype).tiny, x)


def argmax(x, axis=None, keepdims=False):
    """Index of the maximum of ``x`` along ``axis`` (of the flattened ``x`` by default)."""
    x = _t(x)
    if "float" in standardize_dtype(x.dtype) and x.ndim:
        x = _flush_safe(cast(x, result_type(x.dtype, "float32")))
    return jnp.argmax(x, axis=axis, keepdims=keepdims)


def argmin(x, axis=None, keepdims=False):
    """Index of the minimum of ``x`` along ``axis`` (of the flattened ``x`` by default)."""
    x = _t(x)
    if "float" in standardize_dtype(x.dtype) and x.ndim:
        x = _flush_safe(cast(x, result_type(x.dtype, "float32")))
    return jnp.argmin(x, axis=axis, keepdims=keepdims)


def average(x, axis=None, weights=None):
    """Weighted average of ``x`` along ``axis``."""
    x = _t(x)
    dts = [x.dtype, float]
    if weights is not None:
        weights = _t(weights)
        dts.append(weights.dtype)
    dt = result_type(*dts)
    return jnp.average(cast(x, dt), weights=None if weights is None else cast(weights, dt), axis=axis)


def count_nonzero(x, axis=None):
    """Number of non-zero values along ``axis`` (int32)."""
    return cast(jnp.count_nonzero(_t(x), axis=_axis(axis)), "int32")


def cumsum(x, axis=None, dtype=None):
    """Cumulative sum along ``axis`` (of the flattened ``x`` by default)."""
    return jnp.cumsum(_t(x), axis=axis, dtype=standardize_dtype(dtype))


def cumprod(x, axis=None, dtype=None):
    """Cumulative product along ``axis`` (of the flattened ``x`` by default)."""
    return jnp.cumprod(_t(x), axis=axis, dtype=standardize_dtype(dtype))


def nancumsum(x, axis=None, dtype=None):
    """Cumulative sum treating NaNs as zero."""
    return jnp.nancumsum(_t(x), axis=axis, dtype=standardize_dtype(dtype))


def nancumprod(x, axis=None, dtype=None):
    """Cumulative product treating NaNs as one."""
    return jnp.nancumprod(_t(x), axis=axis, dtype=standardize_dtype(dtype))


def quantile(x, q, axis=None, method="linear", keepdims=False):
    """The ``q``-th quantiles of ``x`` along ``axis``."""
    x, q = _t(x), _t(q)
    if _is_int_or_bool(x.dtype):
        x = cast(x, FLOATX)
    out = jnp.quantile(x, q, axis=_axis(axis), method=method, keepdims=keepdims)
    if keepdims and axis is None:
        out = jnp.reshape(out, q.shape + (1,) * x.ndim)
    return out


def percentile(x, q, axis=None, method="linear", keepdims=False):
    """The ``q``-th percentiles of ``x`` along ``axis``."""
    return jnp.percentile(_t(x), _t(q), axis=_axis(axis), method=method, keepdims=keepdims)


def nanquantile(x, q, axis=None, method="linear", keepdims=False):
    """Quantiles ignoring NaNs."""
    return jnp.nanquantile(_t(x), _t(q), axis=_axis(axis), method=method, keepdims=keepdims)


def nanpercentile(x, q, axis=None, method="linear", keepdims=False):
    """Percentiles ignoring NaNs."""
    return jnp.nanpercentile(_t(x), _t(q), axis=_axis(axis), method=method, keepdims=keepdims)


def allclose(x1, x2, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Whether all elements of ``x1`` and ``x2`` are close."""
    return jnp.allclose(_t(x1), _t(x2), rtol, atol, equal_nan)


def isclose(x1, x2, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Element-wise closeness of ``x1`` and ``x2``."""
    return jnp.isclose(_t(x1), _t(x2), rtol, atol, equal_nan)


def isin(x1, x2, assume_unique=False, invert=False):
    """Whether each element of ``x1`` is in ``x2``."""
    return jnp.isin(_t(x1), _t(x2), assume_unique=assume_unique, invert=invert)


# Creation.

def _default_float(dtype):
    return standardize_dtype(dtype) or FLOATX


def ones(shape, dtype=None):
    """A tensor of ones (floatx by default)."""
    return jnp.ones(shape, dtype=_default_float(dtype))


def zeros(shape, dtype=None):
    """A tensor of zeros (floatx by default)."""
    return jnp.zeros(shape, dtype=_default_float(dtype))


def empty(shape, dtype=None):
    """An uninitialised tensor (zeros here; floatx by default)."""
    return jnp.empty(shape, dtype=_default_float(dtype))


def full(shape, fill_value, dtype=None):
    """A tensor filled with ``fill_value`` (floatx by default)."""
    return jnp.full(shape, fill_value, dtype=_default_float(dtype))


def ones_like(x, dtype=None):
    """Ones with the shape (and by default the dtype) of ``x``."""
    return jnp.ones_like(_t(x), dtype=standardize_dtype(dtype))


def zeros_like(x, dtype=None):
    """Zeros with the shape (and by default the dtype) of ``x``."""
    return jnp.zeros_like(_t(x), dtype=standardize_dtype(dtype))


def empty_like(x, dtype=None):
    """An uninitialised tensor shaped like ``x``."""
    return jnp.empty_like(_t(x), dtype=standardize_dtype(dtype))


def full_like(x, fill_value, dtype=None):
    """``fill_value`` with the shape (and by default the dtype) of ``x``."""
    return jnp.full_like(_t(x), fill_value, dtype=standardize_dtype(dtype))


def eye(N, M=None, k=0, dtype=None):
    """A 2-D tensor with ones on the ``k``-th diagonal (floatx by default)."""
    for arg, v in (("N", N), ("M", M)):
        if isinstance(v, float) or standardize_dtype(getattr(v, "dtype", None) or "int32").startswith(("float",
                                                                                                        "bfloat")):
            raise TypeError(f"eye: argument `{arg}` must be an integer. Received: {arg}={v!r}")
    return jnp.eye(N, M=M, k=k, dtype=_default_float(dtype))


def identity(n, dtype=None):
    """The ``n x n`` identity matrix (floatx by default)."""
    return jnp.identity(n, dtype=_default_float(dtype))


def tri(N, M=None, k=0, dtype=None):
    """Ones at and below the ``k``-th diagonal (floatx by default)."""
    return jnp.tri(N, M=M, k=k, dtype=_default_float(dtype))


def arange(start, stop=None, step=None, dtype=None):
    """Evenly spaced values in ``[start, stop)``; the dtype follows the arguments' types."""
    if dtype is None:
        args = [a for a in (start, stop, step) if a is not None]
        dtype = result_type(*[getattr(a, "dtype", type(a)) for a in args])
    return jnp.arange(start, stop, step=step, dtype=standardize_dtype(dtype))


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    """``num`` evenly spaced values from ``start`` to ``stop``."""
    return jnp.linspace(start, stop, num=num, endpoint=endpoint, retstep=retstep,
                        dtype=standardize_dtype(dtype), axis=axis)


def logspace(start, stop, num=50, endpoint=True, base=10, dtype=None, axis=0):
    """``num`` values evenly spaced on a log scale."""
    return jnp.logspace(start, stop, num=num, endpoint=endpoint, base=base, dtype=standardize_dtype(dtype),
                        axis=axis)


def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
    """``num`` values forming a geometric progression."""
    return jnp.geomspace(start, stop, num=num, endpoint=endpoint, dtype=standardize_dtype(dtype), axis=axis)


def array(x, dtype=None):
    """Creates a tensor from ``x``."""
    return jnp.array(x, dtype=standardize_dtype(dtype))


def _window(jfn, name):
    def op(x):
        return cast(jfn(_t(x)), FLOATX)
    return _named(op, name, f"The ``{name}`` window of length ``x`` (floatx).")


bartlett = _window(jnp.bartlett, "bartlett")
blackman = _window(jnp.blackman, "blackman")
hamming = _window(jnp.hamming, "hamming")
hanning = _window(jnp.hanning, "hanning")


def kaiser(x, beta):
    """The Kaiser window of length ``x`` and shape ``beta`` (floatx)."""
    return cast(jnp.kaiser(_t(x), beta), FLOATX)


def meshgrid(*x, indexing="xy"):
    """Coordinate matrices from coordinate vectors."""
    return jnp.meshgrid(*x, indexing=indexing)


def vander(x, N=None, increasing=False):
    """The Vandermonde matrix of the 1-D ``x``."""
    x = _t(x)
    if x.ndim != 1:
        raise ValueError(f"vander: input must be 1-dimensional. Received: x.shape={x.shape}")
    if N is not None and (not isinstance(N, int) or N < 0):
        raise ValueError(f"vander: argument `N` must be a non-negative int. Received: N={N!r}")
    return jnp.vander(x, N=N, increasing=increasing)


# Shape manipulation.

def reshape(x, newshape):
    """Gives ``x`` the shape ``newshape`` (one entry may be -1)."""
    if not isinstance(newshape, jax.Array):
        try:
            newshape = tuple(newshape)
        except TypeError:
            newshape = (newshape,)
        if builtins.sum(1 for d in newshape if d == -1) > 1:
            raise ValueError(f"reshape: at most one dimension of `newshape` may be -1. "
                             f"Received: newshape={newshape}")
    return jnp.reshape(_t(x), newshape)


def transpose(x, axes=None):
    """Permutes the axes of ``x`` (reverses them by default)."""
    return jnp.transpose(_t(x), axes=axes)


def expand_dims(x, axis):
    """Inserts a size-1 axis at ``axis``."""
    return jnp.expand_dims(_t(x), _axis(axis))


def squeeze(x, axis=None):
    """Removes size-1 axes (all of them by default)."""
    return jnp.squeeze(_t(x), axis=_axis(axis))


def broadcast_to(x, shape):
    """Broadcasts ``x`` to ``shape``."""
    return jnp.broadcast_to(_t(x), shape)


def moveaxis(x, source, destination):
    """Moves axes of ``x`` from ``source`` to ``destination``."""
    return jnp.moveaxis(_t(x), source=source, destination=destination)


def swapaxes(x, axis1, axis2):
    """Swaps two axes of ``x``."""
    return jnp.swapaxes(_t(x), axis1=axis1, axis2=axis2)


def concatenate(xs, axis=0):
    """Joins tensors along an existing ``axis``."""
    return jnp.concatenate([_t(x) for x in xs], axis=axis)


def stack(x, axis=0):
    """Joins tensors along a new ``axis``."""
    return jnp.stack([_t(t) for t in x], axis=axis)


def hstack(xs):
    """Stacks tensors horizontally (column-wise)."""
    return jnp.hstack([_t(x) for x in xs])


def vstack(xs):
    """Stacks tensors vertically (row-wise)."""
    return jnp.vstack([_t(x) for x in xs])


def dstack(xs):
    """Stacks tensors depth-wise (along the third axis)."""
    return jnp.dstack([_t(x) for x in xs])


def append(x1, x2, axis=None):
    """Appends ``x2`` to ``x1`` along ``axis`` (flattened by default)."""
    return jnp.append(_t(x1), _t(x2), axis=axis)


def split(x, indices_or_sections, axis=0):
    """Splits ``x`` into equal sections or at the given indices."""
    return jnp.split(_t(x), indices_or_sections, axis=axis)


def array_split(x, indices_or_sections, axis=0):
    """Splits ``x`` into ``indices_or_sections`` nearly equal parts."""
    if not isinstance(indices_or_sections, int) or indices_or_sections <= 0:
        raise ValueError("array_split: `indices_or_sections` must be a positive int. "
                         f"Received: indices_or_sections={indices_or_sections!r}")
    return jnp.array_split(_t(x), indices_or_sections, axis=axis)


def hsplit(x, indices_or_sections):
    """Splits ``x`` horizontally."""
    return jnp.hsplit(_t(x), indices_or_sections)


def vsplit(x, indices_or_sections):
    """Splits ``x`` vertically."""
    return jnp.vsplit(_t(x), indices_or_sections)


def dsplit(x, indices_or_sections):
    """Splits ``x`` along the third axis."""
    return jnp.dsplit(_t(x), indices_or_sections)


def tile(x, repeats):
    """Repeats ``x`` ``repeats`` times along each axis."""
    return jnp.tile(_t(x), repeats)


def repeat(x, repeats, axis=None):
    """Repeats each element of ``x``."""
    return jnp.repeat(_t(x), repeats, axis=axis)


def flip(x, axis=None):
    """Reverses ``x`` along ``axis`` (all axes by default)."""
    return jnp.flip(_t(x), axis=_axis(axis))


def roll(x, shift, axis=None):
    """Rolls ``x`` by ``shift`` along ``axis``."""
    return jnp.roll(_t(x), shift, axis=axis)


def rot90(array, k=1, axes=(0, 1)):
    """Rotates ``array`` by 90 degrees ``k`` times in the plane of ``axes``."""
    array = _t(array)
    if array.ndim < 2:
        raise ValueError(f"rot90: input must have at least 2 dimensions. Received: array.ndim={array.ndim}")
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"rot90: `axes` must be two different dimensions. Received: axes={axes}")
    return jnp.rot90(array, k=k, axes=axes)


def pad(x, pad_width, mode="constant", constant_values=None):
    """Pads ``x`` by ``pad_width`` with ``mode`` (constant, edge, reflect, symmetric, ...)."""
    kwargs = {}
    if constant_values is not None:
        if mode != "constant":
            raise ValueError("pad: `constant_values` can only be given when mode='constant'. "
                             f"Received: mode={mode!r}")
        kwargs["constant_values"] = constant_values
    return jnp.pad(_t(x), pad_width, mode=mode, **kwargs)


def diag(x, k=0):
    """The ``k``-th diagonal of a matrix, or a matrix with ``x`` on it."""
    return jnp.diag(_t(x), k=k)


def diagflat(x, k=0):
    """A 2-D tensor with the flattened ``x`` on the ``k``-th diagonal."""
    return jnp.diagflat(_t(x), k=k)


def diagonal(x, offset=0, axis1=0, axis2=1):
    """The diagonal of ``x`` in the plane of ``axis1`` and ``axis2``."""
    x = _t(x)
    if axis1 % x.ndim == axis2 % x.ndim:
        raise ValueError(f"diagonal: `axis1` and `axis2` cannot be the same. Received: axis1={axis1}, "
                         f"axis2={axis2}")
    return jnp.diagonal(x, offset=offset, axis1=axis1, axis2=axis2)


def trace(x, offset=0, axis1=0, axis2=1):
    """Sum along the diagonal of ``x``."""
    return jnp.trace(_t(x), offset=offset, axis1=axis1, axis2=axis2)


def tril(x, k=0):
    """Lower triangle of ``x``."""
    return jnp.tril(_t(x), k=k)


def triu(x, k=0):
    """Upper triangle of ``x``."""
    return jnp.triu(_t(x), k=k)


def diff(a, n=1, axis=-1):
    """The ``n``-th discrete difference along ``axis``."""
    return jnp.diff(_t(a), n=n, axis=axis)


def trapezoid(y, x=None, dx=1.0, axis=-1):
    """Integrates ``y`` along ``axis`` with the trapezoidal rule."""
    return jnp.trapezoid(_t(y), None if x is None else _t(x), dx=_t(dx), axis=axis)


# Indexing, sorting, searching.

def where(condition, x1=None, x2=None):
    """Chooses ``x1`` where ``condition`` else ``x2``; with neither, the indices of true values."""
    if (x1 is None) != (x2 is None):
        raise ValueError("where: `x1` and `x2` must both be None or both be given. "
                         f"Received: x1={'None' if x1 is None else 'a value'}, "
                         f"x2={'None' if x2 is None else 'a value'}")
    return jnp.where(condition, x1, x2)


def select(condlist, choicelist, default=0):
    """Chooses from ``choicelist`` by the first true condition in ``condlist``."""
    if not isinstance(condlist, (list, tuple)) or not isinstance(choicelist, (list, tuple)):
        raise ValueError(f"select: condlist and choicelist must be lists. Received: "
                         f"type(condlist)={type(condlist)}, type(choicelist)={type(choicelist)}")
    if not condlist or not choicelist:
        raise ValueError(f"select: condlist and choicelist must not be empty. Received: "
                         f"condlist={condlist}, choicelist={choicelist}")
    return jnp.select(list(condlist), list(choicelist), default=default)


def take(x, indices, axis=None):
    """Takes elements of ``x`` at ``indices`` along ``axis`` (flattened by default)."""
    return jnp.take(_t(x), _t(indices), axis=axis)


def take_along_axis(x, indices, axis=None):
    """Takes values of ``x`` at ``indices`` matched along ``axis``."""
    return jnp.take_along_axis(_t(x), _t(indices), axis=axis)


def get_item(x, key):
    """``x[key]``."""
    return _t(x)[key]


def sort(x, axis=-1):
    """Sorts ``x`` along ``axis``."""
    return jnp.sort(_t(x), axis=axis)


def argsort(x, axis=-1):
    """Indices that sort ``x`` along ``axis``."""
    x = _t(x)
    return jnp.argsort(x, axis=None if x.ndim == 0 else axis)


def argpartition(x, kth, axis=-1):
    """Indices that partition ``x`` around its ``kth`` element."""
    x = _t(x)
    if axis is None:
        return jnp.argpartition(jnp.ravel(x), kth, axis=0)
    return jnp.argpartition(x, kth, axis=axis)


def searchsorted(sorted_sequence, values, side="left"):
    """Indices at which ``values`` would be inserted into the 1-D ``sorted_sequence``."""
    sorted_sequence, values = _t(sorted_sequence), _t(values)
    if sorted_sequence.ndim != 1:
        raise ValueError("searchsorted: `sorted_sequence` must be 1-D. "
                         f"Received: sorted_sequence.shape={sorted_sequence.shape}")
    return jnp.searchsorted(sorted_sequence, values, side=side)


def digitize(x, bins):
    """Indices of the ``bins`` each value of ``x`` falls in."""
    return jnp.digitize(_t(x), _t(bins))


def nonzero(x):
    """Indices of the non-zero elements (not traceable: the size depends on values)."""
    return jnp.nonzero(_t(x))


def unravel_index(indices, shape):
    """Converts flat ``indices`` into coordinate tuples for ``shape``."""
    return jnp.unravel_index(_t(indices), shape)


def unique(x, sorted=True, return_index=False, return_inverse=False, return_counts=False, axis=None, size=None,
           fill_value=None):
    """Unique elements of ``x`` (give ``size`` to use it under ``jit``)."""
    return jnp.unique(_t(x), return_index=return_index, return_inverse=return_inverse,
                      return_counts=return_counts, axis=axis, equal_nan=False, size=size, sorted=sorted,
                      fill_value=fill_value)


def bincount(x, weights=None, minlength=0, sparse=False):
    """Counts of each non-negative int in ``x`` (per row for 2-D ``x``)."""
    if sparse:
        raise ValueError(f"bincount: sparse outputs are not supported. Received: sparse={sparse}")
    x = _t(x)
    if x.ndim == 2:
        rows = [jnp.bincount(r, weights=None if weights is None else w, minlength=minlength)
                for r, w in zip(x, x if weights is None else _t(weights))]
        return jnp.stack(rows)
    return jnp.bincount(x, weights=weights, minlength=minlength)


def histogram(x, bins=10, range=None):
    """Histogram of ``x``: ``(counts, bin_edges)``."""
    if not isinstance(bins, int) or bins < 0:
        raise ValueError(f"histogram: `bins` must be a non-negative int. Received: bins={bins!r}")
    if range is not None and (not isinstance(range, tuple) or len(range) != 2 or range[1] < range[0]):
        raise ValueError(f"histogram: `range` must be a tuple (min, max) with min <= max. Received: range={range}")
    return jnp.histogram(_t(x), bins=bins, range=range)


def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    """Replaces NaN and infinities with finite numbers."""
    return jnp.nan_to_num(_t(x), nan=nan, posinf=posinf, neginf=neginf)


def corrcoef(x):
    """Pearson correlation coefficients of the rows of ``x``."""
    return jnp.corrcoef(_t(x))


def correlate(x1, x2, mode="valid"):
    """Cross-correlation of two 1-D tensors."""
    return jnp.correlate(_t(x1), _t(x2), mode)


def slogdet(x):
    """``(sign, log|det|)`` of the square matrices in ``x``."""
    return tuple(jnp.linalg.slogdet(_t(x)))


def view(x, dtype=None):
    """``x``'s bits reinterpreted as ``dtype``."""
    return _t(x).view(dtype=standardize_dtype(dtype))


def vectorize(pyfunc, *, excluded=None, signature=None):
    """Vectorises ``pyfunc`` over its array arguments (``jnp.vectorize``)."""
    if not callable(pyfunc):
        raise ValueError(f"vectorize: `pyfunc` must be callable. Received: pyfunc={pyfunc!r}")
    return jnp.vectorize(pyfunc, excluded=excluded or set(), signature=signature)


def ndim(x) -> int:
    """Number of dimensions of ``x``."""
    return len(shape(x))


def size(x) -> int:
    """Number of elements of ``x``."""
    return _math.prod(shape(x))


__all__ = sorted(n for n, v in list(globals().items())
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == __name__)
