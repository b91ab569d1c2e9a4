"""The train state: one value, and the protocol every runner implements over it.

A ``TrainState`` is a pytree holding everything a training step reads and writes:

* ``params``: trainable weights, ``{layer name: {weight name: array}}``;
* ``state``: non-trainable weights (BatchNorm moving statistics), same layout;
* ``opt_state``: the optax state of ``params``, for the whole model, whatever the plan
  (a pipeline keeps each leaf on its stage's devices, but the structure is the one
  ``tx.init(params)`` gives);
* ``metrics``: the packed metric accumulators of the running epoch (one float vector);
* ``step``: int32 count of completed training steps;
* ``rng``: the base PRNG key; step ``t`` draws from ``fold_in(rng, t)``.

A step takes one state and returns a new one; the old one is donated. Whoever holds
a state replaces it whole, never field by field.

The runner protocol (``execution.Executor`` for SPMD plans and
``execution.pipeline.PipelineExecutor`` for pipelines implement it; one shared test
checks both):

``runner.plan``
    The Plan it runs.
``runner.init_variables(init_fn, key) -> variables``
    Weights created by ``init_fn(key)`` already placed (and sharded) as the plan says.
``runner.place_variables(variables) -> variables``
    Existing arrays moved to the plan's placement (a no-op for those already there).
``runner.new_state(params, state, opt_state=None, step=0, rng=None) -> TrainState``
    A placed TrainState; ``opt_state=None`` creates it sharded like the parameters.
``runner.train_fn(batch_size, steps=1) -> fn(TrainState, x, y, sw) -> TrainState``
    One compiled step (or ``steps`` stacked batches in one dispatch).
``runner.put_batch(batch, batch_size, steps=1)``
    Host arrays onto the devices the step reads them from (for prefetch).
``runner.init_metrics()``, ``runner.results(metrics) -> {name: scalar array}``
    Fresh packed metric state; its values.
``runner.evaluate(ts, metrics, x, y, sw, batch_size) -> metrics``
    One evaluation batch folded into ``metrics``.
``runner.predict(ts, x, batch_size) -> [outputs]``
``runner.set_learning_rate(ts, value) -> TrainState``
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, init=False)
class TrainState:
    """Everything one training step reads and writes, as one pytree (see module doc).

    Example:
        >>> ts = model.train_state          # the model's current state
        >>> ts.step, ts.params["dense"]["kernel"].shape
    """
    params: dict
    state: dict
    opt_state: Any
    metrics: Any
    step: Any
    rng: Any

    def __init__(self, params, state, opt_state, metrics, step, rng):
        # Every compiled step rebuilds one (unflattening its output): the frozen
        # dataclass's generated __init__ costs about twice as much per step.
        fields = self.__dict__
        fields["params"], fields["state"], fields["opt_state"] = params, state, opt_state
        fields["metrics"], fields["step"], fields["rng"] = metrics, step, rng

    @classmethod
    def create(cls, params, state, opt_state, metrics, step=0, rng=None, *, sharding):
        """A new state with ``step`` (int32) and ``rng`` (default ``PRNGKey(0)``) put on
        ``sharding`` (the runner's replicated sharding)."""
        from hybridnet.execution.processes import put_host

        def put(value):
            if (jax.process_count() == 1 or isinstance(value, jax.core.Tracer)
                    or isinstance(value, jax.Array) and not value.is_fully_addressable):
                return jax.device_put(value, sharding)
            return put_host(np.asarray(value), sharding)
        return cls(params=params, state=state, opt_state=opt_state, metrics=metrics,
                   step=put(np.asarray(step, np.int32)),
                   rng=put(jax.random.PRNGKey(0) if rng is None else rng))

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)

    @property
    def variables(self) -> dict:
        """Trainable and non-trainable weights merged: layer -> weight -> array."""
        out = {k: dict(v) for k, v in self.params.items()}
        for layer, values in self.state.items():
            out.setdefault(layer, {}).update(values)
        return out

    def is_live(self) -> bool:
        """False when any array has been donated or deleted."""
        return not any(getattr(a, "is_deleted", lambda: False)()
                       for a in jax.tree_util.tree_leaves(self))
