"""Shared helpers for the Pallas kernels: backend detection, block-size
defaults, compiler parameters, on-chip memory budgets (TPU VMEM, Triton
shared memory), a small GPU autotuner and a batch-sharding wrapper.

Nothing here reads global device state beyond ``jax.default_backend()`` when a
caller leaves ``backend=None``, and the attached TPU's VMEM size in
:func:`tpu_vmem_capacity`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import NamedSharding, PartitionSpec as P

BACKENDS = ("cpu", "gpu", "tpu")
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


# --------------------------------------------------------------------------
# backend and interpret mode
# --------------------------------------------------------------------------
def resolve_backend(backend: str | None = None) -> str:
    """Returns "cpu", "gpu" or "tpu". ``None`` means ``jax.default_backend()``.

    "cuda" and "rocm" are accepted as spellings of "gpu", so the platform names
    used by ``lower(lowering_platforms=...)`` can be passed straight through.
    """
    if backend is None:
        backend = jax.default_backend()
    b = str(backend).lower()
    if b in ("cuda", "rocm"):
        b = "gpu"
    if b not in BACKENDS:
        raise ValueError(
            f"Argument `backend` must be one of {BACKENDS + ('cuda', 'rocm')} "
            f"or None. Received: backend={backend!r}")
    return b


def resolve_interpret(interpret: bool | None, backend: str) -> bool:
    """``interpret=None`` means True on CPU (the only way Pallas runs there)
    and False on GPU/TPU."""
    if interpret is None:
        return backend == "cpu"
    return bool(interpret)


def compiler_params(backend: str, interpret: bool, *, num_warps: int = 4,
                    num_stages: int = 2, dimension_semantics=None,
                    vmem_bytes: int | None = None, kernel: str = "kernel",
                    block_sizes: Mapping[str, Any] | None = None,
                    hint: str = ""):
    """Compiler parameters for ``pl.pallas_call``.

    GPU: Triton parameters (``plgpu.CompilerParams``); a plain ``pallas_call``
    on NVIDIA would lower through Mosaic GPU, whose lane semantics do not
    lower ``dot_general``. TPU: Mosaic ``pltpu.CompilerParams`` with the grid
    dimension semantics and, when ``vmem_bytes`` (see :func:`vmem_bytes`) is
    over the default scoped VMEM limit, a ``vmem_limit_bytes`` from
    :func:`tpu_vmem_limit`, which raises a ValueError naming ``kernel``,
    ``block_sizes`` and ``hint`` when the blocks cannot fit. CPU/interpret:
    None.
    """
    if interpret or backend == "cpu":
        return None
    if backend == "gpu":
        from jax.experimental.pallas import triton as plgpu
        return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    from jax.experimental.pallas import tpu as pltpu
    kw = {}
    if dimension_semantics is not None:
        kw["dimension_semantics"] = tuple(dimension_semantics)
    if vmem_bytes is not None:
        limit = tpu_vmem_limit(vmem_bytes, kernel=kernel,
                               block_sizes=block_sizes, hint=hint)
        if limit is not None:
            kw["vmem_limit_bytes"] = limit
    return pltpu.CompilerParams(**kw)


def pallas_call(kernel, *, grid, in_specs, out_specs, out_shape, name: str,
                backend: str, interpret, num_warps: int = 4,
                num_stages: int = 2, input_output_aliases=None,
                label: str = "kernel", block_sizes=None, hint: str = ""):
    """``pl.pallas_call`` with this package's compiler parameters: every grid
    dimension parallel, Triton's ``num_warps``/``num_stages`` on GPU, and on
    TPU the VMEM limit its blocks need, sized from the specs and the operands
    the returned function is called with (:func:`compiler_params`).
    ``interpret`` goes to ``pl.pallas_call`` as given (False, True or
    ``pltpu.InterpretParams()``); ``label``, ``block_sizes`` and ``hint`` name
    the kernel in a VMEM error.

    Example:
        >>> y = pallas_call(kernel, grid=(4,), in_specs=[spec], out_specs=spec,
        ...                 out_shape=x_struct, name="my_kernel",
        ...                 backend="gpu", interpret=False)(x)
    """
    def call(*operands):
        need = vmem_bytes(spec_blocks(in_specs, operands)
                          + spec_blocks(out_specs, out_shape))
        params = compiler_params(
            backend, bool(interpret), num_warps=num_warps,
            num_stages=num_stages,
            dimension_semantics=("parallel",) * len(grid), vmem_bytes=need,
            kernel=label, block_sizes=block_sizes, hint=hint)
        return pl.pallas_call(
            kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
            out_specs=out_specs,
            input_output_aliases=dict(input_output_aliases or {}),
            compiler_params=params, interpret=interpret, name=name)(*operands)

    return call


# --------------------------------------------------------------------------
# on-chip memory budgets: TPU VMEM (Mosaic) and GPU shared memory (Triton)
# --------------------------------------------------------------------------
MiB = 1 << 20

# XLA:TPU's default scoped VMEM limit (``--xla_tpu_scoped_vmem_limit_kib``)
# on v4/v5e; v6e and later default to 32 MiB. A kernel whose blocks need more
# must say so with ``vmem_limit_bytes``.
TPU_DEFAULT_SCOPED_VMEM_BYTES = 16 * MiB

# Physical VMEM per TensorCore, from jax's own table
# (``jax/_src/pallas/mosaic/tpu_info.py``, ``pltpu.get_tpu_info()``):
# v2/v3/v4 16 MiB, v5p 64 MiB, v5e 128 MiB, v6e 128 MiB, 7x 64 MiB. With a
# TPU attached, :func:`tpu_vmem_capacity` asks the chip; without one (cross-
# lowering), 128 MiB, the largest of v4..7x, is the ceiling: a need above it
# fits none of them, while a need between 64 and 128 MiB fits v5e/v6e only
# and is left to libtpu.
TPU_VMEM_CAPACITY_BYTES = 128 * MiB

# Headroom over the block buffers for Mosaic's internal scratch and spilled
# in-kernel values (the largest in these kernels: conv2d's (block_m,
# block_cout) float32 accumulator, 128 KiB at the TPU defaults).
TPU_VMEM_MARGIN_BYTES = 4 * MiB

# Shared memory one thread block may use on Hopper (H100/H200, compute
# capability 9.0): 227 KiB of the SM's 228 KiB (NVIDIA "Tuning CUDA
# Applications for Hopper GPU Architecture", shared memory section).
TRITON_SMEM_LIMIT_BYTES = 232448


def _prod(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64))


def vmem_block_bytes(shape, dtype) -> int:
    """Bytes of one VMEM buffer for a block: the two minor dimensions are
    padded to Mosaic's tiles, 128 lanes by 8 sublanes of 32 bits (16 rows
    for 16-bit dtypes, 32 for 8-bit); a 1-D block is one such row.

    Example:
        >>> vmem_block_bytes((50, 8, 1), jnp.float32)  # mask: 1 -> 128 lanes
        204800
    """
    item = jnp.dtype(dtype).itemsize
    shape = (1,) * max(0, 2 - len(shape)) + tuple(int(d) for d in shape)
    rows = round_up(shape[-2], 8 * max(1, 4 // item))
    return _prod(shape[:-2]) * rows * round_up(shape[-1], 128) * item


def vmem_bytes(blocks, *, buffers: int = 2) -> int:
    """VMEM bytes a ``pallas_call`` allocates per program: ``buffers`` copies
    (Mosaic double-buffers every BlockSpec'ed input and output) of each
    ``(shape, dtype)`` block. Scratch shapes, if any, must be added once.

    Example:
        >>> vmem_bytes([((256, 128), jnp.float32), ((128, 128), jnp.bfloat16)])
        327680
    """
    return buffers * sum(vmem_block_bytes(s, d) for s, d in blocks)


def spec_blocks(specs, arrays) -> list:
    """``(block shape, dtype)`` of each BlockSpec in ``specs`` for the
    operand (or ``ShapeDtypeStruct``) at the same position of ``arrays``;
    a ``None`` block dimension (squeezed) counts as 1, a ``None`` block
    shape as the whole array. A single spec and array are accepted, as
    ``pallas_call`` accepts them for ``out_specs``/``out_shape``.

    Example:
        >>> need = vmem_bytes(spec_blocks(in_specs, args)
        ...                   + spec_blocks(out_specs, out_shape))
    """
    if not isinstance(specs, (list, tuple)):
        specs, arrays = (specs,), (arrays,)
    out = []
    for spec, a in zip(specs, arrays, strict=True):
        shape = getattr(spec, "block_shape", None)
        shape = a.shape if shape is None else tuple(
            1 if d is None else int(getattr(d, "block_size", d)) for d in shape)
        out.append((shape, a.dtype))
    return out


def tpu_vmem_capacity() -> int:
    """Physical VMEM of the attached TPU's TensorCore, or
    ``TPU_VMEM_CAPACITY_BYTES`` when no TPU is attached (cross-lowering)."""
    try:
        if jax.default_backend() == "tpu":
            from jax.experimental.pallas import tpu as pltpu
            return int(pltpu.get_tpu_info().vmem_capacity_bytes)
    except (ValueError, RuntimeError, AttributeError):  # unknown chip
        pass
    return TPU_VMEM_CAPACITY_BYTES


def tpu_vmem_limit(need: int, *, kernel: str = "kernel",
                   block_sizes: Mapping[str, Any] | None = None,
                   hint: str = "", capacity: int | None = None) -> int | None:
    """The ``vmem_limit_bytes`` for a Mosaic kernel whose blocks need
    ``need`` bytes: None while ``need + TPU_VMEM_MARGIN_BYTES`` fits the
    default scoped limit, else that sum rounded up to a MiB (at most
    ``capacity``). Raises a ValueError when ``need`` exceeds ``capacity``
    (default :func:`tpu_vmem_capacity`); ``hint`` says which block sizes
    drive the need.

    Example:
        >>> tpu_vmem_limit(50 * MiB, kernel="lstm")
        56623104
    """
    capacity = tpu_vmem_capacity() if capacity is None else int(capacity)
    if need > capacity:
        raise ValueError(
            f"{kernel}: the blocks of one program need {need} bytes "
            f"({need / MiB:.1f} MiB) of TPU VMEM, inputs and outputs "
            f"double-buffered, but {capacity} bytes ({capacity / MiB:.0f} "
            f"MiB) are available. Pass smaller block sizes"
            f"{'; ' + hint if hint else ''}. Received: "
            f"block_sizes={dict(block_sizes or {})!r}")
    want = need + TPU_VMEM_MARGIN_BYTES
    if want <= TPU_DEFAULT_SCOPED_VMEM_BYTES:
        return None
    return min(round_up(want, MiB), capacity)


def triton_smem_bytes(dots, *, num_stages: int) -> int:
    """Estimated shared memory of a Triton kernel from its inner dots: for
    the dots of the innermost loop, ``num_stages`` copies of the A and B
    operand tiles (software pipelining stages them in shared memory), plus
    one float32 accumulator tile per dot (its layout conversion for the
    epilogue goes through shared memory); the largest loop counts.

    ``dots`` lists, per innermost loop, ``(a_tiles, b_tiles, acc_tiles,
    dtype)`` with tiles as shapes. This is an estimate, not Triton's own
    accounting (which reuses buffers, may pipeline fewer operands, and adds
    barriers and scratch); it serves to skip autotune candidates that
    cannot compile, e.g. against ``TRITON_SMEM_LIMIT_BYTES``. Compiled for
    sm_90 (``kernels.triton_compile``), every default and autotune candidate
    of conv2d and lstm allocates at most 0.93 of it (checked in
    ``tests/test_kernels_triton_compile.py``).

    Example:
        >>> triton_smem_bytes([([(64, 32)], [(32, 64)], [(64, 64)],
        ...                     jnp.float32)], num_stages=2)
        49152
    """
    best = 0
    for a_tiles, b_tiles, acc_tiles, dtype in dots:
        item = jnp.dtype(dtype).itemsize
        operands = sum(_prod(t) for t in (*a_tiles, *b_tiles)) * item
        acc = sum(_prod(t) for t in acc_tiles) * 4
        best = max(best, num_stages * operands + acc)
    return best


def fit_triton_smem(candidates, smem: Callable[[Mapping[str, Any]], int], *,
                    limit: int = TRITON_SMEM_LIMIT_BYTES) -> list:
    """The autotune candidates whose estimated shared memory
    ``smem(candidate)`` is at most ``limit``, in their order.

    Example:
        >>> kept = fit_triton_smem(
        ...     cands, lambda bs: triton_smem_estimate(bs, jnp.bfloat16))
    """
    return [dict(c) for c in candidates if smem(c) <= limit]


def gpu_candidates(defaults: Mapping[str, Any], variants,
                   smem: Callable[[Mapping[str, Any]], int]) -> list:
    """Autotune candidates: ``defaults``, then each of ``variants`` (dicts
    of overrides) applied to them, keeping those whose estimated shared
    memory ``smem(candidate)`` fits a Hopper block.

    Example:
        >>> gpu_candidates(_DEFAULTS["gpu"], [{"block_m": 128}],
        ...                lambda bs: triton_smem_estimate(bs, jnp.bfloat16))
    """
    return fit_triton_smem([dict(defaults)]
                           + [{**defaults, **v} for v in variants], smem)


def gpu_barrier(backend: str, interpret: bool) -> None:
    """``__syncthreads`` between phases of a kernel that reads back what other
    threads of the same program wrote to an output ref (GPU only; TPU runs a
    program sequentially and interpret mode has no threads)."""
    if backend == "gpu" and not interpret:
        from jax.experimental.pallas import triton as plgpu
        plgpu.debug_barrier()


# --------------------------------------------------------------------------
# small arithmetic helpers
# --------------------------------------------------------------------------
def round_up(n: int, m: int) -> int:
    return -(-int(n) // int(m)) * int(m)


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def merge_block_sizes(kernel: str, defaults: Mapping[str, Any],
                      given: Mapping[str, Any] | None, *,
                      choices: Mapping[str, tuple] | None = None) -> dict:
    """Defaults overridden by ``given``; unknown keys raise a ValueError.

    Values are positive ints or None, except the keys in ``choices``, whose
    value must be one of the listed options (e.g. a kernel variant name).
    """
    choices = dict(choices or {})
    out = dict(defaults)
    if given is None:
        return out
    if not isinstance(given, Mapping):
        raise ValueError(
            f"Argument `block_sizes` of {kernel} must be a dict, None or "
            f"'autotune'. Received: block_sizes={given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"Argument `block_sizes` of {kernel} has unknown keys {unknown}; "
            f"expected a subset of {sorted(defaults)}. Received: "
            f"block_sizes={dict(given)!r}")
    for k, v in given.items():
        if k in choices:
            if v not in choices[k]:
                raise ValueError(
                    f"Argument `block_sizes[{k!r}]` of {kernel} must be one "
                    f"of {choices[k]}. Received: {v!r}")
        elif v is not None and (not isinstance(v, int) or v <= 0):
            raise ValueError(
                f"Argument `block_sizes[{k!r}]` of {kernel} must be a positive "
                f"int or None. Received: {v!r}")
        out[k] = v
    return out


def cpu_safe(*arrays, upcast: bool):
    """Upcasts bfloat16 matmul operands to float32 when ``upcast`` (CPU /
    interpret mode). XLA:CPU rejects some bf16 x bf16 -> f32 dots ("Unsupported
    element type for DotThunk"); the product of two bf16 numbers is exact in
    f32, so with float32 accumulation the result is the same."""
    if not upcast:
        return arrays if len(arrays) > 1 else arrays[0]
    out = tuple(a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a
                for a in arrays)
    return out if len(out) > 1 else out[0]


def check_dtype(kernel: str, name: str, dtype) -> str | None:
    d = jnp.dtype(dtype)
    if d not in SUPPORTED_DTYPES:
        return (f"{kernel} supports float32 and bfloat16 for `{name}`. "
                f"Received: {name}.dtype={d}")
    return None


# --------------------------------------------------------------------------
# autotuning (GPU only) with an atomic JSON cache
# --------------------------------------------------------------------------
def cache_path() -> str:
    """``$HYBRIDNET_CACHE_DIR/autotune.json`` or
    ``~/.cache/hybridnet/autotune.json``."""
    d = os.environ.get("HYBRIDNET_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "hybridnet")
    return os.path.join(d, "autotune.json")


def load_cache(path: str | None = None) -> dict:
    path = path or cache_path()
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_cache(data: dict, path: str | None = None) -> None:
    """Writes the cache atomically: a temporary file in the same folder, then
    ``os.replace`` (readers see the old or the new file, never half of one)."""
    path = path or cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".autotune.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cache_key(kernel: str, key: Mapping[str, Any], backend: str) -> str:
    try:
        kind = jax.devices(backend)[0].device_kind if backend != "cpu" else "cpu"
    except RuntimeError:
        kind = backend
    return f"{kernel}|{kind}|{json.dumps(dict(key), sort_keys=True)}"


def cached_block_sizes(kernel: str, key: Mapping[str, Any],
                       backend: str) -> dict | None:
    """A tuned choice from the cache, if one exists for this shape."""
    if backend == "cpu":
        return None
    entry = load_cache().get(cache_key(kernel, key, backend))
    return dict(entry["block_sizes"]) if entry else None


def autotune(kernel: str, key: Mapping[str, Any],
             candidates: Iterable[Mapping[str, Any]],
             run: Callable[[Mapping[str, Any]], Any], backend: str, *,
             iters: int = 5, force: bool = False) -> dict:
    """Times ``run(block_sizes)`` for each candidate, caches and returns the
    fastest. On CPU it returns the first candidate (the defaults) untimed.

    ``run`` must build and execute the computation on concrete arrays and
    return something to ``block_until_ready``. Candidates that fail to compile
    are skipped. Every timing is recorded in the cache entry.
    """
    candidates = [dict(c) for c in candidates]
    if backend == "cpu":
        return candidates[0]
    ck = cache_key(kernel, key, backend)
    cache = load_cache()
    if ck in cache and not force:
        return dict(cache[ck]["block_sizes"])
    timings = []
    for cand in candidates:
        try:
            jax.block_until_ready(run(cand))  # compile + warm up
            t0 = time.perf_counter()
            for _ in range(iters):
                out = run(cand)
            jax.block_until_ready(out)
            timings.append(((time.perf_counter() - t0) / iters, cand))
        except Exception as e:  # a candidate that does not compile
            timings.append((float("inf"), {**cand, "_error": str(e)[:200]}))
    best = min(timings, key=lambda tc: tc[0])
    if best[0] == float("inf"):
        return candidates[0]
    cache = load_cache()  # re-read: another process may have written
    cache[ck] = {"block_sizes": best[1],
                 "timings_s": [[t, c] for t, c in timings]}
    save_cache(cache)
    return best[1]


# --------------------------------------------------------------------------
# data-parallel wrapper
# --------------------------------------------------------------------------
def _shard_map():
    if hasattr(jax, "shard_map"):
        return jax.shard_map, "check_vma"
    from jax.experimental.shard_map import shard_map  # older jax
    return shard_map, "check_rep"


def _has_explicit_axes(mesh) -> bool:
    axis_type = getattr(jax.sharding, "AxisType", None)
    types = getattr(mesh, "axis_types", None)
    if axis_type is None or not types:
        return False
    return any(t == axis_type.Explicit for t in types)


def shard_batch(fn: Callable, mesh, axis: str | tuple[str, ...] = "data", *,
                batch_argnums: Iterable[int] = (0,)) -> Callable:
    """Runs ``fn`` per batch shard with ``jax.shard_map`` so that the compiler
    never gathers the batch around a kernel.

    Positional arguments listed in ``batch_argnums`` are split along their
    leading axis over mesh axis ``axis``; the others (weights) are replicated.
    Every output is sharded along its leading axis. Pass keyword options by
    closing over them (``functools.partial``). Gradients of replicated
    arguments are summed over the shards by ``shard_map``'s transpose.

    Works with Auto and Explicit mesh axes (``jax.make_mesh``'s default in
    jax 0.10 is Explicit; arguments are then resharded to the in_specs).
    With an Explicit mesh, call the kernels through this wrapper rather than
    on batch-sharded arrays directly: ``pallas_call`` itself has no sharding
    rule, and in interpret mode it fails with a ShardingTypeError.

    Example:
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> f = shard_batch(functools.partial(conv2d, padding="same"), mesh)
        >>> y = f(x, w, b)          # x: (N, H, W, C), N divisible by shards
    """
    batch_argnums = tuple(batch_argnums)
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if not all(a in mesh.axis_names for a in axes):
        raise ValueError(
            f"Argument `axis` must name axes of `mesh` "
            f"{tuple(mesh.axis_names)}. Received: axis={axis!r}")
    axis = axes if len(axes) > 1 else axes[0]
    smap, check_kw = _shard_map()

    def wrapped(*args):
        nshard = int(np.prod([mesh.shape[a] for a in axes]))
        specs = []
        for i, a in enumerate(args):
            if i in batch_argnums and a is not None:
                for leaf in jax.tree_util.tree_leaves(a):
                    if leaf.shape[0] % nshard:
                        raise ValueError(
                            f"Argument {i} of the sharded function has leading "
                            f"(batch) size {leaf.shape[0]}, which is not "
                            f"divisible by the {nshard} shards of mesh axis "
                            f"{axis!r}. Received: shape={tuple(leaf.shape)}")
                specs.append(P(axis))
            else:
                specs.append(P())
        if _has_explicit_axes(mesh):
            # Explicit-axis meshes (the jax.make_mesh default in jax 0.10)
            # require arguments already laid out as in_specs says.
            args = tuple(
                a if a is None else jax.tree_util.tree_map(
                    lambda v, s=s: jax.reshard(v, NamedSharding(mesh, s)), a)
                for a, s in zip(args, specs))
        return smap(fn, mesh=mesh, in_specs=tuple(specs), out_specs=P(axis),
                    **{check_kw: False})(*args)

    return wrapped
