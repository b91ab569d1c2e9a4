"""Cost model, automatic planner, plan report/figure and the `hybridnet plan` command."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from hybridnet import Input, Sequential, layers, strategies
from hybridnet.planner import cost, report
from hybridnet.planner.graph_info import LayerInfo, WeightInfo
from hybridnet.planner.planner import build_plan, make_plan

ROOT = Path(__file__).resolve().parents[1]


def _alexnet(input_shape=(224, 224, 3), n_classes=1000):
    spec = importlib.util.spec_from_file_location("_alexnet_example", ROOT / "examples/alexnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.alexnet(input_shape, n_classes)


@pytest.fixture(scope="module")
def alexnet_infos():
    return _alexnet().layer_infos()


def _dense(name, d_in, units, bias=True):
    weights = {"kernel": WeightInfo((d_in, units), "float32", ("embed", "mlp"))}
    if bias:
        weights["bias"] = WeightInfo((units,), "float32", ("mlp",))
    return LayerInfo(name, "Dense", weights, [(None, d_in)], [(None, units)],
                     config={"units": units, "activation": "linear", "use_bias": bias})


# ------------------------------------------------------------------------------ FLOPs

def test_layer_flops_dense_conv_lstm_match_hand_formulas():
    model = Sequential([Input((10, 6)), layers.LSTM(8, name="lstm")])
    (lstm,) = model.layer_infos()
    t, d, u = 10, 6, 8
    assert cost.layer_flops(lstm) == 2 * t * 4 * u * (d + u) + t * u * (
        cost.LSTM_POINTWISE_FLOPS_PER_UNIT)

    model = Sequential([Input((32, 32, 3)),
                        layers.Conv2D(16, 5, strides=2, use_bias=False, name="conv"),
                        layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b"),
                        layers.Flatten(name="flat"),
                        layers.Dense(10, name="fc"),
                        layers.Dense(7, use_bias=False, name="fc_nobias")])
    conv, conv_b, _, fc, fc_nobias = model.layer_infos()
    h_out = (32 - 5) // 2 + 1  # 14
    assert conv.output_shapes[0] == (None, h_out, h_out, 16)
    assert cost.layer_flops(conv) == 2 * 5 * 5 * 3 * 16 * h_out * h_out
    # + bias add and relu per output element
    assert cost.layer_flops(conv_b) == h_out * h_out * (2 * 3 * 3 * 16 * 8 + 8 + 8)
    flat = h_out * h_out * 8
    assert cost.layer_flops(fc) == 2 * flat * 10 + 10
    assert cost.layer_flops(fc_nobias) == 2 * 10 * 7
    assert cost.training_flops(fc) == 3 * cost.layer_flops(fc)


def test_layer_flops_bidirectional_embedding_and_fallbacks():
    model = Sequential([Input((5,), dtype="int32"), layers.Embedding(100, 4, name="emb"),
                        layers.Bidirectional(layers.LSTM(3), name="bi"),
                        layers.Activation("relu", name="act")])
    emb, bi, act = model.layer_infos()
    assert cost.layer_flops(emb) == 5 * 4
    assert cost.layer_flops(bi) == 2 * (2 * 5 * 4 * 3 * (4 + 3) + 5 * 3 * (
        cost.LSTM_POINTWISE_FLOPS_PER_UNIT))
    assert cost.layer_flops(act) == 6  # one op per output element
    custom = LayerInfo("mine", "MyLayer", {"w": WeightInfo((4, 4), "float32", None)},
                       [(None, 7, 4)], [(None, 7, 4)])
    assert cost.layer_flops(custom) == 2 * 16 * 7


# --------------------------------------------------------------------------- estimate

def test_estimate_two_dense_layers_matches_hand_computation():
    """Dense 8->16 (column) then 16->4 (row) on data=2 x model=2, batch 8, float32."""
    infos = [_dense("d1", 8, 16), _dense("d2", 16, 4)]
    plan = build_plan(infos, mesh_axes={"data": 2, "model": 2}, device_ids=list(range(4)),
                      tensor_parallel={"d1": "column", "d2": "row"}, device_kind="h100")
    est = cost.estimate(plan, infos, batch_size=8, device_kind="h100", optimizer_slots=2)
    d1, d2 = plan.layers["d1"], plan.layers["d2"]
    assert d1.weights == {"kernel": P(None, "model"), "bias": P("model")}
    assert d1.flops == 2 * 8 * 16 + 16 and d2.flops == 2 * 16 * 4 + 4
    assert d1.param_bytes == (8 * 16 + 16) * 4

    # d1: the batch-split input (8 samples / 2 data shards x 8 features x 4 B = 128 B) is
    # all-gathered over model (1/2 of it sent) and its partial gradient reduce-scattered;
    # kernel/bias grads (576 B / 2 model shards) all-reduced over data: 2*(1/2)*288.
    assert d1.comm_bytes == 64 + 64 + 288
    # d2: one all-reduce of the output (4 x 4 B x 4 samples = 64 B): 2*(1/2)*64; kernel
    # grad (256 B / 2) over data: 128; replicated bias over all 4 devices: 2*(3/4)*16.
    assert d2.comm_bytes == 64 + 128 + 24
    # memory: params + grads + 2 Adam slots (all sharded) + the inputs and outputs kept for
    # the backward pass, per device
    assert d1.memory_bytes == 4 * 288 + (16 + 8) * 4 * 8 / 4   # split over data x model
    assert d2.memory_bytes == 4 * 144 + (4 + 16) * 4 * 8 / 2   # replicated over model
    assert est.memory_bytes_per_device == d1.memory_bytes + d2.memory_bytes
    assert est.comm_bytes == d1.comm_bytes + d2.comm_bytes

    h100 = cost.DEVICES["h100"]
    bw, lat = h100.intra_bandwidth, h100.latency_s
    compute = 3 * (d1.flops + d2.flops) * 8 / (4 * h100.peak_flops_fp32 * h100.efficiency)
    act = 3 * lat + (64 + 64 + 64) / bw                     # three collectives over model (2)
    grad = lat + 288 / bw + lat + 128 / bw + 2 * lat + 24 / bw  # group of 4: 2 latency steps
    assert est.compute_time_s == pytest.approx(compute)
    assert est.comm_time_s == pytest.approx(act + grad)
    assert est.step_time_s == pytest.approx(compute + act + grad)
    assert est.bubble_fraction == 0.0

    # pure data parallel over the 4 devices: a ring all-reduce of every gradient
    dp = build_plan(infos, mesh_axes={"data": 4}, device_ids=list(range(4)),
                    tensor_parallel={}, device_kind="h100")
    cost.estimate(dp, infos, batch_size=8, device_kind="h100")
    assert dp.layers["d1"].comm_bytes == pytest.approx(2 * 3 / 4 * (8 * 16 + 16) * 4)
    assert dp.layers["d1"].memory_bytes == 4 * 576 + (16 + 8) * 4 * 8 / 4


def test_estimate_pipeline_bubble_and_stages():
    infos = [_dense(f"d{i}", 64, 64) for i in range(4)]
    plan = build_plan(infos, mesh_axes={"pipe": 2, "data": 2}, device_ids=list(range(4)),
                      tensor_parallel={}, stages=[["d0", "d1"], ["d2", "d3"]],
                      microbatches=4, schedule="gpipe", device_kind="a100")
    est = cost.estimate(plan, infos, batch_size=16, device_kind="a100")
    assert est.bubble_fraction == pytest.approx(1 / 5)
    assert [s.flops for s in plan.stages] == [2 * cost.layer_flops(infos[0])] * 2
    assert plan.stages[0].memory_bytes > 0
    # the stage boundary sends d1's output forward and its gradient back
    assert plan.layers["d1"].comm_bytes > plan.layers["d0"].comm_bytes
    # step = busy stage / (1 - bubble) + gradient all-reduce
    assert est.step_time_s > est.compute_time_s / (1 - 0.2)
    assert math.isfinite(est.step_time_s)


def test_memory_limit_violation_names_the_layer_and_sizes():
    infos = [_dense("small", 16, 16), _dense("huge_fc", 4096, 4096)]
    plan = build_plan(infos, mesh_axes={"data": 2}, device_ids=[0, 1], tensor_parallel={})
    with pytest.raises(ValueError, match=r"'huge_fc' \(Dense\).*memory limit|memory limit.*"
                                         r"'huge_fc' \(Dense\)") as info:
        cost.estimate(plan, infos, batch_size=8, device_kind="h100", memory_limit=100e6)
    text = str(info.value)
    assert "MB" in text and "memory_limit=1e+08" in text
    with pytest.raises(ValueError, match="Unknown device kind"):
        cost.estimate(plan, infos, batch_size=8, device_kind="abacus")


# ------------------------------------------------------------------------------- Auto

def test_auto_alexnet_one_weird_trick(alexnet_infos):
    """Auto on 8 devices: convolutions data parallel, 4096-wide FC layers model parallel,
    and a lower estimated step time than pure data parallelism."""
    infos = alexnet_infos
    plan = make_plan(infos, strategies.Auto(device_kind="h100"), devices=8, batch_size=128)
    convs = [i.name for i in infos if i.kind == "Conv2D"]
    fcs = [i.name for i in infos if i.kind == "Dense" and i.config["units"] == 4096]
    assert len(convs) == 5 and len(fcs) == 2
    assert all(plan.layers[n].parallel == "data" for n in convs), plan.summary()
    assert all(plan.layers[n].parallel == "model" for n in fcs), plan.summary()
    assert plan.model_axis == "model" and plan.mesh_axes["model"] > 1
    for name in convs + fcs:
        assert plan.layers[name].reason.startswith(plan.layers[name].parallel)
        assert "<" in plan.layers[name].reason or ">=" in plan.layers[name].reason
    assert any("one weird trick" in n for n in plan.notes)

    dp = make_plan(infos, strategies.DataParallel(), devices=8, batch_size=128)
    dp_est = cost.estimate(dp, infos, batch_size=128, device_kind="h100")
    assert plan.estimates.step_time_s < dp_est.step_time_s
    assert plan.estimates.comm_bytes < dp_est.comm_bytes
    assert plan.estimates.memory_bytes_per_device < dp_est.memory_bytes_per_device


def test_auto_respects_memory_limit_and_divisibility(alexnet_infos):
    infos = alexnet_infos
    dp = make_plan(infos, strategies.DataParallel(), devices=8, batch_size=128)
    dp_mem = cost.estimate(dp, infos, batch_size=128, device_kind="v5e").memory_bytes_per_device
    limit = 0.5 * dp_mem
    plan = make_plan(infos, strategies.Auto(device_kind="v5e", memory_limit=limit), devices=8,
                     batch_size=128)
    assert plan.estimates.memory_bytes_per_device <= limit
    with pytest.raises(ValueError, match="no plan for 8 .* fits"):
        make_plan(infos, strategies.Auto(device_kind="v5e", memory_limit=1e6), devices=8,
                  batch_size=128)

    # 4099 and 10 do not divide over model=4: the last layer can be neither column- nor
    # row-sharded and stays data parallel, saying why
    small = [_dense("fc1", 64, 4096), _dense("odd", 4096, 4099), _dense("out", 4099, 10)]
    plan = make_plan(small, strategies.Auto(device_kind="h100"), devices=4, batch_size=64)
    assert plan.mesh_axes.get("model", 1) == 4
    assert plan.layers["odd"].mode == "row"  # 4096 divides, 4099 does not
    assert plan.layers["out"].parallel == "data"
    assert "kernel.shape[1]=10 that model=4 does not divide" in plan.layers["out"].reason


# ----------------------------------------------------------------------------- report

def test_summary_and_figure(alexnet_infos, tmp_path):
    plan = make_plan(alexnet_infos, strategies.Auto(device_kind="h100"), devices=8,
                     batch_size=128)
    text = plan.summary()
    for info in alexnet_infos:
        assert info.name in text
    for needle in ("Estimated step time", "Communication per step", "Memory per device",
                   "P(None, model)", "replicated", "mesh data=", "Notes:"):
        assert needle in text, needle
    png, svg = tmp_path / "plan.png", tmp_path / "sub" / "plan.svg"
    plan.save_figure(png)
    report.save_figure(plan, svg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert b"<svg" in svg.read_bytes()[:2000]

    piped = build_plan(alexnet_infos, mesh_axes={"pipe": 2, "data": 4},
                       device_ids=list(range(8)), tensor_parallel={}, microbatches=4,
                       schedule="1f1b")
    cost.estimate(piped, alexnet_infos, batch_size=128, device_kind="h100")
    text = report.summary(piped)
    assert "stage 1: devices 4-7" in text and "1f1b" in text
    report.save_figure(piped, tmp_path / "piped.png")
    assert (tmp_path / "piped.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="png"):
        report.save_figure(piped, tmp_path / "plan.bmp")


def test_save_figure_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    infos = [_dense("d1", 8, 16)]
    plan = build_plan(infos, mesh_axes={"data": 2}, device_ids=[0, 1], tensor_parallel={})
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install hybridnet\[plots\]"):
        plan.save_figure(tmp_path / "plan.png")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_schedule_timeline_bubble(schedule):
    p, m = 4, 6
    ticks = report.schedule_timeline(p, m, schedule)
    events = [e for tick in ticks for e in tick]
    assert sorted(events) == sorted((s, j, k) for s in range(p) for j in range(m)
                                    for k in "FB")
    idle = 1 - len(events) / (p * len(ticks))
    assert idle == pytest.approx(cost.bubble_fraction(p, m, schedule))
    assert all(len({s for s, _, _ in tick}) == len(tick) for tick in ticks)


# -------------------------------------------------------------------------------- CLI

def test_cli_plans_alexnet_for_64_devices_without_allocating(capsys, monkeypatch, tmp_path):
    from hybridnet import cli

    monkeypatch.chdir(ROOT)
    fc_shapes = {(256, 4096), (4096, 4096)}  # the 64x64 AlexNet's FC kernels
    before = {id(a) for a in jax.live_arrays()}
    assert cli.main(["plan", "examples/alexnet.py", "--devices", "64"]) == 0
    new = [a for a in jax.live_arrays() if id(a) not in before]
    assert not any(tuple(a.shape) in fc_shapes for a in new)
    assert sum(a.nbytes for a in new) < 1_000_000  # the model has ~90 MB of weights
    out = capsys.readouterr().out
    assert "Plan: 64 devices (h100)" in out
    for needle in ("Mem/device", "Comm/step", "Estimated step time", "dense_", "conv2d"):
        assert needle in out, needle

    assert cli.main(["plan", "examples/alexnet.py", "--devices", "8", "--strategy", "data",
                     "--device-kind", "a100", "--json", "--figure",
                     str(tmp_path / "p.svg")]) == 0
    import json
    data = json.loads(capsys.readouterr().out)
    assert data["device_kind"] == "a100" and data["mesh_axes"] == {"data": 8}
    assert data["estimates"]["step_time_s"] > 0 and (tmp_path / "p.svg").stat().st_size > 0

    assert cli.main(["plan", "examples/alexnet.py", "--devices", "8", "--function", "nope"]) == 2
    assert "no function 'nope'" in capsys.readouterr().err
