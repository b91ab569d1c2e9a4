"""What ``compile`` turns losses and metrics into: containers the runners call inside
the compiled step (pure functions of arrays; no devices, no state of their own)."""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from hybridnet import metrics as metrics_lib


class LossContainer:
    """Per-output losses with weights; returns the total and per-output values."""

    def __init__(self, losses: Sequence, weights: Sequence[float], output_names: Sequence[str]):
        self.losses = list(losses)
        self.weights = list(weights)
        self.output_names = list(output_names)

    def __call__(self, y_true: list, y_pred: list, sample_weight: list, masks: list):
        total, parts = 0.0, {}
        for i, (fn, w) in enumerate(zip(self.losses, self.weights)):
            if fn is None:
                continue
            value = fn(y_true[i], y_pred[i], sample_weight=sample_weight[i], mask=masks[i])
            parts[self.output_names[i]] = value
            total = total + w * value
        return total, parts


class MetricsContainer:
    """The loss tracker(s) and the compiled metrics of every output, keyed by log name."""

    def __init__(self, per_output: Sequence[Sequence[Any]], output_names: Sequence[str]):
        multi = len(output_names) > 1
        self.trackers = {"loss": metrics_lib.Mean(name="loss")}
        if multi:
            self.trackers.update({f"{n}_loss": metrics_lib.Mean(name=f"{n}_loss")
                                  for n in output_names})
        self.per_output = [{(f"{n}_{m.name}" if multi else m.name): m for m in ms}
                           for n, ms in zip(output_names, per_output)]
        self.output_names = list(output_names)
        self.entries = dict(self.trackers)
        for metrics in self.per_output:
            self.entries.update(metrics)
        self.names = list(self.entries)

    def init(self) -> dict:
        return {key: m.init() for key, m in self.entries.items()}

    def update(self, state, loss, parts, batch_size, y_true, y_pred, sample_weight, masks):
        state = dict(state)
        n = jnp.asarray(batch_size, jnp.float32)
        state["loss"] = self.trackers["loss"].update(state["loss"], loss, sample_weight=n)
        for name, value in parts.items():
            key = f"{name}_loss"
            if key in self.trackers:
                state[key] = self.trackers[key].update(state[key], value, sample_weight=n)
        for i, metrics in enumerate(self.per_output):
            for key, m in metrics.items():
                state[key] = m.update(state[key], y_true[i], y_pred[i],
                                      sample_weight=sample_weight[i], mask=masks[i])
        return state

    def results(self, state) -> dict:
        return {key: m.result(state[key]) for key, m in self.entries.items()}


__all__ = ["LossContainer", "MetricsContainer"]
