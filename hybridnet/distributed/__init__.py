"""Process start-up for multi-process training on ``jax.distributed``.

One script runs as one process or as many: call :func:`initialize` first. Under
``hybridnet launch``, ``mpirun`` (Open MPI, through mpi4py) or SLURM it connects the
processes to one coordinator; with no cluster around it does nothing, so the same script
runs alone.

Example:
    >>> import hybridnet
    >>> hybridnet.distributed.initialize()
    >>> if hybridnet.distributed.is_chief():
    ...     print("devices:", jax.device_count())
"""
from __future__ import annotations

import os
from typing import Sequence

# Set by ``hybridnet launch`` in every process it starts.
ENV_COORDINATOR = "HYBRIDNET_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HYBRIDNET_NUM_PROCESSES"
ENV_PROCESS_ID = "HYBRIDNET_PROCESS_ID"

_STATE = {"initialized": False, "how": None}


def detect_cluster(environ=None) -> str | None:
    """Which launcher started this process: "hybridnet", "mpi", "slurm", or None."""
    env = os.environ if environ is None else environ
    if ENV_COORDINATOR in env:
        return "hybridnet"
    if any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return "mpi"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               *, heartbeat_timeout_seconds: int = 30, initialization_timeout: int = 120) -> bool:
    """Connects this process to the others (``jax.distributed.initialize``).

    Arguments given explicitly win; otherwise they come from ``hybridnet launch``, from
    ``mpirun`` (via mpi4py) or from SLURM. With no cluster detected and no arguments, it
    does nothing. Returns whether this is a multi-process run.

    Args:
        coordinator_address: "host:port" of process 0's coordinator service.
        num_processes, process_id: the job's size and this process's index.
        local_device_ids: the devices this process drives (default: all it sees).
        heartbeat_timeout_seconds: how long the others wait before a dead process is
            declared dead (and they exit with an error instead of hanging).
    """
    import jax
    if _STATE["initialized"]:
        raise RuntimeError(f"hybridnet.distributed.initialize() was already called in this "
                           f"process (launched by {_STATE['how']}); call it once, before "
                           f"any computation.")
    how = "arguments" if coordinator_address is not None else detect_cluster()
    kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  initialization_timeout=initialization_timeout)
    if how is None:
        if num_processes not in (None, 1):
            raise ValueError(f"initialize: num_processes={num_processes} needs a "
                             f"coordinator_address (or a launcher). Received: "
                             f"coordinator_address=None")
        _STATE.update(initialized=True, how="nothing (one process)")
        return False
    if how == "hybridnet":
        coordinator_address = os.environ[ENV_COORDINATOR]
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
        process_id = int(os.environ[ENV_PROCESS_ID])
    elif how == "mpi":
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise ImportError("initialize: running under mpirun needs mpi4py to find the "
                              "coordinator: pip install 'hybridnet[mpi]'") from None
        kwargs["cluster_detection_method"] = "mpi4py"
    if how in ("hybridnet", "arguments"):
        kwargs["cluster_detection_method"] = "deactivate"
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids, **kwargs)
    _STATE.update(initialized=True, how=how)
    _exit_at_once_on_error()
    return jax.process_count() > 1


def _exit_at_once_on_error() -> None:
    """An uncaught exception ends this process at once: JAX's shutdown barrier would
    otherwise hold it until every other process also finished."""
    import sys
    import traceback

    previous = sys.excepthook

    def hook(kind, value, tb):
        if previous is sys.__excepthook__:
            traceback.print_exception(kind, value, tb)
        else:
            previous(kind, value, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.excepthook = hook


def process_index() -> int:
    import jax
    return jax.process_index()


def process_count() -> int:
    import jax
    return jax.process_count()


def is_chief() -> bool:
    """Whether this process writes files and prints progress (process 0)."""
    return process_index() == 0


def __getattr__(name):
    if name == "mpi":  # MPI communicators and process groups (mpi4py, mpi4jax), on use
        import importlib
        return importlib.import_module("hybridnet.distributed.mpi")
    if name in ("barrier", "fetch", "fetch_to_chief"):  # imported lazily: they need jax
        from hybridnet.distributed import arrays
        return getattr(arrays, name)
    raise AttributeError(f"module 'hybridnet.distributed' has no attribute {name!r}")


__all__ = ["barrier", "detect_cluster", "fetch", "fetch_to_chief", "initialize", "is_chief",
           "process_count", "process_index"]
