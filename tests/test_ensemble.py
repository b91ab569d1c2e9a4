"""Ensembles on shared input: members trained together compute what each computes alone
(list and stacked paths), votes, per-member early stopping, save/load, bad input and
share modes. 8 simulated CPU devices (conftest)."""
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Sequential, layers
from hybridnet.callbacks import Callback, EarlyStopping
from hybridnet.ensemble import Ensemble, ShareMode, hard_vote, load, share, soft_vote
from hybridnet.ensemble.stacked import AXIS

LRS = [1e-2, 1e-1]
BATCH = 32


def _data(n=96, features=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, features)).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def _mlp(units=16, optimizer=None, features=8, norm=False):
    body = [Input((features,)), layers.Dense(units, activation="relu")]
    if norm:
        body += [layers.BatchNormalization(), layers.Dropout(0.25)]
    model = Sequential(body + [layers.Dense(3, activation="softmax")])
    model.compile(optimizer or hybridnet.optimizers.Adam(1e-2),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _build():
    return _mlp(norm=True)


class _Batches:
    """A re-iterable source of (x, y) batches that counts how often it prepared one."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x) // BATCH

    def __iter__(self):
        for i in range(len(self)):
            self.reads += 1
            yield self.x[i * BATCH:(i + 1) * BATCH], self.y[i * BATCH:(i + 1) * BATCH]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))


HETEROGENEOUS = [
    lambda: _mlp(16, hybridnet.optimizers.Adam(1e-2)),
    lambda: _mlp(32, hybridnet.optimizers.SGD(0.1, momentum=0.9)),
    lambda: _mlp(8, hybridnet.optimizers.RMSprop(1e-3), norm=True),
]


def _seeded(build, seed):
    hybridnet.utils.set_random_seed(seed)
    return build()


def test_list_members_match_each_trained_alone():
    x, y = _data()
    data = _Batches(x, y)
    members = [_seeded(build, 10 + i) for i, build in enumerate(HETEROGENEOUS)]
    history = Ensemble(members).fit(data, epochs=2, verbose=0)
    assert data.reads == 2 * len(data)  # each batch prepared once for all three members
    assert {"mean_loss", "member0_loss", "member2_accuracy"} <= set(history.history)
    for i, build in enumerate(HETEROGENEOUS):
        alone = _seeded(build, 10 + i)
        alone.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        assert alone.iterations == members[i].iterations == 6
        assert _max_diff(alone, members[i]) < 1e-6, f"member {i}"


@pytest.fixture(scope="module")
def trained():
    """The same two members (seeds, learning rates; BatchNormalization and Dropout)
    trained stacked and as a list."""
    x, y = _data()
    stacked = Ensemble(_build, n=2, seed=0, learning_rate=LRS)
    list_ = Ensemble(_build, n=2, seed=0, learning_rate=LRS, stacked=False)
    h_stacked = stacked.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    h_list = list_.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return x, y, stacked, list_, h_stacked, h_list


def test_stacked_matches_list(trained):
    x, y, stacked, list_, h_stacked, h_list = trained
    assert stacked.stacked and not list_.stacked
    runner = stacked._group.runner
    assert runner.plan.mesh_axes == {AXIS: 2, "data": 4}  # members across, data within
    kernel = stacked._group.state.params[stacked.members[0].layers[0].name]["kernel"]
    assert kernel.shape[0] == 2 and kernel.sharding.spec[0] == AXIS
    for i, (a, b) in enumerate(zip(stacked.members, list_.members)):
        assert a.iterations == b.iterations == 6
        assert a.optimizer.learning_rate == LRS[i]
        assert _max_diff(a, b) < 1e-6, f"member {i}"
    for key, values in h_list.history.items():
        np.testing.assert_allclose(h_stacked.history[key], values, rtol=1e-5, atol=1e-6)
    # members differ by seed and learning rate
    assert _max_diff(stacked.members[0], stacked.members[1]) > 1e-3


def test_votes_pure():
    probs = np.array([[[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]],
                      [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]],
                      [[0.3, 0.6, 0.1], [0.6, 0.3, 0.1]]])
    np.testing.assert_allclose(soft_vote(probs), probs.mean(0))
    np.testing.assert_array_equal(hard_vote(probs), [1, 2])  # soft would pick 0 for row 0
    assert soft_vote(probs)[0].argmax() == 0
    tie = np.array([[[0.9, 0.1, 0.0]], [[0.0, 0.1, 0.9]]])
    np.testing.assert_array_equal(hard_vote(tie), [0])  # a tie goes to the lowest class
    sigmoid = np.array([[[0.9]], [[0.4]], [[0.3]]])
    np.testing.assert_allclose(soft_vote(sigmoid), [[1 - 0.5333333, 0.5333333]], atol=1e-6)
    np.testing.assert_array_equal(hard_vote(sigmoid), [0])


def test_ensemble_votes_and_evaluate(trained):
    x, y, stacked, list_, _, _ = trained
    pred = stacked.predict(x, batch_size=BATCH, verbose=0)
    alone = np.stack(list_.predict(x, batch_size=BATCH, verbose=0).members)
    np.testing.assert_allclose(np.stack(pred.members), alone, atol=1e-6)
    np.testing.assert_allclose(pred.soft, alone.mean(0), atol=1e-6)
    np.testing.assert_array_equal(pred.hard, hard_vote(alone))
    logs = stacked.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert logs["soft_vote_accuracy"] == pytest.approx(np.mean(alone.mean(0).argmax(-1) == y))
    assert logs["hard_vote_accuracy"] == pytest.approx(np.mean(hard_vote(alone) == y))
    list_logs = list_.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert list(logs) == list(list_logs)
    for key, value in list_logs.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
    assert logs["mean_loss"] == pytest.approx(np.mean([logs[f"member{i}_loss"]
                                                        for i in range(2)]))


class _Snapshot(Callback):
    """Keeps the member's weights when its training ends."""

    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()


def test_early_stopping_stops_one_member_stacked():
    x, y = _data()
    ens = Ensemble(lambda: _mlp(), n=3, seed=3)
    seen, snapshot = [], _Snapshot()

    class StopAllAfter(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)
            if epoch == 3:
                self.model.stop_training = True  # the ensemble: every member stops

    # member 1 never improves by 100: it stops after its second epoch
    history = ens.fit(x, y, batch_size=BATCH, epochs=6, shuffle=False, verbose=0,
                      callbacks=lambda i: [EarlyStopping("loss", min_delta=100.0), snapshot]
                      if i == 1 else [], ensemble_callbacks=[StopAllAfter()])
    assert seen == [0, 1, 2, 3]
    assert [m.iterations for m in ens.members] == [12, 6, 12]
    for before, after in zip(snapshot.weights, ens.members[1].get_weights()):
        np.testing.assert_array_equal(before, after)  # masked out of later steps
    assert len(history.history["member0_loss"]) == 4
    assert history.history["member1_loss"][2] == history.history["member1_loss"][1]
    assert history.history["member0_loss"][2] != history.history["member0_loss"][1]
    ens.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert [m.iterations for m in ens.members] == [15, 9, 15]  # a new fit trains all


def test_early_stopping_stops_one_member_list():
    x, y = _data()
    ens = Ensemble([_seeded(_mlp, 4), _seeded(lambda: _mlp(8), 5)])
    ens.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
            callbacks=lambda i: [EarlyStopping("loss", min_delta=100.0)] if i == 0 else [])
    assert [m.iterations for m in ens.members] == [6, 9]
    assert ens.members[0].stop_training and not ens.members[1].stop_training
    stop = EarlyStopping("loss")
    copies = ens._member_callbacks([stop])  # a list of callbacks: one copy per member
    assert len(copies) == 2 and copies[0][0] is not copies[1][0] is not stop


def test_save_load_round_trip(trained, tmp_path):
    x, _, stacked, _, _, _ = trained
    stacked.save(tmp_path / "ens")
    loaded = load(tmp_path / "ens")
    assert loaded.stacked and len(loaded) == 2 and loaded.share.name == "local"
    for i, (a, b) in enumerate(zip(stacked.members, loaded.members)):
        assert _max_diff(a, b) == 0.0
        assert b.iterations == a.iterations and b.optimizer.learning_rate == LRS[i]
    np.testing.assert_allclose(loaded.predict(x, batch_size=BATCH, verbose=0).soft,
                               stacked.predict(x, batch_size=BATCH, verbose=0).soft,
                               atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        stacked.save(tmp_path / "ens", overwrite=False)
    with pytest.raises(FileNotFoundError, match="ensemble.json"):
        load(tmp_path)


def test_member_input_shape_errors():
    with pytest.raises(ValueError, match=r"member 1 \('.*'\) takes inputs of shape "
                                         r"\['\(None, 9\)'\].*expected shape \['\(None, 8\)'\]"):
        Ensemble([_mlp(), _mlp(features=9)])
    x, y = _data(features=9)
    with pytest.raises(ValueError, match=r"fit: member 0 \('.*'\) of 2 cannot take the "
                                         r"shared batches.*expected shape=\(None, 8\)\. "
                                         r"Received: x.shape=\(32, 9\)"):
        Ensemble([_mlp(), _mlp(4)]).fit(x, y, batch_size=BATCH, verbose=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"member 1 \('.*'\) cannot be stacked.*layer 1"):
        Ensemble([_mlp(16), _mlp(32)], stacked=True)
    with pytest.raises(ValueError, match="only the learning rate may differ"):
        Ensemble([_mlp(), _mlp(optimizer="sgd")], stacked=True)
    with pytest.raises(ValueError, match=r"`n` must be a positive int. Received: n=None"):
        Ensemble(_build)
    with pytest.raises(ValueError, match=r"one value per member \(2\). Received: 3 values"):
        Ensemble([_mlp(), _mlp()], learning_rate=[1e-3, 1e-2, 1e-1])
    model = _mlp()
    with pytest.raises(ValueError, match="given twice"):
        Ensemble([model, model])
    raw = Sequential([Input((8,)), layers.Dense(3)])
    with pytest.raises(ValueError, match=r"member 0 \('.*'\) is not compiled"):
        Ensemble([raw])


def test_share_modes(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
                "HYBRIDNET_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    local = share.get("local")
    assert local.wrap("adapter") == "adapter"
    for name in share.MPI_MODES:
        with pytest.raises(RuntimeError, match=rf"share='{name}'.*not started under MPI.*"
                                               r"mpirun"):
            Ensemble([_mlp()], share=name)
    with pytest.raises(ValueError, match=r"`share` must be one of .*Received: share='nccl'"):
        share.get("nccl")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    mode = share.get("broadcast")  # made, not yet set up (no MPI call until Ensemble)
    assert mode.name == "broadcast" and mode.requires == "mpi" and mode.layout is None

    class EveryOther(ShareMode):
        """A share mode that hands the members every other batch."""
        name = "every_other"

        def wrap(self, adapter):
            class Half:
                def __init__(self, inner):
                    self.inner = inner
                    self.batch_size, self.num_samples = inner.batch_size, None
                    self.num_batches, self.exhausted = None, False

                def batches(self, rng=None):
                    return (b for i, b in enumerate(self.inner.batches(rng)) if i % 2 == 0)

                def on_epoch_end(self):
                    pass
            return Half(adapter)

    x, y = _data()
    ens = Ensemble([_mlp()], share=EveryOther())
    ens.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert ens.members[0].iterations == 2  # batches 0 and 2 of 3
