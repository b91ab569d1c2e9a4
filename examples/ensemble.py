"""An ensemble of small MLPs on scikit-learn's 8x8 digits, trained on one input pipeline.

Every batch is read and prepared once and all members train on it. With ``--stacked``
the members are one vmapped program over a stacked TrainState (each with its own seed
and learning rate); without, each is its own model with its own compiled step. One
progress bar shows each member and the members' mean; evaluation adds the soft and
hard votes. Members that stop improving stop early, the others go on.

    python examples/ensemble.py --share local --members 4 --stacked [--devices 8]

Across MPI ranks (each rank its own JAX process; batches prepared once and shared):

    mpirun -n 4 python examples/ensemble.py --share all_gather
    mpirun -n 4 python examples/ensemble.py --share broadcast --preprocess-only 0 --members 3
    mpirun -n 4 python examples/ensemble.py --share multi_broadcast --groups 0,1/2,3

(as root add ``--allow-run-as-root``; with more ranks than cores ``--oversubscribe``).
"""
from __future__ import annotations

import argparse
import os
import sys


def load_digits_data(seed: int = 0):
    """Digits as flat float vectors in [0, 1], split 80/20 (stratified, seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build_member():
    """One member: a small MLP, compiled."""
    import hybridnet
    from hybridnet import Input, Sequential
    from hybridnet.layers import Dense, Dropout

    model = Sequential([Input((64,)), Dense(64, activation="relu"), Dropout(0.1),
                        Dense(10, activation="softmax")])
    model.compile(hybridnet.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def make_share(args):
    """The share mode the command line asks for ("local", or an MPI mode configured with
    ``--preprocess-only`` / ``--groups`` / ``--root``)."""
    if args.share == "local":
        return "local"
    from hybridnet.ensemble import mpi_share
    kw = {"preprocess_only": [int(r) for r in args.preprocess_only.split(",") if r]}
    if args.share == "all_gather":
        return mpi_share.AllGather(**kw)
    if args.share == "broadcast":
        return mpi_share.Broadcast(root=args.root, **kw)
    if args.share == "multi_broadcast":
        groups = None if args.groups is None else [
            [int(r) for r in g.split(",")] for g in args.groups.split("/")]
        return mpi_share.MultiBroadcast(groups=groups, **kw)
    return args.share  # let Ensemble name the choices


def soft_vote_over_ranks(ens, x_test, y_test) -> float | None:
    """The soft vote of all members, on every rank's members: each rank sums its members'
    probabilities, a buffer Reduce adds them up on rank 0 (None elsewhere)."""
    import numpy as np
    from mpi4py import MPI
    from hybridnet.ensemble.ensemble import _probabilities

    total = np.zeros((len(x_test), 10), np.float64)
    if ens.members:
        pred = ens.predict(x_test, verbose=0)
        for model, out in zip(ens.members, pred.members):
            total += _probabilities(model, out)
    summed = np.zeros_like(total)
    MPI.COMM_WORLD.Reduce(total, summed, op=MPI.SUM, root=0)
    if MPI.COMM_WORLD.Get_rank() != 0:
        return None
    return float(np.mean(summed.argmax(-1) == y_test))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--stacked", action="store_true",
                        help="one vmapped step for all members (default: one per member)")
    parser.add_argument("--share", default="local",
                        help="how batches reach the members: local (one process) or, "
                             "under mpirun, all_gather / broadcast / multi_broadcast")
    parser.add_argument("--preprocess-only", default="",
                        help="MPI ranks that only prepare batches, e.g. 0 or 0,2")
    parser.add_argument("--groups", default=None,
                        help="multi_broadcast groups, e.g. 0,1/2,3 (first rank of each "
                             "group prepares its batches; default pairs)")
    parser.add_argument("--root", type=int, default=0, help="broadcast's preparing rank")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--devices", type=int, default=None,
                        help="simulate this many CPU devices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="save the ensemble to this directory")
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    from hybridnet.callbacks import EarlyStopping
    from hybridnet.ensemble import Ensemble

    x_train, x_test, y_train, y_test = load_digits_data(args.seed)
    rates = [1e-3 * 2 ** (i % 4) for i in range(args.members)]
    share = make_share(args)
    # Under mpirun every rank runs this; each builds only its own members (member i is
    # seeded seed + i wherever it lives), a preprocess-only rank none.
    ens = Ensemble(build_member, n=args.members, seed=args.seed, learning_rate=rates,
                   share=share, stacked=args.stacked)
    mpi = args.share != "local"
    talks = not mpi or (ens.members and ens.share.rank == ens.share.layout.trainers[0])
    where = f"rank {ens.share.rank}: " if mpi else ""
    print(f"{where}{ens}: members {ens.member_ids}")
    ens.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
            validation_split=0.1, verbose=args.verbose if talks else 0,
            callbacks=[EarlyStopping("val_loss", patience=3, restore_best_weights=True)])
    if ens.members:
        logs = ens.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
        single = len(ens.members) == 1
        for i, model in zip(ens.member_ids, ens.members):
            acc = logs["accuracy" if single else f"member{i}_accuracy"]
            print(f"{where}member {i} (lr {rates[i]:g}): test accuracy {acc:.4f}, "
                  f"{model.iterations} steps")
    if mpi:
        vote = soft_vote_over_ranks(ens, x_test, y_test)
        if vote is None:
            return 1.0
        print(f"soft vote of all {args.members} members: {vote:.4f} on {len(x_test)} images")
        return vote
    print(f"soft vote: {logs['soft_vote_accuracy']:.4f}, hard vote: "
          f"{logs['hard_vote_accuracy']:.4f} on {len(x_test)} images")
    if args.save:
        ens.save(args.save)
        print(f"saved to {args.save}")
    return logs["soft_vote_accuracy"]


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.9 else 1)
