"""Plan -> compiled functions: init, train, eval and predict steps.

The step functions are pure; :class:`Executor` compiles each once per input
shape with the shardings the Plan gives (parameters created inside jit with
their out_shardings, train state donated).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec

from hybridnet import optimizers as optimizers_lib
from hybridnet.execution.processes import check_plan_processes
from hybridnet.execution.state import TrainState
from hybridnet.planner.plan import Plan
from hybridnet.variables import LossCollector


class PackedMetrics:
    """A MetricsContainer whose whole state travels as one flat float32 vector: one array
    per dispatch instead of two per metric."""

    def __init__(self, metrics):
        self.metrics = metrics
        flat, self.unravel = ravel_pytree(metrics.init())
        self.initial = np.asarray(flat)  # host copy: each epoch gets a fresh buffer

    def update(self, flat, *args):
        return ravel_pytree(self.metrics.update(self.unravel(flat), *args))[0]

    def results(self, flat) -> dict:
        return self.metrics.results(self.unravel(flat))


def _as_list(tree, n: int, what: str) -> list:
    if n == 1 and not isinstance(tree, (list, tuple)):
        return [tree]
    if tree is None:
        return [None] * n
    if isinstance(tree, (list, tuple)) and len(tree) == n:
        return list(tree)
    raise ValueError(f"Expected {what} for {n} model outputs. Received: {type(tree).__name__}"
                     + (f" of length {len(tree)}" if isinstance(tree, (list, tuple)) else ""))


class Executor:
    """The SPMD runner: compiles and runs the steps of one model under one Plan over one
    :class:`TrainState` (the protocol is written down in ``execution/state.py``).

    Args:
        run: ``(weights, inputs, training, rng) -> (outputs, masks, updates)``, pure.
        plan: where everything lives.
        trainable: layer -> weight -> bool, which weights get gradients.
        optimizer: an ``optax.GradientTransformation`` (or None for inference only).
        loss: a LossContainer (or None); metrics: a MetricsContainer.
    """

    def __init__(self, run: Callable, plan: Plan, trainable: dict, optimizer=None, loss=None,
                 metrics=None, num_outputs: int = 1):
        check_plan_processes(plan, "Executor")
        self.run = run
        self.plan = plan
        self.mesh = plan.mesh()
        self.trainable = trainable
        self.tx = optimizer
        self.loss = loss
        self.metrics = metrics
        self.num_outputs = num_outputs
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        weight_sh = self.weight_shardings()
        self.params_sharding = _select(weight_sh, trainable, True)
        self.state_sharding = _select(weight_sh, trainable, False)
        self.opt_sharding = None
        self._output_specs = {name: lp.output_spec for name, lp in plan.layers.items()
                              if lp.output_spec is not None}
        self._compiled: dict = {}
        self._packed = PackedMetrics(metrics) if metrics is not None else None

    # ------------------------------------------------------------ placement
    def weight_shardings(self) -> dict:
        """layer -> weight -> NamedSharding, as the Plan says."""
        return self.plan.weight_shardings(self.mesh)

    def constrain(self, layer_name: str, value):
        """The Plan's sharding constraint on a layer's output (batch dim replicated when
        the batch does not divide over its axes)."""
        spec = self._output_specs.get(layer_name)
        if spec is None or not hasattr(value, "ndim") or value.ndim != len(spec):
            return value
        batch = spec[0]
        if batch is not None:
            axes = batch if isinstance(batch, tuple) else (batch,)
            if value.shape[0] % math.prod(self.mesh.shape[a] for a in axes):
                spec = PartitionSpec(None, *spec[1:])
        return jax.lax.with_sharding_constraint(value, NamedSharding(self.mesh, spec))

    def init_variables(self, init_fn: Callable, key):
        """Runs ``init_fn(key) -> {layer: {weight: array}}`` inside jit with the Plan's
        out_shardings: sharded weights are never whole on one device."""
        shapes = jax.eval_shape(init_fn, key)
        shardings = self.weight_shardings()
        return jax.jit(init_fn, out_shardings={k: shardings[k] for k in shapes})(key)

    def place_variables(self, variables: dict) -> dict:
        """Moves existing arrays (layer -> weight -> array) to the Plan's shardings; arrays
        already there are returned as they are."""
        shardings = self.weight_shardings()
        if all(isinstance(a, jax.Array) and a.sharding == shardings[k][w]
               for k, v in variables.items() for w, a in v.items()):
            return variables  # the common case at each fit: a device_put would cost more
        return jax.device_put(variables, {k: {w: shardings[k][w] for w in v}
                                          for k, v in variables.items()})

    def new_state(self, params, state, opt_state=None, step=0, rng=None) -> TrainState:
        """A placed TrainState; the optimizer state is created sharded like its parameters
        when not given, or moved to that placement when given (e.g. restored)."""
        self.opt_sharding = self._opt_state_sharding(params) if self.tx is not None else None
        if self.tx is None:
            opt_state = None
        elif opt_state is None:
            opt_state = jax.jit(self.tx.init, out_shardings=self.opt_sharding)(params)
        else:
            opt_state = jax.device_put(opt_state, self.opt_sharding)
        return TrainState.create(
            params, state, opt_state, self.init_metrics() if self._packed is not None else None,
            step, rng, sharding=self.replicated)

    def set_learning_rate(self, ts: TrainState, value: float) -> TrainState:
        """The state with its optimizer's injected learning rate set to ``value``."""
        return ts.replace(opt_state=jax.device_put(
            optimizers_lib.set_learning_rate(ts.opt_state, value),
            self.opt_sharding or self.replicated))

    def _opt_state_sharding(self, params):
        shapes = jax.eval_shape(self.tx.init, params)
        param_sh = self.params_sharding

        def pick(path, leaf):
            keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
            if len(keys) >= 2:
                layer, weight = keys[-2], keys[-1]
                sharding = param_sh.get(layer, {}).get(weight)
                if sharding is not None and tuple(leaf.shape) == tuple(
                        params[layer][weight].shape):
                    return sharding
            return self.replicated
        return jax.tree_util.tree_map_with_path(pick, shapes)

    def init_metrics(self):
        return jax.device_put(self._packed.initial, self.replicated)

    def batch_sharding(self, batch_size: int):
        return self.plan.batch_sharding(self.mesh, batch_size)

    def put_batch(self, batch, batch_size: int, steps: int = 1):
        """Host arrays of one batch (or ``steps`` stacked batches) onto the devices."""
        sharding = self.batch_sharding(batch_size)
        if steps > 1:
            sharding = NamedSharding(self.mesh, PartitionSpec(None, *sharding.spec))
        return jax.device_put(batch, sharding)

    # ---------------------------------------------------------- pure steps
    def _loss_fn(self, params, state, x, y, sw, rng):
        with LossCollector() as added:
            outputs, masks, updates = self.run(_merge(params, state), x, training=True,
                                               rng=rng, constrain=self.constrain)
        y_true = _as_list(y, self.num_outputs, "targets")
        sws = _as_list(sw, self.num_outputs, "sample weights") if sw is not None else (
            [None] * self.num_outputs)
        loss, parts = self.loss(y_true, outputs, sws, masks)
        loss = _with_added_losses(loss, added)
        new_state = _apply_updates(state, updates)
        return loss, (parts, outputs, masks, new_state, y_true, sws)

    def _train_step(self, ts: TrainState, x, y, sw) -> TrainState:
        rng = jax.random.fold_in(ts.rng, ts.step)
        grad_fn = jax.value_and_grad(self._loss_fn, has_aux=True)
        (loss, (parts, outputs, masks, new_state, y_true, sws)), grads = grad_fn(
            ts.params, ts.state, x, y, sw, rng)
        updates, opt_state = self.tx.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        batch_size = jax.tree_util.tree_leaves(x)[0].shape[0]
        metrics = self._packed.update(ts.metrics, loss, parts, batch_size, y_true, outputs,
                                      sws, masks)
        return ts.replace(params=params, state=new_state, opt_state=opt_state,
                          metrics=metrics, step=ts.step + 1)

    def _train_steps(self, ts, xs, ys, sws, unroll: bool = False):
        def body(carry, batch):
            return self._train_step(carry, *batch), None
        ts, _ = jax.lax.scan(body, ts, (xs, ys, sws), unroll=True if unroll else 1)
        return ts

    def _unroll_steps(self, ts, xs, ys, sws) -> bool:
        """XLA:CPU runs convolution gradients inside a rolled loop many times slower than
        unrolled (measured: 12x for a small CNN); elsewhere a rolled loop is as fast and
        compiles sooner."""
        if self.mesh.devices.flat[0].platform != "cpu":
            return False
        first = jax.tree_util.tree_map(lambda a: a[0], (xs, ys, sws))
        jaxpr = jax.make_jaxpr(self._placed(self._train_step))(ts, *first)
        return "conv_general_dilated" in str(jaxpr)

    def _eval_step(self, params, state, mstate, x, y, sw):
        with LossCollector() as added:
            outputs, masks, _ = self.run(_merge(params, state), x, training=False, rng=None,
                                         constrain=self.constrain)
        y_true = _as_list(y, self.num_outputs, "targets")
        sws = _as_list(sw, self.num_outputs, "sample weights") if sw is not None else (
            [None] * self.num_outputs)
        loss, parts = self.loss(y_true, outputs, sws, masks)
        loss = _with_added_losses(loss, added)
        batch_size = jax.tree_util.tree_leaves(x)[0].shape[0]
        return self._packed.update(mstate, loss, parts, batch_size, y_true, outputs, sws,
                                   masks)

    def _predict_step(self, params, state, x):
        with LossCollector():
            outputs, _, _ = self.run(_merge(params, state), x, training=False, rng=None,
                                     constrain=self.constrain)
        return outputs

    # ---------------------------------------------------------- compiled
    def _placed(self, fn: Callable) -> Callable:
        """``fn`` traced inside the kernels' placement context (Pallas kernels then run per
        batch shard). Costs nothing at run time: the context is entered while tracing."""
        from hybridnet.kernels import placement

        @functools.wraps(fn)
        def placed(*args, **kwargs):
            with placement(self.mesh, self.plan.batch_axes):
                return fn(*args, **kwargs)
        return placed

    def _jit(self, kind, batch_size: int, build: Callable):
        fn = self._compiled.get((kind, batch_size))
        if fn is None:
            fn = build(self.batch_sharding(batch_size))
            if self.mesh.devices.size > 1 and self.mesh.devices.flat[0].platform == "cpu":
                fn = _OneInFlight(fn)
            self._compiled[(kind, batch_size)] = fn
        return fn

    def train_state_sharding(self) -> TrainState:
        return TrainState(params=self.params_sharding, state=self.state_sharding,
                          opt_state=self.opt_sharding or self.replicated,
                          metrics=self.replicated, step=self.replicated, rng=self.replicated)

    def train_fn(self, batch_size: int, steps: int = 1) -> Callable:
        """The compiled ``(train_state, x, y, sw) -> train_state`` for this batch size;
        with ``steps > 1`` it runs that many stacked batches in one dispatch (Keras'
        ``steps_per_execution``). The state passed in is donated."""
        def build(batch_sh):
            ts_sh = self.train_state_sharding()
            if steps == 1:
                return jax.jit(self._placed(self._train_step),
                               in_shardings=(ts_sh, batch_sh, batch_sh, batch_sh),
                               out_shardings=ts_sh, donate_argnums=0)
            stacked = NamedSharding(self.mesh, PartitionSpec(None, *batch_sh.spec))
            jitted = {}

            def run(ts, xs, ys, sws):
                if not jitted:
                    unroll = self._unroll_steps(ts, xs, ys, sws)
                    jitted["fn"] = jax.jit(
                        self._placed(functools.partial(self._train_steps, unroll=unroll)),
                        in_shardings=(ts_sh, stacked, stacked, stacked), out_shardings=ts_sh,
                        donate_argnums=0)
                return jitted["fn"](ts, xs, ys, sws)
            return run
        return self._jit(("train", steps), batch_size, build)

    def evaluate(self, ts: TrainState, mstate, x, y, sw, batch_size: int):
        """``mstate`` updated with one batch evaluated under ``ts``'s weights."""
        def build(batch_sh):
            return jax.jit(self._placed(self._eval_step), in_shardings=(
                self.params_sharding, self.state_sharding, self.replicated, batch_sh, batch_sh,
                batch_sh), out_shardings=self.replicated)
        return self._jit("eval", batch_size, build)(ts.params, ts.state, mstate, x, y, sw)

    def predict(self, ts: TrainState, x, batch_size: int):
        """The model's outputs (a list) for one batch."""
        def build(batch_sh):
            return jax.jit(self._placed(self._predict_step), in_shardings=(
                self.params_sharding, self.state_sharding, batch_sh))
        return self._jit("predict", batch_size, build)(ts.params, ts.state, x)

    def results(self, mstate) -> dict:
        fn = self._compiled.get("results")
        if fn is None:
            fn = self._compiled["results"] = jax.jit(self._packed.results)
        return fn(mstate)


class _OneInFlight:
    """A compiled function that returns only once its program has run on every device
    (``lower`` and the jit's other attributes pass through).

    XLA:CPU launches each device's part of a multi-device program as a separate task,
    and under CPU contention a device can take the next program's launch before the
    current one's. The current program's all-reduce then waits forever for that device
    (XLA aborts with "only 7 of 8 arrived"). Waiting for each program before the next
    one is dispatched rules this out. It is applied on CPU meshes of several devices
    only: simulated devices, where host and devices share the same cores anyway."""
    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        out = self.fn(*args)
        jax.block_until_ready(jax.tree_util.tree_leaves(out)[0])
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


def _with_added_losses(loss, added: LossCollector):
    """The compiled loss plus the losses layers added (``add_loss``, regularizers)."""
    extra = added.total()
    if extra is None:
        if isinstance(loss, float):
            raise ValueError("compile() was given no loss and no layer adds one "
                             "(add_loss): there is nothing to minimize.")
        return loss
    return extra if isinstance(loss, float) else loss + extra


def _merge(params: dict, state: dict) -> dict:
    out = {k: dict(v) for k, v in params.items()}
    for layer, values in state.items():
        out.setdefault(layer, {}).update(values)
    return out


def _select(tree: dict, trainable: dict, want: bool) -> dict:
    out = {}
    for layer, values in tree.items():
        picked = {w: v for w, v in values.items() if trainable[layer][w] == want}
        if picked:
            out[layer] = picked
    return out


def _apply_updates(state: dict, updates: dict) -> dict:
    if not updates:
        return state
    out = {k: dict(v) for k, v in state.items()}
    for layer, values in updates.items():
        for w, v in values.items():
            if layer in out and w in out[layer]:
                out[layer][w] = v.astype(out[layer][w].dtype)
    return out


def split_trainable(variables: dict, trainable: dict):
    return _select(variables, trainable, True), _select(variables, trainable, False)


__all__ = ["Executor", "TrainState", "split_trainable"]
