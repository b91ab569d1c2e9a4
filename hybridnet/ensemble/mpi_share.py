"""Share modes across MPI ranks: batches preprocessed once, trained on by every rank.

Launched as ``mpirun -n 4 python train.py``, every rank runs the same script (the same
``Ensemble(...)`` and ``fit(...)`` calls, the same data arguments), and each rank is its
own JAX process with its own devices. The share mode decides which ranks preprocess:

* :class:`AllGather` ("all_gather"): every rank preprocesses its slice of each global
  batch (``adapter.shard(rank, size)``); an all-gather gives every rank the whole batch;
* :class:`Broadcast` ("broadcast"): one rank (``root``) preprocesses and broadcasts;
* :class:`MultiBroadcast` ("multi_broadcast"): the ranks split into groups
  (``comm.Split``); the first rank of each group preprocesses and broadcasts to its
  group.

A rank listed in ``preprocess_only`` holds no members (``Ensemble([], share=mode)``, or
a building function gives it none) and only prepares batches. Members built by a
function are dealt round-robin to the training ranks: member ``i`` lives on the
``i % T``-th of the ``T`` training ranks and is built after ``set_random_seed(seed + i)``,
so it is the same model as member ``i`` of a one-process ensemble.

Per batch the ranks of a group exchange a small control message (host side, mpi4py,
NumPy byte buffers holding JSON: has a batch, its layout), then move the batch packed
into one ``(samples, bytes)`` uint8 array with one mpi4jax collective inside ``jit``. A
rank that died is named by the survivors (see ``hybridnet.distributed.mpi``).

Training runs in lockstep: every rank runs the same epochs and validation passes; a
member that stops early takes no more steps, and a rank whose members have all stopped
keeps preparing or receiving batches until every rank's members have stopped.
``evaluate`` and ``predict`` read the data on each training rank (no sharing).

Example:
    >>> # mpirun -n 4 python train.py
    >>> ens = Ensemble(build, n=4, seed=0, share=MultiBroadcast(groups=[[0, 1], [2, 3]]))
    >>> ens.fit(pipeline, epochs=5)        # rank 0 prepares for 0, 1; rank 2 for 2, 3
"""
from __future__ import annotations

import json
import math
from typing import Iterator, Sequence

import numpy as np

from hybridnet.data.adapters import DataAdapter
from hybridnet.ensemble.share import ShareMode

# ----------------------------------------------------------------- batch layout (pure)


def _spec(tree, what: str):
    if tree is None:
        return None
    if isinstance(tree, (list, tuple)):
        return {"l" if isinstance(tree, list) else "t": [_spec(t, what) for t in tree]}
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise ValueError(f"{what}: batches shared between MPI ranks may use dicts "
                                 f"with str keys only. Received: key {k!r}")
        return {"d": [[k, _spec(v, what)] for k, v in tree.items()]}
    a = np.asarray(tree)
    if a.dtype.hasobject or a.ndim == 0:
        raise ValueError(f"{what}: a batch shared between MPI ranks must hold arrays with "
                         f"a batch dimension and a numeric dtype. Received: an array of "
                         f"dtype {a.dtype} and shape {a.shape}")
    return {"a": [a.dtype.str, list(a.shape[1:])]}


def _leaves(tree) -> list:
    if tree is None:
        return []
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in _leaves(t)]
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [np.asarray(tree)]


def _spec_leaves(spec) -> list:
    if spec is None:
        return []
    if "a" in spec:
        return [(np.dtype(spec["a"][0]), tuple(spec["a"][1]))]
    if "d" in spec:
        return [leaf for _, v in spec["d"] for leaf in _spec_leaves(v)]
    return [leaf for s in next(iter(spec.values())) for leaf in _spec_leaves(s)]


def _build(spec, leaves: Iterator):
    if spec is None:
        return None
    if "a" in spec:
        return next(leaves)
    if "d" in spec:
        return {k: _build(v, leaves) for k, v in spec["d"]}
    kind, items = next(iter(spec.items()))
    out = [_build(s, leaves) for s in items]
    return out if kind == "l" else tuple(out)


def pack(batch, what: str = "share") -> tuple[dict, np.ndarray]:
    """A host batch (arrays in lists / tuples / str-keyed dicts, ``None`` allowed) ->
    ``(spec, rows)``: a JSON-able description of its structure, dtypes and shapes, and
    one ``(samples, bytes per sample)`` uint8 array holding every leaf's bytes.

    Example:
        >>> spec, rows = pack((np.zeros((4, 3), np.float32), np.arange(4), None))
        >>> rows.shape                       # 3 float32 + 1 int64 per sample
        (4, 20)
        >>> unpack(spec, rows)[1]
        array([0, 1, 2, 3])
    """
    spec = _spec(batch, what)
    leaves = _leaves(batch)
    sizes = {int(a.shape[0]) for a in leaves}
    if len(sizes) != 1:
        raise ValueError(f"{what}: every array of a shared batch must have the same batch "
                         f"dimension. Received: batch dimensions {sorted(sizes)}")
    n = sizes.pop()
    parts = [np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) if a.size else
             np.zeros((n, 0), np.uint8) for a in leaves]
    return spec, np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def row_bytes(spec) -> int:
    """Bytes per sample of a batch described by ``spec`` (pure)."""
    return sum(dtype.itemsize * math.prod(tail) for dtype, tail in _spec_leaves(spec))


def unpack(spec, rows: np.ndarray):
    """The batch :func:`pack` packed into ``rows`` (any number of samples)."""
    n, leaves, offset = rows.shape[0], [], 0
    for dtype, tail in _spec_leaves(spec):
        width = dtype.itemsize * math.prod(tail)
        chunk = np.ascontiguousarray(rows[:, offset:offset + width])
        leaves.append(chunk.view(dtype).reshape((n,) + tail))
        offset += width
    return _build(spec, iter(leaves))


# ------------------------------------------------------------------------ layouts (pure)

def _rank_list(what: str, name: str, value, size: int) -> list[int]:
    try:
        ranks = sorted({int(r) for r in value})
    except (TypeError, ValueError):
        raise ValueError(f"{what}: `{name}` must be a list of ranks. Received: "
                         f"{name}={value!r}") from None
    bad = [r for r in ranks if not 0 <= r < size]
    if bad:
        raise ValueError(f"{what}: `{name}` must hold ranks in 0..{size - 1} ({size} ranks "
                         f"under mpirun). Received: {name}={list(value)!r}")
    return ranks


class Layout:
    """Who does what, by world rank (plain data, computed by a share mode for a world
    size): ``groups`` (lists of ranks; one communicator each), ``kind`` ("gather" or
    "bcast"), ``roots`` (the preprocessing rank of each group, for "bcast"),
    ``trainers`` (ranks that hold members)."""

    def __init__(self, groups, kind, roots, trainers):
        self.groups, self.kind, self.roots, self.trainers = groups, kind, roots, trainers

    def sources(self, group: int) -> list[int]:
        return list(self.groups[group]) if self.kind == "gather" else [self.roots[group]]

    def group_of(self, rank: int) -> int:
        return next(i for i, g in enumerate(self.groups) if rank in g)

    def __repr__(self):
        return (f"Layout(groups={self.groups}, kind={self.kind!r}, roots={self.roots}, "
                f"trainers={self.trainers})")


class MPIShareMode(ShareMode):
    """Base of the modes that share batches between MPI ranks (see the module).

    Args:
        preprocess_only: ranks that hold no members and only prepare batches.
        timeout: seconds a rank waits for a live peer that does not answer before it
            stops with an error (default ``$HYBRIDNET_MPI_TIMEOUT`` or 60); a peer on the
            same host that has exited is named at once.
    """
    requires = "mpi"
    kind = "gather"

    def __init__(self, *, preprocess_only: Sequence[int] = (), timeout: float | None = None):
        self.preprocess_only = tuple(preprocess_only)
        self.timeout = timeout
        self._world = None
        self._group = None
        self.layout: Layout | None = None
        self._recording = None
        self._rng = None
        self.last_streams: list = []  # the SharedBatches of the last fit (train first)

    # ---------------------------------------------------------------- layout
    def make_layout(self, size: int) -> Layout:
        raise NotImplementedError

    def _trainers(self, size: int, sources: Sequence[int]) -> list[int]:
        what = f"share={self.name!r}"
        only = _rank_list(what, "preprocess_only", self.preprocess_only, size)
        idle = [r for r in only if r not in sources]
        if idle:
            raise ValueError(f"{what}: ranks {idle} would neither preprocess nor train; "
                             f"`preprocess_only` may name only preprocessing ranks "
                             f"{sorted(sources)}. Received: preprocess_only={only}")
        trainers = [r for r in range(size) if r not in only]
        if not trainers:
            raise ValueError(f"{what}: every rank is preprocess-only; at least one must "
                             f"train. Received: preprocess_only={only}")
        return trainers

    # ------------------------------------------------------------- set-up (collective)
    def setup(self) -> "MPIShareMode":
        """Makes the communicators (a clone of the world's, ``comm.Split`` by group).
        Collective: every rank calls it, in the same order (``Ensemble`` does)."""
        if self._world is not None:
            return self
        import jax
        from hybridnet.distributed import mpi
        if jax.process_count() > 1:
            raise ValueError(f"share={self.name!r}: every MPI rank is its own JAX process "
                             f"with its own devices; do not connect them with "
                             f"hybridnet.distributed.initialize() (jax.distributed) in the "
                             f"same script. Received: jax.process_count()="
                             f"{jax.process_count()}")
        world = mpi.ProcessGroup.world(self.timeout)
        self.layout = self.make_layout(world.size)
        if len(self.layout.groups) == 1:
            group = world
        else:
            group = world.split(self.layout.groups)
        self._world, self._group = world, group
        self._rng = np.random.default_rng(0)
        return self

    @property
    def rank(self) -> int:
        return self.setup()._world.rank

    @property
    def trains(self) -> bool:
        """Whether this rank holds members."""
        return self.rank in self.setup().layout.trainers

    def member_indices(self, n: int) -> list[int]:
        """The members (of ``n``) this rank trains: round-robin over the training ranks.

        Example:
            >>> AllGather().member_indices(6)      # rank 1 of 4
            [1, 5]
        """
        trainers = self.setup().layout.trainers
        if self.rank not in trainers:
            return []
        k = trainers.index(self.rank)
        return [i for i in range(n) if i % len(trainers) == k]

    # ------------------------------------------------------------------ wrapping
    def wrap(self, adapter):
        """The adapter this rank's members read: the group's shared batches."""
        self.setup()
        shared = SharedBatches(adapter, self)
        if self._recording is not None:
            self._recording.append(shared)
        return shared

    def all_done(self, done: bool) -> bool:
        """Whether every rank is done (``done`` is this rank's say); collective."""
        docs = self.setup()._world.channel.exchange(
            {"done": bool(done)}, what=f"the end of an epoch (share={self.name!r})")
        return all(d["done"] for d in docs)

    def feed(self, train, val, epochs: range, validation_freq: int) -> None:
        """Takes part in the remaining ``epochs`` of a fit without training: prepares
        (or receives) the batches of ``train`` and, every ``validation_freq`` epochs, of
        ``val``, until every rank is done."""
        for epoch in epochs:
            for _ in train.batches(self._rng):
                pass
            if val is not None and (epoch + 1) % validation_freq == 0:
                for _ in val.batches(None):
                    pass
            train.on_epoch_end()
            if self.all_done(True):
                return

    def __repr__(self):
        layout = f" {self.layout}" if self.layout is not None else ""
        return f"<share mode {self.name!r}{layout}>"


class AllGather(MPIShareMode):
    """Every rank preprocesses ``1/size`` of each global batch; an all-gather (mpi4jax)
    hands every rank the whole batch.

    Example:
        >>> Ensemble(build, n=4, seed=0, share=AllGather())       # mpirun -n 4
    """
    name = "all_gather"
    kind = "gather"

    def make_layout(self, size: int) -> Layout:
        ranks = list(range(size))
        return Layout([ranks], "gather", [0], self._trainers(size, ranks))


class Broadcast(MPIShareMode):
    """Rank ``root`` preprocesses every batch and broadcasts it (mpi4jax) to all ranks.

    Example:
        >>> Ensemble(build, n=3, share=Broadcast(root=0, preprocess_only=[0]))  # -n 4
    """
    name = "broadcast"
    kind = "bcast"

    def __init__(self, root: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.root = root

    def make_layout(self, size: int) -> Layout:
        if isinstance(self.root, bool) or not isinstance(self.root, int) or \
                not 0 <= self.root < size:
            raise ValueError(f"share='broadcast': `root` must be a rank in 0..{size - 1}. "
                             f"Received: root={self.root!r}")
        return Layout([list(range(size))], "bcast", [self.root],
                      self._trainers(size, [self.root]))


class MultiBroadcast(MPIShareMode):
    """The ranks split into ``groups`` (``comm.Split``); the first rank of each group
    preprocesses and broadcasts to its group.

    Args:
        groups: lists of ranks covering every rank exactly once; default: consecutive
            groups of ``group_size``.
        group_size: ranks per group when ``groups`` is not given (default 2).

    Example:
        >>> MultiBroadcast(groups=[[0, 1, 2], [3, 4, 5]], preprocess_only=[0, 3])
    """
    name = "multi_broadcast"
    kind = "bcast"

    def __init__(self, groups=None, group_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.group_size = groups, group_size

    def make_layout(self, size: int) -> Layout:
        from hybridnet.distributed import mpi
        if self.groups is None:
            groups = mpi.even_groups(size, self.group_size)
        else:
            groups = mpi.check_groups(self.groups, size, "share='multi_broadcast'")
        roots = [g[0] for g in groups]
        trainers = self._trainers(size, roots)
        empty = [g for g in groups if not any(r in trainers for r in g)]
        if empty:
            raise ValueError(f"share='multi_broadcast': every group needs a training rank; "
                             f"groups {empty} hold only preprocess-only ranks. Received: "
                             f"groups={groups}, preprocess_only={list(self.preprocess_only)}")
        return Layout(groups, "bcast", roots, trainers)


# ----------------------------------------------------------------------- the adapter

class SharedBatches(DataAdapter):
    """The batches a rank's members train on under an MPI share mode: the whole global
    batch of the wrapped adapter, prepared by the group's preprocessing rank(s) and moved
    by one mpi4jax collective per batch. ``batch_size`` / ``num_samples`` are the global
    ones (every trainer sees every sample)."""

    def __init__(self, base: DataAdapter, mode: MPIShareMode):
        self._base, self._mode = base, mode
        self._what, self._kind = base._what, base._kind
        group = mode._group
        layout = mode.layout
        self._sources = [group.world_ranks.index(r) for r in
                         layout.sources(layout.group_of(mode.rank))]
        self._local = None
        if group.rank in self._sources and layout.kind == "gather":
            self._local = base.shard(group.rank, group.size)
        elif group.rank in self._sources:
            self._local = base

    @property
    def local(self):
        """The adapter this rank reads and prepares (its slice under "gather", the whole
        batches on a broadcasting rank), or None on a rank that only receives."""
        return self._local

    num_batches = property(lambda self: self._base.num_batches)
    batch_size = property(lambda self: self._base.batch_size)
    num_samples = property(lambda self: self._base.num_samples)
    exhausted = property(lambda self: self._base.exhausted)

    def split(self, fraction, **kwargs):
        train, val = self._base.split(fraction, **kwargs)
        return self._mode.wrap(train), self._mode.wrap(val)

    def shard(self, index, count):
        raise ValueError(f"{self._what}: batches shared by share={self._mode.name!r} are "
                         f"already the whole batch on every rank; they cannot be sharded "
                         f"again. Received: index={index}, count={count}")

    def on_epoch_end(self):
        if self._local is not None:
            self._local.on_epoch_end()

    def batches(self, rng=None):
        stream = self._stream(rng)
        try:
            yield from stream
        except GeneratorExit:
            for _ in stream:  # the consumer stopped early: stay in step with the others
                pass
            raise

    def _stream(self, rng):
        mode, group = self._mode, self._mode._group
        channel, collectives = group.channel, group.collectives
        seed = int(rng.integers(2 ** 62)) if rng is not None else -1
        docs = channel.exchange({"seed": seed}, what=f"the start of an epoch "
                                                     f"(share={mode.name!r})")
        seed = docs[0]["seed"]
        source = None
        if self._local is not None:
            source = self._local.batches(None if seed < 0 else np.random.default_rng(seed))
        step = 0
        try:
            while True:
                doc = {"step": step}
                rows = None
                if source is not None:
                    batch = next(source, None)
                    doc["has"] = batch is not None
                    if batch is not None:
                        doc["spec"], rows = pack(batch, self._what)
                        doc["rows"] = int(rows.shape[0])
                what = f"{mode.name} of batch {step} of an epoch"
                docs = channel.exchange(doc, what=what)
                spec = self._agree(docs, step)
                if spec is None:
                    return
                if self._mode.layout.kind == "gather":
                    rows = collectives.all_gather(rows, what=what)
                else:
                    root = self._sources[0]
                    if rows is None:
                        rows = np.empty((docs[root]["rows"], row_bytes(spec)), np.uint8)
                    rows = collectives.bcast(rows, root, what=what)
                yield unpack(spec, rows)
                step += 1
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _agree(self, docs, step):
        """The spec of batch ``step`` from the sources' messages (None: the epoch ended),
        checked to agree."""
        group = self._mode._group
        has = {r: docs[r]["has"] for r in self._sources}
        if not any(has.values()):
            return None
        if not all(has.values()):
            done = [group.world_ranks[r] for r, h in has.items() if not h]
            more = [group.world_ranks[r] for r, h in has.items() if h]
            raise RuntimeError(f"{self._what}: under share={self._mode.name!r} ranks {done} "
                               f"ran out of data at batch {step} of an epoch while ranks "
                               f"{more} had more; every rank must be given the same data.")
        specs = {r: json.dumps([docs[r]["rows"], docs[r]["spec"]]) for r in self._sources}
        if len(set(specs.values())) > 1:
            raise RuntimeError(f"{self._what}: under share={self._mode.name!r} the ranks' "
                               f"slices of batch {step} differ in layout: " + "; ".join(
                                   f"rank {group.world_ranks[r]}: {s}"
                                   for r, s in specs.items()))
        return docs[self._sources[0]]["spec"]

    def __repr__(self):
        return f"SharedBatches({self._base!r}, share={self._mode.name!r})"


__all__ = ["AllGather", "Broadcast", "Layout", "MPIShareMode", "MultiBroadcast",
           "SharedBatches", "pack", "row_bytes", "unpack"]
