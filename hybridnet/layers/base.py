"""The Layer base class, symbolic tensors and graph nodes.

A layer is configuration plus two pure pieces:

* ``build(input_shape)`` declares weights with ``add_weight`` (shapes, initialisers,
  logical axes) and computes nothing on devices;
* ``call(weights, inputs, ...)`` maps a dict of weight arrays and inputs to outputs.

Layers know nothing of devices or meshes: the planner decides placement from
the declared shapes and logical axes.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import initializers, utils

Shape = tuple  # tuple of int | None, batch dimension first


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A declared weight: what ``build`` promises, before any array exists."""
    name: str
    shape: tuple[int, ...]
    dtype: Any
    initializer: Callable
    trainable: bool = True
    axes: tuple[str | None, ...] | None = None  # logical axis names, e.g. ("embed", "mlp")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * jnp.dtype(self.dtype).itemsize


class KerasTensor:
    """A symbolic tensor: a shape (batch first, ``None`` where unknown) and a dtype.

    Calling a layer on KerasTensors records a :class:`Node` in the graph instead
    of computing anything.
    """

    def __init__(self, shape, dtype="float32", *, node: "Node | None" = None, index: int = 0,
                 name: str | None = None):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.node = node
        self.index = index
        self.name = name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self):
        return (f"<KerasTensor shape={utils.format_shape(self.shape)}, dtype={self.dtype.name}"
                + (f", name={self.name}" if self.name else "") + ">")


def _is_symbolic(tree) -> bool:
    return any(isinstance(t, KerasTensor) for t in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda t: isinstance(t, KerasTensor)))


def _symbolic_leaves(tree) -> list[KerasTensor]:
    return [t for t in jax.tree_util.tree_leaves(tree, is_leaf=lambda t: isinstance(t, KerasTensor))
            if isinstance(t, KerasTensor)]


@dataclasses.dataclass(eq=False)
class Node:
    """One call of a layer in a graph: symbolic arguments in, symbolic outputs out."""
    layer: "Layer"
    args: tuple
    kwargs: dict
    outputs: Any  # a KerasTensor or a (nested) list of them

    @property
    def input_tensors(self) -> list[KerasTensor]:
        return _symbolic_leaves((self.args, self.kwargs))

    @property
    def output_tensors(self) -> list[KerasTensor]:
        return _symbolic_leaves(self.outputs)


def shape_of(tree):
    """The shape(s) of a tensor or nested list of tensors, as tuples."""
    if isinstance(tree, (list, tuple)) and not (tree and isinstance(tree[0], (int, type(None)))):
        return [shape_of(t) for t in tree]
    return tuple(tree.shape)


class Layer:
    """Base class of every layer.

    Subclasses implement ``build(input_shape)`` (declaring weights with
    :meth:`add_weight`), ``call(weights, inputs, ...)`` and, where it cannot be
    derived by tracing, ``compute_output_shape(input_shape)``. ``call`` may take
    keyword-only ``training``, ``rng`` and ``mask``; they are passed only if named.

    Example:
        >>> class Scale(Layer):
        ...     def build(self, input_shape):
        ...         self.add_weight("scale", (input_shape[-1],), "ones")
        ...     def call(self, weights, x):
        ...         return x * weights["scale"]
    """

    supports_masking = False
    stateful = False  # True if ``apply`` returns updates to non-trainable weights
    _call_kwargs: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.call).parameters
        cls._call_kwargs = frozenset(k for k in ("training", "rng", "mask") if k in params)

    def __init__(self, *, name: str | None = None, dtype="float32", trainable: bool = True,
                 input_shape=None, batch_size: int | None = None, input_dim: int | None = None,
                 parallel: Any = "data", stage: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments "
                            f"{sorted(kwargs)}. Received: {kwargs!r}")
        self.name = name or utils.unique_name(utils.snake_case(type(self).__name__))
        self.dtype = jnp.dtype(dtype or "float32")
        self.trainable = trainable
        self.parallel = parallel
        if stage is not None and (not isinstance(stage, int) or stage < 0):
            raise ValueError(f"Layer '{self.name}': `stage` must be a non-negative int. "
                             f"Received: stage={stage!r}")
        self.stage = stage
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        self._input_shape_arg = tuple(input_shape) if input_shape is not None else None
        self._batch_size_arg = batch_size
        self.built = False
        self.input_shape: Shape | list | None = None
        self.weight_specs: dict[str, WeightSpec] = {}
        self._inbound_nodes: list[Node] = []
        self._seed = utils.next_seed()  # this layer's initialisers draw from it
        # The weight values (weight name -> array), shared by every model using the layer.
        self._values: dict | None = None
        # Weak callback a model leaves so a read before any training creates the weights
        # where its plan places them (sharded), instead of whole on one device.
        self._create_values = None

    # ----------------------------------------------------------------- build
    def add_weight(self, name: str, shape, initializer="glorot_uniform", *, trainable: bool = True,
                   dtype=None, axes=None) -> WeightSpec:
        """Declares a weight; no array is created here."""
        shape = tuple(int(d) for d in shape)
        if axes is not None and len(axes) != len(shape):
            raise ValueError(f"Layer '{self.name}': weight '{name}' has {len(shape)} dims but "
                             f"{len(axes)} axis names. Received: axes={axes!r}")
        spec = WeightSpec(name, shape, jnp.dtype(dtype or self.dtype),
                          initializers.get(initializer, owner=f"Layer '{self.name}'"),
                          trainable=trainable,
                          axes=tuple(axes) if axes is not None else None)
        self.weight_specs[name] = spec
        return spec

    def build(self, input_shape) -> None:
        """Declares the layer's weights for ``input_shape`` (batch dimension first)."""

    def _maybe_build(self, input_shape) -> None:
        if not self.built:
            self.input_shape = input_shape
            self.build(input_shape)
            self.built = True

    # -------------------------------------------------------------- compute
    def call(self, weights, inputs, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.call")

    def apply(self, weights: dict, inputs, *, training: bool = False, rng=None, mask=None,
              **kwargs):
        """Pure forward pass. Returns ``(outputs, updates)`` where ``updates`` holds
        new values of non-trainable weights (empty for stateless layers)."""
        if "training" in self._call_kwargs:
            kwargs["training"] = training
        if "rng" in self._call_kwargs:
            kwargs["rng"] = rng
        if "mask" in self._call_kwargs and mask is not None:
            kwargs["mask"] = mask
        out = self.call(weights, inputs, **kwargs)
        if self.stateful:
            return out
        return out, {}

    def compute_output_shape(self, input_shape):
        """Output shape(s), found by tracing ``call`` with abstract arrays."""
        def concrete(shape):
            if isinstance(shape, list):
                return [concrete(s) for s in shape]
            if any(d is None for d in shape[1:]):
                raise NotImplementedError(
                    f"{type(self).__name__} must implement compute_output_shape for "
                    f"inputs with unknown non-batch dimensions; received {shape}")
            return jax.ShapeDtypeStruct((1,) + tuple(shape[1:]), self.dtype)
        weights = {n: jax.ShapeDtypeStruct(s.shape, s.dtype) for n, s in self.weight_specs.items()}
        out = jax.eval_shape(lambda w, x: self.apply(w, x)[0], weights, concrete(input_shape))
        return jax.tree_util.tree_map(lambda s: (None,) + tuple(s.shape[1:]), out)

    def compute_output_dtype(self, input_dtype):
        return self.dtype

    def compute_mask(self, inputs, mask):
        """The mask of the outputs; by default passed through if the layer supports masking."""
        return mask if self.supports_masking else None

    # -------------------------------------------------------------- symbolic
    def __call__(self, *args, **kwargs):
        if not _is_symbolic((args, kwargs)):
            return self._call_eager(*args, **kwargs)
        inputs = args[0]
        input_shape = shape_of(inputs)
        self._check_input(input_shape)
        self._maybe_build(input_shape)
        out_shape = self.compute_output_shape(input_shape)
        node = Node(self, args, kwargs, None)
        first = _symbolic_leaves(inputs)[0]
        dtype = self.compute_output_dtype(first.dtype)

        counter = iter(range(1 << 30))

        def make(shape_tree):
            if isinstance(shape_tree, list):
                return [make(s) for s in shape_tree]
            return KerasTensor(shape_tree, dtype, node=node, index=next(counter))
        node.outputs = make(out_shape)
        self._inbound_nodes.append(node)
        return node.outputs

    def _check_input(self, input_shape) -> None:
        """Hook for layers to validate input rank/shape with a clear message."""

    def _call_eager(self, inputs, training: bool = False, **kwargs):
        """Calls the layer on arrays, creating its own weights on first use. In training
        mode a stochastic layer draws a fresh key from the global seed sequence (pass
        ``rng=`` to choose it)."""
        x_shape = jax.tree_util.tree_map(lambda a: (None,) + tuple(a.shape[1:]), inputs,
                                         is_leaf=lambda a: hasattr(a, "shape"))
        self._check_input(x_shape)
        self._maybe_build(x_shape)
        if training and "rng" in self._call_kwargs and kwargs.get("rng") is None:
            kwargs["rng"] = utils.next_rng_key()
        out, _ = self.apply(self._weight_values(), inputs, training=training, **kwargs)
        return out

    # --------------------------------------------------------------- weights
    @property
    def weights(self) -> list[WeightSpec]:
        return list(self.weight_specs.values())

    @property
    def trainable_weights(self) -> list[WeightSpec]:
        return [s for s in self.weight_specs.values() if s.trainable and self.trainable]

    @property
    def non_trainable_weights(self) -> list[WeightSpec]:
        return [s for s in self.weight_specs.values() if not (s.trainable and self.trainable)]

    def count_params(self) -> int:
        return int(sum(np.prod(s.shape, dtype=np.int64) for s in self.weight_specs.values()))

    def get_weights(self) -> list[np.ndarray]:
        """The weight values as numpy arrays, in declaration order."""
        values = self._weight_values()
        return [np.asarray(values[n]) for n in self.weight_specs]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        specs = list(self.weight_specs.values())
        if len(weights) != len(specs):
            raise ValueError(f"Layer '{self.name}': set_weights expected {len(specs)} arrays. "
                             f"Received: {len(weights)} arrays")
        for spec, w in zip(specs, weights):
            if tuple(np.shape(w)) != spec.shape:
                raise ValueError(f"Layer '{self.name}': weight '{spec.name}' expected shape "
                                 f"{spec.shape}. Received: shape={tuple(np.shape(w))}")
        current = self._weight_values()
        # Same placement as the values they replace (sharded weights stay sharded).
        self._values = {s.name: jax.device_put(jnp.asarray(w, s.dtype),
                                               getattr(current[s.name], "sharding", None))
                        for s, w in zip(specs, weights)}

    def _weight_values(self) -> dict:
        """The weight arrays, created on first use (by the model that placed the layer,
        if any, else here from the layer's own seed)."""
        if self._values is None and self.weight_specs:
            create = self._create_values() if self._create_values is not None else None
            if create is not None:
                create()
            if self._values is None:
                self._values = init_weights(self, jax.random.PRNGKey(self._seed))
        if not self.built:
            raise ValueError(f"Layer '{self.name}' has no weights yet: build it or call it "
                             f"first.")
        return self._values if self._values is not None else {}

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self.parallel != "data":
            config["parallel"] = self.parallel if isinstance(self.parallel, str) else {
                "shard": {"mode": self.parallel.mode, "axis": self.parallel.axis}}
        if self.stage is not None:
            config["stage"] = self.stage
        return config

    @staticmethod
    def _parallel_from_config(value):
        if isinstance(value, dict) and "shard" in value:
            from hybridnet.strategies import Shard
            return Shard(**value["shard"])
        return value

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        config = dict(config)
        if "parallel" in config:
            config["parallel"] = Layer._parallel_from_config(config["parallel"])
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def init_weights(layer: Layer, key) -> dict:
    """Creates the arrays of ``layer``'s declared weights (for eager use and tests)."""
    out = {}
    for i, spec in enumerate(layer.weight_specs.values()):
        out[spec.name] = spec.initializer(jax.random.fold_in(key, i), spec.shape, spec.dtype)
    return out


class InputLayer(Layer):
    """The layer behind :func:`Input`; it has no weights."""

    def __init__(self, shape=None, *, batch_size=None, dtype="float32", name=None,
                 sparse=None, **kwargs):
        super().__init__(name=name or utils.unique_name("input_layer"), dtype=dtype, **kwargs)
        if shape is None:
            raise ValueError("Input: `shape` is required. Received: shape=None")
        self.shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        self.batch_size = batch_size
        self.built = True
        self.output = KerasTensor((batch_size,) + self.shape, dtype,
                                  node=Node(self, (), {}, None), name=self.name)
        self.output.node.outputs = self.output

    def call(self, weights, inputs):
        return inputs

    def get_config(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name,
                "batch_size": self.batch_size}


def Input(shape=None, batch_size=None, dtype="float32", name=None, **kwargs) -> KerasTensor:
    """A symbolic model input, as ``keras.Input``.

    Example:
        >>> x = Input(shape=(28, 28, 1))
    """
    return InputLayer(shape, batch_size=batch_size, dtype=dtype, name=name, **kwargs).output
