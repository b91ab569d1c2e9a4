"""The planner refuses or adapts every plan a batch cannot run, checks stages against the
graph's dependencies, and says every change of what was asked (issue 13, items 5-7)."""
import re
import warnings

import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, layers
from hybridnet.planner import make_plan
from hybridnet.planner.feasibility import batch_split, check_batch_size, check_plan
from hybridnet.strategies import Auto, DataParallel, Hybrid, ModelParallel, Pipeline

TIGHT = 40e3  # bytes: the MLP does not fit one CPU device, so Auto must shard or pipeline


def mlp(units=64, depth=4, out=8, **kwargs):
    hybridnet.utils.set_random_seed(0)
    return Sequential([Input((units,))] + [layers.Dense(units, activation="relu")
                                           for _ in range(depth)] + [layers.Dense(out, **kwargs)])


def branchy(order, stage_of_a=0, stage_of_b=1):
    """input -> a -> c, input -> b, Add over (c, b) in either order."""
    hybridnet.utils.set_random_seed(0)
    inp = Input((8,))
    a = layers.Dense(8, stage=stage_of_a, name="a")(inp)
    c = layers.Dense(8, stage=1, name="c")(a)
    b = layers.Dense(8, stage=stage_of_b, name="b")(inp)
    s = layers.Add(name="add")([c, b] if order == "cb" else [b, c])
    return Model(inp, layers.Dense(4, name="out")(s))


def _data(n, units=64, out=8):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, units)).astype("float32"),
            rng.integers(0, out, size=(n,)).astype("int32"))


def _fit_one_step(model, strategy, batch):
    x, y = _data(batch)
    model.compile("sgd", hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  strategy=strategy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return history, [str(w.message) for w in caught]


# ----------------------------------------------------------------------- item 5: Auto

@pytest.mark.parametrize("limit", [None, TIGHT])
def test_auto_plans_run_the_batch_they_were_made_for_on_8_devices(limit):
    """Before: Auto(memory_limit=40e3) at batch 8 chose 8 microbatches of 1 sample over a
    data-parallel size of 2, and fit refused the very batch it was planned for."""
    for batch in (8, 12, 16, 128) if limit is None else (8, 12):
        model = mlp()
        plan = model.make_plan(Auto(memory_limit=limit), batch_size=batch)
        result = check_plan(plan, batch, model.layer_infos())
        assert result.ok and not result.changes, (batch, result, plan.summary())
        per = batch // (plan.microbatches if len(plan.stages) > 1 else 1)
        assert per % plan.data_parallel_size == 0
        history, said = _fit_one_step(model, Auto(memory_limit=limit), batch)
        assert np.isfinite(history.history["loss"][0])
        assert model.plan.mesh_axes == plan.mesh_axes
        assert not [w for w in said if "replicated" in w], said


@pytest.mark.parametrize("devices", [64, 512])
def test_auto_plans_pass_the_fit_check_for_clusters_not_here(devices):
    """Before: at 512 devices and batch 128 Auto chose a mesh splitting each microbatch of
    16 samples 128 ways (the batch ran replicated) and costed it as split."""
    infos = mlp().layer_infos()
    for batch in (8, 12, 16, 128):
        plan = make_plan(infos, Auto(device_kind="h100"), devices=devices, batch_size=batch)
        result = check_plan(plan, batch, infos)
        assert result.ok and not result.changes, (devices, batch, result, plan.notes)
        ways = plan.data_parallel_size
        micro = plan.microbatches if len(plan.stages) > 1 else 1
        assert (batch // micro) % ways == 0 and batch_split(plan, batch) == ways
        assert plan.num_devices <= devices
        if plan.num_devices < devices:
            assert any(f"Auto uses {plan.num_devices} of {devices} devices" in c
                       for c in plan.changes), plan.notes


def test_auto_notes_give_the_real_reasons():
    """Before: at batch 12 on 8 devices the note said 'no single-stage plan fits in
    64.00 GB per device' when single-stage meshes had only been skipped for divisibility."""
    infos = mlp().layer_infos()
    plan = make_plan(infos, Auto(), devices=8, batch_size=12)
    text = " ".join(plan.notes)
    assert "fits in 64.00 GB" not in text or "no single-stage plan fits" not in text
    if plan.num_devices < 8:
        assert "a batch of 12 splits evenly over at most" in text
    tight = make_plan(infos, Auto(memory_limit=TIGHT), devices=8, batch_size=12)
    assert tight.pipe_axis and any("no single-stage plan fits in 39.06 KB per device "
                                   "(closest" in n for n in tight.notes), tight.notes
    # 'slower' and 'only x% faster' agree with the estimates they compare. Before, for the
    # 256-wide MLP at batch 128 on 64 H100s: 'the best pipeline is not faster (0.27 ms)'
    # next to a chosen 0.2714 ms.
    wide = mlp(units=256, depth=3).layer_infos()
    for infos, batch, limit, devices, kind in [
            (infos, 16, None, 8, "cpu"), (infos, 8, None, 8, "cpu"),
            (infos, 16, 60e3, 8, "cpu"), (wide, 128, None, 64, "h100"),
            (wide, 32, None, 64, "h100")]:
        plan = make_plan(infos, Auto(memory_limit=limit, device_kind=kind), devices=devices,
                         batch_size=batch)
        step = plan.estimates.step_time_s * 1e3
        for note in plan.notes:
            slower = re.search(r"is slower \(([\d.e+-]+) ms\)", note)
            if slower:
                assert float(slower.group(1)) >= step * 0.999, (note, step)
            faster = re.search(r", ([\d.e+-]+) ms\) is only", note)
            if faster:
                assert float(faster.group(1)) < step, (note, step)


def test_cost_model_costs_a_replicated_batch_as_replicated():
    infos = mlp().layer_infos()
    split = make_plan(infos, DataParallel(), devices=8, batch_size=16)
    whole = make_plan(infos, DataParallel(), devices=8, batch_size=12)
    per_sample = lambda p, b: p.estimates.compute_time_s / b  # noqa: E731
    assert per_sample(whole, 12) == pytest.approx(8 * per_sample(split, 16), rel=1e-6)


def test_fit_refuses_before_compile_what_the_batch_cannot_run():
    model = mlp()
    x, y = _data(8)
    model.compile("sgd", "sparse_categorical_crossentropy",
                  strategy=Pipeline(stages=2, microbatches=4))
    with pytest.raises(ValueError, match=r"each microbatch \(2 samples\) must be at least the "
                                         r"data-parallel size 4"):
        model.fit(x, y, batch_size=8, verbose=0)
    assert model._runner is None  # refused while planning: nothing was compiled
    with pytest.raises(ValueError, match="the batch must split into 4 equal microbatches. "
                                         "Received: batch_size=10"):
        model.fit(*_data(10), batch_size=10, verbose=0)
    with pytest.raises(ValueError, match=r"must be at least the number of devices the batch "
                                         r"is split over \(8"):
        make_plan(model.layer_infos(), DataParallel(), devices=8, batch_size=4)


def test_check_batch_size_is_pure_arithmetic():
    assert check_batch_size(16, 4, 2).ok and not check_batch_size(16, 4, 2).changes
    assert "microbatches of 6" in check_batch_size(12, 4, 2).changes[0]
    assert not check_batch_size(6, 4, 4).ok
    last = check_batch_size(6, 4, 4, partial=True)
    assert last.ok and "runs as one" in last.changes[0] and "the last batch" in last.changes[1]
    assert "computes it whole (replicated, not split)" in check_batch_size(6, 4).changes[0]


def test_a_plan_asking_for_padding_is_refused():
    """Padding an uneven batch is not implemented: a plan (from JSON, say) that asks for
    it is refused by name rather than warned about and then run replicated."""
    plan = mlp().make_plan(DataParallel(), batch_size=16)
    assert check_plan(plan, 12).ok  # 12 over 8 devices: replicated, with a change note
    asked = type(plan).from_json(plan.to_json().replace('"replicate"', '"pad"'))
    result = check_plan(asked, 12)
    assert not result.ok
    assert "`uneven_batch` must be 'replicate'" in result.errors[0]
    assert "Received: uneven_batch='pad'" in result.errors[0]


# ---------------------------------------------------------------- item 6: dependencies

@pytest.mark.parametrize("strategy", [Pipeline(microbatches=2), Auto()],
                         ids=["Pipeline", "Auto"])
def test_stage_annotations_follow_dependencies_not_merge_input_order(strategy):
    """Before: with Add([b, c]) the same valid stages were refused ('stage annotations must
    not decrease in execution order'); under Auto as a memory problem."""
    stages = {}
    for order in ("cb", "bc"):
        plan = branchy(order).make_plan(strategy, batch_size=16)
        stages[order] = [sorted(s.layers) for s in plan.stages]
        assert {n: plan.layers[n].stage for n in "abc"} == {"a": 0, "b": 1, "c": 1}
    assert stages["cb"] == stages["bc"] == [["a"], ["add", "b", "c", "out"]]


@pytest.mark.parametrize("order", ["cb", "bc"])
def test_a_stage_reading_a_later_stage_is_refused_as_such(order):
    model = branchy(order, stage_of_a=2, stage_of_b=0)  # 'c' (stage 1) reads 'a' (2)
    for strategy in (Pipeline(stages=3, microbatches=2), Auto()):
        with pytest.raises(ValueError, match=r"Layer 'c' \(stage 1\) reads the output of "
                                             r"layer 'a' \(stage 2\)") as info:
            model.make_plan(strategy, devices=6 if isinstance(strategy, Pipeline) else 3,
                            batch_size=12)
        assert "memory" not in str(info.value)


def test_branchy_pipeline_trains_whatever_the_merge_order():
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
    losses = []
    for order in ("cb", "bc"):
        model = branchy(order)
        model.compile("sgd", "mse", strategy=Pipeline(microbatches=2))
        losses.append(model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                                shuffle=False).history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


# ------------------------------------------------------------ item 7: changes are said

def test_replicated_batch_is_said_in_notes_summary_and_at_fit():
    """Before: batch 12 on 8 devices ran replicated while the summary said 'batch split'
    and nothing warned."""
    model = mlp()
    plan = model.make_plan(DataParallel(), batch_size=12)
    assert any("a batch of 12 samples does not divide over the 8 data-parallel devices"
               in n for n in plan.notes)
    assert "a batch of 12 replicated" in plan.summary()
    assert all("batch replicated" in lp.reason for lp in plan.layers.values() if lp.weights)
    _, said = _fit_one_step(model, DataParallel(), 12)
    assert any(w.startswith("fit: a batch of 12 samples does not divide") for w in said), said


def test_last_smaller_batch_is_said_at_fit():
    model = mlp()
    x, y = _data(20)
    model.compile("sgd", "sparse_categorical_crossentropy", strategy=DataParallel())
    with pytest.warns(UserWarning, match="the last batch of 4 samples does not divide over "
                                         "the 8 data-parallel devices"):
        model.fit(x, y, batch_size=16, verbose=0)


def test_ignored_annotations_and_unsharded_layers_are_said():
    """Before: stage= annotations vanished without a note under strategies with no pipe
    axis, and ModelParallel refused a 3-class head instead of leaving it unsharded."""
    hybridnet.utils.set_random_seed(0)
    staged = Sequential([Input((8,)), layers.Dense(16, stage=0, parallel="model"),
                         layers.Dense(16, stage=1), layers.Dense(3)])
    for strategy in (DataParallel(), ModelParallel(model=2),
                     Hybrid(mesh={"data": 4, "model": 2}, microbatches=4)):
        plan = staged.make_plan(strategy, batch_size=16)
        name = type(strategy).__name__
        assert any(f"{name} has no 'pipe' axis: the stage= annotations" in c
                   for c in plan.changes), plan.changes
        assert set(plan.changes) <= set(plan.notes)
    dp = staged.make_plan(DataParallel(), batch_size=16)
    assert any("ignores the parallel='model' annotations" in c for c in dp.changes)
    hybrid = staged.make_plan(Hybrid(mesh={"data": 4, "model": 2}, microbatches=4))
    assert hybrid.microbatches == 1
    assert any("microbatches=4 is ignored" in c for c in hybrid.changes)

    head = mlp(units=15, depth=1, out=3).make_plan(ModelParallel(model=2), batch_size=16)
    out = list(head.layers.values())[-1]
    assert out.parallel == "data" and out.reason.startswith("replicated")
    assert any(f"layer '{out.name}' (Dense) is left unsharded" in c for c in head.changes)
    with pytest.raises(ValueError, match="does not divide"):  # asked for by name: refused
        mlp(units=16, depth=2, out=3, parallel="model").make_plan(ModelParallel(model=2))

    auto = mlp(units=16, depth=1, out=3, parallel="model").make_plan(
        Auto(device_kind="h100"), devices=2, batch_size=16)
    assert any("annotated parallel='model', unsharded" in c for c in auto.changes)

    model = Sequential([Input((8,)), layers.Dense(16, stage=0), layers.Dense(4, stage=1)])
    x = np.ones((16, 8), "float32")
    model.compile("sgd", "mse", strategy=DataParallel())
    with pytest.warns(UserWarning, match="fit: DataParallel has no 'pipe' axis"):
        model.fit(x, np.ones((16, 4), "float32"), batch_size=16, verbose=0)
    with warnings.catch_warnings():  # said once per model, not at every fit
        warnings.simplefilter("error")
        model.fit(x, np.ones((16, 4), "float32"), batch_size=16, verbose=0)


def test_plan_json_keeps_changes_and_batch_size():
    plan = mlp().make_plan(DataParallel(), batch_size=12)
    back = type(plan).from_json(plan.to_json())
    assert back.changes == plan.changes and back.batch_size == 12
    assert back.uneven_batch == "replicate"
    assert jax.device_count() == 8


def test_auto_plans_for_its_batch_size_before_fit():
    """``Auto(batch_size=)`` plans for that batch when the plan is asked for right after
    compile (the GNMT example printed a plan made for the default 32 and then trained
    with 64); a bad value names the argument."""
    import pytest
    from hybridnet import Input, Sequential, layers
    from hybridnet.strategies import Auto

    def planned(strategy):
        model = Sequential([Input((16,)), layers.Dense(32), layers.Dense(4)])
        model.compile("adam", "mse", strategy=strategy)
        return model.plan

    assert planned(Auto(batch_size=64)).batch_size == 64
    assert "batch 64" in planned(Auto(batch_size=64)).summary()
    assert "batch 32" in planned(Auto()).summary()
    with pytest.raises(ValueError, match=r"Auto: `batch_size` must be a positive int"):
        planned(Auto(batch_size=0))
