"""One script, any number of processes: fit / evaluate / predict / save under
`hybridnet launch -n 2 --devices-per-process 2` equal the same script as one process of
4 devices; the file is written once, by the chief, and loads in one process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hybridnet

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "multiprocess_train.py")
STRATEGIES = ("data", "model", "hybrid", "pipeline")


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(command, devices=4) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env=_env(devices))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _launch(*args) -> str:
    return _run([sys.executable, "-m", "hybridnet.cli", "launch", "-n", "2",
                 "--devices-per-process", "2", SCRIPT, *args])


def _lines(out: str, tag: str) -> list[tuple[int, str]]:
    """(rank, rest) of each line starting with ``tag`` (rank 0 for unprefixed output)."""
    found = []
    for line in out.splitlines():
        rank = 0
        if line.startswith("[") and "] " in line:
            head, line = line.split("] ", 1)
            rank = int(head[1:])
        if line.startswith(tag + " "):
            found.append((rank, line[len(tag) + 1:]))
    return found


def _results(out: str) -> dict:
    return {(r["strategy"], r["process"]): r
            for _, text in _lines(out, "RESULT") for r in [json.loads(text)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one_dir, two_dir = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    one = _run([sys.executable, SCRIPT, str(one_dir), *STRATEGIES])
    two = _launch(str(two_dir), *STRATEGIES)
    return {"one": _results(one), "two": _results(two), "two_out": two, "two_dir": two_dir}


def _close(a, b, tol=1e-5):
    return np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_equals_the_one_process_run(runs, strategy):
    ref = runs["one"][(strategy, 0)]
    for rank in (0, 1):
        got = runs["two"][(strategy, rank)]
        assert got["mesh"] == ref["mesh"] and np.prod(list(got["mesh"].values())) == 4
        assert all(_close(a, b) for a, b in zip(got["params"], ref["params"])), strategy
        assert _close(got["history"], ref["history"])
        assert _close(got["evaluate"], ref["evaluate"])
        assert _close(got["predict"], ref["predict"])
        assert _close(got["loaded"], ref["predict"])  # load_model on every process
        assert np.prod(list(got["loaded_mesh"].values())) == 4


def test_every_process_returns_the_same_values(runs):
    for strategy in STRATEGIES:
        a, b = runs["two"][(strategy, 0)], runs["two"][(strategy, 1)]
        for key in ("params", "history", "evaluate", "predict"):
            assert a[key] == b[key], (strategy, key)


def test_save_from_many_processes_writes_one_file_that_loads_in_one(runs):
    writes = _lines(runs["two_out"], "WRITE")
    assert sorted(writes) == sorted((0, f"0 {s}.hnet") for s in STRATEGIES)
    assert sorted(os.listdir(runs["two_dir"])) == sorted(f"{s}.hnet" for s in STRATEGIES)
    x = np.random.default_rng(0).normal(size=(24, 6)).astype("float32")
    for strategy in STRATEGIES:
        saved = runs["two"][(strategy, 0)]
        model = hybridnet.models.load_model(saved["file"])
        for got, want in zip(model.get_weights(), saved["params"]):
            assert _close(got.ravel(), want)
        assert model.iterations == 3
        assert _close(model.predict(x[:22], batch_size=8, verbose=0).ravel(), saved["predict"])


def test_refused_requests_name_what_was_received():
    by_rank: dict = {0: {}, 1: {}}
    for rank, text in _lines(_launch("errors"), "ERROR"):
        kind, message = text.split(": ", 1)
        by_rank[rank][kind] = message
    out = by_rank[0]
    assert by_rank[1] == out  # refused alike, before any process runs a program
    assert "must be divisible by 4. Received: batch_size=6" in out["batch"]
    assert "must use all 4 devices of the job. Received: a mesh {'data': 2}" in out["mesh"]
    assert "needs 8 devices" in out["mesh_larger"]
    assert set(out) == {"batch", "mesh", "mesh_larger"}
