"""Plans under many processes (``jax.distributed``): what runs, what is refused.

Every process runs the same programs over one mesh of all processes' devices, so a plan
must use every device of the job, and a batch split over data-parallel devices of
several processes must split evenly.
"""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding

from hybridnet.planner.plan import Plan


def _job() -> str:
    return f"{jax.process_count()} processes x {jax.local_device_count()} devices"


def check_plan_processes(plan: Plan, where: str) -> None:
    """Refuses, under several processes, a plan that leaves a device of the job out or a
    pipeline (stage transfers between processes are not supported yet)."""
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
    if len(plan.stages) > 1:
        raise NotImplementedError(
            f"{where}: a pipeline whose stages lie on more than one process is not supported "
            f"yet (moving activations between processes' stage meshes). Received: "
            f"{len(plan.stages)} stages over {_job()}. Use DataParallel, ModelParallel or a "
            f"Hybrid mesh without 'pipe' across processes.")


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


__all__ = ["batch_spans_processes", "check_plan_processes", "check_process_batch"]
