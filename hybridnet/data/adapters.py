"""One adapter protocol for everything ``fit`` / ``evaluate`` / ``predict`` accept.

After Keras 3's ``keras/src/trainers/data_adapters/``: :func:`get_data_adapter` picks an
adapter for ``x`` (arrays, Python lists, dicts, generators and iterables of batches,
:class:`~hybridnet.data.PyDataset`), and every adapter hands out host batches
``(x, y, sample_weight)`` of NumPy arrays in the user's structure, one epoch per
:meth:`DataAdapter.batches` call. The trainer drives the rest: shuffling streams,
``validation_split`` (:meth:`DataAdapter.split`), one slice per process
(:meth:`DataAdapter.shard`), ``steps_per_execution`` (:func:`~hybridnet.data.group_batches`)
and device prefetch (:func:`~hybridnet.data.prefetch_to_device`).

Where we differ from Keras 3, on purpose:

- ``steps_per_epoch`` caps every epoch, which starts from the beginning of the data (Keras
  continues where the last epoch stopped when the cap is below the data's size); a
  one-shot generator does continue, since it cannot restart.
- ``class_weight`` and ``sample_weight`` multiply (Keras 3 refuses both together), and
  ``class_weight`` also works for generators (per batch, as Keras does for PyDataset).
- Python lists of samples (``x=[[1, 2], [3, 4]]``, ``y=[0, 1]``) are converted to one
  array, as tf.keras 2's ``ListsOfScalarsDataAdapter`` did.
- A batch from a generator or PyDataset is split into ``(x, y, sample_weight)`` only when
  it is a *tuple*; a list is a structure of inputs, as for arrays (Keras also unpacks a
  list).
"""
from __future__ import annotations

import collections.abc
import copy
import functools
import math
import reprlib
import warnings
import weakref
from typing import Iterator

import numpy as np

from hybridnet.data.py_dataset import PyDataset, ordered_pool_batches

__all__ = ["DataAdapter", "ArrayDataAdapter", "GeneratorDataAdapter", "PyDatasetAdapter",
           "get_data_adapter"]

DEFAULT_BATCH_SIZE = 32  # Keras' default for array data

_repr = reprlib.Repr()
_repr.maxlist = _repr.maxtuple = 6
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel = 3


def _describe(value) -> str:
    """A short description of what was received, for error messages."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{_repr.repr(value)} (of type {type(value).__name__})"


def _check_positive_int(what: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what}: `{name}` must be a positive int. Received: {name}={value!r}")


def _check_shuffle(what: str, shuffle):
    if shuffle is None:
        return False
    if shuffle == "batch" or isinstance(shuffle, (bool, np.bool_)):
        return shuffle if shuffle == "batch" else bool(shuffle)
    raise ValueError(f"{what}: `shuffle` must be True, False or \"batch\". "
                     f"Received: shuffle={shuffle!r}")


def _floatx_cast() -> bool:
    """Whether float64 arrays become float32 (Keras' floatx), i.e. JAX runs without x64."""
    try:
        import jax
        return not jax.config.read("jax_enable_x64")
    except Exception:  # noqa: BLE001 - no JAX or an older config API
        return True


# ------------------------------------------------------------------ array structures

_SCALARS = (bool, int, float, complex, str, bytes, np.generic)


def _is_array_like(v) -> bool:
    return isinstance(v, np.ndarray) or (
        hasattr(v, "__array__") and not isinstance(v, (str, bytes, dict, list, tuple)))


def _is_scalar(v) -> bool:
    return isinstance(v, _SCALARS) or (_is_array_like(v) and np.ndim(v) == 0)


def _is_sample_list(v) -> bool:
    """A Python list of samples (``[0, 1, 1]``, ``[[1, 2], [3, 4]]``): one array."""
    while isinstance(v, (list, tuple)) and len(v) > 0:
        v = v[0]
    return _is_scalar(v)


def _is_leaf(v) -> bool:
    return _is_array_like(v) or (isinstance(v, (list, tuple)) and _is_sample_list(v))


def is_array_data(v) -> bool:
    """True for an array, a list of samples, or a list/tuple/dict of those.

    A list or tuple whose items are themselves lists or tuples of arrays is not array
    data: it is an iterable of batches (``[(x0, y0), (x1, y1)]``).
    """
    if _is_leaf(v):
        return True
    if isinstance(v, dict):
        return all(_is_leaf(u) for u in v.values())
    if isinstance(v, (list, tuple)):
        return all(_is_leaf(u) for u in v)
    return False


def _convert_leaf(v, name: str, what: str, cast: bool) -> np.ndarray:
    if isinstance(v, np.ndarray):
        a = v
    elif isinstance(v, (list, tuple)):
        try:
            a = np.asarray(v)
        except ValueError as e:
            raise ValueError(f"{what}: `{name}` is a ragged list (its items have different "
                             f"lengths) and cannot be converted to an array. Pass arrays "
                             f"of equal shapes. Received: {name}={_repr.repr(v)}") from e
        if a.dtype == object:
            raise ValueError(f"{what}: `{name}` must be a list of numbers (or of equal-length "
                             f"lists of numbers) to be converted to an array. "
                             f"Received: {name}={_repr.repr(v)}")
    else:
        a = np.asarray(v)
    if a.ndim == 0:
        raise ValueError(f"{what}: `{name}` must have a batch (first) dimension, i.e. rank "
                         f">= 1. Received: {name}.shape=()")
    if cast and a.dtype == np.float64:
        a = a.astype(np.float32)
    return a


def _convert(v, name: str, what: str, cast: bool):
    """User array data -> the same structure of NumPy arrays."""
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: _convert_leaf(u, f"{name}[{k!r}]", what, cast) for k, u in v.items()}
    if isinstance(v, (list, tuple)) and not _is_sample_list(v):
        return type(v)(_convert_leaf(u, f"{name}[{i}]", what, cast) for i, u in enumerate(v))
    return _convert_leaf(v, name, what, cast)


def _leaves(struct, name: str):
    """(name, array) for every array of a structure."""
    if struct is None:
        return
    if isinstance(struct, dict):
        for k, v in struct.items():
            yield from _leaves(v, f"{name}[{k!r}]")
    elif isinstance(struct, (list, tuple)):
        for i, v in enumerate(struct):
            yield from _leaves(v, f"{name}[{i}]")
    else:
        yield name, struct


def _map(fn, struct):
    if struct is None:
        return None
    if isinstance(struct, dict):
        return {k: _map(fn, v) for k, v in struct.items()}
    if isinstance(struct, (list, tuple)):
        return type(struct)(_map(fn, v) for v in struct)
    return fn(struct)


def _taker(struct, gather: bool):
    """A fast function index -> the structure's rows at ``index`` (a slice, or an index
    array when ``gather``)."""
    if struct is None:
        return lambda index: None
    if isinstance(struct, dict):
        items = [(k, _taker(v, gather)) for k, v in struct.items()]
        return lambda index: {k: take(index) for k, take in items}
    if isinstance(struct, (list, tuple)):
        takers = [_taker(v, gather) for v in struct]
        if isinstance(struct, list):
            return lambda index: [take(index) for take in takers]
        return lambda index: tuple(take(index) for take in takers)
    if gather:
        take = struct.take if isinstance(struct, np.ndarray) else functools.partial(
            np.take, struct)
        return lambda index: take(index, axis=0)
    return struct.__getitem__


def _to_numpy(v, name: str, what: str):
    """A structure from a batch -> the same structure of NumPy arrays (no copies of
    NumPy arrays)."""
    if v is None or isinstance(v, np.ndarray):
        return v
    if isinstance(v, dict):
        return {k: _to_numpy(u, name, what) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        if _is_sample_list(v):
            return _convert_leaf(v, name, what, False)
        return type(v)(_to_numpy(u, name, what) for u in v)
    return np.asarray(v)


def _batch_len(struct) -> int | None:
    for _, a in _leaves(struct, ""):
        return int(a.shape[0])
    return None


# ------------------------------------------------------------------------ class weights

def _clean_class_weight(class_weight, what: str) -> dict:
    if not isinstance(class_weight, collections.abc.Mapping):
        raise ValueError(f"{what}: `class_weight` must be a dict mapping class indices to "
                         f"weights. Received: class_weight={_describe(class_weight)}")
    clean = {}
    for key, weight in class_weight.items():
        try:
            index = int(key)
            if index != key:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{what}: `class_weight` keys must be integer class indices. "
                             f"Received: key {key!r} of type {type(key).__name__}") from None
        try:
            clean[index] = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: `class_weight` values must be numbers. Received: "
                             f"class_weight[{key!r}]={weight!r}") from None
    return clean


def _class_sample_weights(y, class_weight: dict, what: str) -> np.ndarray:
    """Per-sample weights from ``class_weight`` for targets ``y`` (class indices, shape
    (n,) or (n, 1), or one-hot, shape (n, classes))."""
    if y is None:
        raise ValueError(f"{what}: `class_weight` needs targets `y` to weight. Received: y=None")
    if not isinstance(y, np.ndarray):
        raise ValueError(f"{what}: `class_weight` is only supported for a single array of "
                         f"targets (a model with one output). Received: y of type "
                         f"{type(y).__name__}")
    if y.ndim > 2:
        raise ValueError(f"{what}: `class_weight` needs targets of shape (samples,), "
                         f"(samples, 1) or one-hot (samples, classes). Received: "
                         f"y.shape={y.shape}")
    classes = y
    if y.ndim == 2:
        classes = y[:, 0] if y.shape[1] == 1 else np.argmax(y, axis=-1)
    classes = np.round(classes).astype(np.int64)
    present, inverse = np.unique(classes, return_inverse=True)
    table = np.array([class_weight.get(int(c), 1.0) for c in present], np.float32)
    return table[inverse.reshape(-1)]


def _combine_weights(sample_weight, class_sw: np.ndarray, what: str):
    if sample_weight is None:
        return class_sw
    if not isinstance(sample_weight, np.ndarray):
        raise ValueError(f"{what}: `class_weight` with `sample_weight` needs a single "
                         f"`sample_weight` array (they are multiplied). Received: "
                         f"sample_weight of type {type(sample_weight).__name__}")
    return sample_weight * class_sw.reshape((-1,) + (1,) * (sample_weight.ndim - 1))


def _unpack_batch(batch, what: str):
    """``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` -> NumPy (x, y, sw)."""
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{what}: a batch must be `x`, `(x,)`, `(x, y)` or "
                             f"`(x, y, sample_weight)`. Received: a tuple of length "
                             f"{len(batch)}")
        parts = tuple(batch) + (None,) * (3 - len(batch))
    else:
        parts = (batch, None, None)
    return tuple(_to_numpy(part, f"{name} (in a batch)", what)
                 for part, name in zip(parts, ("x", "y", "sample_weight")))


# ---------------------------------------------------------------------------- protocol

class DataAdapter:
    """The protocol every input source is seen through by the trainer.

    Attributes:
        num_batches: batches per epoch (after the ``steps_per_epoch`` cap), or ``None``
            when unknown (a generator without ``steps_per_epoch``, until its first epoch
            has ended).
        batch_size: samples per batch (this process's part after :meth:`shard`), or
            ``None`` when unknown.
        num_samples: samples per epoch (this process's part after :meth:`shard`), or
            ``None`` when unknown.
        exhausted: True once a source that cannot restart (a plain generator or
            iterator) ran out before giving the batches an epoch should have.
        shard_index, shard_count: which part of every batch this adapter yields.
    """

    exhausted: bool = False
    shard_index: int = 0
    shard_count: int = 1
    _what: str = "fit"
    _kind: str = "data"  # what x is, with its article, for messages

    @property
    def num_batches(self) -> int | None:
        raise NotImplementedError

    @property
    def batch_size(self) -> int | None:
        return None

    @property
    def num_samples(self) -> int | None:
        return None

    def batches(self, rng: np.random.Generator | None = None) -> Iterator[tuple]:
        """One epoch of host batches ``(x, y, sample_weight)``: NumPy arrays in the user's
        structure, ``y`` / ``sample_weight`` ``None`` when absent.

        Args:
            rng: a NumPy ``Generator`` that shuffling adapters permute with (the caller
                keeps one stream across epochs and ``fit`` calls).
        """
        raise NotImplementedError

    def split(self, fraction: float, *, validation_batch_size: int | None = None,
              validation_steps: int | None = None) -> tuple["DataAdapter", "DataAdapter"]:
        """Keras' ``validation_split``: ``(train, validation)`` where validation is the last
        ``fraction`` of the samples, taken before shuffling. Arrays only."""
        raise ValueError(
            f"{self._what}: `validation_split` is only supported when `x` is an array (or a "
            f"list/tuple/dict of arrays). Received: x as {self._kind}. Pass "
            f"`validation_data` instead.")

    def shard(self, index: int, count: int) -> "DataAdapter":
        """This process's part of every batch: the ``index``-th of ``count`` equal,
        contiguous slices of the global batch (for process ``index`` of ``count``).

        Every process must read the same batches (the same data, and the same ``rng``
        stream where shuffled). The global batch size must be divisible by ``count``. A
        smaller batch (the last of an epoch) that is not is trimmed to the largest
        multiple of ``count`` with a warning naming how many samples are left out (all
        processes must receive batches of one size); a batch of fewer than ``count``
        samples is skipped.
        """
        _check_shard(self._what, index, count)
        if self.shard_count != 1:
            raise ValueError(f"{self._what}: this adapter is already a shard "
                             f"({self.shard_index} of {self.shard_count}); shard the "
                             f"unsharded adapter. Received: index={index}, count={count}")
        if count == 1:
            return self
        if self.batch_size is not None and self.batch_size % count:
            raise _indivisible(self._what, self.batch_size, count)
        return _ShardedAdapter(self, index, count)

    def on_epoch_end(self) -> None:
        """Called by the trainer after every epoch."""

    def stream_state(self) -> dict | None:
        """Where a source that goes on from epoch to epoch (rather than replaying an
        epoch from ``rng``) stands in its stream, as a JSON-able dict; ``BackupAndRestore``
        stores it with each backup. ``None`` (the default) for sources an epoch replays
        (arrays, ``PyDataset``) or that cannot be positioned (plain generators)."""
        return None

    def seek_stream(self, state: dict, skip: int, who: str) -> int:
        """Moves the stream to ``state`` (from :meth:`stream_state`) plus ``skip`` batches,
        for a resumed epoch. Returns how many batches are still to be read and dropped
        (all ``skip`` of them where the source cannot be positioned). ``who`` names the
        caller in errors."""
        return skip

    def __repr__(self):
        return (f"{type(self).__name__}(num_batches={self.num_batches}, "
                f"batch_size={self.batch_size}, num_samples={self.num_samples})")


def _check_shard(what: str, index, count) -> None:
    _check_positive_int(what, "count", count)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or \
            not 0 <= index < count:
        raise ValueError(f"{what}: the shard `index` must be an int in [0, count). "
                         f"Received: index={index!r}, count={count}")


def _warn_steps_above_length(what: str, steps, length, kind: str) -> None:
    if steps is not None and length is not None and steps > length:
        warnings.warn(f"{what}: `steps_per_epoch`={steps} is more than the {length} batches "
                      f"of the {kind}; each epoch has {length} batches.", stacklevel=4)


def _indivisible(what: str, batch_size: int, count: int) -> ValueError:
    return ValueError(
        f"{what}: each of the {count} processes takes an equal slice of every batch, so "
        f"the global batch size must be divisible by the number of processes. Received: "
        f"batch_size={batch_size}, count={count}")


# ------------------------------------------------------------------------------ arrays

class _BatchSourceAdapter(DataAdapter):
    """Shared by adapters whose source yields whole batches (generators, PyDataset)."""

    def _standardize(self, batch):
        x, y, sw = _unpack_batch(batch, self._what)
        if self._class_weight is not None:
            sw = _combine_weights(sw, _class_sample_weights(y, self._class_weight,
                                                            self._what), self._what)
        return x, y, sw


class ArrayDataAdapter(DataAdapter):
    """NumPy / JAX arrays (or anything with ``__array__``), Python lists of samples, and
    lists, tuples or dicts of those, cut into batches.

    Arrays are converted to NumPy once (float64 to float32 unless JAX runs with x64, as
    Keras casts to floatx); batches are views (contiguous slices) when not shuffled and
    gathers when shuffled. The last batch of an epoch may be smaller.

    Args:
        x, y, sample_weight: the data; ``y`` and ``sample_weight`` optional.
        batch_size: samples per batch; default 32, or ``ceil(samples / steps_per_epoch)``
            when only ``steps_per_epoch`` is given (Keras).
        steps_per_epoch: at most this many batches per epoch.
        shuffle: ``True`` (permute the samples every epoch), ``"batch"`` (permute within
            each batch, Keras) or ``False``.
        class_weight: dict class index -> weight, turned into sample weights for a single
            array of targets (class indices or one-hot); multiplied with
            ``sample_weight`` when both are given.
        what: the calling method's name, for error messages.
    """

    _kind = "arrays"

    def __init__(self, x, y=None, sample_weight=None, *, batch_size=None,
                 steps_per_epoch=None, shuffle=False, class_weight=None, what="fit",
                 _converted=False):
        self._what = what
        if not _converted:
            cast = _floatx_cast()
            x = _convert(x, "x", what, cast)
            y = _convert(y, "y", what, cast)
            sample_weight = _convert(sample_weight, "sample_weight", what, cast)
        self._x, self._y, self._user_sw = x, y, sample_weight
        sizes = [(name, int(a.shape[0])) for part, name in
                 ((x, "x"), (y, "y"), (sample_weight, "sample_weight"))
                 for name, a in _leaves(part, name)]
        if not sizes:
            raise ValueError(f"{what}: the data is empty. Received: x={_repr.repr(x)}")
        if len({n for _, n in sizes}) > 1:
            raise ValueError(
                f"{what}: data cardinality is ambiguous: `x`, `y` and `sample_weight` must "
                f"have the same number of samples (first dimension). Received: "
                + ", ".join(f"{name}.shape[0]={n}" for name, n in sizes))
        self._n = sizes[0][1]
        if self._n == 0:
            raise ValueError(f"{what}: the data is empty. Received: x with 0 samples")
        self._class_weight = None
        self._sw = sample_weight
        if class_weight is not None:
            self._class_weight = _clean_class_weight(class_weight, what)
            self._sw = _combine_weights(
                sample_weight, _class_sample_weights(y, self._class_weight, what), what)
        if batch_size is not None:
            _check_positive_int(what, "batch_size", batch_size)
        if steps_per_epoch is not None:
            _check_positive_int(what, "steps_per_epoch", steps_per_epoch)
        self._batch_size_arg = batch_size
        if batch_size is None:
            batch_size = (math.ceil(self._n / steps_per_epoch) if steps_per_epoch
                          else DEFAULT_BATCH_SIZE)
        self._bs = int(batch_size)
        self._steps = steps_per_epoch
        self._shuffle = _check_shuffle(what, shuffle)
        self._own_rng = None
        self._slice = (_taker(self._x, False), _taker(self._y, False), _taker(self._sw, False))
        self._gather = (_taker(self._x, True), _taker(self._y, True), _taker(self._sw, True))
        self._layout()
        if steps_per_epoch is not None and steps_per_epoch > self._nb:
            warnings.warn(
                f"{what}: `steps_per_epoch`={steps_per_epoch} is more than the "
                f"{self._nb} batches of {self._n} samples at batch_size={self._bs}; "
                f"each epoch has {self._nb} batches.", stacklevel=3)

    def _layout(self) -> None:
        """Batches per epoch and samples used, after the steps cap and the shard trim."""
        nb = math.ceil(self._n / self._bs)
        if self._steps is not None:
            nb = min(nb, self._steps)
        used = min(self._n, nb * self._bs)
        count = self.shard_count
        if count > 1:
            last = used - (nb - 1) * self._bs
            left_out = last % count
            if left_out:
                if last < count:
                    nb, used = nb - 1, used - last
                else:
                    used -= left_out
                if nb == 0:
                    raise ValueError(
                        f"{self._what}: {self._n} samples cannot give each of {count} "
                        f"processes a sample. Received: {self._n} samples, count={count}")
                warnings.warn(
                    f"{self._what}: the last batch of an epoch ({last} samples) is not "
                    f"divisible by count={count} processes; its last {left_out} samples "
                    f"are left out of every epoch so that all processes get batches of "
                    f"one size.", stacklevel=3)
        self._nb, self._used = nb, used

    @property
    def num_batches(self) -> int:
        return self._nb

    @property
    def batch_size(self) -> int:
        return self._bs // self.shard_count

    @property
    def num_samples(self) -> int:
        return self._n if self.shard_count == 1 else self._used // self.shard_count

    def _order(self, rng) -> np.ndarray | None:
        if not self._shuffle:
            return None
        if rng is None:
            if self._own_rng is None:
                self._own_rng = np.random.default_rng()
            rng = self._own_rng
        if self._shuffle == "batch":
            full = self._used // self._bs
            rows = rng.permuted(np.arange(full * self._bs).reshape(full, self._bs), axis=1)
            rest = full * self._bs + rng.permutation(self._used - full * self._bs)
            return np.concatenate([rows.reshape(-1), rest])
        return rng.permutation(self._n)[:self._used]

    def batches(self, rng: np.random.Generator | None = None) -> Iterator[tuple]:
        # The permutation is drawn now, once per call, so the rng stream advances by
        # exactly one draw per epoch however far the epoch is iterated.
        return self._iterate(self._order(rng))

    def _iterate(self, order) -> Iterator[tuple]:
        bs, nb, used = self._bs, self._nb, self._used
        index, count = self.shard_index, self.shard_count
        take_x, take_y, take_sw = self._slice if order is None else self._gather
        for b in range(nb):
            lo = b * bs
            hi = min(lo + bs, used)
            if count > 1:
                size = (hi - lo) // count
                lo += index * size
                hi = lo + size
            rows = slice(lo, hi) if order is None else order[lo:hi]
            yield take_x(rows), take_y(rows), take_sw(rows)

    def split(self, fraction, *, validation_batch_size=None, validation_steps=None):
        """Keras' ``validation_split``: the last ``fraction`` of the samples (before any
        shuffling) become the validation adapter (not shuffled, no class weights, batch
        size ``validation_batch_size`` or this one's, ``validation_steps`` batches at
        most); the rest keep this adapter's settings. A sharded adapter gives sharded
        parts."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
                not 0 < fraction < 1:
            raise ValueError(f"{self._what}: `validation_split` must be a float in (0, 1). "
                             f"Received: validation_split={fraction!r}")
        cut = int(math.floor(self._n * (1.0 - fraction)))
        if cut == 0 or cut == self._n:
            raise ValueError(
                f"{self._what}: training data contains {self._n} samples, which is not "
                f"sufficient to split it into a validation and training set as specified "
                f"by `validation_split={fraction}`. Either provide more data, or a "
                f"different value for the `validation_split` argument.")
        def part(struct, rows):
            return None if struct is None else _taker(struct, False)(rows)
        common = dict(what=self._what, _converted=True)
        train = ArrayDataAdapter(
            part(self._x, slice(0, cut)), part(self._y, slice(0, cut)),
            part(self._user_sw, slice(0, cut)), batch_size=self._batch_size_arg,
            steps_per_epoch=self._steps, shuffle=self._shuffle,
            class_weight=self._class_weight, **common)
        train._own_rng = self._own_rng
        val = ArrayDataAdapter(
            part(self._x, slice(cut, None)), part(self._y, slice(cut, None)),
            part(self._user_sw, slice(cut, None)),
            batch_size=validation_batch_size or self._batch_size_arg,
            steps_per_epoch=validation_steps, shuffle=False, **common)
        if self.shard_count > 1:
            return (train.shard(self.shard_index, self.shard_count),
                    val.shard(self.shard_index, self.shard_count))
        return train, val

    def shard(self, index, count):
        _check_shard(self._what, index, count)
        if self.shard_count != 1:
            return super().shard(index, count)  # raises
        if count == 1:
            return self
        if self._bs % count:
            raise _indivisible(self._what, self._bs, count)
        sharded = copy.copy(self)
        sharded.shard_index, sharded.shard_count = int(index), int(count)
        sharded._layout()
        return sharded


# ---------------------------------------------------------------- generators, iterables

class GeneratorDataAdapter(_BatchSourceAdapter):
    """Batches from a generator, an iterator or a re-iterable (a list of batches, a
    torch-style data loader: anything whose ``iter()`` gives a fresh iterator).

    Each item is a batch: ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``, each
    part an array, a list/tuple of arrays or a dict of arrays; parts are converted to
    NumPy. A re-iterable restarts every epoch. A one-shot iterator (a generator) goes on
    across epochs and cannot restart: when it runs out before an epoch has its
    ``steps_per_epoch`` batches (or, without ``steps_per_epoch``, the number its first
    epoch had) :attr:`exhausted` becomes True. Nothing is read ahead: a consumer that
    stops early loses no batch of a one-shot source.

    Args:
        source: the generator or iterable.
        steps_per_epoch: at most this many batches per epoch.
        class_weight: as for arrays, applied to every batch's ``y``.
        what: the calling method's name, for error messages.
    """

    _kind = "a generator or an iterable of batches"

    def __init__(self, source, *, steps_per_epoch=None, class_weight=None, what="fit"):
        self._what = what
        self._source = source
        self._one_shot = isinstance(source, collections.abc.Iterator)
        self._length = None
        if not self._one_shot:
            try:
                self._length = len(source)
            except TypeError:
                pass
        if steps_per_epoch is not None:
            _check_positive_int(what, "steps_per_epoch", steps_per_epoch)
        self._steps = steps_per_epoch
        _warn_steps_above_length(what, steps_per_epoch, self._length, "iterable")
        self._class_weight = (None if class_weight is None
                              else _clean_class_weight(class_weight, what))
        self._discovered = None  # batches of the first complete epoch, when not known
        self.exhausted = False
        self._kind = "a generator" if self._one_shot else "an iterable of batches"

    @property
    def num_batches(self) -> int | None:
        if self._steps is not None:
            return self._steps if self._length is None else min(self._steps, self._length)
        return self._length if self._length is not None else self._discovered

    def batches(self, rng=None) -> Iterator[tuple]:
        return self._epoch()

    def _epoch(self) -> Iterator[tuple]:
        iterator = self._source if self._one_shot else iter(self._source)
        limit = self._steps if self._length is None else self.num_batches
        expected = self._steps if self._steps is not None else self._discovered
        count = 0
        while limit is None or count < limit:
            try:
                batch = next(iterator)
            except StopIteration:
                if self._one_shot and expected is not None and count < expected:
                    self.exhausted = True
                break
            count += 1
            yield self._standardize(batch)
        if limit is None and self._discovered is None:
            self._discovered = count


# --------------------------------------------------------------------------- PyDataset

class PyDatasetAdapter(_BatchSourceAdapter):
    """Batches from a :class:`~hybridnet.data.PyDataset`, in index order (or a permuted
    order with ``shuffle``), computed by the dataset's worker pool when it has one.

    Each epoch reads ``steps_per_epoch`` batches if given, else ``len(dataset)``; an
    infinite dataset (``num_batches`` None) needs ``steps_per_epoch`` and goes on from
    where the last epoch stopped. ``on_epoch_begin`` of the dataset is called when an
    epoch's iteration starts, ``on_epoch_end`` from :meth:`on_epoch_end` (which also stops
    any pool still running).
    """

    _kind = "a PyDataset"

    def __init__(self, dataset: PyDataset, *, steps_per_epoch=None, shuffle=False,
                 class_weight=None, what="fit"):
        self._what = what
        self._dataset = dataset
        try:
            length = dataset.num_batches
        except NotImplementedError as e:
            raise ValueError(f"{what}: {e}") from None
        if length is not None and (isinstance(length, bool) or
                                   not isinstance(length, (int, np.integer)) or length < 0):
            raise ValueError(f"{what}: a PyDataset's `num_batches` (or `len`) must be an int "
                             f">= 0 or None (infinite). Received: {length!r}")
        if steps_per_epoch is not None:
            _check_positive_int(what, "steps_per_epoch", steps_per_epoch)
        elif length is None:
            raise ValueError(f"{what}: an infinite PyDataset (`num_batches` is None) needs "
                             f"`steps_per_epoch`. Received: steps_per_epoch=None")
        if length == 0:
            raise ValueError(f"{what}: the data is empty. Received: a PyDataset of length 0")
        self._length = None if length is None else int(length)
        self._steps = steps_per_epoch
        _warn_steps_above_length(what, steps_per_epoch, self._length, "PyDataset")
        self._shuffle = bool(_check_shuffle(what, shuffle)) and self._length is not None
        self._own_rng = None
        self._class_weight = (None if class_weight is None
                              else _clean_class_weight(class_weight, what))
        self._next_index = 0  # where an infinite dataset goes on from
        self._live: weakref.WeakSet = weakref.WeakSet()

    @property
    def num_batches(self) -> int:
        if self._length is None:
            return self._steps
        return self._length if self._steps is None else min(self._steps, self._length)

    def batches(self, rng=None) -> Iterator[tuple]:
        nb = self.num_batches
        if self._length is None:
            indices = range(self._next_index, self._next_index + nb)
        elif self._shuffle:
            if rng is None:
                if self._own_rng is None:
                    self._own_rng = np.random.default_rng()
                rng = self._own_rng
            indices = [int(i) for i in rng.permutation(self._length)[:nb]]
        else:
            indices = range(nb)
        epoch = self._epoch(indices)
        self._live.add(epoch)
        return epoch

    def _epoch(self, indices) -> Iterator[tuple]:
        dataset = self._dataset
        dataset.on_epoch_begin()
        workers = dataset.workers
        multiprocessing = dataset.use_multiprocessing
        if workers > 1 or (workers > 0 and multiprocessing):
            source = ordered_pool_batches(dataset, indices, workers, multiprocessing,
                                          dataset.max_queue_size)
        else:
            source = (dataset[i] for i in indices)
        consumed = 0
        try:
            for batch in source:
                consumed += 1
                yield self._standardize(batch)
        finally:
            source.close()
            if self._length is None:
                self._next_index += consumed

    def on_epoch_end(self) -> None:
        for epoch in list(self._live):
            try:
                epoch.close()
            except ValueError:  # closed from inside its own iteration: it ends itself
                pass
        self._live = weakref.WeakSet()
        self._dataset.on_epoch_end()


# ---------------------------------------------------------------------------- sharding

class _ShardedAdapter(DataAdapter):
    """This process's slice of every batch of another adapter (which every process reads
    in full)."""

    def __init__(self, base: DataAdapter, index: int, count: int):
        self._base = base
        self._what = base._what
        self._kind = base._kind
        self.shard_index, self.shard_count = int(index), int(count)
        self._reference = base.batch_size  # the global batch size, when known

    @property
    def num_batches(self):
        return self._base.num_batches

    @property
    def batch_size(self):
        b = self._base.batch_size
        return None if b is None else b // self.shard_count

    @property
    def num_samples(self):
        n = self._base.num_samples
        return None if n is None else n // self.shard_count

    @property
    def exhausted(self):
        return self._base.exhausted

    def stream_state(self):
        return self._base.stream_state()

    def seek_stream(self, state, skip, who):
        return self._base.seek_stream(state, skip, who)

    def batches(self, rng=None):
        return self._slices(self._base.batches(rng))

    def _slices(self, source):
        index, count, what = self.shard_index, self.shard_count, self._what
        warned = False
        try:
            for x, y, sw in source:
                b = _batch_len(x)
                if b is None:
                    b = _batch_len(y)
                if b is None:
                    continue
                if b % count:
                    if self._reference is None or b >= self._reference:
                        raise _indivisible(what, b, count)
                    if not warned:
                        warnings.warn(
                            f"{what}: a batch of {b} samples (smaller than the batch size "
                            f"{self._reference}) is not divisible by count={count} "
                            f"processes; its last {b % count} samples are left out so that "
                            f"all processes get batches of one size.", stacklevel=2)
                        warned = True
                    if b < count:
                        continue
                elif self._reference is None:
                    self._reference = b
                size = b // count
                rows = slice(index * size, (index + 1) * size)
                yield _map(lambda a: a[rows], x), _map(lambda a: a[rows], y), \
                    _map(lambda a: a[rows], sw)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def split(self, fraction, **kwargs):
        train, val = self._base.split(fraction, **kwargs)
        return (train.shard(self.shard_index, self.shard_count),
                val.shard(self.shard_index, self.shard_count))

    def on_epoch_end(self):
        self._base.on_epoch_end()


# ---------------------------------------------------------------------------- dispatch

def get_data_adapter(x, y=None, sample_weight=None, *, batch_size=None,
                     steps_per_epoch=None, shuffle=False, class_weight=None,
                     what="fit") -> DataAdapter:
    """The adapter for what a user passed to ``fit`` / ``evaluate`` / ``predict``.

    Dispatch (after Keras 3's ``get_data_adapter``):

    - a :class:`DataAdapter`: returned as is;
    - a source that makes its own adapter (an ``as_data_adapter(*, steps_per_epoch,
      class_weight, what)`` method, as :class:`~hybridnet.data.images.ImagePipeline`
      has): that adapter;
    - arrays (NumPy, JAX, anything with ``__array__``), Python lists of samples, and
      lists/tuples/dicts of those: :class:`ArrayDataAdapter` (``y``, ``sample_weight``
      alike). ``x=[[1, 2], [3, 4]]`` is one array of 2 samples; ``x=[a, b]`` with arrays
      ``a``, ``b`` is two inputs;
    - a :class:`~hybridnet.data.PyDataset`: :class:`PyDatasetAdapter`;
    - any other iterable (a generator, an iterator, a list of batch tuples, a data
      loader): :class:`GeneratorDataAdapter`. ``y`` and ``sample_weight`` must then be
      ``None`` (they are part of each batch); ``batch_size`` and ``shuffle`` do not apply
      and are ignored, as in Keras.

    Args:
        x: the inputs, or a source of whole batches.
        y, sample_weight: targets and per-sample weights, for array ``x`` only.
        batch_size: samples per batch for array data (default 32, Keras).
        steps_per_epoch: at most this many batches per epoch; required for an infinite
            PyDataset.
        shuffle: ``True``, ``False`` or ``"batch"``, for arrays and finite PyDatasets.
        class_weight: dict class index -> weight, for a single array of targets.
        what: the calling method's name (``"fit"``, ``"evaluate"``...) for messages.

    Returns:
        A :class:`DataAdapter`.

    Example:
        >>> adapter = get_data_adapter(x, y, batch_size=64, shuffle=True)
        >>> rng = np.random.default_rng(0)
        >>> for epoch in range(3):
        ...     for xb, yb, swb in adapter.batches(rng):
        ...         ...
        ...     adapter.on_epoch_end()
    """
    if batch_size is not None:
        _check_positive_int(what, "batch_size", batch_size)
    if steps_per_epoch is not None:
        _check_positive_int(what, "steps_per_epoch", steps_per_epoch)
    if isinstance(x, DataAdapter):
        _no_separate(what, "a DataAdapter", y, sample_weight)
        return x
    if callable(getattr(x, "as_data_adapter", None)) and not isinstance(x, type):
        _no_separate(what, f"a source of batches ({type(x).__name__})", y, sample_weight)
        return x.as_data_adapter(steps_per_epoch=steps_per_epoch, class_weight=class_weight,
                                 what=what)
    if is_array_data(x):
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None and not is_array_data(value):
                raise ValueError(
                    f"{what}: `{name}` must be an array (or a list/tuple/dict of arrays) "
                    f"when `x` is. Received: {name}={_describe(value)}")
        return ArrayDataAdapter(x, y, sample_weight, batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch, shuffle=shuffle,
                                class_weight=class_weight, what=what)
    if isinstance(x, PyDataset):
        _no_separate(what, "a PyDataset", y, sample_weight)
        return PyDatasetAdapter(x, steps_per_epoch=steps_per_epoch, shuffle=shuffle,
                                class_weight=class_weight, what=what)
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, (str, bytes, dict)):
        _no_separate(what, "a generator or iterable of batches", y, sample_weight)
        return GeneratorDataAdapter(x, steps_per_epoch=steps_per_epoch,
                                    class_weight=class_weight, what=what)
    raise ValueError(
        f"{what}: unrecognized data type for `x`. Expected an array, a list/tuple/dict of "
        f"arrays, a Python list of samples, a generator or iterable of batches, or a "
        f"PyDataset. Received: x={_describe(x)}")


def _no_separate(what: str, kind: str, y, sample_weight) -> None:
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"{what}: when `x` is {kind}, `{name}` must be None: it is part of each "
                f"batch (`(x, y)` or `(x, y, sample_weight)`). Received: "
                f"{name}={_describe(value)}")
