"""Keras 3 ``.keras`` files: models trained in Keras load in hybridnet with the same
predictions, hybridnet models saved as ``.keras`` load in Keras, and code or unknown
classes are refused."""
import json
import os
import warnings
import zipfile

os.environ["KERAS_BACKEND"] = "jax"

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

import hybridnet  # noqa: E402
from hybridnet import layers  # noqa: E402
from hybridnet.models import Model, Sequential  # noqa: E402
from hybridnet.saving import keras_format  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
kl = keras.layers


def _load(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hybridnet.models.load_model(path, **kwargs)


def _keras_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.saving.load_model(path)


def _save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)


def _run(model, x):
    """Predictions: Keras's compiled predict, hybridnet's model called on arrays."""
    if isinstance(model, keras.Model):
        return model.predict(x, verbose=0)
    out = model(x)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def _randomize(model, rng):
    """Non-trivial weights (BatchNormalization's variance stays positive)."""
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def _close(a, b):
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


def _round_trips(keras_model, x, tmp_path):
    """Keras -> .keras -> hybridnet -> .keras -> Keras, predictions equal at each step."""
    expected = _run(keras_model, x)
    keras_model.save(tmp_path / "k.keras")
    model = _load(tmp_path / "k.keras")
    _close(_run(model, x), expected)
    _save(model, tmp_path / "h.keras")
    _close(_run(_keras_load(tmp_path / "h.keras"), x), expected)
    return model


# ------------------------------------------------------------------ Keras -> hybridnet

def test_keras_sequential_cnn_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((32, 10, 10, 3), dtype=np.float32)
    y = rng.integers(0, 4, 32)
    km = keras.Sequential([
        keras.Input((10, 10, 3)), kl.ZeroPadding2D(1),
        kl.Conv2D(6, 3, activation="relu", kernel_regularizer="l2"),
        kl.BatchNormalization(), kl.MaxPooling2D(), kl.Conv2D(4, 3, padding="same"),
        kl.AveragePooling2D(2), kl.Flatten(), kl.Dropout(0.3), kl.Dense(8),
        kl.Activation("tanh"), kl.Dense(4, activation="softmax")])
    km.compile(keras.optimizers.Adam(learning_rate=3e-3), "sparse_categorical_crossentropy",
               metrics=["accuracy"])
    km.fit(x, y, epochs=1, batch_size=16, verbose=0)
    km.save(tmp_path / "k.keras")
    with pytest.warns(UserWarning, match="kernel_regularizer.*dropped.*optimizer state"):
        model = hybridnet.models.load_model(tmp_path / "k.keras")
    assert isinstance(model, Sequential) and model.compiled
    assert isinstance(model.optimizer, hybridnet.optimizers.Adam)
    assert model.optimizer.learning_rate == pytest.approx(3e-3)
    _close(model.predict(x, verbose=0), km.predict(x, verbose=0))
    _round_trips(km, x, tmp_path)


def test_keras_functional_multi_io_shared_and_merge_layers(tmp_path):
    rng = np.random.default_rng(1)
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    img = keras.Input((4, 4, 2), name="img")
    shared = kl.Dense(5, activation="relu", name="shared")
    sa, sb = shared(a), shared(b)
    merged = kl.Concatenate()([kl.Add()([sa, sb]), kl.Multiply()([sa, sb]),
                               kl.Average()([sa, sb])])
    pooled = kl.Concatenate()([kl.GlobalAveragePooling2D()(img),
                               kl.GlobalMaxPooling2D()(img)])
    h = kl.LayerNormalization()(kl.Concatenate()([merged, pooled]))
    seq = kl.Reshape((3, 6))(kl.Dense(18)(h))
    out1 = kl.Dense(1, name="score")(h)
    out2 = kl.Dense(3, activation="softmax", name="probs")(kl.Flatten()(seq))
    km = keras.Model([a, b, img], [out1, out2])
    km.compile("rmsprop", ["mse", "sparse_categorical_crossentropy"])
    xs = [rng.random((16, 6), dtype=np.float32), rng.random((16, 6), dtype=np.float32),
          rng.random((16, 4, 4, 2), dtype=np.float32)]
    km.fit(xs, [rng.random((16, 1)), rng.integers(0, 3, 16)], epochs=1, verbose=0)
    model = _round_trips(km, xs, tmp_path)
    assert isinstance(model, Model) and model.output_names == ["score", "probs"]
    config = json.loads(zipfile.ZipFile(tmp_path / "k.keras").read("config.json"))["config"]
    order = keras_format.keras_layer_order(config["layers"], config["input_layers"],
                                           config["output_layers"])
    assert order == [e["name"] for e in config["layers"]]  # Keras's own order, recomputed


def test_keras_recurrent_attention_embedding(tmp_path):
    rng = np.random.default_rng(2)
    tokens = keras.Input((7,), dtype="int32")
    e = kl.Embedding(20, 6)(tokens)
    seq = kl.Bidirectional(kl.LSTM(4, return_sequences=True))(e)
    att = kl.Attention(score_mode="concat")([seq, seq])
    out = kl.Dense(2)(kl.Flatten()(att))
    km = keras.Model(tokens, out)
    km.compile("adam", "mse")
    x = rng.integers(0, 20, (16, 7)).astype("int32")
    km.fit(x, rng.random((16, 2)), epochs=1, verbose=0)
    _round_trips(km, x, tmp_path)


def test_keras_sequential_masked_lstm(tmp_path):
    rng = np.random.default_rng(3)
    km = keras.Sequential([keras.Input((6,), dtype="int32"),
                           kl.Embedding(12, 5, mask_zero=True),
                           kl.Bidirectional(kl.LSTM(3), merge_mode="sum"), kl.Dense(2)])
    km.compile("sgd", "mse")
    x = rng.integers(1, 12, (8, 6)).astype("int32")
    x[:, 4:] = 0  # padding
    km.fit(x, rng.random((8, 2)), epochs=1, verbose=0)
    _round_trips(km, x, tmp_path)


# ------------------------------------------------------------------ hybridnet -> Keras

def test_hybridnet_models_load_in_keras(tmp_path):
    rng = np.random.default_rng(4)
    hybridnet.utils.set_random_seed(0)
    a, b = layers.Input((5,), name="a"), layers.Input((3, 4), name="b")
    shared = layers.Dense(4, name="shared")
    left = shared(a)
    right = shared(layers.Dense(5)(layers.Flatten()(b)))
    h = layers.BatchNormalization()(layers.Add()([left, right]))
    att = layers.Attention(use_scale=True)([b, b])
    bi = layers.Bidirectional(layers.LSTM(2))(att)
    model = Model([a, b], {"y": layers.Dense(1, name="y")(layers.Concatenate()([h, bi])),
                           "z": layers.Dense(2, activation="softmax", name="z")(h)})
    model.compile(hybridnet.optimizers.Adam(2e-3), {"y": "mse",
                                                    "z": "sparse_categorical_crossentropy"})
    _randomize(model, rng)
    xs = [rng.random((16, 5), dtype=np.float32), rng.random((16, 3, 4), dtype=np.float32)]
    expected = _run(model, xs)
    _save(model, tmp_path / "h.keras")
    km = _keras_load(tmp_path / "h.keras")
    got = _run(km, xs)
    _close([got["y"], got["z"]], [expected["y"], expected["z"]])
    assert type(km.optimizer).__name__ == "Adam"
    assert float(km.optimizer.learning_rate) == pytest.approx(2e-3)
    back = _load(tmp_path / "h.keras")
    out = _run(back, xs)
    _close([out["y"], out["z"]], [expected["y"], expected["z"]])


def test_hybridnet_sequential_masked_embedding_loads_in_keras(tmp_path):
    rng = np.random.default_rng(5)
    model = Sequential([layers.Input((6,), dtype="int32"),
                        layers.Embedding(10, 4, mask_zero=True),
                        layers.LSTM(3, return_sequences=True, go_backwards=True),
                        layers.Dense(2)])
    _randomize(model, rng)
    x = rng.integers(1, 10, (8, 6)).astype("int32")
    x[:, 3:] = 0
    expected = _run(model, x)
    _save(model, tmp_path / "m.keras")
    _close(_run(_keras_load(tmp_path / "m.keras"), x), expected)


# ------------------------------------------------------------------ refusals, dispatch

def test_lambda_and_unknown_classes_are_refused(tmp_path):
    km = keras.Sequential([keras.Input((4,)), kl.Lambda(lambda t: t * 2), kl.Dense(2)])
    km.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Lambda.*safe_mode"):
        hybridnet.models.load_model(tmp_path / "lambda.keras", safe_mode=False)
    km = keras.Sequential([keras.Input((5, 4, 4, 2)), kl.Conv3D(3, 2), kl.Dense(2)])
    km.save(tmp_path / "conv3d.keras")
    with pytest.raises(ValueError, match=r"class 'Conv3D'.*Supported: \['InputLayer', 'Dense'"):
        hybridnet.models.load_model(tmp_path / "conv3d.keras")
    km = keras.Sequential([keras.Input((5,)), kl.Dense(3, kernel_constraint="non_neg")])
    km.save(tmp_path / "c.keras")
    with pytest.warns(UserWarning, match="kernel_constraint=NonNeg"):
        hybridnet.models.load_model(tmp_path / "c.keras")
    km = keras.Sequential([keras.Input((6, 6, 4)), kl.Conv2D(4, 3, groups=2)])
    km.save(tmp_path / "g.keras")
    with pytest.raises(ValueError, match=r"Layer 'conv2d.*' \(Conv2D\): `groups`.*Received: "
                                         r"groups=2"):
        hybridnet.models.load_model(tmp_path / "g.keras")


def test_native_format_keeps_loading_whatever_the_name(tmp_path):
    model = Sequential([layers.Input((3,)), layers.Dense(2)])
    model.compile("adam", "mse")
    x = np.ones((8, 3), np.float32)
    model.save(tmp_path / "m.hnet")
    with zipfile.ZipFile(tmp_path / "m.hnet") as zf:
        assert json.loads(zf.read("config.json"))["format"] == "hybridnet"
    os.replace(tmp_path / "m.hnet", tmp_path / "old.keras")  # a native file named .keras
    restored = hybridnet.models.load_model(tmp_path / "old.keras")
    _close(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    assert keras_format.is_keras_file(tmp_path / "old.keras") is False
    _save(model, tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as zf:
        assert sorted(zf.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    assert keras_format.is_keras_file(tmp_path / "new.keras")


def test_newer_layers_round_trip_through_keras_files(tmp_path):
    """Conv1D/GRU/SimpleRNN/separable, depthwise and transposed convolutions, resampling,
    activation and noise layers and the other merges, Keras -> hybridnet -> Keras."""
    rng = np.random.default_rng(0)

    def build(k):
        L = k.layers
        seq, img = k.Input((12, 4)), k.Input((8, 8, 3))
        a = L.MaxPooling1D(2)(L.Conv1D(6, 3, padding="same")(seq))
        a = L.Bidirectional(L.SimpleRNN(3))(L.GRU(5, return_sequences=True)(a))
        a = L.GlobalAveragePooling1D()(L.Permute((2, 1))(L.RepeatVector(2)(a)))
        b = L.DepthwiseConv2D(3)(L.SeparableConv2D(4, 3, padding="same")(img))
        b = L.Cropping2D(1)(L.UpSampling2D(2)(L.Conv2DTranspose(5, 3, strides=2)(b)))
        b = L.GlobalMaxPooling2D()(L.LeakyReLU(0.2)(L.ReLU()(b)))
        b = L.GaussianNoise(0.1)(L.Rescaling(0.5)(b))
        c = L.Softmax()(L.Dense(4)(L.concatenate([a, b])))
        d = L.subtract([c, L.maximum([c, L.minimum([c, c])])])
        return k.Model([seq, img], [c, d])

    theirs = build(keras)
    x = [rng.normal(size=(3, 12, 4)).astype("float32"),
         rng.normal(size=(3, 8, 8, 3)).astype("float32")]
    want = theirs.predict(x, verbose=0)
    theirs.save(tmp_path / "k.keras")
    ours = hybridnet.models.load_model(str(tmp_path / "k.keras"))
    for got, expected in zip(ours.predict(x, verbose=0), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ours.save(str(tmp_path / "h.keras"))
    back = keras.saving.load_model(tmp_path / "h.keras")
    for got, expected in zip(back.predict(x, verbose=0), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
