"""The runner protocol (``execution/state.py``): the SPMD and the pipeline runner take and
return the same TrainState structure and compute the same steps."""
import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, layers
from hybridnet.execution import Executor, TrainState, split_trainable
from hybridnet.execution.pipeline import PipelineExecutor
from hybridnet.planner.plan import LayerPlan, Plan, StagePlan
from jax.sharding import PartitionSpec as P


def _model():
    hybridnet.utils.set_random_seed(0)
    x = Input((6,), name="x")
    h = layers.Dense(8, activation="relu", name="d0")(x)
    h = layers.Dropout(0.0, name="drop")(h)
    h = layers.Dense(8, activation="tanh", name="d1")(h)
    out = layers.Dense(3, name="out")(h)
    model = Model(x, out)
    model.compile(hybridnet.optimizers.Adam(0.01), "mse", metrics=["mae"])
    model._resolve_compile_args()
    return model


def _plan(model, stages, device_ids):
    stage_of = {n: k for k, names in enumerate(stages or []) for n in names}
    lps = {layer.name: LayerPlan(layer.name, type(layer).__name__,
                                 weights={w: P() for w in layer.weight_specs},
                                 stage=stage_of.get(layer.name, 0))
           for layer in model.layers}
    if stages is None:
        return Plan(mesh_axes={"data": len(device_ids)}, device_ids=list(device_ids),
                    layers=lps, batch_axes=("data",))
    per = len(device_ids) // len(stages)
    stage_plans = [StagePlan(i, list(names), list(device_ids[i * per:(i + 1) * per]))
                   for i, names in enumerate(stages)]
    return Plan(mesh_axes={"pipe": len(stages), "data": per}, device_ids=list(device_ids),
                layers=lps, batch_axes=("data",), pipe_axis="pipe", stages=stage_plans,
                microbatches=2, schedule="1f1b")


def _runners(model):
    kwargs = dict(optimizer=model._tx, loss=model._compiled_loss,
                  metrics=model._compiled_metrics, num_outputs=1)
    mask = model._trainable_mask()
    ids = list(range(8))
    return {"spmd": Executor(model.graph.run, _plan(model, None, ids[:2]), mask, **kwargs),
            "pipeline": PipelineExecutor(model.graph, _plan(model, [["d0", "drop"],
                                                                    ["d1", "out"]], ids[:4]),
                                         mask, **kwargs)}


def _batch(seed, n=8):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 6)).astype("float32")], rng.normal(size=(n, 3)).astype(
        "float32")


def _run(runner, model, variables):
    params, state = split_trainable(runner.place_variables(variables),
                                    model._trainable_mask())
    ts = runner.new_state(params, state, rng=jax.random.PRNGKey(1))
    assert isinstance(ts, TrainState)
    fn = runner.train_fn(8)
    for i in range(2):
        x, y = _batch(i)
        x, y, _ = runner.put_batch((x, y, None), 8)
        ts = fn(ts, x, y, None)
    logs = {k: float(v) for k, v in runner.results(ts.metrics).items()}
    x, y = _batch(5)
    metrics = runner.evaluate(ts, runner.init_metrics(), x, y, None, 8)
    evaluated = {k: float(v) for k, v in runner.results(metrics).items()}
    predicted = np.asarray(runner.predict(ts, x, 8)[0])
    return ts, logs, evaluated, predicted


def test_spmd_and_pipeline_runners_share_the_protocol():
    model = _model()
    variables = jax.tree_util.tree_map(np.asarray, model.variables)
    results = {name: _run(r, model, variables) for name, r in _runners(model).items()}
    (ts_a, logs_a, ev_a, pred_a), (ts_b, logs_b, ev_b, pred_b) = results.values()
    # the same TrainState structure (optimizer state included) from both runners
    assert jax.tree_util.tree_structure(ts_a) == jax.tree_util.tree_structure(ts_b)
    assert jax.tree_util.tree_structure(ts_a.opt_state) == jax.tree_util.tree_structure(
        jax.eval_shape(model._tx.init, ts_a.params))
    assert int(ts_a.step) == int(ts_b.step) == 2
    for a, b in zip(jax.tree_util.tree_leaves(ts_a.params), jax.tree_util.tree_leaves(
            ts_b.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(ts_a.opt_state), jax.tree_util.tree_leaves(
            ts_b.opt_state)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    for k in logs_a:
        assert logs_b[k] == pytest.approx(logs_a[k], rel=1e-5)
        assert ev_b[k] == pytest.approx(ev_a[k], rel=1e-5)
    np.testing.assert_allclose(pred_b, pred_a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["spmd", "pipeline"])
def test_runner_restores_a_given_optimizer_state_and_learning_rate(name):
    model = _model()
    runner = _runners(model)[name]
    variables = jax.tree_util.tree_map(np.asarray, model.variables)
    ts, *_ = _run(runner, model, variables)
    host = jax.tree_util.tree_map(np.asarray, ts.opt_state)
    again = runner.new_state(ts.params, ts.state, opt_state=host, step=int(ts.step))
    for a, b in zip(jax.tree_util.tree_leaves(ts.opt_state),
                    jax.tree_util.tree_leaves(again.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.device_set == b.sharding.device_set
    slower = runner.set_learning_rate(again, 0.0)
    assert float(hybridnet.optimizers.get_learning_rate(slower.opt_state)) == 0.0
    x, y = _batch(9)
    before = jax.tree_util.tree_map(np.asarray, slower.params)
    after = runner.train_fn(8)(slower, x, y, None)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after.params)):
        np.testing.assert_array_equal(np.asarray(b), a)  # a zero rate changes nothing
    assert int(after.step) == int(ts.step) + 1


def test_a_whole_model_optimizer_state_moves_between_runners():
    """A state trained under the pipeline continues under SPMD (and back) unchanged:
    the optimizer state is stored by parameter path, not by stage."""
    model = _model()
    runners = _runners(model)
    variables = jax.tree_util.tree_map(np.asarray, model.variables)
    ts, *_ = _run(runners["pipeline"], model, variables)
    host = jax.tree_util.tree_map(np.asarray, ts)
    spmd = runners["spmd"]
    moved = spmd.new_state(*split_trainable(spmd.place_variables(host.variables),
                                            model._trainable_mask()),
                           opt_state=host.opt_state, step=int(host.step), rng=host.rng)
    x, y = _batch(7)
    a = spmd.train_fn(8)(moved, x, y, None)
    b = runners["pipeline"].train_fn(8)(ts, x, y, None)
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
