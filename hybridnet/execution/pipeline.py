"""Pipeline parallelism: MPMD stage programs on their own sub-meshes plus a schedule.

Each pipeline stage of the Plan runs the graph nodes of its layers (in graph order; a
stage may read tensors of its own or earlier stages only, never of a later one) as its
own compiled programs on its stage sub-mesh (data/tensor parallel inside the stage, as
the Plan's PartitionSpecs and batch axes say). Per stage there are:

* a forward program (one dispatch per microbatch) that returns the values crossing the
  next stage boundary, their masks, and the updated non-trainable state;
* a backward program (one dispatch per microbatch) that *recomputes* the stage forward
  under ``jax.vjp`` from the stashed stage inputs (rematerialisation: a stage keeps
  only its inputs per in-flight microbatch, never its internal activations), adds the
  parameter gradient to a per-stage accumulator and returns the input cotangents;
* on the last stage, one fused forward + loss + backward + metrics program;
* one optimizer-apply program per step.

Activations and cotangents move between stage sub-meshes to the receiving stage's batch
sharding (``jax.device_put`` in one process; across processes, one collective permute,
``processes.transfer``: every process runs the same sequence of programs). The host only enqueues work in the order of
:func:`schedule_events` (GPipe or 1F1B); it never waits on a device inside a step, so
stages overlap on real hardware.

Numerics (invariant 1): a loss is a weighted sum over samples (or valid tokens, or
sample weights) divided by the batch's total (``losses.weighted_sum_and_divisor``). A
small program on the last stage computes each output's divisor for the whole batch
before any microbatch runs (from the targets, the sample weights and the outputs' masks;
the masks by a dead-code-eliminated trace of the model that reads only the inputs they
derive from); each microbatch then contributes its sum over that divisor, so losses,
gradients, updated parameters, logged metrics, ``evaluate`` and ``predict`` equal the
one-device step, however the batch is cut (a last batch the microbatch count does not
divide runs as one microbatch). Known, documented differences:

* BatchNormalization normalises each microbatch with its own batch statistics (as GPipe
  does), so with ``m > 1`` training-mode outputs differ from one full-batch step
  (identical for ``m == 1``; for full-batch statistics use ``m == 1`` or an SPMD plan).
  Its moving statistics get one update per step, as GPipe tracks them: every microbatch
  starts from the step's values and :func:`merge_microbatch_updates` combines what they
  assigned (a layer's ``merge_microbatch_updates`` hook; BatchNormalization merges the
  microbatch means and variances by the law of total variance, which for statistics of
  the raw input equals the whole batch's).
* Dropout: microbatch ``j`` of step ``t`` uses the key
  ``fold_in(fold_in(ts.rng, t), j)`` (reproducible; the distribution is the SPMD one,
  the draws differ).
* If the outputs' masks depend on weights (a mask computed from a learned value), the
  divisors cannot be known before the microbatches run: each microbatch is then
  normalised by its own (a warning says so).
* The optimizer runs per stage on that stage's parameters: exact for per-leaf
  transforms (SGD, Adam, RMSprop, clipnorm, clipvalue, weight decay). For
  ``global_clipnorm`` pass ``global_clipnorm=`` to the executor: it computes the global
  norm across stages and pre-scales the gradients, which makes the per-stage clip a
  no-op and the result equal to whole-model clipping.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jax_core
from jax.interpreters import partial_eval as pe
from jax.sharding import NamedSharding, PartitionSpec

from hybridnet import optimizers as optimizers_lib
from hybridnet.execution.processes import (check_plan_processes, put_host,
                                            to_every_process, transfer)
from hybridnet.execution.state import TrainState
from hybridnet.execution.steps import PackedMetrics, _as_list, _merge, _select
from hybridnet.planner.plan import Plan
from hybridnet.planner.schedule import (SCHEDULES, bubble_fraction,  # noqa: F401
                                        peak_inflight_microbatches, schedule_events,
                                        schedule_ticks)



# --------------------------------------------------------------------------- plan helpers

def _batch_axes(plan: Plan) -> tuple:
    """The mesh axes the batch is split over (``batch_axes`` or the older ``batch_axis``)."""
    axes = getattr(plan, "batch_axes", None) or (getattr(plan, "batch_axis", None),)
    return tuple(a for a in axes if a is not None and a != plan.pipe_axis)


def _batch_spec(plan: Plan) -> PartitionSpec:
    """PartitionSpec of a batch-major array inside a stage (first dim over the batch axes)."""
    axes = _batch_axes(plan)
    if not axes:
        return PartitionSpec()
    return PartitionSpec(axes if len(axes) > 1 else axes[0])


# ------------------------------------------------------------------------------ schedules

# ------------------------------------------------------------------------------- helpers

def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _constrain_tree(tree: dict, shardings: dict) -> dict:
    """``with_sharding_constraint`` on a layer -> weight -> array tree where a sharding
    is known."""
    out = {}
    for layer, values in tree.items():
        sh = shardings.get(layer, {})
        out[layer] = {w: jax.lax.with_sharding_constraint(v, sh[w]) if w in sh else v
                      for w, v in values.items()}
    return out


class _Stage:
    """Static description of one stage: its nodes, boundary tensors and shardings."""

    def __init__(self, index, mesh, nodes, layers):
        self.index = index
        self.mesh = mesh
        self.nodes = nodes            # graph node indices, in graph order
        self.layers = layers          # layer names with nodes in this stage
        self.carry_in: list = []      # KerasTensors received from earlier stages
        self.fresh: list = []         # indices of model inputs that enter here
        self.carry_out: list = []     # KerasTensors sent on (model outputs on the last)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.params_sharding: dict = {}
        self.state_sharding: dict = {}
        self.opt_sharding = None

    def batch_sharding(self, plan: Plan, n: int) -> NamedSharding:
        axes = _batch_axes(plan)
        size = math.prod(self.mesh.shape[a] for a in axes) if axes else 1
        if axes and n % size == 0:
            return NamedSharding(self.mesh, _batch_spec(plan))
        return self.replicated

    def value_sharding(self, plan: Plan, value, n: int) -> NamedSharding:
        """Batch-major values split over the batch axes; anything else replicated."""
        if getattr(value, "ndim", 0) >= 1 and value.shape[0] == n:
            return self.batch_sharding(plan, n)
        return self.replicated


# ------------------------------------------------------------------------------ executor

class PipelineExecutor:
    """Runs a model under a Plan with pipeline stages (same interface as ``Executor``).

    Args:
        graph: the model's ``Graph``.
        plan: a Plan with ``len(plan.stages) >= 1``, ``microbatches`` and ``schedule``.
        trainable: layer -> weight -> bool.
        optimizer: an ``optax.GradientTransformation`` (None for inference only).
        loss: a ``LossContainer``; metrics: a ``MetricsContainer``.
        num_outputs: number of model outputs.
        global_clipnorm: if the optimizer clips by global norm, its value: the norm is
            then computed over all stages (see the module docstring).

    The train state has the structure an SPMD runner gives it: ``opt_state`` is the
    whole model's optax state, each leaf on the stage that holds its parameter (leaves
    shared by all stages, such as Adam's count, on the last stage); ``metrics``,
    ``step`` and ``rng`` live on the last stage.
    """

    def __init__(self, graph, plan: Plan, trainable: dict, optimizer=None, loss=None,
                 metrics=None, num_outputs: int = 1,
                 global_clipnorm: float | None = None):
        if not plan.stages:
            raise ValueError("PipelineExecutor: the plan has no pipeline stages. Received: "
                             "plan.stages=[]")
        check_plan_processes(plan, "PipelineExecutor")
        self.graph = graph
        self.plan = plan
        self.trainable = trainable
        self.tx = optimizer
        self.loss = loss
        self.metrics = metrics
        self.num_outputs = num_outputs
        self.global_clipnorm = global_clipnorm
        self.microbatches = max(int(plan.microbatches or 1), 1)
        self.schedule = plan.schedule if plan.schedule in SCHEDULES else "gpipe"
        self.mesh = plan.mesh()
        self.stages = self._split(graph, plan)
        self.num_stages = len(self.stages)
        last = self.stages[-1]
        self.replicated = last.replicated
        weight_sh = self.weight_shardings()
        self.params_sharding = _select(weight_sh, trainable, True)
        self.state_sharding = _select(weight_sh, trainable, False)
        for st in self.stages:
            st.params_sharding = {k: v for k, v in self.params_sharding.items()
                                  if self.stage_of(k) == st.index}
            st.state_sharding = {k: v for k, v in self.state_sharding.items()
                                 if self.stage_of(k) == st.index}
        self.opt_sharding = None
        self._opt_layout = None
        self._opt_cache = (None, None)  # (whole opt_state, its per-stage parts)
        self._output_specs = {n: lp.output_spec for n, lp in plan.layers.items()
                              if lp.output_spec is not None}
        self._mb_index = [[put_host(np.int32(j), st.replicated)
                           for j in range(self.microbatches)] for st in self.stages]
        self._acc = None
        self._current_mb = 0
        self._compiled: dict = {}
        self._signatures: dict = {}
        if metrics is not None:
            self._packed = PackedMetrics(metrics)

    # ---------------------------------------------------------------- stage split
    def _split(self, graph, plan: Plan) -> list[_Stage]:
        layer_stage = {}
        for k, sp in enumerate(plan.stages):
            for name in sp.layers:
                layer_stage[name] = k
        producer: dict = {}  # id(tensor) -> (stage, layer name)
        node_stage = []
        for i, node in enumerate(graph.nodes):
            name = node.layer.name
            sources = [producer[id(t)] for t in node.input_tensors if id(t) in producer]
            s = layer_stage.get(name)
            if s is None:  # a layer the stages do not list (no weights): joins its inputs
                lp = plan.layers.get(name)
                if lp is not None and lp.weights:
                    raise ValueError(f"Pipeline: layer '{name}' has weights but is in no "
                                     f"stage. Received: stages="
                                     f"{[sp.layers for sp in plan.stages]}")
                s = max([src for src, _ in sources], default=0)
            for src, src_name in sources:
                if src > s:
                    raise ValueError(
                        f"Pipeline: layer '{name}' (stage {s}) reads the output of layer "
                        f"'{src_name}' (stage {src}); a stage can only use tensors of its own "
                        f"or earlier stages. Received: stages="
                        f"{[sp.layers for sp in plan.stages]}")
            for t in node.output_tensors:
                producer[id(t)] = (s, name)
            node_stage.append(s)
        stages = []
        for k, sp in enumerate(plan.stages):
            idx = [i for i, s in enumerate(node_stage) if s == k]
            names = list(dict.fromkeys(graph.nodes[i].layer.name for i in idx))
            stages.append(_Stage(k, plan.mesh(list(sp.device_ids)), idx, names))
        self._layer_stage = {graph.nodes[i].layer.name: s for i, s in enumerate(node_stage)}
        for name, lp in plan.layers.items():
            self._layer_stage.setdefault(name, layer_stage.get(name, lp.stage))
        # Where each tensor is born (producer stage; model inputs: first consumer) and
        # the last stage that reads it (model outputs: the last stage, for the loss).
        p = len(stages)
        born, last_use, order = {}, {}, []
        for i, node in enumerate(graph.nodes):
            for t in node.output_tensors:
                born.setdefault(id(t), node_stage[i])
                order.append(t)
        input_ids = {id(t): k for k, t in enumerate(graph.inputs)}
        for i, node in enumerate(graph.nodes):
            for t in node.input_tensors:
                last_use[id(t)] = max(last_use.get(id(t), 0), node_stage[i])
                if id(t) in input_ids:
                    born[id(t)] = min(born.get(id(t), p), node_stage[i])
        for t in graph.outputs:
            last_use[id(t)] = p - 1
            if id(t) in input_ids:
                born[id(t)] = min(born.get(id(t), p), p - 1)
        tensors = list(dict.fromkeys(list(graph.inputs) + order))
        for st in stages:
            st.fresh = [k for k, t in enumerate(graph.inputs) if born.get(id(t)) == st.index]
            st.carry_in = [t for t in tensors if id(t) in born and born[id(t)] < st.index
                           <= last_use.get(id(t), -1)]
        for st in stages[:-1]:
            st.carry_out = stages[st.index + 1].carry_in
        stages[-1].carry_out = list(graph.outputs)
        return stages

    def stage_of(self, layer_name: str) -> int:
        """The pipeline stage that holds ``layer_name``'s weights and runs it."""
        if layer_name not in self._layer_stage:
            raise ValueError(f"Pipeline: no layer named '{layer_name}' in the plan.")
        return self._layer_stage[layer_name]

    # ------------------------------------------------------------------ placement
    def weight_shardings(self) -> dict:
        """layer -> weight -> NamedSharding on that layer's stage sub-mesh."""
        return {layer: {w: NamedSharding(self.stages[self.stage_of(layer)].mesh, spec)
                        for w, spec in specs.items()}
                for layer, specs in self.plan.weight_specs.items()}

    def init_variables(self, init_fn: Callable, key) -> dict:
        """Creates the weights with ``init_fn(key) -> {layer: {w: array}}`` inside one jit
        per stage, each already placed on its stage (one jit cannot span stage meshes)."""
        shardings = self.weight_shardings()
        made = jax.eval_shape(init_fn, key)
        out = {}
        for st in self.stages:
            names = [n for n in made if self.stage_of(n) == st.index]
            if not names:
                continue
            sh = {n: shardings[n] for n in names}
            out.update(jax.jit(lambda k, names=names: {n: init_fn(k)[n] for n in names},
                               out_shardings=sh)(key))
        return out

    def _by_stage(self, tree: dict) -> list[dict]:
        parts = [{} for _ in self.stages]
        for layer, values in tree.items():
            parts[self.stage_of(layer)][layer] = values
        return parts

    def place_variables(self, variables: dict) -> dict:
        """Moves existing arrays to their stages' shardings (no-op where already there)."""
        shardings = self.weight_shardings()
        return self._to(variables, {k: {w: shardings[k][w] for w in v}
                                    for k, v in variables.items()})

    def _to(self, tree, shardings):
        """``jax.device_put(tree, shardings)`` between stage meshes, on any number of
        processes (``processes.transfer``)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)  # one batched transfer per call
        meshes = [st.mesh for st in self.stages]
        if isinstance(shardings, NamedSharding):
            return jax.tree_util.tree_map(lambda a: transfer(a, shardings, meshes), tree)
        return jax.tree_util.tree_map(lambda a, sh: transfer(a, sh, meshes), tree, shardings)

    def _stage_opt_sharding(self, st: _Stage, params_s):
        shapes = jax.eval_shape(self.tx.init, params_s)

        def pick(path, leaf):
            keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
            if len(keys) >= 2:
                sharding = st.params_sharding.get(keys[-2], {}).get(keys[-1])
                if sharding is not None and tuple(leaf.shape) == tuple(
                        params_s[keys[-2]][keys[-1]].shape):
                    return sharding
            return st.replicated
        return jax.tree_util.tree_map_with_path(pick, shapes)

    def _layout(self, params):
        """How the whole model's optimizer state maps onto one optax state per stage:
        per stage, its treedef and the whole-state leaf index of each of its leaves; per
        whole-state leaf, the stage (and position) it is read back from."""
        if self._opt_layout is None:
            whole = jax.eval_shape(self.tx.init, params)
            paths, treedef = jax.tree_util.tree_flatten_with_path(whole)
            index = {jax.tree_util.keystr(path): i for i, (path, _) in enumerate(paths)}
            stages, owner = [], {}
            for s, (st, part) in enumerate(zip(self.stages, self._by_stage(params))):
                sharding = self._stage_opt_sharding(st, part)
                leaves, stage_def = jax.tree_util.tree_flatten_with_path(
                    jax.eval_shape(self.tx.init, part))
                try:
                    idx = [index[jax.tree_util.keystr(path)] for path, _ in leaves]
                except KeyError as e:
                    raise ValueError(
                        f"Pipeline: the optimizer's state for stage {s} has a leaf {e} that "
                        f"the whole model's state lacks; this optimizer cannot be split "
                        f"over pipeline stages.") from None
                for pos, i in enumerate(idx):
                    owner[i] = (s, pos)  # later stages win: shared leaves live on the last
                stages.append((stage_def, idx, jax.tree_util.tree_leaves(sharding)))
            missing = sorted(set(range(len(paths))) - set(owner))
            if missing:
                raise ValueError(f"Pipeline: optimizer state leaves "
                                 f"{[jax.tree_util.keystr(paths[i][0]) for i in missing]} "
                                 f"belong to no stage.")
            shardings = [stages[owner[i][0]][2][owner[i][1]] for i in range(len(paths))]
            self._opt_layout = (treedef, stages, [owner[i] for i in range(len(paths))])
            self.opt_sharding = jax.tree_util.tree_unflatten(treedef, shardings)
        return self._opt_layout

    def _split_opt(self, opt_state, params) -> list:
        """The whole optimizer state as one state per stage, each on its sub-mesh."""
        if self._opt_cache[0] is opt_state:
            return self._opt_cache[1]
        _, stages, _ = self._layout(params)
        leaves = jax.tree_util.tree_leaves(opt_state)
        return [jax.tree_util.tree_unflatten(stage_def, self._to(
                    [leaves[i] for i in idx], shardings))
                for stage_def, idx, shardings in stages]

    def _merge_opt(self, parts: list, params):
        treedef, _, owner = self._layout(params)
        flat = [jax.tree_util.tree_leaves(p) for p in parts]
        whole = jax.tree_util.tree_unflatten(treedef, [flat[s][pos] for s, pos in owner])
        self._opt_cache = (whole, parts)
        return whole

    def new_state(self, params, state, opt_state=None, step=0, rng=None) -> TrainState:
        """A placed TrainState (see ``execution/state.py``); the optimizer state is made
        per stage inside jit, sharded like its parameters, when not given."""
        if self.tx is None:
            opt_state = None
        elif opt_state is None:
            _, stages, _ = self._layout(params)
            parts = [jax.jit(self.tx.init, out_shardings=jax.tree_util.tree_unflatten(
                         stage_def, shardings))(part)
                     for (stage_def, _, shardings), part in zip(stages,
                                                                 self._by_stage(params))]
            opt_state = self._merge_opt(parts, params)
        else:
            self._layout(params)
            opt_state = self._to(opt_state, self.opt_sharding)
        return TrainState.create(
            params, state, opt_state, self.init_metrics() if self.metrics is not None else None,
            step, rng, sharding=self.replicated)

    def set_learning_rate(self, ts: TrainState, value: float) -> TrainState:
        """The state with every stage's injected learning rate set to ``value``."""
        return ts.replace(opt_state=self._to(
            optimizers_lib.set_learning_rate(ts.opt_state, value), self.opt_sharding))

    def put_batch(self, batch, batch_size: int, steps: int = 1):
        """Batches stay on the host: each microbatch goes to the stage that reads it."""
        del batch_size, steps
        return batch

    def init_metrics(self):
        return self._to(self._packed.initial, self.replicated)

    def results(self, mstate) -> dict:
        fn = self._compiled.get("results")
        if fn is None:
            fn = self._compiled["results"] = jax.jit(self._packed.results)
        return jax.tree_util.tree_map(to_every_process, fn(mstate))

    # --------------------------------------------------------------- stage programs
    def _constrain(self, st: _Stage):
        def constrain(layer_name, value):
            spec = self._output_specs.get(layer_name)
            if spec is None or not hasattr(value, "ndim") or value.ndim != len(spec):
                return value
            for dim, entry in enumerate(spec):
                if entry is None:
                    continue
                axes = entry if isinstance(entry, tuple) else (entry,)
                if any(a not in st.mesh.shape for a in axes) or value.shape[dim] % math.prod(
                        st.mesh.shape[a] for a in axes):
                    return value
            return jax.lax.with_sharding_constraint(value, NamedSharding(st.mesh, spec))
        return constrain

    def _run_stage(self, st: _Stage, params, state, carried, masks_in, fresh, training, rng):
        """Runs the stage's nodes. Returns (values out, masks out {i: mask}, updates), the
        updates being the non-trainable values the stage's layers assigned (layer ->
        weight -> array, only those assigned)."""
        values = {id(t): v for t, v in zip(st.carry_in, carried)}
        values.update({id(self.graph.inputs[k]): v for k, v in zip(st.fresh, fresh)})
        masks = {id(st.carry_in[i]): m for i, m in masks_in.items()}
        updates = self.graph.run_nodes(st.nodes, _merge(params, state), values, masks,
                                       training=training, rng=rng,
                                       constrain=self._constrain(st))
        outs = [values[id(t)] for t in st.carry_out]
        out_masks = {i: masks[id(t)] for i, t in enumerate(st.carry_out) if id(t) in masks}
        assigned = {layer: {w: v.astype(state[layer][w].dtype) for w, v in vals.items()
                            if w in state.get(layer, {})} for layer, vals in updates.items()}
        return outs, out_masks, {layer: vals for layer, vals in assigned.items() if vals}

    @staticmethod
    def _rng(key, mb):
        return jax.random.fold_in(key, mb)

    def _differentiable(self, st, params, state, carried, masks_in, fresh, rng, outputs_fn):
        """``jax.vjp`` (with aux) of ``outputs_fn(outs, masks, updates)`` of the stage
        forward, w.r.t. (params, the floating-point carried inputs). The forward is
        recomputed here: rematerialisation, the stage stashes only its inputs."""
        diff = [i for i, v in enumerate(carried) if _inexact(v)]

        def f(p, dc):
            c = list(carried)
            for i, v in zip(diff, dc):
                c[i] = v
            outs, out_masks, updates = self._run_stage(st, p, state, c, masks_in, fresh,
                                                       True, rng)
            return outputs_fn(outs, out_masks, updates)
        return jax.vjp(f, params, [carried[i] for i in diff], has_aux=True)

    def _fwd_train(self, st):
        def fwd(params, state, carried, masks_in, fresh, key, mb):
            outs, out_masks, updates = self._run_stage(
                st, params, state, carried, masks_in, fresh, True, self._rng(key, mb))
            return outs, out_masks, _constrain_tree(updates, st.state_sharding)
        return jax.jit(fwd)

    def _bwd_train(self, st):
        def bwd(params, state, carried, masks_in, fresh, key, mb, cot, acc):
            def out_fn(outs, out_masks, updates):
                return [o for o in outs if _inexact(o)], None
            _, vjp, _ = self._differentiable(st, params, state, carried, masks_in, fresh,
                                             self._rng(key, mb), out_fn)
            g_params, g_carried = vjp(list(cot))
            acc = jax.tree_util.tree_map(jnp.add, acc, g_params)
            return g_carried, _constrain_tree(acc, st.params_sharding)
        return jax.jit(bwd, donate_argnums=(8,))

    def _loss_of(self, y_true, outs, sws, masks, divisors, scale):
        """``(loss, parts)`` of one microbatch's share of the batch loss: its weighted
        sums over the whole batch's ``divisors``; with ``divisors=None``, its own divisors
        times ``scale`` (the microbatch count), i.e. the mean of per-microbatch losses."""
        sums = self.loss.sums_and_divisors(y_true, outs, sws, masks)
        if divisors is None:
            divisors = {name: d * scale.astype(jnp.result_type(d))
                        for name, (_, d) in sums.items()}
        return self.loss.combine({name: v for name, (v, _) in sums.items()}, divisors)

    def _track(self, mstate, loss, parts, scale, y_true, outs, sws, masks):
        """The metrics updated with one microbatch. The loss trackers weigh a value by
        the samples it covers: a microbatch's share of the batch loss times ``scale`` (the
        microbatch count), over its samples, sums to the batch loss over the batch."""
        up = lambda v: v * scale.astype(jnp.result_type(v))  # noqa: E731
        return self._update_metrics(mstate, up(loss), {k: up(v) for k, v in parts.items()},
                                    outs[0].shape[0], y_true, outs, sws, masks)

    def _last_train(self, st):
        def last(params, state, carried, masks_in, fresh, key, mb, y, sw, acc, mstate,
                 divisors, scale):
            y_true = list(y)
            sws = list(sw) if sw is not None else [None] * self.num_outputs

            def out_fn(outs, out_masks, updates):
                masks = [out_masks.get(i) for i in range(len(outs))]
                loss, parts = self._loss_of(y_true, outs, sws, masks, divisors, scale)
                return loss, (loss, parts, outs, masks, updates)
            _, vjp, aux = self._differentiable(st, params, state, carried, masks_in, fresh,
                                               self._rng(key, mb), out_fn)
            loss, parts, outs, masks, updates = aux
            g_params, g_carried = vjp(jnp.ones((), jnp.result_type(loss)))
            acc = jax.tree_util.tree_map(jnp.add, acc, g_params)
            mstate = self._track(mstate, loss, parts, scale, y_true, outs, sws, masks)
            return (g_carried, _constrain_tree(acc, st.params_sharding),
                    _constrain_tree(updates, st.state_sharding), mstate)
        return jax.jit(last, donate_argnums=(9, 10))

    def _merge_updates(self, st):
        """One update of the stage's non-trainable weights from those its microbatches
        assigned, each from the step's initial values (see :func:`merge_microbatch_updates`)."""
        layers = {node.layer.name: node.layer for node in self.graph.nodes}

        def merge(state, per_microbatch):
            new = {layer: dict(values) for layer, values in state.items()}
            for name in per_microbatch[0]:
                merged = merge_microbatch_updates(layers[name], state[name],
                                                  [u[name] for u in per_microbatch])
                new[name].update({w: v.astype(state[name][w].dtype)
                                  for w, v in merged.items()})
            return _constrain_tree(new, st.state_sharding)
        return jax.jit(merge)

    def _update_metrics(self, flat, *args):
        return self._packed.update(flat, *args)

    def _apply(self, st, is_last):
        def apply(params, opt_state, acc, scale, step):
            if scale is not None:
                acc = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), acc)
            updates, opt_state = self.tx.update(acc, opt_state, params)
            params = optax.apply_updates(params, updates)
            zeros = jax.tree_util.tree_map(jnp.zeros_like, acc)
            return (_constrain_tree(params, st.params_sharding), opt_state,
                    _constrain_tree(zeros, st.params_sharding),
                    None if step is None else step + 1)
        return jax.jit(apply, donate_argnums=(0, 1, 2))

    def _fwd_eval(self, st, is_last, predict):
        def fwd(params, state, carried, masks_in, fresh, y, sw, mstate, divisors=None,
                scale=None):
            outs, out_masks, _ = self._run_stage(st, params, state, carried, masks_in, fresh,
                                                 False, None)
            if not is_last or predict:
                return outs, out_masks
            y_true = list(y)
            sws = list(sw) if sw is not None else [None] * self.num_outputs
            masks = [out_masks.get(i) for i in range(len(outs))]
            loss, parts = self._loss_of(y_true, outs, sws, masks, divisors, scale)
            return self._track(mstate, loss, parts, scale, y_true, outs, sws, masks)
        return jax.jit(fwd, donate_argnums=(7,) if is_last and not predict else ())

    def _program(self, kind: str, s: int):
        key = (kind, s)
        fn = self._compiled.get(key)
        if fn is None:
            st, is_last = self.stages[s], s == self.num_stages - 1
            build = {"fwd": lambda: self._fwd_train(st), "bwd": lambda: self._bwd_train(st),
                     "last": lambda: self._last_train(st),
                     "apply": lambda: self._apply(st, is_last),
                     "merge": lambda: self._merge_updates(st),
                     "eval": lambda: self._fwd_eval(st, is_last, False),
                     "predict": lambda: self._fwd_eval(st, is_last, True),
                     "norm": lambda: jax.jit(lambda acc: sum(
                         (jnp.sum(jnp.square(g.astype(jnp.float32)))
                          for g in jax.tree_util.tree_leaves(acc)), jnp.zeros((), jnp.float32))),
                     "scale": lambda: jax.jit(lambda sq: (self.global_clipnorm / jnp.maximum(
                         jnp.sqrt(sum(sq)), self.global_clipnorm)).astype(jnp.float32)),
                     "zeros": lambda: jax.jit(
                         lambda p: jax.tree_util.tree_map(jnp.zeros_like, p),
                         out_shardings=st.params_sharding),
                     "key": lambda: jax.jit(jax.random.fold_in),
                     "concat": lambda: jax.jit(lambda chunks: [
                         jnp.concatenate(c) for c in zip(*chunks)])}[kind]
            fn = self._compiled[key] = build()
        return fn

    def _call(self, kind: str, s: int, *args):
        """Dispatches a stage program (recording its abstract arguments for
        :meth:`stage_memory_analysis`)."""
        fn = self._program(kind, s)
        sig_key = (kind, s, self._current_mb)
        if sig_key not in self._signatures:
            self._signatures[sig_key] = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
                if isinstance(a, jax.Array) else a, args)
        return fn(*args)

    # -------------------------------------------------------------------- transfers
    def _send(self, values, masks, s: int, n: int):
        """Puts stage outputs (or cotangents) onto stage ``s``'s batch sharding."""
        st = self.stages[s]
        values = self._to(list(values), [st.value_sharding(self.plan, v, n) for v in values])
        if masks is None:
            return values
        masks = self._to(dict(masks), {i: st.value_sharding(self.plan, v, n)
                                       for i, v in masks.items()})
        return values, masks

    def _split_batch(self, arrays, m: int):
        """Each array cut into ``m`` microbatches: numpy views, or one jitted split per
        device array (no per-slice dispatch or index transfer)."""
        if arrays is None:
            return None
        out = []
        for a in arrays:
            if a is None or m == 1:
                out.append(None if a is None else [a])
            elif isinstance(a, jax.Array):
                split = self._compiled.get(("split", m))
                if split is None:
                    split = self._compiled[("split", m)] = jax.jit(
                        lambda x: [jax.lax.slice_in_dim(x, j * (x.shape[0] // m),
                                                        (j + 1) * (x.shape[0] // m))
                                   for j in range(m)])
                out.append(split(a))
            else:
                a = np.asarray(a)
                mb = a.shape[0] // m
                out.append([a[j * mb:(j + 1) * mb] for j in range(m)])
        return out

    def _put_batch(self, pieces, st: _Stage, j: int):
        """Microbatch ``j`` of each split array, on stage ``st``'s batch sharding."""
        if pieces is None:
            return None
        return [None if p is None else self._to(
            p[j], st.batch_sharding(self.plan, p[j].shape[0])) for p in pieces]

    def _microbatches(self, batch_size: int, what: str) -> int:
        """The Plan's microbatch count; a batch it does not divide (the last, smaller batch
        of an epoch: the configured batch size is checked by the planner) runs as one
        microbatch, so no sample is dropped."""
        del what
        return self.microbatches if batch_size % self.microbatches == 0 else 1

    # ---------------------------------------------------------------- loss normaliser
    def _scale(self, m: int):
        """The microbatch count as a float32 scalar on the last stage (cached)."""
        key = ("scale", m)
        if key not in self._compiled:
            self._compiled[key] = put_host(np.float32(m), self.stages[-1].replicated)
        return self._compiled[key]

    def _divisors(self, ts, xs, y, sw, m: int):
        """Output name -> the divisor of its loss over the whole batch, on the last stage;
        None when the batch runs as one microbatch (its own divisors are the batch's).

        Divisors depend on shapes, targets, sample weights and the outputs' masks, never on
        weights (see ``losses.weighted_sum_and_divisor``): one small program computes them
        before any microbatch runs, the masks from the model inputs they derive from.
        """
        if m == 1 or self.loss is None:
            return None
        key = ("divisors", tuple((np.shape(a), str(jnp.result_type(a))) for a in xs))
        if key not in self._compiled:
            self._compiled[key] = self._divisor_program(ts, xs)
        if self._compiled[key] is None:
            return None
        fn, used = self._compiled[key]
        sw = [None] * self.num_outputs if sw is None else sw
        return fn(*self._to(([xs[i] for i in used], y, sw), self.stages[-1].replicated))

    def _divisor_program(self, ts, xs):
        """``(jitted fn(used inputs, targets, sample weights) -> divisors, indices of the
        model inputs it reads)``; None (with a warning) when the outputs' masks depend on
        weights, in which case each microbatch is normalised by its own divisors."""
        abstract = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))  # noqa
        weights = jax.tree_util.tree_map(abstract, _merge(ts.params, ts.state))
        inputs = [abstract(a) for a in xs]

        def run(w, x):
            outs, masks, _ = self.graph.run(w, list(x), training=False)
            return outs, masks
        outs, masks = jax.eval_shape(run, weights, inputs)
        masks_of, used = (lambda _: [None] * len(outs)), []
        if any(mk is not None for mk in masks):
            found = _weight_free(lambda w, x: run(w, x)[1], weights, inputs)
            if found is None:
                warnings.warn("Pipeline: the masks of the model outputs depend on weights, "
                              "so a masked loss is averaged per microbatch (not over the "
                              "batch's valid entries) and differs from the one-device loss.",
                              stacklevel=4)
                return None
            masks_of, used = found

        def divisors(x, y, sw):
            preds = [jnp.zeros(o.shape, o.dtype) for o in outs]
            sums = self.loss.sums_and_divisors(list(y), preds, list(sw), list(masks_of(x)))
            return {name: d for name, (_, d) in sums.items()}
        return jax.jit(divisors, out_shardings=self.stages[-1].replicated), used

    # ------------------------------------------------------------------------ train
    def _take_acc(self, params_parts):
        acc, self._acc = self._acc, None
        if acc is None:
            acc = [self._program("zeros", s)(p) for s, p in enumerate(params_parts)]
        return acc

    def _train_step(self, ts, x, y, sw, profile=None):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        n = int(xs[0].shape[0])
        m = self._microbatches(n, "fit")
        mb = n // m
        self._current_mb = mb
        p, stages, last = self.num_stages, self.stages, self.stages[-1]
        params = self._by_stage(ts.params)
        state = self._by_stage(ts.state)
        opt = list(self._split_opt(ts.opt_state, ts.params))
        y = _as_list(y, self.num_outputs, "targets")
        sw = None if sw is None else _as_list(sw, self.num_outputs, "sample weights")
        divisors, scale = self._divisors(ts, xs, y, sw, m), self._scale(m)
        xs, ys, sws = (self._split_batch(a, m) for a in (xs, y, sw))
        key = self._program("key", p - 1)(ts.rng, ts.step)
        keys = [key if s == p - 1 else self._to(key, st.replicated)
                for s, st in enumerate(stages)]
        acc = self._take_acc(params)
        mstate = ts.metrics
        carried = [dict() for _ in stages]   # stage -> mb -> (values, masks)
        fresh = [dict() for _ in stages]
        updates = [dict() for _ in stages]   # stage -> mb -> non-trainable values assigned
        cots = [dict() for _ in stages]      # stage -> mb -> cotangents of its outputs
        busy = [0.0] * p

        def inputs_of(s, j):
            if j not in fresh[s]:
                fresh[s][j] = self._put_batch([xs[k] for k in stages[s].fresh], stages[s], j)
            return carried[s].get(j, ([], {})) + (fresh[s][j],)

        for s, j, kind in schedule_events(p, m, self.schedule):
            t0 = time.perf_counter()
            idx = self._mb_index[s][j]
            if kind == "F" and s < p - 1:
                vals, masks, fr = inputs_of(s, j)
                outs, out_masks, updates[s][j] = self._call("fwd", s, params[s], state[s],
                                                            vals, masks, fr, keys[s], idx)
                carried[s + 1][j] = self._send(outs, out_masks, s + 1, mb)
                result = outs
            elif kind == "F":
                vals, masks, fr = inputs_of(s, j)
                yj = self._put_batch(ys, last, j)
                swj = self._put_batch(sws, last, j)
                cot, acc[s], updates[s][j], mstate = self._call(
                    "last", s, params[s], state[s], vals, masks, fr, keys[s], idx, yj, swj,
                    acc[s], mstate, divisors, scale)
                carried[s].pop(j, None), fresh[s].pop(j, None)
                if s > 0:
                    cots[s - 1][j] = self._send(cot, None, s - 1, mb)
                result = mstate
            elif s < p - 1:
                vals, masks, fr = inputs_of(s, j)
                cot, acc[s] = self._call("bwd", s, params[s], state[s], vals, masks, fr,
                                         keys[s], idx, cots[s].pop(j), acc[s])
                carried[s].pop(j, None), fresh[s].pop(j, None)
                if s > 0:
                    cots[s - 1][j] = self._send(cot, None, s - 1, mb)
                result = acc[s]
            else:
                continue  # the last stage's backward ran fused with its forward
            if profile is not None:
                jax.block_until_ready(result)
                busy[s] += time.perf_counter() - t0
                profile.append((s, j, kind, t0, time.perf_counter()))
        for s in range(p):
            if any(updates[s].values()):
                state[s] = self._call("merge", s, state[s],
                                      [updates[s][j] for j in sorted(updates[s])])
        scale = [None] * p
        if self.global_clipnorm:
            sq = [self._to(self._program("norm", s)(a), last.replicated)
                  for s, a in enumerate(acc)]
            total = self._program("scale", p - 1)(sq)
            scale = [self._to(total, st.replicated) for st in stages]
        new_step = None
        for s in range(p):
            t0 = time.perf_counter()
            params[s], opt[s], acc[s], inc = self._call(
                "apply", s, params[s], opt[s], acc[s], scale[s],
                ts.step if s == p - 1 else None)
            if s == p - 1:
                new_step = inc
            if profile is not None:
                jax.block_until_ready(params[s])
                busy[s] += time.perf_counter() - t0
                profile.append((s, -1, "U", t0, time.perf_counter()))
        self._acc = acc
        merged_params = {k: v for part in params for k, v in part.items()}
        merged_state = {k: v for part in state for k, v in part.items()}
        out = ts.replace(params=merged_params, state=merged_state,
                         opt_state=self._merge_opt(opt, merged_params), metrics=mstate,
                         step=new_step)
        return (out, busy) if profile is not None else out

    def train_fn(self, batch_size: int, steps: int = 1) -> Callable:
        """``(train_state, x, y, sw) -> train_state`` for this batch size; with
        ``steps > 1`` x/y/sw are ``steps`` stacked batches run one after another.
        Nothing blocks on the host: every stage program is dispatched asynchronously."""
        self._microbatches(batch_size, "fit")
        if steps == 1:
            return self._train_step

        def run(ts, xs, ys, sws):
            for i in range(steps):
                pick = lambda t: None if t is None else jax.tree_util.tree_map(  # noqa: E731
                    lambda a: a[i], t)
                ts = self._train_step(ts, pick(xs), pick(ys), pick(sws))
            return ts
        return run

    def profile_step(self, ts, x, y, sw):
        """Runs one training step blocking after every event (for benchmarks only).

        Returns ``(train_state, {"stage_busy_s": [...], "wall_s": float, "events":
        [(stage, mb, kind, start, end), ...]})``; busy time is the sum of the stage's
        event times. Blocking serialises the stages, so this ``wall_s`` has no overlap:
        measure the bubble as ``1 - mean(busy) / wall`` with ``wall`` from ordinary
        (asynchronously dispatched) steps, as ``benchmarks/parallel.py`` does.
        """
        events: list = []
        t0 = time.perf_counter()
        ts, busy = self._train_step(ts, x, y, sw, profile=events)
        jax.block_until_ready(ts)
        wall = time.perf_counter() - t0
        return ts, {"stage_busy_s": busy, "wall_s": wall,
                    "events": [(s, j, k, a - t0, b - t0) for s, j, k, a, b in events]}

    # --------------------------------------------------------------- eval, predict
    def _forward(self, kind, ts, x, y, sw, mstate, batch_size):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        n = int(xs[0].shape[0])
        m = self.microbatches if n % self.microbatches == 0 else 1
        mb = n // m
        self._current_mb = mb
        p, stages, last = self.num_stages, self.stages, self.stages[-1]
        params, state = self._by_stage(ts.params), self._by_stage(ts.state)
        divisors = scale = None
        if kind == "eval":
            y = _as_list(y, self.num_outputs, "targets")
            sw = None if sw is None else _as_list(sw, self.num_outputs, "sample weights")
            divisors, scale = self._divisors(ts, xs, y, sw, m), self._scale(m)
        xs, ys, sws = (self._split_batch(a, m) for a in (xs, y, sw))
        carried = [dict() for _ in stages]
        outputs = []
        for s, j, _ in (e for e in schedule_events(p, m, "gpipe") if e[2] == "F"):
            st = stages[s]
            vals, masks = carried[s].pop(j, ([], {}))
            fr = self._put_batch([xs[k] for k in st.fresh], st, j)
            if s < p - 1:
                outs, out_masks = self._call(kind, s, params[s], state[s], vals, masks, fr,
                                             None, None, None)
                carried[s + 1][j] = self._send(outs, out_masks, s + 1, mb)
            elif kind == "predict":
                outs, _ = self._call(kind, s, params[s], state[s], vals, masks, fr, None,
                                     None, None)
                outputs.append(outs)
            else:
                yj = self._put_batch(ys, last, j)
                swj = self._put_batch(sws, last, j)
                mstate = self._call(kind, s, params[s], state[s], vals, masks, fr, yj, swj,
                                    mstate, divisors, scale)
        if kind == "predict":
            return outputs[0] if m == 1 else self._program("concat", p - 1)(outputs)
        return mstate

    def evaluate(self, ts: TrainState, mstate, x, y, sw, batch_size: int):
        """Updates the packed metrics with one batch (microbatched when it divides)."""
        return self._forward("eval", ts, x, y, sw, mstate, batch_size)

    def predict(self, ts: TrainState, x, batch_size: int):
        """The model outputs (a list) for one batch."""
        return self._forward("predict", ts, x, None, None, None, batch_size)

    # ---------------------------------------------------------------------- memory
    def stage_memory_analysis(self, batch_size: int) -> list[dict]:
        """Per stage, the compiled memory of its training programs (bytes per device:
        temp + argument + output - aliased (donated), from ``compiled.memory_analysis()``),
        the bytes of one stashed microbatch of stage inputs, and the in-flight stash count
        of GPipe and 1F1B, giving ``peak_bytes = max(program) + inflight * stash`` (an upper
        bound on the last stage, whose fused program frees its inputs at once).

        Needs one training step of this batch size to have run (to know the shapes).
        """
        mb = batch_size // self.microbatches
        p, m = self.num_stages, self.microbatches
        inflight = {k: peak_inflight_microbatches(p, m, k) for k in SCHEDULES}
        rows = []
        for s, st in enumerate(self.stages):
            kinds = ("last",) if s == p - 1 else ("fwd", "bwd")
            programs = {}
            stash = 0
            for kind in kinds:
                sig = self._signatures.get((kind, s, mb))
                if sig is None:
                    raise ValueError(f"stage_memory_analysis: run a training step with "
                                     f"batch_size={batch_size} first. Received: "
                                     f"batch_size={batch_size}")
                compiled = self._program(kind, s).lower(*sig).compile()
                mem = compiled.memory_analysis()
                total = 0
                if mem is not None:
                    total = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                + mem.output_size_in_bytes - getattr(
                                    mem, "alias_size_in_bytes", 0))
                programs[kind] = total
                if kind in ("fwd", "last"):
                    # stage inputs kept per in-flight microbatch: carried values and masks
                    # plus fresh model inputs (args 2..4), per device.
                    stash = sum(_per_device_bytes(a) for a in
                                jax.tree_util.tree_leaves(sig[2:5]))
            program = max(programs.values())
            rows.append({"stage": s, "devices": list(self.plan.stages[s].device_ids),
                         "program_bytes": programs, "stash_bytes_per_microbatch": int(stash),
                         "inflight": {k: v[s] for k, v in inflight.items()},
                         "peak_bytes": {k: int(program + v[s] * stash)
                                        for k, v in inflight.items()}})
        return rows


def merge_microbatch_updates(layer, old: dict, updates: list) -> dict:
    """One step's update of ``layer``'s non-trainable weights from the values each
    microbatch assigned (each starting from ``old``): the layer's own
    ``merge_microbatch_updates(old, updates)`` when it has one (BatchNormalization
    combines its moving statistics), else the mean over microbatches."""
    hook = getattr(layer, "merge_microbatch_updates", None)
    if hook is not None:
        return hook(old, updates)
    if len(updates) == 1:
        return dict(updates[0])
    out = {}
    for w in updates[0]:
        stacked = jnp.stack([u[w] for u in updates])
        out[w] = jnp.mean(stacked.astype(jnp.promote_types(stacked.dtype, jnp.float32)), 0)
    return out


def _weight_free(fn, weights, inputs):
    """``fn(weights, inputs)`` as a function of only the inputs it reads, if it reads no
    weight: ``(g(read inputs), indices of the read inputs)``; else None. Found by dead-code
    elimination of its jaxpr, so ``g`` computes nothing ``fn``'s result does not need."""
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(weights, inputs)
    n_weights = len(jax.tree_util.tree_leaves(weights))
    kept, used_consts, used = pe.dce_jaxpr_consts(closed.jaxpr,
                                                  [True] * len(closed.jaxpr.outvars))
    if any(used[:n_weights]):
        return None
    consts = [c for c, u in zip(closed.consts, used_consts) if u]
    read = [i for i, u in enumerate(used[n_weights:]) if u]
    run = jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(kept, consts))
    tree = jax.tree_util.tree_structure(shape)

    def g(values):
        return jax.tree_util.tree_unflatten(tree, run(*values))
    return g, read


def _per_device_bytes(a) -> int:
    """Bytes of one device's shard of an abstract array."""
    try:
        shape = a.sharding.shard_shape(a.shape)
    except Exception:  # noqa: BLE001 - no usable sharding: count it whole
        shape = a.shape
    return int(np.prod(shape)) * jnp.dtype(a.dtype).itemsize


__all__ = ["PipelineExecutor", "merge_microbatch_updates", "schedule_events", "schedule_ticks",
           "peak_inflight_microbatches", "bubble_fraction", "SCHEDULES"]
