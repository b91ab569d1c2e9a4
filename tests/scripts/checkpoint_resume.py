"""Run by tests/test_checkpoint.py under `hybridnet launch -n 2 --devices-per-process 2`,
twice with the same command. The first launch

1. trains the reference run (3 epochs, no interruption) and prints its parameters and
   predictions;
2. restores the checkpoint that one process of one device wrote (`<dir>/one`) into this
   2 x 2 hybrid plan and prints the predictions;
3. saves the reference model's checkpoint (`<dir>/two`: each process writes its shards);
4. trains the same run with `BackupAndRestore(save_freq=4)`: process 1 kills itself
   (SIGKILL) mid-epoch at batch 10, after writing `<dir>/killed` (the time).

The second launch (`<dir>/killed` exists) runs step 4 only: it resumes from the last
backup and prints the parameters it ends with.

Each process prints `RESULT {"what", "process", ...}` lines.
"""
import json
import os
import signal
import sys
import time

import numpy as np

import hybridnet
from hybridnet import callbacks, layers, strategies

START = time.time()
hybridnet.distributed.initialize()
RANK = hybridnet.distributed.process_index()
KILL_AT = 10  # global batch (epoch 1, batch 4 of 6); backups at batches 4, 8, 12, ...


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 4, size=(48,))
    return x, y


def build(strategy=None):
    """The model of tests/test_checkpoint.py (same seed, same layers)."""
    hybridnet.utils.set_random_seed(1)
    inputs = hybridnet.Input((6,))
    h = layers.Dense(8, activation="relu", parallel="model", name="hidden")(inputs)
    h = layers.Dropout(0.25, name="drop")(h)
    outputs = layers.Dense(4, activation="softmax", name="probs")(h)
    model = hybridnet.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  strategy=strategy or strategies.Hybrid(mesh={"data": 2, "model": 2}))
    return model


def report(what, **values):
    print("RESULT " + json.dumps({"what": what, "process": RANK, **values,
                                  "seconds": round(time.time() - START, 2)}), flush=True)


def params(model):
    return [w.ravel().tolist() for w in model.get_weights()]


class KillOnce(callbacks.Callback):
    """Process 1 kills itself at global batch ``KILL_AT`` unless ``marker`` exists."""

    def __init__(self, marker, backup):
        super().__init__()
        self.marker, self.backup = marker, backup

    def on_train_batch_end(self, batch, logs=None):
        if RANK == 1 and self.model.iterations == KILL_AT and not os.path.exists(self.marker):
            self.backup._manager.wait_until_finished()  # the backup of batch 8 is done
            with open(self.marker, "w") as f:
                f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def main(out_dir):
    x, y = data()
    if not os.path.exists(os.path.join(out_dir, "killed")):
        first_launch(out_dir, x, y)
    resumed = build()
    backup = callbacks.BackupAndRestore(os.path.join(out_dir, "backup"), save_freq=4)
    history = resumed.fit(x, y, batch_size=8, epochs=3, verbose=0,
                          callbacks=[backup, KillOnce(os.path.join(out_dir, "killed"), backup)])
    report("resumed", params=params(resumed), epochs=len(history.history["loss"]),
           backup_left=os.path.exists(os.path.join(out_dir, "backup")))


def first_launch(out_dir, x, y):
    """Before the backed-up run is killed: the reference and the cross-count restores."""
    reference = build()
    reference.fit(x, y, batch_size=8, epochs=3, verbose=0)
    report("reference", params=params(reference),
           predict=reference.predict(x, verbose=0).ravel().tolist(),
           mesh=reference.plan.mesh_axes)

    from_one = build()
    step = hybridnet.checkpoint.restore(os.path.join(out_dir, "one"), from_one)
    report("from_one", metadata=step, iterations=from_one.iterations,
           params=params(from_one), predict=from_one.predict(x, verbose=0).ravel().tolist())

    hybridnet.checkpoint.save(os.path.join(out_dir, "two"), reference,
                              metadata={"writer": "2x2"})


if __name__ == "__main__":
    main(sys.argv[1])
