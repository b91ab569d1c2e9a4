"""Model: a functional graph of layers with Keras' compile / fit / evaluate / predict.

Example:
    >>> inputs = Input(shape=(64,))
    >>> x = layers.Dense(128, activation="relu")(inputs)
    >>> model = Model(inputs, layers.Dense(10)(x))
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> history = model.fit(x_train, y_train, batch_size=32, epochs=5)
"""
from __future__ import annotations

import functools
import math
import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hybridnet import losses as losses_lib
from hybridnet import metrics as metrics_lib
from hybridnet import optimizers as optimizers_lib
from hybridnet import strategies as strategies_lib
from hybridnet import utils
from hybridnet.data import adapter
from hybridnet.execution import Executor, LossContainer, MetricsContainer, split_trainable
from hybridnet.execution.steps import _merge
from hybridnet.layers.base import InputLayer, KerasTensor
from hybridnet.models.graph import Graph
from hybridnet.planner import make_plan
from hybridnet.planner.cost import format_bytes
from hybridnet.training import callbacks as callbacks_lib


class Model:
    """A model from symbolic ``inputs`` to ``outputs`` (each a tensor, list or dict)."""

    def __init__(self, inputs=None, outputs=None, name: str | None = None, **kwargs):
        self.name = name or utils.unique_name("functional")
        self.stop_training = False
        self.optimizer = None
        self.compiled = False
        self._strategy = None
        self._variables: dict | None = None  # layer -> weight -> array (placed by the plan)
        self._executor = None
        self._tx = None
        self._opt_state = None
        self._applied_lr = None
        self._executor_mask = None
        self._live_train_state = None
        self._seed = utils.next_seed()
        self._train_step_count = 0
        self._terminated_on_nan = False
        self.graph: Graph | None = None
        if inputs is not None or outputs is not None:
            self._init_graph(inputs, outputs)

    # ------------------------------------------------------------------ graph
    def _init_graph(self, inputs, outputs):
        self._input_struct = inputs
        self._output_struct = outputs
        flat_in = list(inputs.values()) if isinstance(inputs, dict) else (
            list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
        flat_out = list(outputs.values()) if isinstance(outputs, dict) else (
            list(outputs) if isinstance(outputs, (list, tuple)) else [outputs])
        self.graph = Graph(flat_in, flat_out)
        # Layers taken from another model start from that model's current weights.
        self._inherited = {layer.name: layer._model_ref for layer in self.graph.layers
                           if layer._model_ref is not None and layer.weight_specs}
        for layer in self.graph.layers:
            layer._model_ref = weakref.ref(self)
        self.input_names = (list(inputs) if isinstance(inputs, dict)
                            else [t.node.layer.name for t in flat_in])
        self.output_names = (list(outputs) if isinstance(outputs, dict)
                             else [t.node.layer.name for t in flat_out])

    @property
    def built(self) -> bool:
        return self.graph is not None

    @property
    def layers(self):
        return list(self.graph.layers) if self.graph else []

    @property
    def inputs(self):
        return self.graph.inputs

    @property
    def outputs(self):
        return self.graph.outputs

    def get_layer(self, name: str | None = None, index: int | None = None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No layer named '{name}' in model '{self.name}'. "
                         f"Layers: {[la.name for la in self.layers]}")

    def _ensure_built(self, x_sample=None):
        if not self.built:
            raise ValueError(f"Model '{self.name}' has no inputs yet: pass an Input or call "
                             f"build(input_shape) first.")

    # -------------------------------------------------------------- variables
    def _weight_specs(self) -> dict:
        return {layer.name: dict(layer.weight_specs) for layer in self.layers
                if layer.weight_specs}

    def _trainable_mask(self) -> dict:
        return {layer.name: {w: (spec.trainable and layer.trainable)
                             for w, spec in layer.weight_specs.items()}
                for layer in self.layers if layer.weight_specs}

    def _init_variables_fn(self, key, only: str | None = None):
        out = {}
        for i, layer in enumerate(self.layers):
            if not layer.weight_specs or (only is not None and layer.name != only):
                continue
            layer_key = jax.random.fold_in(key, i)
            out[layer.name] = {
                spec.name: spec.initializer(jax.random.fold_in(layer_key, j), spec.shape,
                                            spec.dtype)
                for j, spec in enumerate(layer.weight_specs.values())}
        return out

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
            info = LayerInfo(
                name=layer.name, kind=type(layer).__name__,
                weights={w: WeightInfo(s.shape, jnp.dtype(s.dtype).name, s.axes,
                                       s.trainable and layer.trainable)
                         for w, s in layer.weight_specs.items()},
                input_shapes=[t.shape for t in node.input_tensors],
                output_shapes=[t.shape for t in outs], parallel=layer.parallel,
                stage=layer.stage, config=layer.get_config(),
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

    def _get_executor(self) -> Executor:
        self._ensure_built()
        if self._executor is None:
            plan = self.make_plan(batch_size=getattr(self, "_planned_batch_size", None))
            loss = metrics = None
            if self.compiled:
                loss, metrics = self._compiled_loss, self._compiled_metrics
            self._executor_mask = self._trainable_mask()
            kwargs = dict(optimizer=self._tx, loss=loss, metrics=metrics,
                          num_outputs=len(self.outputs), seed=self._seed + 1)
            if len(plan.stages) > 1:
                from hybridnet.execution.pipeline import PipelineExecutor
                self._executor = PipelineExecutor(
                    self.graph, plan, self._trainable_mask(),
                    global_clipnorm=getattr(self.optimizer, "global_clipnorm", None), **kwargs)
            else:
                self._executor = Executor(self.graph.run, plan, self._trainable_mask(),
                                          **kwargs)
            if self._variables is None:
                # Created inside jit, already placed (and sharded) as the Plan says.
                self._variables = self._executor.init_variables(
                    self._init_variables_fn, jax.random.PRNGKey(self._seed))
                self._copy_inherited_weights()
            else:
                shardings = self._executor.weight_shardings()
                for layer in self._weight_specs():  # layers added after the weights were made
                    if layer not in self._variables:
                        init = functools.partial(self._init_variables_fn, only=layer)
                        self._variables.update(jax.jit(init, out_shardings={
                            layer: shardings[layer]})(jax.random.PRNGKey(self._seed)))
                params, state = split_trainable(self._variables, self._trainable_mask())
                params, state = self._executor.place_variables(params, state)
                self._variables = _merge(params, state)
        return self._executor

    @property
    def plan(self):
        """The placement plan the model runs under."""
        return self._get_executor().plan

    def _vars(self) -> tuple[dict, dict]:
        self._get_executor()
        self._sync_live_state()
        return split_trainable(self._variables, self._trainable_mask())

    def _layer_weights(self, layer_name: str) -> dict:
        self._get_executor()
        self._sync_live_state()
        return self._variables.get(layer_name, {})

    def _set_layer_weights(self, layer_name: str, values: dict):
        executor = self._get_executor()
        self._sync_live_state()
        shardings = executor.weight_shardings().get(layer_name, {})
        self._variables[layer_name] = {
            w: jax.device_put(v, shardings[w]) for w, v in values.items()}

    @property
    def variables(self) -> dict:
        """All weights as a pytree: layer name -> weight name -> array."""
        self._get_executor()
        self._sync_live_state()
        return self._variables

    @property
    def weights(self):
        return [spec for layer in self.layers for spec in layer.weights]

    @property
    def trainable_weights(self):
        return [s for layer in self.layers for s in layer.weights
                if s.trainable and layer.trainable]

    @property
    def non_trainable_weights(self):
        return [s for layer in self.layers for s in layer.weights
                if not (s.trainable and layer.trainable)]

    def get_weights(self) -> list[np.ndarray]:
        """All weight values as numpy arrays, layer by layer (Keras order)."""
        variables = self.variables
        return [np.asarray(variables[layer.name][w]) for layer in self.layers
                for w in layer.weight_specs]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        expected = sum(len(layer.weight_specs) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"Model '{self.name}': set_weights expected {expected} arrays. "
                             f"Received: {len(weights)} arrays")
        offset = 0
        for layer in self.layers:
            specs = list(layer.weight_specs.values())
            values = weights[offset:offset + len(specs)]
            offset += len(specs)
            for spec, value in zip(specs, values):
                if tuple(np.shape(value)) != spec.shape:
                    raise ValueError(f"Layer '{layer.name}': weight '{spec.name}' expected shape "
                                     f"{spec.shape}. Received: shape={tuple(np.shape(value))}")
            if specs:
                self._set_layer_weights(layer.name, {
                    s.name: jnp.asarray(v, s.dtype) for s, v in zip(specs, values)})

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

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
                local devices.
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
        self._executor = None
        self._opt_state = None
        self._applied_lr = None
        self.compiled = True
        if self.built:
            self._resolve_compile_args()

    def _resolve_compile_args(self):
        names = self.output_names
        loss = self._loss_arg
        if loss is None:
            raise ValueError(f"compile: `loss` is required for model '{self.name}'. "
                             "Received: loss=None")
        losses = _per_output(loss, names, "loss")
        self._losses = [None if fn is None else losses_lib.get(fn) for fn in losses]
        weights = _per_output(self._loss_weights_arg, names, "loss_weights") if (
            self._loss_weights_arg is not None) else [1.0] * len(names)
        metrics = _per_output(self._metrics_arg, names, "metrics", nested=True) if (
            self._metrics_arg is not None) else [[] for _ in names]
        weighted = _per_output(self._weighted_metrics_arg, names, "weighted_metrics",
                               nested=True) if self._weighted_metrics_arg else [[] for _ in names]
        per_output = []
        for i, ms in enumerate(metrics):
            ms = list(ms) + list(weighted[i])
            per_output.append([metrics_lib.get(m, loss=losses[i]) for m in ms])
        self._compiled_loss = LossContainer(self._losses, weights, names)
        self._compiled_metrics = MetricsContainer(per_output, names)
        self.metrics_names = self._compiled_metrics.names

    def _assert_compiled(self, what: str):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}() on model "
                               f"'{self.name}'.")

    def _prepare(self, x_first):
        """Builds (Sequential), resolves compile args and the executor."""
        if not self.built:
            self._build_from_data(x_first)
        if self.compiled and not hasattr(self, "_compiled_loss"):
            self._resolve_compile_args()
        return self._get_executor()

    def _build_from_data(self, x_first):
        raise ValueError(f"Model '{self.name}' is not built: it has no inputs.")

    def _copy_inherited_weights(self):
        """Keras shares a layer's weights between the models that use it; here each model
        holds its own arrays, so a model built from another model's layers starts from
        that model's current values."""
        for name, ref in getattr(self, "_inherited", {}).items():
            owner = ref()
            if owner is not None and owner is not self and owner._variables is not None:
                self._set_layer_weights(name, dict(owner._variables.get(name, {})))
        self._inherited = {}

    def _sync_live_state(self):
        """Mid-epoch (inside a batch callback) the latest weights live in the loop's train
        state; make them the model's before anyone reads or writes them."""
        live = getattr(self, "_live_train_state", None)
        if live is not None:
            self._store_train_state(live)
            self._live_train_state = None  # the loop rebuilds its state from the model's

    def _train_state(self, executor, metrics=None, step=None) -> dict:
        if self._executor_mask != self._trainable_mask():
            raise RuntimeError(f"Model '{self.name}': a layer's `trainable` changed after "
                               f"compile(); call compile() again for it to take effect.")
        params, state = split_trainable(self._variables, self._trainable_mask())
        if self._opt_state is None:
            self._opt_state = executor.init_opt_state(params)
        elif executor.opt_sharding is None:
            self._opt_state = executor.place_opt_state(self._opt_state, params)
        self._sync_learning_rate(executor)
        if step is None:
            step = jax.device_put(jnp.asarray(self._train_step_count, jnp.int32),
                                  executor.replicated)
        return {"params": params, "state": state, "opt_state": self._opt_state,
                "metrics": executor.init_metrics() if metrics is None else metrics,
                "step": step}

    def _sync_learning_rate(self, executor):
        """Writes ``optimizer.learning_rate`` (set by a user or a callback) into the state."""
        lr = getattr(self.optimizer, "learning_rate", None)
        if isinstance(lr, (int, float)) and lr != self._applied_lr:
            self._opt_state = executor.set_learning_rate(self._opt_state, float(lr))
            self._applied_lr = lr

    def _store_train_state(self, ts):
        self._variables = _merge(ts["params"], ts["state"])
        self._opt_state = ts["opt_state"]

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

    def _adapt(self, x, y, sample_weight, batch_size, shuffle, steps, what: str):
        if self._executor is None and isinstance(batch_size, int):
            self._planned_batch_size = batch_size  # the cost model plans for this batch
        if x is None:
            raise ValueError(f"{what}: `x` is required. Received: x=None")
        if adapter.is_array_data(x):
            if batch_size is None:
                batch_size = 32
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"{what}: `batch_size` must be a positive int. "
                                 f"Received: batch_size={batch_size!r}")
            xs = self._to_input_list(x)
            ys = None if y is None else adapter.to_list(y, self._out_names_for_data(), "y")
            sws = None if sample_weight is None else adapter.to_list(
                sample_weight, self._out_names_for_data(), "sample_weight")
            data = adapter.ArrayData(xs, ys, sws, batch_size, shuffle, max_steps=steps)
            self._prepare(xs)
            self._check_inputs(xs)
            self._check_batch_size(batch_size, what)
            return data
        if y is not None:
            raise ValueError(f"{what}: `y` must be None when `x` is an iterable of batches "
                             f"(targets come from the batches). Received: y of type "
                             f"{type(y).__name__}")
        if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
            raise ValueError(f"{what}: `x` must be arrays or an iterable of batches. "
                             f"Received: x of type {type(x).__name__}")
        return adapter.IterableData(x, steps)

    def _to_input_list(self, x):
        if not self.built:
            names = [f"input_{i}" for i in range(len(x))] if isinstance(x, (list, tuple)) and \
                not adapter._is_array(x) else ["input"]
            if isinstance(x, dict):
                names = list(x)
            return adapter.to_list(x, names, "x")
        return adapter.to_list(x, self.input_names, "x")

    def _out_names_for_data(self):
        return self.output_names if self.built else ["output"]

    def _check_batch_size(self, batch_size, what):
        from hybridnet.planner import check_batch
        plan = self._get_executor().plan
        check_batch(plan, batch_size, what)
        n = plan.data_parallel_size
        if batch_size < n:
            raise ValueError(f"{what}: `batch_size` must be at least the number of devices "
                             f"the batch is split over ({n}). Received: batch_size={batch_size}")

    def _iter_batches(self, data, order=None, what="fit"):
        """Yields (x list, y, sw, n) with y/sw as a single array for one output."""
        single = None
        first = True
        iterator = data.batches(order) if isinstance(data, adapter.ArrayData) else data.batches()
        for xb, yb, swb in iterator:
            if not isinstance(data, adapter.ArrayData):
                xb = self._to_input_list(xb)
                if first:
                    self._prepare(xb)
                    self._check_inputs(xb)
                    first = False
                yb = None if yb is None else adapter.to_list(yb, self.output_names, "y")
                swb = None if swb is None else adapter.to_list(swb, self.output_names,
                                                              "sample_weight")
            if single is None:
                single = len(self.output_names) == 1
            if single:
                yb = None if yb is None else yb[0]
                swb = None if swb is None else swb[0]
            yield xb, yb, swb, len(xb[0])

    # ---------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Trains the model, as ``keras.Model.fit``. Returns a ``History``."""
        self._assert_compiled("fit")
        data = self._adapt(x, y, sample_weight, batch_size, shuffle, steps_per_epoch, "fit")
        val_data = None
        if validation_split and isinstance(data, adapter.ArrayData):
            data, val_data = data.split(validation_split)
        elif validation_split:
            raise ValueError("fit: `validation_split` needs array inputs. Received an "
                             "iterable of batches; pass validation_data instead.")
        if class_weight is not None:  # the training part only, as Keras
            if not isinstance(data, adapter.ArrayData) or data.y is None or len(data.y) != 1:
                raise ValueError("fit: `class_weight` needs array inputs with a single array "
                                 "of targets. Received: class_weight with other data")
            data.sample_weight = [_class_weights_to_sample_weights(
                data.y[0], class_weight, None if data.sample_weight is None
                else data.sample_weight[0])]
        if validation_data is not None:
            val_data = self._validation_adapter(validation_data, validation_batch_size or
                                                batch_size, validation_steps)
        verbose = 1 if verbose == "auto" else verbose
        history = callbacks_lib.History()
        cb_list = list(callbacks or [])
        if verbose:
            cb_list.append(callbacks_lib.ProgbarLogger(verbose))
        steps = data.steps if data.steps is not None else steps_per_epoch
        cbs = callbacks_lib.CallbackList(cb_list + [history], self, {
            "epochs": epochs, "steps": steps, "verbose": verbose,
            "samples_per_epoch": min(data.num_samples, data.steps * data.batch_size)
            if isinstance(data, adapter.ArrayData) else None})
        self.stop_training = False
        self._terminated_on_nan = False
        if getattr(self, "_shuffle_rng", None) is None:  # one stream across fit() calls
            self._shuffle_rng = np.random.default_rng(self._seed)
        rng = self._shuffle_rng
        cbs.on_train_begin()
        epoch_logs: dict = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            order = data.order(rng) if isinstance(data, adapter.ArrayData) else None
            logs = self._train_epoch(data, order, cbs)
            if logs is None:
                if epoch == initial_epoch:
                    raise ValueError("fit: the dataset produced no batches. Received an empty "
                                     "iterable for `x`")
                warnings.warn(f"fit: the data ran out after {epoch - initial_epoch} epochs; "
                              f"stopping. Pass a repeating iterable with `steps_per_epoch` "
                              f"to train for {epochs - initial_epoch} epochs.", stacklevel=2)
                break
            epoch_logs = logs
            if val_data is not None and (epoch + 1) % validation_freq == 0 and \
                    not self._terminated_on_nan:
                val_logs = self._evaluate_data(val_data, None)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            cbs.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        cbs.on_train_end(epoch_logs)
        return history

    def _validation_adapter(self, validation_data, batch_size, steps):
        if isinstance(validation_data, tuple) and len(validation_data) in (2, 3) and \
                adapter.is_array_data(validation_data[0]):
            vx, vy = validation_data[0], validation_data[1]
            vsw = validation_data[2] if len(validation_data) == 3 else None
            return self._adapt(vx, vy, vsw, batch_size, False, steps, "fit(validation_data)")
        return self._adapt(validation_data, None, None, batch_size, False, steps,
                           "fit(validation_data)")

    def _train_epoch(self, data, order, cbs) -> dict | None:
        executor = self._get_executor()
        ts = self._train_state(executor)
        batch_callbacks = bool(cbs.batch_callbacks)
        results = executor.results
        step = 0
        if isinstance(data, adapter.ArrayData):
            source = self._array_batches(data, order, self.steps_per_execution)
        else:
            source = ((xb, yb, swb, n, 1) for xb, yb, swb, n in self._iter_batches(data))
        compiled = {}
        try:
            for xb, yb, swb, n, k in source:
                if batch_callbacks:
                    cbs.on_train_batch_begin(step)
                fn = compiled.get((n, k))
                if fn is None:
                    fn = compiled[(n, k)] = executor.train_fn(n, k)
                ts = fn(ts, xb, yb, swb)
                step += k
                if batch_callbacks:
                    values = results(ts["metrics"])  # dispatched now: the state is donated next
                    self._live_train_state = ts
                    cbs.on_train_batch_end(step - 1, callbacks_lib.LazyLogs(lambda v=values: v))
                    if self._live_train_state is not ts:  # a callback used the weights
                        ts = self._train_state(executor, metrics=ts["metrics"], step=ts["step"])
                    self._live_train_state = None
                    if self.stop_training:
                        break
        except BaseException:
            if ts is not None and not any(getattr(a, "is_deleted", lambda: False)()
                                          for a in jax.tree_util.tree_leaves(ts)):
                self._store_train_state(ts)  # keep what was learnt (e.g. Ctrl-C)
                self._train_step_count += step
            raise
        if step == 0:
            return None
        self._store_train_state(ts)
        self._train_step_count += step
        return {k: float(v) for k, v in results(ts["metrics"]).items()}

    def _array_batches(self, data: adapter.ArrayData, order, k: int = 1):
        """Yields ``(x, y, sw, batch_size, steps)``: groups of ``k`` full batches stacked
        for one dispatch, then the remaining batches one by one."""
        b = data.batch_size
        n = min(data.num_samples, data.steps * b)
        xs, ys, sws = data.x, data.y, data.sample_weight
        single = len(self.output_names) == 1

        def pick(arrays, index, stack=None):
            if arrays is None:
                return None
            if stack is None:
                picked = [a[index] for a in arrays]
            else:
                picked = [a[index].reshape(stack + a.shape[1:]) for a in arrays]
            return picked[0] if single and arrays is not xs else picked

        lo = 0
        if k > 1:
            for _ in range((n // b) // k):
                index = slice(lo, lo + k * b) if order is None else order[lo:lo + k * b]
                yield (pick(xs, index, (k, b)), pick(ys, index, (k, b)),
                       pick(sws, index, (k, b)), b, k)
                lo += k * b
        y0 = ys[0] if single and ys is not None else None
        if single and len(xs) == 1 and sws is None:  # the common case, kept lean
            x0 = xs[0]
            for lo in range(lo, n, b):
                index = slice(lo, lo + b) if order is None else order[lo:lo + b]
                yield [x0[index]], None if y0 is None else y0[index], None, len(index) if (
                    order is not None) else min(b, n - lo), 1
            return
        while lo < n:
            hi = min(lo + b, n)
            index = slice(lo, hi) if order is None else order[lo:hi]
            yield pick(xs, index), pick(ys, index), pick(sws, index), hi - lo, 1
            lo = hi

    # ----------------------------------------------------------------- evaluate
    def _evaluate_data(self, data, cbs) -> dict:
        executor = self._get_executor()
        params, state = self._vars()
        mstate = executor.init_metrics()
        ran = False
        for i, (xb, yb, swb, n) in enumerate(self._iter_batches(data)):
            if cbs:
                cbs.on_test_batch_begin(i)
            mstate = executor.evaluate(params, state, mstate, xb, yb, swb, n)
            ran = True
            if cbs and cbs.batch_callbacks:
                values = executor.results(mstate)
                cbs.on_test_batch_end(i, callbacks_lib.LazyLogs(lambda v=values: v))
        if not ran:
            raise ValueError("evaluate: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        return {k: float(v) for k, v in executor.results(mstate).items()}

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Returns the loss (and metrics) on the given data, as ``keras.Model.evaluate``."""
        self._assert_compiled("evaluate")
        data = self._adapt(x, y, sample_weight, batch_size, False, steps, "evaluate")
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self, {"steps": data.steps})
        cbs.on_test_begin()
        logs = self._evaluate_data(data, cbs)
        cbs.on_test_end(logs)
        if verbose not in (0, False):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = [logs[k] for k in self.metrics_names]
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        return self.evaluate(x, y, batch_size=len(adapter.to_list(
            x, self.input_names, "x")[0]) if self.built else None, sample_weight=sample_weight,
            verbose=0, return_dict=return_dict)

    # ------------------------------------------------------------------ predict
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Returns predictions as numpy arrays (one per output), as ``keras.Model.predict``."""
        if isinstance(x, tuple) and adapter.is_array_data(x[0]) and len(x) in (2, 3):
            x = x[0]
        data = self._adapt(x, None, None, batch_size, False, steps, "predict")
        executor = self._get_executor()
        params, state = self._vars()
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self, {"steps": data.steps})
        cbs.on_predict_begin()
        chunks = []
        for i, (xb, _, _, n) in enumerate(self._iter_batches(data)):
            cbs.on_predict_batch_begin(i)
            chunks.append(executor.predict(params, state, xb, n))
            cbs.on_predict_batch_end(i, {"outputs": chunks[-1]})
        if not chunks:
            raise ValueError("predict: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        outputs = [np.concatenate([np.asarray(c[j]) for c in chunks])
                   for j in range(len(self.outputs))]
        cbs.on_predict_end()
        return self._structure_outputs(outputs)

    def _structure_outputs(self, outputs: list):
        if isinstance(self._output_struct, dict):
            return dict(zip(self._output_struct, outputs))
        if isinstance(self._output_struct, (list, tuple)):
            return outputs
        return outputs[0]

    def predict_on_batch(self, x):
        xs = self._to_input_list(x)
        return self.predict(xs, batch_size=len(xs[0]), verbose=0)

    def __call__(self, x, training: bool = False):
        """Runs the model on arrays (eager) and returns its outputs."""
        xs = self._to_input_list(x)
        self._prepare(xs)
        params, state = self._vars()
        outputs, _, _ = self.graph.run(_merge(params, state), xs, training=training,
                                       rng=jax.random.PRNGKey(self._seed) if training else None)
        return self._structure_outputs(outputs)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One training step on one batch; returns that batch's loss (and metrics)."""
        self._assert_compiled("train_on_batch")
        if class_weight is not None:
            sample_weight = _class_weights_to_sample_weights(y, class_weight, sample_weight)
        xs = self._to_input_list(x)
        data = self._adapt(xs, y, sample_weight, len(xs[0]), False, None, "train_on_batch")
        executor = self._get_executor()
        ts = self._train_state(executor)
        for xb, yb, swb, n in self._iter_batches(data):
            ts = executor.train_fn(n)(ts, xb, yb, swb)
        self._store_train_state(ts)
        self._train_step_count += 1
        logs = {k: float(v) for k, v in executor.results(ts["metrics"]).items()}
        if return_dict:
            return logs
        values = [logs[k] for k in self.metrics_names]
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------ summary, config
    def summary(self, print_fn=None, line_length: int = 80):
        """Prints the layers, their output shapes and parameter counts."""
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
                          if isinstance(shape, list) else utils.format_shape(shape))
            kernel = getattr(layer, "kernel_choice", None)
            name = f"{layer.name} ({type(layer).__name__}{', ' + kernel if kernel else ''})"
            rows.append((name, shape_text, f"{layer.count_params():,}"))
        widths = [max(len("Layer (type)"), *(len(r[0]) for r in rows)),
                  max(len("Output Shape"), *(len(r[1]) for r in rows)),
                  max(len("Param #"), *(len(r[2]) for r in rows))]
        sep = "━" * (sum(widths) + 6)
        print_fn(f'Model: "{self.name}"')
        print_fn(sep)
        print_fn(f"{'Layer (type)':<{widths[0]}}   {'Output Shape':<{widths[1]}}   "
                 f"{'Param #':>{widths[2]}}")
        print_fn(sep)
        for r in rows:
            print_fn(f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}")
        print_fn(sep)
        total = self.count_params()
        trainable = sum(int(np.prod(s.shape)) for s in self.trainable_weights)
        nbytes = sum(s.nbytes for s in self.weights)
        print_fn(f" Total params: {total:,} ({format_bytes(nbytes)})")
        print_fn(f" Trainable params: {trainable:,}")
        print_fn(f" Non-trainable params: {total - trainable:,}")

    def get_config(self) -> dict:
        def structure(struct, names):
            if isinstance(struct, dict):
                return {"dict": names}
            return "list" if isinstance(struct, (list, tuple)) else "single"
        return {"name": self.name, **self.graph.to_config(),
                "input_structure": structure(self._input_struct, self.input_names),
                "output_structure": structure(self._output_struct, self.output_names)}

    @classmethod
    def from_config(cls, config: dict) -> "Model":
        from hybridnet.layers import get_layer_class
        graph = Graph.from_config(config, get_layer_class)

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


def _class_weights_to_sample_weights(y, class_weight, sample_weight):
    if y is None or isinstance(y, (list, dict)):
        raise ValueError("`class_weight` is supported for a single array of targets only.")
    y = np.asarray(y)
    labels = y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))
    weights = np.array([class_weight.get(int(c), 1.0) for c in labels], np.float32)
    if sample_weight is not None:
        weights = weights * np.asarray(sample_weight, np.float32)
    return weights
