"""An ensemble of small MLPs on scikit-learn's 8x8 digits, trained on one input pipeline.

Every batch is read and prepared once and all members train on it. With ``--stacked``
the members are one vmapped program over a stacked TrainState (each with its own seed
and learning rate); without, each is its own model with its own compiled step. One
progress bar shows each member and the members' mean; evaluation adds the soft and
hard votes. Members that stop improving stop early, the others go on.

    python examples/ensemble.py --share local --members 4 --stacked [--devices 8]
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


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--stacked", action="store_true",
                        help="one vmapped step for all members (default: one per member)")
    parser.add_argument("--share", default="local",
                        help="how batches reach the members: local (one process) or, "
                             "under mpirun, all_gather / broadcast / multi_broadcast")
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
    if args.stacked:
        ens = Ensemble(build_member, n=args.members, seed=args.seed, learning_rate=rates,
                       share=args.share)
    else:
        import hybridnet
        members = []
        for i in range(args.members):
            hybridnet.utils.set_random_seed(args.seed + i)
            members.append(build_member())
        ens = Ensemble(members, learning_rate=rates, share=args.share)
    print(ens)
    ens.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
            validation_split=0.1, verbose=args.verbose,
            callbacks=[EarlyStopping("val_loss", patience=3, restore_best_weights=True)])
    logs = ens.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    for i in range(args.members):
        print(f"member {i} (lr {rates[i]:g}): test accuracy "
              f"{logs[f'member{i}_accuracy']:.4f}, {ens[i].iterations} steps")
    print(f"soft vote: {logs['soft_vote_accuracy']:.4f}, hard vote: "
          f"{logs['hard_vote_accuracy']:.4f} on {len(x_test)} images")
    if args.save:
        ens.save(args.save)
        print(f"saved to {args.save}")
    return logs["soft_vote_accuracy"]


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.9 else 1)
