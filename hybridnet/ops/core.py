"""Core ops: tensor conversion, dtypes, control flow and scatter/slice updates.

Mirrors ``keras.ops`` core functions on the JAX backend. Every op accepts NumPy
arrays, JAX arrays, Python scalars and lists, and objects that implement
``__jax_array__`` (such as layer variables).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FLOATX = "float32"
EPSILON = 1e-7

_PYTHON_DTYPES = {bool: "bool", int: "int32", float: "float32", complex: "complex64", "int": "int32",
                  "float": "float32"}
_64_TO_32 = {"int64": "int32", "uint64": "uint32", "float64": "float32", "complex128": "complex64"}


def floatx() -> str:
    """The default float dtype (``"float32"``, as Keras's ``floatx``)."""
    return FLOATX


def epsilon() -> float:
    """The fuzz factor Keras uses in numeric expressions (``1e-7``)."""
    return EPSILON


def standardize_dtype(dtype):
    """A dtype as a string name (``"float32"``); ``None`` stays ``None``."""
    if dtype is None:
        return None
    if dtype in _PYTHON_DTYPES:
        return _PYTHON_DTYPES[dtype]
    if hasattr(dtype, "name") and isinstance(dtype.name, str) and not isinstance(dtype, type):
        return dtype.name
    try:
        return np.dtype(dtype).name
    except TypeError as e:
        raise ValueError(f"Invalid dtype. Received: dtype={dtype!r}") from e


def canonical_dtype(dtype):
    """The dtype JAX will actually create (64-bit types become 32-bit without x64)."""
    name = standardize_dtype(dtype)
    if name is None or jax.config.jax_enable_x64:
        return name
    return _64_TO_32.get(name, name)


def result_type(*dtypes):
    """Keras's type promotion (JAX's lattice; ``None`` means floatx)."""
    if not dtypes:
        return FLOATX
    dtypes = [FLOATX if d is None else d for d in dtypes]
    return canonical_dtype(jnp.result_type(*dtypes))


def float_dtype(dtype) -> str:
    """The dtype of a float result computed from ``dtype`` (ints and bools become floatx)."""
    return result_type(standardize_dtype(dtype), float)


def is_tensor(x) -> bool:
    """Whether ``x`` is a JAX array (tracers included)."""
    return isinstance(x, jax.Array)


def convert_to_tensor(x, dtype=None, sparse=None, ragged=None):
    """Converts ``x`` to a JAX array, optionally of ``dtype``.

    Args:
        x: an array, Python scalar or nested list, or an object with ``__jax_array__``.
        dtype: the dtype of the result; by default the input's.
        sparse, ragged: accepted for Keras compatibility; only dense arrays exist here.
    """
    if ragged:
        raise ValueError(f"convert_to_tensor: `ragged=True` is not supported. Received: ragged={ragged}")
    dtype = standardize_dtype(dtype)
    if isinstance(x, jax.Array) and (dtype is None or x.dtype == dtype):
        return x
    if dtype == "bfloat16" and not isinstance(x, jax.Array):
        return jnp.asarray(x).astype(dtype)
    return jnp.asarray(x, dtype=dtype)


def convert_to_numpy(x):
    """Returns ``x`` as a NumPy array (copied to the host)."""
    return np.array(x)


def cast(x, dtype):
    """Casts ``x`` to ``dtype``."""
    return convert_to_tensor(x, dtype=standardize_dtype(dtype))


def saturate_cast(x, dtype):
    """Casts ``x`` to ``dtype``, clipping values to the range of ``dtype`` first."""
    import ml_dtypes

    def limits(name):
        if name == "bool":
            return 0, 1
        info = ml_dtypes.iinfo(name) if "int" in name else ml_dtypes.finfo(name)
        return info.min, info.max

    x = convert_to_tensor(x)
    dtype = standardize_dtype(dtype)
    in_dtype = standardize_dtype(x.dtype)
    in_min, in_max = limits(in_dtype)
    out_min, out_max = limits(dtype)
    lo = np.maximum(in_min, out_min).astype(in_dtype)
    if lo < out_min:
        lo = np.nextafter(lo, 0, dtype=in_dtype)
    hi = np.minimum(in_max, out_max).astype(in_dtype)
    if hi > out_max:
        hi = np.nextafter(hi, 0, dtype=in_dtype)
    if in_dtype == "bool":
        x = x.astype("int32")
    return cast(jnp.clip(x, lo, hi), dtype)


def dtype(x) -> str:
    """The dtype of ``x`` as a string, e.g. ``"float32"``."""
    return standardize_dtype(getattr(x, "dtype", None) or convert_to_tensor(x).dtype)


def shape(x) -> tuple:
    """The shape of ``x`` as a tuple of ints."""
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def cond(pred, true_fn, false_fn):
    """Calls ``true_fn()`` if ``pred`` else ``false_fn()`` (``lax.cond``)."""
    return jax.lax.cond(pred, true_fun=true_fn, false_fun=false_fn)


def switch(index, branches, *operands):
    """Calls ``branches[index](*operands)`` (``lax.switch``)."""
    return jax.lax.switch(index, branches, *operands)


def while_loop(cond, body, loop_vars, maximum_iterations=None):
    """Runs ``loop_vars = body(*loop_vars)`` while ``cond(*loop_vars)``.

    A tuple or list of loop variables is unpacked into ``cond`` and ``body``; a single
    value is passed as is. ``maximum_iterations`` bounds the number of iterations.
    """
    is_tuple = isinstance(loop_vars, (tuple, list))
    loop_vars = tuple(loop_vars) if is_tuple else (loop_vars,)

    def as_tuple(out):
        return tuple(out) if is_tuple else (out,)

    if maximum_iterations is None:
        out = jax.lax.while_loop(lambda a: cond(*a), lambda a: as_tuple(body(*a)), loop_vars)
    else:
        out = jax.lax.while_loop(lambda a: cond(*a[:-1]) & (a[-1] < maximum_iterations),
                                 lambda a: as_tuple(body(*a[:-1])) + (a[-1] + 1,), loop_vars + (0,))[:-1]
    return out if is_tuple else out[0]


def fori_loop(lower, upper, body_fun, init_val):
    """``for i in range(lower, upper): init_val = body_fun(i, init_val)`` (``lax.fori_loop``)."""
    return jax.lax.fori_loop(lower, upper, body_fun, init_val)


def scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """Scans ``f(carry, x) -> (carry, y)`` over the leading axis of ``xs`` (``lax.scan``)."""
    if not isinstance(unroll, bool) and (not isinstance(unroll, int) or unroll < 1):
        raise ValueError(f"scan: `unroll` must be a positive integer or a boolean. Received: unroll={unroll}")
    return jax.lax.scan(f, init=init, xs=xs, length=length, reverse=reverse, unroll=unroll)


def associative_scan(f, elems, reverse=False, axis=0):
    """Parallel prefix scan of ``elems`` with the associative ``f`` (``lax.associative_scan``)."""
    return jax.lax.associative_scan(f, elems, reverse, axis)


def map(f, xs):
    """Maps ``f`` over the leading axis of ``xs`` sequentially (``lax.map``)."""
    return jax.lax.map(f, xs)


def vectorized_map(function, elements):
    """Maps ``function`` over the leading axis of ``elements`` in parallel (``vmap``)."""
    return jax.vmap(function)(elements)


def stop_gradient(variable):
    """Returns ``variable`` with no gradient flowing through it."""
    return jax.lax.stop_gradient(convert_to_tensor(variable))


def custom_gradient(f):
    """Decorates ``f`` returning ``(output, grad_fn)`` into a function with that gradient."""
    return jax.custom_gradient(fun=f)


def scatter(indices, values, shape):
    """A zeros tensor of ``shape`` with ``values`` added at ``indices`` (last axis indexes)."""
    indices, values = convert_to_tensor(indices), convert_to_tensor(values)
    return jnp.zeros(shape, values.dtype).at[tuple(jnp.moveaxis(indices, -1, 0))].add(values)


def scatter_update(inputs, indices, updates, reduction=None):
    """Writes ``updates`` into ``inputs`` at ``indices``; ``reduction`` in add/max/min/mul combines."""
    if reduction is not None:
        reduction = reduction.lower()
    ops = {None: "set", "add": "add", "max": "max", "min": "min", "mul": "multiply"}
    if reduction not in ops:
        raise ValueError("scatter_update: `reduction` must be one of None, 'add', 'max', 'min', 'mul'. "
                         f"Received: reduction={reduction!r}")
    inputs = convert_to_tensor(inputs)
    idx = tuple(jnp.transpose(jnp.asarray(indices)))
    return getattr(inputs.at[idx], ops[reduction])(updates)


def slice(inputs, start_indices, shape):
    """The block of ``inputs`` of ``shape`` starting at ``start_indices`` (-1 means to the end)."""
    inputs = convert_to_tensor(inputs)
    shape = tuple(inputs.shape[i] - start_indices[i] if s == -1 else s for i, s in enumerate(shape))
    return jax.lax.dynamic_slice(inputs, start_indices, shape)


def slice_update(inputs, start_indices, updates):
    """``inputs`` with the block at ``start_indices`` replaced by ``updates``."""
    inputs, updates = convert_to_tensor(inputs), convert_to_tensor(updates)
    return jax.lax.dynamic_update_slice(inputs, updates, start_indices)


def unstack(x, num=None, axis=0):
    """Splits ``x`` along ``axis`` into a list of tensors of one rank less."""
    x = convert_to_tensor(x)
    return [jax.lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]


def jvp(fun, primals, tangents, has_aux=False):
    """Forward-mode Jacobian-vector product (``jax.jvp``)."""
    return jax.jvp(fun, primals, tangents, has_aux=has_aux)



__all__ = ["associative_scan", "cast", "cond", "convert_to_numpy", "convert_to_tensor", "custom_gradient", "dtype",
           "fori_loop", "is_tensor", "jvp", "map", "saturate_cast", "scan", "scatter", "scatter_update", "shape",
           "slice", "slice_update", "stop_gradient", "switch", "unstack", "vectorized_map", "while_loop"]
