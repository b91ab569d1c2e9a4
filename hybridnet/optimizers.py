"""Keras-named optimizers that build `optax.GradientTransformation`s.

An `Optimizer` here is a thin, serialisable description (`Adam(learning_rate=1e-3)`);
`to_optax()` turns it into an optax transformation whose learning rate lives in
the optimizer *state* (`optax.inject_hyperparams`), so the trainer can change it
between epochs without recompiling:

    >>> tx = optimizers.Adam(1e-3).to_optax()
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)   # inside jit
    >>> opt_state = optimizers.set_learning_rate(opt_state, 1e-4)  # between epochs

The transformation is `inject_hyperparams(chain(clip, rule(lr), decoupled_decay(lr)))`
and always wants `params` in `update` (weight decay needs them).

Update rules follow Keras 3 (keras/src/optimizers/*.py). Where optax's stock
transforms differ from Keras (Adam's epsilon placement, SGD momentum holding
`lr * grad`, per-variable `clipnorm`), a small optax-style transform below
implements the Keras rule exactly; RMSprop, Adagrad, `clipvalue` and
`global_clipnorm` use optax's own transforms, which match Keras.
"""
from __future__ import annotations

import math
import sys
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hybridnet.saving import registry as _registry


# --------------------------------------------------------------------------
# Small optax-style transforms with Keras' exact update rules
# --------------------------------------------------------------------------

def clip_by_norm_per_leaf(clipnorm: float) -> optax.GradientTransformation:
    """Keras `clipnorm`: each gradient is clipped to L2 norm <= `clipnorm` on its own.

    Example:
        >>> tx = optax.chain(clip_by_norm_per_leaf(1.0), optax.sgd(0.1))
    """

    def clip(g):
        l2sum = jnp.sum(jnp.square(g))
        pred = l2sum > 0
        l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, 1.0)), l2sum)
        return g * clipnorm / jnp.maximum(l2norm, clipnorm)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class KerasMomentumState(NamedTuple):
    momentum: Any  # pytree like params: the Keras buffer `m = momentum * m - lr * g`


def keras_sgd(learning_rate, momentum: float = 0.0, nesterov: bool = False
              ) -> optax.GradientTransformation:
    """Keras SGD: `m = momentum * m - lr * g`; update `m` (or `momentum * m - lr * g`).

    The buffer holds learning-rate-scaled steps, as in Keras (optax's `trace`
    holds raw gradients; the two agree only while the learning rate is constant).

    Example:
        >>> tx = keras_sgd(0.01, momentum=0.9, nesterov=True)
    """
    if not momentum:
        return optax.scale_by_learning_rate(learning_rate)

    def init_fn(params):
        return KerasMomentumState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: momentum * m - learning_rate * g, state.momentum, updates)
        if nesterov:
            updates = jax.tree.map(lambda m, g: momentum * m - learning_rate * g, m, updates)
        else:
            updates = m
        return updates, KerasMomentumState(m)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByKerasAdamState(NamedTuple):
    count: jax.Array  # int32 scalar: number of updates so far
    mu: Any
    nu: Any
    nu_max: Any  # max of nu so far when amsgrad, else None


def scale_by_keras_adam(beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False
                        ) -> optax.GradientTransformation:
    """Keras 3 Adam direction (before `-lr`): `m * sqrt(1-b2^t)/(1-b1^t) / (sqrt(v) + eps)`.

    `optax.scale_by_adam` divides by `sqrt(v_hat) + eps`, i.e. its epsilon is
    Keras' epsilon times `sqrt(1 - b2^t)`; no optax option reproduces Keras'
    placement, hence this transform. AMSGrad keeps the max of the raw (not
    bias-corrected) `v`, as Keras does.

    Example:
        >>> tx = optax.chain(scale_by_keras_adam(), optax.scale_by_learning_rate(1e-3))
    """

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return ScaleByKerasAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(),
                                     zeros() if amsgrad else None)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda g, m: m + (g - m) * (1 - beta_1), updates, state.mu)
        nu = jax.tree.map(lambda g, v: v + (jnp.square(g) - v) * (1 - beta_2), updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        v_used = nu_max if amsgrad else nu
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        updates = jax.tree.map(
            lambda m, v: (m * alpha.astype(m.dtype)) / (jnp.sqrt(v) + epsilon), mu, v_used)
        return updates, ScaleByKerasAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def decoupled_weight_decay(weight_decay, learning_rate) -> optax.GradientTransformation:
    """Keras' weight decay (all optimizers): `variable -= lr * weight_decay * variable`.

    Example:
        >>> tx = optax.chain(keras_sgd(0.1), decoupled_weight_decay(1e-4, 0.1))
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("Weight decay needs the parameters: call "
                             "`update(grads, opt_state, params)`. Received: params=None")
        updates = jax.tree.map(lambda u, p: u - (learning_rate * weight_decay) * p,
                               updates, params)
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# --------------------------------------------------------------------------
# Learning-rate schedules (Keras semantics)
# --------------------------------------------------------------------------

class LearningRateSchedule:
    """Base class: a callable `step -> learning rate` with a config.

    Subclass and implement `__call__(step)` (jnp code; `step` is an int32 array)
    and `get_config()`.

    Example:
        >>> class Halve(LearningRateSchedule):
        ...     def __call__(self, step): return 0.1 * 0.5 ** (step // 100)
    """

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """`initial_learning_rate * decay_rate ** (step / decay_steps)` (floored if staircase).

    Example:
        >>> Adam(learning_rate=ExponentialDecay(1e-3, decay_steps=1000, decay_rate=0.9))
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        if decay_steps <= 0:
            raise ValueError(f"Argument `decay_steps` must be > 0. Received: "
                             f"decay_steps={decay_steps}")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name
        self._fn = optax.exponential_decay(initial_learning_rate, decay_steps, decay_rate,
                                           staircase=staircase)

    def __call__(self, step):
        return self._fn(step)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """`values[0]` for `step <= boundaries[0]`, `values[1]` up to `boundaries[1]`, ...

    Example:
        >>> SGD(learning_rate=PiecewiseConstantDecay([1000, 2000], [0.1, 0.01, 0.001]))
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "The length of `values` must be one more than the length of `boundaries`. "
                f"Received: len(boundaries)={len(boundaries)}, len(values)={len(values)}")
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        step = jnp.asarray(step)
        index = sum((step > b).astype(jnp.int32) for b in self.boundaries) \
            if self.boundaries else jnp.zeros([], jnp.int32)
        return jnp.asarray(self.values, jnp.float32)[index]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from `initial_learning_rate` to `alpha * initial_learning_rate`
    over `decay_steps`, with an optional linear warmup to `warmup_target` (Keras).

    Example:
        >>> AdamW(learning_rate=CosineDecay(1e-3, decay_steps=10_000, alpha=0.1))
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        if decay_steps <= 0:
            raise ValueError(f"Argument `decay_steps` must be > 0. Received: "
                             f"decay_steps={decay_steps}")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps
        self._cosine = optax.cosine_decay_schedule(
            initial_learning_rate if warmup_target is None else warmup_target,
            decay_steps, alpha)

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        if self.warmup_target is None:
            return self._cosine(step)
        warm = self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) * (
            step / max(self.warmup_steps, 1))
        return jnp.where(step < self.warmup_steps, warm,
                         self._cosine(jnp.maximum(step - self.warmup_steps, 0)))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_SCHEDULES = {c.__name__: c for c in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize_schedule(schedule):
    """`{"class_name", "config"}` of a built-in schedule (plus `"registered_name"` for one
    registered with `hybridnet.saving.register_serializable`); ValueError otherwise."""
    if isinstance(schedule, LearningRateSchedule):
        name = type(schedule).__name__
        if _SCHEDULES.get(name) is type(schedule):
            return {"class_name": name, "config": schedule.get_config()}
        config = _registry.object_config(schedule)
        if config is not None:
            return config
    raise ValueError("Only the built-in learning-rate schedules and registered ones "
                     f"({_registry.HOW_TO_REGISTER}) can be serialized. "
                     f"Received: learning_rate={schedule!r}")


def deserialize_schedule(config, custom_objects=None):
    """Inverse of `serialize_schedule`; custom schedules resolve through `custom_objects`,
    an active `hybridnet.saving.custom_object_scope` or the registry."""
    name = config.get("class_name")
    if not config.get("registered_name") and name in _SCHEDULES:
        return _SCHEDULES[name].from_config(config.get("config", {}))
    found = _registry.resolve(config, custom_objects, what="learning-rate schedule")
    if not (isinstance(found, type) and issubclass(found, LearningRateSchedule)):
        raise ValueError(f"Schedule {_registry.describe(config)} resolved to {found!r}, which "
                         "is not a hybridnet.optimizers.LearningRateSchedule subclass.")
    return found.from_config(config.get("config", {}))


# `hybridnet.optimizers.schedules.ExponentialDecay`, as `keras.optimizers.schedules`.
schedules = types.ModuleType(__name__ + ".schedules", "Learning-rate schedules (Keras names).")
for _cls in (LearningRateSchedule, ExponentialDecay, PiecewiseConstantDecay, CosineDecay):
    setattr(schedules, _cls.__name__, _cls)
schedules.serialize = serialize_schedule
schedules.deserialize = deserialize_schedule
sys.modules[schedules.__name__] = schedules


# --------------------------------------------------------------------------
# Optimizer descriptions
# --------------------------------------------------------------------------

_UNSUPPORTED_DEFAULTS = {"use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                         "loss_scale_factor": None}


def _check_lr(learning_rate):
    if callable(learning_rate):
        return learning_rate
    try:
        value = None if isinstance(learning_rate, bool) else float(learning_rate)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError("Argument `learning_rate` must be a non-negative float or a schedule "
                         f"(callable of the step). Received: learning_rate={learning_rate!r}")
    return value


class Optimizer:
    """Base class of the Keras-named optimizers.

    Subclasses implement `_rule(learning_rate) -> optax.GradientTransformation`
    (the update including the `-lr` scaling) and list their own config keys in
    `_config_keys`.

    Args:
        learning_rate: float or schedule (callable of the int step).
        weight_decay: decoupled weight decay, `p -= lr * weight_decay * p`.
        clipnorm / clipvalue / global_clipnorm: gradient clipping (only one).
        gradient_accumulation_steps: average gradients over this many steps and
            update every that many (`optax.MultiSteps`).
    """

    _config_keys: tuple = ()

    def __init__(self, learning_rate, name=None, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, gradient_accumulation_steps=None,
                 **kwargs):
        for key, value in kwargs.items():
            if key not in _UNSUPPORTED_DEFAULTS:
                raise TypeError(f"{type(self).__name__}: unexpected keyword argument. "
                                f"Received: {key}={value!r}")
            if value != _UNSUPPORTED_DEFAULTS[key]:
                raise NotImplementedError(
                    f"{type(self).__name__}: `{key}` is not supported by hybridnet. "
                    f"Expected {key}={_UNSUPPORTED_DEFAULTS[key]!r}. Received: {key}={value!r}")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}")
        for arg, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                           ("global_clipnorm", global_clipnorm), ("weight_decay", weight_decay)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"Argument `{arg}` must be a non-negative float or None. "
                                 f"Received: {arg}={value!r}")
        if gradient_accumulation_steps is not None and (
                not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 2):
            raise ValueError("`gradient_accumulation_steps` must be an integer >= 2. Received: "
                             f"gradient_accumulation_steps={gradient_accumulation_steps!r}")
        self.name = name or type(self).__name__.lower()
        self._learning_rate = _check_lr(learning_rate)
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._tx = None

    # -- learning rate ------------------------------------------------------
    @property
    def learning_rate(self):
        """The float or schedule this optimizer was built with (the live value
        is in the optimizer state: see `get_learning_rate(opt_state)`)."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(self._learning_rate):
            raise TypeError(
                f"{type(self).__name__} was created with a learning-rate schedule, hence its "
                f"learning rate is not settable. Received: learning_rate={value!r}")
        self._learning_rate = _check_lr(value)
        self._tx = None

    # -- optax --------------------------------------------------------------
    def _rule(self, learning_rate) -> optax.GradientTransformation:
        raise NotImplementedError

    def _clipping(self):
        if self.clipnorm:
            return [clip_by_norm_per_leaf(self.clipnorm)]
        if self.global_clipnorm:
            return [optax.clip_by_global_norm(self.global_clipnorm)]
        if self.clipvalue:
            return [optax.clip(self.clipvalue)]
        return []

    def _factory(self, learning_rate):
        parts = self._clipping() + [self._rule(learning_rate)]
        if self.weight_decay:
            parts.append(decoupled_weight_decay(self.weight_decay, learning_rate))
        return optax.chain(*parts)

    def to_optax(self) -> optax.GradientTransformation:
        """The optax transformation (built once and cached).

        State layout: `InjectStatefulHyperparamsState(count, hyperparams={"learning_rate":
        f32[]}, hyperparams_states, inner_state=(clip state, rule state, ...))`, wrapped
        in `optax.MultiStepsState` with `gradient_accumulation_steps`.
        """
        if self._tx is None:
            tx = optax.inject_hyperparams(self._factory, hyperparam_dtype=jnp.float32)(
                learning_rate=self._learning_rate)
            if self.gradient_accumulation_steps:
                tx = optax.MultiSteps(tx, self.gradient_accumulation_steps
                                      ).gradient_transformation()
            self._tx = tx
        return self._tx

    def init(self, params):
        """`self.to_optax().init(params)`."""
        return self.to_optax().init(params)

    def update(self, grads, opt_state, params=None):
        """`self.to_optax().update(grads, opt_state, params)`."""
        return self.to_optax().update(grads, opt_state, params)

    # -- config -------------------------------------------------------------
    def get_config(self):
        lr = self._learning_rate
        if callable(lr):
            lr = serialize_schedule(lr)
        config = {"name": self.name, "learning_rate": lr, "weight_decay": self.weight_decay,
                  "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                  "clipvalue": self.clipvalue,
                  "gradient_accumulation_steps": self.gradient_accumulation_steps}
        config.update({k: getattr(self, k) for k in self._config_keys})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = deserialize_schedule(config["learning_rate"])
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} learning_rate={self._learning_rate!r}>"


def _check_unit(owner, arg, value, closed_top=True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value <= 1 if closed_top else value < 1)
    if not ok:
        raise ValueError(f"{owner}: `{arg}` must be a float in [0, 1{']' if closed_top else ')'}. "
                         f"Received: {arg}={value!r}")
    return float(value)


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, Keras 3 rule.

    `m = momentum * m - lr * g`; `p += m` (Nesterov: `p += momentum * m - lr * g`).
    Exact for any learning-rate changes (the buffer holds `lr`-scaled steps).

    Example:
        >>> model.compile(optimizer=SGD(0.1, momentum=0.9, nesterov=True), loss="mse")
    """

    _config_keys = ("momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="SGD", **kwargs):
        super().__init__(learning_rate, name=name, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, **kwargs)
        self.momentum = _check_unit("SGD", "momentum", momentum)
        self.nesterov = bool(nesterov)

    def _rule(self, learning_rate):
        return keras_sgd(learning_rate, self.momentum, self.nesterov)


class Adam(Optimizer):
    """Adam with Keras 3's rule (exact; see `scale_by_keras_adam`).

    Example:
        >>> model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
    """

    _config_keys = ("beta_1", "beta_2", "epsilon", "amsgrad")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adam", **kwargs):
        super().__init__(learning_rate, name=name, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, **kwargs)
        self.beta_1 = _check_unit(type(self).__name__, "beta_1", beta_1, closed_top=False)
        self.beta_2 = _check_unit(type(self).__name__, "beta_2", beta_2, closed_top=False)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)

    def _rule(self, learning_rate):
        return optax.chain(scale_by_keras_adam(self.beta_1, self.beta_2, self.epsilon,
                                               self.amsgrad),
                           optax.scale_by_learning_rate(learning_rate))


class AdamW(Adam):
    """Adam with decoupled weight decay (`p -= lr * weight_decay * p`), as Keras 3.

    Example:
        >>> AdamW(learning_rate=1e-3, weight_decay=0.01)
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adamw", **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float for AdamW. "
                             "Received: weight_decay=None")
        super().__init__(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)


class RMSprop(Optimizer):
    """RMSprop, Keras 3 rule, built from optax transforms that match it exactly:
    `v = rho v + (1-rho) g^2`; `inc = lr g / sqrt(v + eps)` (centered:
    `sqrt(v - mean_g^2 + eps)`); with momentum `b = momentum b + inc`; `p -= b`.

    Example:
        >>> RMSprop(learning_rate=1e-3, rho=0.9, momentum=0.0, centered=False)
    """

    _config_keys = ("rho", "momentum", "epsilon", "centered")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="rmsprop", **kwargs):
        super().__init__(learning_rate, name=name, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, **kwargs)
        self.rho = _check_unit("RMSprop", "rho", rho)
        self.momentum = _check_unit("RMSprop", "momentum", momentum)
        self.epsilon = float(epsilon)
        self.centered = bool(centered)

    def _rule(self, learning_rate):
        scale = optax.scale_by_stddev if self.centered else optax.scale_by_rms
        parts = [scale(decay=self.rho, eps=self.epsilon, initial_scale=0.0, eps_in_sqrt=True),
                 optax.scale_by_learning_rate(learning_rate)]
        if self.momentum:
            parts.append(optax.trace(decay=self.momentum))
        return optax.chain(*parts)


class Adagrad(Optimizer):
    """Adagrad, Keras 3 rule: `acc += g^2`; `p -= lr g / sqrt(acc + eps)` (optax.scale_by_rss).

    Example:
        >>> Adagrad(learning_rate=0.001, initial_accumulator_value=0.1)
    """

    _config_keys = ("initial_accumulator_value", "epsilon")

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name="adagrad", **kwargs):
        super().__init__(learning_rate, name=name, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, **kwargs)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def _rule(self, learning_rate):
        return optax.chain(optax.scale_by_rss(self.initial_accumulator_value, self.epsilon),
                           optax.scale_by_learning_rate(learning_rate))


class OptaxOptimizer(Optimizer):
    """Wraps any `optax.GradientTransformation` as given; its learning rate is
    whatever the transformation does (it cannot be changed through this object).

    Example:
        >>> model.compile(optimizer=optax.adam(1e-3), loss="mse")  # wrapped by get()
    """

    def __init__(self, transformation, name="optax"):
        if not isinstance(transformation, optax.GradientTransformation):
            raise ValueError("Argument `transformation` must be an optax.GradientTransformation. "
                             f"Received: transformation={transformation!r}")
        self.name = name
        self.transformation = transformation
        self.weight_decay = self.clipnorm = self.clipvalue = self.global_clipnorm = None
        self.gradient_accumulation_steps = None
        self._tx = transformation

    @property
    def learning_rate(self):
        return None

    @learning_rate.setter
    def learning_rate(self, value):
        raise TypeError(
            "The learning rate of an optimizer given as an optax.GradientTransformation cannot "
            "be changed. Use a hybridnet optimizer (e.g. optimizers.Adam(...)) or build the "
            "transformation with optax.inject_hyperparams and use set_learning_rate(opt_state, "
            f"value). Received: learning_rate={value!r}")

    def to_optax(self):
        return self.transformation

    def get_config(self):
        raise ValueError(f"An optimizer wrapping a raw optax transformation cannot be "
                         f"serialized. Received: optimizer={self.transformation!r}")

    def __repr__(self):
        return f"<OptaxOptimizer {self.transformation!r}>"


# --------------------------------------------------------------------------
# get / serialize / deserialize
# --------------------------------------------------------------------------

_CLASSES = {c.__name__: c for c in (SGD, Adam, AdamW, RMSprop, Adagrad)}
_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier) -> Optimizer:
    """Resolves a Keras optimizer identifier.

    Accepts "sgd", "adam", "adamw", "rmsprop", "adagrad" (Keras defaults; also
    class names), an `Optimizer`, a config dict from `serialize`, or an
    `optax.GradientTransformation` (wrapped in `OptaxOptimizer`).

    Example:
        >>> optimizers.get("adam").learning_rate  # 0.001
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, optax.GradientTransformation):
        return OptaxOptimizer(identifier)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is not None:
            return cls()
        raise ValueError(
            f"Unknown optimizer. Expected one of {sorted(_BY_NAME)}, an Optimizer instance or "
            f"an optax.GradientTransformation. Received: optimizer={identifier!r}")
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise ValueError(
        "Could not interpret optimizer identifier. Expected a string, an Optimizer or an "
        f"optax.GradientTransformation. Received: optimizer={identifier!r}")


def serialize(optimizer):
    """`{"class_name": "Adam", "config": {...}}`; a string is returned as is; a registered
    `Optimizer` subclass (see `hybridnet.saving.register_serializable`) also carries its
    `"registered_name"`; None for a wrapped optax transformation, an unregistered
    subclass or an unserializable schedule.

    Example:
        >>> optimizers.deserialize(optimizers.serialize(optimizers.SGD(0.1, momentum=0.9)))
    """
    if optimizer is None or isinstance(optimizer, str):
        return optimizer
    if isinstance(optimizer, optax.GradientTransformation):
        return None
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"Cannot serialize optimizer. Received: optimizer={optimizer!r}")
    try:
        name = type(optimizer).__name__
        if _CLASSES.get(name) is type(optimizer):
            return {"class_name": name, "config": optimizer.get_config()}
        return _registry.object_config(optimizer)
    except ValueError:
        return None


def deserialize(config, custom_objects=None) -> Optimizer:
    """Inverse of `serialize`. Custom optimizers resolve through `custom_objects`, an
    active `hybridnet.saving.custom_object_scope` or the registry; nothing is imported.

    Raises:
        hybridnet.saving.registry.UnknownObjectError (a ValueError): the config
            names an optimizer that is not known here.
    """
    if isinstance(config, str):
        found = _registry.get_registered_object(config, custom_objects)
        return get(found if found is not None else config)
    if isinstance(config, dict) and "class_name" in config:
        name = config["class_name"]
        cls = None if config.get("registered_name") else (
            _CLASSES.get(name) or _BY_NAME.get(str(name).lower()))
        if cls is None:
            cls = _registry.resolve(config, custom_objects, what="optimizer")
            if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
                raise ValueError(f"Optimizer {_registry.describe(config)} resolved to {cls!r}, "
                                 "which is not a hybridnet.optimizers.Optimizer subclass.")
        with _registry.custom_object_scope(custom_objects):  # for a custom schedule inside
            return cls.from_config(config.get("config", {}))
    raise ValueError("Expected an optimizer name or a dict with 'class_name' and 'config'. "
                     f"Received: config={config!r}")


# --------------------------------------------------------------------------
# Helpers on the optax state (pure; usable inside jit; no host sync)
# --------------------------------------------------------------------------

def _is_inject_state(x):
    return (isinstance(x, tuple) and hasattr(x, "_fields") and "hyperparams" in x._fields
            and "inner_state" in x._fields and isinstance(x.hyperparams, dict))


def _find_inject_state(state):
    if _is_inject_state(state):
        return state if "learning_rate" in state.hyperparams else _find_inject_state(
            state.inner_state)
    if isinstance(state, (tuple, list)):
        children = state
    elif isinstance(state, dict):
        children = state.values()
    else:
        return None
    for child in children:
        found = _find_inject_state(child)
        if found is not None:
            return found
    return None


def get_learning_rate(opt_state):
    """The learning rate stored in the optimizer state (f32 scalar), or None.

    With a schedule this is the value used by the most recent update (at init:
    the schedule at step 0).

    Example:
        >>> float(optimizers.get_learning_rate(opt_state))
    """
    found = _find_inject_state(opt_state)
    return None if found is None else found.hyperparams["learning_rate"]


def get_iterations(opt_state):
    """Number of updates applied so far (int32 scalar), or None (Keras `optimizer.iterations`)."""
    found = _find_inject_state(opt_state)
    return None if found is None else found.count


def set_learning_rate(opt_state, value):
    """A new optimizer state whose learning rate is `value` (same dtype and shape,
    so a jitted step that takes the state as an argument does not retrace).

    Raises ValueError when the state has no injected learning rate or the
    learning rate is driven by a schedule.

    Example:
        >>> opt_state = optimizers.set_learning_rate(opt_state, 1e-4)
    """
    done = []

    def rebuild(state):
        if _is_inject_state(state) and "learning_rate" in state.hyperparams and not done:
            states = getattr(state, "hyperparams_states", None) or {}
            if "learning_rate" in states:
                raise ValueError("The learning rate is driven by a schedule and cannot be set. "
                                 f"Received: value={value!r}")
            old = state.hyperparams["learning_rate"]
            new = jnp.asarray(value, dtype=jnp.result_type(old)).reshape(jnp.shape(old))
            done.append(True)
            return state._replace(hyperparams={**state.hyperparams, "learning_rate": new})
        if _is_inject_state(state):
            return state._replace(inner_state=rebuild(state.inner_state))
        if isinstance(state, tuple):
            items = [rebuild(c) for c in state]
            return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
        if isinstance(state, list):
            return [rebuild(c) for c in state]
        if isinstance(state, dict):
            return type(state)((k, rebuild(v)) for k, v in state.items())
        return state

    new_state = rebuild(opt_state)
    if not done:
        raise ValueError(
            "The optimizer state holds no injectable learning rate (build the optimizer with "
            "hybridnet.optimizers or optax.inject_hyperparams). "
            f"Received: opt_state of type {type(opt_state).__name__}")
    return new_state
