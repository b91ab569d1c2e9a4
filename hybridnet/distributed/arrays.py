"""Reading arrays that span processes back to the host.

Under ``jax.distributed`` an array may live on devices of several processes; no process
can read it with ``np.asarray``. These functions are collective: every process calls
them with the same arrays in the same order (one program, many controllers).
"""
from __future__ import annotations

import jax
import numpy as np


def _spans_processes(array) -> bool:
    """Whether some process cannot read ``array`` whole by itself (decided from the
    sharding alone, so every process decides alike)."""
    if not isinstance(array, jax.Array) or jax.process_count() == 1:
        return False
    holders = {d.process_index for d in array.sharding.device_set}
    return not (array.is_fully_replicated and len(holders) == jax.process_count())


def fetch(array) -> np.ndarray:
    """The whole value of ``array`` as numpy, on every process (each shard some process
    lacks is broadcast by the lowest process that holds it)."""
    if not _spans_processes(array):
        return np.asarray(array.addressable_data(0) if isinstance(array, jax.Array)
                          and not array.is_fully_addressable else array)
    dtype = np.dtype(array.dtype)
    out = np.empty(array.shape, dtype)
    local = {_bounds(s.index, array.shape): s.data for s in array.addressable_shards}
    for key, (index, processes) in sorted(_owners(array).items()):
        if len(processes) == jax.process_count():
            out[index] = np.asarray(local[key])
        else:
            out[index] = _send_to_all(local.get(key), min(processes),
                                      tuple(b - a for a, b in key), dtype)
    return out


def _owners(array) -> dict:
    """Shard bounds -> (its index, the processes holding it)."""
    owners: dict = {}
    for device, index in array.sharding.devices_indices_map(array.shape).items():
        owners.setdefault(_bounds(index, array.shape), (index, set()))[1].add(
            device.process_index)
    return owners


def _bounds(index, shape) -> tuple:
    return tuple(sl.indices(dim)[:2] for sl, dim in zip(index, shape))


def fetch_to_chief(array) -> np.ndarray | None:
    """The whole value of ``array`` on the chief (process 0), None elsewhere.

    The chief copies the shards it holds; each shard it lacks is sent by the lowest
    process that holds it, one shard at a time, so no other process ever holds more of
    the array than its own shards plus one shard in flight.
    """
    chief = jax.process_index() == 0
    if not _spans_processes(array):
        return fetch(array) if chief else None
    owners = _owners(array)
    local = {_bounds(s.index, array.shape): s.data for s in array.addressable_shards}
    dtype = np.dtype(array.dtype)
    out = np.empty(array.shape, dtype) if chief else None
    for key in sorted(owners):
        index, processes = owners[key]
        if 0 in processes:
            if chief:
                out[index] = np.asarray(local[key])
            continue
        out_piece = _send_to_all(local.get(key), min(processes),
                                 tuple(b - a for a, b in key), dtype)
        if chief:
            out[index] = out_piece
    return out


def _send_to_all(piece, source: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """``piece`` (held by process ``source``) on every process."""
    from jax.experimental import multihost_utils
    is_source = jax.process_index() == source
    wire = np.uint8 if dtype == np.bool_ else dtype  # a sum of booleans is not boolean
    value = np.asarray(piece).astype(wire) if is_source else np.zeros(shape, wire)
    got = multihost_utils.broadcast_one_to_all(value, is_source=is_source)
    return np.asarray(got).astype(dtype, copy=False)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called ``name`` (no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


__all__ = ["barrier", "fetch", "fetch_to_chief"]
