"""Run by tests/test_multiprocess.py, as one process or under `hybridnet launch`: the
same script trains 3 steps under each strategy named on the command line, then
evaluates, predicts and saves; each process prints one JSON line per strategy:

    RESULT {"strategy", "process", "params", "history", "evaluate", "predict", "loaded",
            "file", ...}

`errors` instead tries each refused request and prints `ERROR <kind>: <message>`.
"""
import json
import os
import sys

import numpy as np

import hybridnet
from hybridnet import layers, strategies
from hybridnet.saving import model_file

hybridnet.distributed.initialize()
RANK = hybridnet.distributed.process_index()

_write = model_file._atomic_write


def _counted_write(filepath, overwrite, write):
    print(f"WRITE {RANK} {os.path.basename(os.fspath(filepath))}", flush=True)
    return _write(filepath, overwrite, write)


model_file._atomic_write = _counted_write

STRATEGIES = {
    "data": strategies.DataParallel,
    "model": strategies.ModelParallel,
    "hybrid": lambda: strategies.Hybrid(mesh={"data": 2, "model": 2}),
    # one stage per process, 2 microbatches of 4 split over each stage's 2 devices
    "pipeline": lambda: strategies.Pipeline(stages=2, microbatches=2),
}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = rng.integers(0, 4, size=(24,))
    return x, y


def build(strategy):
    hybridnet.utils.set_random_seed(1)
    inputs = hybridnet.Input((6,))
    h = layers.Dense(8, activation="relu", parallel="model", name="hidden")(inputs)
    outputs = layers.Dense(4, name="logits")(h)
    model = hybridnet.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  strategy=strategy)
    return model


def train(name, out_dir):
    x, y = data()
    model = build(STRATEGIES[name]())
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=True, verbose=0)
    path = os.path.join(out_dir, f"{name}.hnet")
    model.save(path)
    restored = hybridnet.models.load_model(path)  # on every process
    model.set_weights(model.get_weights())
    result = {
        "strategy": name, "process": RANK, "mesh": model.plan.mesh_axes,
        "params": [w.ravel().tolist() for w in model.get_weights()],
        "history": history.history["loss"],
        "evaluate": model.evaluate(x, y, batch_size=20, verbose=0),  # last batch: 4
        # last batch 6, which 4 data-parallel devices do not split: runs replicated
        "predict": model.predict(x[:22], batch_size=8, verbose=0).ravel().tolist(),
        "loaded": restored.predict(x[:22], batch_size=8, verbose=0).ravel().tolist(),
        "loaded_mesh": restored.plan.mesh_axes, "file": path}
    print("RESULT " + json.dumps(result), flush=True)


def errors():
    x, y = data()
    tries = {
        "batch": lambda: build(strategies.DataParallel()).fit(x, y, batch_size=6, verbose=0),
        "mesh": lambda: build(strategies.Hybrid(mesh={"data": 2})).fit(
            x, y, batch_size=8, verbose=0),
        "mesh_larger": lambda: build(strategies.Hybrid(mesh={"data": 4, "model": 2})).fit(
            x, y, batch_size=8, verbose=0),
    }
    for kind, attempt in tries.items():
        try:
            attempt()
            print(f"ERROR {kind}: none", flush=True)
        except (ValueError, NotImplementedError) as e:
            print(f"ERROR {kind}: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "errors":
        errors()
    else:
        for strategy_name in sys.argv[2:]:
            train(strategy_name, sys.argv[1])
