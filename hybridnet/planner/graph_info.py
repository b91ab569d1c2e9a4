"""What the planner knows of a model: per layer, shapes, weights and annotations.

Plain data, made by ``Model.layer_infos()`` from the built graph; the planner never
sees layers, arrays or devices, so a model can be planned for a cluster this
machine does not have.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[str | None, ...] | None
    trainable: bool = True

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * (2 if self.dtype in ("bfloat16", "float16") else
                            8 if self.dtype in ("float64", "int64") else 4)


@dataclasses.dataclass
class LayerInfo:
    """One layer as the planner sees it (shapes exclude nothing: batch dim is None).

    Attributes:
        name, kind: layer name and class name.
        weights: weight name -> WeightInfo.
        input_shapes, output_shapes: one tuple per tensor (first call of the layer).
        parallel: the layer's ``parallel=`` annotation ("data", "model" or a Shard).
        stage: the layer's ``stage=`` annotation (None: the planner decides).
        config: the layer's config (units, filters, kernel_size, strides, ...).
        calls: how many times the graph calls the layer (shared layers > 1).
        inbound: names of the layers whose outputs this layer reads (first call).
    """
    name: str
    kind: str
    weights: dict[str, WeightInfo]
    input_shapes: list[tuple]
    output_shapes: list[tuple]
    parallel: Any = "data"
    stage: int | None = None
    config: dict = dataclasses.field(default_factory=dict)
    calls: int = 1
    inbound: list = dataclasses.field(default_factory=list)

    @property
    def param_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())

    @property
    def param_count(self) -> int:
        return sum(w.size for w in self.weights.values())
