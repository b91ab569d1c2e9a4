"""The GPU path of benchmarks/kernels.py, driven on the CPU at tiny sizes
(interpret mode), so a GPU session is not spent on a crash in the script.
Times here mean nothing; the structure of the result does."""

import importlib.util
import json
import os

import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", os.path.join(ROOT, "benchmarks", "kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ALEXNET", mod.ALEXNET_CPU[1:3])
    monkeypatch.setattr(mod, "CONV_BATCH", 2)
    monkeypatch.setattr(mod, "GNMT", dict(batch=4, steps=3, input=16,
                                          hidden=16))
    return mod


def test_gpu_path_reports_every_peer_and_target(bench):
    rows = bench.run_gpu(jnp.float32, iters=1, autotune=False)
    convs = [r for r in rows if r["kernel"] == "conv2d"]
    assert [r["layer"] for r in convs] == ["conv2", "conv3"]
    for r in convs:
        assert "error" not in r, r
        assert r["fwd_max_abs_err"] < 1e-4
        assert r["fwdbwd_speed_vs_xla"] == pytest.approx(
            r["xla_fwdbwd_ms"] / r["pallas_fwdbwd_ms"])
        assert isinstance(r["target_met"], bool)
    (lstm,) = [r for r in rows if r["kernel"] == "lstm"]
    for name in ("pallas_stepwise", "pallas_persistent", "scan"):
        assert lstm[f"{name}_fwd_ms"] > 0 and lstm[f"{name}_fwdbwd_ms"] > 0
    for name in ("pallas_stepwise", "pallas_persistent"):
        assert lstm[f"{name}_fwd_max_abs_err"] < 1e-4
        assert lstm[f"{name}_speed_vs_scan"] == pytest.approx(
            lstm["scan_fwdbwd_ms"] / lstm[f"{name}_fwdbwd_ms"])
    # cuDNN's LSTM exists only on GPU: recorded as an error, not a crash
    assert "cudnn_error" in lstm or "cudnn_fwdbwd_ms" in lstm

    result = dict(backend="gpu", device="test", jax="x", dtype="float32",
                  speed="measured", iters=1, rows=rows)
    md = bench._markdown(result)
    assert "| conv2 |" in md and "| pallas_stepwise |" in md
    assert "| scan |" in md and "target >= 0.9" in md
    json.dumps(result)  # the --json output is plain data
