"""Metrics as Optax-like pure objects: `init() -> state`, `update(state, ...) -> state`,
`result(state) -> scalar`.

The metric object holds only configuration; its state is a small pytree that
lives on the device and is threaded through the compiled train/eval step (no
host sync per step). Every Keras metric here is a weighted mean with state
`{"total": f32[], "count": f32[]}`, so states of any two metrics can be
summed (`merge`) across micro-batches or devices.

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

    def init(self):
        raise NotImplementedError

    def update(self, state, y_true, y_pred, sample_weight=None, mask=None):
        raise NotImplementedError

    def result(self, state=None):
        raise NotImplementedError

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
    "categorical_crossentropy": losses_lib.categorical_crossentropy,
    "sparse_categorical_crossentropy": losses_lib.sparse_categorical_crossentropy,
    "binary_crossentropy": losses_lib.binary_crossentropy,
}
_FUNCTION_NAMES = {fn: name for name, fn in _FUNCTIONS.items()}

_CLASSES = {c.__name__: c for c in (
    Mean, MeanMetricWrapper, Accuracy, BinaryAccuracy, CategoricalAccuracy,
    SparseCategoricalAccuracy, TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
    MeanSquaredError, MeanAbsoluteError)}

_BY_NAME = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
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
            return _CLASSES[key]()
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
