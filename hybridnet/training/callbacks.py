"""Keras callbacks: Callback, CallbackList, History, ProgbarLogger, EarlyStopping,
ModelCheckpoint, CSVLogger, TerminateOnNaN, LearningRateScheduler, LambdaCallback,
ReduceLROnPlateau, TensorBoard, BackupAndRestore.

Every hook gets ``logs`` as a dict. Per-batch logs are lazy: their values are fetched
from the device only when a callback reads them, so callbacks that ignore batch logs
cost no host sync, and batch hooks run only for callbacks that override one.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings

import numpy as np

_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin",
                "on_test_batch_end", "on_predict_batch_begin", "on_predict_batch_end",
                "on_batch_begin", "on_batch_end")


def pythonify_logs(logs) -> dict:
    """Keras' ``pythonify_logs``: a new dict whose scalar values are Python floats
    (arrays of several values stay numpy arrays; other values stay as they are)."""
    out = {}
    for key, value in (logs or {}).items():
        if isinstance(value, dict):
            out.update(pythonify_logs(value))
            continue
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            value = np.asarray(value)
            value = float(value) if value.size == 1 and value.dtype.kind in "biuf" else value
        elif isinstance(value, (int, np.integer, np.floating)) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


class LazyLogs(dict):
    """A dict of metric values fetched from the device on first use.

    ``compute`` returns device arrays already dispatched (nothing blocks until a value
    is read); a callback may keep the logs, read them later, or change them."""

    def __init__(self, compute):
        super().__init__()
        self._compute = compute

    def _fill(self):
        if self._compute is not None:
            compute, self._compute = self._compute, None
            dict.update(self, pythonify_logs(compute()))
        return self

    def __repr__(self):
        return dict.__repr__(self._fill())

    def __reduce__(self):
        return dict, (dict(self._fill()),)


def _eager(name):
    method = getattr(dict, name)

    def call(self, *args, **kwargs):
        return method(self._fill(), *args, **kwargs)
    call.__name__ = name
    return call


for _name in ("__getitem__", "__contains__", "__iter__", "__len__", "__eq__", "__ne__",
              "__setitem__", "__delitem__", "__or__", "__ror__", "__ior__", "__reversed__",
              "keys", "values", "items", "get", "copy", "update", "pop", "popitem",
              "setdefault", "clear"):
    setattr(LazyLogs, _name, _eager(_name))
del _name


class Callback:
    """Base class: override any ``on_*`` hook. ``self.model`` and ``self.params`` are set.

    Every hook receives ``logs`` as a dict (empty where there is nothing to report),
    in Keras' order: ``on_train_begin``, then per epoch ``on_epoch_begin``,
    ``on_train_batch_begin/end`` per step, ``on_test_begin``,
    ``on_test_batch_begin/end``, ``on_test_end`` when validating, ``on_epoch_end``;
    finally ``on_train_end``. ``evaluate`` calls the ``on_test_*`` hooks, ``predict``
    the ``on_predict_*`` hooks.

    ``chief_only = True`` marks a callback that only prints or writes files: under
    several processes fit runs it on the chief (process 0) only.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, logs=None):
        ...         print(epoch, logs["loss"])
    """
    chief_only = False

    def __init__(self):
        self.model = None
        self.params: dict = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): self.on_batch_begin(batch, logs=logs)
    def on_train_batch_end(self, batch, logs=None): self.on_batch_end(batch, logs=logs)
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass

    def _uses_batch_hooks(self) -> bool:
        return any(getattr(type(self), h) is not getattr(Callback, h) for h in _BATCH_HOOKS)


def _as_logs(logs) -> dict:
    if isinstance(logs, LazyLogs):
        return logs
    return pythonify_logs(logs)


class CallbackList:
    """Calls a hook on every callback, always with a dict of logs; batch hooks go only
    to callbacks that override one (so a loop without them reads no per-step values).

    Example:
        >>> cbs = CallbackList([History()], model, {"epochs": 1, "steps": 10})
        >>> cbs.on_train_begin()
    """

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks or [])
        self.model = model
        self.params = params
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ValueError("Expected `callbacks` to hold `Callback` instances. "
                                 f"Received: {cb!r}")
            cb.set_model(model)
            cb.set_params(params)
        self.batch_callbacks = [cb for cb in self.callbacks if cb._uses_batch_hooks()]

    def _call(self, targets, hook, *args, logs=None):
        logs = _as_logs(logs)
        for cb in targets:
            getattr(cb, hook)(*args, logs)

    def on_train_begin(self, logs=None):
        self._call(self.callbacks, "on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self._call(self.callbacks, "on_train_end", logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call(self.callbacks, "on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call(self.callbacks, "on_epoch_end", epoch, logs=logs)

    def on_test_begin(self, logs=None):
        self._call(self.callbacks, "on_test_begin", logs=logs)

    def on_test_end(self, logs=None):
        self._call(self.callbacks, "on_test_end", logs=logs)

    def on_predict_begin(self, logs=None):
        self._call(self.callbacks, "on_predict_begin", logs=logs)

    def on_predict_end(self, logs=None):
        self._call(self.callbacks, "on_predict_end", logs=logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call(self.batch_callbacks, "on_train_batch_begin", batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call(self.batch_callbacks, "on_train_batch_end", batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._call(self.batch_callbacks, "on_test_batch_begin", batch, logs=logs)

    def on_test_batch_end(self, batch, logs=None):
        self._call(self.batch_callbacks, "on_test_batch_end", batch, logs=logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._call(self.batch_callbacks, "on_predict_batch_begin", batch, logs=logs)

    def on_predict_batch_end(self, batch, logs=None):
        # Keras hands the batch outputs over as they are (device arrays).
        logs = dict(logs or {})
        for cb in self.batch_callbacks:
            cb.on_predict_batch_end(batch, logs)


class History(Callback):
    """Records epoch logs; returned by ``fit``. ``history.history["loss"]`` etc."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _format_value(v) -> str:
    if isinstance(v, np.ndarray):
        v = float(np.mean(v))  # as Keras' progress bar shows arrays
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.4e}"


def _format_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(round(seconds))}s"


class ProgbarLogger(Callback):
    """The Keras progress bar: steps done, ETA, time per step, samples/s, metrics.

    verbose=1 redraws one line (about every 0.1 s) on a terminal, and prints one
    line per epoch otherwise; verbose=2 prints one line per epoch.
    """
    chief_only = True

    def __init__(self, verbose: int = 1, stream=None, interval: float = 0.1):
        super().__init__()
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.interval = interval
        self.dynamic = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()

    def on_train_begin(self, logs=None):
        self.epochs = self.params.get("epochs", 1)

    def _uses_batch_hooks(self) -> bool:
        return self.dynamic  # a log file gets one line per epoch: no per-batch logs needed

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = time.perf_counter()
        self.seen = 0
        if self.verbose:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")
            self.stream.flush()

    def on_train_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        now = time.perf_counter()
        if self.dynamic and now - self.last >= self.interval:
            self.last = now
            self._draw(self.seen, logs, final=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.verbose:
            steps = self.params.get("steps") or self.seen
            self._draw(steps, logs, final=True)

    def _draw(self, step: int, logs, final: bool):
        total = self.params.get("steps")
        elapsed = time.perf_counter() - self.start
        width = 20
        if total:
            done = int(width * min(step, total) / total)
            bar = f"{step}/{total} " + "━" * done + "─" * (width - done)
        else:
            bar = f"{step}/Unknown"
        per_step = elapsed / max(step, 1)
        samples = self.params.get("samples_per_epoch")
        rate = ""
        if samples and total:
            rate = f" - {samples * min(step, total) / total / max(elapsed, 1e-9):.0f} samples/s"
        if final or not total:
            timing = f" {_format_time(elapsed)} {per_step * 1e3:.0f}ms/step"
        else:
            timing = f" ETA: {_format_time(per_step * (total - step))}"
        values = "".join(f" - {k}: {_format_value(v)}" for k, v in (logs or {}).items())
        line = f"{bar}{timing}{rate}{values}"
        if self.dynamic:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class EarlyStopping(Callback):
    """Stops training when ``monitor`` stops improving.

    Example:
        >>> EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor, self.patience, self.verbose = monitor, patience, verbose
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.mode = _resolve_mode(mode, monitor, "EarlyStopping")
        self.min_delta = abs(min_delta) * (1 if self.mode == "max" else -1)
        self.stopped_epoch = 0

    def _improved(self, current, reference):
        if reference is None:
            return True
        if self.mode == "max":
            return current - self.min_delta > reference
        return current - self.min_delta < reference

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best, self.best_weights = None, None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"EarlyStopping: monitor '{self.monitor}' is not in the logs "
                          f"{sorted(logs or {})}; skipping.", stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


def _resolve_mode(mode, monitor, owner):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: `mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode != "auto":
        return mode
    return "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"


class ModelCheckpoint(Callback):
    """Saves the model (or weights) after each epoch, atomically.

    ``filepath`` may contain ``{epoch}`` and log keys, e.g.
    ``"ckpt/model.{epoch:02d}-{val_loss:.2f}.hnet"``. A crash mid-write never
    leaves a truncated file: the file is written beside the target and renamed.

    Example:
        >>> ModelCheckpoint("best.hnet", monitor="val_accuracy", save_best_only=True)
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch" and not isinstance(save_freq, int):
            raise ValueError(f"ModelCheckpoint: `save_freq` must be 'epoch' or an int. "
                             f"Received: save_freq={save_freq!r}")
        self.filepath = os.fspath(filepath)
        self.monitor, self.verbose = monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.mode = _resolve_mode(mode, monitor, "ModelCheckpoint")
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self._batches = 0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int):
            self._batches += 1
            if self._batches % self.save_freq == 0:
                self._save(self._epoch, dict(logs or {}))

    def _uses_batch_hooks(self) -> bool:
        return isinstance(self.save_freq, int)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, dict(logs or {}))

    def _save(self, epoch, logs):
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            warnings.warn(f"ModelCheckpoint: loss is {loss} at epoch {epoch + 1}; keeping the "
                          "last good checkpoint.", stacklevel=2)
            return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"ModelCheckpoint: monitor '{self.monitor}' is not in the logs "
                              f"{sorted(logs)}; skipping.", stacklevel=2)
                return
            if not np.isfinite(current):
                return
            better = self.best is None or (current > self.best if self.mode == "max"
                                           else current < self.best)
            if not better:
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to "
                      f"{current}, saving model to {path}")
            self.best = current
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class CSVLogger(Callback):
    """Streams epoch logs to a CSV file: ``CSVLogger("training.log", append=False)``."""
    chief_only = True

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self.keys = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename)
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.writer = None
        self._has_header = bool(exists)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=["epoch"] + self.keys,
                                         delimiter=self.sep, extrasaction="ignore")
            if not self._has_header:
                self.writer.writeheader()
        self.writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


class TerminateOnNaN(Callback):
    """Stops training as soon as the loss is NaN or infinite (checked every batch)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True
            self.model._terminated_on_nan = True


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch start: ``schedule(epoch, lr) -> new lr``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.model.optimizer.learning_rate)
        new_lr = self.schedule(epoch, lr)
        if not isinstance(new_lr, (float, int, np.floating, np.integer)):
            raise ValueError(f"LearningRateScheduler: the schedule must return a float. "
                             f"Received: {new_lr!r}")
        self.model.optimizer.learning_rate = float(new_lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new_lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and isinstance(logs, dict):
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``."""

    def __init__(self, **hooks):
        super().__init__()
        for name, fn in hooks.items():
            if not name.startswith("on_"):
                raise ValueError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)

    def _uses_batch_hooks(self) -> bool:
        return any(h in self.__dict__ for h in _BATCH_HOOKS)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` stops improving.

    Example:
        >>> ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5)
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: `factor` must be in (0, 1). "
                             f"Received: factor={factor!r}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.mode = _resolve_mode(mode, monitor, "ReduceLROnPlateau")
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def _improved(self, current):
        if self.best is None:
            return True
        if self.mode == "max":
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: monitor '{self.monitor}' is not in the logs "
                          f"{sorted(logs or {})}; skipping.", stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait >= self.patience and self.cooldown_counter == 0:
            old = float(self.model.optimizer.learning_rate)
            new = max(old * self.factor, self.min_lr)
            if new < old:
                self.model.optimizer.learning_rate = new
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
            self.cooldown_counter, self.wait = self.cooldown, 0


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError("TensorBoard: writing event files needs the `tensorboardX` package "
                          "(`pip install tensorboardX`).") from e
    return SummaryWriter


def _weight_image(value: np.ndarray):
    """A weight as images (N, H, W, 1) as Keras' TensorBoard draws it, or None."""
    w = np.squeeze(value)
    if w.ndim == 1:  # bias
        w = w.reshape(1, w.shape[0], 1, 1)
    elif w.ndim == 2:  # dense kernel, the longer side across
        if w.shape[0] > w.shape[1]:
            w = w.T
        w = w.reshape(1, w.shape[0], w.shape[1], 1)
    elif w.ndim == 3:  # conv kernel, one image per channel
        w = np.transpose(w, (2, 0, 1))[..., None]
    else:
        return None
    return w


class TensorBoard(Callback):
    """Writes TensorBoard event files (with ``tensorboardX``), laid out as Keras does:
    ``log_dir/train`` and ``log_dir/validation``.

    Per epoch: ``epoch_<metric>`` scalars (and ``epoch_learning_rate``) at step
    ``epoch``, validation metrics in ``validation`` without their ``val_`` prefix;
    after each evaluation ``evaluation_<metric>_vs_iterations`` at the training step.
    With ``update_freq="batch"`` or an int N, ``batch_<metric>`` every N training
    batches (this reads the metrics from the device at those steps).

    Args:
        log_dir: where to write.
        histogram_freq: every how many epochs to write weight histograms (0: never).
        write_graph: write the model summary as text at the start of training.
        write_images: with ``histogram_freq``, also write weights as images.
        write_steps_per_second: also log training steps per second.
        update_freq: "epoch", "batch" or an int (every N batches).
        profile_batch: a batch (int) or a ``(start, stop)`` pair of batches to trace
            with ``jax.profiler`` into ``log_dir/train``; 0 traces nothing.
        embeddings_freq, embeddings_metadata: only 0 / None (not supported).

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[TensorBoard("logs/run1")])
        >>> # then: tensorboard --logdir logs
    """
    chief_only = True

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0,
                 embeddings_freq=0, embeddings_metadata=None):
        super().__init__()
        self._writer_class = _summary_writer_class()
        if isinstance(histogram_freq, bool) or not isinstance(
                histogram_freq, (int, np.integer)) or histogram_freq < 0:
            raise ValueError("TensorBoard: `histogram_freq` must be an int >= 0. "
                             f"Received: histogram_freq={histogram_freq!r}")
        if update_freq not in ("epoch", "batch") and (
                isinstance(update_freq, bool) or not isinstance(update_freq, (int, np.integer))
                or update_freq < 1):
            raise ValueError("TensorBoard: `update_freq` must be 'epoch', 'batch' or a "
                             f"positive int. Received: update_freq={update_freq!r}")
        if embeddings_freq or embeddings_metadata is not None:
            raise ValueError("TensorBoard: embeddings are not supported. Received: "
                             f"embeddings_freq={embeddings_freq!r}, "
                             f"embeddings_metadata={embeddings_metadata!r}")
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = int(histogram_freq)
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._start_batch, self._stop_batch = self._parse_profile_batch(profile_batch)
        self._writers: dict = {}
        self._global_train_batch = 0
        self._global_test_batch = 0
        self._tracing = False

    @staticmethod
    def _parse_profile_batch(profile_batch):
        value = profile_batch
        if isinstance(value, str):
            value = [int(v) for v in value.split(",")]
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = (int(value), int(value))
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, (int, np.integer)) for v in value)
                and 0 <= value[0] <= value[1]):
            raise ValueError("TensorBoard: `profile_batch` must be an int >= 0 or a pair "
                             f"(start, stop) of batches. Received: profile_batch={profile_batch!r}")
        return int(value[0]), int(value[1])

    @property
    def _profiling(self) -> bool:
        return self._stop_batch > 0

    def _uses_batch_hooks(self) -> bool:
        return self.update_freq != "epoch" or self._profiling

    def _writer(self, which: str):
        if which not in self._writers:
            self._writers[which] = self._writer_class(
                logdir=os.path.join(self.log_dir, which))
        return self._writers[which]

    def _scalars(self, which: str, logs: dict, prefix: str, step: int):
        writer = self._writer(which)
        for name, value in logs.items():
            value = np.asarray(value, dtype=np.float64) if not isinstance(value, float) \
                else value
            if isinstance(value, float) or value.size == 1:
                writer.add_scalar(f"{prefix}{name}", float(value), step)
            else:  # one scalar per threshold
                for i, v in enumerate(value.reshape(-1)):
                    writer.add_scalar(f"{prefix}{name}/{i}", float(v), step)

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        self._global_train_batch = 0
        if self.write_graph:
            lines = []
            self.model.summary(print_fn=lines.append)
            self._writer("train").add_text("model_summary",
                                           "<pre>" + "\n".join(lines) + "</pre>", 0)

    def on_train_end(self, logs=None):
        if self._tracing:
            self._stop_trace()
        self._close()

    def on_epoch_begin(self, epoch, logs=None):
        if self.write_steps_per_second:
            self._epoch_start = (time.perf_counter(), self.model.iterations)

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        if self.write_steps_per_second:
            self._batch_start = time.perf_counter()
        if self._profiling and not self._tracing and self._global_train_batch == max(
                self._start_batch, 1):
            import jax
            jax.profiler.start_trace(os.path.join(self.log_dir, "train"))
            self._tracing = True

    def on_train_batch_end(self, batch, logs=None):
        step = self._global_train_batch
        if self.update_freq != "epoch" and step % self.update_freq == 0:
            if self.write_steps_per_second:
                elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
                self._writer("train").add_scalar("batch_steps_per_second", 1.0 / elapsed, step)
            self._scalars("train", dict(logs or {}), "batch_", step)
        if self._tracing and step >= self._stop_batch:
            self._stop_trace()

    def on_test_batch_begin(self, batch, logs=None):
        self._global_test_batch += 1

    def on_test_end(self, logs=None):
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            iterations = int(self.model.iterations)
            self._scalars("validation", {f"evaluation_{k}_vs_iterations": v
                                         for k, v in (logs or {}).items()}, "", iterations)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and train:
            train["learning_rate"] = float(optimizer.learning_rate)
        if self.write_steps_per_second and train:
            start, start_iterations = self._epoch_start
            elapsed = max(time.perf_counter() - start, 1e-9)
            train["steps_per_second"] = (self.model.iterations - start_iterations) / elapsed
        if train:
            self._scalars("train", train, "epoch_", epoch)
        if val:
            self._scalars("validation", val, "epoch_", epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        for writer in self._writers.values():
            writer.flush()

    # ---------------------------------------------------------------- helpers
    def _log_weights(self, epoch):
        writer = self._writer("train")
        for layer in self.model.layers:
            for i, (spec, value) in enumerate(zip(layer.weights, layer.get_weights())):
                name = f"{layer.name}/{getattr(spec, 'path', None) or getattr(spec, 'name', i)}"
                name = name.replace(":", "_")
                writer.add_histogram(f"{name}/histogram", np.asarray(value, np.float32), epoch)
                if self.write_images:
                    image = _weight_image(np.asarray(value, np.float32))
                    if image is not None:
                        writer.add_images(f"{name}/image", image, epoch, dataformats="NHWC")

    def _stop_trace(self):
        import jax
        jax.profiler.stop_trace()
        self._tracing = False

    def _close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _rng_to_json(state):
    """A NumPy bit generator's state with every int as a string (JSON keeps them whole)."""
    if isinstance(state, dict):
        return {k: _rng_to_json(v) for k, v in state.items()}
    if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
        return f"int:{int(state)}"
    return state


def _rng_from_json(state):
    if isinstance(state, dict):
        return {k: _rng_from_json(v) for k, v in state.items()}
    if isinstance(state, str) and state.startswith("int:"):
        return int(state[4:])
    return state


class BackupAndRestore(Callback):
    """Backs training up so that a run killed at any point, started again with the same
    command, resumes where the last backup was taken, as Keras' ``BackupAndRestore``.

    A backup is a checkpoint (``hybridnet.checkpoint``: sharded, asynchronous, atomic)
    of the whole TrainState (weights, optimizer state, metric accumulators, step, RNG)
    and of the position in the data: the epoch, the batches done in it, the shuffle
    stream's state when it began and, for a source that goes on from epoch to epoch (an
    ``ImagePipeline``), its position then. Resuming replays that epoch's shuffle and
    skips the batches done (an ``ImagePipeline`` is moved past them without reading
    them), so with arrays, a ``PyDataset`` or an ``ImagePipeline`` the resumed run ends
    with the parameters of an uninterrupted one. A one-shot generator cannot be
    replayed: it resumes at the right epoch and step with whatever it yields next.

    Every process must use the callback (each writes its own shards). The model must be
    built before ``fit`` (as Keras requires). ``fit``'s ``initial_epoch`` is overridden
    by a backup.

    Args:
        backup_dir: the directory of the backups (deleted at the end of training when
            ``delete_checkpoint``).
        save_freq: ``"epoch"`` (a backup after every epoch) or an int: a backup every
            that many batches (one due on an epoch's last batch is taken at the epoch's
            end); ``False`` takes none.
        double_checkpoint: keep the last two backups instead of one.
        delete_checkpoint: delete ``backup_dir`` when training ends normally.

    Example:
        >>> backup = BackupAndRestore("/tmp/backup", save_freq=100)
        >>> model.fit(x, y, epochs=10, callbacks=[backup])   # rerun after a crash: resumes
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True):
        super().__init__()
        if not backup_dir or not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError("BackupAndRestore: `backup_dir` must be a directory path. "
                             f"Received: backup_dir={backup_dir!r}")
        if save_freq is not False and save_freq != "epoch" and (
                isinstance(save_freq, bool) or not isinstance(save_freq, int)
                or save_freq < 1):
            raise ValueError("BackupAndRestore: `save_freq` must be 'epoch', a positive "
                             f"int or False. Received: save_freq={save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._manager = None
        self._epoch = 0
        self._epoch_rng = None   # the shuffle stream's state when the epoch began
        self._epoch_stream = None  # the data stream's position when the epoch began
        self._resumed_stream = None  # the restored backup's stream position
        self._done = 0           # batches done in the running epoch
        self._since_save = 0     # batches since the last backup (int save_freq)
        self._pending = False    # a backup due on an epoch's last batch
        self._resumed_at = 0

    def _uses_batch_hooks(self) -> bool:
        return isinstance(self.save_freq, int) and not isinstance(self.save_freq, bool)

    def on_train_begin(self, logs=None):
        from hybridnet.checkpoint import CheckpointManager
        model = self.model
        if not hasattr(type(model), "train_state"):
            raise ValueError("BackupAndRestore: expected to back up one hybridnet Model. "
                             f"Received: {type(model).__name__} (groups of models and "
                             f"ensembles are not backed up yet)")
        if not model.built:
            raise ValueError("BackupAndRestore: the model must be built before you call "
                             f"`fit()`. Model '{model.name}' is unbuilt: build it first "
                             f"(call it on a batch of data, `build(input_shape)`, or "
                             f"start it with an `Input`).")
        self._manager = CheckpointManager(self.backup_dir,
                                          max_to_keep=2 if self.double_checkpoint else 1)
        self._since_save, self._pending, self._resumed_at = 0, False, 0
        self._resumed_stream = None
        if self._manager.latest_step() is None:
            return
        metadata = self._manager.restore(model)
        position = metadata.get("position")
        if not isinstance(position, dict) or not {"epoch", "batch", "shuffle"} <= set(
                position):
            raise ValueError(f"BackupAndRestore: the backup in '{self._manager.directory}' "
                             f"has no training position. Expected metadata 'position' "
                             f"with epoch, batch and shuffle. Received: {metadata!r}")
        model._shuffle_stream().bit_generator.state = _rng_from_json(position["shuffle"])
        model._resume = (int(position["epoch"]), int(position["batch"]),
                         position.get("stream"),
                         f"BackupAndRestore: the backup in '{self._manager.directory}'")
        self._resumed_at = int(position["batch"])
        self._resumed_stream = position.get("stream")

    def _stream(self):
        """The fit's data stream position now (None for sources an epoch replays)."""
        data = getattr(self.model, "_data_stream", None)
        return None if data is None else data.stream_state()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_rng = _rng_to_json(self.model._shuffle_stream().bit_generator.state)
        # a resumed epoch began where the backup says, before the batches done
        self._epoch_stream = self._resumed_stream if self._resumed_at else self._stream()
        self._done, self._resumed_at, self._resumed_stream = self._resumed_at, 0, None

    def on_train_batch_end(self, batch, logs=None):
        if not self._uses_batch_hooks():
            return
        self._since_save += batch + 1 - self._done
        self._done = batch + 1
        if self._since_save < self.save_freq:
            return
        steps = self.params.get("steps")
        if steps is not None and self._done >= steps:
            self._pending = True  # the epoch's end takes it, with the epoch's logs done
        else:
            self._save(self._epoch, self._done, self._epoch_rng, self._epoch_stream)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch" or self._pending:
            # the next epoch's shuffle is drawn from the stream's state now, and a
            # continuing stream goes on from where this epoch left it
            self._save(epoch + 1, 0,
                       _rng_to_json(self.model._shuffle_stream().bit_generator.state),
                       self._stream())

    def _save(self, epoch, batch, shuffle, stream):
        self._manager.save(self.model, metadata={"position": {
            "epoch": epoch, "batch": batch, "shuffle": shuffle, "stream": stream}})
        self._since_save, self._pending = 0, False

    def on_train_end(self, logs=None):
        from hybridnet import distributed
        if self._manager is None:
            return
        self._manager.close()
        directory, self._manager = self._manager.directory, None
        if self.delete_checkpoint:
            distributed.barrier("BackupAndRestore: saved")
            if distributed.is_chief() and os.path.isdir(directory):
                import shutil  # renamed first: a kill mid-delete leaves no partial backup
                doomed = f"{directory}.deleting-{os.getpid()}"
                os.replace(directory, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            distributed.barrier("BackupAndRestore: deleted")
