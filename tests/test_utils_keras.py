"""hybridnet.utils against keras.utils (JAX backend): to_categorical, normalize,
pad_sequences, set_random_seed, PyDataset, plot_model."""
import os
import random
import shutil
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from hybridnet import Input, Model, Sequential, layers, utils


@pytest.mark.parametrize("labels, num_classes", [
    ([0, 1, 2, 3], None), ([[1], [0], [2]], 4), (np.array([[0, 2], [1, 1]]), 3),
    (np.arange(6).reshape(2, 3, 1) % 3, None), ([], 2),
])
def test_to_categorical_matches_keras(labels, num_classes):
    want = keras.utils.to_categorical(labels, num_classes)
    got = utils.to_categorical(labels, num_classes)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    on_device = utils.to_categorical(jnp.asarray(np.asarray(labels, "int32")), num_classes)
    if np.size(labels):
        np.testing.assert_array_equal(np.asarray(on_device), want)


def test_to_categorical_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)\. Received: labels "
                                         r"from 0 to 3"):
        utils.to_categorical([0, 3], 3)
    with pytest.raises(ValueError, match="num_classes=0"):
        utils.to_categorical([0], 0)
    with pytest.raises(ValueError, match="integer class labels"):
        utils.to_categorical([0.5, 1.0])


@pytest.mark.parametrize("axis, order", [(-1, 2), (1, 2), (1, 1), (-1, np.inf)])
def test_normalize_matches_keras(axis, order):
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    x[1] = 0.0
    np.testing.assert_allclose(utils.normalize(x, axis, order),
                               keras.utils.normalize(x, axis, order), rtol=1e-6)
    if order == 2:
        np.testing.assert_allclose(np.asarray(utils.normalize(jnp.asarray(x), axis)),
                                   np.asarray(keras.utils.normalize(jnp.asarray(x), axis)),
                                   rtol=1e-6, atol=1e-7)


def test_normalize_along_axis_0():
    # keras 3.15's normalize turns axis=0 into -1 (fixed upstream); check against numpy
    x = np.random.default_rng(1).normal(size=(4, 5))
    np.testing.assert_allclose(utils.normalize(x, 0), x / np.linalg.norm(x, axis=0))


SEQUENCES = [[1], [2, 3], [4, 5, 6], [], [7, 8, 9, 10]]


@pytest.mark.parametrize("kwargs", [
    {}, {"maxlen": 2}, {"maxlen": 6, "padding": "post"}, {"maxlen": 3, "truncating": "post"},
    {"value": -1}, {"dtype": "float32", "value": 0.5, "padding": "post"},
])
def test_pad_sequences_matches_keras(kwargs):
    want = keras.utils.pad_sequences(SEQUENCES, **kwargs)
    got = utils.pad_sequences(SEQUENCES, **kwargs)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_pad_sequences_items_strings_and_errors():
    assert utils.pad_sequences(SEQUENCES, maxlen=0).shape == (5, 0)  # keras 3.15 raises
    seqs = [np.ones((2, 3)), np.zeros((4, 3))]
    np.testing.assert_array_equal(utils.pad_sequences(seqs, maxlen=3, dtype="float32"),
                                  keras.utils.pad_sequences(seqs, maxlen=3, dtype="float32"))
    words = [["a", "b"], ["c"]]
    np.testing.assert_array_equal(utils.pad_sequences(words, dtype=object, value=""),
                                  keras.utils.pad_sequences(words, dtype=object, value=""))
    with pytest.raises(ValueError, match="padding='middle'"):
        utils.pad_sequences(SEQUENCES, padding="middle")
    with pytest.raises(ValueError, match=r"sequences\[1\]=5"):
        utils.pad_sequences([[1], 5])
    with pytest.raises(ValueError, match=r"shape \(3,\).*Received: shape \(2,\) in sequences\[1\]"):
        utils.pad_sequences([np.ones((1, 3)), np.ones((1, 2))])
    with pytest.raises(ValueError, match="dtype=object"):
        utils.pad_sequences(words, value="")


def test_set_random_seed_seeds_python_numpy_and_weights():
    def draw():
        utils.set_random_seed(7)
        model = Sequential([Input((3,)), layers.Dense(2)])
        return random.random(), np.random.rand(), model.get_weights()[0]

    a, b = draw(), draw()
    assert a[0] == b[0] and a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    with pytest.raises(ValueError, match="seed=-1"):
        utils.set_random_seed(-1)


def test_pydataset_is_exported():
    from hybridnet.data import PyDataset
    assert utils.PyDataset is PyDataset


def _functional():
    inputs = Input((4,), name="features")
    a = layers.Dense(3, activation="relu", name="a")(inputs)
    b = layers.Dense(3, name="b")(inputs)
    out = layers.Dense(1, name="out")(layers.Concatenate(name="cat")([a, b]))
    return Model(inputs, out)


def test_plot_model_draws_the_layer_graph(tmp_path):
    pydot = pytest.importorskip("pydot")
    dot = utils.model_to_dot(_functional(), show_shapes=True, show_layer_names=True,
                             show_layer_activations=True)
    labels = {n.get_name(): n.get("label") for n in dot.get_nodes() if n.get("label")}
    assert len(labels) == 5 and any("cat (Concatenate)" in v for v in labels.values())
    assert any("(None, 6)" in v for v in labels.values())
    assert len(dot.get_edges()) == 5
    if shutil.which("dot") is None:
        with pytest.raises(ImportError, match="Graphviz"):
            utils.plot_model(_functional(), tmp_path / "m.png")
        return
    utils.plot_model(_functional(), tmp_path / "m.png", show_shapes=True)
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    del pydot


def test_plot_model_names_missing_pydot(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(ImportError, match="pydot"):
        utils.plot_model(_functional(), tmp_path / "m.png")
    with pytest.raises(ValueError, match="unrecognized keyword arguments"):
        utils.plot_model(_functional(), tmp_path / "m.png", layer_range=None)
