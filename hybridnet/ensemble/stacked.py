"""Homogeneous members as one program: a TrainState whose every leaf leads with a
member axis, one vmapped step for all members, members laid out along an "ensemble"
mesh axis.

The member's own plan (data parallel, or whatever its strategy asks) is made for a
slice of the local devices and widened by a leading ``"ensemble"`` mesh axis that none
of its weights or batches use; the stacked state is that plan's placement with
``"ensemble"`` prepended to every PartitionSpec. The steps are the member Executor's
own pure steps under ``jax.vmap(..., spmd_axis_name="ensemble")``, so every member
computes exactly what it computes alone.

Members keep being ordinary models: the group stacks their states when the Trainer
pulls and hands each its slice when the Trainer pushes, so callbacks, ``save`` and
``predict`` on one member see that member.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hybridnet import strategies as strategies_lib
from hybridnet.execution import Executor, TrainState

AXIS = "ensemble"


# ---------------------------------------------------------------------- homogeneity

def _layer_signature(layer) -> tuple:
    try:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "seed")}
    except (ValueError, NotImplementedError):
        config = {}
    weights = {w: (tuple(s.shape), str(s.dtype)) for w, s in layer.weight_specs.items()}
    return type(layer).__name__, repr(config), repr(weights), repr(layer._trainable_map())


def _optimizer_signature(model) -> tuple:
    config = {k: v for k, v in model.optimizer.get_config().items()
              if k not in ("learning_rate", "name")}
    return type(model.optimizer).__name__, repr(config)


def check_homogeneous(models) -> None:
    """Raises unless every model has the first one's architecture, optimizer (the
    learning rate may differ), losses, metrics and steps_per_execution: what running
    them as one vmapped program needs."""
    first = models[0]
    ref_layers = [_layer_signature(la) for la in first._graph_layers()]
    for i, model in enumerate(models[1:], 1):
        layers = [_layer_signature(la) for la in model._graph_layers()]
        problem = None
        if len(layers) != len(ref_layers):
            problem = f"it has {len(layers)} layers, member 0 has {len(ref_layers)}"
        else:
            for j, (a, b) in enumerate(zip(ref_layers, layers)):
                if a != b:
                    problem = (f"its layer {j} ('{model._graph_layers()[j].name}') is "
                               f"{b[0]} {b[1]} {b[2]}; member 0 has {a[0]} {a[1]} {a[2]}")
                    break
        if problem is None and _optimizer_signature(model) != _optimizer_signature(first):
            problem = (f"its optimizer is {_optimizer_signature(model)}; member 0 has "
                       f"{_optimizer_signature(first)} (only the learning rate may differ)")
        if problem is None and model.metrics_names != first.metrics_names:
            problem = (f"its metrics are {model.metrics_names}; member 0 has "
                       f"{first.metrics_names}")
        if problem is None and [type(f) for f in model._losses] != [
                type(f) for f in first._losses]:
            problem = "its losses differ from member 0's"
        if problem is None and model.steps_per_execution != first.steps_per_execution:
            problem = (f"steps_per_execution={model.steps_per_execution}; member 0 has "
                       f"{first.steps_per_execution}")
        if problem is not None:
            raise ValueError(
                f"Ensemble(stacked=True): member {i} ('{model.name}') cannot be stacked "
                f"with member 0 ('{first.name}'): {problem}. Stacked members share one "
                f"program; pass stacked=False to train different models side by side.")


# --------------------------------------------------------------------- random draws

def seed_generators(model) -> list:
    """The model's ``SeedGenerator``s in a fixed order (layer by layer, attribute by
    attribute, sublayers after their layer): homogeneous models list them alike."""
    from hybridnet.variables import SeedGenerator
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        attrs = vars(layer)
        found.extend(attrs[k] for k in sorted(attrs) if isinstance(attrs[k], SeedGenerator))
        for sub in layer._sublayers().values():
            walk(sub)
    for layer in model._graph_layers():
        walk(layer)
    return found


@contextlib.contextmanager
def _member_seeds(generators: list, seeds):
    """While a step is traced, the template's generators draw with the member's own
    layer seeds (traced values), so a stacked member draws what it draws alone."""
    saved = [g.seed for g in generators]
    try:
        for j, g in enumerate(generators):
            g.seed = seeds[j]
        yield
    finally:
        for g, seed in zip(generators, saved):
            g.seed = seed


# -------------------------------------------------------------------------- renaming

def _rename(tree, mapping: dict):
    """``tree`` with every dict key found in ``mapping`` renamed (layer names inside
    params, non-trainable state and optimizer slots)."""
    if isinstance(tree, dict):
        return type(tree)((mapping.get(k, k), _rename(v, mapping)) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_rename(v, mapping) for v in tree])
    if isinstance(tree, (tuple, list)):
        return type(tree)(_rename(v, mapping) for v in tree)
    return tree


def _rename_state(ts: TrainState, mapping: dict) -> TrainState:
    return ts.replace(params=_rename(ts.params, mapping), state=_rename(ts.state, mapping),
                      opt_state=_rename(ts.opt_state, mapping))


# --------------------------------------------------------------------------- runner

def _stacked(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(sharding.mesh, PartitionSpec(AXIS, *sharding.spec))


def _where(active, new, old):
    return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)


class StackedRunner:
    """Runs ``n`` copies of one model's steps as one program over a stacked TrainState.

    Args:
        template: a compiled, built model: its graph, optimizer, loss and metrics are
            every member's (weights, optimizer state, learning rate, step and RNG are
            per member, in the state).
        n: the number of members.
        devices: the devices to lay the members over (default: the local devices). The
            "ensemble" axis is ``gcd(n, len(devices))`` long; each slot runs a member's
            plan over the remaining devices (data parallel by default).
    """

    def __init__(self, template, n: int, devices=None, seeds=None):
        devices = list(devices if devices is not None else jax.local_devices())
        slots = math.gcd(n, len(devices))
        per_member = len(devices) // slots
        strategy = strategies_lib.get(template._strategy_request())
        if getattr(strategy, "devices", None) is None and dataclasses.is_dataclass(strategy):
            strategy = dataclasses.replace(strategy, devices=devices[:per_member])
        plan = template.make_plan(strategy, batch_size=getattr(
            template, "_planned_batch_size", None))
        if len(plan.stages) > 1:
            raise ValueError(f"Ensemble(stacked=True): member '{template.name}' plans a "
                             f"pipeline of {len(plan.stages)} stages; stacked members need "
                             f"a single-stage plan. Pass stacked=False.")
        if plan.num_devices != per_member:
            raise ValueError(f"Ensemble(stacked=True): each of the {slots} ensemble slots "
                             f"has {per_member} devices, and member '{template.name}' "
                             f"plans for {plan.num_devices}. Received: strategy={strategy!r}")
        ids = [d.id for d in devices[:slots * per_member]]
        self.plan = dataclasses.replace(plan, mesh_axes={AXIS: slots, **plan.mesh_axes},
                                        device_ids=ids)
        self.n = n
        self.executor = Executor(template.graph.run, self.plan, template._runner_mask,
                                 optimizer=template._tx, loss=template._compiled_loss,
                                 metrics=template._compiled_metrics,
                                 num_outputs=len(template.outputs))
        self.mesh = self.executor.mesh
        self._members = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._generators = seed_generators(template)
        if seeds is None:
            seeds = np.tile([g.seed for g in self._generators], (n, 1))
        self._seeds = jax.device_put(np.asarray(seeds, np.uint32).reshape(
            n, len(self._generators)), self._members)
        self._sharding = None
        self._compiled: dict = {}

    # --------------------------------------------------------------- placement
    def state_sharding(self, example: TrainState) -> TrainState:
        """The stacked state's shardings, from one member's (unstacked) state."""
        if self._sharding is None:
            ex = self.executor
            if ex.tx is not None:
                ex.opt_sharding = ex._opt_state_sharding(example.params)
            self._sharding = jax.tree_util.tree_map(_stacked, ex.train_state_sharding())
        return self._sharding

    def stack(self, states: list) -> TrainState:
        """One stacked, placed TrainState from the members' states (template names)."""
        sharding = self.state_sharding(states[0])
        fn = self._compiled.get("stack")
        if fn is None:
            fn = self._compiled["stack"] = jax.jit(
                lambda *s: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *s),
                out_shardings=sharding)
        return fn(*states)

    def unstack(self, ts: TrainState) -> list:
        fn = self._compiled.get("unstack")
        if fn is None:
            fn = self._compiled["unstack"] = jax.jit(lambda s: [
                jax.tree_util.tree_map(lambda a, i=i: a[i], s) for i in range(self.n)])
        return fn(ts)

    def put_active(self, flags) -> jax.Array:
        return jax.device_put(np.asarray(flags, bool), self._members)

    def put_batch(self, batch, batch_size: int, steps: int = 1):
        return self.executor.put_batch(batch, batch_size, steps)

    # -------------------------------------------------------------------- steps
    def _vmap(self, fn, in_axes):
        return jax.vmap(self.executor._placed(fn), in_axes=in_axes, spmd_axis_name=AXIS)

    def train_fn(self, batch_size: int, steps: int = 1):
        """The compiled ``(stacked state, x, y, sw, active) -> stacked state``: every
        member whose ``active`` entry is True takes the step; the others keep their
        state. The state is donated."""
        key = ("train", batch_size, steps)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        ex = self.executor
        ts_sh = self._sharding
        batch_sh = ex.batch_sharding(batch_size)
        if steps > 1:
            batch_sh = NamedSharding(self.mesh, PartitionSpec(None, *batch_sh.spec))

        def build(body):
            def seeded(ts, x, y, sw, seeds):
                with _member_seeds(self._generators, seeds):
                    return body(ts, x, y, sw)
            vmapped = self._vmap(seeded, (0, None, None, None, 0))

            def step(ts, x, y, sw, active, seeds):
                new = vmapped(ts, x, y, sw, seeds)
                return jax.tree_util.tree_map(functools.partial(_where, active), new, ts)
            jitted = jax.jit(step, in_shardings=(ts_sh, batch_sh, batch_sh, batch_sh,
                                                 self._members, self._members),
                             out_shardings=ts_sh, donate_argnums=0)
            return lambda ts, x, y, sw, active: jitted(ts, x, y, sw, active, self._seeds)
        if steps == 1:
            fn = build(ex._train_step)
        else:
            jitted = {}

            def fn(ts, xs, ys, sws, active):
                if not jitted:
                    one = jax.tree_util.tree_map(
                        lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), ts)
                    unroll = ex._unroll_steps(one, xs, ys, sws)
                    jitted["fn"] = build(functools.partial(ex._train_steps, unroll=unroll))
                return jitted["fn"](ts, xs, ys, sws, active)
        self._compiled[key] = fn
        return fn

    def init_metrics(self):
        return jax.device_put(np.broadcast_to(self.executor._packed.initial,
                                              (self.n,) + self.executor._packed.initial.shape),
                              self._members)

    def reset_metrics(self, ts: TrainState, active) -> TrainState:
        fn = self._compiled.get("reset")
        if fn is None:
            fn = self._compiled["reset"] = jax.jit(lambda m, fresh, a: _where(a, fresh, m))
        return ts.replace(metrics=fn(ts.metrics, self.init_metrics(), active))

    def results(self, metrics) -> list:
        """Each member's metric values (device arrays, dispatched now)."""
        fn = self._compiled.get("results")
        if fn is None:
            fn = self._compiled["results"] = jax.jit(jax.vmap(self.executor._packed.results))
        values = fn(metrics)
        return [{k: v[i] for k, v in values.items()} for i in range(self.n)]

    def evaluate(self, ts: TrainState, metrics, x, y, sw, batch_size: int):
        key = ("eval", batch_size)
        fn = self._compiled.get(key)
        if fn is None:
            b = self.executor.batch_sharding(batch_size)
            sh = self._sharding
            fn = self._compiled[key] = jax.jit(
                self._vmap(self.executor._eval_step, (0, 0, 0, None, None, None)),
                in_shardings=(sh.params, sh.state, self._members, b, b, b),
                out_shardings=self._members)
        return fn(ts.params, ts.state, metrics, x, y, sw)

    def predict(self, ts: TrainState, x, batch_size: int) -> list:
        """Each member's outputs (a list per member) for one batch, as NumPy arrays."""
        key = ("predict", batch_size)
        fn = self._compiled.get(key)
        if fn is None:
            b = self.executor.batch_sharding(batch_size)
            sh = self._sharding
            fn = self._compiled[key] = jax.jit(
                self._vmap(self.executor._predict_step, (0, 0, None)),
                in_shardings=(sh.params, sh.state, b))
        outputs = [np.asarray(o) for o in fn(ts.params, ts.state, x)]
        return [[o[i] for o in outputs] for i in range(self.n)]


# --------------------------------------------------------------------------- group

class StackedGroup:
    """Models run as one stacked program by a Trainer (what ``Trainer`` calls a member
    group: ``models`` and ``_trainer_member()``).

    Example:
        >>> Trainer([StackedGroup([m1, m2, m3, m4])]).fit(x, y)
    """

    def __init__(self, models, devices=None):
        self.models = list(models)
        self.devices = devices
        self.runner: StackedRunner | None = None
        self.state: TrainState | None = None
        self._committed: list | None = None
        self._to_template: list = []
        self._from_template: list = []
        if all(m.built for m in self.models):  # else at the first batch, once built
            self._check()

    def _check(self):
        check_homogeneous(self.models)
        ref = [la.name for la in self.models[0]._weighted_layers()]
        names = [[la.name for la in m._weighted_layers()] for m in self.models]
        self._to_template = [dict(zip(own, ref)) for own in names]
        self._from_template = [dict(zip(ref, own)) for own in names]

    def _trainer_member(self):
        return _StackedMember(self)

    def _runner(self) -> StackedRunner:
        if self.runner is None:
            if not self._to_template:
                self._check()
            seeds = [[g.seed for g in seed_generators(m)] for m in self.models]
            self.runner = StackedRunner(self.models[0], len(self.models), self.devices, seeds)
        return self.runner

    def pull(self) -> TrainState:
        """The stacked state of the members' current states (restacked only when a
        member's state changed since the last push)."""
        runner = self._runner()
        states = [m._current_state() for m in self.models]
        if self._committed is not None and self.state is not None and self.state.is_live() \
                and all(a is b for a, b in zip(states, self._committed)):
            return self.state
        self.state = runner.stack([_rename_state(ts, mapping)
                                   for ts, mapping in zip(states, self._to_template)])
        self._committed = states
        return self.state

    def push(self, ts: TrainState) -> None:
        """Hands each member its slice of ``ts``, placed as its own plan says."""
        self.state = ts
        slices = self.runner.unstack(ts)
        committed = []
        for model, part, mapping in zip(self.models, slices, self._from_template):
            part = _rename_state(part, mapping)
            placed = jax.device_put(part, model._get_runner().train_state_sharding())
            model._commit_state(placed)
            committed.append(model._current_state())
        self._committed = committed


class _StackedMember:
    """The Trainer's member for a :class:`StackedGroup` (see ``training.trainer``)."""

    def __init__(self, group: StackedGroup):
        self.group = group
        self.models = group.models
        self.runner = None
        self.state = None
        self._active = None

    def pull(self):
        self.state = self.group.pull()
        self.runner = self.group.runner
        self._active = self.runner.put_active([not m.stop_training for m in self.models])

    def push(self):
        if self.state is not None and self.state.is_live():
            self.group.push(self.state)

    def active(self) -> bool:
        return not all(m.stop_training for m in self.models)

    def train_fn(self, batch_size: int, steps: int = 1):
        fn = self.runner.train_fn(batch_size, steps)
        return lambda ts, x, y, sw: fn(ts, x, y, sw, self._active)

    def reset_metrics(self):
        self.state = self.runner.reset_metrics(self.state, self._active)

    def results(self, metrics) -> list:
        return self.runner.results(metrics)

    def init_metrics(self):
        return self.runner.init_metrics()

    def evaluate(self, metrics, x, y, sw, batch_size):
        return self.runner.evaluate(self.state, metrics, x, y, sw, batch_size)

    def predict(self, x, batch_size) -> list:
        return self.runner.predict(self.state, x, batch_size)


__all__ = ["AXIS", "StackedGroup", "StackedRunner", "check_homogeneous"]
