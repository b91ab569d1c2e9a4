"""What the user asks for: how the model should be spread over devices.

A strategy is a declarative request; the planner turns it into a
:class:`hybridnet.planner.Plan`.

Example:
    >>> model.compile("adam", "mse", strategy=DataParallel())
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Replicated parameters, batch split over a ``data`` mesh axis.

    Args:
        devices: the devices to use; None means every local device.
    """
    devices: Sequence[Any] | None = None
    axis_name: str = "data"


def get(identifier) -> DataParallel:
    if identifier is None:
        return DataParallel()
    if isinstance(identifier, DataParallel):
        return identifier
    if identifier in ("data", "data_parallel"):
        return DataParallel()
    raise ValueError(f"Unknown strategy. Expected a hybridnet.strategies object or 'data'. "
                     f"Received: strategy={identifier!r}")
