"""Training checkpoints (hybridnet.checkpoint) and BackupAndRestore.

Restores reshard: a state saved under a hybrid plan on 8 devices restores under other
plans on 1 and 4 devices with the same values and predictions; 2 processes x 2 devices
and 1 process x 1 device read each other's checkpoints. Saves keep the last N and are
atomic (an uncommitted save leaves the previous checkpoint). A run killed mid-epoch (an
exception here; kill -9 of one process under `hybridnet launch`) resumes from its last
backup and ends with the uninterrupted run's parameters, exactly.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import callbacks, checkpoint, layers, strategies

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "checkpoint_resume.py")


def _data(n=48):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 4, size=(n,))


def _build(strategy=None, width=8):
    """The model of tests/scripts/checkpoint_resume.py (same seed, same layers)."""
    hybridnet.utils.set_random_seed(1)
    inputs = hybridnet.Input((6,))
    h = layers.Dense(width, activation="relu", parallel="model", name="hidden")(inputs)
    h = layers.Dropout(0.25, name="drop")(h)
    outputs = layers.Dense(4, activation="softmax", name="probs")(h)
    model = hybridnet.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  strategy=strategy)
    return model


def _on(n, model_axis=1):
    """A hybrid plan on the first ``n`` devices."""
    return strategies.Hybrid(mesh={"data": n // model_axis, "model": model_axis},
                             devices=jax.devices()[:n])


def _leaves(model):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(model.train_state)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained under a hybrid plan on 8 devices (data 2 x model 4), saved."""
    x, y = _data()
    model = _build(_on(8, model_axis=4))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    directory = str(tmp_path_factory.mktemp("ckpt") / "run")
    manager = checkpoint.CheckpointManager(directory, max_to_keep=2)
    assert manager.save(model, metadata={"epoch": 2})
    manager.close()
    return model, directory


# ------------------------------------------------------------------ resharding
@pytest.mark.parametrize("devices, model_axis", [(1, 1), (4, 2)])
def test_restore_under_another_plan_and_device_count(trained, devices, model_axis):
    model, directory = trained
    x, _ = _data()
    other = _build(_on(devices, model_axis))
    assert checkpoint.restore(directory, other) == {"epoch": 2}
    assert other.plan.mesh_axes == {"data": devices // model_axis, "model": model_axis}
    assert {d for a in jax.tree_util.tree_leaves(other.train_state)
            for d in a.sharding.device_set} <= set(jax.devices()[:devices])
    for got, want in zip(_leaves(other), _leaves(model)):  # params, Adam, step, rng
        np.testing.assert_array_equal(got, want)
    assert other.iterations == model.iterations == 12
    np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=0, atol=1e-6)


# ---------------------------------------------------------- keep N, atomicity
def test_keeps_the_last_n_and_names_the_steps_it_has(trained, tmp_path):
    model, _ = trained
    manager = checkpoint.CheckpointManager(tmp_path / "c", max_to_keep=2)
    for step in (2, 4, 6, 8):
        assert manager.save(model, step=step)  # asynchronously
    manager.wait_until_finished()
    assert manager.all_steps() == [6, 8] and manager.latest_step() == 8
    assert sorted(os.listdir(tmp_path / "c")) == ["6", "8"]
    assert manager.save(model, step=8) is False  # step 8 is there already
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint for step 2 in "
                       r"'.*c'\. Expected one of: \[6, 8\]\. Received: step=2"):
        manager.restore(model, step=2)
    manager.close()


def test_a_save_cut_off_midway_leaves_the_previous_checkpoint(trained, tmp_path):
    model, _ = trained
    directory = tmp_path / "c"
    checkpoint.save(directory, model, step=2)  # complete
    # A crash while step 4 was written: orbax's temporary directory, partly written.
    shutil.copytree(directory / "2", directory / "4.orbax-checkpoint-tmp-1234")
    shutil.rmtree(directory / "4.orbax-checkpoint-tmp-1234" / "state")
    fresh = _build(_on(1))
    assert checkpoint.restore(directory, fresh) == {}
    assert fresh.iterations == 12
    for got, want in zip(_leaves(fresh), _leaves(model)):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(directory)) == ["2"]  # the uncommitted save is cleaned up


# ------------------------------------------------------------------ bad input
def test_bad_checkpoints_are_clear_errors(trained, tmp_path):
    _, directory = trained
    wider = _build(_on(1), width=16)
    with pytest.raises(ValueError, match=r"the checkpoint at '.*run/12' does not fit model "
                       r"'.*': .*'params/hidden/kernel': expected shape \(6, 16\) float32 \(the "
                       r"model\)\. Received: shape \(6, 8\) float32 \(the checkpoint\)"):
        checkpoint.restore(directory, wider)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint directory at '.*nowhere'"):
        checkpoint.restore(missing, _build(_on(1)))
    assert not missing.exists()  # reading never creates it
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "7.orbax-checkpoint-tmp-99").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'.*empty' holds no complete checkpoint\. "
                       r"Expected: step directories .* Received: \[.*\]"):
        checkpoint.CheckpointManager(tmp_path / "empty").restore(_build(_on(1)))
    partial = tmp_path / "partial"
    shutil.copytree(directory, partial)
    shutil.rmtree(partial / "12" / "state")
    with pytest.raises(ValueError, match=r"the checkpoint at '.*partial/12' is partial: it "
                       r"lacks \['state'\]\. Expected: \['_CHECKPOINT_METADATA', 'meta', "
                       r"'state'\]\. Received: \['_CHECKPOINT_METADATA', 'commit_success.txt', 'meta'\]"):
        checkpoint.restore(partial, _build(_on(1)))
    with pytest.raises(ValueError, match=r"`save_freq` must be 'epoch', a positive int or "
                       r"False\. Received: save_freq=0"):
        callbacks.BackupAndRestore(tmp_path / "b", save_freq=0)
    unbuilt = hybridnet.Sequential([layers.Dense(2)])
    unbuilt.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"the model must be built before you call `fit\(\)`"):
        unbuilt.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0,
                    callbacks=[callbacks.BackupAndRestore(tmp_path / "b")])


# ------------------------------------------------------------ BackupAndRestore
class _Crash(callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def uninterrupted():
    x, y = _data()
    model = _build(_on(1))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    return model.get_weights(), history.history


@pytest.mark.parametrize("save_freq, crash_at", [("epoch", 9), (4, 10)])
def test_backup_and_restore_resumes_to_the_uninterrupted_result(
        uninterrupted, tmp_path, save_freq, crash_at):
    x, y = _data()
    backup_dir = tmp_path / "backup"
    model = _build(_on(1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[
            callbacks.BackupAndRestore(backup_dir, save_freq=save_freq), _Crash(crash_at)])
    # Started again, as the same script would: a new model, the same fit call.
    model = _build(_on(1))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                        callbacks=[callbacks.BackupAndRestore(backup_dir, save_freq=save_freq)])
    want_weights, want_history = uninterrupted
    for got, want in zip(model.get_weights(), want_weights):
        np.testing.assert_array_equal(got, want)
    assert model.iterations == 18
    # epoch 1 resumes after batch 8 of 18 (save_freq=4) or at its start ("epoch"):
    # its logs, from the restored metric accumulators, are the uninterrupted ones.
    assert history.history["loss"] == want_history["loss"][1:]
    assert not backup_dir.exists()  # delete_checkpoint=True


# ------------------------------------------------------- several processes
def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _results(out):
    found = {}
    for line in out.splitlines():
        rank, _, rest = line.partition("] ")
        if rest.startswith("RESULT "):
            r = json.loads(rest[len("RESULT "):])
            found[(r["what"], r["process"])] = r
    return found


def test_kill_one_process_then_relaunch_resumes_and_moves_across_process_counts(tmp_path):
    x, _ = _data()
    one = _build(_on(1))  # 1 process x 1 device writes the checkpoint 2 x 2 reads
    one.fit(x, _data()[1], batch_size=8, epochs=1, verbose=0)
    checkpoint.save(tmp_path / "one", one, metadata={"writer": "1x1"})
    command = [sys.executable, "-m", "hybridnet.cli", "launch", "-n", "2",
               "--devices-per-process", "2", SCRIPT, str(tmp_path)]

    first = subprocess.run(command, capture_output=True, text=True, timeout=240,
                           env=_env(2))
    ended = time.time()
    assert first.returncode != 0, first.stdout[-3000:]
    assert "process 1 failed (signal 9)" in first.stdout, first.stdout[-3000:]
    assert ended - float((tmp_path / "killed").read_text()) < 60
    assert "resumed" not in {w for w, _ in _results(first.stdout)}

    second = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env=_env(2))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    results = {**_results(first.stdout), **_results(second.stdout)}
    for rank in (0, 1):
        ref, resumed = results[("reference", rank)], results[("resumed", rank)]
        assert ref["mesh"] == {"data": 2, "model": 2}
        assert resumed["params"] == ref["params"]  # exactly the uninterrupted run's
        assert resumed["epochs"] == 2 and not resumed["backup_left"]  # resumed in epoch 1
        # 1 x 1 -> 2 x 2: the same values, the same predictions
        from_one = results[("from_one", rank)]
        assert from_one["metadata"] == {"writer": "1x1"} and from_one["iterations"] == 6
        assert from_one["params"] == [w.ravel().tolist() for w in one.get_weights()]
        np.testing.assert_allclose(from_one["predict"], one.predict(x, verbose=0).ravel(),
                                   rtol=0, atol=1e-6)
    # 2 x 2 -> 1 x 1
    back = _build(_on(1))
    assert checkpoint.restore(tmp_path / "two", back) == {"writer": "2x2"}
    ref = results[("reference", 0)]
    assert [w.ravel().tolist() for w in back.get_weights()] == ref["params"]
    np.testing.assert_allclose(back.predict(x, verbose=0).ravel(), ref["predict"],
                               rtol=0, atol=1e-6)
