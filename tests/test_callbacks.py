"""Callbacks: hooks, EarlyStopping, ModelCheckpoint, CSVLogger, TerminateOnNaN, LR schedule."""
import csv
import io
import os
from contextlib import redirect_stdout

import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Sequential, callbacks, layers
from hybridnet.strategies import DataParallel

ONE_DEVICE = DataParallel(devices=jax.devices()[:1])


def _model(lr=0.05):
    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((4,)), layers.Dense(8, activation="relu"), layers.Dense(1)])
    model.compile(hybridnet.optimizers.SGD(lr), "mse", metrics=["mae"], strategy=ONE_DEVICE)
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(1, keepdims=True).astype("float32")


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin{epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(f"batch{batch}:{sorted(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end{epoch}:{sorted(logs)}")

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_custom_callback_hooks_and_logs():
    rec = Recorder()
    x, y = _data(32)
    _model().fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), callbacks=[rec],
                 verbose=0)
    assert rec.params["epochs"] == 2 and rec.params["steps"] == 2
    assert rec.model is not None
    assert rec.events == [
        "train_begin", "epoch_begin0", "batch0:['loss', 'mae']", "batch1:['loss', 'mae']",
        "epoch_end0:['loss', 'mae', 'val_loss', 'val_mae']", "epoch_begin1",
        "batch0:['loss', 'mae']", "batch1:['loss', 'mae']",
        "epoch_end1:['loss', 'mae', 'val_loss', 'val_mae']", "train_end"]


def test_batch_logs_are_lazy_and_not_synced_without_batch_callbacks():
    class EpochOnly(callbacks.Callback):
        pass

    cb_list = callbacks.CallbackList([EpochOnly(), callbacks.History()], None, {})
    assert cb_list.batch_callbacks == []
    fetched = []
    logs = callbacks.LazyLogs(lambda: fetched.append(1) or {"loss": np.float32(2.0)})
    assert fetched == []
    assert logs["loss"] == 2.0 and dict(logs) == {"loss": 2.0} and fetched == [1]


def test_early_stopping_restores_best_weights():
    x, y = _data()
    model = _model(lr=0.01)
    seen = []

    class Spoil(callbacks.Callback):
        """Reports a validation loss that is best at epoch 1 and worse afterwards."""
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = [5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0][epoch]
            if epoch == 1:
                seen.append(self.model.get_weights())

    stop = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=7, batch_size=16, callbacks=[Spoil(), stop], verbose=0)
    assert len(history.epoch) == 4  # epochs 0..3: best at 1, then two without improvement
    assert stop.stopped_epoch == 3
    for a, b in zip(model.get_weights(), seen[0]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_on_accuracy_mode_auto():
    stop = callbacks.EarlyStopping(monitor="val_accuracy")
    assert stop.mode == "max"
    with pytest.raises(ValueError, match="Received: mode='up'"):
        callbacks.EarlyStopping(mode="up")


def test_model_checkpoint_best_only_and_atomic(tmp_path):
    x, y = _data()
    path = str(tmp_path / "best.hnet")
    ckpt = callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)
    model = _model()
    model.fit(x, y, epochs=3, batch_size=16, callbacks=[ckpt], verbose=0)
    assert os.path.exists(path)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    restored = hybridnet.models.load_model(path)  # loss decreases: the best is the last epoch
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    per_epoch = callbacks.ModelCheckpoint(str(tmp_path / "e{epoch:02d}-{loss:.3f}.weights.h5"),
                                          save_weights_only=True)
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[per_epoch], verbose=0)
    assert sorted(f.split("-")[0] for f in os.listdir(tmp_path) if f.startswith("e")) == [
        "e01", "e02"]


def test_csv_logger(tmp_path):
    x, y = _data()
    path = tmp_path / "log.csv"
    _model().fit(x, y, epochs=3, batch_size=16, callbacks=[callbacks.CSVLogger(path)], verbose=0)
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert set(rows[0]) == {"epoch", "loss", "mae"}
    assert float(rows[2]["loss"]) < float(rows[0]["loss"])


def test_terminate_on_nan_keeps_last_good_checkpoint(tmp_path):
    x, y = _data()
    path = str(tmp_path / "last.hnet")
    model = _model(lr=0.01)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(path, monitor="loss")])
    good = hybridnet.models.load_model(path).get_weights()
    y_bad = y.copy()
    y_bad[40] = np.nan  # batch 2 of 4 produces a NaN loss
    history = model.fit(x, y_bad, epochs=5, batch_size=16, shuffle=False, verbose=0,
                        callbacks=[callbacks.TerminateOnNaN(),
                                   callbacks.ModelCheckpoint(path, monitor="loss")])
    assert len(history.epoch) == 1 and np.isnan(history.history["loss"][0])
    for a, b in zip(hybridnet.models.load_model(path).get_weights(), good):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_scheduler_changes_rate_without_retrace():
    x, y = _data()
    model = _model(lr=0.1)
    rates = []
    sched = callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    record = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: rates.append(float(
            hybridnet.optimizers.get_learning_rate(model.train_state.opt_state))))
    history = model.fit(x, y, epochs=3, batch_size=16, callbacks=[sched, record], verbose=0)
    np.testing.assert_allclose(rates, [0.1, 0.05, 0.025], rtol=1e-6)
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.025])
    assert len(model._runner._compiled) <= 2  # one train step (+ results), no retrace


def test_zero_learning_rate_freezes_weights():
    x, y = _data()
    model = _model()
    model.optimizer.learning_rate = 0.0
    before = model.get_weights()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_progress_bar_prints_steps_metrics_and_rate():
    x, y = _data()
    out = io.StringIO()
    with redirect_stdout(out):
        _model().fit(x, y, epochs=2, batch_size=16, verbose=1)
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "4/4" in text and "samples/s" in text and "loss:" in text and "mae:" in text
    silent = io.StringIO()
    with redirect_stdout(silent):
        _model().fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert silent.getvalue() == ""


def test_reduce_lr_on_plateau():
    x, y = _data()
    model = _model(lr=0.1)

    class Flat(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0  # never improves after the first epoch

    reduce = callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=0.02)
    rates = []
    record = callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: rates.append(model.optimizer.learning_rate))
    model.fit(x, y, epochs=5, batch_size=16, callbacks=[Flat(), reduce, record], verbose=0)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.02])
    np.testing.assert_allclose(float(hybridnet.optimizers.get_learning_rate(model.train_state.opt_state)),
                               0.02, rtol=1e-6)
