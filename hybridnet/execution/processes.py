"""Plans under many processes (``jax.distributed``): what runs, what is refused.

Every process runs the same programs over one mesh of all processes' devices, so a plan
must use every device of the job, and a batch split over data-parallel devices of
several processes must split evenly.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from hybridnet.planner.plan import Plan


def _job() -> str:
    return f"{jax.process_count()} processes x {jax.local_device_count()} devices"


def check_plan_processes(plan: Plan, where: str) -> None:
    """Refuses, under several processes, a plan that leaves a device of the job out."""
    if jax.process_count() == 1:
        return
    used = set(plan.device_ids)
    left_out = [d.id for d in jax.devices() if d.id not in used]
    if left_out:
        raise ValueError(
            f"{where}: under {_job()} every process runs the same program, so the plan must "
            f"use all {jax.device_count()} devices of the job. Received: a mesh "
            f"{dict(plan.mesh_axes)} of {plan.num_devices} devices (launch as many devices "
            f"as the mesh asks for, or ask for a mesh of {jax.device_count()})")


def batch_spans_processes(plan: Plan, mesh) -> bool:
    """Whether the plan's batch axes split a batch between processes."""
    size = plan.data_parallel_size
    if jax.process_count() == 1 or size < 2:
        return False
    index_map = NamedSharding(mesh, plan.batch_spec).devices_indices_map((size,))
    slices: dict = {}
    for device, index in index_map.items():
        slices.setdefault(device.process_index, set()).add(index[0].indices(size)[:2])
    return len({frozenset(s) for s in slices.values()}) > 1


def check_process_batch(plan: Plan, mesh, batch_size: int, what: str) -> None:
    """Refuses a global batch that the data-parallel devices of several processes do not
    divide evenly."""
    size = plan.data_parallel_size
    if batch_size % size and batch_spans_processes(plan, mesh):
        raise ValueError(
            f"{what}: under {_job()} each global batch is split over the {size} "
            f"data-parallel devices of all processes, so `batch_size` must be divisible by "
            f"{size}. Received: batch_size={batch_size}")



# ------------------------------------------------------------------ moving arrays

def put_host(value, sharding):
    """A host value (the same on every process) as an array with ``sharding``; each
    process puts only the parts its own devices hold."""
    if jax.process_count() == 1 or sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index],
                                        dtype=value.dtype)


def transfer(value, sharding: NamedSharding, meshes):
    """``jax.device_put(value, sharding)``, also where the source and target devices lie on
    different processes (pipeline stages): every process runs the same programs.

    Between two equally shaped sub-meshes (``meshes``: the stage meshes, one of which holds
    ``value``) the array is stacked on a new leading axis over both and moved by one
    ``ppermute`` on it, a collective every multi-process backend runs (gloo on CPU,
    NCCL on GPU); a host value goes through :func:`put_host`.
    """
    if not isinstance(value, jax.Array):
        return put_host(value, sharding)
    if jax.process_count() == 1 or (value.is_fully_addressable
                                    and sharding.is_fully_addressable):
        return jax.device_put(value, sharding)
    if isinstance(value.sharding, SingleDeviceSharding):
        return put_host(np.asarray(value), sharding)  # a process-local value
    target = sharding.mesh
    source = next((m for m in meshes if set(m.devices.flat) == value.sharding.device_set),
                  None)
    if source is None or source.devices.shape != target.devices.shape:
        # Not between two stages (weights placed from the whole mesh): through the hosts.
        from jax.experimental import multihost_utils
        return put_host(multihost_utils.process_allgather(value, tiled=True), sharding)
    if source is target or set(source.devices.flat) == set(target.devices.flat):
        return jax.device_put(value, sharding)
    spec = (value.sharding.spec if isinstance(value.sharding, NamedSharding)
            and value.sharding.mesh.devices.shape == source.devices.shape
            and value.sharding.mesh.axis_names == target.axis_names else PartitionSpec())
    if isinstance(value.sharding, NamedSharding) and value.sharding.mesh is not source:
        value = jax.device_put(value, NamedSharding(source, spec))  # same devices
    moved = _move_between(value, source, target, spec)
    return moved if spec == sharding.spec else _reshard(moved, sharding)


def _move_between(value, source: Mesh, target: Mesh, spec) -> jax.Array:
    names = ("transfer",) + tuple(target.axis_names)
    both = Mesh(np.stack([source.devices, target.devices]), names)
    stacked = NamedSharding(both, PartitionSpec("transfer", *spec))
    shape = (2,) + tuple(value.shape)
    shard_shape = stacked.shard_shape(shape)
    mine = {s.device: s.data for s in value.addressable_shards}
    pieces = []
    for device in stacked.addressable_devices:
        data = mine.get(device)
        pieces.append(jax.device_put(data[None], device) if data is not None else
                      jax.device_put(np.zeros(shard_shape, value.dtype), device))
    order = {d: i for i, d in enumerate(stacked.addressable_devices)}
    pieces.sort(key=lambda a: order[next(iter(a.devices()))])
    moved = _ppermute(both, PartitionSpec("transfer", *spec))(
        jax.make_array_from_single_device_arrays(shape, stacked, pieces, dtype=value.dtype))
    on_target = NamedSharding(target, spec)
    arrays = [s.data[0] for s in moved.addressable_shards
              if s.device in on_target.addressable_devices]
    return jax.make_array_from_single_device_arrays(tuple(value.shape), on_target, arrays,
                                                    dtype=value.dtype)


@functools.lru_cache(maxsize=None)
def _ppermute(mesh: Mesh, spec):
    shard_map, check = _shard_map()
    return jax.jit(shard_map(lambda a: jax.lax.ppermute(a, "transfer", [(0, 1)]),
                             mesh=mesh, in_specs=spec, out_specs=spec, **{check: False}))


def to_every_process(value):
    """``value`` replicated over every device of the job, so that each process can read
    it (one psum from one device that holds it; dispatched, nothing waits)."""
    if (jax.process_count() == 1 or not isinstance(value, jax.Array)
            or not isinstance(value.sharding, NamedSharding)):
        return value
    holders = {d.process_index for d in value.sharding.device_set}
    if value.is_fully_replicated and len(holders) == jax.process_count():
        return value
    if not value.is_fully_replicated:
        value = _reshard(value, value.sharding.update(spec=PartitionSpec()))
    first = min(value.sharding.device_set, key=lambda d: d.id)
    mesh = Mesh(np.array(sorted(jax.devices(), key=lambda d: d.id)), ("all",))
    mine = {s.device: s.data for s in value.addressable_shards}
    wire = np.int32 if value.dtype == np.bool_ else value.dtype
    pieces = [(mine[d].astype(wire) if d == first else
               jax.device_put(np.zeros(value.shape, wire), d))[None]
              for d in mesh.local_devices]
    stacked = jax.make_array_from_single_device_arrays(
        (mesh.size,) + tuple(value.shape), NamedSharding(mesh, PartitionSpec("all")), pieces,
        dtype=wire)
    return _psum_all(mesh, str(value.dtype))(stacked)


@functools.lru_cache(maxsize=None)
def _psum_all(mesh: Mesh, dtype: str):
    shard_map, check = _shard_map()
    return jax.jit(shard_map(lambda a: jax.lax.psum(a, "all")[0].astype(dtype), mesh=mesh,
                             in_specs=PartitionSpec("all"), out_specs=PartitionSpec(),
                             **{check: False}))


def _shard_map():
    if hasattr(jax, "shard_map"):
        return jax.shard_map, "check_vma"
    from jax.experimental.shard_map import shard_map  # older jax
    return shard_map, "check_rep"


@functools.lru_cache(maxsize=None)
def _resharder(sharding):
    return jax.jit(lambda a: a, out_shardings=sharding)


def _reshard(value, sharding):
    """``value`` with ``sharding`` on the same devices (a program every process runs)."""
    return _resharder(sharding)(value)


__all__ = ["batch_spans_processes", "check_plan_processes", "check_process_batch",
           "put_host", "to_every_process", "transfer"]
