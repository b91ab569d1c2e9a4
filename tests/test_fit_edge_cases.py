"""fit edge cases: callbacks touching the model mid-epoch, kept logs, interrupts, caps,
generators, class weights, frozen layers, shared layers."""
import jax
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, callbacks, layers
from hybridnet.strategies import DataParallel, Pipeline

ONE = DataParallel(devices=jax.devices()[:1])


def _model(**compile_kwargs):
    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((4,)), layers.Dense(8, activation="relu"), layers.Dense(2)])
    model.compile(hybridnet.optimizers.SGD(0.1),
                  hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **compile_kwargs)
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def test_batch_callback_reads_and_saves_the_model_mid_epoch(tmp_path):
    x, y = _data()
    model = _model()
    seen = []
    read = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(
        model.get_weights()[0].copy()))
    save = callbacks.ModelCheckpoint(str(tmp_path / "m.hnet"), save_freq=2)
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[read, save], verbose=0)
    assert len(seen) == 4 and not np.array_equal(seen[0], seen[-1])
    np.testing.assert_array_equal(seen[-1], model.get_weights()[0])
    restored = hybridnet.models.load_model(tmp_path / "m.hnet")
    np.testing.assert_array_equal(restored.get_weights()[0], seen[-1])
    # a callback that sets weights mid-epoch: training continues from them
    zero = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: b == 1 and model.set_weights(
        [np.zeros_like(w) for w in model.get_weights()]))
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[zero], shuffle=False, verbose=0)
    reference = _model()
    reference.set_weights([np.zeros_like(w) for w in reference.get_weights()])
    reference.fit(x[32:], y[32:], batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_kept_batch_logs_stay_readable():
    x, y = _data()
    kept = []
    keep = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: kept.append(logs),
                                    on_test_batch_end=lambda b, logs: kept.append(logs))
    model = _model()
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[keep], verbose=0)
    model.evaluate(x, y, batch_size=16, callbacks=[keep], verbose=0)
    assert len(kept) == 8 and all(set(dict(logs)) == {"loss", "accuracy"} for logs in kept)


def test_interrupt_keeps_the_model_usable():
    x, y = _data()
    model = _model()

    def stop(batch, logs):
        if batch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[
            callbacks.LambdaCallback(on_train_batch_end=stop)], verbose=0)
    assert model.predict(x, verbose=0).shape == (64, 2)
    assert model._train_step_count == 3


def test_steps_per_epoch_caps_array_epochs_and_generators_run_out():
    x, y = _data()
    model = _model()
    count = []
    model.fit(x, y, batch_size=8, steps_per_epoch=2, epochs=2, verbose=0, callbacks=[
        callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: count.append(b))])
    assert count == [0, 1, 0, 1]
    assert model.evaluate(x, y, batch_size=8, steps=1, verbose=0, return_dict=True)

    def once():
        for i in range(0, 64, 16):
            yield x[i:i + 16], y[i:i + 16]
    with pytest.warns(UserWarning, match="ran out after 1 epochs"):
        history = model.fit(once(), epochs=3, verbose=0)
    assert len(history.epoch) == 1


def test_class_weight_applies_to_the_training_part_only():
    x, y = _data(80)
    model = _model(strategy=ONE)
    history = model.fit(x, y, batch_size=80, epochs=1, class_weight={0: 10.0, 1: 1.0},
                        validation_split=0.25, shuffle=False, verbose=0)
    fresh = _model(strategy=ONE)
    fresh.set_weights(model.get_weights())
    assert history.history["val_loss"][0] == pytest.approx(
        fresh.evaluate(x[60:], y[60:], batch_size=20, verbose=0)[0], rel=1e-5)


def test_weighted_metrics_survive_save_load(tmp_path):
    model = _model()
    model.compile("sgd", "mse", metrics=["mae"], weighted_metrics=["mse"])
    model.save(tmp_path / "w.hnet")
    x = np.ones((8, 4), "float32")
    logs = hybridnet.models.load_model(tmp_path / "w.hnet").evaluate(
        x, np.zeros((8, 2), "float32"), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "mae", "mse"}


def test_trainable_changes_need_compile_and_can_be_undone():
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    model.layers[0].trainable = False
    with pytest.raises(RuntimeError, match="call compile\\(\\) again"):
        model.fit(x, y, epochs=1, verbose=0)
    model.compile("sgd", hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    frozen = model.get_weights()[0].copy()
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], frozen)
    model.layers[0].trainable = True
    model.compile("sgd", hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(model.get_weights()[0], frozen)
    built_frozen = Sequential([Input((4,)), layers.Dense(3, trainable=False)])
    built_frozen.layers[0].trainable = True
    assert len(built_frozen.trainable_weights) == 2


def test_models_sharing_layers():
    hybridnet.utils.set_random_seed(0)
    inputs = Input((4,))
    encoder_layer = layers.Dense(3, name="enc")
    autoencoder = Model(inputs, layers.Dense(4, name="dec")(encoder_layer(inputs)))
    autoencoder.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    autoencoder.fit(x, x, epochs=2, verbose=0)
    trained = autoencoder.get_weights()
    encoder = Model(inputs, encoder_layer(inputs))  # starts from the trained encoder
    np.testing.assert_array_equal(encoder.get_weights()[0], trained[0])
    np.testing.assert_array_equal(autoencoder.get_weights()[0], trained[0])
    dense = layers.Dense(4)
    with pytest.raises(ValueError, match="cannot be added twice"):
        Sequential([Input((4,)), dense, dense])
    shared = layers.Dense(4, name="shared")
    h = shared(shared(inputs))
    with pytest.raises(ValueError, match=r"\['shared'\] are called more than once"):
        Model(inputs, layers.Dense(2)(h)).make_plan(Pipeline(stages=2),
                                                    devices=jax.devices()[:2])
