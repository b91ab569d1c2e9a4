"""Keras 3's layer contract: build + add_weight, call(self, inputs), tracked sublayers,
subclassed models, models as layers, feature extraction, Lambda, merges, custom metrics."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import hybridnet as hn  # noqa: E402
from hybridnet import Input, Model, Sequential, layers  # noqa: E402

keras = pytest.importorskip("keras")


def data(n=64, d=10, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, classes, n)


def linear_class(base, ops_matmul):
    """The ``Linear`` layer of Keras's "making new layers and models via subclassing" guide,
    written once for both libraries."""
    class Linear(base):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units),
                                     initializer="random_normal", trainable=True, name="w")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros",
                                     trainable=True, name="b")

        def call(self, inputs):
            return ops_matmul(inputs, self.w) + self.b

        def get_config(self):
            return {**super().get_config(), "units": self.units}
    return Linear


HnLinear = linear_class(layers.Layer, lambda a, b: a @ b)
KLinear = linear_class(keras.layers.Layer, keras.ops.matmul)


class HnBlock(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = HnLinear(16)
        self.outer = HnLinear(4)
        self.norm = layers.BatchNormalization()

    def call(self, inputs, training=False):
        return self.outer(jax.nn.relu(self.norm(self.inner(inputs), training=training)))


def test_custom_layer_matches_keras_forward_and_gradient():
    x, _ = data(8, 5)
    ours, theirs = HnLinear(3), KLinear(3)
    ours(x), theirs(x)
    w = [np.random.default_rng(1).normal(size=v.shape).astype("float32")
         for v in theirs.weights]
    ours.set_weights(w), theirs.set_weights(w)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-6, atol=1e-6)
    assert [v.name for v in ours.weights] == ["w", "b"]
    values = {"w": jnp.asarray(w[0]), "b": jnp.asarray(w[1])}
    grad = jax.grad(lambda v: jnp.sum(ours.apply(v, x)[0] ** 2))(values)
    expected = jax.grad(lambda v: jnp.sum((x @ v["w"] + v["b"]) ** 2))(values)
    np.testing.assert_allclose(np.asarray(grad["w"]), np.asarray(expected["w"]), rtol=1e-5)


def test_sublayers_are_tracked_and_trained():
    block = HnBlock()
    out = block(Input((10,)))
    assert out.shape == (None, 4)
    assert list(block.weight_specs) == [
        "inner/w", "inner/b", "outer/w", "outer/b", "norm/gamma", "norm/beta",
        "norm/moving_mean", "norm/moving_variance"]
    assert len(block.trainable_weights) == 6 and len(block.non_trainable_weights) == 2
    model = Model(out.node.args[0], out)
    model.compile("adam", hn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    before = [np.asarray(v) for v in block.get_weights()]
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    after = block.get_weights()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(not np.allclose(a, b) for a, b in zip(before, after))  # moving stats too
    block.trainable = False
    assert not block.inner.trainable and block.trainable_weights == []


def test_layer_outside_any_model_is_eager_and_updates_moving_statistics():
    norm = layers.BatchNormalization(momentum=0.5)
    x = np.random.default_rng(0).normal(3.0, 1.0, size=(32, 3)).astype("float32")
    norm(x, training=True)
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.5 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm(x)), np.asarray(norm(x, training=False)))


def test_subclassed_model_fit_evaluate_predict_and_weights():
    class MLP(Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = layers.Dense(32, activation="relu")
            self.norm = layers.BatchNormalization()
            self.head = layers.Dense(4)

        def call(self, inputs, training=False):
            return self.head(self.norm(self.hidden(inputs), training=training))

    hn.utils.set_random_seed(3)
    model = MLP()
    assert model.name == "mlp" and [la.name for la in model.layers] == [
        model.hidden.name, model.norm.name, model.head.name]
    model.compile("adam", hn.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x, y = data()
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs, np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    assert len(model.get_weights()) == 8 and model.count_params() == 10 * 32 + 32 + 4 * 32 + 132
    # The same function by hand from the trained weights.
    k1, b1, g, be, mm, mv, k2, b2 = model.get_weights()
    h = np.maximum(x @ k1 + b1, 0)
    h = (h - mm) / np.sqrt(mv + 1e-3) * g + be
    np.testing.assert_allclose(probs, h @ k2 + b2, rtol=1e-4, atol=1e-4)
    assert not np.allclose(mm, 0)


def test_subclassed_model_build_then_summary():
    class Tiny(Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(3)

        def call(self, inputs):
            return self.d(inputs)

    model = Tiny()
    model.build((None, 5))
    lines = []
    model.summary(print_fn=lines.append)
    assert any("18" in line for line in lines)


def test_model_as_a_layer_shares_weights_and_trains_them():
    enc_in = Input((10,))
    encoder = Model(enc_in, layers.Dense(8, activation="relu", name="feat")(enc_in),
                    name="encoder")
    inp = Input((10,))
    full = Model(inp, layers.Dense(4)(encoder(inp)))
    assert [la.name for la in full.layers][1] == "encoder"
    assert list(full.get_layer("encoder").weight_specs) == ["feat/kernel", "feat/bias"]
    full.compile("sgd", hn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    before = encoder.get_weights()[0].copy()
    full.fit(x, y, epochs=1, verbose=0)
    trained = encoder.get_weights()[0]
    assert not np.allclose(before, trained)
    np.testing.assert_allclose(np.asarray(encoder.predict(x, verbose=0)),
                               np.maximum(x @ trained + encoder.get_weights()[1], 0),
                               rtol=1e-5, atol=1e-5)
    # on arrays too: the model is callable like any layer
    np.testing.assert_allclose(np.asarray(encoder(x)),
                               encoder.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_feature_extraction_with_input_and_layer_output():
    inp = Input((10,))
    h = layers.Dense(16, activation="relu", name="h1")(inp)
    out = layers.Dense(4, name="head")(h)
    model = Model(inp, out)
    assert model.input is inp and model.output is out
    features = Model(inputs=model.input, outputs=model.get_layer("h1").output)
    x, _ = data(5)
    k, b = model.get_layer("h1").get_weights()
    np.testing.assert_allclose(features.predict(x, verbose=0), np.maximum(x @ k + b, 0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(AttributeError, match="never been called"):
        _ = layers.Dense(3).output


def test_lowercase_merges_match_the_layers():
    a, b = Input((4,)), Input((4,))
    outs = [layers.add([a, b]), layers.subtract([a, b]), layers.multiply([a, b]),
            layers.average([a, b]), layers.maximum([a, b]), layers.minimum([a, b]),
            layers.concatenate([a, b])]
    model = Model([a, b], outs)
    x1, x2 = data(3, 4)[0], data(3, 4, seed=1)[0]
    got = model.predict([x1, x2], verbose=0)
    want = [x1 + x2, x1 - x2, x1 * x2, (x1 + x2) / 2, np.maximum(x1, x2), np.minimum(x1, x2),
            np.concatenate([x1, x2], -1)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    with pytest.raises(ValueError, match="exactly 2 inputs"):
        layers.subtract([a, b, a])


def test_lambda_runs_in_memory_and_refuses_to_be_saved(tmp_path):
    inp = Input((4,))
    model = Model(inp, layers.Dense(2)(layers.Lambda(lambda t: t * 2.0)(inp)))
    model.compile("sgd", "mse")
    x = np.ones((8, 4), "float32")
    model.fit(x, np.zeros((8, 2), "float32"), verbose=0)
    k, b = model.layers[-1].get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0), (2 * x) @ k + b, rtol=1e-5)
    with pytest.raises(ValueError, match="Lambda.*code"):
        model.save(str(tmp_path / "m.hnet"))


def test_custom_metric_subclass_accumulates_on_device():
    class TruePositives(hn.metrics.Metric):
        def __init__(self, name="tp", **kwargs):
            super().__init__(name=name, **kwargs)
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            hits = jnp.logical_and(jnp.asarray(y_true).reshape(-1) > 0.5,
                                   jnp.asarray(y_pred).reshape(-1) > 0.5)
            self.count.assign(self.count + jnp.sum(hits.astype("float32")))

        def result(self):
            return self.count

        def reset_state(self):
            self.count.assign(0.0)

    metric = TruePositives()
    metric.update_state(np.array([1, 1, 0]), np.array([0.9, 0.2, 0.8]))
    assert float(metric.result()) == 1.0
    metric.reset_state()
    assert float(metric.result()) == 0.0
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
    y = (x.sum(1) > 0).astype("float32")
    model = Sequential([Input((5,)), layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=[TruePositives()])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    p = model.predict(x, verbose=0).reshape(-1)
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs["tp"] == float(((p > 0.5) & (y > 0.5)).sum())


class AxesLinear(layers.Layer):
    """A custom layer that declares logical axes, so ModelParallel can shard it."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel",
                                      axes=("embed", "mlp"))
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias",
                                    axes=("mlp",))

    def call(self, inputs):
        return jax.nn.relu(inputs @ self.kernel + self.bias)


def test_custom_layer_with_logical_axes_is_tensor_parallel_and_matches_one_device():
    x, y = data(32, 8)

    def build():
        hn.utils.set_random_seed(7)
        inp = Input((8,))
        h = AxesLinear(16, parallel="model", name="custom")(inp)
        return Model(inp, layers.Dense(4)(h))

    results = []
    for strategy in (hn.strategies.DataParallel(devices=jax.devices()[:1]),
                     hn.strategies.ModelParallel(model=4)):
        model = build()
        model.compile(hn.optimizers.SGD(0.1),
                      hn.losses.SparseCategoricalCrossentropy(from_logits=True),
                      strategy=strategy)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append((model, model.get_weights()))
    sharded = results[1][0]
    plan = sharded.plan.layers["custom"]
    assert plan.parallel == "model" and tuple(plan.weights["kernel"]) == (None, "model")
    kernel = sharded.get_layer("custom")._values["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape) == (8, 4)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
