"""Metrics as Optax-like pure objects: `init() -> state`, `update(state, ...) -> state`,
`result(state) -> scalar`.

The metric object holds only configuration; its state is a small pytree that
lives on the device and is threaded through the compiled train/eval step (no
host sync per step). Mean-based metrics keep `{"total": f32[], "count": f32[]}`;
confusion-matrix metrics (Precision, Recall, AUC, TruePositives, ...) keep
counts per threshold. Either way two states of one metric are summed
(`merge`) across micro-batches or devices.

Example:
    >>> from hybridnet import metrics
    >>> acc = metrics.get("accuracy", loss="sparse_categorical_crossentropy")
    >>> state = acc.init()
    >>> state = jax.jit(acc.update)(state, labels, probs)   # inside the step
    >>> float(acc.result(state))

For Keras-style eager code the stateful API also works:
`m.update_state(y_true, y_pred); m.result(); m.reset_state()`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import losses as losses_lib
from hybridnet.losses import apply_mask, squeeze_or_expand_to_same_rank
from hybridnet.saving import registry as _registry


# --------------------------------------------------------------------------
# Metric functions (per-sample values, Keras names)
# --------------------------------------------------------------------------

def accuracy(y_true, y_pred):
    """1.0 where `y_true == y_pred` exactly."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    return (y_true == y_pred).astype(jnp.float32)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    """1.0 where `(y_pred > threshold) == y_true`."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    y_pred = (y_pred > threshold).astype(y_true.dtype)
    return (y_true == y_pred).astype(jnp.float32)


def categorical_accuracy(y_true, y_pred):
    """1.0 where `argmax(y_true) == argmax(y_pred)` (one-hot labels)."""
    y_true = jnp.argmax(jnp.asarray(y_true), axis=-1)
    return sparse_categorical_accuracy(y_true, y_pred)


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where `y_true == argmax(y_pred)`; labels (B,), (B, 1) or (B, T)."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    org_shape = y_true.shape
    reshape = False
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = jnp.squeeze(y_true, -1)
        reshape = True
    pred = jnp.argmax(y_pred, axis=-1)
    matches = (y_true.astype(jnp.int32) == pred.astype(jnp.int32)).astype(jnp.float32)
    if reshape:
        matches = jnp.reshape(matches, org_shape)
    if matches.ndim > 1 and matches.shape[-1] == 1:
        matches = jnp.squeeze(matches, -1)
    return matches


def _in_top_k(targets, predictions, k):
    at_label = jnp.take_along_axis(predictions, targets[..., None], axis=-1)
    at_label = jnp.where(jnp.isnan(at_label), -jnp.inf, at_label)
    rank = 1 + jnp.sum(predictions > at_label, axis=-1)
    return rank <= k


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1.0 where the label is among the `k` highest predictions."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true).astype(jnp.int32)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = jnp.squeeze(y_true, -1)
    return _in_top_k(y_true, y_pred, k).astype(jnp.float32)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """Top-k accuracy with one-hot labels."""
    return sparse_top_k_categorical_accuracy(jnp.argmax(jnp.asarray(y_true), axis=-1), y_pred, k)


mean_squared_error = losses_lib.mean_squared_error
mean_absolute_error = losses_lib.mean_absolute_error


def _samplewise(values, sample_weight):
    """Keras `reduce_to_samplewise_values` with `mean`: per-sample values and weights."""
    values = jnp.asarray(values, jnp.float32)
    if sample_weight is not None:
        sample_weight = jnp.asarray(sample_weight, jnp.float32)
        values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
        wnd, vnd = sample_weight.ndim, values.ndim
        if vnd > wnd:
            values = jnp.mean(values, axis=tuple(range(wnd, vnd)))
        sample_weight = jnp.broadcast_to(sample_weight, values.shape)
        values = values * sample_weight
        if wnd > 1:
            sample_weight = jnp.mean(sample_weight, axis=tuple(range(1, wnd)))
    if values.ndim > 1:
        values = jnp.mean(values, axis=tuple(range(1, values.ndim)))
    return values, sample_weight


# --------------------------------------------------------------------------
# Metric objects
# --------------------------------------------------------------------------

class Metric:
    """Base class: a configuration plus pure `init` / `update` / `result`.

    Subclasses implement `init()`, `update(state, y_true, y_pred,
    sample_weight=None, mask=None)` and `result(state)`; all three must be
    jit-able. `merge(a, b)` combines two states (default: elementwise sum).

    Example:
        >>> m = metrics.SparseCategoricalAccuracy()
        >>> s = m.init(); s = m.update(s, labels, probs); m.result(s)
    """

    def __init__(self, name=None, dtype=None):
        from hybridnet.utils import snake_case
        self.name = name or snake_case(type(self).__name__)
        self.dtype = jnp.dtype(dtype or "float32")
        self._eager_state = None
        self._variables = {}

    # A subclass written the Keras way (``add_variable`` in ``__init__``, ``update_state``
    # assigning to the variables, ``result()``) runs in the compiled step through these
    # defaults: its variables are bound to the metric state in a StatelessScope.
    def _keras_style(self) -> bool:
        return type(self).update_state is not Metric.update_state

    def add_variable(self, shape=(), initializer="zeros", dtype=None, aggregation="sum",
                     name=None):
        """Creates a state variable, as ``keras.metrics.Metric.add_variable``."""
        from hybridnet import initializers
        from hybridnet.variables import Variable
        name = name or f"variable_{len(self._variables)}"
        if name in self._variables:
            raise ValueError(f"Metric '{self.name}': a variable named '{name}' already exists.")
        var = Variable(shape, dtype or self.dtype,
                       initializers.get(initializer, owner=f"Metric '{self.name}'"),
                       name=name, trainable=False)
        var.path = f"{self.name}/{name}"
        var._value = var.initial_value()
        self._variables[name] = var
        return var

    add_weight = add_variable

    @property
    def variables(self) -> list:
        return list(self._variables.values())

    def init(self):
        if self._variables:
            return {n: v.initial_value() for n, v in self._variables.items()}
        raise NotImplementedError(f"{type(self).__name__}.init")

    def update(self, state, y_true, y_pred, sample_weight=None, mask=None):
        if not self._keras_style():
            raise NotImplementedError(f"{type(self).__name__}.update")
        from hybridnet.variables import StatelessScope
        if mask is not None:
            sample_weight = apply_mask(sample_weight, mask, reduction="sum")
        with StatelessScope({v: state[n] for n, v in self._variables.items()}) as scope:
            if sample_weight is None:
                self.update_state(y_true, y_pred)
            else:
                self.update_state(y_true, y_pred, sample_weight=sample_weight)
        return {n: (scope.new_value(v) if scope.new_value(v) is not None else state[n])
                for n, v in self._variables.items()}

    def result(self, state=None):
        raise NotImplementedError(f"{type(self).__name__}.result")

    def stateless_result(self, state):
        """The result for ``state``, whichever way the metric is written."""
        if not self._keras_style() or not self._variables:
            return self.result(state)
        from hybridnet.variables import StatelessScope
        with StatelessScope({v: state[n] for n, v in self._variables.items()}):
            out = self.result()
            return jax.tree.map(lambda r: jnp.asarray(getattr(r, "value", r)), out,
                                is_leaf=lambda r: hasattr(r, "value"))

    def merge(self, state_a, state_b):
        """Combines two states (e.g. from two micro-batches or devices)."""
        return jax.tree.map(jnp.add, state_a, state_b)

    # Keras-style stateful API, for eager use outside the compiled step.
    def update_state(self, *args, **kwargs):
        """Eager Keras API: updates the metric's own state."""
        state = self._eager_state if self._eager_state is not None else self.init()
        self._eager_state = self.update(state, *args, **kwargs)

    def reset_state(self):
        """Eager Keras API: forgets all updates."""
        self._eager_state = None
        for var in self._variables.values():
            var.assign(var.initial_value())

    def _state_or_eager(self, state):
        if state is not None:
            return state
        return self._eager_state if self._eager_state is not None else self.init()

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


class Mean(Metric):
    """Weighted mean of values: `total = sum(v * w)`, `count = sum(w)`.

    `update(state, values, sample_weight=None, mask=None)`. Values of rank > 1
    are first averaged per sample, as Keras does; samples of weight 0 (or
    masked out) do not count.

    Example:
        >>> m = metrics.Mean(); s = m.update(m.init(), jnp.array([1., 3, 5, 7]),
        ...                                   sample_weight=jnp.array([1., 1, 0, 0]))
        >>> m.result(s)  # 2.0
    """

    def __init__(self, name="mean", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def init(self):
        return {"total": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}

    def update(self, state, values, sample_weight=None, mask=None):
        values = jnp.asarray(values)
        if mask is not None:
            sample_weight = apply_mask(sample_weight, mask, reduction="sum")
        values, sample_weight = _samplewise(values, sample_weight)
        if sample_weight is not None:
            count = jnp.sum(sample_weight)
        elif values.ndim >= 1:
            count = jnp.asarray(values.shape[0], jnp.float32)
        else:
            count = jnp.ones((), jnp.float32)
        return {"total": state["total"] + jnp.sum(values),
                "count": state["count"] + count.astype(jnp.float32)}

    def result(self, state=None):
        state = self._state_or_eager(state)
        count = state["count"]
        return jnp.where(count != 0, state["total"] / jnp.where(count != 0, count, 1), 0.0)


class MeanMetricWrapper(Mean):
    """Mean of `fn(y_true, y_pred, **kwargs)` over all samples seen.

    Example:
        >>> m = metrics.MeanMetricWrapper(lambda t, p: jnp.abs(t - p), name="l1")
    """

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise ValueError(f"Argument `fn` must be callable. Received: fn={fn!r}")
        super().__init__(name=name or getattr(fn, "__name__", "mean_metric_wrapper"),
                         dtype=dtype)
        self._fn = fn
        self._fn_kwargs = kwargs

    def _values(self, y_true, y_pred):
        return self._fn(y_true, y_pred, **self._fn_kwargs)

    def update(self, state, y_true, y_pred, sample_weight=None, mask=None):
        return super().update(state, self._values(y_true, y_pred), sample_weight, mask)

    def get_config(self):
        fn_name = _FUNCTION_NAMES.get(self._fn)
        if fn_name is None:
            raise ValueError(f"Metric {self.name!r} wraps a custom function that cannot be "
                             f"serialized. Received: fn={self._fn!r}")
        return {"name": self.name, "fn": fn_name, **self._fn_kwargs}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        fn = config.pop("fn")
        if isinstance(fn, str):
            fn = _FUNCTIONS[fn]
        return cls(fn, **config)


class _Wrapped(MeanMetricWrapper):
    """A MeanMetricWrapper whose config is just its constructor arguments."""

    _fn_default = None

    def __init__(self, name=None, dtype=None, **kwargs):
        super().__init__(type(self)._fn_default, name=name or self._default_name,
                         dtype=dtype, **kwargs)

    def get_config(self):
        return {"name": self.name, **self._fn_kwargs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class Accuracy(_Wrapped):
    """Fraction of predictions exactly equal to the labels.

    Example: `metrics.Accuracy()` (for argmax-based accuracy use
    `CategoricalAccuracy` / `SparseCategoricalAccuracy`, or the string "accuracy").
    """
    _fn_default = staticmethod(accuracy)
    _default_name = "accuracy"


class BinaryAccuracy(_Wrapped):
    """Fraction of `(y_pred > threshold) == y_true`.

    Example: `metrics.BinaryAccuracy(threshold=0.5)`.
    """
    _fn_default = staticmethod(binary_accuracy)
    _default_name = "binary_accuracy"

    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold


class CategoricalAccuracy(_Wrapped):
    """Argmax accuracy for one-hot labels; Example: `metrics.CategoricalAccuracy()`."""
    _fn_default = staticmethod(categorical_accuracy)
    _default_name = "categorical_accuracy"


class SparseCategoricalAccuracy(_Wrapped):
    """Argmax accuracy for integer labels; Example: `metrics.SparseCategoricalAccuracy()`."""
    _fn_default = staticmethod(sparse_categorical_accuracy)
    _default_name = "sparse_categorical_accuracy"


class TopKCategoricalAccuracy(_Wrapped):
    """Top-k accuracy for one-hot labels; Example: `metrics.TopKCategoricalAccuracy(k=3)`."""
    _fn_default = staticmethod(top_k_categorical_accuracy)
    _default_name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name="top_k_categorical_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype, k=k)
        self.k = k


class SparseTopKCategoricalAccuracy(_Wrapped):
    """Top-k accuracy for integer labels; Example: `metrics.SparseTopKCategoricalAccuracy(k=3)`."""
    _fn_default = staticmethod(sparse_top_k_categorical_accuracy)
    _default_name = "sparse_top_k_categorical_accuracy"

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype, k=k)
        self.k = k


class MeanSquaredError(_Wrapped):
    """Mean squared error; Example: `metrics.MeanSquaredError()`."""
    _fn_default = staticmethod(mean_squared_error)
    _default_name = "mean_squared_error"


class MeanAbsoluteError(_Wrapped):
    """Mean absolute error; Example: `metrics.MeanAbsoluteError()`."""
    _fn_default = staticmethod(mean_absolute_error)
    _default_name = "mean_absolute_error"


def _is_binary_or_sparse(y_true_shape, y_pred_shape):
    """keras/src/trainers/compile_utils.py `is_binary_or_sparse_categorical`."""
    is_binary = y_pred_shape[-1] == 1
    is_sparse = (len(y_true_shape) < len(y_pred_shape)
                 or (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1))
    return is_binary, is_sparse


def _accuracy_fn_for_shapes(y_true_shape, y_pred_shape):
    is_binary, is_sparse = _is_binary_or_sparse(y_true_shape, y_pred_shape)
    if is_binary:
        return binary_accuracy
    if is_sparse:
        return sparse_categorical_accuracy
    return categorical_accuracy


class _ShapeResolvedAccuracy(MeanMetricWrapper):
    """The string "accuracy"/"acc" with no loss to go by: the kind (binary,
    sparse categorical, categorical) is chosen from the static shapes of
    `y_true`/`y_pred` at update time, as Keras 3 compile does."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(accuracy, name=name, dtype=dtype)

    def _values(self, y_true, y_pred):
        y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
        return _accuracy_fn_for_shapes(y_true.shape, y_pred.shape)(y_true, y_pred)

    def get_config(self):
        return {"name": self.name}


def mean_absolute_percentage_error(y_true, y_pred):
    """`100 * mean(|y_true - y_pred| / max(|y_true|, epsilon))` over the last axis."""
    y_pred = jnp.asarray(y_pred)
    if not jnp.issubdtype(y_pred.dtype, jnp.floating):
        y_pred = y_pred.astype(jnp.float32)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    diff = jnp.abs((y_true - y_pred) / jnp.maximum(jnp.abs(y_true), _EPSILON))
    return 100.0 * jnp.mean(diff, axis=-1)


class MeanAbsolutePercentageError(_Wrapped):
    """Mean absolute percentage error; Example: `metrics.MeanAbsolutePercentageError()`."""
    _fn_default = staticmethod(mean_absolute_percentage_error)
    _default_name = "mean_absolute_percentage_error"


# --------------------------------------------------------------------------
# Confusion-matrix metrics: states are counts per threshold, merged by summing
# --------------------------------------------------------------------------

NEG_INF = -1e10
_EPSILON = 1e-7
_CONDITIONS = ("true_positives", "false_positives", "true_negatives", "false_negatives")


def _divide_no_nan(x, y):
    safe = jnp.where(y == 0, 1, y)
    return jnp.where(y == 0, 0, x / safe)


def _parse_thresholds(thresholds, default, owner):
    """Keras `parse_init_thresholds`: a list of floats in [0, 1]."""
    if thresholds is None:
        return [float(default)]
    values = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) else [
        thresholds]
    bad = [t for t in values if t is None or not 0 <= t <= 1]
    if bad:
        raise ValueError(f"{owner}: `thresholds` must be in [0, 1]. Received: "
                         f"thresholds={thresholds!r}")
    return [float(t) for t in values]


def _evenly_distributed(thresholds) -> bool:
    """Keras `is_evenly_distributed_thresholds`: 0, 1/(n-1), ..., 1 for n >= 3."""
    n = len(thresholds)
    if n < 3:
        return False
    even = np.arange(n, dtype=np.float32) / (n - 1)
    return bool(np.allclose(thresholds, even, atol=_EPSILON))


def _filter_top_k(x, k):
    _, idx = jax.lax.top_k(x, k)
    keep = jnp.sum(jax.nn.one_hot(idx, x.shape[-1], dtype=x.dtype), axis=-2)
    return x * keep + NEG_INF * (1 - keep)


def _confusion_counts(y_true, y_pred, thresholds, conditions, *, top_k=None, class_id=None,
                      sample_weight=None, multi_label=False, label_weights=None,
                      evenly=False, owner="metric"):
    """Keras `update_confusion_matrix_variables` as a pure function: the counts of
    `conditions` for one batch, each of shape `(len(thresholds),)` (or
    `(len(thresholds), num_labels)` with `multi_label`)."""
    y_true = jnp.asarray(y_true).astype(jnp.float32)
    y_pred = jnp.asarray(y_pred).astype(jnp.float32)
    with_epsilon = evenly and (thresholds[0] < 0.0 or thresholds[-1] > 1.0)
    thresholds = jnp.asarray(np.asarray(thresholds, np.float32))
    num_thresholds = thresholds.shape[0]
    y_pred, y_true = squeeze_or_expand_to_same_rank(y_pred, y_true)
    if sample_weight is not None:
        sample_weight = jnp.expand_dims(jnp.asarray(sample_weight, jnp.float32), -1)
        _, sample_weight = squeeze_or_expand_to_same_rank(y_true, sample_weight,
                                                          expand_rank_1=False)
    if top_k is not None:
        y_pred = _filter_top_k(y_pred, top_k)
    if class_id is not None:
        if y_pred.ndim == 1:
            raise ValueError(f"{owner}: with `class_id`, y_pred must have shape "
                             f"(num_samples, num_classes). Received: "
                             f"y_pred.shape={y_pred.shape}")
        y_true = y_true[..., class_id, None]
        y_pred = y_pred[..., class_id, None]
    if label_weights is not None:
        label_weights = jnp.broadcast_to(
            jnp.expand_dims(jnp.asarray(label_weights, jnp.float32), 0), y_pred.shape)
    if sample_weight is not None:
        sample_weight = jnp.broadcast_to(sample_weight, y_pred.shape)
    if evenly:
        counts = _bucketed_counts(y_true, y_pred, num_thresholds, multi_label,
                                  sample_weight, label_weights, with_epsilon)
    else:
        counts = _compared_counts(y_true, y_pred, thresholds, multi_label, sample_weight,
                                  label_weights)
    return {c: counts[c] for c in conditions}


def _bucketed_counts(y_true, y_pred, num_thresholds, multi_label, sample_weight,
                     label_weights, with_epsilon):
    """O(T + N) counts for evenly spaced thresholds (Keras' optimized update): each
    prediction lands in one bucket; a reversed cumulative sum gives counts above
    every threshold."""
    weights = jnp.ones((), jnp.float32)
    if sample_weight is not None:
        weights = weights * (sample_weight if multi_label else sample_weight.reshape(-1))
    if label_weights is not None:
        weights = weights * (label_weights if multi_label else label_weights.reshape(-1))
    y_pred = jnp.clip(y_pred, 0.0, 1.0)
    y_true = (y_true != 0).astype(jnp.float32)
    if not multi_label:
        y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
    true_labels = y_true * weights
    false_labels = (1.0 - y_true) * weights
    buckets = jnp.ceil(y_pred * (num_thresholds - 1)) - 1
    if with_epsilon:
        buckets = jnp.maximum(buckets, 0)
    buckets = buckets.astype(jnp.int32)

    def segment(labels, ids):
        return jax.ops.segment_sum(labels, ids, num_segments=num_thresholds)

    def above(bucketed):  # reverse cumulative sum along the threshold axis
        return jnp.flip(jnp.cumsum(jnp.flip(bucketed, -1), axis=-1), -1)

    if multi_label:
        tp = above(jax.vmap(segment)(true_labels.T, buckets.T)).T
        fp = above(jax.vmap(segment)(false_labels.T, buckets.T)).T
        total_true, total_false = jnp.sum(true_labels, 0), jnp.sum(false_labels, 0)
    else:
        tp = above(segment(true_labels, buckets))
        fp = above(segment(false_labels, buckets))
        total_true, total_false = jnp.sum(true_labels), jnp.sum(false_labels)
    return {"true_positives": tp, "false_positives": fp,
            "true_negatives": total_false - fp, "false_negatives": total_true - tp}


def _compared_counts(y_true, y_pred, thresholds, multi_label, sample_weight, label_weights):
    """O(T * N) counts: every prediction compared with every threshold."""
    labels = y_true.astype(bool)
    if multi_label:
        preds, labels = y_pred[None], labels[None]
        thr = thresholds.reshape((-1,) + (1,) * y_pred.ndim)
        weights = None if sample_weight is None else sample_weight[None]
    else:
        preds, labels = y_pred.reshape(1, -1), labels.reshape(1, -1)
        thr = thresholds[:, None]
        weights = None
        for w in (sample_weight, label_weights):
            if w is not None:
                w = w.reshape(1, -1)
                weights = w if weights is None else weights * w
    pred_pos = preds > thr

    def count(label, pred):
        hit = jnp.logical_and(label, pred)
        if weights is None:
            return jnp.sum(hit.astype(jnp.float32), axis=1)
        return jnp.sum(jnp.where(hit, weights, 0.0), axis=1)

    return {"true_positives": count(labels, pred_pos),
            "false_positives": count(~labels, pred_pos),
            "true_negatives": count(~labels, ~pred_pos),
            "false_negatives": count(labels, ~pred_pos)}


class _ConfusionMetric(Metric):
    """Counts of confusion-matrix conditions per threshold; the state is
    `{condition: f32[num_thresholds]}` and merges by summing."""

    _conditions: tuple = ()

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None,
                 default_threshold=0.5):
        super().__init__(name=name, dtype=dtype)
        for arg, value in (("top_k", top_k), ("class_id", class_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, np.integer)) or value < (1 if arg == "top_k" else 0)):
                raise ValueError(f"{type(self).__name__}: `{arg}` must be a "
                                 f"{'positive' if arg == 'top_k' else 'non-negative'} int or "
                                 f"None. Received: {arg}={value!r}")
        self.init_thresholds = thresholds
        self.top_k = top_k
        self.class_id = class_id
        self.thresholds = _parse_thresholds(thresholds, default_threshold,
                                            type(self).__name__)
        self._evenly = _evenly_distributed(self.thresholds)

    def init(self):
        return {c: jnp.zeros((len(self.thresholds),), jnp.float32) for c in self._conditions}

    def update(self, state, y_true, y_pred, sample_weight=None, mask=None):
        del mask  # Keras' confusion metrics do not read masks
        counts = _confusion_counts(
            y_true, y_pred, self.thresholds, self._conditions, top_k=self.top_k,
            class_id=self.class_id, sample_weight=sample_weight, evenly=self._evenly,
            owner=type(self).__name__)
        return {c: state[c] + counts[c] for c in self._conditions}

    def _one_or_all(self, values):
        return values[0] if len(self.thresholds) == 1 else values

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds}


class _ConditionCount(_ConfusionMetric):
    def __init__(self, thresholds=None, name=None, dtype=None):
        super().__init__(thresholds=thresholds, name=name, dtype=dtype)

    def result(self, state=None):
        state = self._state_or_eager(state)
        return self._one_or_all(state[self._conditions[0]])


class TruePositives(_ConditionCount):
    """Weighted count of positives predicted above each threshold.

    Example:
        >>> m = metrics.TruePositives(thresholds=[0.3, 0.7])
        >>> m.update_state([0, 1, 1, 1], [0.2, 0.5, 0.8, 0.9]); m.result()  # [3., 2.]
    """
    _conditions = ("true_positives",)


class FalsePositives(_ConditionCount):
    """Weighted count of negatives predicted above each threshold.

    Example: `metrics.FalsePositives(thresholds=0.5)`.
    """
    _conditions = ("false_positives",)


class TrueNegatives(_ConditionCount):
    """Weighted count of negatives predicted at or below each threshold.

    Example: `metrics.TrueNegatives()`.
    """
    _conditions = ("true_negatives",)


class FalseNegatives(_ConditionCount):
    """Weighted count of positives predicted at or below each threshold.

    Example: `metrics.FalseNegatives()`.
    """
    _conditions = ("false_negatives",)


class Precision(_ConfusionMetric):
    """`true_positives / (true_positives + false_positives)` per threshold.

    `top_k` counts only the k highest predictions of each sample as positive;
    `class_id` looks at one column of multi-class outputs.

    Example:
        >>> m = metrics.Precision(); m.update_state([0, 1, 1, 1], [1, 0, 1, 1]); m.result()
        0.6666667
    """
    _conditions = ("true_positives", "false_positives")

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(thresholds, top_k, class_id, name, dtype,
                         default_threshold=0.5 if top_k is None else NEG_INF)

    def result(self, state=None):
        s = self._state_or_eager(state)
        tp = s["true_positives"]
        return self._one_or_all(_divide_no_nan(tp, tp + s["false_positives"]))

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k, "class_id": self.class_id}


class Recall(_ConfusionMetric):
    """`true_positives / (true_positives + false_negatives)` per threshold.

    Example:
        >>> m = metrics.Recall(); m.update_state([0, 1, 1, 1], [1, 0, 1, 1]); m.result()
        0.6666667
    """
    _conditions = ("true_positives", "false_negatives")

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(thresholds, top_k, class_id, name, dtype,
                         default_threshold=0.5 if top_k is None else NEG_INF)

    def result(self, state=None):
        s = self._state_or_eager(state)
        tp = s["true_positives"]
        return self._one_or_all(_divide_no_nan(tp, tp + s["false_negatives"]))

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k, "class_id": self.class_id}


_AUC_CURVES = {"roc": "ROC", "pr": "PR", "prgain": "PRGAIN"}
_AUC_SUMMATIONS = ("interpolation", "majoring", "minoring")


class AUC(Metric):
    """Area under the ROC or precision-recall curve, from confusion counts at
    `num_thresholds` thresholds (a Riemann sum, as Keras computes it).

    Args:
        num_thresholds: thresholds evenly spaced over [0, 1] (ignored with `thresholds`).
        curve: "ROC", "PR" or "PRGAIN".
        summation_method: "interpolation", "majoring" or "minoring".
        thresholds: explicit thresholds in [0, 1].
        multi_label: one curve per label (columns of `y_pred`), averaged; needs
            `num_labels` in compiled use (or the first eager update to learn it).
        num_labels: the number of labels with `multi_label`.
        label_weights: per-label weights of the average (multi-label) or of the counts.
        from_logits: apply a sigmoid to `y_pred` first.

    Example:
        >>> m = metrics.AUC(num_thresholds=3)
        >>> m.update_state([0, 0, 1, 1], [0, 0.5, 0.3, 0.9]); m.result()  # 0.75
    """

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        super().__init__(name=name, dtype=dtype)
        owner = "AUC"
        key = str(curve).lower()
        if key not in _AUC_CURVES:
            raise ValueError(f"{owner}: `curve` must be one of {list(_AUC_CURVES.values())}. "
                             f"Received: curve={curve!r}")
        self.curve = _AUC_CURVES[key]
        if str(summation_method).lower() not in _AUC_SUMMATIONS:
            raise ValueError(f"{owner}: `summation_method` must be one of "
                             f"{list(_AUC_SUMMATIONS)}. Received: "
                             f"summation_method={summation_method!r}")
        self.summation_method = str(summation_method).lower()
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(_parse_thresholds(thresholds, 0.5, owner))
            self.num_thresholds = len(inner) + 2
            self._evenly = _evenly_distributed(np.array([0.0] + inner + [1.0]))
        else:
            if isinstance(num_thresholds, bool) or not isinstance(
                    num_thresholds, (int, np.integer)) or num_thresholds <= 1:
                raise ValueError(f"{owner}: `num_thresholds` must be an int > 1. "
                                 f"Received: num_thresholds={num_thresholds!r}")
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
            self._evenly = True
        self._thresholds = np.array([0.0 - _EPSILON] + inner + [1.0 + _EPSILON])
        if num_labels is not None and not multi_label:
            raise ValueError(f"{owner}: `num_labels` is needed only when `multi_label` is "
                             f"True. Received: num_labels={num_labels!r}")
        self.multi_label = bool(multi_label)
        self.num_labels = num_labels
        self._num_labels = num_labels
        self.label_weights = (None if label_weights is None
                              else np.asarray(label_weights, np.float32))
        self.from_logits = bool(from_logits)

    @property
    def thresholds(self):
        """The thresholds, including the two just outside [0, 1]."""
        return list(self._thresholds)

    def _build_from_shape(self, y_pred_shape):
        """Learns `num_labels` from the shape of `y_pred` (multi-label only)."""
        if not self.multi_label or self._num_labels is not None:
            return
        if len(y_pred_shape) != 2 or y_pred_shape[-1] is None:
            raise ValueError("AUC: `y_pred` must have rank 2 with a known last dimension "
                             f"when `multi_label=True`. Received: y_pred.shape="
                             f"{tuple(y_pred_shape)}")
        self._num_labels = int(y_pred_shape[-1])

    def init(self):
        shape = (self.num_thresholds,)
        if self.multi_label:
            if self._num_labels is None:
                raise ValueError(
                    f"AUC '{self.name}': with `multi_label=True` the number of labels must "
                    "be known before the first batch. Pass `num_labels`. Received: "
                    "num_labels=None")
            shape = (self.num_thresholds, self._num_labels)
        return {c: jnp.zeros(shape, jnp.float32) for c in _CONDITIONS}

    def update(self, state, y_true, y_pred, sample_weight=None, mask=None):
        del mask  # Keras' AUC does not read masks
        y_pred = jnp.asarray(y_pred)
        if self.from_logits:
            y_pred = jax.nn.sigmoid(y_pred)
        if self.multi_label and y_pred.ndim != 2:
            raise ValueError("AUC: `y_pred` must have rank 2 when `multi_label=True`. "
                             f"Received: y_pred.shape={y_pred.shape}")
        counts = _confusion_counts(
            y_true, y_pred, self._thresholds, _CONDITIONS, sample_weight=sample_weight,
            multi_label=self.multi_label,
            label_weights=None if self.multi_label else self.label_weights,
            evenly=self._evenly, owner="AUC")
        return {c: state[c] + counts[c] for c in _CONDITIONS}

    def update_state(self, y_true, y_pred, sample_weight=None, mask=None):
        if self._eager_state is None:
            self._build_from_shape(jnp.shape(y_pred))
        super().update_state(y_true, y_pred, sample_weight=sample_weight, mask=mask)

    def _average(self, per_threshold):
        if not self.multi_label:
            return jnp.sum(per_threshold)
        by_label = jnp.sum(per_threshold, axis=0)
        if self.label_weights is None:
            return jnp.mean(by_label)
        w = jnp.asarray(self.label_weights)
        return _divide_no_nan(jnp.sum(by_label * w), jnp.sum(w))

    def _interpolate_pr_auc(self, s):
        tp, fp, fn = s["true_positives"], s["false_positives"], s["false_negatives"]
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        prec_slope = _divide_no_nan(dtp, jnp.maximum(dp, 0))
        intercept = tp[1:] - prec_slope * p[1:]
        safe_p_ratio = jnp.where(jnp.logical_and(p[:-1] > 0, p[1:] > 0),
                                 _divide_no_nan(p[:-1], jnp.maximum(p[1:], 0)),
                                 jnp.ones_like(p[1:]))
        increments = _divide_no_nan(prec_slope * (dtp + intercept * jnp.log(safe_p_ratio)),
                                    jnp.maximum(tp[1:] + fn[1:], 0))
        return self._average(increments)

    def result(self, state=None):
        s = self._state_or_eager(state)
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc(s)
        tp, fp = s["true_positives"], s["false_positives"]
        tn, fn = s["true_negatives"], s["false_negatives"]
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, _divide_no_nan(tp, tp + fp)
        else:
            scale = _divide_no_nan(tp + fn, tn + fp)
            recall_gain = 1.0 - scale * _divide_no_nan(fn, tp)
            precision_gain = 1.0 - scale * _divide_no_nan(fp, tp)
            x = jnp.maximum(jnp.where(tp == 0, 0.0, recall_gain), 0.0)
            y = jnp.where(tp == 0, 1.0, precision_gain)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = jnp.minimum(y[:-1], y[1:])
        else:
            heights = jnp.maximum(y[:-1], y[1:])
        return self._average((x[:-1] - x[1:]) * heights)

    def get_config(self):
        config = {"name": self.name, "num_thresholds": self.num_thresholds,
                  "curve": self.curve, "summation_method": self.summation_method,
                  "multi_label": self.multi_label, "num_labels": self.num_labels,
                  "label_weights": (None if self.label_weights is None
                                    else self.label_weights.tolist()),
                  "from_logits": self.from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = [float(t) for t in self._thresholds[1:-1]]
        return config


# --------------------------------------------------------------------------
# get / serialize / deserialize
# --------------------------------------------------------------------------

_FUNCTIONS = {
    "accuracy": accuracy,
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "sparse_top_k_categorical_accuracy": sparse_top_k_categorical_accuracy,
    "mean_squared_error": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "mean_absolute_percentage_error": mean_absolute_percentage_error,
    "categorical_crossentropy": losses_lib.categorical_crossentropy,
    "sparse_categorical_crossentropy": losses_lib.sparse_categorical_crossentropy,
    "binary_crossentropy": losses_lib.binary_crossentropy,
}
_FUNCTION_NAMES = {fn: name for name, fn in _FUNCTIONS.items()}

_CLASSES = {c.__name__: c for c in (
    Mean, MeanMetricWrapper, Accuracy, BinaryAccuracy, CategoricalAccuracy,
    SparseCategoricalAccuracy, TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
    MeanSquaredError, MeanAbsoluteError, MeanAbsolutePercentageError, TruePositives,
    FalsePositives, TrueNegatives, FalseNegatives, Precision, Recall, AUC)}

_BY_NAME = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mape": MeanAbsolutePercentageError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "true_positives": TruePositives, "false_positives": FalsePositives,
    "true_negatives": TrueNegatives, "false_negatives": FalseNegatives,
    "precision": Precision, "recall": Recall, "auc": AUC,
}
_LOSS_FUNCTION_METRICS = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                          "binary_crossentropy")

_ACCURACY_BY_LOSS = {
    "sparse_categorical_crossentropy": SparseCategoricalAccuracy,
    "categorical_crossentropy": CategoricalAccuracy,
    "binary_crossentropy": BinaryAccuracy,
}


def known_names():
    return sorted(["accuracy", "acc", *_BY_NAME, *_LOSS_FUNCTION_METRICS]) + sorted(
        k for k in _CLASSES if k not in ("Mean", "MeanMetricWrapper"))


def _loss_kind(loss):
    """The Keras function name of a crossentropy loss identifier, else None."""
    if loss is None:
        return None
    if isinstance(loss, str):
        key = loss.lower()
        if key in _ACCURACY_BY_LOSS:
            return key
        cls = {"SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
               "CategoricalCrossentropy": "categorical_crossentropy",
               "BinaryCrossentropy": "binary_crossentropy"}.get(loss)
        return cls
    for cls, kind in ((losses_lib.SparseCategoricalCrossentropy, "sparse_categorical_crossentropy"),
                      (losses_lib.CategoricalCrossentropy, "categorical_crossentropy"),
                      (losses_lib.BinaryCrossentropy, "binary_crossentropy")):
        if isinstance(loss, cls):
            return kind
    if isinstance(loss, losses_lib.LossFunctionWrapper):
        loss = loss.fn
    name = losses_lib._FUNCTION_NAMES.get(loss)
    return name if name in _ACCURACY_BY_LOSS else None


def get(identifier, *, loss=None, output_shape=None):
    """Resolves a Keras metric identifier into a `Metric`.

    "accuracy"/"acc" become sparse-categorical, categorical or binary accuracy
    according to `loss` (sparse_categorical_crossentropy, categorical_crossentropy,
    binary_crossentropy), else to `output_shape[-1] == 1` (binary), else to the
    shapes of `y_true` / `y_pred` seen at update time (Keras 3 compile rule).
    The user's string is kept as the metric name. Other inputs: Keras names
    ("sparse_categorical_accuracy", "mse", ...), class names, a `Metric`, or a
    callable `(y_true, y_pred) -> per-sample values` (wrapped in
    `MeanMetricWrapper`, named after the function).

    Example:
        >>> metrics.get("acc", loss="categorical_crossentropy").name  # "acc"
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        key = identifier if identifier in _CLASSES else identifier.lower()
        if key in ("accuracy", "acc"):
            kind = _loss_kind(loss)
            if kind is not None:
                return _ACCURACY_BY_LOSS[kind](name=identifier)
            if output_shape is not None and tuple(output_shape)[-1] == 1:
                return BinaryAccuracy(name=identifier)
            return _ShapeResolvedAccuracy(name=identifier)
        if key in _BY_NAME:
            return _BY_NAME[key](name=identifier)
        if key in _LOSS_FUNCTION_METRICS:
            return MeanMetricWrapper(_FUNCTIONS[key], name=identifier)
        if key in _CLASSES and key not in ("Mean", "MeanMetricWrapper"):
            return _CLASSES[key](name=identifier)
        raise ValueError(
            f"Unknown metric. Expected one of {known_names()}, a `Metric` instance or a "
            f"callable. Received: metrics={identifier!r}")
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return MeanMetricWrapper(identifier, name=getattr(identifier, "__name__", None))
    raise ValueError("Could not interpret metric identifier. Expected a string, a `Metric` "
                     f"instance or a callable. Received: metrics={identifier!r}")


def serialize(metric):
    """JSON-able description: strings unchanged, built-in metrics as
    `{"class_name", "config"}` (shape-resolved "accuracy" as its string),
    registered custom classes and functions (see
    `hybridnet.saving.register_serializable`) with their `"registered_name"`,
    None for other custom metrics and functions.

    Example:
        >>> metrics.deserialize(metrics.serialize(metrics.BinaryAccuracy(threshold=0.3)))
    """
    if metric is None or isinstance(metric, str):
        return metric
    if isinstance(metric, _ShapeResolvedAccuracy):
        return metric.name
    if isinstance(metric, Metric):
        try:
            name = type(metric).__name__
            if name in _CLASSES and type(metric) is _CLASSES[name]:
                if type(metric) is MeanMetricWrapper and metric._fn not in _FUNCTION_NAMES:
                    fn = _registry.function_config(metric._fn)
                    if fn is None:
                        return None
                    return {"class_name": "MeanMetricWrapper",
                            "config": {"name": metric.name, "fn": fn, **metric._fn_kwargs}}
                return {"class_name": name, "config": metric.get_config()}
            return _registry.object_config(metric)
        except ValueError:
            return None
    if callable(metric):
        return _FUNCTION_NAMES.get(metric) or _registry.function_config(metric)
    raise ValueError(f"Cannot serialize metric. Received: metric={metric!r}")


def deserialize(config, *, loss=None, custom_objects=None):
    """Inverse of `serialize`; a function entry comes back as the function.

    Custom classes and functions are found by registered name or plain name in
    `custom_objects`, an active `hybridnet.saving.custom_object_scope`, or the
    `register_serializable` registry; nothing is imported.

    Raises:
        hybridnet.saving.registry.UnknownObjectError (a ValueError): the config
            names an object that is not known here.
    """
    if isinstance(config, str):
        found = _registry.get_registered_object(config, custom_objects)
        return found if found is not None else get(config, loss=loss)
    if isinstance(config, dict) and "class_name" in config:
        name = config["class_name"]
        inner = dict(config.get("config") or {}) if name != "function" else config.get("config")
        if not config.get("registered_name") and name in _CLASSES:
            if name == "MeanMetricWrapper" and isinstance(inner.get("fn"), dict):
                inner["fn"] = deserialize(inner["fn"], custom_objects=custom_objects)
            return _CLASSES[name].from_config(inner)
        return _registry.resolve_custom(config, custom_objects, Metric, "Metric")
    raise ValueError("Expected a metric name or a dict with 'class_name' and 'config'. "
                     f"Received: config={config!r}")
