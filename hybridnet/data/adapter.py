"""Turns what users pass to fit/evaluate/predict into batches of numpy arrays.

``x`` may be an array, a list of arrays or a dict keyed by input name; ``y`` and
``sample_weight`` likewise per output. Alternatively ``x`` may be an iterable of
``(x, y)`` or ``(x, y, sample_weight)`` batches (a generator, a list, a data loader).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence

import numpy as np


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def to_list(data, names: Sequence[str], what: str) -> list | None:
    """Normalises an array, list or dict of arrays to a list ordered like ``names``."""
    if data is None:
        return None
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"`{what}` is missing entries for {missing}. Expected keys "
                             f"{list(names)}. Received keys: {sorted(data)}")
        return [np.asarray(data[n]) if not _is_array(data[n]) else data[n] for n in names]
    if isinstance(data, (list, tuple)) and not _is_array(data) and data and _is_array(data[0]):
        items = list(data)
    else:
        items = [data]
    if len(items) != len(names):
        raise ValueError(f"`{what}` must hold {len(names)} arrays (for {list(names)}). "
                         f"Received: {len(items)}")
    return [a if _is_array(a) else np.asarray(a) for a in items]


def is_array_data(x) -> bool:
    if _is_array(x):
        return True
    if isinstance(x, dict):
        return all(_is_array(v) or isinstance(v, (list, tuple)) for v in x.values())
    return isinstance(x, (list, tuple)) and bool(x) and all(_is_array(v) for v in x)


class ArrayData:
    """In-memory arrays split into (optionally shuffled) batches.

    Args:
        x, y, sample_weight: lists of arrays with the same first dimension.
        batch_size: samples per batch; the last batch may be smaller.
    """

    def __init__(self, x: list, y: list | None, sample_weight: list | None, batch_size: int,
                 shuffle: bool = False, max_steps: int | None = None):
        self.x, self.y, self.sample_weight = x, y, sample_weight
        lengths = {f"x[{i}]": len(a) for i, a in enumerate(x)}
        lengths.update({f"y[{i}]": len(a) for i, a in enumerate(y or [])})
        lengths.update({f"sample_weight[{i}]": len(a) for i, a in enumerate(sample_weight or [])})
        if len(set(lengths.values())) > 1:
            raise ValueError("x, y and sample_weight must have the same number of samples. "
                             f"Received: {lengths}")
        self.num_samples = len(x[0])
        if self.num_samples == 0:
            raise ValueError("The dataset is empty. Received: x with 0 samples")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.max_steps = max_steps

    @property
    def steps(self) -> int:
        """Batches per epoch (``steps_per_epoch`` caps them, as in Keras)."""
        steps = math.ceil(self.num_samples / self.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def order(self, rng: np.random.Generator | None):
        if self.shuffle and rng is not None:
            return rng.permutation(self.num_samples)
        return None

    def take(self, index) -> tuple:
        """The batch at ``index`` (a slice or an index array) as (x, y, sw)."""
        pick = lambda arrays: None if arrays is None else [a[index] for a in arrays]  # noqa: E731
        return pick(self.x), pick(self.y), pick(self.sample_weight)

    def batches(self, order=None) -> Iterator[tuple]:
        """Batches in ``order`` (an index array, possibly a subset), or in sequence."""
        n = self.num_samples if order is None else len(order)
        n = min(n, self.steps * self.batch_size)
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            yield self.take(slice(lo, hi) if order is None else order[lo:hi])

    def split(self, fraction: float) -> tuple["ArrayData", "ArrayData"]:
        """Keras ``validation_split``: the last ``fraction`` of samples, before shuffling."""
        if not 0 < fraction < 1:
            raise ValueError(f"`validation_split` must be in (0, 1). Received: {fraction!r}")
        cut = int(self.num_samples * (1 - fraction))
        if cut == 0 or cut == self.num_samples:
            raise ValueError(f"validation_split={fraction} leaves an empty training or "
                             f"validation set for {self.num_samples} samples")
        part = lambda arrays, s: None if arrays is None else [a[s] for a in arrays]  # noqa: E731
        head = ArrayData(part(self.x, slice(0, cut)), part(self.y, slice(0, cut)),
                         part(self.sample_weight, slice(0, cut)), self.batch_size, self.shuffle)
        tail = ArrayData(part(self.x, slice(cut, None)), part(self.y, slice(cut, None)),
                         part(self.sample_weight, slice(cut, None)), self.batch_size, False)
        return head, tail


def unpack_batch(batch) -> tuple[Any, Any, Any]:
    """``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` -> a 3-tuple."""
    if isinstance(batch, tuple):
        if len(batch) == 1:
            return batch[0], None, None
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch
        raise ValueError(f"A batch must be (x,), (x, y) or (x, y, sample_weight). "
                         f"Received: a tuple of length {len(batch)}")
    return batch, None, None


class IterableData:
    """Batches from an iterable; a callable or re-iterable source restarts each epoch."""

    def __init__(self, source: Iterable, steps: int | None = None):
        self.source = source
        self.steps = steps if steps is not None else (
            len(source) if hasattr(source, "__len__") else None)
        self._iterator = None

    def batches(self) -> Iterator[tuple]:
        if self._iterator is None or iter(self.source) is not self.source:
            self._iterator = iter(self.source)
        count = 0
        while self.steps is None or count < self.steps:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                return
            count += 1
            yield unpack_batch(batch)
