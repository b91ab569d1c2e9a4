"""hybridnet.data: the adapter protocol (arrays, lists, dicts, generators, iterables,
PyDataset with threads and processes), split, shard, class weights, group_batches and
prefetch_to_device."""
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from hybridnet.data import (DataAdapter, PyDataset, get_data_adapter, group_batches,
                            prefetch_to_device)


def _xy(n=10, features=3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return x, np.arange(n) % 3


def _epoch(adapter, rng=None):
    return list(adapter.batches(rng))


def _rows(batches, part=0):
    return np.concatenate([b[part] for b in batches])


# --------------------------------------------------------------------------- datasets
# Module level, so worker processes can import them.

class Indexed(PyDataset):
    """Batch i is x = [[i], [i]] (float), y = [i, i]; raises Boom at `fail_at`."""

    def __init__(self, n=8, fail_at=None, delay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.requested = []
        self.events = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.requested.append(index)
        if self.delay:
            time.sleep(self.delay * ((index * 7) % 3))  # out-of-order completion
        if index == self.fail_at:
            raise Boom(f"batch {index}")
        return np.full((2, 1), index, np.float32), np.full((2,), index)

    def on_epoch_begin(self):
        self.events.append("begin")

    def on_epoch_end(self):
        self.events.append("end")


class Pid(PyDataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        return np.array([[index, os.getpid()]]),


class Infinite(PyDataset):
    @property
    def num_batches(self):
        return None

    def __getitem__(self, index):
        return np.array([index]), np.array([index])


class Boom(Exception):
    pass


def _pool_threads():
    return [t for t in threading.enumerate() if t.name.startswith("PyDataset")]


# ------------------------------------------------------------------------------ arrays

def test_array_batches_are_contiguous_views_in_order():
    x, y = _xy(10)
    adapter = get_data_adapter(x, y, batch_size=4)
    assert (adapter.num_batches, adapter.batch_size, adapter.num_samples) == (3, 4, 10)
    assert not adapter.exhausted
    batches = _epoch(adapter)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert all(np.shares_memory(b[0], x) for b in batches)  # slices, no copies
    np.testing.assert_array_equal(_rows(batches), x)
    np.testing.assert_array_equal(_rows(batches, 1), y)
    assert all(b[2] is None for b in batches)


def test_array_structures_are_kept():
    x, y = _xy(6)
    sw = np.linspace(0.5, 1.0, 6).astype(np.float32)
    adapter = get_data_adapter([x, x[:, :1]], {"out": y}, {"out": sw}, batch_size=4)
    xb, yb, swb = _epoch(adapter)[1]
    assert isinstance(xb, list) and len(xb) == 2
    np.testing.assert_array_equal(xb[1], x[4:, :1])
    assert list(yb) == ["out"] and list(swb) == ["out"]
    np.testing.assert_array_equal(swb["out"], sw[4:])
    xb, yb, swb = _epoch(get_data_adapter({"a": x, "b": y}, (y, y), batch_size=6))[0]
    assert set(xb) == {"a", "b"} and isinstance(yb, tuple) and swb is None


def test_lists_of_samples_are_one_array():
    adapter = get_data_adapter([[1, 2], [3, 4], [5, 6]], [0, 1, 1], batch_size=2)
    assert adapter.num_samples == 3
    (xb, yb, _), (xb2, yb2, _) = _epoch(adapter)
    np.testing.assert_array_equal(xb, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(yb2, [1])
    floats = _epoch(get_data_adapter([[0.5], [1.5]], batch_size=2))[0][0]
    assert floats.dtype == np.float32  # float64 -> floatx, as Keras
    # a list whose items are arrays is several inputs; a list of samples inside is one
    xb = _epoch(get_data_adapter([np.zeros((3, 2)), [1, 2, 3]], batch_size=3))[0][0]
    assert isinstance(xb, list) and xb[0].shape == (3, 2) and xb[1].shape == (3,)


def test_jax_arrays_become_numpy():
    xb, yb, _ = _epoch(get_data_adapter(jnp.ones((4, 2)), jnp.arange(4), batch_size=4))[0]
    assert type(xb) is np.ndarray and type(yb) is np.ndarray


def test_array_errors_name_the_argument():
    x, y = _xy(10)
    with pytest.raises(ValueError, match=r"`x` is a ragged list.*Received: x=\[\[1, 2\], \[3\]\]"):
        get_data_adapter([[1, 2], [3]])
    with pytest.raises(ValueError, match=r"`y` is a ragged list"):
        get_data_adapter(x[:2], [[1], [2, 3]])
    with pytest.raises(ValueError, match=r"x.shape\[0\]=10, y.shape\[0\]=9"):
        get_data_adapter(x, y[:9])
    with pytest.raises(ValueError, match=r"x\[1\].shape\[0\]=4, y.shape\[0\]=10, sample_weight"):
        get_data_adapter([x, x[:4]], y, np.ones(10))
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match=re.escape(
                f"evaluate: `batch_size` must be a positive int. Received: batch_size={bad!r}")):
            get_data_adapter(x, y, batch_size=bad, what="evaluate")
    with pytest.raises(ValueError, match=r"`steps_per_epoch` must be a positive int.*=0"):
        get_data_adapter(x, y, steps_per_epoch=0)
    with pytest.raises(ValueError, match=r"fit: the data is empty. Received: x with 0 samples"):
        get_data_adapter(np.zeros((0, 3)), np.zeros((0,)))
    with pytest.raises(ValueError, match="empty"):
        get_data_adapter([])
    with pytest.raises(ValueError, match=r"`x` must have a batch .*Received: x.shape=\(\)"):
        get_data_adapter(np.float32(3))
    with pytest.raises(ValueError, match=r"`y` must be an array .*Received: y=.*generator"):
        get_data_adapter(x, (v for v in y))
    with pytest.raises(ValueError, match=r"`shuffle` must be True, False or \"batch\""):
        get_data_adapter(x, y, shuffle="yes")


def test_batch_size_defaults_and_steps_per_epoch_caps():
    x, y = _xy(100)
    assert get_data_adapter(x, y).batch_size == 32  # Keras' default
    adapter = get_data_adapter(x, y, steps_per_epoch=3)  # Keras: ceil(100 / 3)
    assert (adapter.batch_size, adapter.num_batches) == (34, 3)
    adapter = get_data_adapter(x, y, batch_size=8, steps_per_epoch=2)
    assert adapter.num_batches == 2
    for _ in range(2):  # each epoch starts from the beginning, capped
        np.testing.assert_array_equal(_rows(_epoch(adapter)), x[:16])
    with pytest.warns(UserWarning, match=r"steps_per_epoch`=20 is more than the 13 batches"):
        adapter = get_data_adapter(x, y, batch_size=8, steps_per_epoch=20)
    assert adapter.num_batches == 13


def test_shuffle_is_deterministic_given_an_rng():
    x, y = _xy(50)
    a = get_data_adapter(x, y, batch_size=8, shuffle=True)
    b = get_data_adapter(x, y, batch_size=8, shuffle=True)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    epochs_a = [_rows(_epoch(a, rng_a)) for _ in range(2)]
    epochs_b = [_rows(_epoch(b, rng_b)) for _ in range(2)]
    for ea, eb in zip(epochs_a, epochs_b):
        np.testing.assert_array_equal(ea, eb)
        np.testing.assert_array_equal(np.sort(ea[:, 0]), x[:, 0])  # a permutation
    assert not np.array_equal(epochs_a[0], epochs_a[1])
    assert not np.array_equal(epochs_a[0], x)
    # x and y stay paired
    xb, yb, _ = _epoch(a, np.random.default_rng(1))[0]
    np.testing.assert_array_equal(y[(xb[:, 0] / 3).astype(int)], yb)
    # without an rng, shuffle still permutes (a private stream)
    assert not np.array_equal(_rows(_epoch(a)), x)
    # steps cap + shuffle: a prefix of the permutation
    capped = get_data_adapter(x, y, batch_size=8, shuffle=True, steps_per_epoch=2)
    rows = _rows(_epoch(capped, np.random.default_rng(3)))
    np.testing.assert_array_equal(rows, x[np.random.default_rng(3).permutation(50)[:16]])


def test_batch_shuffle_permutes_within_batches():
    x, y = _xy(10)
    adapter = get_data_adapter(x, y, batch_size=4, shuffle="batch")
    batches = _epoch(adapter, np.random.default_rng(0))
    for i, (xb, _, _) in enumerate(batches):
        np.testing.assert_array_equal(np.sort(xb[:, 0]), x[i * 4:(i + 1) * 4, 0])
    assert not np.array_equal(_rows(batches), x)


def test_class_weight_becomes_sample_weight():
    x = np.zeros((6, 2), np.float32)
    sparse = np.array([0, 1, 2, 1, 0, 5])
    weights = {0: 2.0, 1: 0.5}
    expected = np.array([2.0, 0.5, 1.0, 0.5, 2.0, 1.0], np.float32)  # unknown class: 1.0
    for y in (sparse, sparse[:, None], np.eye(6, dtype=np.float32)[sparse]):
        sw = _epoch(get_data_adapter(x, y, batch_size=6, class_weight=weights))[0][2]
        np.testing.assert_allclose(sw, expected)
    given = np.arange(6, dtype=np.float32)
    sw = _epoch(get_data_adapter(x, sparse, given, batch_size=6, class_weight=weights))[0][2]
    np.testing.assert_allclose(sw, given * expected)  # multiplied
    with pytest.raises(ValueError, match=r"`class_weight` is only supported for a single array"):
        get_data_adapter(x, [sparse, sparse], class_weight=weights)
    with pytest.raises(ValueError, match=r"`class_weight` needs targets `y`.*Received: y=None"):
        get_data_adapter(x, class_weight=weights)
    with pytest.raises(ValueError, match=r"integer class indices. Received: key 'a'"):
        get_data_adapter(x, sparse, class_weight={"a": 1.0})
    with pytest.raises(ValueError, match=r"must be a dict.*Received: class_weight=\[1, 2\]"):
        get_data_adapter(x, sparse, class_weight=[1, 2])
    with pytest.raises(ValueError, match=r"needs a single `sample_weight` array"):
        get_data_adapter(x, sparse, [given], class_weight=weights)


# ------------------------------------------------------------------------------- split

def test_split_takes_the_last_fraction_before_shuffling():
    x, y = _xy(20)
    sw = np.arange(20, dtype=np.float32)
    adapter = get_data_adapter(x, y, sw, batch_size=4, shuffle=True, steps_per_epoch=3,
                               class_weight={0: 3.0})
    train, val = adapter.split(0.25)
    assert (train.num_samples, val.num_samples) == (15, 5)
    assert train.num_batches == 3 and val.num_batches == 2  # the cap stays with training
    val_rows = _rows(_epoch(val))
    np.testing.assert_array_equal(val_rows, x[15:])  # not shuffled
    np.testing.assert_array_equal(_rows(_epoch(val), 2), sw[15:])  # no class weights
    train_rows = _rows(_epoch(train, np.random.default_rng(0)))
    assert set(train_rows[:, 0]) <= set(x[:15, 0]) and not np.array_equal(train_rows, x[:12])
    tx, ty, tsw = _epoch(get_data_adapter(x, y, sw, batch_size=15, class_weight={0: 3.0})
                         .split(0.25)[0])[0]
    np.testing.assert_allclose(tsw, sw[:15] * np.where(y[:15] == 0, 3.0, 1.0))
    _, val = adapter.split(0.25, validation_batch_size=2, validation_steps=2)
    assert (val.batch_size, val.num_batches) == (2, 2)
    with pytest.raises(ValueError, match=r"`validation_split` must be a float in \(0, 1\). "
                                         r"Received: validation_split=1.5"):
        adapter.split(1.5)
    with pytest.raises(ValueError, match=r"contains 20 samples, which is not sufficient"):
        adapter.split(0.99)
    with pytest.raises(ValueError, match=r"`validation_split` is only supported when `x` is an "
                                         r"array.*Received: x as a generator. Pass "
                                         r"`validation_data` instead"):
        get_data_adapter(iter([(x, y)])).split(0.5)
    with pytest.raises(ValueError, match=r"Received: x as a PyDataset"):
        get_data_adapter(Indexed()).split(0.5)


# ------------------------------------------------------------------------------- shard

def _assert_shards_make_the_global_batches(make, count, rng_seed=None):
    def epoch(adapter):
        return _epoch(adapter, None if rng_seed is None else np.random.default_rng(rng_seed))
    whole = epoch(make())
    parts = [epoch(make().shard(i, count)) for i in range(count)]
    assert all(len(p) == len(whole) for p in parts)
    for b, global_batch in enumerate(whole):
        for leaf in range(3):
            if global_batch[leaf] is None:
                assert all(p[b][leaf] is None for p in parts)
                continue
            joined = np.concatenate([p[b][leaf] for p in parts])
            np.testing.assert_array_equal(joined, global_batch[leaf])
    return whole, parts


def test_shard_slices_every_batch_for_every_kind():
    x, y = _xy(24)
    sw = np.arange(24, dtype=np.float32)
    _, parts = _assert_shards_make_the_global_batches(
        lambda: get_data_adapter(x, y, sw, batch_size=8), 4)
    assert parts[1][0][0].shape == (2, 3)
    np.testing.assert_array_equal(parts[1][0][0], x[2:4])
    _assert_shards_make_the_global_batches(
        lambda: get_data_adapter(x, y, batch_size=8, shuffle=True), 2, rng_seed=5)
    _assert_shards_make_the_global_batches(
        lambda: get_data_adapter(((x[i:i + 6], y[i:i + 6]) for i in range(0, 24, 6))), 3)
    _assert_shards_make_the_global_batches(
        lambda: get_data_adapter([(x[i:i + 4],) for i in range(0, 24, 4)]), 2)
    _assert_shards_make_the_global_batches(lambda: get_data_adapter(Indexed(4)), 2)
    sharded = get_data_adapter(x, y, batch_size=8).shard(1, 4)
    assert (sharded.batch_size, sharded.num_batches, sharded.num_samples) == (2, 3, 6)
    train, val = sharded.split(0.5)
    assert (train.shard_index, train.shard_count, val.shard_count) == (1, 4, 4)
    np.testing.assert_array_equal(_epoch(val)[0][0], x[14:16])


def test_shard_errors_and_the_smaller_last_batch():
    x, y = _xy(22)
    with pytest.raises(ValueError, match=r"divisible by the number of processes. "
                                         r"Received: batch_size=10, count=4"):
        get_data_adapter(x, y, batch_size=10).shard(0, 4)
    with pytest.raises(ValueError, match=r"Received: batch_size=6, count=4"):
        _epoch(get_data_adapter(iter([(x[:6], y[:6])])).shard(0, 4))
    with pytest.raises(ValueError, match=r"`index` must be an int in \[0, count\). "
                                         r"Received: index=4, count=4"):
        get_data_adapter(x, y).shard(4, 4)
    with pytest.raises(ValueError, match="already a shard"):
        get_data_adapter(x, y, batch_size=8).shard(0, 2).shard(0, 2)
    # 22 samples at batch_size 8: the last batch (6) over 4 processes keeps 4 samples
    with pytest.warns(UserWarning, match=r"last batch of an epoch \(6 samples\).*its last 2"):
        sharded = get_data_adapter(x, y, batch_size=8).shard(3, 4)
    assert [b[0].shape[0] for b in _epoch(sharded)] == [2, 2, 1]
    np.testing.assert_array_equal(_epoch(sharded)[2][0], x[19:20])
    # generators: a smaller batch is trimmed (with a warning), one of < count skipped
    stream = [(x[:8],), (x[8:16],), (x[16:22],), (x[:1],)]
    with pytest.warns(UserWarning, match=r"a batch of 6 samples.*its last 2 samples"):
        got = _epoch(get_data_adapter(stream).shard(0, 4))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]


# -------------------------------------------------------------- generators, iterables

def test_generator_goes_on_across_epochs_and_reports_exhaustion():
    x, y = _xy(20)

    def gen():
        for i in range(0, 20, 4):
            yield x[i:i + 4], y[i:i + 4]
    adapter = get_data_adapter(gen(), steps_per_epoch=2, shuffle=True, batch_size=99)
    assert (adapter.num_batches, adapter.batch_size, adapter.num_samples) == (2, None, None)
    np.testing.assert_array_equal(_rows(_epoch(adapter)), x[:8])
    np.testing.assert_array_equal(_rows(_epoch(adapter)), x[8:16])  # continues
    assert not adapter.exhausted
    assert len(_epoch(adapter)) == 1 and adapter.exhausted  # ran out before 2 batches
    # without steps_per_epoch: the first epoch is the whole stream
    adapter = get_data_adapter(gen())
    assert adapter.num_batches is None
    assert len(_epoch(adapter)) == 5 and not adapter.exhausted
    assert adapter.num_batches == 5
    assert _epoch(adapter) == [] and adapter.exhausted
    # stopping early loses nothing: no read-ahead
    adapter = get_data_adapter(gen(), steps_per_epoch=3)
    for batch in adapter.batches():
        break
    np.testing.assert_array_equal(_epoch(adapter)[0][0], x[4:8])


def test_reiterables_restart_every_epoch():
    x, y = _xy(12)
    listed = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    adapter = get_data_adapter(listed)
    assert adapter.num_batches == 3
    for _ in range(2):
        np.testing.assert_array_equal(_rows(_epoch(adapter)), x)
    assert not adapter.exhausted
    assert get_data_adapter(listed, steps_per_epoch=2).num_batches == 2
    with pytest.warns(UserWarning, match=r"steps_per_epoch`=5 is more than the 3 batches"):
        assert get_data_adapter(listed, steps_per_epoch=5).num_batches == 3

    class Loader:  # a torch-style loader without __len__
        def __iter__(self):
            return iter(listed)
    adapter = get_data_adapter(Loader())
    assert adapter.num_batches is None
    assert len(_epoch(adapter)) == 3 and len(_epoch(adapter)) == 3
    assert adapter.num_batches == 3 and not adapter.exhausted


def test_batch_forms_are_converted_to_numpy_structures():
    x, y = _xy(4)
    sw = np.ones(4, np.float32)
    got = _epoch(get_data_adapter([x, (x,), (x, y), (x, y, sw), {"a": x},
                                   (jnp.asarray(x), [0, 1, 2, 0]), ([x, x], {"o": y})]))
    assert got[0][1] is None and got[1][1] is None and got[2][2] is None
    np.testing.assert_array_equal(got[3][2], sw)
    assert set(got[4][0]) == {"a"} and got[4][1] is None
    assert type(got[5][0]) is np.ndarray and type(got[5][1]) is np.ndarray
    assert isinstance(got[6][0], list) and set(got[6][1]) == {"o"}
    weighted = _epoch(get_data_adapter(iter([(x, y)]), class_weight={0: 4.0}))[0][2]
    np.testing.assert_allclose(weighted, np.where(y == 0, 4.0, 1.0))
    with pytest.raises(ValueError, match=r"a batch must be `x`, `\(x,\)`, `\(x, y\)` or "
                                         r"`\(x, y, sample_weight\)`. Received: a tuple of "
                                         r"length 4"):
        _epoch(get_data_adapter(iter([(x, y, sw, sw)])))


def test_unsupported_inputs_name_x_and_its_type():
    x, y = _xy(4)
    for bad, shown in ((5, "int"), ("abc", "str"), (object(), "object"), (None, "NoneType")):
        with pytest.raises(ValueError, match=rf"predict: unrecognized data type for `x`.*"
                                             rf"Received: x=.*of type {shown}"):
            get_data_adapter(bad, what="predict")
    with pytest.raises(ValueError, match=r"when `x` is a generator or iterable of batches, "
                                         r"`y` must be None.*Received: y=ndarray of shape"):
        get_data_adapter(iter([(x, y)]), y)
    with pytest.raises(ValueError, match=r"when `x` is a PyDataset, `sample_weight` must be "
                                         r"None"):
        get_data_adapter(Indexed(), sample_weight=np.ones(4))
    adapter = get_data_adapter(x, y, batch_size=2)
    assert get_data_adapter(adapter) is adapter and isinstance(adapter, DataAdapter)


# --------------------------------------------------------------------------- PyDataset

def test_pydataset_in_the_consumers_thread():
    dataset = Indexed(5)
    adapter = get_data_adapter(dataset)
    assert (adapter.num_batches, adapter.batch_size) == (5, None)
    batches = _epoch(adapter)
    assert [int(b[1][0]) for b in batches] == [0, 1, 2, 3, 4]
    adapter.on_epoch_end()
    assert dataset.events == ["begin", "end"]
    capped = get_data_adapter(Indexed(5), steps_per_epoch=2)
    assert capped.num_batches == 2 and [int(b[1][0]) for b in _epoch(capped)] == [0, 1]
    shuffled = get_data_adapter(Indexed(6), shuffle=True)
    order = [int(b[1][0]) for b in _epoch(shuffled, np.random.default_rng(2))]
    assert order == list(np.random.default_rng(2).permutation(6))
    weighted = _epoch(get_data_adapter(Indexed(2), class_weight={1: 5.0}))[1][2]
    np.testing.assert_allclose(weighted, [5.0, 5.0])


def test_infinite_pydataset_needs_steps_and_goes_on():
    with pytest.raises(ValueError, match=r"infinite PyDataset .* needs `steps_per_epoch`. "
                                         r"Received: steps_per_epoch=None"):
        get_data_adapter(Infinite())
    adapter = get_data_adapter(Infinite(), steps_per_epoch=3)
    assert adapter.num_batches == 3
    assert [int(b[0][0]) for b in _epoch(adapter)] == [0, 1, 2]
    assert [int(b[0][0]) for b in _epoch(adapter)] == [3, 4, 5]

    class NoLength(PyDataset):
        def __getitem__(self, index):
            return np.zeros(1)
    with pytest.raises(ValueError, match="must implement `__len__`"):
        get_data_adapter(NoLength())

    class NoSuper(Indexed):
        def __init__(self):
            self.n, self.fail_at, self.delay, self.requested, self.events = 2, None, 0, [], []
    with pytest.warns(UserWarning, match=r"should call `super\(\).__init__\(\*\*kwargs\)`"):
        assert len(_epoch(get_data_adapter(NoSuper()))) == 2
    with pytest.raises(ValueError, match=r"`workers` must be an int >= 0. Received: workers=-1"):
        Indexed(workers=-1)


def test_pydataset_threads_keep_order_and_queue_bound():
    dataset = Indexed(12, delay=0.002, workers=2, max_queue_size=3)
    adapter = get_data_adapter(dataset)
    received = []
    for x, y, _ in adapter.batches():
        received.append(int(y[0]))
        assert max(dataset.requested) <= received[-1] + 3  # at most max_queue_size ahead
    assert received == list(range(12))
    assert _pool_threads() == []
    adapter.on_epoch_end()
    assert dataset.events == ["begin", "end"]


def test_pydataset_thread_pool_stops_on_break_exception_and_interrupt():
    dataset = Indexed(50, workers=2, max_queue_size=4)
    adapter = get_data_adapter(dataset)
    for _ in adapter.batches():
        break
    assert _pool_threads() == []
    assert max(dataset.requested) <= 4
    failing = get_data_adapter(Indexed(10, fail_at=5, workers=2))
    received = []
    with pytest.raises(Boom, match="batch 5"):
        for x, y, _ in failing.batches():
            received.append(int(y[0]))
    assert received == [0, 1, 2, 3, 4] and _pool_threads() == []
    with pytest.raises(KeyboardInterrupt):
        for _ in adapter.batches():
            raise KeyboardInterrupt
    assert _pool_threads() == []
    # an epoch left open is stopped by on_epoch_end
    live = adapter.batches()
    next(live)
    assert _pool_threads()
    adapter.on_epoch_end()
    assert _pool_threads() == []


def test_pydataset_worker_processes():
    before = set(multiprocessing.active_children())
    adapter = get_data_adapter(Pid(workers=2, use_multiprocessing=True, max_queue_size=3))
    rows = np.concatenate([b[0] for b in _epoch(adapter)])
    assert list(rows[:, 0]) == list(range(6))  # in order
    assert os.getpid() not in set(rows[:, 1])  # computed in other processes
    assert set(multiprocessing.active_children()) == before  # joined at the epoch's end
    for _ in adapter.batches():
        break
    assert set(multiprocessing.active_children()) == before  # stopped on early break
    failing = get_data_adapter(Indexed(6, fail_at=2, workers=2, use_multiprocessing=True))
    received = []
    with pytest.raises(Boom, match="batch 2"):  # the original type, across processes
        for x, y, _ in failing.batches():
            received.append(int(y[0]))
    assert received == [0, 1]
    assert set(multiprocessing.active_children()) == before

    class Local(Indexed):  # not importable by a worker
        pass
    with pytest.raises(ValueError, match=r"must be picklable.*Received: Local"):
        _epoch(get_data_adapter(Local(2, workers=2, use_multiprocessing=True)))


_EXIT_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from hybridnet.data import get_data_adapter
from test_data_adapters import Pid, Indexed

if __name__ == "__main__":
    procs = get_data_adapter(Pid(workers=2, use_multiprocessing=True)).batches()
    threads = get_data_adapter(Indexed(100, delay=0.01, workers=2)).batches()
    first = next(procs)[0]
    next(threads)
    print("WORKER", int(first[0, 1]), flush=True)
    # the interpreter exits with both pools running
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pools_stop_at_interpreter_exit(tmp_path):
    script = tmp_path / "exit_with_pools.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT.format(
        tests=os.path.dirname(os.path.abspath(__file__)))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    worker = int(done.stdout.split("WORKER")[1].split()[0])
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


# ----------------------------------------------------------------------- group_batches

def test_group_batches_stacks_k_and_leaves_the_rest_single():
    x, y = _xy(18)
    adapter = get_data_adapter({"a": x}, y, batch_size=4)  # 4 full batches and one of 2
    grouped = list(group_batches(adapter.batches(), 3))
    assert [k for _, k in grouped] == [3, 1, 1]
    (gx, gy, gsw), _ = grouped[0]
    assert gx["a"].shape == (3, 4, 3) and gy.shape == (3, 4) and gsw is None
    np.testing.assert_array_equal(gx["a"].reshape(12, 3), x[:12])
    assert grouped[1][0][0]["a"].shape == (4, 3) and grouped[2][0][0]["a"].shape == (2, 3)
    rows = np.concatenate([b[0]["a"].reshape(-1, 3) for b, _ in grouped])
    np.testing.assert_array_equal(rows, x)  # order kept, nothing dropped
    # a change of shape mid-stream: what is buffered goes out single, in order
    stream = [(np.full((2,), i),) for i in range(3)] + [(np.full((3,), 3),)] + \
             [(np.full((2,), i),) for i in range(4, 8)]
    grouped = list(group_batches(iter(stream), 2))
    assert [k for _, k in grouped] == [2, 1, 1, 2, 2]
    assert [int(b[0].reshape(-1)[0]) for b, _ in grouped] == [0, 2, 3, 4, 6]
    assert [k for _, k in group_batches(get_data_adapter(Indexed(3)).batches(), 1)] == [1] * 3
    with pytest.raises(ValueError, match=r"`k` must be a positive int. Received: k=0"):
        list(group_batches([], 0))


# ------------------------------------------------------------------ prefetch_to_device

def _counting_source(n, closed, fail_at=None):
    read = []

    def gen():
        try:
            for i in range(n):
                if i == fail_at:
                    raise Boom(f"read {i}")
                read.append(i)
                yield i
        finally:
            closed.append(True)
    return gen(), read


def test_prefetch_reads_size_ahead_in_order_and_closes_the_source():
    closed, puts = [], []
    source, read = _counting_source(10, closed)

    def put(batch):
        puts.append(batch)
        return ("device", batch)
    stream = prefetch_to_device(source, put, size=2)
    for t in range(4):
        assert next(stream) == ("device", t)
        assert len(read) == t + 3 and puts == list(range(t + 3))  # t + size + 1 read
    stream.close()
    assert closed == [True] and len(read) == 6
    source, read = _counting_source(5, [])
    assert list(prefetch_to_device(source, lambda b: b * 10, size=3)) == [0, 10, 20, 30, 40]
    source, read = _counting_source(5, [])
    lazy = prefetch_to_device(source, lambda b: b, size=0)
    assert next(lazy) == 0 and read == [0]


def test_prefetch_raises_errors_at_their_position():
    closed = []
    source, _ = _counting_source(10, closed, fail_at=3)
    got = []
    with pytest.raises(Boom, match="read 3"):
        for batch in prefetch_to_device(source, lambda b: b, size=2):
            got.append(batch)
    assert got == [0, 1, 2] and closed == [True]

    def put(batch):
        if batch == 2:
            raise Boom("put 2")
        return batch
    got = []
    with pytest.raises(Boom, match="put 2"):
        for batch in prefetch_to_device(iter(range(5)), put, size=2):
            got.append(batch)
    assert got == [0, 1]
    with pytest.raises(ValueError, match=r"`size` must be an int >= 0. Received: size=-1"):
        next(prefetch_to_device([], lambda b: b, size=-1))


def test_prefetch_and_grouping_work_on_every_adapter_kind():
    x, y = _xy(16)
    sources = [get_data_adapter(x, y, batch_size=4),
               get_data_adapter([(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]),
               get_data_adapter((b for b in [(x[i:i + 4], y[i:i + 4])
                                             for i in range(0, 16, 4)])),
               get_data_adapter(Indexed(4, workers=2))]
    for adapter, shape in zip(sources, [(4, 3)] * 3 + [(2, 1)]):
        calls = []

        def put(item):
            calls.append(item[1])
            return item
        out = list(prefetch_to_device(group_batches(adapter.batches(), 2), put))
        assert [k for _, k in out] == [2, 2] and calls == [2, 2]
        assert out[0][0][0].shape == (2, *shape) and out[1][0][1].shape == (2, shape[0])
