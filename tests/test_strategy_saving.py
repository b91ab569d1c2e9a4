"""A model trained under any strategy saves and loads, compiled, on one device (or under
another strategy) with its optimizer state: training goes on as if never saved (issue 13,
item 4: files from pipelines used to hold per-stage optimizer states)."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Sequential, layers
from hybridnet.strategies import Auto, DataParallel, Hybrid, ModelParallel, Pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = {
    "data_parallel": DataParallel(),
    "model_parallel": ModelParallel(model=2),
    "gpipe": Pipeline(stages=2, microbatches=2, schedule="gpipe"),
    "1f1b": Pipeline(stages=2, microbatches=2, schedule="1f1b"),
    "hybrid_pipe": Hybrid(mesh={"pipe": 2, "data": 2, "model": 2}, microbatches=2),
    "auto": Auto(),
}
BATCH = 16

# Loads every saved file on a single device, compiled, and trains one more epoch; also
# trains one from a fresh optimizer state, to show the comparison can tell them apart.
ONE_DEVICE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, hybridnet
    assert len(jax.devices()) == 1, jax.devices()
    files, data, out = json.loads(sys.argv[1]), np.load(sys.argv[2]), {}
    def go_on(model):
        model.fit(data["x"], data["y"], batch_size=%d, epochs=1, verbose=0, shuffle=False)
        return [w.tolist() for w in model.get_weights()]
    for name, path in files.items():
        model = hybridnet.load_model(path)
        assert model.compiled and model.plan.num_devices == 1
        steps = model.iterations
        out[name] = {"weights": go_on(model), "steps": [steps, model.iterations]}
    fresh = hybridnet.load_model(files["gpipe"], compile=False)
    fresh.compile("adam", hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    out["fresh_optimizer"] = {"weights": go_on(fresh)}
    print(json.dumps(out))
""" % BATCH)


def _model():
    hybridnet.utils.set_random_seed(0)
    return Sequential([Input((8,)), layers.Dense(16, activation="relu"),
                       layers.Dense(16, activation="relu"), layers.Dense(4)])


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * BATCH, 8)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")


def _fit(model, x, y):
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per strategy: the saved file and the weights after one more epoch without saving."""
    x, y = _data()
    folder = tmp_path_factory.mktemp("saved")
    files, continued = {}, {}
    for name, strategy in STRATEGIES.items():
        model = _model()
        model.compile(hybridnet.optimizers.Adam(1e-2),
                      hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                      strategy=strategy)
        _fit(model, x, y)
        files[name] = str(folder / f"{name}.hnet")
        model.save(files[name])
        _fit(model, x, y)
        continued[name] = model.get_weights()
    np.savez(folder / "data.npz", x=x, y=y)
    return files, continued, str(folder / "data.npz")


def test_saved_under_every_strategy_loads_on_one_device_and_trains_on(trained):
    files, continued, data = trained
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", ONE_DEVICE, json.dumps(files), data],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in STRATEGIES:
        assert result[name]["steps"] == [2, 4], name
        for got, want in zip(result[name]["weights"], continued[name]):
            np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6,
                                       err_msg=name)
    fresh = result["fresh_optimizer"]["weights"]
    assert max(np.abs(np.asarray(a) - b).max() for a, b in zip(fresh, continued["gpipe"])) > 1e-3


def test_saved_under_a_pipeline_loads_under_data_parallel_on_8_devices(trained):
    files, continued, _ = trained
    x, y = _data()
    model = hybridnet.load_model(files["hybrid_pipe"])
    assert model.plan.num_devices == jax.device_count() == 8 and not model.plan.stages
    _fit(model, x, y)
    for got, want in zip(model.get_weights(), continued["hybrid_pipe"]):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
