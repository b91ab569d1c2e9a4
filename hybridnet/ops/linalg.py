"""Linear-algebra ops (``keras.ops.linalg``) on ``jnp.linalg`` and ``jax.scipy.linalg``.

Matrix arguments may carry leading batch dimensions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from hybridnet.ops.core import cast, convert_to_tensor, float_dtype, jvp

_t = convert_to_tensor


def _matrix(x, op, name="x", square=True):
    x = _t(x)
    if x.ndim < 2:
        raise ValueError(f"{op}: `{name}` must have rank >= 2. Received: {name}.shape={x.shape}")
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{op}: `{name}` must be square. Received: {name}.shape={x.shape}")
    return x


def _rhs(a, b, op):
    b = _t(b)
    if b.ndim < 1:
        raise ValueError(f"{op}: `b` must have rank >= 1. Received: b.shape={b.shape}")
    ok = (a.ndim == b.ndim and a.shape[-2] == b.shape[-2]) or (a.ndim == b.ndim + 1 and a.shape[-1] == b.shape[-1]) \
        or a.ndim not in (b.ndim, b.ndim + 1)
    if not ok:
        raise ValueError(f"{op}: `a` and `b` are incompatible. Received: a.shape={a.shape}, b.shape={b.shape}")
    return b


def cholesky(x, upper=False):
    """Cholesky factor of Hermitian positive-definite ``x`` (lower by default).

    Eagerly, a matrix that is not positive definite raises ``ValueError``.
    """
    out = jnp.linalg.cholesky(_matrix(x, "cholesky"), upper=upper)
    try:
        failed = bool(jnp.any(jnp.isnan(out)))
    except jax.errors.TracerBoolConversionError:
        failed = False
    if failed:
        raise ValueError("cholesky: decomposition failed; the input might not be a positive definite matrix. "
                         f"Received: x.shape={out.shape}")
    return out


def cholesky_inverse(x, upper=False):
    """The inverse of ``A`` from its Cholesky factor ``x`` (``A = x x^T``, or ``x^T x`` if ``upper``)."""
    x = _matrix(x, "cholesky_inverse")
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    inv = jsp.linalg.solve_triangular(x, eye, lower=not upper)
    return inv @ jnp.swapaxes(inv, -1, -2) if upper else jnp.swapaxes(inv, -1, -2) @ inv


def det(x):
    """Determinant of square matrices."""
    return jnp.linalg.det(_matrix(x, "det"))


def eig(x):
    """Eigenvalues and eigenvectors of general square matrices (CPU only in JAX)."""
    return jnp.linalg.eig(_matrix(x, "eig"))


def eigh(x):
    """Eigenvalues and eigenvectors of Hermitian matrices."""
    return jnp.linalg.eigh(_matrix(x, "eigh"))


def inv(x):
    """Inverse of square matrices."""
    return jnp.linalg.inv(_matrix(x, "inv"))


def lu_factor(x):
    """LU factorisation with partial pivoting: ``(lu, pivots)``."""
    x = _matrix(x, "lu_factor", square=False)
    fn = jsp.linalg.lu_factor
    for _ in range(x.ndim - 2):
        fn = jax.vmap(fn)
    return fn(x)


def norm(x, ord=None, axis=None, keepdims=False):
    """Vector or matrix norm of ``x`` (ints give floats)."""
    x = _t(x)
    x = cast(x, float_dtype(x.dtype))
    axis = tuple(axis) if isinstance(axis, list) else axis
    return jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=keepdims)


def qr(x, mode="reduced"):
    """QR decomposition ``(q, r)``; ``mode`` is ``"reduced"`` or ``"complete"``."""
    if mode not in ("reduced", "complete"):
        raise ValueError(f"qr: `mode` must be 'reduced' or 'complete'. Received: mode={mode!r}")
    return jnp.linalg.qr(_t(x), mode=mode)


def solve(a, b):
    """Solves ``a @ x = b`` for ``x``."""
    a = _matrix(a, "solve", "a")
    return jnp.linalg.solve(a, _rhs(a, b, "solve"))


def solve_triangular(a, b, lower=False):
    """Solves ``a @ x = b`` for a triangular ``a``."""
    a = _matrix(a, "solve_triangular", "a")
    return jsp.linalg.solve_triangular(a, _rhs(a, b, "solve_triangular"), lower=lower)


def svd(x, full_matrices=True, compute_uv=True):
    """Singular value decomposition ``(u, s, vh)`` (only ``s`` if not ``compute_uv``)."""
    return jnp.linalg.svd(_matrix(x, "svd", square=False), full_matrices=full_matrices, compute_uv=compute_uv)


def lstsq(a, b, rcond=None):
    """Least-squares solution of ``a @ x = b``."""
    return jnp.linalg.lstsq(_t(a), _t(b), rcond=rcond)[0]


def matrix_rank(x, tol=None):
    """Rank of matrices by SVD (int32)."""
    return jnp.linalg.matrix_rank(_matrix(x, "matrix_rank", square=False), tol=tol).astype("int32")


def pinv(x, rcond=None):
    """Moore-Penrose pseudo-inverse."""
    return jnp.linalg.pinv(_matrix(x, "pinv", square=False), rcond=rcond)


__all__ = ["cholesky", "cholesky_inverse", "det", "eig", "eigh", "inv", "jvp", "lstsq", "lu_factor",
           "matrix_rank", "norm", "pinv", "qr", "solve", "solve_triangular", "svd"]
