"""Weight regularizers with Keras's names: ``L1``, ``L2``, ``L1L2``, ``OrthogonalRegularizer``.

A regularizer maps a weight to a scalar loss; layers take them as ``kernel_regularizer=``
(and ``bias_regularizer=``, ``activity_regularizer=``), and the loss is added to the
compiled loss in training and evaluation, as in Keras.

Example:
    >>> layers.Dense(32, kernel_regularizer=regularizers.l2(1e-3))
"""
from __future__ import annotations

import jax.numpy as jnp

from hybridnet.saving import registry as _registry


class Regularizer:
    """Base class: ``__call__(x) -> scalar``, ``get_config()``, ``from_config()``."""

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x ** 2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        for name, value in (("l1", l1), ("l2", l2)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{type(self).__name__}: `{name}` must be a non-negative "
                                 f"number. Received: {name}={value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        out = jnp.zeros((), jnp.float32)
        if self.l1:
            out = out + self.l1 * jnp.sum(jnp.abs(x))
        if self.l2:
            out = out + self.l2 * jnp.sum(jnp.square(x))
        return out

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self) -> dict:
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self) -> dict:
        return {"l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Pushes the rows (``mode="rows"``) or columns of a 2D kernel towards orthogonality:
    ``factor * mean of |off-diagonal cosine similarities|``, as Keras."""

    def __init__(self, factor: float = 0.01, mode: str = "rows"):
        if mode not in ("rows", "columns"):
            raise ValueError(f"OrthogonalRegularizer: `mode` must be 'rows' or 'columns'. "
                             f"Received: mode={mode!r}")
        self.factor, self.mode = float(factor), mode

    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 2:
            raise ValueError(f"OrthogonalRegularizer expects a 2D kernel. Received: "
                             f"x.shape={x.shape}")
        if self.mode == "columns":
            x = x.T
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        size = x.shape[0]
        off = jnp.sum(jnp.abs((x @ x.T) * (1.0 - jnp.eye(size, dtype=x.dtype))))
        return self.factor * off / (size * (size - 1))

    def get_config(self) -> dict:
        return {"factor": self.factor, "mode": self.mode}


l1, l2, l1_l2, orthogonal_regularizer = L1, L2, L1L2, OrthogonalRegularizer
_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2,
            "orthogonal_regularizer": OrthogonalRegularizer}
_CLASSES = {c.__name__: c for c in (L1, L2, L1L2, OrthogonalRegularizer)}


def get(identifier):
    """A regularizer from a name, a Keras config dict, a Regularizer or a callable."""
    if identifier is None:
        return None
    if isinstance(identifier, Regularizer) or callable(identifier):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is not None:
            return cls()
    if isinstance(identifier, dict) and "class_name" in identifier:
        cls = _CLASSES.get(identifier["class_name"]) or _registry.find_class(
            identifier["class_name"], Regularizer)
        if cls is not None:
            return cls.from_config(dict(identifier.get("config", {})))
    raise ValueError(f"Unknown regularizer. Expected one of {sorted(_BY_NAME)}, a config "
                     f"dict or a callable. Received: {identifier!r}")


def serialize(regularizer):
    if regularizer is None:
        return None
    if isinstance(regularizer, Regularizer):
        return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}
    raise ValueError(f"Cannot serialize the regularizer {regularizer!r}: use a "
                     f"hybridnet.regularizers.Regularizer.")


__all__ = ["L1", "L1L2", "L2", "OrthogonalRegularizer", "Regularizer", "get", "l1", "l1_l2",
           "l2", "orthogonal_regularizer", "serialize"]
