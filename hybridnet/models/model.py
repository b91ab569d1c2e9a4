"""Model: a functional graph of layers with Keras' compile / fit / evaluate / predict.

Example:
    >>> inputs = Input(shape=(64,))
    >>> x = layers.Dense(128, activation="relu")(inputs)
    >>> model = Model(inputs, layers.Dense(10)(x))
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> history = model.fit(x_train, y_train, batch_size=32, epochs=5)
"""
from __future__ import annotations

import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import losses as losses_lib
from hybridnet import metrics as metrics_lib
from hybridnet import optimizers as optimizers_lib
from hybridnet import strategies as strategies_lib
from hybridnet import utils
from hybridnet.execution import Executor, TrainState, split_trainable
from hybridnet.layers.base import Input, InputLayer, Layer, _is_symbolic
from hybridnet.variables import current_scope
from hybridnet.distributed.arrays import fetch
from hybridnet.models.graph import Graph
from hybridnet.planner.cost import format_bytes
from hybridnet.training.compile_utils import LossContainer, MetricsContainer
from hybridnet.training.trainer import Trainer


class Model(Layer):
    """A model from symbolic ``inputs`` to ``outputs`` (each a tensor, list or dict), or a
    subclass with layers made in ``__init__`` and its own ``call``, as in Keras.

    A model is a layer: it can be called on symbolic tensors inside another model.

    Example:
        >>> class MLP(Model):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.hidden = layers.Dense(64, activation="relu")
        ...         self.out = layers.Dense(10)
        ...     def call(self, inputs):
        ...         return self.out(self.hidden(inputs))
    """

    def __init__(self, inputs=None, outputs=None, name: str | None = None,
                 trainable: bool = True, **kwargs):
        if name is None and type(self).call is Model.call:
            name = utils.unique_name("functional")
        Layer.__init__(self, name=name, trainable=trainable, **kwargs)
        self.stop_training = False
        self.optimizer = None
        self.compiled = False
        self.steps_per_execution = 1
        self._trainable = bool(trainable)
        self._strategy = None
        self._runner = None
        self._runner_mask = None      # the trainable mask the runner was built with
        self._compiled_mask = None    # captured by compile(): trainable changes wait for it
        self._tx = None
        self._state: TrainState | None = None
        self._saved_state = None        # a state kept across a runner reset (step, rng)
        self._restored_opt_state = None  # an optimizer state loaded before the runner
        self._applied_lr = None
        self._seed = utils.next_seed()
        self._shuffle_rng = None
        self._terminated_on_nan = False
        self.graph: Graph | None = None
        if inputs is not None or outputs is not None:
            self._init_graph(inputs, outputs)
            if not trainable:
                self.trainable = False

    # ------------------------------------------------------------------ graph
    def _init_graph(self, inputs, outputs):
        self._input_struct = inputs
        self._output_struct = outputs
        flat_in = list(inputs.values()) if isinstance(inputs, dict) else (
            list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
        flat_out = list(outputs.values()) if isinstance(outputs, dict) else (
            list(outputs) if isinstance(outputs, (list, tuple)) else [outputs])
        self.graph = Graph(flat_in, flat_out)
        self._reset_runner()
        self.input_names = (list(inputs) if isinstance(inputs, dict)
                            else [t.node.layer.name for t in flat_in])
        self.output_names = (list(outputs) if isinstance(outputs, dict)
                             else [t.node.layer.name for t in flat_out])
        if len(set(self.output_names)) < len(self.output_names):
            self.output_names = [f"output_{i + 1}" for i in range(len(flat_out))]

    @property
    def built(self) -> bool:
        return self.__dict__.get("graph") is not None

    @built.setter
    def built(self, value) -> None:
        """A model is built when its graph exists."""

    def _is_subclassed(self) -> bool:
        return type(self).call is not Model.call

    @property
    def layers(self):
        if self._is_subclassed():
            return list(self._sublayers().values())
        return self._graph_layers()

    def _graph_layers(self) -> list:
        return list(self.graph.layers) if self.graph else []

    @property
    def inputs(self):
        return self.graph.inputs

    @property
    def outputs(self):
        return self.graph.outputs

    @property
    def input(self):
        """The model's symbolic input(s), structured as given (Keras ``model.input``)."""
        self._ensure_built()
        return self._input_struct

    @property
    def output(self):
        """The model's symbolic output(s), structured as given."""
        self._ensure_built()
        return self._output_struct

    # ------------------------------------------------------------ as a layer
    def _variables_by_path(self) -> dict:
        if self._is_subclassed() or self.graph is None:
            return Layer._variables_by_path(self)
        return {f"{layer.name}/{path}": var for layer in self._graph_layers()
                for path, var in layer._variables_by_path().items()}

    def _trainable_map(self) -> dict:
        if self._is_subclassed() or self.graph is None:
            return Layer._trainable_map(self)
        return {f"{layer.name}/{path}": flag and self.trainable
                for layer in self._graph_layers() for path, flag in layer._trainable_map().items()}

    def _maybe_build(self, input_shape, arg_shapes=None) -> None:
        """A model's layers are built when its graph is traced."""

    def call(self, inputs, training=False, mask=None):
        """Runs the graph on arrays with the weights of the enclosing scope (a model used
        as a layer inside another model)."""
        if isinstance(inputs, dict):
            xs = [inputs[n] for n in self.input_names]
        elif isinstance(inputs, (list, tuple)):
            xs = list(inputs)
        else:
            xs = [inputs]
        weighted = self._weighted_layers()
        weights = {layer.name: {p: v.value for p, v in layer._variables_by_path().items()}
                   for layer in weighted}
        scope = current_scope()
        rng = scope.next_key() if scope is not None else None
        outputs, _, updates = self.graph.run(weights, xs, training=bool(training), rng=rng)
        for layer in weighted:
            variables = layer._variables_by_path()
            for path, value in updates.get(layer.name, {}).items():
                variables[path].assign(value)
        return self._structure_outputs(outputs)

    def build(self, input_shape=None) -> None:
        """Builds a subclassed model's graph for ``input_shape`` (batch dimension first, or
        a list of shapes for several inputs)."""
        if self.built or not self._is_subclassed():
            return
        if input_shape is None:
            raise ValueError(f"Model '{self.name}': build() needs an input_shape.")
        shapes = input_shape if isinstance(input_shape, list) and input_shape and isinstance(
            input_shape[0], (tuple, list)) else [input_shape]
        self._build_subclassed([Input(tuple(s)[1:]) for s in shapes])

    def _build_subclassed(self, inputs: list) -> None:
        struct = inputs[0] if len(inputs) == 1 else inputs
        outputs = Layer.__call__(self, struct)
        self._init_graph(struct, outputs)

    def get_layer(self, name: str | None = None, index: int | None = None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers + self._graph_layers():
            if layer.name == name:
                return layer
        raise ValueError(f"No layer named '{name}' in model '{self.name}'. "
                         f"Layers: {[la.name for la in self.layers]}")

    # ------------------------------------------------------------------ state
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Freezes (or unfreezes) every layer, as Keras; takes effect at the next compile."""
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    def _weighted_layers(self) -> list:
        return [layer for layer in self._graph_layers() if layer.weight_specs]

    def _weight_specs(self) -> dict:
        return {layer.name: dict(layer.weight_specs) for layer in self._weighted_layers()}

    def _trainable_mask(self) -> dict:
        return {layer.name: layer._trainable_map() for layer in self._weighted_layers()}

    def _reset_runner(self):
        """Forgets the runner (the graph, plan or compile arguments changed); weights stay
        on the layers, the optimizer state and step stay in the train state."""
        self._runner = None
        if self._state is not None and self._state.is_live():
            self._saved_state = self._state
        self._state = None

    def _get_runner(self):
        """The runner (SPMD or pipeline) for this model's plan, built on first use."""
        self._ensure_built()
        if self._runner is None:
            plan = self.make_plan(batch_size=getattr(self, "_planned_batch_size", None))
            loss = metrics = None
            if self.compiled:
                if not hasattr(self, "_compiled_loss"):
                    self._resolve_compile_args()
                loss, metrics = self._compiled_loss, self._compiled_metrics
            mask = self._trainable_mask()
            if self.compiled and self._compiled_mask is not None and \
                    self._compiled_mask.keys() == mask.keys() and self._compiled_mask != mask:
                raise RuntimeError(f"Model '{self.name}': a layer's `trainable` changed after "
                                   f"compile(); call compile() again for it to take effect.")
            self._runner_mask = mask
            kwargs = dict(optimizer=self._tx, loss=loss, metrics=metrics,
                          num_outputs=len(self.outputs))
            if len(plan.stages) > 1:
                from hybridnet.execution.pipeline import PipelineExecutor
                self._runner = PipelineExecutor(
                    self.graph, plan, mask,
                    global_clipnorm=getattr(self.optimizer, "global_clipnorm", None), **kwargs)
            else:
                self._runner = Executor(self.graph.run, plan, mask, **kwargs)
            create = weakref.WeakMethod(self._create_missing_weights)
            for layer in self._weighted_layers():
                if layer._values is None:
                    layer._create_values = create
        return self._runner

    def _create_missing_weights(self):
        """Creates the weights of layers that have none yet, inside jit, already placed
        (and sharded) as the Plan says; each layer from its own seed."""
        runner = self._get_runner()
        missing = [layer for layer in self._weighted_layers() if layer._values is None]
        if not missing:
            return

        def init(_):
            return {layer.name: {path: var.initial_value()
                                 for path, var in layer.weight_specs.items()}
                    for layer in missing}
        created = runner.init_variables(init, jax.random.PRNGKey(0))
        for layer in missing:
            layer._values = created[layer.name]
            layer._create_values = None

    def _placed_variables(self) -> dict:
        """Every layer's weights (layer -> weight -> array), placed as the Plan says."""
        runner = self._get_runner()
        self._create_missing_weights()
        layers = self._weighted_layers()
        variables = runner.place_variables({layer.name: layer._values for layer in layers})
        for layer in layers:
            values = variables[layer.name]
            if any(values[w] is not layer._values[w] for w in values):
                layer._values = values
        return variables

    def _current_state(self) -> TrainState:
        """The model's train state, with the weights the layers hold now (another model
        sharing a layer, ``set_weights`` or a callback may have changed them) and the
        learning rate the optimizer says."""
        runner = self._get_runner()
        if self.compiled and self._trainable_mask() != self._runner_mask:
            raise RuntimeError(f"Model '{self.name}': a layer's `trainable` changed after "
                               f"compile(); call compile() again for it to take effect.")
        params, state = split_trainable(self._placed_variables(), self._runner_mask)
        ts = self._state
        if ts is None:
            previous, self._saved_state = self._saved_state, None
            step = 0 if previous is None else int(fetch(previous.step))
            opt_state, self._restored_opt_state = self._restored_opt_state, None
            if self._tx is None:
                opt_state = None
            ts = runner.new_state(params, state, opt_state=opt_state, step=step,
                                  rng=jax.random.PRNGKey(self._seed))
            self._applied_lr = None
        elif not (_same(ts.params, params) and _same(ts.state, state)):
            ts = ts.replace(params=params, state=state)
        lr = getattr(self.optimizer, "learning_rate", None)
        if self._tx is not None and isinstance(lr, (int, float)) and lr != self._applied_lr:
            ts = runner.set_learning_rate(ts, float(lr))
            self._applied_lr = lr
        self._state = ts
        return ts

    def _commit_state(self, ts: TrainState) -> None:
        """Makes a complete, live state the model's, and its weights the layers'."""
        self._state = ts
        params, state = ts.params, ts.state
        for layer in self._weighted_layers():
            values = dict(params.get(layer.name, ()))
            values.update(state.get(layer.name, ()))
            layer._values = values

    @property
    def train_state(self) -> TrainState:
        """The current :class:`~hybridnet.execution.TrainState` (weights, optimizer
        state, metrics, step, RNG) as one pytree."""
        return self._current_state()

    @property
    def plan(self):
        """The placement plan the model runs under."""
        return self._get_runner().plan

    @property
    def variables(self) -> dict:
        """All weights as a pytree: layer name -> weight name -> array."""
        return self._placed_variables()

    def _layer_weights(self, layer_name: str) -> dict:
        return self._placed_variables()[layer_name]

    def _set_layer_weights(self, layer_name: str, values: dict):
        runner = self._get_runner()
        shardings = runner.weight_shardings().get(layer_name, {})
        layer = self.get_layer(layer_name)
        layer._values = {w: jax.device_put(v, shardings[w]) for w, v in values.items()}
        layer._create_values = None

    @property
    def iterations(self) -> int:
        """Training steps run so far (Keras' ``optimizer.iterations``)."""
        if self._state is None and self._saved_state is None:
            return 0
        return int(fetch(self._current_state().step))  # collective if on another process

    @property
    def _train_step_count(self) -> int:
        return self.iterations if self.built else 0

    @_train_step_count.setter
    def _train_step_count(self, value: int) -> None:
        ts = self._current_state()
        self._state = ts.replace(step=jax.device_put(jnp.asarray(value, jnp.int32),
                                                     ts.step.sharding))

    @property
    def weights(self):
        return [v for layer in self._graph_layers() for v in Layer.weights.fget(layer)]

    @property
    def trainable_weights(self):
        return [v for layer in self._graph_layers() for v in Layer.trainable_weights.fget(layer)]

    @property
    def non_trainable_weights(self):
        return [v for layer in self._graph_layers()
                for v in Layer.non_trainable_weights.fget(layer)]

    def get_weights(self) -> list[np.ndarray]:
        """All weight values as numpy arrays, layer by layer (Keras order)."""
        from hybridnet.distributed import fetch
        variables = self.variables
        return [fetch(variables[layer.name][w]) for layer in self._graph_layers()
                for w in layer.weight_specs]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        expected = sum(len(layer.weight_specs) for layer in self._graph_layers())
        if len(weights) != expected:
            raise ValueError(f"Model '{self.name}': set_weights expected {expected} arrays. "
                             f"Received: {len(weights)} arrays")
        offset = 0
        for layer in self._graph_layers():
            specs = list(layer.weight_specs.items())
            values = weights[offset:offset + len(specs)]
            offset += len(specs)
            for (path, spec), value in zip(specs, values):
                if tuple(np.shape(value)) != spec.shape:
                    raise ValueError(f"Layer '{layer.name}': weight '{path}' expected shape "
                                     f"{spec.shape}. Received: shape={tuple(np.shape(value))}")
            if specs:
                self._set_layer_weights(layer.name, {
                    p: jnp.asarray(v, s.dtype) for (p, s), v in zip(specs, values)})

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"Model '{self.name}' has not been built yet, so it has no "
                             f"weights to count. Build it first: call it on data, call "
                             f"`build(input_shape)` or start it with an `Input`.")
        return sum(Layer.count_params(layer) for layer in self._graph_layers())

    # ------------------------------------------------- optimizer state (for saving)
    def _optimizer_state_template(self):
        """The optimizer state's structure as ``jax.ShapeDtypeStruct`` leaves (whole model,
        keyed by layer and weight where a slot mirrors a parameter)."""
        self._get_runner()
        params, _ = split_trainable(self._placed_variables(), self._runner_mask)
        return jax.eval_shape(self._tx.init, params)

    def _optimizer_state_for_save(self):
        """The optimizer state pytree (whole model), or None before it exists."""
        if self._tx is None:
            return None
        return self._current_state().opt_state

    def _restore_optimizer_state(self, tree) -> None:
        """Installs an optimizer state with the template's structure (host arrays)."""
        ts = self._current_state()
        restored = self._runner.new_state(ts.params, ts.state, opt_state=tree, step=0,
                                          rng=ts.rng)
        self._state = ts.replace(opt_state=restored.opt_state)
        self._applied_lr = None

    def _shuffle_stream(self) -> np.random.Generator:
        """One shuffle stream across fit() calls, seeded by the model's seed."""
        if self._shuffle_rng is None:
            self._shuffle_rng = np.random.default_rng(self._seed)
        return self._shuffle_rng

    # ---------------------------------------------------------------- planning
    def layer_infos(self) -> list:
        """What the planner needs to know of each layer, in execution order (plain data)."""
        from hybridnet.planner.graph_info import LayerInfo, WeightInfo
        self._ensure_built()
        infos, seen = [], {}
        for node in self.graph.nodes:
            layer = node.layer
            if layer.name in seen:
                seen[layer.name].calls += 1
                continue
            outs = node.output_tensors
            trainable = layer._trainable_map()
            try:
                config = layer.get_config()
            except (ValueError, NotImplementedError):  # e.g. Lambda: code, not config
                config = {}
            info = LayerInfo(
                name=layer.name, kind=type(layer).__name__,
                weights={w: WeightInfo(s.shape, jnp.dtype(s.dtype).name, s.axes, trainable[w])
                         for w, s in layer.weight_specs.items()},
                input_shapes=[t.shape for t in node.input_tensors],
                output_shapes=[t.shape for t in outs], parallel=layer.parallel,
                stage=layer.stage, config=config,
                inbound=list(dict.fromkeys(t.node.layer.name for t in node.input_tensors)))
            seen[layer.name] = info
            infos.append(info)
        return infos

    def make_plan(self, strategy=None, devices=None, batch_size: int | None = None):
        """Plans this model without compiling or allocating anything.

        Example:
            >>> print(model.make_plan(hybridnet.strategies.Auto(), devices=64).summary())
        """
        from hybridnet.planner import make_plan
        strategy = strategy if strategy is not None else self._strategy_request()
        return make_plan(self.layer_infos(), strategy, devices, batch_size=batch_size)

    def _strategy_request(self):
        return self._strategy if self._strategy is not None else getattr(
            self, "_default_strategy", None)

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True, strategy=None):
        """Configures training, as ``keras.Model.compile``.

        Args:
            optimizer: a Keras name ("sgd", "adam", "adamw", "rmsprop", ...), a
                ``hybridnet.optimizers`` object or any ``optax.GradientTransformation``.
            loss: a Keras loss name, a Loss object or callable; a list or dict per output.
            metrics: metric names/objects; a list or dict per output.
            steps_per_execution: training steps run per device dispatch.
            strategy: a ``hybridnet.strategies`` object; default data parallel over all
                devices (of every process, after ``hybridnet.distributed.initialize()``).
        """
        if not isinstance(steps_per_execution, int) or steps_per_execution < 1:
            raise ValueError("compile: `steps_per_execution` must be a positive int. "
                             f"Received: steps_per_execution={steps_per_execution!r}")
        self.optimizer = optimizers_lib.get(optimizer)
        self._tx = self.optimizer.to_optax()
        self._loss_arg, self._metrics_arg = loss, metrics
        self._loss_weights_arg, self._weighted_metrics_arg = loss_weights, weighted_metrics
        self.steps_per_execution = steps_per_execution
        self._strategy = None if strategy is None else strategies_lib.get(strategy)
        self._reset_runner()
        self._restored_opt_state = None  # a new optimizer starts from a fresh state
        self._applied_lr = None
        self.compiled = True
        self._compiled_mask = self._trainable_mask() if self.built else None
        for attr in ("_compiled_loss", "_compiled_metrics"):
            self.__dict__.pop(attr, None)
        if self.built:
            self._resolve_compile_args()

    def _resolve_compile_args(self):
        names = self.output_names
        loss = self._loss_arg  # None: only the losses layers add (add_loss) are minimized
        losses = _per_output(loss, names, "loss")
        self._losses = [None if fn is None else losses_lib.get(fn) for fn in losses]
        weights = _per_output(self._loss_weights_arg, names, "loss_weights") if (
            self._loss_weights_arg is not None) else [1.0] * len(names)
        metrics = _per_output(self._metrics_arg, names, "metrics", nested=True) if (
            self._metrics_arg is not None) else [[] for _ in names]
        weighted = _per_output(self._weighted_metrics_arg, names, "weighted_metrics",
                               nested=True) if self._weighted_metrics_arg else [[] for _ in names]
        # As Keras 3: `metrics` ignore sample weights, `weighted_metrics` use them.
        per_output = [[metrics_lib.get(m, loss=losses[i]) for m in ms]
                      for i, ms in enumerate(metrics)]
        weighted_out = [[metrics_lib.get(m, loss=losses[i]) for m in ms]
                        for i, ms in enumerate(weighted)]
        self._compiled_loss = LossContainer(self._losses, weights, names)
        self._compiled_metrics = MetricsContainer(
            per_output, names, weighted_per_output=weighted_out,
            output_shapes=[t.shape for t in self.outputs])
        self.metrics_names = self._compiled_metrics.names

    def _assert_compiled(self, what: str):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}() on model "
                               f"'{self.name}'.")

    def _prepare(self, x_first):
        """Builds (Sequential) from the first inputs, resolves compile arguments and the
        runner."""
        if not self.built:
            self._build_from_data(x_first)
        if self.compiled and self._compiled_mask is None:
            self._compiled_mask = self._trainable_mask()
        if self.compiled and not hasattr(self, "_compiled_loss"):
            self._resolve_compile_args()
        return self._get_runner()

    def _build_from_data(self, x_first):
        if self._is_subclassed():
            self._build_subclassed([Input(tuple(a.shape[1:]), dtype=(
                "int32" if np.issubdtype(np.dtype(a.dtype), np.integer) else "float32"))
                for a in x_first])
            return
        raise ValueError(f"Model '{self.name}' is not built: it has no inputs.")

    def _ensure_built(self):
        if not self.built:
            raise ValueError(f"Model '{self.name}' has no inputs yet: pass an Input or call "
                             f"build(input_shape) first.")

    # --------------------------------------------------------------- data input
    def _check_inputs(self, xs: list):
        for tensor, array, name in zip(self.inputs, xs, self.input_names):
            expected = tensor.shape
            got = tuple(array.shape)
            if len(got) != len(expected) or any(
                    e is not None and e != g for e, g in zip(expected[1:], got[1:])):
                raise ValueError(
                    f"Input '{name}' of model '{self.name}' is incompatible: expected "
                    f"shape={utils.format_shape(expected)}. Received: x.shape={got}")

    def _to_input_list(self, x) -> list:
        if not self.built:
            if isinstance(x, dict):
                return _to_list(x, list(x), "x")
            n = len(x) if isinstance(x, (list, tuple)) and not hasattr(x, "shape") else 1
            return _to_list(x, [f"input_{i}" for i in range(n)], "x")
        return _to_list(x, self.input_names, "x")

    def _to_output_list(self, y, what: str) -> list:
        return _to_list(y, self.output_names, what)

    def _check_batch_size(self, batch_size, what, last_batch=None):
        """Refuses a batch the plan cannot run, before compiling; at fit, warns once of
        each way the plan differs from the request (annotations ignored, a batch that
        runs replicated, ...)."""
        from hybridnet.planner.feasibility import check_plan
        plan = self._get_runner().plan
        # Inference adapts to any batch (a batch that does not split runs replicated);
        # training refuses a configured batch size the plan cannot split.
        changes = list(check_plan(plan, batch_size, what=what,
                                  partial=what != "fit").raise_errors().changes)
        if last_batch:
            changes += check_plan(plan, last_batch, what=what, partial=True).changes
        if what != "fit":
            return
        said = self.__dict__.setdefault("_said_changes", set())
        for change in [f"fit: {c}" for c in plan.changes] + changes:
            if change not in said:
                said.add(change)
                warnings.warn(change, stacklevel=2)

    # ------------------------------------------------------------------- loops
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Trains the model, as ``keras.Model.fit``. Returns a ``History``.

        ``x`` may be arrays (a list or dict per input), Python lists, a generator or
        iterable of ``(x, y[, sample_weight])`` batches, or a ``hybridnet.data.PyDataset``.
        An interrupt (Ctrl-C, an exception in a callback or the data) leaves the model at
        its last completed step; ``fit`` can be called again to go on.
        """
        return Trainer(self).fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
            validation_split=validation_split, validation_data=validation_data,
            shuffle=shuffle, class_weight=class_weight, sample_weight=sample_weight,
            initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps, validation_batch_size=validation_batch_size,
            validation_freq=validation_freq)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Returns the loss (and metrics) on the given data, as ``keras.Model.evaluate``."""
        return Trainer(self).evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                      sample_weight=sample_weight, steps=steps,
                                      callbacks=callbacks, return_dict=return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Returns predictions as numpy arrays (one per output), as ``keras.Model.predict``."""
        if isinstance(x, tuple) and len(x) in (2, 3) and hasattr(x[0], "shape"):
            x = x[0]  # Keras accepts (x, y) here and ignores y
        return Trainer(self).predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                                     callbacks=callbacks)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One training step on one batch; returns that batch's loss (and metrics)."""
        return Trainer(self).train_on_batch(x, y, sample_weight=sample_weight,
                                            class_weight=class_weight,
                                            return_dict=return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        n = len(self._to_input_list(x)[0])
        return self.evaluate(x, y, batch_size=n, sample_weight=sample_weight, verbose=0,
                             return_dict=return_dict)

    def predict_on_batch(self, x):
        xs = self._to_input_list(x)
        return self.predict(xs, batch_size=len(xs[0]), verbose=0)

    def _structure_outputs(self, outputs: list):
        if isinstance(self._output_struct, dict):
            return dict(zip(self._output_struct, outputs))
        if isinstance(self._output_struct, (list, tuple)):
            return outputs
        return outputs[0]

    def __call__(self, *args, **kwargs):
        """On symbolic tensors, or inside another layer's call, the model is a layer; on
        arrays it runs eagerly with its placed weights (in training mode stochastic layers
        draw a fresh key from the global seed sequence)."""
        if _is_symbolic((args, kwargs)) or current_scope() is not None:
            return Layer.__call__(self, *args, **kwargs)
        return self._run_eager(*args, **kwargs)

    def _run_eager(self, x, training: bool = False, mask=None):
        xs = self._to_input_list(x)
        self._prepare(xs)
        outputs, _, _ = self.graph.run(self._placed_variables(), xs, training=training,
                                       rng=utils.next_rng_key() if training else None)
        return self._structure_outputs(outputs)

    # ------------------------------------------------------------ summary, config
    def summary(self, print_fn=None, line_length: int = 80):
        """Prints the layers, their output shapes and parameter counts; as Keras, a layer
        not built yet shows "?" and "0 (unbuilt)"."""
        print_fn = print_fn or print
        rows = []
        for layer in self.layers:
            nodes = layer._inbound_nodes
            if isinstance(layer, InputLayer):
                shape = layer.output.shape
            else:
                outs = nodes[0].outputs if nodes else None
                shape = [t.shape for t in outs] if isinstance(outs, list) else (
                    outs.shape if outs is not None else "?")
            shape_text = (", ".join(utils.format_shape(s) for s in shape)
                          if isinstance(shape, list) else
                          shape if isinstance(shape, str) else utils.format_shape(shape))
            kernel = getattr(layer, "kernel_choice", None)
            name = f"{layer.name} ({type(layer).__name__}{', ' + kernel if kernel else ''})"
            if not layer.built:
                rows.append((name, "?", "0 (unbuilt)"))
                continue
            rows.append((name, shape_text, f"{layer.count_params():,}"))
        widths = [max(len("Layer (type)"), *(len(r[0]) for r in rows)) if rows else 12,
                  max(len("Output Shape"), *(len(r[1]) for r in rows)) if rows else 12,
                  max(len("Param #"), *(len(r[2]) for r in rows)) if rows else 7]
        sep = "━" * (sum(widths) + 6)
        print_fn(f'Model: "{self.name}"')
        print_fn(sep)
        print_fn(f"{'Layer (type)':<{widths[0]}}   {'Output Shape':<{widths[1]}}   "
                 f"{'Param #':>{widths[2]}}")
        print_fn(sep)
        for r in rows:
            print_fn(f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}")
        print_fn(sep)
        total = sum(Layer.count_params(layer) for layer in self.layers if layer.built)
        trainable = sum(int(np.prod(s.shape)) for s in self.trainable_weights)
        nbytes = sum(s.nbytes for s in self.weights)
        print_fn(f" Total params: {total:,} ({format_bytes(nbytes)})")
        print_fn(f" Trainable params: {trainable:,}")
        print_fn(f" Non-trainable params: {total - trainable:,}")

    def get_config(self) -> dict:
        if self._is_subclassed():  # as Keras: the subclass's own arguments, if it says them
            return Layer.get_config(self)

        def structure(struct, names):
            if isinstance(struct, dict):
                return {"dict": names}
            return "list" if isinstance(struct, (list, tuple)) else "single"
        return {"name": self.name, **self.graph.to_config(),
                "input_structure": structure(self._input_struct, self.input_names),
                "output_structure": structure(self._output_struct, self.output_names)}

    @classmethod
    def from_config(cls, config: dict, get_class=None) -> "Model":
        """The model a ``get_config()`` describes; ``get_class(name)`` finds layer classes
        (default: the built-in layers)."""
        from hybridnet.layers import get_layer_class
        graph = Graph.from_config(config, get_class or get_layer_class)

        def restructure(tensors, structure):
            if isinstance(structure, dict):
                return dict(zip(structure["dict"], tensors))
            return tensors[0] if structure == "single" and len(tensors) == 1 else tensors
        return cls(restructure(graph.inputs, config.get("input_structure", "list")),
                   restructure(graph.outputs, config.get("output_structure", "list")),
                   name=config.get("name"))

    def save(self, filepath, overwrite=True):
        """Saves config, weights and optimizer state to one file, atomically."""
        from hybridnet.models import saving
        saving.save_model(self, filepath, overwrite=overwrite)

    def save_weights(self, filepath, overwrite=True):
        from hybridnet.models import saving
        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        from hybridnet.models import saving
        saving.load_weights(self, filepath)


def _per_output(value, names, what, nested=False):
    """Normalises a per-output compile argument to a list ordered like ``names``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"compile: `{what}` has keys {unknown} that are not model outputs. "
                             f"Expected keys among {list(names)}")
        return [value.get(n, [] if nested else None) for n in names]
    if nested:
        if isinstance(value, (list, tuple)) and len(names) > 1 and value and all(
                isinstance(v, (list, tuple)) for v in value):
            if len(value) != len(names):
                raise ValueError(f"compile: `{what}` must have one list per output "
                                 f"({len(names)}). Received: {len(value)}")
            return [list(v) for v in value]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [items for _ in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"compile: `{what}` must have one entry per output ({len(names)}: "
                             f"{list(names)}). Received: {len(value)} entries")
        return list(value)
    return [value for _ in names]


def _same(a: dict, b: dict) -> bool:
    """Whether two layer -> weight -> array trees hold the very same arrays."""
    if a.keys() != b.keys():
        return False
    return all(a[k].keys() == b[k].keys() and all(a[k][w] is b[k][w] for w in a[k])
               for k in a)


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _to_list(data, names, what: str) -> list | None:
    """An array, list or dict of arrays as a list ordered like ``names``."""
    if data is None:
        return None
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"`{what}` is missing entries for {missing}. Expected keys "
                             f"{list(names)}. Received keys: {sorted(data)}")
        return [data[n] if _is_array(data[n]) else np.asarray(data[n]) for n in names]
    if isinstance(data, (list, tuple)) and not _is_array(data) and data and _is_array(data[0]):
        items = list(data)
    else:
        items = [data]
    if len(items) != len(names):
        raise ValueError(f"`{what}` must hold {len(names)} arrays (for {list(names)}). "
                         f"Received: {len(items)}")
    return [a if _is_array(a) else np.asarray(a) for a in items]
