"""The Layer base class, symbolic tensors and graph nodes.

A layer follows Keras 3's contract:

* ``build(input_shape)`` creates weights with ``self.add_weight(shape=, initializer=,
  trainable=, name=)`` (plus optional logical ``axes`` for the planner);
* ``call(self, inputs, training=None, mask=None)`` computes with them (``self.kernel``
  is a :class:`~hybridnet.variables.Variable` and behaves like an array).

Underneath it stays pure: :meth:`Layer.apply` runs ``call`` inside a
:class:`~hybridnet.variables.StatelessScope` that binds every weight to the value a
compiled step passes in and collects assignments (BatchNormalization's moving
statistics), as Keras 3's JAX backend does. Layers know nothing of devices or meshes:
the planner decides placement from the weights' shapes and logical axes.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import initializers, utils
from hybridnet.variables import (LossCollector, SeedGenerator, StatelessScope, Variable,
                                 current_collector, current_scope)

Shape = tuple  # tuple of int | None, batch dimension first
WeightSpec = Variable  # a declared weight: shape, dtype, initializer, trainable, axes


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


_NOT_TRACKED = frozenset({"_inbound_nodes", "_tracked", "_own_variables", "_seed_generators"})


def _contains_layer(value) -> bool:
    if isinstance(value, Layer):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_layer(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_layer(v) for v in value.values())
    return False


def _abstract(tree, batch: int):
    """KerasTensors -> ShapeDtypeStructs with every unknown dimension set to ``batch``."""
    return jax.tree_util.tree_map(
        lambda t: jax.ShapeDtypeStruct(tuple(batch if d is None else d for d in t.shape),
                                       t.dtype) if isinstance(t, KerasTensor) else t,
        tree, is_leaf=lambda t: isinstance(t, KerasTensor))


class Layer:
    """Base class of every layer, with Keras 3's contract.

    Subclasses create weights in ``build(input_shape)`` with :meth:`add_weight` and
    compute in ``call(self, inputs, training=None, mask=None)``; ``compute_output_shape``
    is derived by tracing ``call`` unless a subclass defines it. Layers assigned as
    attributes (``self.dense = Dense(8)``) are tracked: their weights are part of this
    layer's. Random draws use ``hybridnet.random`` with a
    :class:`~hybridnet.variables.SeedGenerator` made in ``__init__``.

    Example:
        >>> class Scale(Layer):
        ...     def build(self, input_shape):
        ...         self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones",
        ...                                      name="scale")
        ...     def call(self, inputs):
        ...         return inputs * self.scale
    """

    supports_masking = False
    _call_kwargs: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.call).parameters
        names = list(params)
        if len(names) > 1 and names[1] == "weights" and cls.__module__.startswith("hybridnet"):
            raise TypeError(f"{cls.__name__}.call takes (self, inputs, ...), as in Keras.")
        cls._call_kwargs = frozenset(k for k in ("training", "mask") if k in params)
        cls._accepts_any_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())

    def __init__(self, *, name: str | None = None, dtype="float32", trainable: bool = True,
                 input_shape=None, batch_size: int | None = None, input_dim: int | None = None,
                 batch_input_shape=None, autocast: bool = True, parallel: Any = "data",
                 stage: int | None = None, activity_regularizer=None, **kwargs):
        object.__setattr__(self, "_tracked", {})
        object.__setattr__(self, "_own_variables", {})
        object.__setattr__(self, "_seed_generators", [])
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments "
                            f"{sorted(kwargs)}. Received: {kwargs!r}")
        self.name = name or utils.unique_name(utils.snake_case(type(self).__name__))
        if isinstance(dtype, dict):  # a Keras DTypePolicy config
            dtype = dtype.get("config", {}).get("name", "float32")
        self.dtype = jnp.dtype(getattr(dtype, "name", dtype) or "float32")
        self._trainable = bool(trainable)
        if activity_regularizer is not None:
            from hybridnet import regularizers
            activity_regularizer = regularizers.get(activity_regularizer)
        self.activity_regularizer = activity_regularizer
        self.parallel = parallel
        if stage is not None and (not isinstance(stage, int) or stage < 0):
            raise ValueError(f"Layer '{self.name}': `stage` must be a non-negative int. "
                             f"Received: stage={stage!r}")
        self.stage = stage
        if batch_input_shape is not None and input_shape is None:
            batch_size, input_shape = batch_input_shape[0], batch_input_shape[1:]
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        self._input_shape_arg = tuple(input_shape) if input_shape is not None else None
        self._batch_size_arg = batch_size
        self.built = False
        self.input_shape: Shape | list | None = None
        self._inbound_nodes: list[Node] = []
        self._seed = utils.next_seed()  # this layer's initialisers draw from it
        # Weak callback a model leaves so a read before any training creates the weights
        # where its plan places them (sharded), instead of whole on one device.
        self._create_values = None

    def __setattr__(self, name, value):
        tracked = self.__dict__.get("_tracked")
        if tracked is not None and name not in _NOT_TRACKED:
            if _contains_layer(value):
                tracked[name] = value
            else:
                tracked.pop(name, None)
            if isinstance(value, SeedGenerator):
                self._seed_generators.append(value)
        object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- build
    def add_weight(self, shape=None, initializer=None, dtype=None, trainable: bool = True,
                   autocast: bool = True, regularizer=None, constraint=None,
                   aggregation: str = "none", overwrite_with_gradient: bool = False,
                   name: str | None = None, *, axes=None) -> Variable:
        """Creates a weight and returns it, as ``keras.layers.Layer.add_weight``.

        ``axes`` (optional) names a logical axis per dimension (``("embed", "mlp")``); the
        planner shards weights by them (e.g. ``ModelParallel`` splits ``"mlp"``).
        """
        owner = f"Layer '{self.name}'"
        if isinstance(shape, str):
            raise TypeError(f"{owner}: add_weight takes (shape, initializer, dtype, trainable, "
                            f"..., name=), as in Keras. Received: shape={shape!r}")
        if constraint is not None:
            raise NotImplementedError(f"{owner}: add_weight does not support `constraint` "
                                      f"yet. Received: constraint={constraint!r}")
        shape = () if shape is None else tuple(int(d) for d in shape)
        dtype = jnp.dtype(getattr(dtype, "name", dtype) or self.dtype)
        if initializer is None:
            initializer = "glorot_uniform" if jnp.issubdtype(dtype, jnp.floating) else "zeros"
        if name is None:
            name = "variable"
        base, i = name, 1
        while name in self._own_variables:
            name, i = f"{base}_{i}", i + 1
        var = Variable(shape, dtype, initializers.get(initializer, owner=owner), name=name,
                       trainable=trainable, axes=axes,
                       seed=(self._seed, len(self._own_variables)))
        var.path = f"{self.name}/{name}"
        var._materialize = self._materialize_values
        if regularizer is None:  # a layer's `kernel_regularizer=` and the like
            regularizer = self.__dict__.get(f"{name}_regularizer")
        if regularizer is not None:
            from hybridnet import regularizers
            var.regularizer = regularizers.get(regularizer)
        self._own_variables[name] = var
        return var

    def build(self, input_shape) -> None:
        """Creates the layer's weights for ``input_shape`` (batch dimension first)."""

    def _maybe_build(self, input_shape, arg_shapes=None) -> None:
        if self.built:
            return
        self.input_shape = input_shape
        params = [p for p in inspect.signature(self.build).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if arg_shapes is not None and len(params) > 1 and len(arg_shapes) > 1:
            self.build(*arg_shapes[:len(params)])
        else:
            self.build(input_shape)
        self.built = True

    # -------------------------------------------------------------- compute
    def call(self, inputs, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.call")

    def _call_arguments(self, kwargs: dict, training, mask) -> dict:
        if "training" in self._call_kwargs and kwargs.get("training") is None:
            kwargs["training"] = bool(training)
        elif "training" not in self._call_kwargs and not self._accepts_any_kwargs:
            kwargs.pop("training", None)
        if mask is not None and ("mask" in self._call_kwargs or self._accepts_any_kwargs):
            kwargs["mask"] = mask
        return kwargs

    def apply(self, weights: dict, *args, training: bool = False, rng=None, mask=None,
              **kwargs):
        """Pure forward pass: ``call`` with every weight bound to ``weights[path]``.

        Returns ``(outputs, updates)``; ``updates`` maps weight paths to the values the
        call assigned (e.g. BatchNormalization's moving statistics in training).
        """
        if not self.built:
            self._build_from_arrays(args, kwargs)
        variables = self._variables_by_path()
        scope = StatelessScope(rng=rng, training=training)
        for path, var in variables.items():
            if path in weights:
                scope.bind(var, weights[path])
        with scope:
            out = self.call(*args, **self._call_arguments(dict(kwargs), training, mask))
            self._add_regularization_losses(variables)
            self._add_activity_loss(out)
        updates = {}
        for path, var in variables.items():
            new = scope.new_value(var)
            if new is not None:
                updates[path] = new
        return out, updates

    # ----------------------------------------------------------------- losses
    def add_loss(self, loss) -> None:
        """Adds a scalar loss (summed with the compiled loss), as Keras's ``add_loss``."""
        collector = current_collector()
        if collector is not None:
            collector.losses.append(loss)
        elif current_scope() is not None and not current_scope().abstract:
            raise NotImplementedError(f"Layer '{self.name}': add_loss is not supported by "
                                      f"this runner (pipeline stages).")

    @property
    def losses(self) -> list:
        """The losses added during the layer's last eager call (regularization included)."""
        return list(self.__dict__.get("_eager_losses", []))

    def _add_activity_loss(self, outputs) -> None:
        if self.activity_regularizer is None or current_collector() is None:
            return
        for out in jax.tree_util.tree_leaves(outputs):
            if hasattr(out, "shape"):
                self.add_loss(self.activity_regularizer(out))

    def _add_regularization_losses(self, variables: dict) -> None:
        collector = current_collector()
        if collector is None:
            return
        for var in variables.values():
            if var.regularizer is not None and id(var) not in collector.regularized:
                collector.regularized.add(id(var))
                collector.losses.append(var.regularizer(var.value))

    def compute_output_shape(self, *input_shapes):
        """Output shape(s), found by tracing ``call`` (unknown dimensions stay None)."""
        args = [KerasTensor(s, self.dtype) if not isinstance(s, list) else
                [KerasTensor(t, self.dtype) for t in s] for s in input_shapes]
        return jax.tree_util.tree_map(lambda t: t.shape, self._trace_outputs(args, {}),
                                      is_leaf=lambda t: isinstance(t, KerasTensor))

    def _trace_outputs(self, args, kwargs):
        """Output KerasTensors (without nodes) of calling on symbolic ``args``, found by
        tracing ``call`` twice with different sizes for the unknown dimensions."""
        is_leaf = lambda t: isinstance(t, KerasTensor)  # noqa: E731
        leaves, treedef = jax.tree_util.tree_flatten((list(args), dict(kwargs)), is_leaf=is_leaf)
        symbolic = [i for i, t in enumerate(leaves) if isinstance(t, KerasTensor)]

        def run(tensors):  # only tensors are traced; Python values stay static
            filled = list(leaves)
            for i, t in zip(symbolic, tensors):
                filled[i] = t
            a, k = jax.tree_util.tree_unflatten(treedef, filled)
            with StatelessScope(abstract=True, training=False):
                return self.call(*a, **self._call_arguments(dict(k), False, None))
        outs = [jax.eval_shape(run, _abstract([leaves[i] for i in symbolic], b))
                for b in (83, 89)]
        return jax.tree_util.tree_map(
            lambda s1, s2: KerasTensor(tuple(d1 if d1 == d2 else None
                                             for d1, d2 in zip(s1.shape, s2.shape)), s1.dtype),
            outs[0], outs[1])

    def compute_output_dtype(self, input_dtype):
        return self.dtype

    def compute_mask(self, inputs, mask):
        """The mask of the outputs; by default passed through if the layer supports masking."""
        return mask if self.supports_masking else None

    # -------------------------------------------------------------- symbolic
    def __call__(self, *args, **kwargs):
        if _is_symbolic((args, kwargs)):
            return self._call_symbolic(args, kwargs)
        scope = current_scope()
        if scope is not None:
            return self._call_in_scope(scope, args, kwargs)
        return self._call_eager(*args, **kwargs)

    def _call_symbolic(self, args, kwargs):
        inputs = args[0]
        input_shape = shape_of(inputs)
        self._check_input(input_shape)
        self._maybe_build(input_shape, [shape_of(a) for a in args
                                        if _is_symbolic(a)])
        node = Node(self, args, kwargs, None)
        counter = iter(range(1 << 30))
        if type(self).compute_output_shape is not Layer.compute_output_shape:
            first = _symbolic_leaves(inputs)[0]
            dtype = self.compute_output_dtype(first.dtype)
            shapes = self.compute_output_shape(input_shape)

            def make(shape_tree):
                if isinstance(shape_tree, list):
                    return [make(s) for s in shape_tree]
                return KerasTensor(shape_tree, dtype, node=node, index=next(counter))
            node.outputs = make(shapes)
        else:
            def attach(t):
                return KerasTensor(t.shape, t.dtype, node=node, index=next(counter))
            node.outputs = jax.tree_util.tree_map(
                attach, self._trace_outputs(list(args), dict(kwargs)),
                is_leaf=lambda t: isinstance(t, KerasTensor))
            if isinstance(node.outputs, tuple):
                node.outputs = list(node.outputs)
        self._inbound_nodes.append(node)
        return node.outputs

    def _check_input(self, input_shape) -> None:
        """Hook for layers to validate input rank/shape with a clear message."""

    def _node_at(self, index: int, what: str) -> "Node":
        if not self._inbound_nodes:
            raise AttributeError(f"Layer '{self.name}' has never been called and thus has no "
                                 f"defined {what}.")
        if not -len(self._inbound_nodes) <= index < len(self._inbound_nodes):
            raise ValueError(f"Layer '{self.name}': asked for node {index} but the layer has "
                             f"{len(self._inbound_nodes)} inbound nodes.")
        return self._inbound_nodes[index]

    @property
    def input(self):
        """The symbolic input of the layer's first call (Keras: node 0)."""
        return self._node_at(0, "input").args[0]

    @property
    def output(self):
        """The symbolic output of the layer's first call (for feature extraction)."""
        return self._node_at(0, "output").outputs

    def get_input_at(self, node_index: int):
        return self._node_at(node_index, "input").args[0]

    def get_output_at(self, node_index: int):
        return self._node_at(node_index, "output").outputs

    @staticmethod
    def _shape_tree(tree):
        return jax.tree_util.tree_map(lambda a: (None,) + tuple(a.shape[1:]), tree,
                                      is_leaf=lambda a: hasattr(a, "shape"))

    def _call_in_scope(self, scope: StatelessScope, args, kwargs):
        """Called from another layer's ``call`` while a step (or a shape trace) runs: the
        enclosing scope binds this layer's weights."""
        if not self.built:
            shape = self._shape_tree(args[0])
            self._check_input(shape)
            self._maybe_build(shape, [self._shape_tree(a) for a in args])
        mask = kwargs.pop("mask", None)
        training = kwargs.pop("training", None)
        if training is None:
            training = scope.training
        out = self.call(*args, **self._call_arguments(kwargs, training, mask))
        self._add_activity_loss(out)
        return out

    def _call_eager(self, *args, training: bool | None = None, **kwargs):
        """Calls the layer on arrays, creating its own weights on first use. In training
        mode random draws come from the global seed sequence and assignments (moving
        statistics) update the weights, as in Keras."""
        if self.built:
            self._check_input(self._shape_tree(args[0]))
        else:
            self._build_from_arrays(args, kwargs)
        values = self._weight_values()
        mask = kwargs.pop("mask", None)
        with LossCollector() as collector:
            out, updates = self.apply(values, *args, training=bool(training),
                                      rng=utils.next_rng_key() if training else None,
                                      mask=mask, **kwargs)
        self._eager_losses = list(collector.losses)
        variables = self._variables_by_path()
        for path, value in updates.items():
            variables[path].assign(value)
        return out

    def _build_from_arrays(self, args, kwargs):
        shape = self._shape_tree(args[0])
        self._check_input(shape)
        self._maybe_build(shape, [self._shape_tree(a) for a in args])
        if not self._own_variables and self._tracked:
            self._build_by_tracing(args, kwargs)

    def _build_by_tracing(self, args, kwargs):
        """Builds tracked sublayers that are created in ``__init__`` and built on first call."""
        abstract = jax.tree_util.tree_map(
            lambda a: KerasTensor(self._shape_tree(a), a.dtype)
            if hasattr(a, "shape") and hasattr(a, "dtype") else a, (args, kwargs),
            is_leaf=lambda a: hasattr(a, "shape") and hasattr(a, "dtype"))
        self._trace_outputs(list(abstract[0]), dict(abstract[1]))

    # --------------------------------------------------------------- weights
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for sub in self._sublayers().values():
            sub.trainable = value

    def _sublayers(self) -> dict[str, "Layer"]:
        """Tracked sublayers by weight-path prefix (attribute name, list index)."""
        out: dict[str, Layer] = {}

        def walk(prefix, value):
            if isinstance(value, Layer):
                out.setdefault(prefix, value)
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(f"{prefix}/{i}", v)
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}/{k}", v)
        for attr, value in self._tracked.items():
            walk(attr, value)
        return {self._sublayer_prefix(k): v for k, v in out.items()}

    def _sublayer_prefix(self, attr_path: str) -> str:
        return attr_path + "/"

    def _variables_by_path(self) -> dict[str, Variable]:
        """Every weight of the layer and its sublayers, keyed by path within the layer."""
        out = dict(self._own_variables)
        seen = {id(v) for v in out.values()}
        for prefix, sub in self._sublayers().items():
            for path, var in sub._variables_by_path().items():
                if id(var) not in seen:
                    seen.add(id(var))
                    out[prefix + path] = var
        return out

    def _trainable_map(self) -> dict[str, bool]:
        """Path -> whether the optimizer updates the weight (its layers are trainable)."""
        out = {n: v.trainable and self.trainable for n, v in self._own_variables.items()}
        for prefix, sub in self._sublayers().items():
            for path, flag in sub._trainable_map().items():
                out.setdefault(prefix + path, flag and self.trainable)
        return out

    @property
    def uses_rng(self) -> bool:
        return bool(self._seed_generators) or any(s.uses_rng for s in self._sublayers().values())

    @property
    def weight_specs(self) -> dict[str, Variable]:
        return self._variables_by_path()

    @property
    def weights(self) -> list[Variable]:
        return list(self._variables_by_path().values())

    variables = weights

    @property
    def trainable_weights(self) -> list[Variable]:
        flags = self._trainable_map()
        return [v for p, v in self._variables_by_path().items() if flags[p]]

    trainable_variables = trainable_weights

    @property
    def non_trainable_weights(self) -> list[Variable]:
        flags = self._trainable_map()
        return [v for p, v in self._variables_by_path().items() if not flags[p]]

    non_trainable_variables = non_trainable_weights

    def count_params(self) -> int:
        return int(sum(v.size for v in self._variables_by_path().values()))

    @property
    def _values(self) -> dict | None:
        """Path -> array for every weight, or None while any has no value yet."""
        variables = self._variables_by_path()
        if any(v._value is None for v in variables.values()):
            return None
        return {p: v._value for p, v in variables.items()}

    @_values.setter
    def _values(self, values: dict | None) -> None:
        variables = self._variables_by_path()
        if values is None:
            for v in variables.values():
                v._value = None
            return
        for path, value in values.items():
            variables[path]._value = value

    def _materialize_values(self) -> None:
        self._weight_values()

    def get_weights(self) -> list[np.ndarray]:
        """The weight values as numpy arrays, in creation order."""
        values = self._weight_values()
        return [np.asarray(values[n]) for n in self._variables_by_path()]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        variables = self._variables_by_path()
        if len(weights) != len(variables):
            raise ValueError(f"Layer '{self.name}': set_weights expected {len(variables)} "
                             f"arrays. Received: {len(weights)} arrays")
        for (path, var), w in zip(variables.items(), weights):
            if tuple(np.shape(w)) != var.shape:
                raise ValueError(f"Layer '{self.name}': weight '{path}' expected shape "
                                 f"{var.shape}. Received: shape={tuple(np.shape(w))}")
        if self._create_values is None and any(v._value is None for v in variables.values()):
            # Not placed by any model yet: nothing to match, no initializer to run.
            self._values = {p: jnp.asarray(w, v.dtype)
                            for (p, v), w in zip(variables.items(), weights)}
            return
        current = self._weight_values()
        # Same placement as the values they replace (sharded weights stay sharded).
        self._values = {p: jax.device_put(jnp.asarray(w, v.dtype),
                                          getattr(current[p], "sharding", None))
                        for (p, v), w in zip(variables.items(), weights)}

    def _weight_values(self) -> dict:
        """The weight arrays, created on first use (by the model that placed the layer,
        if any, else here from each weight's own seed)."""
        if not self.built:
            raise ValueError(f"Layer '{self.name}' has no weights yet: build it or call it "
                             f"first.")
        variables = self._variables_by_path()
        if any(v._value is None for v in variables.values()):
            create = self._create_values() if self._create_values is not None else None
            if create is not None:
                create()
            for v in variables.values():
                if v._value is None:
                    v._value = v.initial_value()
        return {p: v._value for p, v in variables.items()}

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self.parallel != "data":
            config["parallel"] = self.parallel if isinstance(self.parallel, str) else {
                "shard": {"mode": self.parallel.mode, "axis": self.parallel.axis}}
        if self.stage is not None:
            config["stage"] = self.stage
        if self.activity_regularizer is not None:
            from hybridnet import regularizers
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
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
    """Fresh arrays for ``layer``'s weights (path -> array) drawn from ``key`` (tests)."""
    return {path: var.initializer(jax.random.fold_in(key, i), var.shape, var.dtype)
            for i, (path, var) in enumerate(layer._variables_by_path().items())}


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
        self._output = KerasTensor((batch_size,) + self.shape, dtype,
                                   node=Node(self, (), {}, None), name=self.name)
        self._output.node.outputs = self._output

    @property
    def output(self):
        return self._output

    @property
    def input(self):
        return self._output

    def call(self, inputs):
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
