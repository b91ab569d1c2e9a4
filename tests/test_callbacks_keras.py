"""Callback hooks against Keras 3 (JAX backend): the same sequence of hooks, indices and
log keys in fit (with validation), evaluate and predict; logs always dicts; the
TensorBoard callback's event files."""
import os
import struct

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import hybridnet
from hybridnet import Input, Sequential, callbacks, layers
from hybridnet.strategies import DataParallel

ONE_DEVICE = DataParallel(devices=jax.devices()[:1])

HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end",
         "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
         "on_predict_begin", "on_predict_end", "on_predict_batch_begin",
         "on_predict_batch_end")


def recorder(base):
    """A callback class for either library that records (hook, index, log keys) and
    checks that logs are dicts."""

    def make(hook):
        indexed = "batch" in hook or "epoch" in hook

        def method(self, *args, logs=None):
            args = list(args)
            index = args.pop(0) if indexed else None
            logs = args[0] if args else logs
            self.dict_logs.append(isinstance(logs, dict))
            self.events.append((hook, index, tuple(sorted(logs or {}))))
            getattr(base, hook)(self, *([index] if indexed else []), logs=logs)
        return method

    namespace = {h: make(h) for h in HOOKS}

    def __init__(self):
        base.__init__(self)
        self.events, self.dict_logs = [], []
    namespace["__init__"] = __init__
    return type("Recorder", (base,), namespace)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    return x, x.sum(1, keepdims=True).astype("float32")


def _run(model, cb):
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
              validation_data=(x[:20], y[:20]), validation_batch_size=8, callbacks=[cb])
    model.evaluate(x, y, batch_size=24, verbose=0, callbacks=[cb])
    model.predict(x[:10], batch_size=4, verbose=0, callbacks=[cb])
    return cb.events


def test_hook_sequence_matches_keras():
    hybridnet.utils.set_random_seed(0)
    ours = Sequential([Input((4,)), layers.Dense(3, activation="relu"), layers.Dense(1)])
    ours.compile(hybridnet.optimizers.SGD(0.01), "mse", metrics=["mae"],
                 strategy=ONE_DEVICE)
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                               keras.layers.Dense(1)])
    theirs.compile(keras.optimizers.SGD(0.01), "mse", metrics=["mae"])
    ours_cb, theirs_cb = recorder(callbacks.Callback)(), recorder(keras.callbacks.Callback)()
    got, want = _run(ours, ours_cb), _run(theirs, theirs_cb)
    assert got == want
    assert ("on_test_batch_end", 2, ("loss", "mae")) in got  # validation inside fit
    assert all(ours_cb.dict_logs)


def test_batch_logs_are_dicts_read_lazily_and_writable():
    seen = []

    class Reader(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            assert isinstance(logs, dict)
            logs["extra"] = 1.0
            seen.append(dict(logs))

    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((4,)), layers.Dense(1)])
    model.compile("sgd", "mse", strategy=ONE_DEVICE)
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[Reader()])
    assert len(seen) == 3 and set(seen[0]) == {"loss", "extra"}
    assert isinstance(seen[0]["loss"], float)
    fetched = []
    lazy = callbacks.LazyLogs(lambda: fetched.append(1) or {"loss": np.float32(2.0)})
    assert fetched == [] and isinstance(lazy, dict)
    assert {**lazy} == {"loss": 2.0} and fetched == [1]


# ------------------------------------------------------------------- TensorBoard

def _read_events(path):
    """Scalars {tag: [(step, value)]} and other tags of one event file, read through
    the TFRecord framing and the Event protos that tensorboardX ships."""
    from tensorboardX.proto import event_pb2
    scalars, others = {}, set()
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12
        event = event_pb2.Event.FromString(data[pos:pos + length])
        pos += length + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
            else:
                others.add(v.tag)
    return scalars, others


def _events_in(directory):
    scalars, others = {}, set()
    for name in sorted(os.listdir(directory)):
        if name.startswith("events.out.tfevents"):
            s, o = _read_events(os.path.join(directory, name))
            for k, v in s.items():
                scalars.setdefault(k, []).extend(v)
            others |= o
    return scalars, others


def _tb_model():
    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((4,)), layers.Dense(3, activation="relu"), layers.Dense(1)])
    model.compile(hybridnet.optimizers.SGD(0.01), "mse", metrics=["mae"],
                  strategy=ONE_DEVICE)
    return model


def test_tensorboard_writes_epoch_scalars_in_keras_layout(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = _data()
    model = _tb_model()
    tb = callbacks.TensorBoard(log_dir=tmp_path, histogram_freq=1, write_images=True)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        validation_data=(x[:16], y[:16]), callbacks=[tb])
    train, train_other = _events_in(tmp_path / "train")
    val, _ = _events_in(tmp_path / "validation")
    assert {"epoch_loss", "epoch_mae", "epoch_learning_rate"} <= set(train)
    assert [s for s, _ in train["epoch_loss"]] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]],
                               history.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in val["epoch_loss"]],
                               history.history["val_loss"], rtol=1e-6)
    assert [s for s, _ in val["evaluation_loss_vs_iterations"]] == [3, 6, 9]
    assert not any(k.startswith("batch_") for k in train)
    assert any(t.endswith("/histogram") for t in train_other)
    assert any(t.endswith("/image") for t in train_other)
    assert "model_summary" in train_other or any("model_summary" in t for t in train_other)


def test_tensorboard_batch_scalars_every_n_batches(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = _data()
    tb = callbacks.TensorBoard(log_dir=tmp_path, update_freq=2, write_graph=False,
                               write_steps_per_second=True)
    _tb_model().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tb])
    train, _ = _events_in(tmp_path / "train")
    assert [s for s, _ in train["batch_loss"]] == [2, 4, 6]
    assert [s for s, _ in train["batch_steps_per_second"]] == [2, 4, 6]
    assert "epoch_steps_per_second" in train


def test_tensorboard_files_load_in_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    x, y = _data()
    _tb_model().fit(x, y, batch_size=16, epochs=2, verbose=0,
                    callbacks=[callbacks.TensorBoard(log_dir=tmp_path)])
    acc = accumulator.EventAccumulator(str(tmp_path / "train"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("epoch_loss")] == [0, 1]


def test_tensorboard_arguments_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="update_freq=0"):
        callbacks.TensorBoard(update_freq=0)
    with pytest.raises(ValueError, match="embeddings_freq=1"):
        callbacks.TensorBoard(embeddings_freq=1)
    with pytest.raises(ValueError, match="profile_batch=-1"):
        callbacks.TensorBoard(profile_batch=-1)
    import sys
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match="tensorboardX"):
        callbacks.TensorBoard()
