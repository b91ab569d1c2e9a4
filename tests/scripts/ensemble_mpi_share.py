"""One rank of an ensemble trained on shared input (run by tests/test_ensemble_mpi.py).

    mpirun -n 4 python tests/scripts/ensemble_mpi_share.py OUT --share multi_broadcast \\
        --groups 0,1/2,3 --preprocess-only 2 --members 3
    python tests/scripts/ensemble_mpi_share.py OUT --share local --members 4   # reference

    mpirun -n 4 python tests/scripts/ensemble_mpi_share.py OUT \
        --scenarios all_gather,broadcast,multi_broadcast          # OUT/<scenario>/...

Members are tiny MLPs on sklearn's 8x8 digits read through an ``ImagePipeline`` (a
random flip, so the batches depend on the pipeline's seed and position only) with
validation arrays. Each rank writes ``OUT/rank<r>.json``: the CRC32 of every batch its
members were handed (training and validation, in order) and its members' weights as
``OUT/member<i>.npz``. ``--die-rank R --die-at K`` kills rank R (SIGKILL) when it is
handed training batch K.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import zlib

import numpy as np

BATCH, EPOCHS = 24, 2


def parse(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--share", default="local")
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--groups", default=None, help="e.g. 0,1/2,3")
    p.add_argument("--root", type=int, default=0)
    p.add_argument("--preprocess-only", default="")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--die-rank", type=int, default=None)
    p.add_argument("--die-at", type=int, default=3)
    p.add_argument("--die-in", choices=("batch", "collective"), default="batch",
                   help="die when handed a batch, or inside the data collective (after "
                        "the control exchange, so the others wait in mpi4jax)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--stop-member", type=int, default=None,
                   help="this member stops training after the first epoch")
    p.add_argument("--scenarios", default="",
                   help="comma-separated names of SCENARIOS to run in turn (4 ranks)")
    return p.parse_args(argv)


def make_mode(args):
    from hybridnet.ensemble import mpi_share
    if args.share == "local":
        return "local"
    only = [int(r) for r in args.preprocess_only.split(",") if r]
    kw = dict(preprocess_only=only, timeout=args.timeout)
    if args.share == "all_gather":
        return mpi_share.AllGather(**kw)
    if args.share == "broadcast":
        return mpi_share.Broadcast(root=args.root, **kw)
    groups = None if args.groups is None else [
        [int(r) for r in g.split(",")] for g in args.groups.split("/")]
    return mpi_share.MultiBroadcast(groups=groups, **kw)


def build():
    import hybridnet
    from hybridnet import Input, Sequential
    from hybridnet.layers import Dense, Flatten
    model = Sequential([Input((8, 8, 1)), Flatten(), Dense(16, activation="relu"),
                        Dense(10)])
    model.compile(hybridnet.optimizers.Adam(1e-2),
                  hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def crc(batch) -> int:
    value = 0
    for part in batch:
        if part is not None:
            value = zlib.crc32(np.ascontiguousarray(part).tobytes(), value)
    return value


def StopAfterFirstEpoch():
    from hybridnet.callbacks import Callback

    class Stop(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True
    return Stop()


def die(args, rank: int, where: str):
    with open(os.path.join(args.out, "died_at"), "w") as f:
        f.write(repr(time.time()))
    print(f"rank {rank}: dying {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


_ORIGINAL = {}


def record(seen: list, rank: int, args):
    """Patches the batches the members get so that each is checksummed (and, for the
    dying rank, so that it dies at training batch ``args.die_at``)."""
    from hybridnet.distributed import mpi
    from hybridnet.training import trainer as trainer_lib
    original = _ORIGINAL.setdefault("batches", trainer_lib.Trainer._batches)
    dying = rank == args.die_rank

    def batches(self, adapter, rng, what, *a, **k):
        for i, item in enumerate(original(self, adapter, rng, what, *a, **k)):
            if dying and args.die_in == "batch" and what == "fit" and i == args.die_at:
                die(args, rank, f"when handed batch {i}")
            xb, yb, swb = item[:3]
            seen.append([what, crc((xb[0], yb))])
            yield item
    trainer_lib.Trainer._batches = batches
    if dying and args.die_in == "collective":
        calls = {"n": 0}
        gather = mpi.Collectives.all_gather

        def all_gather(self, x, what="all_gather"):
            calls["n"] += 1
            if calls["n"] > args.die_at:
                die(args, rank, f"inside {what}")
            return gather(self, x, what)
        mpi.Collectives.all_gather = all_gather


# name -> (share mode arguments, members) for 4 ranks, run one after the other by
# ``--scenarios``: every mode, with preprocess-only ranks for the broadcasts.
SCENARIOS = {
    "all_gather": (dict(share="all_gather"), 4),
    "broadcast": (dict(share="broadcast", root=0, preprocess_only="0"), 3),
    "multi_broadcast": (dict(share="multi_broadcast", groups="0,1/2,3",
                             preprocess_only="2"), 3),
    # member 1 stops after the first epoch: its rank keeps gathering for the others
    "all_gather_stop": (dict(share="all_gather", stop_member=1), 4),
}


def run(out: str, args, x, y):
    """One ensemble fit under ``args.share``; writes ``out/rank<r>.json`` and
    ``out/member<i>.npz``."""
    from hybridnet.data import images
    from hybridnet.distributed import mpi
    from hybridnet.ensemble import Ensemble

    os.makedirs(out, exist_ok=True)
    train, val = slice(0, 144), slice(1000, 1048)
    pipeline = images.ImagePipeline(
        images.array_source(x[train], y[train]), [images.RandomFlip(), images.Normalize()],
        batch_size=BATCH, seed=3, worker_count=0)
    x_val = x[val].astype(np.float32) / 255.0
    rank = mpi.world_rank()
    seen: list = []
    record(seen, rank, args)
    rates = [1e-2 * (1 + i) for i in range(args.members)]
    ens = Ensemble(build, n=args.members, seed=0, learning_rate=rates, stacked=False,
                   share=make_mode(args))
    ens.fit(pipeline, epochs=args.epochs, validation_data=(x_val, y[val]),
            validation_batch_size=BATCH, verbose=0,
            callbacks=lambda i: [StopAfterFirstEpoch()] if i == args.stop_member else [])
    ens.save(os.path.join(out, "saved"))  # collective: each rank its members, rank 0 the index
    for i, model in zip(ens.member_ids, ens.members):
        np.savez(os.path.join(out, f"member{i}.npz"),
                 *[np.asarray(w) for w in model.get_weights()])
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "members": ens.member_ids, "batches": seen,
                   "iterations": [int(m.iterations) for m in ens.members]}, f)
    print(f"{out}: rank {rank}: members {ens.member_ids}, {len(seen)} batches, ok",
          flush=True)


def main(argv=None):
    args = parse(argv)
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images * 15).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    if not args.scenarios:
        run(args.out, args, x, y)
        return 0
    for name in args.scenarios.split(","):
        settings, members = SCENARIOS[name]
        scenario = argparse.Namespace(**{**vars(args), "preprocess_only": "",
                                         "groups": None, "stop_member": None, **settings,
                                         "members": members})
        run(os.path.join(args.out, name), scenario, x, y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
