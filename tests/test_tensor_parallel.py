"""Tensor parallelism on 8 simulated devices computes what one device computes."""
import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, Shard, layers
from hybridnet.strategies import DataParallel, Hybrid, ModelParallel

ONE = DataParallel(devices=jax.devices()[:1])


def alexnet_small(parallel_fc="data"):
    """AlexNet's shape at toy size: data-parallel convolutions, FC layers as annotated."""
    hybridnet.utils.set_random_seed(0)
    return Sequential([
        Input((16, 16, 3)),
        layers.Conv2D(8, 5, strides=2, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu", parallel=parallel_fc),
        layers.Dense(32, activation="relu", parallel=parallel_fc),
        layers.Dense(10, activation="softmax"),
    ])


def seq2seq(parallel="data"):
    """A small encoder-decoder LSTM with attention (GNMT's shape at toy size)."""
    hybridnet.utils.set_random_seed(1)
    src = Input((6,), dtype="int32", name="src")
    tgt = Input((5,), dtype="int32", name="tgt")
    enc = layers.Embedding(32, 16, mask_zero=True, parallel=parallel)(src)
    enc, h, c = layers.LSTM(16, return_sequences=True, return_state=True, parallel=parallel)(enc)
    dec = layers.Embedding(32, 16, mask_zero=True, parallel=parallel)(tgt)
    dec = layers.LSTM(16, return_sequences=True, parallel=parallel)(dec, initial_state=[h, c])
    context = layers.Attention()([dec, enc])
    merged = layers.Concatenate()([dec, context])
    logits = layers.Dense(32, parallel=parallel)(merged)
    return Model([src, tgt], logits)


def _image_data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 16, 16, 3)).astype("float32"), rng.integers(0, 10, n)


def _seq_data(n=32):
    rng = np.random.default_rng(0)
    src = rng.integers(1, 32, size=(n, 6))
    src[:, 4:] *= rng.integers(0, 2, size=(n, 1))  # some padded sequences
    tgt = rng.integers(1, 32, size=(n, 5))
    return [src.astype("int32"), tgt.astype("int32")], np.roll(tgt, -1, axis=1)


def _train(model, strategy, x, y, loss, steps=3, batch_size=8):
    model.compile(hybridnet.optimizers.SGD(0.1), loss, strategy=strategy)
    losses = [model.train_on_batch([a[i * batch_size:(i + 1) * batch_size] for a in x]
                                   if isinstance(x, list) else x[i * batch_size:(i + 1) * batch_size],
                                   y[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]
    return np.array(losses), model.get_weights()


def _same(a, b):
    la, wa = a
    lb, wb = b
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_alexnet_tensor_parallel_fc_matches_one_device():
    x, y = _image_data()
    loss = "sparse_categorical_crossentropy"
    reference = _train(alexnet_small(), ONE, x, y, loss)
    annotated = alexnet_small(parallel_fc="model")
    result = _train(annotated, None, x, y, loss)  # annotations alone: model axis over 8
    _same(reference, result)
    plan = annotated.plan
    assert plan.mesh_axes == {"data": 1, "model": 8}
    fc1, fc2 = [lp for lp in plan.layers.values() if lp.parallel == "model"]
    assert (fc1.mode, fc2.mode) == ("column", "row")
    conv = [lp for lp in plan.layers.values() if lp.kind == "Conv2D"]
    assert all(lp.parallel == "data" for lp in conv)
    assert plan.batch_axes == ("data", "model")


def test_model_parallel_strategy_and_hybrid_mesh_match_one_device():
    x, y = _image_data()
    loss = "sparse_categorical_crossentropy"
    reference = _train(alexnet_small(), ONE, x, y, loss)
    _same(reference, _train(alexnet_small(parallel_fc="model"), Hybrid(mesh={"data": 2, "model": 4}),
                            x, y, loss))
    model = Sequential([Input((16,)), layers.Dense(32, activation="relu"), layers.Dense(16)])
    xs = np.random.default_rng(0).normal(size=(24, 16)).astype("float32")
    ys = np.random.default_rng(1).normal(size=(24, 16)).astype("float32")
    weights = model.get_weights()
    a = Sequential.from_config(model.get_config())
    a.set_weights(weights)
    b = Sequential.from_config(model.get_config())
    b.set_weights(weights)
    _same(_train(a, ONE, xs, ys, "mse"), _train(b, ModelParallel(model=4), xs, ys, "mse"))
    assert b.plan.mesh_axes == {"data": 2, "model": 4}
    assert [lp.mode for lp in b.plan.layers.values()] == ["column", "row"]


def test_seq2seq_tensor_parallel_matches_one_device():
    x, y = _seq_data()
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = _train(seq2seq(), ONE, x, y, loss)
    model = seq2seq(parallel="model")
    _same(reference, _train(model, Hybrid(mesh={"data": 2, "model": 4}), x, y, loss))
    modes = {lp.kind: lp.mode for lp in model.plan.layers.values() if lp.parallel == "model"}
    assert modes == {"Embedding": "vocab", "LSTM": "hidden", "Dense": "column"}


def test_model_parallel_weights_are_created_sharded():
    model = alexnet_small(parallel_fc="model")
    model.compile("adam", "sparse_categorical_crossentropy")
    fc1 = model.layers[4]
    kernel = model.variables[fc1.name]["kernel"]
    assert kernel.shape == (256, 64)
    shard_shapes = {s.data.shape for s in kernel.addressable_shards}
    assert shard_shapes == {(256, 8)}  # column-parallel: 64 outputs over 8 devices
    row = model.variables[model.layers[5].name]["kernel"]
    assert {s.data.shape for s in row.addressable_shards} == {(8, 32)}
    conv = model.variables[model.layers[0].name]["kernel"]
    assert conv.sharding.is_fully_replicated
    # optimizer slots are sharded like their parameter
    x, y = _image_data(8)
    model.train_on_batch(x, y)
    slots = [leaf for leaf in jax.tree_util.tree_leaves(model.train_state.opt_state)
             if getattr(leaf, "shape", None) == (256, 64)]
    assert slots and all({s.data.shape for s in leaf.addressable_shards} == {(256, 8)}
                         for leaf in slots)


def test_explicit_shard_modes_and_planner_errors():
    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((16,)), layers.Dense(32, parallel=Shard("row")),
                        layers.Dense(8, parallel=Shard("column"))])
    plan = model.make_plan(devices=jax.devices())
    assert [lp.mode for lp in plan.layers.values()] == ["row", "column"]
    with pytest.raises(ValueError, match=r"Layer 'odd'.*dimension 1 of weight 'kernel' \(size 10\)"
                                         r".*size 8.*Received: kernel.shape=\(16, 10\)"):
        Sequential([Input((16,)), layers.Dense(10, parallel="model", name="odd")]).make_plan(
            devices=jax.devices())
    with pytest.raises(ValueError, match=r"'bn' \(BatchNormalization\) does not support "
                                         r"parallel='model'"):
        Sequential([Input((16,)), layers.BatchNormalization(parallel="model", name="bn")]
                   ).make_plan(devices=jax.devices())
    with pytest.raises(ValueError, match="Expected one of \\['column', 'row'\\]. Received: "
                                         "mode='vocab'"):
        Sequential([Input((16,)), layers.Dense(8, parallel=Shard("vocab"))]).make_plan(
            devices=jax.devices())
    with pytest.raises(ValueError, match="needs 16 devices.*Received: 8 devices"):
        model.make_plan(Hybrid(mesh={"data": 4, "model": 4}), devices=jax.devices())
    with pytest.raises(ValueError, match="Received: parallel='tensor'"):
        Sequential([Input((16,)), layers.Dense(8, parallel="tensor")]).make_plan(
            devices=jax.devices())


def test_strategy_decorator_sets_default():
    @hybridnet.strategies.model_parallel(model=2)
    def build():
        return Sequential([Input((8,)), layers.Dense(8), layers.Dense(4)])

    model = build()
    model.compile("sgd", "mse")
    assert model.plan.mesh_axes == {"data": 4, "model": 2}
    model.compile("sgd", "mse", strategy=DataParallel())
    assert model.plan.mesh_axes == {"data": 8}


def test_seq2seq_data_parallel_matches_one_device():
    x, y = _seq_data()
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    _same(_train(seq2seq(), ONE, x, y, loss), _train(seq2seq(), DataParallel(), x, y, loss))


def test_auto_plan_trains_like_one_device():
    """Auto (costed for H100s) shards the wide FC layers and keeps the convolution data
    parallel; training under that plan matches one device."""
    from hybridnet.strategies import Auto

    def build():
        hybridnet.utils.set_random_seed(2)
        return Sequential([Input((8, 8, 3)), layers.Conv2D(16, 3, padding="same",
                                                           activation="relu"),
                           layers.Flatten(), layers.Dense(2048, activation="relu"),
                           layers.Dense(2048, activation="relu"), layers.Dense(16)])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 8, 8, 3)).astype("float32"), rng.integers(0, 16, 48)
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build()
    _same(_train(build(), ONE, x, y, loss, batch_size=16),
          _train(model, Auto(device_kind="h100"), x, y, loss, batch_size=16))
    modes = [(lp.parallel, lp.mode) for lp in model.plan.layers.values() if lp.weights]
    assert modes[0] == ("data", None) and modes[1][0] == modes[2][0] == "model", modes
