"""Pipeline executor on 8 simulated devices computes what one device computes."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import hybridnet
from hybridnet import Input, Model, Sequential, layers
from hybridnet.execution.pipeline import (PipelineExecutor, peak_inflight_microbatches,
                                          schedule_events, schedule_ticks)
from hybridnet.execution.steps import Executor, split_trainable
from hybridnet.planner.plan import LayerPlan, Plan, StagePlan


# ---------------------------------------------------------------------------- models

def _mlp():
    hybridnet.utils.set_random_seed(0)
    return Sequential([Input((12,)), layers.Dense(16, activation="relu"),
                       layers.Dense(16, activation="tanh"), layers.Dense(16, activation="relu"),
                       layers.Dense(10, activation="softmax")])


def _cnn(batchnorm=False):
    hybridnet.utils.set_random_seed(0)
    return Sequential([Input((8, 8, 1)), layers.Conv2D(4, 3, padding="same", activation="relu")]
                      + ([layers.BatchNormalization()] if batchnorm else [])
                      + [layers.MaxPooling2D(2), layers.Conv2D(4, 3, padding="same",
                                                              activation="relu"),
                         layers.Flatten(), layers.Dense(10, activation="softmax")])


def _residual():
    """Two inputs, two outputs: ``x0`` skips stages into an Add, the second input enters
    at the last stage and the ``aux`` output is computed on the first stage."""
    hybridnet.utils.set_random_seed(0)
    a, b = Input((12,), name="a"), Input((3,), name="b")
    x0 = layers.Dense(16, activation="tanh", name="d0")(a)
    aux = layers.Dense(2, name="aux")(x0)
    h = layers.Dense(16, activation="relu", name="d1")(x0)
    h = layers.Dense(16, activation="relu", name="d2")(h)
    h = layers.Dense(16, activation="tanh", name="d3")(h)
    h = layers.Add(name="add")([x0, h])
    h = layers.Concatenate(name="cat")([h, b])
    out = layers.Dense(10, activation="softmax", name="out")(h)
    return Model([a, b], [out, aux])


def _data(model, n=16, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n,) + t.shape[1:]).astype("float32") for t in model.inputs]
    y = rng.integers(0, 10, n).astype("int32")
    if len(model.outputs) == 2:
        return xs, [y, rng.normal(size=(n, 2)).astype("float32")]
    return xs, y


def _compile(model, optimizer=None):
    multi = len(model.outputs) > 1
    model.compile(optimizer or hybridnet.optimizers.SGD(0.1),
                  ["sparse_categorical_crossentropy", "mse"] if multi
                  else "sparse_categorical_crossentropy",
                  metrics=[["accuracy"], []] if multi else ["accuracy"])
    if not hasattr(model, "_compiled_loss"):
        model._resolve_compile_args()
    return model


# ----------------------------------------------------------------------------- plans

def _layer_names(model):
    return list(dict.fromkeys(node.layer.name for node in model.graph.nodes))


def _split(names, p):
    bounds = np.linspace(0, len(names), p + 1).round().astype(int)
    return [names[bounds[k]:bounds[k + 1]] for k in range(p)]


def _plan(model, stages, mesh_axes, microbatches=4, schedule="gpipe"):
    """A hand-made plan: replicated weights, batch over "data", one stage per pipe slot."""
    stage_of = {n: k for k, names in enumerate(stages) for n in names}
    lps = {layer.name: LayerPlan(layer.name, type(layer).__name__,
                                 weights={w: P() for w in layer.weight_specs},
                                 stage=stage_of.get(layer.name, 0))
           for layer in model.layers}
    per = 8 // len(stages)
    return Plan(mesh_axes=mesh_axes, device_ids=list(range(8)), layers=lps,
                batch_axes=("data",), pipe_axis="pipe" if len(stages) > 1 else None,
                stages=[StagePlan(k, list(names), list(range(k * per, (k + 1) * per)))
                        for k, names in enumerate(stages)],
                microbatches=microbatches, schedule=schedule)


def _one_device_plan(model):
    lps = {layer.name: LayerPlan(layer.name, type(layer).__name__,
                                 weights={w: P() for w in layer.weight_specs})
           for layer in model.layers}
    return Plan(mesh_axes={"data": 1}, device_ids=[0], layers=lps, batch_axes=("data",))


def _kwargs(model, **extra):
    return dict(optimizer=model._tx, loss=model._compiled_loss, metrics=model._compiled_metrics,
                num_outputs=len(model.outputs), **extra)


def _train(executor, model, steps=3, n=16, init=None):
    """Per step: (loss, params as numpy); fresh metrics each step so 'loss' is that step's."""
    variables = _initial_variables(model) if init is None else init
    params, state = split_trainable(executor.place_variables(variables),
                                    model._trainable_mask())
    ts = executor.new_state(params, state, rng=jax.random.PRNGKey(3))
    fn = executor.train_fn(n)
    history = []
    for i in range(steps):
        xs, y = _data(model, n, seed=i)
        ts = fn(ts.replace(metrics=executor.init_metrics()), xs, y, None)
        logs = {k: float(v) for k, v in executor.results(ts.metrics).items()}
        history.append((logs, jax.tree_util.tree_map(np.asarray, ts.params),
                        jax.tree_util.tree_map(np.asarray, ts.state)))
    return history, ts


def _initial_variables(model):
    """The model's initial weights as host arrays (each runner places its own copy)."""
    return jax.tree_util.tree_map(np.asarray, model.variables)


def _reference(model, **kw):
    ex = Executor(model.graph.run, _one_device_plan(model), model._trainable_mask(),
                  **_kwargs(model, **kw))
    return _train(ex, model)


def _assert_same(ref, got):
    for (l1, p1, s1), (l2, p2, s2) in zip(ref, got):
        assert l1.keys() == l2.keys()
        for k in l1:
            np.testing.assert_allclose(l2[k], l1[k], rtol=1e-5, atol=1e-6, err_msg=k)
        for a, b in zip(jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p2, s2))):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


MESHES = {2: {"pipe": 2, "data": 4}, 4: {"pipe": 4, "data": 2}}
CASES = [(m, p, s) for m in ("mlp", "cnn", "residual") for p in (2, 4) for s in ("gpipe", "1f1b")]


_REFERENCES: dict = {}


def _model_and_reference(kind):
    """One model and its single-device run per kind, shared by the parametrized cases."""
    if kind not in _REFERENCES:
        model = _compile({"mlp": _mlp, "cnn": _cnn, "residual": _residual}[kind]())
        _REFERENCES[kind] = (model, _reference(model)[0])
    return _REFERENCES[kind]


@pytest.mark.parametrize("kind,p,schedule", CASES)
def test_matches_one_device(kind, p, schedule):
    model, ref = _model_and_reference(kind)
    names = _layer_names(model)
    if kind == "residual":  # x0 (stage 0) skips into the Add of the last stage
        stages = ([["d0", "aux", "d1", "d2"], ["d3", "add", "cat", "out"]] if p == 2 else
                  [["d0", "aux"], ["d1"], ["d2"], ["d3", "add", "cat", "out"]])
    else:
        stages = _split(names, p)
    ex = PipelineExecutor(model.graph, _plan(model, stages, MESHES[p], 4, schedule),
                          model._trainable_mask(), **_kwargs(model))
    got, ts = _train(ex, model)
    _assert_same(ref, got)
    # Weights live on their stage's sub-mesh, replicated over its data axis.
    for layer, values in ts.params.items():
        devices = set(ex.plan.stages[ex.stage_of(layer)].device_ids)
        assert {d.id for d in values["kernel"].sharding.device_set} == devices
    # One optimizer state for the whole model, as on one device; each parameter slot
    # on its stage's devices.
    one = jax.eval_shape(model._tx.init, ts.params)
    assert jax.tree_util.tree_structure(ts.opt_state) == jax.tree_util.tree_structure(one)
    for path, leaf in jax.tree_util.tree_flatten_with_path(ts.opt_state)[0]:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if len(keys) >= 2 and keys[-2] in ts.params:
            devices = set(ex.plan.stages[ex.stage_of(keys[-2])].device_ids)
            assert {d.id for d in leaf.sharding.device_set} == devices


def test_boundaries_of_a_functional_graph():
    model = _residual()
    ex = PipelineExecutor(model.graph, _plan(model, [["d0", "aux"], ["d1"], ["d2"],
                                                     ["d3", "add", "cat", "out"]],
                                             MESHES[4]), model._trainable_mask())
    x0 = model.get_layer("d0")._inbound_nodes[0].outputs
    aux = model.outputs[1]
    assert ex.stages[0].fresh == [0] and ex.stages[3].fresh == [1]
    for s in (1, 2):  # x0 and the aux output cross the middle stages untouched
        assert x0 in ex.stages[s].carry_in and aux in ex.stages[s].carry_in
    assert ex.stages[3].carry_out == list(model.outputs)


def test_batchnorm_one_microbatch_matches_and_microbatched_updates_sequentially():
    model = _compile(_cnn(batchnorm=True))
    ref, _ = _reference(model)
    stages = _split(_layer_names(model), 2)
    ex = PipelineExecutor(model.graph, _plan(model, stages, MESHES[2], 1, "1f1b"),
                          model._trainable_mask(), **_kwargs(model))
    got, _ = _train(ex, model)
    _assert_same(ref, got)  # m == 1: identical, moving statistics included
    ex4 = PipelineExecutor(model.graph, _plan(model, stages, MESHES[2], 4, "1f1b"),
                           model._trainable_mask(), **_kwargs(model))
    got4, _ = _train(ex4, model, steps=1)
    bn = [n for n in _layer_names(model) if "batch" in n][0]
    moving = got4[0][2][bn]["moving_mean"]
    initial = np.zeros_like(moving)
    assert np.all(np.isfinite(moving)) and not np.allclose(moving, initial)


def test_dropout_keys_are_per_microbatch_and_reproducible():
    hybridnet.utils.set_random_seed(0)
    model = _compile(Sequential([Input((12,)), layers.Dense(16), layers.Dropout(0.5),
                                 layers.Dense(10, activation="softmax")]))
    stages = _split(_layer_names(model), 2)

    def run():
        ex = PipelineExecutor(model.graph, _plan(model, stages, MESHES[2], 4, "gpipe"),
                              model._trainable_mask(), **_kwargs(model))
        return _train(ex, model, steps=2)[0]
    a, b = run(), run()
    for (la, pa, _), (lb, pb, _) in zip(a, b):
        assert la == lb
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_array_equal(x, y)


def test_global_clipnorm_is_computed_across_stages():
    """Clipping by the norm over all stages equals whole-model clipping."""
    opt = hybridnet.optimizers.SGD(0.1, global_clipnorm=0.05)
    model = _compile(_mlp(), opt)
    ref, _ = _reference(model)
    ex = PipelineExecutor(model.graph, _plan(model, _split(_layer_names(model), 2), MESHES[2]),
                          model._trainable_mask(), **_kwargs(model, global_clipnorm=0.05))
    got, _ = _train(ex, model)
    _assert_same(ref, got)


def test_evaluate_and_predict_match_one_device():
    model = _compile(_residual())
    one = Executor(model.graph.run, _one_device_plan(model), model._trainable_mask(),
                   **_kwargs(model))
    ex = PipelineExecutor(model.graph, _plan(model, [["d0", "aux", "d1"], ["d2", "d3", "add",
                                                                            "cat", "out"]],
                                             MESHES[2], 4, "1f1b"),
                          model._trainable_mask(), **_kwargs(model))
    variables = _initial_variables(model)
    for n in (16, 6):  # 6 does not split into 4 microbatches: one microbatch
        xs, y = _data(model, n)
        results = []
        for e in (one, ex):
            params, state = split_trainable(e.place_variables(variables),
                                            model._trainable_mask())
            ts = e.new_state(params, state)
            m = e.evaluate(ts, e.init_metrics(), xs, y, None, n)
            results.append(({k: float(v) for k, v in e.results(m).items()},
                            [np.asarray(o) for o in e.predict(ts, xs, n)]))
        (r1, o1), (r2, o2) = results
        for k in r1:
            np.testing.assert_allclose(r2[k], r1[k], rtol=1e-5, err_msg=k)
        for a, b in zip(o1, o2):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_bad_microbatches_and_non_contiguous_stages_raise():
    model = _compile(_mlp())
    names = _layer_names(model)
    ex = PipelineExecutor(model.graph, _plan(model, _split(names, 2), MESHES[2], 4),
                          model._trainable_mask(), **_kwargs(model))
    from hybridnet.planner import check_batch
    with pytest.raises(ValueError, match=r"4 equal microbatches. Received: batch_size=10"):
        check_batch(ex.plan, 10)
    bad = [[names[0], names[2]], [names[1], names[3]]]
    with pytest.raises(ValueError, match=f"layer '{names[2]}' \\(stage 0\\) reads"):
        PipelineExecutor(model.graph, _plan(model, bad, MESHES[2], 4), model._trainable_mask(),
                         **_kwargs(model))


def test_memory_analysis_and_profile():
    model = _compile(_mlp())
    ex = PipelineExecutor(model.graph, _plan(model, _split(_layer_names(model), 4), MESHES[4],
                                             4, "1f1b"), model._trainable_mask(),
                          **_kwargs(model))
    _, ts = _train(ex, model, steps=1)
    rows = ex.stage_memory_analysis(16)
    assert len(rows) == 4
    for row in rows:
        assert row["inflight"]["gpipe"] == 4 and row["inflight"]["1f1b"] <= 4 - row["stage"]
        assert row["peak_bytes"]["1f1b"] <= row["peak_bytes"]["gpipe"]
        assert all(v > 0 for v in row["program_bytes"].values())
    xs, y = _data(model)
    ts, prof = ex.profile_step(ts, xs, y, None)
    assert len(prof["stage_busy_s"]) == 4 and prof["wall_s"] >= max(prof["stage_busy_s"])


# ------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("p,m", [(1, 1), (2, 4), (4, 4), (4, 2), (3, 7)])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_schedule_events(p, m, schedule):
    events = schedule_events(p, m, schedule)
    assert sorted(events) == sorted((s, j, k) for s in range(p) for j in range(m)
                                    for k in "FB")
    pos = {e: i for i, e in enumerate(events)}
    for s in range(p):
        for j in range(m):
            if s > 0:
                assert pos[(s - 1, j, "F")] < pos[(s, j, "F")]
            if s < p - 1:
                assert pos[(s + 1, j, "B")] < pos[(s, j, "B")]
            assert pos[(s, j, "F")] < pos[(s, j, "B")]
    peak = peak_inflight_microbatches(p, m, schedule)
    if schedule == "1f1b":
        assert all(peak[s] <= min(p - s, m) for s in range(p))
        assert max(peak) <= p
    else:
        assert peak == [m] * p
    # Both schedules take 2 * (m + p - 1) ticks: same bubble, less memory for 1F1B.
    assert len(schedule_ticks(p, m, schedule)) == 2 * (m + p - 1)


def test_schedule_rejects_unknown():
    with pytest.raises(ValueError, match="schedule"):
        schedule_events(2, 2, "zigzag")


def test_steps_per_execution_runs_stacked_batches():
    model = _compile(_mlp())
    plan = _plan(model, _split(_layer_names(model), 2), MESHES[2], 4, "1f1b")
    one = PipelineExecutor(model.graph, plan, model._trainable_mask(), **_kwargs(model))
    two = PipelineExecutor(model.graph, plan, model._trainable_mask(), **_kwargs(model))
    _, ts1 = _train(one, model, steps=2)
    _, ts2 = _train(two, model, steps=0)
    batches = [_data(model, 16, seed=i) for i in range(2)]
    xs = [np.stack([b[0][0] for b in batches])]
    ys = np.stack([b[1] for b in batches])
    ts2 = two.train_fn(16, steps=2)(ts2, xs, ys, None)
    assert int(ts2.step) == 2
    for a, b in zip(jax.tree_util.tree_leaves(ts1.params),
                    jax.tree_util.tree_leaves(ts2.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
