"""Plan: plain data saying where every array lives and why.

The Plan is the single source of truth for placement: the executor reads the mesh,
every weight's PartitionSpec, the sharding constraint at each layer boundary and
the pipeline stages from it, and decides nothing on its own. Everything here is
JSON-serialisable; nothing holds a device or an array.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def spec_to_json(spec: PartitionSpec | None):
    if spec is None:
        return None
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def spec_from_json(entries) -> PartitionSpec | None:
    if entries is None:
        return None
    return PartitionSpec(*[tuple(a) if isinstance(a, list) else a for a in entries])


@dataclasses.dataclass
class LayerPlan:
    """Placement and estimates of one layer.

    Attributes:
        name, kind: the layer's name and class name.
        parallel: "data", "model" (tensor parallel, with ``mode``) or "none" (no weights).
        mode: for tensor parallelism, e.g. "column", "row", "out_channels", "vocab", "hidden".
        stage: pipeline stage index (0 without pipelining).
        weights: weight name -> PartitionSpec over the stage's mesh axes.
        output_spec: sharding constraint of the layer's output (None: let the compiler pick).
        flops: forward FLOPs per sample; param_bytes: whole (unsharded) weight bytes.
        memory_bytes: per-device parameter + optimizer + activation bytes estimate.
        comm_bytes: collective bytes per training step attributed to this layer.
        reason: why this placement was chosen (one line, for the summary).
    """
    name: str
    kind: str
    parallel: str = "data"
    mode: str | None = None
    stage: int = 0
    weights: dict[str, PartitionSpec] = dataclasses.field(default_factory=dict)
    output_spec: PartitionSpec | None = None
    flops: float = 0.0
    param_bytes: int = 0
    memory_bytes: float = 0.0
    comm_bytes: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weights"] = {w: spec_to_json(s) for w, s in self.weights.items()}
        d["output_spec"] = spec_to_json(self.output_spec)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerPlan":
        d = dict(d)
        d["weights"] = {w: spec_from_json(s) for w, s in d["weights"].items()}
        d["output_spec"] = spec_from_json(d["output_spec"])
        return cls(**d)


@dataclasses.dataclass
class StagePlan:
    """One pipeline stage: its layers (in execution order) and its devices."""
    index: int
    layers: list[str]
    device_ids: list[int]
    flops: float = 0.0
    memory_bytes: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Estimates:
    """What the plan was chosen by (all per training step unless noted)."""
    step_time_s: float = 0.0
    compute_time_s: float = 0.0
    comm_time_s: float = 0.0
    comm_bytes: float = 0.0
    memory_bytes_per_device: float = 0.0
    bubble_fraction: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    """Mesh, placement of every weight and activation, pipeline stages, estimates.

    ``mesh_axes`` orders the axes as the device array is reshaped, e.g.
    ``{"pipe": 2, "data": 2, "model": 2}``; each stage runs on the sub-mesh of
    ``stage_axes`` (the axes other than ``pipe``) over its ``device_ids``.

    ``notes`` say why the plan is what it is; ``changes`` (also among the notes) say
    where it differs from what was asked (an annotation ignored, a layer left unsharded,
    devices unused, a batch that is replicated): fit warns with them. ``batch_size`` is
    the batch the plan was made and costed for (None: not given); ``uneven_batch`` says
    what runs when a batch does not divide over the data axes: "replicate" (every device
    of a stage computes it whole).
    """
    mesh_axes: dict[str, int]
    device_ids: list[int]
    layers: dict[str, LayerPlan]
    batch_axes: tuple[str, ...] = ("data",)
    model_axis: str | None = None
    pipe_axis: str | None = None
    stages: list[StagePlan] = dataclasses.field(default_factory=list)
    microbatches: int = 1
    schedule: str = "none"
    estimates: Estimates = dataclasses.field(default_factory=Estimates)
    device_kind: str = "cpu"
    notes: list[str] = dataclasses.field(default_factory=list)
    changes: list[str] = dataclasses.field(default_factory=list)
    batch_size: int | None = None
    uneven_batch: str = "replicate"

    # ----------------------------------------------------------- derived
    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch is split (within a stage)."""
        return int(np.prod([self.mesh_axes[a] for a in self.batch_axes])) if (
            self.batch_axes) else 1

    @property
    def batch_spec(self) -> PartitionSpec:
        axes = tuple(self.batch_axes)
        return PartitionSpec(axes if len(axes) > 1 else (axes[0] if axes else None))

    @property
    def num_stages(self) -> int:
        return max(len(self.stages), 1)

    @property
    def stage_axes(self) -> dict[str, int]:
        return {a: n for a, n in self.mesh_axes.items() if a != self.pipe_axis}

    @property
    def weight_specs(self) -> dict[str, dict[str, PartitionSpec]]:
        return {name: dict(lp.weights) for name, lp in self.layers.items() if lp.weights}

    def mesh(self, device_ids: list[int] | None = None) -> Mesh:
        """The device mesh (or a stage's sub-mesh over ``device_ids``)."""
        by_id = {d.id: d for d in jax.devices()}
        missing = [i for i in (device_ids or self.device_ids) if i not in by_id]
        if missing:
            raise ValueError(f"Plan: devices {missing} are not available here; the plan was made "
                             f"for {self.num_devices} devices. Received: {len(by_id)} devices")
        if device_ids is None:
            devices = np.array([by_id[i] for i in self.device_ids]).reshape(
                tuple(self.mesh_axes.values()))
            return Mesh(devices, tuple(self.mesh_axes))
        axes = self.stage_axes
        devices = np.array([by_id[i] for i in device_ids]).reshape(tuple(axes.values()))
        return Mesh(devices, tuple(axes))

    def weight_shardings(self, mesh: Mesh) -> dict:
        return {layer: {w: NamedSharding(mesh, spec) for w, spec in specs.items()}
                for layer, specs in self.weight_specs.items()}

    def batch_sharding(self, mesh: Mesh, batch_size: int) -> NamedSharding:
        """Batch split on the data axis; replicated when it does not divide evenly,
        so no sample is dropped or counted twice."""
        if self.batch_axes and batch_size % self.data_parallel_size == 0:
            return NamedSharding(mesh, self.batch_spec)
        return NamedSharding(mesh, PartitionSpec())

    # ------------------------------------------------------------ output
    def to_dict(self) -> dict:
        return {
            "mesh_axes": self.mesh_axes, "device_ids": self.device_ids,
            "batch_axes": list(self.batch_axes), "model_axis": self.model_axis,
            "pipe_axis": self.pipe_axis, "microbatches": self.microbatches,
            "schedule": self.schedule, "device_kind": self.device_kind, "notes": self.notes,
            "changes": self.changes, "batch_size": self.batch_size,
            "uneven_batch": self.uneven_batch,
            "layers": [lp.to_dict() for lp in self.layers.values()],
            "stages": [s.to_dict() for s in self.stages],
            "estimates": self.estimates.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        layers = {lp["name"]: LayerPlan.from_dict(lp) for lp in d.pop("layers")}
        stages = [StagePlan(**s) for s in d.pop("stages")]
        estimates = Estimates(**d.pop("estimates"))
        d["batch_axes"] = tuple(d["batch_axes"])
        return cls(layers=layers, stages=stages, estimates=estimates, **d)

    def summary(self) -> str:
        """A table a person can read: layer, parallelism, sharding, memory, comm, stage."""
        from hybridnet.planner import report
        return report.summary(self)

    def save_figure(self, path) -> None:
        """Draws the mesh placement and the pipeline schedule (PNG or SVG)."""
        from hybridnet.planner import report
        report.save_figure(self, path)

    def __str__(self):
        return self.summary()
