"""Model API: build, summary, weights, fit variants, save/load, digits accuracy."""
import io
import json
import zipfile
from contextlib import redirect_stdout

import jax
import numpy as np
import optax
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, layers
from hybridnet.strategies import DataParallel

ONE_DEVICE = DataParallel(devices=jax.devices()[:1])


def _mlp(name=None):
    return Sequential([Input((4,)), layers.Dense(8, activation="relu"),
                       layers.Dense(3, activation="softmax")], name=name)


def _xy(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")


def test_summary_and_count_params():
    model = _mlp("tiny")
    out = io.StringIO()
    with redirect_stdout(out):
        model.summary()
    text = out.getvalue()
    assert 'Model: "tiny"' in text and "(None, 8)" in text and "(None, 3)" in text
    assert model.count_params() == 4 * 8 + 8 + 8 * 3 + 3 == 67
    assert "Total params: 67" in text


def test_sequential_builds_from_data_and_add():
    model = Sequential()
    model.add(layers.Dense(5, activation="relu"))
    model.add(layers.Dense(2))
    assert not model.built
    model.compile("adam", "mse")
    x = np.ones((10, 7), "float32")
    model.fit(x, np.zeros((10, 2), "float32"), epochs=1, verbose=0)
    assert model.built and model.layers[0].input_shape == (None, 7)
    assert model.predict(x, verbose=0).shape == (10, 2)


def test_get_set_weights_round_trip():
    model = _mlp()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(4, 8), (8,), (8, 3), (3,)]
    new = [np.full_like(w, 0.5) for w in weights]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Received: 3 arrays"):
        model.set_weights(new[:3])


def test_fit_learns_with_validation_and_history():
    hybridnet.utils.set_random_seed(0)
    model = _mlp()
    model.compile(hybridnet.optimizers.Adam(0.05), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], strategy=ONE_DEVICE)
    x, y = _xy(256)
    history = model.fit(x, y, batch_size=32, epochs=8, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == list(range(8))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.8


def test_fit_on_generator_and_iterable_batches():
    x, y = _xy(64)
    model = _mlp()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["acc"])

    def batches():
        while True:
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]
    h = model.fit(batches(), steps_per_epoch=4, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2 and "acc" in h.history
    listed = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    h2 = model.fit(listed, epochs=2, verbose=0, validation_data=listed)
    assert "val_loss" in h2.history
    assert model.evaluate(listed, verbose=0)[0] == pytest.approx(model.evaluate(x, y, verbose=0)[0],
                                                                  rel=1e-5)
    np.testing.assert_allclose(model.predict([(x,)], verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


def test_sample_weight_zero_excludes_samples():
    x, y = _xy(32)
    model = _mlp()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    sw = np.r_[np.ones(16), np.zeros(16)].astype("float32")
    weighted = model.evaluate(x, y, sample_weight=sw, batch_size=32, verbose=0, return_dict=True)
    half = model.evaluate(x[:16], y[:16], batch_size=16, verbose=0, return_dict=True)
    whole = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert weighted["weighted_accuracy"] == pytest.approx(half["accuracy"])
    # Keras: plain metrics ignore sample_weight; the loss sums weighted losses over the batch size.
    assert weighted["accuracy"] == pytest.approx(whole["accuracy"])
    assert weighted["loss"] == pytest.approx(half["loss"] / 2, rel=1e-5)


def test_train_on_batch_and_optax_optimizer():
    x, y = _xy(32)
    model = _mlp()
    model.compile(optax.sgd(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    first = model.train_on_batch(x, y)
    for _ in range(20):
        last = model.train_on_batch(x, y)
    assert isinstance(first, list) and last[0] < first[0]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


def _multi_io_model():
    hybridnet.utils.set_random_seed(1)
    image = Input((6, 6, 2), name="image")
    tokens = Input((5,), dtype="int32", name="tokens")
    conv = layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    pooled = layers.GlobalAveragePooling2D()(conv)
    emb = layers.Embedding(20, 4, mask_zero=True)(tokens)
    seq = layers.LSTM(4)(emb)
    shared = layers.Dense(6, activation="tanh", name="shared")
    a, b = shared(pooled), shared(seq)
    merged = layers.Concatenate()([a, b])
    merged = layers.BatchNormalization()(merged)
    cls = layers.Dense(3, activation="softmax", name="cls")(merged)
    reg = layers.Dense(1, name="reg")(layers.Add()([a, b]))
    return Model({"image": image, "tokens": tokens}, {"cls": cls, "reg": reg}, name="multi")


def _multi_io_data(n=32):
    rng = np.random.default_rng(0)
    return ({"image": rng.normal(size=(n, 6, 6, 2)).astype("float32"),
             "tokens": rng.integers(0, 20, size=(n, 5)).astype("int32")},
            {"cls": rng.integers(0, 3, n), "reg": rng.normal(size=(n, 1)).astype("float32")})


def test_save_and_load_round_trip_exact(tmp_path):
    model = _multi_io_model()
    model.compile("adam", {"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  metrics={"cls": ["accuracy"]})
    x, y = _multi_io_data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    before = model.predict(x, batch_size=16, verbose=0)
    path = tmp_path / "multi.hnet"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        config = json.loads(zf.read("config.json"))
    assert "config.json" in names and all(n.endswith((".json", ".npy")) for n in names)
    assert config["compile"]["loss"] == {"per_output": {
        "cls": {"item": "sparse_categorical_crossentropy"}, "reg": {"item": "mse"}}}
    restored = hybridnet.models.load_model(path)
    after = restored.predict(x, batch_size=16, verbose=0)
    for key in ("cls", "reg"):
        np.testing.assert_array_equal(before[key], after[key])
    # Optimizer state came back too: one more step gives identical weights.
    model.train_on_batch(x, y)
    restored.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sequential_save_weights_and_keras_file_name(tmp_path):
    model = _mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, _ = _xy(8)
    model.save(tmp_path / "m.keras")
    restored = hybridnet.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored, Sequential)
    np.testing.assert_array_equal(model.predict(x, verbose=0), restored.predict(x, verbose=0))
    other = _mlp()
    other.save_weights(tmp_path / "w.weights.h5")
    model.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def test_digits_cnn_reaches_97_percent():
    import examples.digits_cnn as digits
    hybridnet.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = digits.load_digits_data(0)
    model = digits.build_model()
    model.compile(optimizer=hybridnet.optimizers.Adam(learning_rate=2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  strategy=ONE_DEVICE)
    model.fit(x_train, y_train, batch_size=32, epochs=20, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.97
