"""Bad input fails early with a message naming what was expected and received."""
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Sequential, layers


def _model(compiled=True):
    model = Sequential([Input((4,)), layers.Dense(3)], name="m")
    if compiled:
        model.compile("adam", "mse")
    return model


X, Y = np.zeros((16, 4), "float32"), np.zeros((16, 3), "float32")


def _nothing_compiled(model):
    return model._runner is None or not model._runner._compiled


def test_wrong_input_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"expected shape=\(None, 4\).*Received: x.shape=\(16, 5\)"):
        model.fit(np.zeros((16, 5), "float32"), Y, verbose=0)
    assert _nothing_compiled(model)


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"Received: x.shape=\(16, 4, 1\)"):
        _model().predict(np.zeros((16, 4, 1), "float32"), verbose=0)


def test_layer_rank_error_names_layer():
    x = Input((8, 8))
    with pytest.raises(ValueError, match="conv.*Received"):
        layers.Conv2D(4, 3, name="conv")(x)


def test_x_y_length_mismatch():
    with pytest.raises(ValueError, match="same number of samples.*Received"):
        _model().fit(X, Y[:10], verbose=0)


def test_unknown_names():
    with pytest.raises(ValueError, match="Received.*'adamm'|adamm"):
        _model(False).compile("adamm", "mse")
    with pytest.raises(ValueError, match="msee"):
        _model(False).compile("adam", "msee")
    with pytest.raises(ValueError, match="accurcy"):
        _model(False).compile("adam", "mse", metrics=["accurcy"])
    with pytest.raises(ValueError, match="Received: activation='rellu'"):
        layers.Dense(3, activation="rellu")


def test_fit_before_compile():
    with pytest.raises(RuntimeError, match="compile"):
        _model(False).fit(X, Y, verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        _model(False).evaluate(X, Y, verbose=0)


def test_batch_size_smaller_than_devices():
    model = _model()
    with pytest.raises(ValueError, match=r"number of devices.*\(8\).*Received: batch_size=4"):
        model.fit(X, Y, batch_size=4, verbose=0)
    assert _nothing_compiled(model)


def test_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        _model().fit(np.zeros((0, 4), "float32"), np.zeros((0, 3), "float32"), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        _model().fit(iter([]), verbose=0)


def test_bad_compile_arguments():
    with pytest.raises(ValueError, match="steps_per_execution"):
        _model(False).compile("adam", "mse", steps_per_execution=0)
    with pytest.raises(ValueError, match="loss"):
        _model(False).compile("adam", ["mse", "mse"]) or _model(False).fit(X, Y, verbose=0)


def test_bad_batch_size_and_validation_split():
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        _model().fit(X, Y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        _model().fit(X, Y, validation_split=1.5, verbose=0)
