"""Model files: round trips, custom objects, refusals before any array is read, temp files."""
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, layers, losses, metrics, optimizers
from hybridnet.saving import model_file


# ------------------------------------------------------------------------------- helpers

def _mlp(prefix=""):
    return Sequential([Input((4,)), layers.Dense(8, activation="relu", name=f"{prefix}dense"),
                       layers.BatchNormalization(name=f"{prefix}batch_normalization"),
                       layers.Dense(3, name=f"{prefix}dense_1")])


def _xy(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)).astype("float32"),
            rng.normal(size=(n, 3)).astype("float32"))


def _functional():
    a, b = Input((4,), name="a"), Input((2,), name="b")
    h = layers.Dense(6, activation="tanh", name="h")(a)
    h = layers.Concatenate(name="cat")([h, b])
    out1 = layers.Dense(3, name="cls")(h)
    out2 = layers.Dense(1, name="reg")(h)
    return Model({"a": a, "b": b}, {"cls": out1, "reg": out2}, name="two_heads")


def _functional_data(n=16):
    rng = np.random.default_rng(1)
    return ({"a": rng.normal(size=(n, 4)).astype("float32"),
             "b": rng.normal(size=(n, 2)).astype("float32")},
            {"cls": rng.integers(0, 3, n), "reg": rng.normal(size=(n, 1)).astype("float32")})


def _same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def _messages(record, prefix):
    return [str(w.message) for w in record if str(w.message).startswith(prefix)]


def _rewrite(src, dst, edit_config=None, replace=None, drop=(), extra=None):
    """Copies a model file, editing config.json and replacing, dropping or adding members."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    if edit_config is not None:
        edit_config(config)
    members["config.json"] = json.dumps(config).encode()
    members.update(replace or {})
    members.update(extra or {})
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            if name not in drop:
                zf.writestr(name, data)
    return dst


def _npy(array):
    import io
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One compiled, trained model and its file, shared by tests that only read the file
    (or forge copies of it): ``(model, path)``. Tests must not train the model."""
    model = _mlp()
    model.compile("adam", "mse", metrics=["mae"])
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = tmp_path_factory.mktemp("saved") / "m.hnet"
    model.save(path)
    return model, path


# --------------------------------------------------------- custom objects used by tests

@hybridnet.saving.register_serializable(package="hybridnet_tests")
def registered_mse(y_true, y_pred):
    return jnp.mean(jnp.square(y_pred - y_true), axis=-1)


@hybridnet.saving.register_serializable(package="hybridnet_tests")
def registered_abs_error(y_true, y_pred):
    return jnp.mean(jnp.abs(y_pred - y_true), axis=-1)


@hybridnet.saving.register_serializable(package="hybridnet_tests", name="Gain")
class RegisteredScale(layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                     name="scale")

    def call(self, x):
        return x * self.scale * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@hybridnet.saving.register_serializable(package="hybridnet_tests")
class HalfLife(optimizers.LearningRateSchedule):
    def __init__(self, initial, steps):
        self.initial, self.steps = initial, steps

    def __call__(self, step):
        return self.initial * 0.5 ** (step / self.steps)

    def get_config(self):
        return {"initial": self.initial, "steps": self.steps}


@hybridnet.saving.register_serializable(package="hybridnet_tests")
class ScaledSGD(optimizers.SGD):
    pass


class Scale(layers.Layer):  # not registered: custom_objects only
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                     name="scale")

    def call(self, x):
        return x * self.scale * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class WeightedMSE(losses.Loss):  # not registered
    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, y_true, y_pred):
        return self.weight * jnp.mean(jnp.square(y_pred - y_true), axis=-1)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def plain_mse(y_true, y_pred):  # not registered
    return jnp.mean(jnp.square(y_pred - y_true), axis=-1)


def max_error(y_true, y_pred):  # not registered
    return jnp.max(jnp.abs(y_pred - y_true), axis=-1)


# ------------------------------------------------------------------------- round trips

def test_sequential_round_trip_with_keras_name_optimizer(saved):
    model, path = saved
    x, y = _xy()
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("config.json"))
    assert config["format"] == "hybridnet" and config["version"] == model_file.VERSION
    assert {"weights/dense/kernel.npy", "weights/batch_normalization/moving_mean.npy",
            "optimizer/inner_state/0/0/mu/dense/kernel.npy", "optimizer/count.npy"} <= names
    kernel = [w for w in config["weights"][0]["weights"] if w["name"] == "kernel"][0]
    assert kernel == {"name": "kernel", "file": "weights/dense/kernel.npy", "dtype": "float32",
                      "shape": [4, 8]}
    paths = {e["path"] for e in config["optimizer_state"]}
    assert ".inner_state[0][0].nu['dense_1']['bias']" in paths
    assert config["compile"]["optimizer"]["class_name"] == "Adam"
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()

    restored = hybridnet.load_model(path)
    assert isinstance(restored, Sequential) and restored.compiled
    assert type(restored.optimizer) is optimizers.Adam
    assert restored._train_step_count == model._train_step_count == 2
    _same_weights(model, restored)
    np.testing.assert_array_equal(model.predict(x, verbose=0), restored.predict(x, verbose=0))
    assert model.evaluate(x, y, verbose=0) == pytest.approx(restored.evaluate(x, y, verbose=0))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_functional_round_trip_with_hybridnet_optimizer_object(tmp_path):
    model = _functional()
    opt = optimizers.SGD(learning_rate=optimizers.CosineDecay(0.05, 100), momentum=0.9,
                         nesterov=True, clipnorm=1.0)
    model.compile(opt, {"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  metrics={"cls": ["accuracy"]}, loss_weights={"cls": 1.0, "reg": 0.5})
    x, y = _functional_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "f.hnet")
    restored = hybridnet.models.load_model(tmp_path / "f.hnet")
    assert restored.compiled and type(restored.optimizer) is optimizers.SGD
    assert restored.optimizer.get_config() == opt.get_config()
    assert restored._loss_weights_arg == {"cls": 1.0, "reg": 0.5}
    _same_weights(model, restored)
    before, after = model.predict(x, verbose=0), restored.predict(x, verbose=0)
    for key in ("cls", "reg"):
        np.testing.assert_array_equal(before[key], after[key])
    logs, logs2 = (m.evaluate(x, y, verbose=0, return_dict=True) for m in (model, restored))
    assert logs.keys() == logs2.keys() and "cls_accuracy" in logs
    assert all(logs[k] == pytest.approx(logs2[k]) for k in logs)


def test_optimizer_state_restored_training_continues_identically(tmp_path):
    x, y = _xy(8)
    model = _mlp()
    model.compile(optimizers.Adam(0.05), "mse")
    for _ in range(2):
        model.train_on_batch(x, y)
    model.save(tmp_path / "m.hnet")
    restored = hybridnet.load_model(tmp_path / "m.hnet")
    fresh = hybridnet.load_model(tmp_path / "m.hnet", compile=False)  # same weights, new Adam
    assert not fresh.compiled
    fresh.compile(optimizers.Adam(0.05), "mse")
    for m in (model, restored, fresh):
        for _ in range(2):
            m.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Without the saved moments the same two steps land elsewhere: the state mattered.
    assert max(float(np.max(np.abs(a - b))) for a, b in
               zip(model.get_weights(), fresh.get_weights())) > 1e-3
    assert int(optimizers.get_iterations(restored._optimizer_state_for_save())) == 4


def test_bfloat16_weights_and_odd_layer_names_round_trip(tmp_path):
    model = Sequential([Input((4,)), layers.Dense(3, dtype="bfloat16", name="block/dense"),
                        layers.Dense(2, name="..")])
    model.save(tmp_path / "m.hnet")
    with zipfile.ZipFile(tmp_path / "m.hnet") as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("config.json"))
    assert {"weights/block%2Fdense/kernel.npy", "weights/%2E%2E/bias.npy"} <= names
    assert config["weights"][0]["weights"][0]["dtype"] == "bfloat16"
    restored = hybridnet.load_model(tmp_path / "m.hnet")
    assert restored.get_weights()[0].dtype == jnp.bfloat16
    _same_weights(model, restored)


# ------------------------------------------------ what cannot be restored: warn, still load

def test_optax_optimizer_warns_at_save_and_loads_uncompiled_with_weights(tmp_path):
    # Regression: this used to fail in load_model with "Expected an optimizer name ...
    # Received: config=None".
    model = _mlp()
    model.compile(optax.adam(1e-3), "mse")
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.save(tmp_path / "m.hnet")
    saved = _messages(record, "save:")
    assert len(saved) == 1 and "optax.GradientTransformation" in saved[0]
    assert "hybridnet.optimizers.Adam" in saved[0] and "uncompiled" in saved[0]
    with zipfile.ZipFile(tmp_path / "m.hnet") as zf:
        assert not any(n.startswith("optimizer/") for n in zf.namelist())
    with pytest.warns(UserWarning, match=r"optax\.GradientTransformation.*loaded uncompiled"):
        restored = hybridnet.load_model(tmp_path / "m.hnet")
    assert not restored.compiled
    _same_weights(model, restored)


def test_unregistered_custom_loss_warns_and_restores_through_custom_objects(tmp_path):
    # Regression: a custom loss used to make the file silently uncompiled.
    model = _mlp()
    model.compile("adam", plain_mse, metrics=[max_error])
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.save(tmp_path / "m.hnet")
    saved = _messages(record, "save:")
    assert any("'plain_mse'" in m and "register_serializable" in m and "custom_objects" in m
               for m in saved)
    assert any("'max_error'" in m for m in saved)

    with pytest.warns(UserWarning, match=r"(?s)plain_mse.*max_error.*loaded uncompiled"):
        uncompiled = hybridnet.load_model(tmp_path / "m.hnet")
    assert not uncompiled.compiled
    _same_weights(model, uncompiled)

    restored = hybridnet.load_model(tmp_path / "m.hnet",
                                    custom_objects={"plain_mse": plain_mse,
                                                    "max_error": max_error})
    assert restored.compiled and restored._loss_arg is plain_mse
    logs, logs2 = (m.evaluate(x, y, verbose=0, return_dict=True) for m in (model, restored))
    assert logs["max_error"] == pytest.approx(logs2["max_error"])
    assert logs["loss"] == pytest.approx(logs2["loss"])


def test_custom_layer_loss_metric_via_custom_objects(tmp_path):
    model = Sequential([Input((4,)), layers.Dense(3), Scale(2.0, name="scale")])
    model.compile("sgd", WeightedMSE(0.5), metrics=[max_error])
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.save(tmp_path / "m.hnet")
    saved = _messages(record, "save:")
    assert len(saved) == 3
    assert any("layer 'scale' (class 'Scale')" in m for m in saved)
    assert any("'WeightedMSE'" in m for m in saved) and any("'max_error'" in m for m in saved)
    with pytest.raises(ValueError, match=r"layer class 'Scale'.*custom_objects"):
        hybridnet.load_model(tmp_path / "m.hnet")
    restored = hybridnet.load_model(tmp_path / "m.hnet", custom_objects={
        "Scale": Scale, "WeightedMSE": WeightedMSE, "max_error": max_error})
    assert restored.compiled and isinstance(restored.layers[-1], Scale)
    assert restored.layers[-1].factor == 2.0
    assert isinstance(restored._loss_arg, WeightedMSE) and restored._loss_arg.weight == 0.5
    _same_weights(model, restored)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(restored.evaluate(x, y, verbose=0))
    # custom_object_scope works the same way.
    with hybridnet.saving.custom_object_scope({"Scale": Scale, "WeightedMSE": WeightedMSE,
                                               "max_error": max_error}):
        assert hybridnet.load_model(tmp_path / "m.hnet").compiled


def test_registered_objects_round_trip_without_custom_objects(tmp_path):
    assert hybridnet.saving.get_registered_name(registered_mse) == "hybridnet_tests>registered_mse"
    assert hybridnet.saving.get_registered_name(RegisteredScale) == "hybridnet_tests>Gain"
    assert hybridnet.saving.get_registered_object("hybridnet_tests>Gain") is RegisteredScale
    assert hybridnet.saving.get_registered_name(plain_mse) == "plain_mse"  # as Keras
    assert hybridnet.saving.get_registered_object("plain_mse") is None

    a = Input((4,))
    out = RegisteredScale(3.0, name="gain")(layers.Dense(3, name="d")(a))
    model = Model(a, out)
    model.compile(ScaledSGD(learning_rate=HalfLife(0.1, 10), momentum=0.5),
                  losses.LossFunctionWrapper(registered_mse, name="wrapped"),
                  metrics=[registered_abs_error])
    x, y = _xy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.save(tmp_path / "m.hnet")
    assert _messages(record, "save:") == []
    with zipfile.ZipFile(tmp_path / "m.hnet") as zf:
        text = zf.read("config.json").decode()
    assert "hybridnet_tests>Gain" in text and "hybridnet_tests>ScaledSGD" in text
    assert "hybridnet_tests>HalfLife" in text and "module" not in text

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        restored = hybridnet.load_model(tmp_path / "m.hnet")
    assert _messages(record, "load_model") == []
    assert restored.compiled and type(restored.optimizer) is ScaledSGD
    assert isinstance(restored.optimizer.learning_rate, HalfLife)
    assert restored._loss_arg.fn is registered_mse
    assert restored._metrics_arg == [registered_abs_error]
    assert type(restored.get_layer("gain")) is RegisteredScale
    _same_weights(model, restored)
    for m in (model, restored):
        m.train_on_batch(x, y)
    for p, q in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def test_serialize_functions_use_registered_names():
    assert losses.serialize(registered_mse) == {
        "class_name": "function", "config": "registered_mse",
        "registered_name": "hybridnet_tests>registered_mse"}
    assert losses.serialize(plain_mse) is None
    assert losses.deserialize(losses.serialize(registered_mse)) is registered_mse
    assert losses.deserialize({"class_name": "function", "config": "plain_mse",
                               "registered_name": None},
                              custom_objects={"plain_mse": plain_mse}) is plain_mse
    with pytest.raises(hybridnet.saving.UnknownObjectError, match="plain_mse"):
        losses.deserialize({"class_name": "function", "config": "plain_mse"})
    wrapped = metrics.MeanMetricWrapper(registered_abs_error, name="abs")
    again = metrics.deserialize(metrics.serialize(wrapped))
    assert type(again) is metrics.MeanMetricWrapper and again.name == "abs"
    opt = optimizers.deserialize(optimizers.serialize(ScaledSGD(0.2)))
    assert type(opt) is ScaledSGD and opt.learning_rate == 0.2
    with pytest.raises(ValueError, match="not a hybridnet.losses.Loss"):
        losses.deserialize({"class_name": "Gain", "registered_name": "hybridnet_tests>Gain",
                            "config": {}})


# ------------------------------------------------------------------------ refusals

def test_safe_mode_refuses_requests_for_code(saved, tmp_path):
    _, path = saved

    def ask_for_import(config):
        config["compile"]["loss"] = {"item": {"class_name": "function", "config": "system",
                                              "module": "os", "registered_name": None}}
    bad = _rewrite(path, tmp_path / "module.hnet", ask_for_import)
    with pytest.raises(ValueError, match=r"safe_mode=True.*module='os'"):
        hybridnet.load_model(bad)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = hybridnet.load_model(bad, safe_mode=False)  # looked up by name; never imported
    loaded = _messages(record, "load_model")
    assert len(loaded) == 2 and "ignoring requests for code" in loaded[0]
    assert "function 'system'" in loaded[1] and "loaded uncompiled" in loaded[1]
    assert not model.compiled

    def ask_for_lambda(config):
        config["compile"]["loss"] = {"item": {"class_name": "__lambda__",
                                              "config": {"value": "AAAA"}}}
    bad = _rewrite(path, tmp_path / "lambda.hnet", ask_for_lambda)
    with pytest.raises(ValueError, match=r"safe_mode=True.*__lambda__"):
        hybridnet.load_model(bad)


@pytest.mark.parametrize("fmt,version,match", [
    ("hybridnet", 99, r"version 99, newer than this hybridnet reads \(versions 1 to 2\)"),
    ("keras", 2, r"Expected format='hybridnet' with version 1 to 2\. Received: format='keras'"),
    ("hybridnet", "2", r"Received: format='hybridnet', version='2'"),
])
def test_unknown_format_or_newer_version_refused(saved, tmp_path, fmt, version, match):
    _, path = saved

    def edit(config):
        config["format"], config["version"] = fmt, version
    bad = _rewrite(path, tmp_path / "bad.hnet", edit)
    with pytest.raises(ValueError, match=match):
        hybridnet.load_model(bad)
    with pytest.raises(ValueError, match=match):
        _mlp().load_weights(bad)


def test_not_a_model_file_refused(tmp_path):
    (tmp_path / "junk.hnet").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        hybridnet.load_model(tmp_path / "junk.hnet")
    with zipfile.ZipFile(tmp_path / "empty.hnet", "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(ValueError, match="no config.json"):
        hybridnet.load_model(tmp_path / "empty.hnet")


def test_wrong_weight_shape_dtype_missing_or_extra_refused_before_reading(saved, tmp_path):
    _, path = saved

    def wider(config):  # the model built from the config now needs a (4, 5) kernel
        config["model"]["config"]["layers"][0]["config"]["units"] = 5
    with pytest.raises(ValueError, match=r"weights/dense/kernel expected shape=\(4, 5\), "
                                         r"dtype=float32 \(from the model\)\. Received: "
                                         r"shape=\(4, 8\), dtype=float32"):
        hybridnet.load_model(_rewrite(path, tmp_path / "a.hnet", wider))

    def as_float16(config):
        config["weights"][0]["weights"][0]["dtype"] = "float16"
    with pytest.raises(ValueError, match=r"weights/dense/kernel expected .*dtype=float32.*"
                                         r"Received: shape=\(4, 8\), dtype=float16"):
        hybridnet.load_model(_rewrite(path, tmp_path / "b.hnet", as_float16))

    with pytest.raises(ValueError, match=r"missing arrays: \['weights/dense/bias.npy"):
        hybridnet.load_model(_rewrite(path, tmp_path / "c.hnet",
                                      drop=("weights/dense/bias.npy",)))
    with pytest.raises(ValueError, match=r"does not list: \['weights/evil.npy'\]"):
        hybridnet.load_model(_rewrite(path, tmp_path / "d.hnet",
                                      extra={"weights/evil.npy": _npy(np.zeros(3))}))
    # The listed shape is right but the array inside is not: caught when read.
    with pytest.raises(ValueError, match=r"weights/dense/kernel.npy.*expected shape=\(4, 8\).*"
                                         r"Received: shape=\(8, 4\)"):
        hybridnet.load_model(_rewrite(path, tmp_path / "e.hnet", replace={
            "weights/dense/kernel.npy": _npy(np.zeros((8, 4), np.float32))}))
    with pytest.raises(ValueError, match="not a valid .npy"):
        hybridnet.load_model(_rewrite(path, tmp_path / "f.hnet", replace={
            "weights/dense/kernel.npy": b"\x93NUMPY" + b"\x00" * 100}))


def test_wrong_optimizer_state_shape_refused(saved, tmp_path):
    _, path = saved
    target = ".inner_state[0][0].mu['dense']['kernel']"

    def wrong_shape(config):
        for e in config["optimizer_state"]:
            if e["path"] == target:
                e["shape"] = [5, 8]
    member = "optimizer/inner_state/0/0/mu/dense/kernel.npy"
    bad = _rewrite(path, tmp_path / "a.hnet", wrong_shape,
                   replace={member: _npy(np.zeros((5, 8), np.float32))})
    with pytest.raises(ValueError, match=r"optimizer state \.inner_state\[0\]\[0\]\.mu\['dense'\]"
                                         r"\['kernel'\] expected shape=\(4, 8\), dtype=float32 "
                                         r"\(from the compiled optimizer\)\. Received: "
                                         r"shape=\(5, 8\)"):
        hybridnet.load_model(bad)
    # Without compiling, the optimizer state is not read, and the weights load.
    assert not hybridnet.load_model(bad, compile=False).compiled

    def missing_leaf(config):
        config["optimizer_state"] = [e for e in config["optimizer_state"]
                                     if e["path"] != target]
    with pytest.raises(ValueError, match=r"Missing: \[\".inner_state\[0\]\[0\]\.mu\['dense'\]"):
        hybridnet.load_model(_rewrite(path, tmp_path / "b.hnet", missing_leaf, drop=(member,)))


def _bomb(path, dst, member, declared):
    """``path`` with ``member`` replaced by ``declared`` bytes of zeros, deflated."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != member}
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(member)
        info.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(1 << 20)
        with zf.open(info, "w", force_zip64=True) as f:
            for _ in range(declared >> 20):
                f.write(chunk)
    return dst


def test_zip_bomb_refused_without_inflating(saved, tmp_path):
    model, path = saved
    declared = 200 << 20
    bomb = _bomb(path, tmp_path / "bomb.hnet", "weights/dense/kernel.npy", declared)
    assert os.path.getsize(bomb) < 2 << 20
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=rf"'weights/dense/kernel.npy' \(weights/dense/"
                                             rf"kernel\) declares {declared} bytes "
                                             r"uncompressed, but shape=\(4, 8\), "
                                             r"dtype=float32 needs 128 bytes"):
            hybridnet.load_model(bomb)
        with pytest.raises(ValueError, match=rf"declares {declared} bytes"):
            model.load_weights(bomb)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 << 10
    assert elapsed < 20
    # A bomb in a member that is never read (optimizer state, compile=False) is refused too.
    bomb2 = _bomb(path, tmp_path / "bomb2.hnet", "optimizer/count.npy", declared)
    with pytest.raises(ValueError, match=r"optimizer/count.npy' \(\.count\) declares"):
        hybridnet.load_model(bomb2, compile=False)


# -------------------------------------------------------------- atomic writes, temp files

_KILLED_SAVE = """
import sys, time
from hybridnet.saving import model_file

def write(zf):
    zf.writestr("config.json", "{}")
    zf.writestr("weights/big.npy", b"x" * 100000)
    print("writing", flush=True)
    time.sleep(120)

model_file._atomic_write(sys.argv[1], True, write)
"""


def test_interrupted_save_temp_file_removed_by_next_save(tmp_path):
    root = pathlib.Path(hybridnet.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    target = tmp_path / "m.hnet"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        left = [p.name for p in tmp_path.iterdir() if p.name.startswith(model_file.TMP_PREFIX)]
        assert len(left) == 1 and str(proc.pid) in left[0]
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9 mid-save
        proc.wait()
    assert not target.exists() and (tmp_path / left[0]).exists()

    host = model_file._host_tag()
    old = tmp_path / f"{model_file.TMP_PREFIX}otherhost-1-old"
    fresh_other_host = tmp_path / f"{model_file.TMP_PREFIX}otherhost-1-new"
    ours_live = tmp_path / f"{model_file.TMP_PREFIX}{host}-{os.getpid()}-live"
    not_ours = tmp_path / ".tmp-abc"
    for p in (old, fresh_other_host, ours_live, not_ours):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    model = _mlp()
    model.save(target)
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert left[0] not in remaining and old.name not in remaining
    assert {fresh_other_host.name, ours_live.name, not_ours.name, "m.hnet"} <= set(remaining)
    _same_weights(model, hybridnet.load_model(target))


def test_overwrite_false_refused(tmp_path):
    model = _mlp()
    model.save(tmp_path / "m.hnet")
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save(tmp_path / "m.hnet", overwrite=False)


# ----------------------------------------------------------------------- weights files

def test_save_weights_load_weights_by_layer_order_with_checks(saved, tmp_path):
    source = _mlp()
    source.save_weights(tmp_path / "w.weights.h5")
    with zipfile.ZipFile(tmp_path / "w.weights.h5") as zf:
        config = json.loads(zf.read("config.json"))
    assert config["weights_only"] and config["weights"][0]["layer"] == source.layers[0].name
    other = _mlp("other_")  # other layer names: matched by order, as Keras does
    assert other.layers[0].name != source.layers[0].name
    other.load_weights(tmp_path / "w.weights.h5")
    _same_weights(source, other)

    wrong = Sequential([Input((4,)), layers.Dense(5), layers.BatchNormalization(),
                        layers.Dense(3)])
    with pytest.raises(ValueError, match=r"expected shape=\(4, 5\).*Received: shape=\(4, 8\)"):
        wrong.load_weights(tmp_path / "w.weights.h5")
    fewer = Sequential([Input((4,)), layers.Dense(3)])
    with pytest.raises(ValueError, match="holds weights for 3 layers.*has 1 layers"):
        fewer.load_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ValueError, match="weights only"):
        hybridnet.load_model(tmp_path / "w.weights.h5")

    # A full model file's weights load too.
    model, path = saved
    fresh = _mlp("fresh_")
    fresh.load_weights(path)
    _same_weights(model, fresh)


# ------------------------------------------------------------ files written by version 1

def _save_v1(model, path):
    """What hybridnet wrote before version 2 (flat-index arrays, no dtype/shape manifest)."""
    import io
    weighted = [layer for layer in model.layers if layer.weight_specs]
    variables = model.variables
    state = model._optimizer_state_for_save()
    config = {"format": "hybridnet", "version": 1,
              "model": {"class_name": type(model).__name__, "config": model.get_config()},
              "compile": {"optimizer": optimizers.serialize(model.optimizer),
                          "loss": {"item": "mse"}, "metrics": None, "weighted_metrics": None,
                          "loss_weights": None, "steps_per_execution": 1},
              "train_steps": model._train_step_count,
              "weights": [[layer.name, list(layer.weight_specs)] for layer in weighted]}

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, np.asarray(a), allow_pickle=False)
        return buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for i, layer in enumerate(weighted):
            for w in layer.weight_specs:
                zf.writestr(f"weights/{i}/{w}.npy", npy(variables[layer.name][w]))
        zf.writestr("config.json", json.dumps(config))
        for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
            zf.writestr(f"optimizer/{i}.npy", npy(leaf))


def test_version_1_files_still_load(tmp_path):
    x, y = _xy(8)
    model = _mlp()
    model.compile("adam", "mse")
    for _ in range(2):
        model.train_on_batch(x, y)
    _save_v1(model, tmp_path / "v1.hnet")
    restored = hybridnet.load_model(tmp_path / "v1.hnet")
    assert restored.compiled and restored._train_step_count == 2
    _same_weights(model, restored)
    other = _mlp("other_")
    other.load_weights(tmp_path / "v1.hnet")
    _same_weights(model, other)
    for m in (model, restored):
        m.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Checked as strictly: a version 1 member bigger than the model's weight is refused.
    bomb = _bomb(tmp_path / "v1.hnet", tmp_path / "v1bomb.hnet", "weights/0/kernel.npy",
                 8 << 20)
    with pytest.raises(ValueError, match=r"'weights/0/kernel.npy' \(weights/dense/kernel\) "
                                         r"declares 8388608 bytes"):
        hybridnet.load_model(bomb)
