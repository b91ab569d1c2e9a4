"""Plan: plain data saying where every array lives, and the planner that makes it.

The Plan is the single source of truth for placement: the executor reads mesh
axes, parameter PartitionSpecs and the batch axis from it and decides nothing
on its own.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hybridnet import strategies as strategies_lib


@dataclasses.dataclass
class Plan:
    """Mesh shape and axis names, a PartitionSpec per weight, the batch axis."""
    mesh_axes: dict[str, int]
    device_ids: list[int]
    weight_specs: dict[str, dict[str, PartitionSpec]]
    batch_axis: str | None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def data_parallel_size(self) -> int:
        return self.mesh_axes.get(self.batch_axis, 1) if self.batch_axis else 1

    def mesh(self) -> Mesh:
        by_id = {d.id: d for d in jax.devices()}
        devices = np.array([by_id[i] for i in self.device_ids]).reshape(
            tuple(self.mesh_axes.values()))
        return Mesh(devices, tuple(self.mesh_axes))

    def weight_shardings(self, mesh: Mesh) -> dict:
        return {layer: {w: NamedSharding(mesh, spec) for w, spec in specs.items()}
                for layer, specs in self.weight_specs.items()}

    def batch_sharding(self, mesh: Mesh, batch_size: int) -> NamedSharding:
        """Batch split on the data axis; replicated when it does not divide evenly,
        so no sample is dropped or counted twice."""
        if self.batch_axis and batch_size % self.data_parallel_size == 0:
            return NamedSharding(mesh, PartitionSpec(self.batch_axis))
        return NamedSharding(mesh, PartitionSpec())

    def to_json(self) -> str:
        return json.dumps({
            "mesh_axes": self.mesh_axes, "device_ids": self.device_ids,
            "batch_axis": self.batch_axis, "notes": self.notes,
            "weight_specs": {layer: {w: list(spec) for w, spec in specs.items()}
                             for layer, specs in self.weight_specs.items()}}, indent=2)

    def summary(self) -> str:
        lines = [f"Plan: mesh {self.mesh_axes} over {self.num_devices} device(s); "
                 f"batch split on {self.batch_axis!r}"]
        for layer, specs in self.weight_specs.items():
            for w, spec in specs.items():
                lines.append(f"  {layer}/{w}: {spec}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def make_plan(weight_specs: dict[str, dict[str, Any]], strategy, devices=None) -> Plan:
    """Plans ``weight_specs`` (layer -> weight -> WeightSpec) under ``strategy``.

    Pure: reads shapes only, allocates nothing.
    """
    strategy = strategies_lib.get(strategy)
    devices = list(strategy.devices if strategy.devices is not None else
                   (devices if devices is not None else jax.local_devices()))
    if not devices:
        raise ValueError("make_plan: no devices. Received: devices=[]")
    replicated = {layer: {w: PartitionSpec() for w in specs}
                  for layer, specs in weight_specs.items()}
    return Plan(mesh_axes={strategy.axis_name: len(devices)},
                device_ids=[d.id for d in devices], weight_specs=replicated,
                batch_axis=strategy.axis_name)
