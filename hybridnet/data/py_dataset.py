"""``PyDataset`` (Keras 3's ``keras.utils.PyDataset``) and the ordered worker pools behind it.

A ``PyDataset`` is indexed by batch: ``dataset[i]`` returns the i-th batch. With
``workers > 1`` (or ``use_multiprocessing=True``), the batches of an epoch are computed by
a pool of threads or worker processes and handed out in index order, at most
``max_queue_size`` batches ahead of the consumer.

Worker processes are never forked from the training process: JAX is multithreaded, and
``fork`` from a process whose JAX runtime is running can deadlock the child. They are
started with the ``"forkserver"`` method (:data:`MP_START_METHOD`; ``"spawn"`` where
forkserver is unavailable): a clean server process, started once per training process
(it exits with it), imports ``hybridnet.data`` without starting any JAX backend, and forks
the workers of every pool from that clean state, so a pool starts in well under a second
after the first. Workers import the module that defines the dataset class and receive the
dataset by pickling, once per worker per epoch, so:

- the dataset must be picklable and its class importable (defined at module level, not in
  a notebook cell or inside a function);
- a script that uses ``use_multiprocessing=True`` must guard its entry point with
  ``if __name__ == "__main__":`` (as for any spawn- or forkserver-based pool);
- the dataset's module should not start JAX computations at import time (workers import
  it; the forkserver does not). A ``__getitem__`` that uses JAX starts a JAX backend in
  every worker; on a GPU machine give the workers ``JAX_PLATFORMS=cpu`` (or at least
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false``) so that they leave the GPU to training.

A pool lives for one epoch. It is shut down (pending batches cancelled, running ones
awaited, workers joined) when the epoch ends, when the consumer stops early (``break``,
``close()``, an exception, ``KeyboardInterrupt``) and at interpreter exit. An exception
raised by ``__getitem__`` reaches the consumer with its original type, at the position of
the batch that raised it. Worker processes ignore SIGINT: a Ctrl-C is handled by the
parent, which then stops the pool.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import pickle
import signal
import threading
import warnings
import weakref

__all__ = ["PyDataset", "MP_START_METHOD"]

#: Start method of worker processes (``use_multiprocessing=True``): "forkserver" (falls back
#: to "spawn" where unavailable) or "spawn"; both are safe with a running JAX runtime in
#: the parent. "fork" is not (it can deadlock) and is refused.
MP_START_METHOD = "forkserver"

# What the forkserver imports once, before forking workers: our package (and with it JAX,
# imported but with no backend started, so forking the server is safe).
_FORKSERVER_PRELOAD = ["hybridnet.data"]


class PyDataset:
    """Base class for a dataset of batches written in Python, as ``keras.utils.PyDataset``.

    Implement ``__len__`` (the number of batches) and ``__getitem__(index)`` (the batch at
    ``index``: ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``, where each part is
    an array, a list or tuple of arrays or a dict of arrays; only a *tuple* is split into
    x, y and sample_weight, a list is a list of inputs). An infinite dataset overrides
    the ``num_batches`` property to return ``None`` and is used with ``steps_per_epoch``.
    ``on_epoch_begin`` / ``on_epoch_end`` are called around every epoch.

    Args:
        workers: number of threads or processes that compute batches in parallel
            (0 or 1: batches are computed in the consumer's thread, unless
            ``use_multiprocessing`` with ``workers=1``: one worker process).
        use_multiprocessing: compute batches in worker processes (never forked from this
            process; see :data:`MP_START_METHOD`) instead of threads. The dataset is pickled to
            each worker every epoch, so it must be picklable and its class defined at the
            top level of an importable module (and scripts need an
            ``if __name__ == "__main__":`` guard).
        max_queue_size: at most this many batches are computed ahead of the consumer.

    Example:

    ```python
    import math
    import numpy as np
    from hybridnet.data import PyDataset

    class Batches(PyDataset):
        def __init__(self, x, y, batch_size, **kwargs):
            super().__init__(**kwargs)     # workers=..., use_multiprocessing=..., ...
            self.x, self.y, self.batch_size = x, y, batch_size

        def __len__(self):
            return math.ceil(len(self.x) / self.batch_size)

        def __getitem__(self, index):
            lo = index * self.batch_size
            hi = min(lo + self.batch_size, len(self.x))
            return self.x[lo:hi], self.y[lo:hi]

    model.fit(Batches(x, y, 32, workers=4), epochs=3)
    ```
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        for name, value, minimum in (("workers", workers, 0),
                                     ("max_queue_size", max_queue_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"PyDataset: `{name}` must be an int >= {minimum}. "
                                 f"Received: {name}={value!r}")
        self._workers = workers
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = max_queue_size

    def _warn_if_super_not_called(self):
        missing = False
        for name, default in (("_workers", 1), ("_use_multiprocessing", False),
                              ("_max_queue_size", 10)):
            if not hasattr(self, name):
                setattr(self, name, default)
                missing = True
        if missing:
            warnings.warn("Your `PyDataset` class should call `super().__init__(**kwargs)` "
                          "in its constructor. `**kwargs` can include `workers`, "
                          "`use_multiprocessing`, `max_queue_size`.", stacklevel=3)

    @property
    def workers(self) -> int:
        self._warn_if_super_not_called()
        return self._workers

    @workers.setter
    def workers(self, value):
        self._workers = value

    @property
    def use_multiprocessing(self) -> bool:
        self._warn_if_super_not_called()
        return self._use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value):
        self._use_multiprocessing = value

    @property
    def max_queue_size(self) -> int:
        self._warn_if_super_not_called()
        return self._max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value):
        self._max_queue_size = value

    def __getitem__(self, index):
        """Returns the batch at position ``index``."""
        raise NotImplementedError(f"{type(self).__name__} must implement "
                                  f"`__getitem__(self, index)` returning a batch")

    @property
    def num_batches(self):
        """The number of batches, or ``None`` for an infinite dataset (default: ``len``)."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(
            f"{type(self).__name__} must implement `__len__` (the number of batches) or "
            f"the `num_batches` property (returning None for an infinite dataset)")

    def __iter__(self):
        n = self.num_batches
        for index in (range(n) if n is not None else itertools.count()):
            yield self[index]

    def on_epoch_begin(self):
        """Called at the beginning of every epoch."""

    def on_epoch_end(self):
        """Called at the end of every epoch."""


# ------------------------------------------------------------------------- worker pools

_LIVE_POOLS: "weakref.WeakSet" = weakref.WeakSet()
_LIVE_EPOCHS: "weakref.WeakSet" = weakref.WeakSet()  # suspended ordered_pool_batches
_WORKER_DATASET = None  # set in each worker process by _init_worker


def _init_worker(payload: bytes):
    global _WORKER_DATASET
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _WORKER_DATASET = pickle.loads(payload)


def _worker_get(index):
    return _WORKER_DATASET[index]


def _shutdown_live_pools():
    # Close the epochs still open (their ``finally`` stops the pool) while the interpreter
    # is intact, rather than when their generators are collected during its teardown.
    for epoch in list(_LIVE_EPOCHS):
        try:
            epoch.close()
        except Exception:  # noqa: BLE001 - e.g. running in another thread; best effort
            pass
    for pool in list(_LIVE_POOLS):
        pool.shutdown(wait=False, cancel_futures=True)


# Runs before concurrent.futures' own exit hook joins the workers, so that queued batches
# are cancelled rather than computed (threading's exit hooks run in reverse order).
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown_live_pools)
else:  # pragma: no cover
    import atexit
    atexit.register(_shutdown_live_pools)


def _mp_context():
    method = MP_START_METHOD
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"PyDataset worker processes start with \"forkserver\" or \"spawn\" "
                         f"(fork can deadlock with JAX). Received: MP_START_METHOD={method!r}")
    if method == "forkserver" and "forkserver" not in multiprocessing.get_all_start_methods():
        method = "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(_FORKSERVER_PRELOAD)  # ignored once it is running
    return context


def _make_pool(dataset, workers: int, use_multiprocessing: bool):
    if not use_multiprocessing:
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="PyDataset")
        return pool, dataset.__getitem__
    try:
        payload = pickle.dumps(dataset)
    except Exception as e:  # noqa: BLE001 - pickling can fail in many ways
        raise ValueError(
            f"A PyDataset with `use_multiprocessing=True` is sent to its worker processes "
            f"by pickling, so it must be picklable and its class defined at the top level "
            f"of a module. Received: {type(dataset).__name__} that could not be pickled "
            f"({type(e).__name__}: {e})") from e
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=_mp_context(),
        initializer=_init_worker, initargs=(payload,))
    return pool, _worker_get


def ordered_pool_batches(dataset, indices, workers: int, use_multiprocessing: bool,
                         max_queue_size: int):
    """Yields ``dataset[i]`` for ``i`` in ``indices``, in order, computed by a pool.

    At most ``max_queue_size`` batches are submitted ahead of the one handed out. The pool
    is created on the first ``next`` and shut down when the indices run out, when this
    generator is closed (the consumer stopped early) or when a batch raises; the
    exception then propagates with its original type.
    """
    epoch = _ordered_pool_batches(dataset, indices, workers, use_multiprocessing,
                                  max_queue_size)
    _LIVE_EPOCHS.add(epoch)
    return epoch


def _ordered_pool_batches(dataset, indices, workers, use_multiprocessing, max_queue_size):
    pool, get = _make_pool(dataset, workers, use_multiprocessing)
    _LIVE_POOLS.add(pool)
    pending: collections.deque = collections.deque()
    indices = iter(indices)
    try:
        for index in itertools.islice(indices, max_queue_size):
            pending.append(pool.submit(get, index))
        while pending:
            batch = pending.popleft().result()
            for index in itertools.islice(indices, 1):
                pending.append(pool.submit(get, index))
            yield batch
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        _LIVE_POOLS.discard(pool)
