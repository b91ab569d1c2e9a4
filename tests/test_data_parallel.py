"""Data parallel over 8 simulated devices computes what one device computes."""
import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, layers
from hybridnet.strategies import DataParallel


def _cnn(seed=0):
    hybridnet.utils.set_random_seed(seed)
    return Sequential([
        Input((8, 8, 1)),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(16, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n).astype("int32")


def _train(devices, steps=5, batch_size=16, spe=1):
    model = _cnn()
    model.compile(hybridnet.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], strategy=DataParallel(devices=devices),
                  steps_per_execution=spe)
    x, y = _data(steps * batch_size)
    history = model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=True, verbose=0)
    return model, history


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8
    one, h1 = _train(jax.devices()[:1])
    eight, h8 = _train(jax.devices())
    assert eight.plan.mesh_axes == {"data": 8} and one.plan.mesh_axes == {"data": 1}
    np.testing.assert_allclose(h1.history["loss"], h8.history["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(one.get_weights(), eight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_parameters_replicated_and_batch_sharded():
    model, _ = _train(jax.devices(), steps=1)
    kernel = model.variables[model.layers[-1].name]["kernel"]
    assert kernel.sharding.is_fully_replicated
    assert len(kernel.sharding.device_set) == 8


def test_steps_per_execution_matches_single_steps():
    a, ha = _train(jax.devices(), steps=8, spe=1)
    b, hb = _train(jax.devices(), steps=8, spe=4)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5, atol=1e-6)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-5)


def test_last_batch_not_divisible_counts_every_sample_once():
    x, y = _data(100, seed=1)
    model = _cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=24, epochs=1, verbose=0)  # last batch: 4 samples on 8 devices
    probs = model.predict(x, batch_size=24, verbose=0)
    assert probs.shape == (100, 10)
    expected_acc = np.mean(probs.argmax(-1) == y)
    p = np.clip(probs[np.arange(100), y], 1e-7, 1 - 1e-7)
    expected_loss = -np.mean(np.log(p))
    loss, acc = model.evaluate(x, y, batch_size=24, verbose=0)
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-6)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    # The same result on one device, where every batch divides.
    single = _cnn()
    single.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                   strategy=DataParallel(devices=jax.devices()[:1]))
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(single.evaluate(x, y, batch_size=24, verbose=0), [loss, acc],
                               rtol=1e-5)


def test_functional_multi_input_output_shared_layer_on_eight_devices():
    hybridnet.utils.set_random_seed(3)
    a, b = Input((6,), name="a"), Input((6,), name="b")
    shared = layers.Dense(8, activation="tanh", name="shared")
    merged = layers.Concatenate()([shared(a), shared(b)])
    out1 = layers.Dense(3, name="cls")(merged)
    out2 = layers.Dense(1, name="reg")(layers.Add()([shared(a), shared(b)]))
    model = Model([a, b], [out1, out2])

    def build(devices):
        m = Model.from_config(model.get_config())
        m.set_weights(model.get_weights())
        m.compile("sgd", [hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"], loss_weights=[1.0, 0.5],
                  strategy=DataParallel(devices=devices))
        return m

    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 6)).astype("float32")
    y1, y2 = rng.integers(0, 3, 64), rng.normal(size=(64, 1)).astype("float32")
    logs = []
    for devices in (jax.devices()[:1], jax.devices()):
        m = build(devices)
        h = m.fit([xa, xb], [y1, y2], batch_size=16, epochs=2, shuffle=False, verbose=0)
        logs.append((h.history, m.get_weights()))
    assert set(logs[0][0]) == {"loss", "cls_loss", "reg_loss"}
    for key in logs[0][0]:
        np.testing.assert_allclose(logs[0][0][key], logs[1][0][key], rtol=1e-5)
    for w1, w8 in zip(logs[0][1], logs[1][1]):
        np.testing.assert_allclose(w1, w8, rtol=1e-5, atol=1e-5)
