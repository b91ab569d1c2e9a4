"""What the user asks for: how the model should be spread over devices.

A strategy is a declarative request; the planner turns it, together with the
layers' ``parallel=`` and ``stage=`` annotations, into a
:class:`hybridnet.planner.Plan`. Pass one to ``compile(strategy=...)`` or decorate
the function that builds the model.

Example:
    >>> model.compile("adam", "mse", strategy=Hybrid(mesh={"data": 2, "model": 2, "pipe": 2},
    ...                                               microbatches=4, schedule="1f1b"))
    >>> @hybridnet.strategies.hybrid(mesh={"data": 4, "model": 2})
    ... def build():
    ...     return Sequential([...])
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

SCHEDULES = ("gpipe", "1f1b")


@dataclasses.dataclass(frozen=True)
class Shard:
    """A tensor-parallel annotation: ``Dense(4096, parallel=Shard("column"))``.

    Args:
        mode: how the layer's weights are split over the ``model`` mesh axis:
            Dense "column" (output features) or "row" (input features); Conv2D
            "out_channels"; Embedding "vocab"; LSTM "hidden". None picks the layer's
            default (Dense alternates column/row so a pair needs one all-reduce).
        axis: the mesh axis to shard over.
    """
    mode: str | None = None
    axis: str = "model"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Replicated parameters, batch split over a ``data`` mesh axis.

    Args:
        devices: the devices to use; None means every device of every process.
    """
    devices: Sequence[Any] | None = None
    axis_name: str = "data"


@dataclasses.dataclass(frozen=True)
class ModelParallel:
    """Tensor parallelism: every layer that supports it is sharded over ``model``.

    Args:
        model: size of the ``model`` axis (default: all devices); the rest is ``data``.
        devices: the devices to use; None means every device of every process.
    """
    model: int | None = None
    devices: Sequence[Any] | None = None


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """Pipeline parallelism over heterogeneous stages.

    Args:
        stages: number of stages (default: the ``stage=`` annotations, else every device
            its own stage, at most one layer per stage).
        microbatches: microbatches per batch (gradients accumulated over them).
        schedule: "gpipe" (all forwards, then all backwards) or "1f1b".
        devices: the devices to use; None means every device of every process.
    """
    stages: int | None = None
    microbatches: int = 1
    schedule: str = "gpipe"
    devices: Sequence[Any] | None = None


@dataclasses.dataclass(frozen=True)
class Hybrid:
    """Data x tensor x pipeline: ``Hybrid(mesh={"data": 2, "model": 2, "pipe": 2})``.

    Layers annotated ``parallel="model"`` (or a :class:`Shard`) are sharded over
    ``model``; stages follow ``stage=`` annotations or are cut by the planner.
    """
    mesh: Mapping[str, int] = dataclasses.field(default_factory=dict)
    microbatches: int = 1
    schedule: str = "gpipe"
    devices: Sequence[Any] | None = None


@dataclasses.dataclass(frozen=True)
class Auto:
    """Let the planner choose per-layer data or tensor parallelism and pipeline cuts from
    its cost model (compute from FLOPs and device peak, collectives from bytes and link
    bandwidth, memory limit per device).

    Args:
        devices: the devices to plan for; None means every device of every process.
        device_kind: the cost-model device ("cpu", "h100", "h200", "a100", "v5e", ...);
            None: the kind of ``devices``.
        memory_limit: bytes per device (None: the device kind's memory).
        microbatches: microbatches to use if the planner pipelines.
        batch_size: the global batch to plan for. None: the batch size ``fit`` first
            sees, or 32 when the plan is asked for before (``model.plan`` after
            ``compile``).

    Example:
        >>> model.compile("adam", loss, strategy=Auto(batch_size=64))
        >>> print(model.plan.summary())    # planned for the batch fit will get
    """
    devices: Sequence[Any] | None = None
    device_kind: str | None = None
    memory_limit: float | None = None
    microbatches: int = 8
    batch_size: int | None = None


Strategy = DataParallel | ModelParallel | Pipeline | Hybrid | Auto


def get(identifier) -> Strategy:
    """A strategy object from an object, None (data parallel) or a name."""
    if identifier is None:
        return DataParallel()
    if isinstance(identifier, (DataParallel, ModelParallel, Pipeline, Hybrid, Auto)):
        return identifier
    names = {"data": DataParallel, "data_parallel": DataParallel, "model": ModelParallel,
             "model_parallel": ModelParallel, "pipeline": Pipeline, "auto": Auto}
    if isinstance(identifier, str) and identifier in names:
        return names[identifier]()
    raise ValueError("Unknown strategy. Expected a hybridnet.strategies object or one of "
                     f"{sorted(names)}. Received: strategy={identifier!r}")


def _decorator(strategy: Strategy):
    def wrap(build_fn):
        @functools.wraps(build_fn)
        def build(*args, **kwargs):
            model = build_fn(*args, **kwargs)
            model._default_strategy = strategy
            return model
        return build
    return wrap


def data_parallel(**kwargs):
    """Decorator: the built model defaults to :class:`DataParallel` (``compile`` may override)."""
    return _decorator(DataParallel(**kwargs))


def model_parallel(**kwargs):
    """Decorator: the built model defaults to :class:`ModelParallel`."""
    return _decorator(ModelParallel(**kwargs))


def pipeline(**kwargs):
    """Decorator: the built model defaults to :class:`Pipeline`."""
    return _decorator(Pipeline(**kwargs))


def hybrid(mesh=None, **kwargs):
    """Decorator: the built model defaults to :class:`Hybrid` over ``mesh``.

    Example:
        >>> @hybridnet.strategies.hybrid(mesh={"data": 2, "model": 2, "pipe": 2})
        ... def build_model(): ...
    """
    return _decorator(Hybrid(mesh=dict(mesh or {}), **kwargs))


def auto(**kwargs):
    """Decorator: the built model defaults to :class:`Auto`."""
    return _decorator(Auto(**kwargs))
