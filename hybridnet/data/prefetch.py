"""Stages after the adapters: grouping batches for ``steps_per_execution`` and putting
batches on the devices ahead of the step that reads them."""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Iterator

import numpy as np

__all__ = ["group_batches", "prefetch_to_device"]


def _close(source) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


# ------------------------------------------------------------------------ group_batches

def _signature(batch) -> Any:
    """Structure, shapes and dtypes of a batch: batches with equal signatures stack."""
    if batch is None:
        return None
    if isinstance(batch, dict):
        return ("d", tuple((k, _signature(v)) for k, v in batch.items()))
    if isinstance(batch, (list, tuple)):
        return ("l" if isinstance(batch, list) else "t", tuple(_signature(v) for v in batch))
    dtype = getattr(batch, "dtype", None)
    return (np.shape(batch), dtype if dtype is not None else np.asarray(batch).dtype)


def _stack(batches: list) -> Any:
    first = batches[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: _stack([b[k] for b in batches]) for k in first}
    if isinstance(first, (list, tuple)):
        parts = [_stack([b[i] for b in batches]) for i in range(len(first))]
        return parts if isinstance(first, list) else tuple(parts)
    return np.stack(batches)


def group_batches(batches: Iterable, k: int) -> Iterator[tuple[Any, int]]:
    """Groups ``k`` consecutive batches into one, for Keras' ``steps_per_execution``.

    Yields ``(stacked, k)`` where ``stacked`` has the structure of a batch (arrays, lists,
    tuples, dicts, ``None`` leaves) and each array is ``np.stack`` of the ``k`` batches'
    arrays (a new leading axis of size ``k``), and ``(batch, 1)`` for a batch that cannot
    be grouped: one whose structure, shapes or dtypes differ from its neighbours' (a
    smaller last batch) or one of the fewer than ``k`` left at the end or before such a
    change. Order is preserved and nothing is dropped. Reads at most ``k`` batches ahead
    of what it has yielded; closing it closes ``batches``.

    Args:
        batches: an iterable of batches (e.g. ``adapter.batches(rng)``).
        k: the number of batches per group, a positive int.

    Example:
        >>> for batch, n in group_batches(adapter.batches(rng), 4):
        ...     state = (multi_step if n > 1 else step)(state, batch)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"group_batches: `k` must be a positive int. Received: k={k!r}")
    source = iter(batches)
    try:
        if k == 1:
            for batch in source:
                yield batch, 1
            return
        buffer: list = []
        buffered_signature = None
        for batch in source:
            signature = _signature(batch)
            if buffer and signature != buffered_signature:
                for old in buffer:
                    yield old, 1
                buffer = []
            buffered_signature = signature
            buffer.append(batch)
            if len(buffer) == k:
                grouped, buffer = buffer, []
                yield _stack(grouped), k
        for old in buffer:
            yield old, 1
    finally:
        _close(source)


# ------------------------------------------------------------------- prefetch_to_device

def prefetch_to_device(batches: Iterable, put: Callable[[Any], Any],
                       size: int = 2) -> Iterator[Any]:
    """Applies ``put`` to the batches ``size`` ahead of the one the consumer is using.

    ``put`` moves a host batch to the devices (typically ``jax.device_put`` with the
    step's input shardings). JAX transfers are asynchronous, so while the consumer runs
    step ``t`` on ``put(batch[t])``, the transfers of batches ``t+1 .. t+size`` are in
    flight.

    Read-ahead: when the consumer has received batch ``t`` (0-based), exactly ``t + size
    + 1`` batches have been read from ``batches`` and passed to ``put`` (fewer at the end).
    A consumer that stops after batch ``t`` has therefore caused at most ``size`` batches
    to be read that it never used. ``size=0`` applies ``put`` lazily, reading nothing
    ahead. An exception raised by ``batches`` or by ``put`` is raised to the consumer at
    the position of the batch that caused it, after the batches before it. Closing this
    generator (or letting it be collected) closes ``batches``.

    Args:
        batches: an iterable of host batches.
        put: host batch -> device batch.
        size: how many batches to transfer ahead; an int >= 0.

    Example:
        >>> put = lambda b: jax.device_put(b, sharding)
        >>> for batch in prefetch_to_device(adapter.batches(rng), put):
        ...     state = step(state, batch)
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"prefetch_to_device: `size` must be an int >= 0. "
                         f"Received: size={size!r}")
    source = iter(batches)
    queue: collections.deque = collections.deque()  # (ok, device batch or exception)
    done = False

    def enqueue() -> None:
        # Reads one batch and puts it; an exception takes that batch's place in the queue.
        nonlocal done
        try:
            item = next(source)
        except StopIteration:
            done = True
            return
        except Exception as e:  # noqa: BLE001 - re-raised at its position
            queue.append((False, e))
            done = True
            return
        try:
            queue.append((True, put(item)))
        except Exception as e:  # noqa: BLE001
            queue.append((False, e))
            done = True

    try:
        if size == 0:
            for item in source:
                yield put(item)
            return
        while not done and len(queue) < size:
            enqueue()
        while queue:
            ok, value = queue.popleft()
            if not ok:
                raise value
            if not done:
                enqueue()
            yield value
    finally:
        queue.clear()
        _close(source)
