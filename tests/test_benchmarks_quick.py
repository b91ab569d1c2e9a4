"""Every script under ``benchmarks/`` runs: its ``--quick`` mode in a subprocess, on 8
simulated CPU devices, and its ``--json`` output is one JSON object with the expected
keys and finite numbers. The figures mean nothing here (tiny sizes, a shared CPU): no
timed assertions, as DESIGN.md asks.

kernels.py's GPU path is driven in-process at tiny sizes by test_benchmark_kernels.py;
here it runs as a script (its CPU path). The keras peer of overhead.py is checked when
keras is installed (the ``benchmarks`` extra) and reported as skipped otherwise.

The scripts run two at a time (a module fixture starts those the selected tests need,
longest first): on two free cores the file takes about its longest run (~45-70 s).
"""

import concurrent.futures
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
TIMEOUT_S = 600  # a guard against hangs on a loaded machine, not a speed check
WORKERS = 2

# script -> the arguments of its quick run, longest run first (spe 4: 32 unrolled conv
# steps take ~10 s to compile on XLA:CPU; the *_spe32 keys are then *_spe4)
QUICK = {
    "overhead.py": ["--quick", "--steps-per-execution", "4"],
    "parallel.py": ["--quick"],
    # seq2seq's cells run in full in test_plan_equivalence.py
    "plan_equivalence.py": ["--quick", "--families", "mlp_ln,resnet_bn"],
    "kernels.py": ["--quick"],
    "kernel_resources.py": ["--quick"],
    "tpu_compile.py": ["--quick"],
    "ensemble.py": ["--quick"],
    "checkpoint.py": ["--quick"],
    "gnmt.py": ["--quick"],
}


def _env() -> dict:
    env = dict(os.environ)
    # Several benchmarks run at once: a simulated device thread may wait longer than
    # XLA:CPU's 40 s collective timeout, which would abort the process; a real hang
    # still ends in 3 minutes.
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=180")
    env["JAX_PLATFORMS"] = "cpu"
    # the checkout under test, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *QUICK[script], "--json"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=TIMEOUT_S)


def _test_name(script: str) -> str:
    return f"test_{script[:-len('.py')]}_quick"


@pytest.fixture(scope="module")
def quick_runs(request):
    """script -> a future of its finished quick run, for the scripts whose tests are
    selected, started at once, ``WORKERS`` at a time."""
    selected = {item.originalname for item in request.session.items
                if item.module is request.module}
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = {script: pool.submit(_run, script) for script in QUICK
               if _test_name(script) in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def run_json(quick_runs, script: str) -> tuple[dict, str]:
    """``script``'s quick run with ``--json``: (the JSON object, stderr)."""
    proc = quick_runs[script].result()
    assert proc.returncode == 0, (
        f"{script} {' '.join(QUICK[script])} --json exited with {proc.returncode}:\n"
        f"{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"{script}: expected one JSON line on stdout, got:\n" \
                            f"{proc.stdout[-2000:]}"
    return json.loads(lines[0]), proc.stderr


def _keras_installed() -> bool:
    try:
        return importlib.util.find_spec("keras") is not None
    except ImportError:
        return False


def finite(value, what: str) -> float:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (
        f"{what}: expected a number. Received: {value!r}")
    assert math.isfinite(value), f"{what}: not finite: {value!r}"
    return value


def test_every_benchmark_script_has_a_quick_run():
    scripts = sorted(f for f in os.listdir(BENCHMARKS)
                     if f.endswith(".py") and not f.startswith("_"))
    assert scripts == sorted(QUICK), "a new benchmark needs a --quick run tested here"
    assert all(_test_name(s) in globals() for s in QUICK)
    for script in scripts:
        with open(os.path.join(BENCHMARKS, script)) as f:
            assert '"--quick"' in f.read(), f"{script} has no --quick flag"


def test_overhead_quick(quick_runs):
    r, stderr = run_json(quick_runs, "overhead.py")
    spe = r["config"]["steps_per_execution"]
    assert spe == 4 and r["config"]["quick"] is True
    keras = _keras_installed()
    variants = ["flax", "hybridnet", f"hybridnet_spe{spe}"]
    variants += ["keras", f"keras_spe{spe}"] if keras else []
    assert sorted(r["config"]["variants"]) == sorted(variants)
    assert ("keras" in r["config"]["peers_skipped"]) is not keras
    for kind in ("mlp", "cnn"):
        peers = ["flax"] + (["keras"] if keras else [])
        for peer in peers:
            assert finite(r[f"{kind}_vs_{peer}"], f"{kind}_vs_{peer}") > 0
            key = f"{kind}_vs_{peer}_spe{spe}"
            assert finite(r[key], key) > 0
            assert r["ratios_by_best"][f"{kind}_vs_{peer}"] > 0
        for v in variants:
            assert finite(r["steps_per_s"][kind][v], f"steps_per_s {kind} {v}") > 0
            assert 0 <= finite(r["final_train_accuracy"][kind][v], "accuracy") <= 1
            assert len(r["seconds"][kind][v]) == r["config"]["repeats"]
    # the targets are named for spe 32: at spe 4 only the plain ones apply
    assert all(isinstance(t["met"], bool) and "spe" not in k
               for k, t in r["targets"].items())
    assert {"mlp_vs_flax", "cnn_vs_flax"} <= set(r["targets"])
    assert "targets:" in stderr and "mlp/hybridnet" in stderr  # the table


def test_parallel_quick(quick_runs):
    r, stderr = run_json(quick_runs, "parallel.py")
    assert r["benchmark"] == "parallel" and r["quick"] is True and r["devices"] == 8
    for key in ("alexnet_comm_bytes_dp", "alexnet_comm_bytes_auto",
                "alexnet_comm_sent_bytes_dp", "alexnet_comm_sent_bytes_auto",
                "alexnet_comm_bytes_estimated_dp", "alexnet_comm_bytes_estimated_auto",
                "peak_memory_gpipe", "peak_memory_1f1b",
                "planner_memory_estimate_gpipe", "planner_memory_estimate_1f1b"):
        assert finite(r[key], key) > 0
    for key in ("alexnet_comm_ratio", "alexnet_comm_sent_ratio",
                "alexnet_comm_estimated_ratio", "pipeline_bubble_measured",
                "pipeline_bubble_serialized", "pipeline_bubble_theory",
                "pipeline_bubble_replayed", "pipeline_bubble_measured_1f1b",
                "pipeline_bubble_replayed_1f1b"):
        finite(r[key], key)
    assert r["alexnet_comm_ratio"] == pytest.approx(
        r["alexnet_comm_bytes_auto"] / r["alexnet_comm_bytes_dp"])
    assert r["pipeline_bubble_theory"] == pytest.approx(3 / 11)  # 4 stages x 8 mb
    for key in ("alexnet_comm_target_met", "pipeline_bubble_target_met",
                "peak_memory_target_met", "planner_estimate_target_met"):
        assert isinstance(r[key], bool), key
    assert finite(r["planner_estimate_error"]["max"], "planner_estimate_error") >= 0
    for plan in ("dp", "auto"):
        row = r["details"]["alexnet"]["plans"][plan]
        assert row["hlo_shape_check_failures"] == [], row["hlo_shape_check_failures"]
        assert finite(row["memory_compiled"]["total"], "memory_compiled") > 0
    assert "auto / dp: operand bytes" in stderr  # the table


def test_plan_equivalence_quick(quick_runs):
    r, stderr = run_json(quick_runs, "plan_equivalence.py")
    assert r["benchmark"] == "plan_equivalence" and r["quick"] is True and r["devices"] == 8
    assert set(r["matrix"]) == {"resnet_bn", "mlp_ln"}
    for family, row in r["matrix"].items():
        assert list(row) == ["pipe2_m4_1f1b"], row
        assert finite(row["pipe2_m4_1f1b"], family) <= r["tolerance"], r["details"][family]
    assert r["details"]["resnet_bn"]["pipe2_m4_1f1b"]["checked"] == "input BN moving statistics"
    assert r["all_within_tolerance"] is True
    assert "max relative difference" in stderr  # the table


def test_kernels_quick(quick_runs):
    r, _ = run_json(quick_runs, "kernels.py")
    assert r["quick"] is True and r["backend"] == "cpu" and r["speed"] == "skipped"
    kinds = {row["kernel"] for row in r["rows"]}
    assert kinds == {"conv2d", "lstm"}
    for row in r["rows"]:
        for key in ("fwd_max_abs_err", "grad_max_abs_err"):
            assert finite(row[key], f"{row['layer']} {key}") < 1e-4


def test_kernel_resources_quick(quick_runs):
    r, _ = run_json(quick_runs, "kernel_resources.py")
    assert r["quick"] is True and r["target"] == "sm_90"
    s = r["summary"]
    assert s["kernels"] == len(r["rows"]) > 0
    assert isinstance(s["all_fit"], bool)
    assert finite(s["max_registers"], "max_registers") > 0
    assert finite(s["max_shared_over_estimate"], "max_shared_over_estimate") > 0
    assert {row["layer"] for row in r["rows"]} == {"conv3", "gnmt"}
    for row in r["rows"]:
        for key in ("registers", "shared_bytes", "spill_store_bytes", "estimate_bytes"):
            assert finite(row[key], f"{row['name']} {key}") >= 0


def test_tpu_compile_quick(quick_runs):
    """Without libtpu it cannot compile for a TPU: it says so and only cross-lowers."""
    r, _ = run_json(quick_runs, "tpu_compile.py")
    assert r["quick"] is True and r["rows"]
    if not r["libtpu"]:
        assert r["status"] == "needs jax[tpu]" and r["reason"]
        assert r["all_defaults_compile"] is None
        for row in r["rows"]:
            assert row["compiled"] is None  # nothing claims to be compiled
            assert row["lowered"] is True, row
            assert row["mosaic_kernels"] >= 1, row
    else:
        assert r["status"] == "compiled"
        assert all(isinstance(row["compiled"], bool) for row in r["rows"])
        assert isinstance(r["all_defaults_compile"], bool)


def test_ensemble_quick(quick_runs):
    r, stderr = run_json(quick_runs, "ensemble.py")
    assert r["benchmark"] == "ensemble" and r["quick"] is True
    assert r["config"]["members"] == 4 and r["config"]["ensemble_mesh"] == {
        "ensemble": 4, "data": 2}
    assert finite(r["stacked_vs_separate_n4"], "stacked_vs_separate_n4") > 0
    assert isinstance(r["targets"]["stacked_vs_separate_n4"]["met"], bool)
    for variant in ("stacked", "separate"):
        assert finite(r["steps_per_s"][variant], variant) > 0
        assert 0 <= finite(r["test_accuracy"][variant]["soft_vote"], "soft vote") <= 1
    # the same members, seeds and batches: the two variants train the same models
    assert r["test_accuracy"]["stacked"]["soft_vote"] == pytest.approx(
        r["test_accuracy"]["separate"]["soft_vote"], abs=0.02)
    assert r["shared_input_cpu_per_sample"]["status"] in ("skipped", "measured")
    assert "stacked_vs_separate_n4" in stderr  # the table


def test_checkpoint_quick(quick_runs):
    r, stderr = run_json(quick_runs, "checkpoint.py")
    assert r["benchmark"] == "checkpoint" and r["quick"] is True
    assert r["config"]["every"] == 4 and r["config"]["orbax_checkpoint"]
    assert set(r["step_s"]) == {"none", "async", "sync"}
    for arm, seconds in r["step_s"].items():
        assert finite(seconds, f"step_s {arm}") > 0
    for key in ("async_overhead", "sync_overhead"):
        finite(r[key], key)
    for key in ("checkpoint_save_mb_per_s", "checkpoint_restore_mb_per_s",
                "model_save_mb_per_s", "model_load_mb_per_s", "state_mb", "param_mb",
                "async_save_blocked_s", "sync_save_blocked_s", "async_blocked_share",
                "step_wait_before_save_s"):
        assert finite(r[key], key) > 0
    assert len(r["async_save_calls_s"]) == 2  # one save every 4 of 8 steps
    assert r["state_mb"] > 2.9 * r["param_mb"]  # parameters and Adam's two moments
    assert r["targets"]["async_overhead"]["applies"] is False
    assert isinstance(r["targets"]["async_overhead"]["met"], bool)
    assert "checkpoint restore" in stderr  # the table


def test_gnmt_quick(quick_runs):
    r, stderr = run_json(quick_runs, "gnmt.py")
    assert r["benchmark"] == "gnmt" and r["quick"] is True
    assert finite(r["gnmt_tokens_vs_keras"], "gnmt_tokens_vs_keras") > 0
    assert isinstance(r["target_met"], bool)
    for side in ("hybridnet", "keras"):
        assert finite(r["tokens_per_s"][side], side) > 0
    # the same model from the same weights on the same batches: the same loss
    assert finite(r["loss_rel_diff"], "loss_rel_diff") < 1e-4
    assert r["padding_fraction_bucketed"] < r["padding_fraction_naive"] < 1
    assert r["shard_token_imbalance_balanced"] < r["shard_token_imbalance_naive"]
    assert "gnmt_tokens_vs_keras" in stderr  # the table
