"""Losses by Keras name, computed as Keras 3's JAX backend computes them.

A `Loss` is a small description (config) plus two pure functions:
`call(y_true, y_pred)` gives the per-sample (or per-element) loss with the last
axis reduced where Keras reduces it, and `__call__` applies sample weights, a
mask and the reduction (Keras 3 semantics, see `reduce_weighted_values`).
Everything is jit-able; nothing here syncs with the host.

Example:
    >>> from hybridnet import losses
    >>> loss_fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> loss_fn(jnp.array([1, 0]), jnp.array([[0.1, 2.0], [1.5, -0.3]]))
    >>> losses.get("mse")(y_true, y_pred, sample_weight=w)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybridnet.saving import registry as _registry

EPSILON = 1e-7  # keras.backend.epsilon()

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


# --------------------------------------------------------------------------
# Shape and reduction helpers (Keras 3: keras/src/losses/loss.py)
# --------------------------------------------------------------------------

def standardize_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            "Invalid value for argument `reduction`. Expected one of "
            f"{list(REDUCTIONS)}. Received: reduction={reduction!r}")
    return reduction


def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Squeezes or expands the last axis when the ranks differ by exactly one."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2:
        return x1, x2
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = jnp.expand_dims(x2, -1)
        else:
            x1 = jnp.squeeze(x1, -1)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = jnp.expand_dims(x1, -1)
        else:
            x2 = jnp.squeeze(x2, -1)
    return x1, x2


def _expand_trailing(x, ndim):
    """Appends singleton axes so that `x` broadcasts left-aligned (batch first)."""
    if x.ndim < ndim:
        x = jnp.reshape(x, x.shape + (1,) * (ndim - x.ndim))
    return x


def _broadcast_pair(values, weights):
    """Keras' rank matching, then left-aligned broadcasting of lower-rank weights.

    Keras 3 would fail (or broadcast along the wrong axis) for per-sample
    weights `(B,)` against per-element values `(B, T)`; we broadcast them over
    the trailing axes, as Keras 2 did.
    """
    values, weights = squeeze_or_expand_to_same_rank(values, weights)
    nd = max(values.ndim, weights.ndim)
    return _expand_trailing(values, nd), _expand_trailing(weights, nd)


def apply_mask(sample_weight, mask, dtype=jnp.float32, reduction="sum_over_batch_size"):
    """Merges a boolean mask into the sample weights (Keras 3 `apply_mask`).

    For "mean"/"sum_over_batch_size" valid entries get weight `total / valid`
    so the batch mean becomes a mean over the valid entries only.
    """
    if mask is None:
        return sample_weight
    mask = jnp.asarray(mask)
    if reduction in ("mean", "sum_over_batch_size"):
        total = jnp.asarray(mask.size, dtype)
        valid = jnp.sum(mask.astype(dtype))
        mask_weight = jnp.where(valid > 0, total / jnp.where(valid > 0, valid, 1), 0)
        float_mask = jnp.where(mask.astype(bool), mask_weight, 0).astype(dtype)
    else:
        float_mask = mask.astype(dtype)
    if sample_weight is None:
        return float_mask
    sample_weight = jnp.asarray(sample_weight, dtype)
    float_mask, sample_weight = _broadcast_pair(float_mask, sample_weight)
    return sample_weight * float_mask


def reduce_values(values, sample_weight=None, reduction="sum_over_batch_size"):
    if reduction in (None, "none") or values.ndim == 0 or values.size == 0:
        return values
    loss = jnp.sum(values)
    if reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        if reduction == "mean_with_sample_weight" and sample_weight is not None:
            divisor = jnp.sum(sample_weight).astype(loss.dtype)
        else:
            divisor = jnp.asarray(values.size, loss.dtype)
        loss = safe_divide(loss, divisor)
    return loss


def safe_divide(total, divisor):
    """``total / divisor``, 0 where the divisor is 0 (an all-masked batch)."""
    return jnp.where(divisor != 0, total / jnp.where(divisor != 0, divisor, 1), 0)


def weighted_sum_and_divisor(values, sample_weight=None, mask=None,
                             reduction="sum_over_batch_size", dtype=jnp.float32):
    """The reduced loss as ``(weighted sum, divisor)``: ``reduce_weighted_values`` is
    ``safe_divide(sum, divisor)``.

    The sum is additive over any split of the batch; the divisor depends only on the
    batch's shapes, sample weights and masks, never on predictions. A runner that splits
    a batch (pipeline microbatches) adds the sums of the pieces and divides by the whole
    batch's divisor, which gives the one-batch loss exactly.

    Divisors: "sum_over_batch_size"/"mean": the number of loss elements, or with a mask
    the number of valid ones (a `(B,)` mask of `(B, T)` losses counts `T` per valid
    sample); "mean_with_sample_weight": the sum of the (masked) weights; "sum": 1.
    """
    reduction = standardize_reduction(reduction)
    if reduction in (None, "none"):
        raise ValueError("weighted_sum_and_divisor: the loss must be reduced. "
                         f"Received: reduction={reduction!r}")
    values = jnp.asarray(values, dtype)
    weights = None if sample_weight is None else jnp.asarray(sample_weight, dtype)
    float_mask = None
    if mask is not None:
        float_mask = jnp.asarray(mask).astype(dtype)
        weights = float_mask if weights is None else jnp.multiply(
            *_broadcast_pair(float_mask, weights))
    if weights is not None:
        values, weights = _broadcast_pair(values, weights)
        values = values * weights
    total = jnp.sum(values)
    if reduction == "sum":
        return total, jnp.ones((), dtype)
    if reduction == "mean_with_sample_weight" and weights is not None:
        return total, jnp.sum(weights)
    size = jnp.asarray(values.size, dtype)
    if float_mask is None or reduction == "mean_with_sample_weight":
        return total, size
    return total, size * jnp.sum(float_mask) / float_mask.size


def reduce_weighted_values(values, sample_weight=None, mask=None,
                           reduction="sum_over_batch_size", dtype=jnp.float32):
    """Weights, masks and reduces per-sample losses as Keras 3 does.

    "sum_over_batch_size"/"mean": sum(loss * weight) / number of loss elements
    (with a mask: / number of valid elements); "sum": sum(loss * weight);
    "mean_with_sample_weight": sum(loss * weight) / sum(weight); None: no
    reduction. See :func:`weighted_sum_and_divisor`.
    """
    reduction = standardize_reduction(reduction)
    if reduction in (None, "none"):
        values = jnp.asarray(values, dtype)
        sample_weight = apply_mask(None if sample_weight is None else jnp.asarray(
            sample_weight, dtype), mask, dtype=dtype, reduction=reduction)
        if sample_weight is not None:
            values, sample_weight = _broadcast_pair(values, sample_weight.astype(dtype))
            values = values * sample_weight
        return values
    values = jnp.asarray(values, dtype)
    if values.size == 0:
        return values
    return safe_divide(*weighted_sum_and_divisor(values, sample_weight, mask, reduction,
                                                 dtype))


# --------------------------------------------------------------------------
# Loss functions (per-sample values, Keras names)
# --------------------------------------------------------------------------

def _float(x, dtype=None):
    x = jnp.asarray(x)
    if dtype is None:
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return x.astype(dtype)


def _log_probs(y_pred, from_logits, axis):
    if from_logits:
        return jax.nn.log_softmax(y_pred, axis=axis)
    out = y_pred / jnp.sum(y_pred, axis=axis, keepdims=True)
    return jnp.log(jnp.clip(out, EPSILON, 1.0 - EPSILON))


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Crossentropy between one-hot (or soft) labels and predictions.

    Probabilities are normalised to sum to one and clipped to [1e-7, 1 - 1e-7]
    before the log, as Keras 3 does.

    Example:
        >>> categorical_crossentropy([[0, 1, 0]], [[0.05, 0.95, 0.0]])  # [0.0513]
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"`axis` must be of type `int`. Received: axis={axis!r}")
    y_pred = _float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "Arguments `target` and `output` must have the same shape. Received: "
            f"target.shape={y_true.shape}, output.shape={y_pred.shape}")
    if label_smoothing:
        num_classes = y_true.shape[axis]
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(y_true * _log_probs(y_pred, from_logits, axis), axis=axis)


def _sparse_ce_and_mask(y_true, y_pred, from_logits, ignore_class, axis):
    y_pred = _float(y_pred)
    y_true = jnp.asarray(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
        y_true = jnp.squeeze(y_true, axis=axis)
    y_true = y_true.astype(jnp.int32)
    class_axis = axis % y_pred.ndim
    expected = tuple(d for i, d in enumerate(y_pred.shape) if i != class_axis)
    if y_true.shape != expected:
        raise ValueError(
            "Arguments `target` and `output` must have the same shape up until the "
            f"last dimension: target.shape={y_true.shape}, output.shape={y_pred.shape}")
    valid = None
    if ignore_class is not None:
        valid = y_true != ignore_class
        y_true = jnp.where(valid, y_true, 0)
    log_prob = _log_probs(y_pred, from_logits, axis)
    picked = jnp.take_along_axis(log_prob, jnp.expand_dims(y_true, class_axis), axis=class_axis)
    res = -jnp.squeeze(picked, class_axis)
    if valid is not None:
        res = jnp.where(valid, res, 0.0)
    return res, valid


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Crossentropy with integer labels: shape (B,), (B, 1) or (B, T) against (..., C).

    Entries whose label equals `ignore_class` give 0 (the `SparseCategoricalCrossentropy`
    class also leaves them out of the mean).

    Example:
        >>> sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]])
    """
    return _sparse_ce_and_mask(y_true, y_pred, from_logits, ignore_class, axis)[0]


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Binary crossentropy, averaged over the last axis (Keras).

    Example:
        >>> binary_crossentropy([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]])  # [0.916, 0.714]
    """
    y_pred = _float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "Arguments `target` and `output` must have the same shape. Received: "
            f"target.shape={y_true.shape}, output.shape={y_pred.shape}")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        bce = -y_true * jax.nn.log_sigmoid(y_pred) - (1.0 - y_true) * jax.nn.log_sigmoid(-y_pred)
    else:
        out = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
        bce = -(y_true * jnp.log(out) + (1.0 - y_true) * jnp.log(1.0 - out))
    return jnp.mean(bce, axis=axis)


def _same_rank(y_true, y_pred):
    y_pred = _float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    return squeeze_or_expand_to_same_rank(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    """`mean(square(y_true - y_pred), axis=-1)`.

    Example:
        >>> mean_squared_error([[0., 1.]], [[1., 1.]])  # [0.5]
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred):
    """`mean(abs(y_true - y_pred), axis=-1)`.

    Example:
        >>> mean_absolute_error([[0., 1.]], [[1., 1.]])  # [0.5]
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.abs(y_true - y_pred), axis=-1)


def huber(y_true, y_pred, delta=1.0):
    """Huber loss, averaged over the last axis (Keras).

    Example:
        >>> huber([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]])
    """
    y_true, y_pred = _same_rank(y_true, y_pred)
    err = y_pred - y_true
    abs_err = jnp.abs(err)
    return jnp.mean(jnp.where(abs_err <= delta, 0.5 * jnp.square(err),
                              delta * abs_err - 0.5 * delta ** 2), axis=-1)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error


# --------------------------------------------------------------------------
# Loss classes
# --------------------------------------------------------------------------

class Loss:
    """Base class: subclass and implement `call(y_true, y_pred)`.

    Args:
        name: name of the loss (used in logs and configs).
        reduction: "sum_over_batch_size" (default), "sum", "mean",
            "mean_with_sample_weight" or None.
        dtype: dtype the loss is computed in (float32, as Keras' floatx).

    Example:
        >>> class MyMSE(losses.Loss):
        ...     def call(self, y_true, y_pred):
        ...         return jnp.mean(jnp.square(y_pred - y_true), axis=-1)
        >>> MyMSE(name="my_mse")(y_true, y_pred, sample_weight=w)
    """

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        from hybridnet.utils import snake_case
        self.name = name or snake_case(type(self).__name__)
        self.reduction = standardize_reduction(reduction)
        self.dtype = jnp.dtype(dtype or "float32")

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__} must implement `call(y_true, y_pred)`.")

    def call_with_mask(self, y_true, y_pred):
        """`(per-sample losses, mask or None)`; the mask marks entries to average over."""
        return self.call(y_true, y_pred), None

    def __call__(self, y_true, y_pred, sample_weight=None, mask=None):
        """Scalar (or unreduced with reduction=None) weighted loss.

        Args:
            sample_weight: broadcastable to the per-sample losses, batch first
                (`(B,)` weights apply to every time step of a `(B, T)` loss).
            mask: boolean, `(B,)` or the loss's shape; with the mean reductions
                the result is the mean over valid entries (Keras 3).
        """
        values, mask = self._values_and_mask(y_true, y_pred, mask)
        return reduce_weighted_values(values, sample_weight, mask, self.reduction, self.dtype)

    def sum_and_divisor(self, y_true, y_pred, sample_weight=None, mask=None):
        """The loss as ``(weighted sum, divisor)`` (see :func:`weighted_sum_and_divisor`):
        the loss of a batch split into pieces is the sum of the pieces' sums divided by
        the whole batch's divisor."""
        values, mask = self._values_and_mask(y_true, y_pred, mask)
        return weighted_sum_and_divisor(values, sample_weight, mask, self.reduction,
                                        self.dtype)

    def _values_and_mask(self, y_true, y_pred, mask):
        y_pred = jnp.asarray(y_pred)
        if jnp.issubdtype(y_pred.dtype, jnp.floating) and y_pred.dtype != self.dtype:
            y_pred = y_pred.astype(self.dtype)
        values, out_mask = self.call_with_mask(y_true, y_pred)
        if mask is not None and out_mask is not None:
            m1, m2 = _broadcast_pair(jnp.asarray(mask, bool), out_mask)
            mask = m1 & m2
        elif out_mask is not None:
            mask = out_mask
        return values, mask

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class LossFunctionWrapper(Loss):
    """Turns `fn(y_true, y_pred, **kwargs) -> per-sample losses` into a `Loss`.

    Example:
        >>> loss = losses.LossFunctionWrapper(lambda t, p: jnp.abs(t - p), name="l1")
    """

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise ValueError(f"Argument `fn` must be callable. Received: fn={fn!r}")
        super().__init__(name=name or getattr(fn, "__name__", None), reduction=reduction,
                         dtype=dtype)
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        fn_name = _FUNCTION_NAMES.get(self.fn)
        if fn_name is None:
            raise ValueError(
                f"Loss {self.name!r} wraps a custom function that cannot be serialized. "
                f"Received: fn={self.fn!r}")
        return {**super().get_config(), "fn": fn_name, **self._fn_kwargs}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "fn" not in config:  # built-in subclasses: config is their constructor args
            return cls(**config)
        fn = config.pop("fn")
        if isinstance(fn, str):
            if fn not in _FUNCTIONS:
                raise ValueError(f"Unknown loss function. Expected one of {sorted(_FUNCTIONS)}. "
                                 f"Received: fn={fn!r}")
            fn = _FUNCTIONS[fn]
        return cls(fn, **config)


class MeanSquaredError(LossFunctionWrapper):
    """Mean of squares of errors; Example: `losses.MeanSquaredError()(y_true, y_pred)`."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        return Loss.get_config(self)


class MeanAbsoluteError(LossFunctionWrapper):
    """Mean of absolute errors; Example: `losses.MeanAbsoluteError()(y_true, y_pred)`."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        return Loss.get_config(self)


class Huber(LossFunctionWrapper):
    """Huber loss; Example: `losses.Huber(delta=0.5)(y_true, y_pred)`."""

    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name="huber_loss", dtype=None):
        super().__init__(huber, reduction=reduction, name=name, dtype=dtype, delta=delta)
        self.delta = delta

    def get_config(self):
        return {**Loss.get_config(self), "delta": self.delta}


class CategoricalCrossentropy(LossFunctionWrapper):
    """Crossentropy for one-hot labels.

    Example:
        >>> losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        ...     jax.nn.one_hot(labels, 10), logits)
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.axis = axis

    def get_config(self):
        return {**Loss.get_config(self), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Crossentropy for integer labels of shape (B,), (B, 1) or (B, T).

    With `ignore_class`, entries with that label are left out of the mean.

    Example:
        >>> losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    """

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 axis=-1, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name,
                         dtype=dtype, from_logits=from_logits, ignore_class=ignore_class,
                         axis=axis)
        self.from_logits = from_logits
        self.ignore_class = ignore_class
        self.axis = axis

    def call_with_mask(self, y_true, y_pred):
        return _sparse_ce_and_mask(y_true, y_pred, self.from_logits, self.ignore_class, self.axis)

    def get_config(self):
        return {**Loss.get_config(self), "from_logits": self.from_logits,
                "ignore_class": self.ignore_class}


class BinaryCrossentropy(LossFunctionWrapper):
    """Binary crossentropy (mean over the last axis per sample).

    Example:
        >>> losses.BinaryCrossentropy(from_logits=True)(y_true, logits)
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(binary_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.axis = axis

    def get_config(self):
        return {**Loss.get_config(self), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


# --------------------------------------------------------------------------
# get / serialize / deserialize
# --------------------------------------------------------------------------

_FUNCTIONS = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mean_squared_error": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "huber": huber,
}
_FUNCTION_NAMES = {fn: name for name, fn in _FUNCTIONS.items()}

_CLASSES = {c.__name__: c for c in (
    Loss, LossFunctionWrapper, CategoricalCrossentropy, SparseCategoricalCrossentropy,
    BinaryCrossentropy, MeanSquaredError, MeanAbsoluteError, Huber)}

# Keras string name -> class.
_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
}


def known_names():
    return sorted(_BY_NAME) + sorted(k for k in _CLASSES if k not in ("Loss", "LossFunctionWrapper"))


def get(identifier):
    """Resolves a Keras loss identifier into a `Loss` (or None for None).

    Accepts a Keras string name ("categorical_crossentropy", "mse", ...; the
    string becomes the loss's name, as in Keras compile), a class name
    ("CategoricalCrossentropy"), a config dict from `serialize`, a `Loss`
    instance, or any callable `(y_true, y_pred) -> per-sample losses` (wrapped
    so the same reduction applies).

    Example:
        >>> losses.get("sparse_categorical_crossentropy")(labels, probs)
    """
    if identifier is None or isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        key = identifier if identifier in _CLASSES else identifier.lower()
        if key in _BY_NAME:
            return _BY_NAME[key](name=identifier)
        if key in _CLASSES and key not in ("Loss", "LossFunctionWrapper"):
            return _CLASSES[key]()
        raise ValueError(
            f"Unknown loss. Expected one of {known_names()}, a `Loss` instance or a "
            f"callable. Received: loss={identifier!r}")
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier):
        return LossFunctionWrapper(identifier, name=getattr(identifier, "__name__", "loss"))
    raise ValueError(
        "Could not interpret loss identifier. Expected a string, a `Loss` instance or a "
        f"callable. Received: loss={identifier!r}")


def serialize(loss):
    """A JSON-able description of `loss`, or None if it cannot be serialised.

    Strings are returned as they are; built-in `Loss` objects become
    `{"class_name": ..., "config": ...}`; known Keras functions their name;
    registered custom classes and functions (see
    `hybridnet.saving.register_serializable`) `{"class_name", "registered_name",
    "config"}` (a function: `"class_name": "function"`, `"config"`: its name);
    other custom callables (and losses wrapping them) None.

    Example:
        >>> losses.deserialize(losses.serialize(losses.Huber(delta=2.0)))
    """
    if loss is None or isinstance(loss, str):
        return loss
    if isinstance(loss, Loss):
        try:
            if type(loss).__name__ in _CLASSES and type(loss) is _CLASSES[type(loss).__name__]:
                if type(loss) is LossFunctionWrapper and loss.fn not in _FUNCTION_NAMES:
                    fn = _registry.function_config(loss.fn)
                    if fn is None:
                        return None
                    return {"class_name": "LossFunctionWrapper",
                            "config": {**Loss.get_config(loss), "fn": fn, **loss._fn_kwargs}}
                return {"class_name": type(loss).__name__, "config": loss.get_config()}
            return _registry.object_config(loss)
        except ValueError:
            return None
    if callable(loss):
        return _FUNCTION_NAMES.get(loss) or _registry.function_config(loss)
    raise ValueError(f"Cannot serialize loss. Received: loss={loss!r}")


def deserialize(config, custom_objects=None):
    """Inverse of `serialize`: a name or `{"class_name", "config"}` -> `Loss`; a
    function entry -> the function.

    Custom classes and functions are found by registered name or plain name in
    `custom_objects`, an active `hybridnet.saving.custom_object_scope`, or the
    `register_serializable` registry; nothing is imported.

    Raises:
        hybridnet.saving.registry.UnknownObjectError (a ValueError): the config
            names an object that is not known here.
    """
    if isinstance(config, str):
        found = _registry.get_registered_object(config, custom_objects)
        return found if found is not None else get(config)
    if config is None:
        return None
    if isinstance(config, dict) and "class_name" in config:
        name = config["class_name"]
        inner = dict(config.get("config") or {}) if name != "function" else config.get("config")
        if not config.get("registered_name") and name in _CLASSES and name != "Loss":
            if name == "LossFunctionWrapper" and isinstance(inner.get("fn"), dict):
                inner["fn"] = deserialize(inner["fn"], custom_objects)
            return _CLASSES[name].from_config(inner)
        return _registry.resolve_custom(config, custom_objects, Loss, "Loss")
    raise ValueError("Expected a loss name or a dict with 'class_name' and 'config'. "
                     f"Received: config={config!r}")
