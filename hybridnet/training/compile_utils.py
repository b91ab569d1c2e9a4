"""What ``compile`` turns losses and metrics into: containers the runners call inside
the compiled step (pure functions of arrays; no devices, no state of their own)."""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from hybridnet import losses as losses_lib
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

    def sums_and_divisors(self, y_true: list, y_pred: list, sample_weight: list,
                          masks: list) -> dict:
        """Output name -> ``(weighted sum, divisor)`` of its loss on (a piece of) a batch,
        for runners that split batches: summing the pieces' sums and dividing by the whole
        batch's divisors (:meth:`combine`) gives what ``__call__`` gives on the whole batch.

        A loss that cannot say its divisor (a ``Loss`` subclass overriding ``__call__``,
        a reduction of None) counts as a mean over samples: ``(value * n, n)``.
        """
        out = {}
        for i, fn in enumerate(self.losses):
            if fn is None:
                continue
            args = (y_true[i], y_pred[i])
            kwargs = dict(sample_weight=sample_weight[i], mask=masks[i])
            if _splits(fn):
                out[self.output_names[i]] = fn.sum_and_divisor(*args, **kwargs)
            else:
                n = jnp.asarray(jnp.shape(y_pred[i])[0], jnp.float32)
                out[self.output_names[i]] = (fn(*args, **kwargs) * n, n)
        return out

    def combine(self, sums: dict, divisors: dict):
        """``(total, parts)`` as ``__call__`` returns them, from the sums of (a piece of) a
        batch and the divisors of the whole batch (output name -> scalar)."""
        total, parts = 0.0, {}
        for name, w in zip(self.output_names, self.weights):
            if name in sums:
                parts[name] = losses_lib.safe_divide(sums[name], divisors[name])
                total = total + w * parts[name]
        return total, parts


def _splits(fn) -> bool:
    """Whether ``fn`` is a ``Loss`` reduced by the standard ``__call__`` (so its sum and
    divisor are known separately)."""
    return (isinstance(fn, losses_lib.Loss) and type(fn).__call__ is losses_lib.Loss.__call__
            and fn.reduction not in (None, "none"))


class MetricsContainer:
    """The loss tracker(s) and the compiled metrics of every output, keyed by log name.

    Args:
        per_output: the metrics of each output (Keras' ``metrics``).
        output_names: one name per output.
        weighted_per_output: the ``weighted_metrics`` of each output. Given, only
            these see ``sample_weight`` (as in Keras, plain ``metrics`` are unweighted);
            when None, every metric in ``per_output`` is weighted.
        output_shapes: the shape of each output, for metrics whose state size depends
            on it (``AUC(multi_label=True)`` without ``num_labels``).
    """

    def __init__(self, per_output: Sequence[Sequence[Any]], output_names: Sequence[str],
                 weighted_per_output: Sequence[Sequence[Any]] | None = None,
                 output_shapes: Sequence[Sequence[int | None]] | None = None):
        multi = len(output_names) > 1
        self.trackers = {"loss": metrics_lib.Mean(name="loss")}
        if multi:
            self.trackers.update({f"{n}_loss": metrics_lib.Mean(name=f"{n}_loss")
                                  for n in output_names})
        all_weighted = weighted_per_output is None
        weighted_per_output = weighted_per_output or [[] for _ in output_names]
        self.per_output, self.weighted = [], []
        self.entries = dict(self.trackers)
        for i, n in enumerate(output_names):
            metrics, weighted = {}, set()
            groups = ((per_output[i], all_weighted), (weighted_per_output[i], True))
            for ms, is_weighted in groups:
                for m in ms:
                    key = f"{n}_{m.name}" if multi else m.name
                    if not all_weighted and is_weighted and key in metrics:
                        key = f"weighted_{key}"  # tf.keras' name for the weighted twin
                    metrics[key] = m
                    if is_weighted:
                        weighted.add(key)
                    if output_shapes is not None and hasattr(m, "_build_from_shape"):
                        m._build_from_shape(tuple(output_shapes[i]))
            self.per_output.append(metrics)
            self.weighted.append(weighted)
            self.entries.update(metrics)
        self.output_names = list(output_names)
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
                sw = sample_weight[i] if key in self.weighted[i] else None
                state[key] = m.update(state[key], y_true[i], y_pred[i], sample_weight=sw,
                                      mask=masks[i])
        return state

    def results(self, state) -> dict:
        return {key: m.stateless_result(state[key]) for key, m in self.entries.items()}


__all__ = ["LossContainer", "MetricsContainer"]
