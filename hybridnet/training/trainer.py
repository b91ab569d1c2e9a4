"""The Trainer: Keras' fit / evaluate / predict loops over any runner.

The loop is a pure step over one :class:`~hybridnet.execution.TrainState`: it takes the
model's state, runs compiled steps on it (each donating the old one) and hands the
model back complete states only — after the epoch, before any callback that may read
the weights, and in a ``finally`` when anything goes wrong. A Ctrl-C that arrives while
a step is being dispatched is held until the new state is safe, so an interrupt at any
point leaves the model at its last completed step, ready to ``fit`` on.

A Trainer drives a group of models on the same batches (each with its own runner and
state): ``Trainer([m1, m2]).fit(x, y)`` reads and prepares every batch once.

Example:
    >>> history = Trainer(model).fit(x, y, batch_size=32, epochs=3)   # what model.fit does
"""
from __future__ import annotations

import signal
import threading
import warnings

import numpy as np

from hybridnet.data import get_data_adapter, group_batches, prefetch_to_device
from hybridnet.training import callbacks as callbacks_lib


# ----------------------------------------------------------------------- argument checks

def _check_int(what: str, name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{what}: `{name}` must be {kind}"
                         f"{' or None' if allow_none else ''}. Received: {name}={value!r}")


def check_fit_arguments(epochs, batch_size, validation_freq, steps_per_epoch, initial_epoch,
                        validation_split, validation_steps, validation_batch_size):
    """Keras' fit() arguments, each checked by name with the value received."""
    _check_int("fit", "epochs", epochs, 0)
    _check_int("fit", "batch_size", batch_size, 1, allow_none=True)
    _check_int("fit", "validation_freq", validation_freq, 1)
    _check_int("fit", "steps_per_epoch", steps_per_epoch, 1, allow_none=True)
    _check_int("fit", "initial_epoch", initial_epoch, 0)
    _check_int("fit", "validation_steps", validation_steps, 1, allow_none=True)
    _check_int("fit", "validation_batch_size", validation_batch_size, 1, allow_none=True)
    if isinstance(validation_split, bool) or not isinstance(
            validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise ValueError("fit: `validation_split` must be a float in [0, 1). "
                         f"Received: validation_split={validation_split!r}")


# --------------------------------------------------------------------------- interrupts

class _Critical:
    """``with guard.critical: state = step(state)``: a SIGINT inside the block is raised
    as KeyboardInterrupt only after the block, once the new state is referenced."""
    __slots__ = ("active", "pending")

    def __init__(self):
        self.active = False
        self.pending = False

    def __enter__(self):
        self.active = True

    def __exit__(self, *exc):
        self.active = False
        if self.pending:
            self.pending = False
            if exc[0] is None:
                raise KeyboardInterrupt


class _InterruptGuard:
    """Installs a SIGINT handler for the loop's duration that defers an interrupt
    arriving inside ``critical`` (see :class:`_Critical`); elsewhere SIGINT behaves as
    before. Only the main thread can install signal handlers: elsewhere it does
    nothing."""

    def __init__(self):
        self.critical = _Critical()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self._previous = previous
                signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handler(self, signum, frame):
        if self.critical.active:
            self.critical.pending = True
            return None
        if callable(self._previous) and self._previous is not signal.default_int_handler:
            return self._previous(signum, frame)
        raise KeyboardInterrupt


# ------------------------------------------------------------------------------ members

class _Member:
    """One model driven by a Trainer: its runner, its live state, its compiled steps."""

    def __init__(self, model):
        self.model = model
        self.runner = None
        self.state = None

    def pull(self):
        """The model's current state (picks up weights or a learning rate that a callback
        set), to train on."""
        self.runner = self.model._get_runner()
        self.state = self.model._current_state()

    def push(self):
        """Hands the live state back to the model (and its layers)."""
        if self.state is not None and self.state.is_live():
            self.model._commit_state(self.state)


def _last_batch_size(adapter) -> int | None:
    """The size of an epoch's last batch when it is smaller than the others."""
    size, samples, batches = adapter.batch_size, adapter.num_samples, adapter.num_batches
    if not (size and samples and batches):
        return None
    last = min(samples, batches * size) - (batches - 1) * size
    return last if 0 < last < size else None


def _structure(model, batch):
    """A host batch in the user's structure -> (inputs list, targets, weights, size)."""
    x, y, sw = batch
    xs = model._to_input_list(x)
    names = model.output_names
    single = len(names) == 1
    if y is not None:
        y = model._to_output_list(y, "y")
        y = y[0] if single else y
    if sw is not None:
        sw = model._to_output_list(sw, "sample_weight")
        sw = sw[0] if single else sw
    return xs, y, sw, int(xs[0].shape[0])


class Trainer:
    """Runs Keras' loops for one model, or for a group of models on the same batches.

    Args:
        models: a model, or a list of models (compiled) trained on identical batches.
    """

    def __init__(self, models):
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        if not self.models:
            raise ValueError("Trainer: `models` must hold at least one model. Received: []")

    @property
    def model(self):
        return self.models[0]

    # --------------------------------------------------------------------- data
    def _adapter(self, x, y, sample_weight, batch_size, steps, shuffle, what,
                 class_weight=None):
        if x is None:
            raise ValueError(f"{what}: `x` is required. Received: x=None")
        adapter = get_data_adapter(x, y, sample_weight, batch_size=batch_size,
                                   steps_per_epoch=steps, shuffle=shuffle,
                                   class_weight=class_weight, what=what)
        for model in self.models:
            if adapter.batch_size is not None and model._runner is None:
                model._planned_batch_size = adapter.batch_size  # the cost model plans for it
        return adapter

    def _prepare(self, first_batch, what, last_batch=None):
        """Builds (Sequential), checks the inputs against the model and the batch size
        (and the epoch's last, smaller batch) against each plan, before anything is
        compiled."""
        for model in self.models:
            xs = model._to_input_list(first_batch[0])
            model._prepare(xs)
            model._check_inputs(xs)
            model._check_batch_size(int(xs[0].shape[0]), what, last_batch=last_batch)

    def _batches(self, adapter, rng, what, members, steps_per_execution=1, prefetch=False):
        """Host batches -> (x, y, sw, batch size, steps) for the steps, k stacked per
        dispatch where ``steps_per_execution`` allows, put on the devices ahead. The
        members get their runner and state once the first batch has built the models."""
        iterator = adapter.batches(rng)
        first = next(iterator, None)
        if first is None:
            return
        self._prepare(first, what, _last_batch_size(adapter))
        for member in members:
            member.pull()
        model = self.model

        def structured():
            yield _structure(model, first)
            for batch in iterator:
                yield _structure(model, batch)

        source = structured()
        if steps_per_execution > 1:
            grouped = group_batches(((xs, y, sw) for xs, y, sw, _ in source),
                                    steps_per_execution)
            source = ((xs, y, sw, int(xs[0].shape[1] if k > 1 else xs[0].shape[0]), k)
                      for (xs, y, sw), k in grouped)
        else:
            source = ((xs, y, sw, n, 1) for xs, y, sw, n in source)
        # Prefetch where a transfer can overlap a step; on the CPU the explicit put costs
        # more per step than it hides (measured 0.27 of 0.47 ms for a small MLP).
        if prefetch and len(members) == 1 and members[0].runner.mesh.devices.flat[
                0].platform != "cpu":
            runner = members[0].runner

            def put(item):
                xs, y, sw, n, k = item
                return (*runner.put_batch((xs, y, sw), n, k), n, k)
            source = prefetch_to_device(source, put)
        yield from source

    # ---------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Keras' ``fit`` (see ``Model.fit``); returns a ``History``."""
        for model in self.models:
            model._assert_compiled("fit")
        check_fit_arguments(epochs, batch_size, validation_freq, steps_per_epoch,
                            initial_epoch, validation_split, validation_steps,
                            validation_batch_size)
        data = self._adapter(x, y, sample_weight, batch_size, steps_per_epoch, shuffle,
                             "fit", class_weight)
        val_data = None
        if validation_split:
            data, val_data = data.split(validation_split,
                                        validation_batch_size=validation_batch_size,
                                        validation_steps=validation_steps)
        if validation_data is not None:
            val_data = self._validation_adapter(validation_data,
                                                validation_batch_size or batch_size,
                                                validation_steps)
        verbose = 1 if verbose == "auto" else verbose
        model = self.model
        history = callbacks_lib.History()
        cb_list = list(callbacks or [])
        if verbose:
            cb_list.append(callbacks_lib.ProgbarLogger(verbose))
        samples = None
        if data.num_samples is not None and data.batch_size is not None:
            samples = min(data.num_samples, (data.num_batches or 0) * data.batch_size)
        cbs = callbacks_lib.CallbackList(cb_list + [history], model, {
            "epochs": epochs, "steps": data.num_batches, "verbose": verbose,
            "samples_per_epoch": samples})
        for m in self.models:
            m.stop_training = False
            m._terminated_on_nan = False
        rng = model._shuffle_stream()
        cbs.on_train_begin()
        epoch_logs: dict = {}
        with _InterruptGuard() as guard:
            for epoch in range(initial_epoch, epochs):
                cbs.on_epoch_begin(epoch)
                logs = self._train_epoch(data, rng, cbs, guard)
                if logs is None:
                    if epoch == initial_epoch:
                        raise ValueError("fit: the dataset produced no batches. Received an "
                                         "empty iterable for `x`")
                    warnings.warn(f"fit: the data ran out after {epoch - initial_epoch} "
                                  f"epochs; stopping. Pass a repeating iterable with "
                                  f"`steps_per_epoch` to train for {epochs - initial_epoch} "
                                  f"epochs.", stacklevel=3)
                    break
                epoch_logs = logs
                if val_data is not None and (epoch + 1) % validation_freq == 0 and \
                        not model._terminated_on_nan:
                    val_logs = self._run_evaluation(val_data, cbs)
                    epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
                cbs.on_epoch_end(epoch, epoch_logs)
                data.on_epoch_end()
                if data.exhausted and epoch + 1 < epochs:
                    warnings.warn(f"fit: the data ran out during epoch {epoch + 1}; "
                                  f"stopping. Pass a repeating iterable with "
                                  f"`steps_per_epoch` to train for {epochs - initial_epoch} "
                                  f"epochs.", stacklevel=3)
                    break
                if any(m.stop_training for m in self.models):
                    break
        cbs.on_train_end(epoch_logs)
        return history

    def _validation_adapter(self, validation_data, batch_size, steps):
        """Keras: a tuple ``(x, y[, sample_weight])``, or any other data source."""
        if isinstance(validation_data, tuple) and len(validation_data) in (2, 3) and \
                not isinstance(validation_data[0], tuple):
            vsw = validation_data[2] if len(validation_data) == 3 else None
            return self._adapter(validation_data[0], validation_data[1], vsw, batch_size,
                                 steps, False, "fit(validation_data)")
        return self._adapter(validation_data, None, None, batch_size, steps, False,
                             "fit(validation_data)")

    def _train_epoch(self, data, rng, cbs, guard) -> dict | None:
        members = [_Member(m) for m in self.models]
        batch_callbacks = bool(cbs.batch_callbacks)
        spe = self.model.steps_per_execution
        step = 0
        compiled = [{} for _ in members]
        try:
            for xb, yb, swb, n, k in self._batches(data, rng, "fit", members, spe, True):
                if step == 0:
                    for member in members:
                        member.state = member.state.replace(
                            metrics=member.runner.init_metrics())
                if batch_callbacks:
                    cbs.on_train_batch_begin(step)
                for member, fns in zip(members, compiled):
                    fn = fns.get((n, k))
                    if fn is None:
                        fn = fns[(n, k)] = member.runner.train_fn(n, k)
                    with guard.critical:
                        member.state = fn(member.state, xb, yb, swb)
                step += k
                if batch_callbacks:
                    for member in members:
                        member.push()
                    logs = self._lazy_logs(members)
                    cbs.on_train_batch_end(step - 1, logs)
                    for member in members:  # a callback may have set weights or the rate
                        member.pull()
                    if any(m.stop_training for m in self.models):
                        break
        finally:
            for member in members:
                with guard.critical:
                    member.push()
        if step == 0:
            return None
        return self._logs(members)

    def _lazy_logs(self, members):
        values = [m.runner.results(m.state.metrics) for m in members]  # dispatched now
        return callbacks_lib.LazyLogs(lambda: self._merge_logs(members, values))

    def _logs(self, members) -> dict:
        return self._merge_logs(members, [m.runner.results(m.state.metrics)
                                          for m in members])

    def _merge_logs(self, members, values) -> dict:
        """Logs in Keras' order (loss first, then metrics as compiled); with several
        models each key is prefixed by its model's name."""
        if len(members) == 1:
            names = members[0].model.metrics_names
            return callbacks_lib.pythonify_logs({k: values[0][k] for k in names})
        return callbacks_lib.pythonify_logs({
            f"{m.model.name}_{k}": vals[k] for m, vals in zip(members, values)
            for k in m.model.metrics_names})

    # ----------------------------------------------------------------- evaluate
    def _run_evaluation(self, data, cbs) -> dict:
        """``on_test_begin``, the test batches, ``on_test_end(logs)``: Keras' evaluate,
        also inside ``fit`` for validation with fit's callbacks."""
        cbs.on_test_begin()
        logs = self._evaluate_data(data, cbs)
        cbs.on_test_end(logs)
        return logs

    def _evaluate_data(self, data, cbs) -> dict:
        members = [_Member(m) for m in self.models]
        mstates = None
        ran = False
        batch_callbacks = bool(cbs.batch_callbacks)
        for i, (xb, yb, swb, n, _) in enumerate(self._batches(data, None, "evaluate",
                                                               members)):
            if mstates is None:
                mstates = [m.runner.init_metrics() for m in members]
            if batch_callbacks:
                cbs.on_test_batch_begin(i)
            mstates = [m.runner.evaluate(m.state, ms, xb, yb, swb, n)
                       for m, ms in zip(members, mstates)]
            ran = True
            if batch_callbacks:
                values = [m.runner.results(ms) for m, ms in zip(members, mstates)]
                cbs.on_test_batch_end(i, callbacks_lib.LazyLogs(
                    lambda v=values: self._merge_logs(members, v)))
        if not ran:
            raise ValueError("evaluate: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        return self._merge_logs(members, [m.runner.results(ms)
                                          for m, ms in zip(members, mstates)])

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Keras' ``evaluate`` (see ``Model.evaluate``)."""
        for model in self.models:
            model._assert_compiled("evaluate")
        _check_int("evaluate", "batch_size", batch_size, 1, allow_none=True)
        _check_int("evaluate", "steps", steps, 1, allow_none=True)
        data = self._adapter(x, y, sample_weight, batch_size, steps, False, "evaluate")
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self.model,
                                         {"steps": data.num_batches})
        logs = self._run_evaluation(data, cbs)
        if verbose not in (0, False):
            print(" - ".join(f"{k}: {callbacks_lib._format_value(v)}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------------ predict
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Keras' ``predict`` (see ``Model.predict``): numpy outputs per model."""
        _check_int("predict", "batch_size", batch_size, 1, allow_none=True)
        _check_int("predict", "steps", steps, 1, allow_none=True)
        data = self._adapter(x, None, None, batch_size, steps, False, "predict")
        members = [_Member(m) for m in self.models]
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self.model,
                                         {"steps": data.num_batches})
        cbs.on_predict_begin()
        chunks = [[] for _ in members]
        batch_callbacks = bool(cbs.batch_callbacks)
        for i, (xb, _, _, n, _) in enumerate(self._batches(data, None, "predict", members)):
            if batch_callbacks:
                cbs.on_predict_batch_begin(i)
            for member, out in zip(members, chunks):
                out.append(member.runner.predict(member.state, xb, n))
            if batch_callbacks:
                cbs.on_predict_batch_end(i, {"outputs": members[0].model._structure_outputs(
                    list(chunks[0][-1]))})
        if not chunks[0]:
            raise ValueError("predict: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        results = []
        for member, out in zip(members, chunks):
            arrays = [np.concatenate([np.asarray(c[j]) for c in out])
                      for j in range(len(member.model.outputs))]
            results.append(member.model._structure_outputs(arrays))
        cbs.on_predict_end()
        return results[0] if len(results) == 1 else results

    # ------------------------------------------------------------- one batch
    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One step on one batch; returns that batch's loss (and metrics)."""
        for model in self.models:
            model._assert_compiled("train_on_batch")
        whole = get_data_adapter(x, y, sample_weight, what="train_on_batch")
        data = self._adapter(x, y, sample_weight, whole.num_samples, None, False,
                             "train_on_batch", class_weight)
        members = [_Member(m) for m in self.models]
        with _InterruptGuard() as guard:
            try:
                for xb, yb, swb, n, _ in self._batches(data, None, "train_on_batch", members):
                    for member in members:
                        member.state = member.state.replace(
                            metrics=member.runner.init_metrics())
                        fn = member.runner.train_fn(n)
                        with guard.critical:
                            member.state = fn(member.state, xb, yb, swb)
            finally:
                for member in members:
                    with guard.critical:
                        member.push()
        logs = self._logs(members)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values


__all__ = ["Trainer", "check_fit_arguments"]
