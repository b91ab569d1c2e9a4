"""Share modes: how the batches one input pipeline reads reach every ensemble member.

A share mode turns the local batch stream (a ``hybridnet.data`` adapter) into the
batches the members of this process train on: ``mode.wrap(adapter) -> adapter``. In
one process every member reads the same stream, so ``"local"`` is the identity. Modes
that share preprocessed batches between MPI ranks (``"all_gather"``, ``"broadcast"``,
``"multi_broadcast"``, in ``hybridnet.ensemble.mpi_share``) set ``requires = "mpi"``
and are registered by name (others with :func:`register_share_mode`); :func:`get`
refuses them in a process not started under MPI.

Example:
    >>> share = hybridnet.ensemble.share.get("local")
    >>> adapter = share.wrap(adapter)            # the same adapter
"""
from __future__ import annotations

from typing import Callable

MPI_MODES = ("all_gather", "broadcast", "multi_broadcast")


class ShareMode:
    """Base class of share modes.

    Attributes:
        name: the name ``Ensemble(share=...)`` takes (and an ensemble file records).
        requires: None, or ``"mpi"`` when the mode only works with the processes
            started under MPI (``mpirun``).
    """
    name: str = "local"
    requires: str | None = None

    def wrap(self, adapter):
        """The adapter the members read, from the adapter this process's pipeline
        yields (the data adapter protocol of ``hybridnet.data.DataAdapter``)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<share mode {self.name!r}>"


class Local(ShareMode):
    """Every member of this process trains on the batches it reads: the identity.

    Example:
        >>> Ensemble([m1, m2, m3], share="local")
    """
    name = "local"

    def wrap(self, adapter):
        return adapter


def _mpi_mode(name: str) -> Callable[[], ShareMode]:
    """A factory of the built-in MPI mode ``name`` (imported when first used)."""
    def factory():
        from hybridnet.ensemble import mpi_share
        return {"all_gather": mpi_share.AllGather, "broadcast": mpi_share.Broadcast,
                "multi_broadcast": mpi_share.MultiBroadcast}[name]()
    return factory


_REGISTRY: dict[str, Callable[[], ShareMode]] = {
    "local": Local, **{name: _mpi_mode(name) for name in MPI_MODES}}


def register_share_mode(name: str, factory: Callable[[], ShareMode]) -> None:
    """Makes ``Ensemble(share=name)`` build its share mode with ``factory()``.

    Example:
        >>> register_share_mode("broadcast", BroadcastShare)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_share_mode: `name` must be a non-empty str. "
                         f"Received: name={name!r}")
    if not callable(factory):
        raise ValueError(f"register_share_mode: `factory` must be callable. "
                         f"Received: factory={factory!r}")
    _REGISTRY[name] = factory


def under_mpi() -> bool:
    """Whether this process was started by an MPI launcher."""
    from hybridnet.distributed import detect_cluster
    return detect_cluster() == "mpi"


def _check_requirements(mode: ShareMode) -> ShareMode:
    if mode.requires == "mpi" and not under_mpi():
        raise RuntimeError(
            f"Ensemble: share={mode.name!r} shares batches between MPI ranks, and this "
            f"process was not started under MPI. Launch the script with "
            f"`mpirun -n <ranks> python ...`, or use share='local' in one process.")
    return mode


def get(share) -> ShareMode:
    """A share mode from a name (``"local"``, ``"all_gather"``, ``"broadcast"``,
    ``"multi_broadcast"``) or a :class:`ShareMode` object, checked against how this
    process was launched."""
    if isinstance(share, ShareMode):
        return _check_requirements(share)
    if isinstance(share, str):
        if share in _REGISTRY:
            if share in MPI_MODES:  # refused before anything MPI is imported
                _check_requirements(type("_Named", (ShareMode,), {
                    "name": share, "requires": "mpi"})())
            mode = _REGISTRY[share]()
            if share in MPI_MODES and mode.requires is None:
                mode.requires = "mpi"
            mode.name = share
            return _check_requirements(mode)
    known = sorted(set(_REGISTRY) | set(MPI_MODES))
    raise ValueError(f"Ensemble: `share` must be one of {known} or a ShareMode. "
                     f"Received: share={share!r}")


__all__ = ["Local", "MPI_MODES", "ShareMode", "get", "register_share_mode", "under_mpi"]
