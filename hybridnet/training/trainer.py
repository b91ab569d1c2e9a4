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

import contextlib
import itertools
import signal
import threading
import warnings

import numpy as np

from hybridnet import distributed
from hybridnet.data import get_data_adapter, group_batches, prefetch_to_device
from hybridnet.execution.processes import check_process_batch
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
    """One model driven by a Trainer: its runner, its live state, its compiled steps.

    A member may stand for several models run as one program (a stacked ensemble,
    ``hybridnet.ensemble``): an object with ``_trainer_member()`` passed to the Trainer
    returns such a member. Every member answers for its ``models`` in order: ``results``,
    ``evaluate`` and ``predict`` give one entry per model, and ``active`` says whether
    any of them still trains (a model whose ``stop_training`` is set takes no more steps).
    """

    def __init__(self, model):
        self.model = model
        self.models = [model]
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

    def active(self) -> bool:
        return not self.model.stop_training

    def train_fn(self, batch_size: int, steps: int = 1):
        return self.runner.train_fn(batch_size, steps)

    def reset_metrics(self):
        self.state = self.state.replace(metrics=self.runner.init_metrics())

    def results(self, metrics) -> list:
        return [self.runner.results(metrics)]

    def init_metrics(self):
        return self.runner.init_metrics()

    def evaluate(self, metrics, x, y, sw, batch_size):
        return self.runner.evaluate(self.state, metrics, x, y, sw, batch_size)

    def predict(self, x, batch_size) -> list:
        return [self.runner.predict(self.state, x, batch_size)]


def _member(item):
    return item._trainer_member() if hasattr(item, "_trainer_member") else _Member(item)


class _FitCallbacks:
    """fit's callbacks: ``main`` (History, the progress bar and the user's callbacks)
    sees the merged logs of every model; each model's own list (``member_callbacks``)
    sees that model's logs, unprefixed, until the model stops training."""

    def __init__(self, main, models, member_callbacks, params, merge):
        self.main, self.models, self.merge = main, models, merge
        self.members = []
        if member_callbacks is not None:
            if len(member_callbacks) != len(models):
                raise ValueError(f"fit: `member_callbacks` must hold one list per model "
                                 f"({len(models)}). Received: {len(member_callbacks)} lists")
            self.members = [callbacks_lib.CallbackList(list(cbs or []), m, params)
                            for m, cbs in zip(models, member_callbacks)]
        self.batch_callbacks = bool(main.batch_callbacks) or any(
            c.batch_callbacks for c in self.members)
        self._ended = set()
        self._last: dict = {}

    def _live(self):
        return [(i, c) for i, c in enumerate(self.members) if i not in self._ended]

    def _own(self, values, i):
        return {k: values[i][k] for k in self.models[i].metrics_names}

    def on_train_begin(self):
        self.main.on_train_begin()
        for _, c in self._live():
            c.on_train_begin()

    def on_epoch_begin(self, epoch):
        self.main.on_epoch_begin(epoch)
        for _, c in self._live():
            c.on_epoch_begin(epoch)

    def on_train_batch_begin(self, step):
        self.main.on_train_batch_begin(step)
        for _, c in self._live():
            c.on_train_batch_begin(step)

    def on_train_batch_end(self, step, values):
        self.main.on_train_batch_end(step, callbacks_lib.LazyLogs(lambda: self.merge(values)))
        for i, c in self._live():
            c.on_train_batch_end(step, callbacks_lib.LazyLogs(lambda i=i: self._own(values, i)))

    def on_epoch_end(self, epoch, values, val_values=None) -> dict:
        logs = self.merge(values)
        if val_values is not None:
            logs.update({f"val_{k}": v for k, v in self.merge(val_values).items()})
        for i, c in self._live():
            own = callbacks_lib.pythonify_logs(self._own(values, i))
            if val_values is not None:
                own.update({f"val_{k}": v for k, v in callbacks_lib.pythonify_logs(
                    self._own(val_values, i)).items()})
            c.on_epoch_end(epoch, own)
            self._last[i] = own
            if self.models[i].stop_training:
                self._ended.add(i)
                c.on_train_end(own)
        self.main.on_epoch_end(epoch, logs)
        return logs

    def on_train_end(self, logs):
        for i, c in self._live():
            c.on_train_end(self._last.get(i))
        self.main.on_train_end(logs)


def _last_batch_size(adapter) -> int | None:
    """The size of an epoch's last batch when it is smaller than the others (None with a
    single batch: that one is checked as the first)."""
    size, samples, batches = adapter.batch_size, adapter.num_samples, adapter.num_batches
    if not (size and samples and batches) or batches < 2:
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


def _structured(model, batches):
    """``_structure`` over a stream of batches, each as ``(xs, y, sw, size, 1)`` (one
    step per dispatch). Batches of one NumPy array per part for a one-input,
    one-output model (the common case) take a fast path that skips the general
    conversion, which costs several microseconds per step."""
    simple = len(model.output_names) == 1 and len(model.input_names) == 1
    for batch in batches:
        x, y, sw = batch
        if simple and type(x) is np.ndarray and (y is None or type(y) is np.ndarray) and (
                sw is None or type(sw) is np.ndarray):
            yield [x], y, sw, x.shape[0], 1
        else:
            yield (*_structure(model, batch), 1)


def _global_batches(source, members, what):
    """Under several processes: each host batch (the same on every process) as global
    arrays; each process puts only the part its own devices hold."""
    if len(members) != 1:
        raise NotImplementedError(f"{what}: several models on shared batches across "
                                  f"processes are not supported yet. Received: "
                                  f"{len(members)} models over "
                                  f"{distributed.process_count()} processes")
    runner = members[0].runner
    for xs, y, sw, n, k in source:
        yield (*runner.put_batch((xs, y, sw), n, k), n, k)


@contextlib.contextmanager
def _shown_to_callbacks(model, data):
    """``model._data_stream`` is the fit's adapter while the epochs run, so that
    ``BackupAndRestore`` can record its position."""
    model._data_stream = data
    try:
        yield
    finally:
        model._data_stream = None


def _resume_point(model, initial_epoch: int, data) -> tuple[int, int, int]:
    """``(epoch, batches done in it, batches to read and drop)`` where fit starts:
    ``initial_epoch``, or where a callback's ``on_train_begin`` restored the model
    (``model._resume``, set by ``BackupAndRestore``: epoch, batches done, the data
    stream's state at the epoch's start or None, and who restored it). A stream that can
    be positioned is moved past the batches done instead of reading them again."""
    resume = getattr(model, "_resume", None)
    model._resume = None
    if resume is None:
        return initial_epoch, 0, 0
    epoch, done, stream, who = resume
    drop = int(done) if stream is None else data.seek_stream(stream, int(done), who)
    return int(epoch), int(done), drop


class Trainer:
    """Runs Keras' loops for one model, or for a group of models on the same batches.

    Args:
        models: a model, or a list of models (compiled) trained on identical batches; an
            entry may also be a group run as one program (it has ``models`` and
            ``_trainer_member()``, as a stacked ``hybridnet.ensemble.Ensemble``).
        share: turns each data adapter into the one these models read (``wrap(adapter)``;
            ``hybridnet.ensemble`` share modes); None reads the data as given.
        owner: what fit's callbacks see as ``model`` (default: the first model).
        merge_logs: ``(list of per-model logs) -> logs`` for several models (default:
            each key prefixed by its model's name).
    """

    def __init__(self, models, *, share=None, owner=None, merge_logs=None):
        self._items = list(models) if isinstance(models, (list, tuple)) else [models]
        if not self._items:
            raise ValueError("Trainer: `models` must hold at least one model. Received: []")
        self.models = [m for item in self._items for m in (
            item.models if hasattr(item, "_trainer_member") else [item])]
        self.share = share
        self.owner = owner
        self._merge_hook = merge_logs

    def _members(self) -> list:
        return [_member(item) for item in self._items]

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
        if self.share is not None:
            adapter = self.share.wrap(adapter)
        for model in self.models:
            if adapter.batch_size is not None and model._runner is None:
                model._planned_batch_size = adapter.batch_size  # the cost model plans for it
        return adapter

    def _prepare(self, first_batch, what, last_batch=None):
        """Builds (Sequential), checks the inputs against the model and the batch size
        (and the epoch's last, smaller batch) against each plan, before anything is
        compiled. With several models, an error names the model that cannot take the
        shared batches."""
        for i, model in enumerate(self.models):
            try:
                xs = model._to_input_list(first_batch[0])
                model._prepare(xs)
                model._check_inputs(xs)
            except ValueError as error:
                if len(self.models) == 1:
                    raise
                raise ValueError(f"{what}: member {i} ('{model.name}') of {len(self.models)} "
                                 f"cannot take the shared batches. {error}") from None
            runner = model._get_runner()
            check_process_batch(runner.plan, runner.mesh, int(xs[0].shape[0]), what)
            model._check_batch_size(int(xs[0].shape[0]), what, last_batch=last_batch)

    def _batches(self, adapter, rng, what, members, steps_per_execution=1, prefetch=False,
                 skip=0):
        """Host batches -> (x, y, sw, batch size, steps) for the steps, k stacked per
        dispatch where ``steps_per_execution`` allows, put on the devices ahead. The
        members get their runner and state once the first batch has built the models.
        The first ``skip`` batches are read and dropped (a resumed epoch)."""
        iterator = adapter.batches(rng)
        if skip:
            iterator = itertools.islice(iterator, skip, None)
        first = next(iterator, None)
        if first is None:
            return iter(())
        self._prepare(first, what, _last_batch_size(adapter))
        for member in members:
            member.pull()
        model = self.model

        source = _structured(model, itertools.chain((first,), iterator))
        if steps_per_execution > 1:
            grouped = group_batches(((xs, y, sw) for xs, y, sw, _, _ in source),
                                    steps_per_execution)
            source = ((xs, y, sw, int(xs[0].shape[1] if k > 1 else xs[0].shape[0]), k)
                      for (xs, y, sw), k in grouped)
        # Prefetch where a transfer can overlap a step; on the CPU the explicit put costs
        # more per step than it hides (measured 0.27 of 0.47 ms for a small MLP).
        if distributed.process_count() > 1:
            source = _global_batches(source, members, what)
        elif prefetch and len(members) == 1 and members[0].runner.mesh.devices.flat[
                0].platform != "cpu":
            runner = members[0].runner

            def put(item):
                xs, y, sw, n, k = item
                return (*runner.put_batch((xs, y, sw), n, k), n, k)
            source = prefetch_to_device(source, put)
        return source

    # ---------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, member_callbacks=None):
        """Keras' ``fit`` (see ``Model.fit``); returns a ``History``.

        With several models, ``member_callbacks`` (one list per model) run per model on
        that model's own logs: an ``EarlyStopping`` there stops its model only. A model
        whose ``stop_training`` is set takes no more steps; fit ends when all have
        stopped.
        """
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
        if not distributed.is_chief():  # progress and files are the chief's
            cb_list = [cb for cb in cb_list if not getattr(cb, "chief_only", False)]
        elif verbose:
            cb_list.append(callbacks_lib.ProgbarLogger(verbose))
        samples = None
        if data.num_samples is not None and data.batch_size is not None:
            samples = min(data.num_samples, (data.num_batches or 0) * data.batch_size)
        params = {"epochs": epochs, "steps": data.num_batches, "verbose": verbose,
                  "samples_per_epoch": samples}
        cbs = callbacks_lib.CallbackList(cb_list + [history], self.owner or model, params)
        hooks = _FitCallbacks(cbs, self.models, member_callbacks, params, self._merge_logs)
        for m in self.models:
            m.stop_training = False
            m._terminated_on_nan = False
        rng = model._shuffle_stream()
        hooks.on_train_begin()
        initial_epoch, skip, drop = _resume_point(model, initial_epoch, data)
        epoch_logs: dict = {}
        with _InterruptGuard() as guard, _shown_to_callbacks(model, data):
            for epoch in range(initial_epoch, epochs):
                hooks.on_epoch_begin(epoch)
                values = self._train_epoch(data, rng, hooks, guard, skip, drop)
                skip = drop = 0
                if values is None:
                    if epoch == initial_epoch:
                        raise ValueError("fit: the dataset produced no batches. Received an "
                                         "empty iterable for `x`")
                    warnings.warn(f"fit: the data ran out after {epoch - initial_epoch} "
                                  f"epochs; stopping. Pass a repeating iterable with "
                                  f"`steps_per_epoch` to train for {epochs - initial_epoch} "
                                  f"epochs.", stacklevel=3)
                    break
                val_values = None
                if val_data is not None and (epoch + 1) % validation_freq == 0 and \
                        not all(m._terminated_on_nan for m in self.models):
                    val_values = self._run_evaluation(val_data, cbs)
                epoch_logs = hooks.on_epoch_end(epoch, values, val_values)
                data.on_epoch_end()
                if data.exhausted and epoch + 1 < epochs:
                    warnings.warn(f"fit: the data ran out during epoch {epoch + 1}; "
                                  f"stopping. Pass a repeating iterable with "
                                  f"`steps_per_epoch` to train for {epochs - initial_epoch} "
                                  f"epochs.", stacklevel=3)
                    break
                if all(m.stop_training for m in self.models):
                    break
        hooks.on_train_end(epoch_logs)
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

    def _train_epoch(self, data, rng, hooks, guard, skip=0, drop=0) -> list | None:
        """One epoch; returns each model's metric values (device arrays), or None when
        the data gave no batch. A resumed epoch (``skip`` > 0) starts at batch ``skip``
        and keeps the metric accumulators of the restored state; its first ``drop``
        batches are read and dropped (``skip`` of them, or none where the data was moved
        past them)."""
        members = self._members()
        batch_callbacks = hooks.batch_callbacks
        spe = self.model.steps_per_execution
        critical = guard.critical
        step = skip
        training = members
        runs = {}  # (batch size, steps) -> [(member, compiled step)] of the members training
        try:
            for xb, yb, swb, n, k in self._batches(data, rng, "fit", members, spe, True,
                                                   drop):
                if step == skip:
                    training = [m for m in members if m.active()]
                    for member in training if not skip else ():
                        member.reset_metrics()
                if batch_callbacks:
                    hooks.on_train_batch_begin(step)
                todo = runs.get((n, k))
                if todo is None:
                    todo = runs[(n, k)] = [(m, m.train_fn(n, k)) for m in training]
                for member, fn in todo:
                    with critical:
                        member.state = fn(member.state, xb, yb, swb)
                step += k
                if batch_callbacks:
                    for member in members:
                        member.push()
                    hooks.on_train_batch_end(step - 1, self._values(members))
                    for member in members:  # a callback may have set weights or the rate
                        member.pull()
                    if all(m.stop_training for m in self.models):
                        break
                    still = [m for m in training if m.active()]
                    if len(still) != len(training):
                        training = still
                        runs.clear()
        finally:
            for member in members:
                with guard.critical:
                    member.push()
        if step == skip:
            return None
        return self._values(members)

    @staticmethod
    def _values(members) -> list:
        """Each model's metric values, dispatched now (read when logged)."""
        return [v for m in members for v in m.results(m.state.metrics)]

    def _merge_logs(self, values) -> dict:
        """Logs in Keras' order (loss first, then metrics as compiled); with several
        models each key is prefixed by its model's name (or as ``merge_logs`` says)."""
        if len(self.models) == 1:
            names = self.model.metrics_names
            return callbacks_lib.pythonify_logs({k: values[0][k] for k in names})
        if self._merge_hook is not None:
            return callbacks_lib.pythonify_logs(self._merge_hook(
                [callbacks_lib.pythonify_logs({k: vals[k] for k in m.metrics_names})
                 for m, vals in zip(self.models, values)]))
        return callbacks_lib.pythonify_logs({
            f"{m.name}_{k}": vals[k] for m, vals in zip(self.models, values)
            for k in m.metrics_names})

    # ----------------------------------------------------------------- evaluate
    def _run_evaluation(self, data, cbs) -> list:
        """``on_test_begin``, the test batches, ``on_test_end(logs)``: Keras' evaluate,
        also inside ``fit`` for validation with fit's callbacks. Returns each model's
        metric values."""
        cbs.on_test_begin()
        values = self._evaluate_data(data, cbs)
        cbs.on_test_end(self._merge_logs(values))
        return values

    def _evaluate_data(self, data, cbs) -> list:
        members = self._members()
        mstates = None
        ran = False
        batch_callbacks = bool(cbs.batch_callbacks)
        for i, (xb, yb, swb, n, _) in enumerate(self._batches(data, None, "evaluate",
                                                               members)):
            if mstates is None:
                mstates = [m.init_metrics() for m in members]
            if batch_callbacks:
                cbs.on_test_batch_begin(i)
            mstates = [m.evaluate(ms, xb, yb, swb, n) for m, ms in zip(members, mstates)]
            ran = True
            if batch_callbacks:
                values = [v for m, ms in zip(members, mstates) for v in m.results(ms)]
                cbs.on_test_batch_end(i, callbacks_lib.LazyLogs(
                    lambda v=values: self._merge_logs(v)))
        if not ran:
            raise ValueError("evaluate: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        return [v for m, ms in zip(members, mstates) for v in m.results(ms)]

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Keras' ``evaluate`` (see ``Model.evaluate``)."""
        for model in self.models:
            model._assert_compiled("evaluate")
        _check_int("evaluate", "batch_size", batch_size, 1, allow_none=True)
        _check_int("evaluate", "steps", steps, 1, allow_none=True)
        data = self._adapter(x, y, sample_weight, batch_size, steps, False, "evaluate")
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self.owner or self.model,
                                         {"steps": data.num_batches})
        logs = self._merge_logs(self._run_evaluation(data, cbs))
        if verbose not in (0, False) and distributed.is_chief():
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
        members = self._members()
        cbs = callbacks_lib.CallbackList(list(callbacks or []), self.owner or self.model,
                                         {"steps": data.num_batches})
        cbs.on_predict_begin()
        chunks = [[] for _ in self.models]
        batch_callbacks = bool(cbs.batch_callbacks)
        for i, (xb, _, _, n, _) in enumerate(self._batches(data, None, "predict", members)):
            if batch_callbacks:
                cbs.on_predict_batch_begin(i)
            outs = [o for member in members for o in member.predict(xb, n)]
            for out, o in zip(chunks, outs):
                out.append(o)
            if batch_callbacks:
                cbs.on_predict_batch_end(i, {"outputs": self.model._structure_outputs(
                    list(chunks[0][-1]))})
        if not chunks[0]:
            raise ValueError("predict: the dataset produced no batches. Received an empty "
                             "iterable for `x`")
        results = []
        for model, out in zip(self.models, chunks):
            arrays = [np.concatenate([distributed.fetch(c[j]) for c in out])
                      for j in range(len(model.outputs))]
            results.append(model._structure_outputs(arrays))
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
        members = self._members()
        with _InterruptGuard() as guard:
            try:
                for xb, yb, swb, n, _ in self._batches(data, None, "train_on_batch", members):
                    for member in members:
                        member.reset_metrics()
                        fn = member.train_fn(n)
                        with guard.critical:
                            member.state = fn(member.state, xb, yb, swb)
            finally:
                for member in members:
                    with guard.critical:
                        member.push()
        logs = self._merge_logs(self._values(members))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values


__all__ = ["Trainer", "check_fit_arguments"]
