"""Variables and the stateless scope that makes stateful-looking code pure.

A :class:`Variable` is what ``Layer.add_weight`` (and ``Metric.add_variable``) return:
a named handle with a shape, dtype, initializer, trainability and optional logical
axes. Outside any scope it holds its own value, as a Keras variable does. While a
compiled step runs a layer, a :class:`StatelessScope` binds every variable to the value
the step passed in (from the ``TrainState``); reads return the bound value and
``assign`` records a new one, so ``jit``, ``grad`` and ``vmap`` see plain functions of
arrays. This is how Keras 3's JAX backend runs layers (``StatelessScope``).

Example:
    >>> v = Variable((2,), "float32", initializers.get("ones"), name="w")
    >>> with StatelessScope({v: jnp.zeros(2)}) as scope:
    ...     v.assign(v + 1.0)
    >>> scope.new_value(v)       # Array([1., 1.]); v itself is unchanged
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

_local = threading.local()


def current_scope() -> "StatelessScope | None":
    stack = getattr(_local, "scopes", None)
    return stack[-1] if stack else None


class StatelessScope:
    """Binds variables to values for the duration of a ``with`` block.

    Args:
        bindings: ``{variable: value}`` for the variables the code may read.
        rng: the key that ``SeedGenerator`` draws from inside the scope (one per call).
        training: the training flag layers called inside the scope inherit.
        abstract: unbound variables read as zeros of their shape (used to infer shapes,
            where values do not matter); otherwise reading one raises.
    """

    def __init__(self, bindings: dict | None = None, *, rng=None, training: bool | None = None,
                 abstract: bool = False):
        self._values: dict[int, Any] = {}
        self._variables: dict[int, Variable] = {}
        for var, value in (bindings or {}).items():
            self.bind(var, value)
        self._assigned: dict[int, Any] = {}
        self.rng = rng
        self.training = training
        self.abstract = abstract
        self._draws = 0

    def bind(self, var: "Variable", value) -> None:
        self._values[id(var)] = value
        self._variables[id(var)] = var

    def is_bound(self, var: "Variable") -> bool:
        return id(var) in self._values

    def read(self, var: "Variable"):
        value = self._values.get(id(var))
        if value is not None:
            return value
        if self.abstract:
            return jnp.zeros(var.shape, var.dtype)
        if var._value is not None and not isinstance(var._value, jax.core.Tracer):
            return var._value
        raise ValueError(f"Variable '{var.path}' has no value inside this step: it was created "
                         f"after the step was traced. Build the layer (or call it once) "
                         f"before compiling.")

    def write(self, var: "Variable", value) -> None:
        value = jnp.asarray(value, var.dtype)
        if tuple(value.shape) != var.shape:
            raise ValueError(f"Variable '{var.path}': assign expected shape {var.shape}. "
                             f"Received: value.shape={tuple(value.shape)}")
        self._values[id(var)] = value
        self._variables[id(var)] = var
        self._assigned[id(var)] = value

    def new_value(self, var: "Variable"):
        """The value assigned to ``var`` in this scope, or None."""
        return self._assigned.get(id(var))

    def next_key(self):
        """A fresh key for one random draw (``SeedGenerator.next`` inside the scope)."""
        if self.rng is None:
            return None
        self._draws += 1
        return jax.random.fold_in(self.rng, self._draws)

    def __enter__(self):
        stack = getattr(_local, "scopes", None)
        if stack is None:
            stack = _local.scopes = []
        stack.append(self)
        return self

    def __exit__(self, *exc):
        _local.scopes.pop()
        return False


class LossCollector:
    """Collects the losses layers add with ``add_loss`` during one forward pass (the
    runners wrap each compiled step's forward pass in one)."""

    def __init__(self):
        self.losses: list = []
        self.regularized: set[int] = set()

    def __enter__(self):
        stack = getattr(_local, "collectors", None)
        if stack is None:
            stack = _local.collectors = []
        stack.append(self)
        return self

    def __exit__(self, *exc):
        _local.collectors.pop()
        return False

    def total(self):
        return sum(jnp.sum(jnp.asarray(x, jnp.float32)) for x in self.losses) \
            if self.losses else None


def current_collector() -> "LossCollector | None":
    stack = getattr(_local, "collectors", None)
    return stack[-1] if stack else None


class Variable:
    """A weight (or metric accumulator): a named handle to an array.

    Behaves like an array in arithmetic and in ``jax.numpy`` functions. ``value`` reads the
    bound value inside a :class:`StatelessScope`, else the variable's own value;
    ``assign`` records a new value in the scope, else replaces the own value.

    Args:
        shape, dtype: of the value.
        initializer: ``fn(key, shape, dtype) -> array``.
        name: the short name ("kernel"); ``path`` is set by the owner ("dense/kernel").
        trainable: updated by the optimizer (else by ``assign`` only).
        axes: optional logical axis name per dimension (e.g. ``("embed", "mlp")``) that the
            planner maps onto mesh axes.
    """

    __array_priority__ = 100

    def __init__(self, shape, dtype, initializer: Callable, *, name: str, trainable: bool = True,
                 axes=None, seed: tuple[int, int] = (0, 0)):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.initializer = initializer
        self.name = name
        self.path = name
        self.trainable = bool(trainable)
        if axes is not None and len(axes) != len(self.shape):
            raise ValueError(f"Variable '{name}' has {len(self.shape)} dims but {len(axes)} "
                             f"axis names. Received: axes={tuple(axes)!r}")
        self.axes = tuple(axes) if axes is not None else None
        self._seed = seed
        self._value = None
        self._materialize: Callable | None = None  # the owner creates values on first read
        self.regularizer: Callable | None = None

    # ------------------------------------------------------------------ values
    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def initial_value(self):
        """A fresh value from the initializer and the variable's own seed."""
        key = jax.random.fold_in(jax.random.PRNGKey(self._seed[0]), self._seed[1])
        return self.initializer(key, self.shape, self.dtype)

    @property
    def value(self):
        scope = current_scope()
        if scope is not None and (scope.is_bound(self) or scope.abstract or self._value is None):
            return scope.read(self)
        if self._value is None:
            if self._materialize is not None:
                self._materialize()
            if self._value is None:
                self._value = self.initial_value()
        return self._value

    def assign(self, value):
        scope = current_scope()
        if scope is not None:
            scope.write(self, value)
            return self
        value = jnp.asarray(value, self.dtype)
        if tuple(value.shape) != self.shape:
            raise ValueError(f"Variable '{self.path}': assign expected shape {self.shape}. "
                             f"Received: value.shape={tuple(value.shape)}")
        sharding = getattr(self._value, "sharding", None)
        self._value = value if sharding is None else jax.device_put(value, sharding)
        return self

    def assign_add(self, value):
        return self.assign(self.value + value)

    def assign_sub(self, value):
        return self.assign(self.value - value)

    def numpy(self) -> np.ndarray:
        return np.asarray(self.value)

    def __jax_array__(self):
        return self.value

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.value)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self):
        return (f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype.name}, "
                f"trainable={self.trainable}>")

    # Arrays never hash by value; variables are identities (dict keys in scopes).
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self.value == _v(other)

    def __ne__(self, other):
        return self.value != _v(other)

    def __bool__(self):
        return bool(self.value)

    def __float__(self):
        return float(self.value)

    def __int__(self):
        return int(self.value)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return self.value[index]

    def astype(self, dtype):
        return self.value.astype(dtype)

    @property
    def T(self):
        return self.value.T

    def reshape(self, *shape):
        return self.value.reshape(*shape)


def _v(x):
    return x.value if isinstance(x, Variable) else x


def _binary(name):
    def forward(self, other):
        return getattr(self.value, name)(_v(other))
    forward.__name__ = name
    return forward


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
              "__rmod__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__lt__", "__le__",
              "__gt__", "__ge__", "__and__", "__rand__", "__or__", "__ror__", "__xor__",
              "__rxor__"):
    setattr(Variable, _name, _binary(_name))
for _name in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(Variable, _name, (lambda n: lambda self: getattr(self.value, n)())(_name))
del _name


class SeedGenerator:
    """The source of random keys for a layer, as ``keras.random.SeedGenerator``.

    Inside a compiled step each draw folds a counter into the step's key for the layer
    call (so every step and every call differs, and the step stays pure); outside one,
    draws come from the generator's own seed and a counter.

    Example:
        >>> class Noise(Layer):
        ...     def __init__(self, **kw):
        ...         super().__init__(**kw)
        ...         self.seed_generator = SeedGenerator(1337)
        ...     def call(self, x):
        ...         return x + random.normal(x.shape, seed=self.seed_generator)
    """

    def __init__(self, seed: int | None = None):
        if seed is None:
            from hybridnet import utils
            seed = utils.next_seed()
        self.seed = int(seed)
        self._count = 0

    def next(self):
        scope = current_scope()
        if scope is not None:
            key = scope.next_key()
            if key is not None:
                return jax.random.fold_in(key, self.seed)
            if scope.abstract:
                return jax.random.PRNGKey(self.seed)
            raise ValueError("A layer draws random numbers in training mode but its call got "
                             "no rng: pass `rng=` to `Layer.apply`.")
        self._count += 1
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), self._count)

    def get_config(self) -> dict:
        return {"seed": self.seed}


__all__ = ["LossCollector", "SeedGenerator", "StatelessScope", "Variable", "current_collector",
           "current_scope"]
