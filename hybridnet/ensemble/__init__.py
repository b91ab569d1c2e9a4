"""Ensembles trained on shared input: one input pipeline, many models.

Preprocessing runs once per batch and every member trains on the result; homogeneous
members can run as one vmapped program over a stacked TrainState (HFTA, MLSys 2021).

Example:
    >>> from hybridnet.ensemble import Ensemble
    >>> ens = Ensemble(build_model, n=4, learning_rate=[1e-3, 2e-3, 5e-3, 1e-2], seed=0)
    >>> ens.fit(x, y, batch_size=64, epochs=5)
    >>> ens.predict(x_test).soft.argmax(-1)

Across MPI ranks (``mpirun -n 4 python train.py``), batches prepared once and shared:

    >>> ens = Ensemble(build_model, n=4, seed=0, share="all_gather")   # or Broadcast(...)
"""
from hybridnet.ensemble import mpi_share, share, votes
from hybridnet.ensemble.ensemble import Ensemble, Predictions, load
from hybridnet.ensemble.mpi_share import AllGather, Broadcast, MultiBroadcast
from hybridnet.ensemble.share import Local, ShareMode, register_share_mode
from hybridnet.ensemble.stacked import StackedGroup, StackedRunner
from hybridnet.ensemble.votes import hard_vote, soft_vote

__all__ = ["AllGather", "Broadcast", "Ensemble", "Local", "MultiBroadcast", "Predictions",
           "ShareMode", "StackedGroup", "StackedRunner", "hard_vote", "load", "mpi_share",
           "register_share_mode", "share", "soft_vote", "votes"]
