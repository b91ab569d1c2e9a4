"""Shape inference on symbolic inputs (expected shapes are Keras 3's, worked out by
hand), bad-input errors (Keras-style messages naming the layer and what was
received) and JSON-serialisable configs that round-trip."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from hybridnet import layers as L


def shapes(out):
    return [o.shape for o in out] if isinstance(out, list) else out.shape


@pytest.mark.parametrize("make,input_shape,expected", [
    (lambda: L.Conv2D(8, 3), (9, 9, 3), (None, 7, 7, 8)),
    (lambda: L.Conv2D(8, 3, strides=2, padding="same"), (9, 9, 3), (None, 5, 5, 8)),
    (lambda: L.Conv2D(8, 3, strides=2), (9, 9, 3), (None, 4, 4, 8)),
    (lambda: L.Conv2D(8, (3, 5), dilation_rate=2), (12, 12, 3), (None, 8, 4, 8)),
    (lambda: L.Conv2D(8, 3, strides=4, padding="same"), (None, 10, 3), (None, None, 3, 8)),
    (lambda: L.MaxPooling2D(), (7, 7, 3), (None, 3, 3, 3)),
    (lambda: L.MaxPooling2D(padding="same"), (7, 7, 3), (None, 4, 4, 3)),
    (lambda: L.AveragePooling2D(3, strides=2), (8, 9, 2), (None, 3, 4, 2)),
    (lambda: L.AveragePooling2D((3, 2), strides=1, padding="same"), (5, 6, 2), (None, 5, 6, 2)),
    (lambda: L.GlobalAveragePooling2D(), (7, 7, 64), (None, 64)),
    (lambda: L.GlobalAveragePooling2D(keepdims=True), (7, 7, 64), (None, 1, 1, 64)),
    (lambda: L.GlobalMaxPooling2D(), (None, None, 5), (None, 5)),
    (lambda: L.ZeroPadding2D(2), (5, 6, 3), (None, 9, 10, 3)),
    (lambda: L.ZeroPadding2D((1, 2)), (5, 6, 3), (None, 7, 10, 3)),
    (lambda: L.ZeroPadding2D(((1, 2), (3, 4))), (5, None, 3), (None, 8, None, 3)),
    (lambda: L.BatchNormalization(), (8, 8, 16), (None, 8, 8, 16)),
    (lambda: L.LayerNormalization(), (10, 64), (None, 10, 64)),
    (lambda: L.LSTM(4), (None, 3), (None, 4)),
    (lambda: L.LSTM(4, return_sequences=True), (7, 3), (None, 7, 4)),
    (lambda: L.LSTM(4, return_sequences=True, return_state=True), (None, 3),
     [(None, None, 4), (None, 4), (None, 4)]),
    (lambda: L.Bidirectional(L.LSTM(4, return_sequences=True)), (7, 3), (None, 7, 8)),
    (lambda: L.Bidirectional(L.LSTM(4), merge_mode="sum"), (7, 3), (None, 4)),
    (lambda: L.Bidirectional(L.LSTM(4, return_state=True)), (7, 3),
     [(None, 8), (None, 4), (None, 4), (None, 4), (None, 4)]),
    (lambda: L.Bidirectional(L.LSTM(4, return_sequences=True, return_state=True),
                             merge_mode=None), (7, 3),
     [(None, 7, 4), (None, 7, 4), (None, 4), (None, 4), (None, 4), (None, 4)]),
])
def test_symbolic_shapes(make, input_shape, expected):
    layer = make()
    out = layer(L.Input(input_shape))
    assert shapes(out) == expected
    # the traced shapes of a concrete call agree with the declared ones
    concrete = tuple(2 if d is None else d for d in input_shape)
    x = jax.ShapeDtypeStruct((3,) + concrete, jnp.float32)
    weights = {n: jax.ShapeDtypeStruct(s.shape, s.dtype) for n, s in layer.weight_specs.items()}
    traced = jax.eval_shape(lambda w, x: layer.apply(w, x)[0], weights, x)
    declared = layer.compute_output_shape((None,) + concrete)
    traced = [t.shape for t in traced] if isinstance(traced, list) else traced.shape
    declared = ([(3,) + s[1:] for s in declared] if isinstance(declared, list)
                else (3,) + declared[1:])
    assert traced == declared


def test_symbolic_multi_input_shapes():
    ids = L.Input((5,), dtype="int32")
    emb = L.Embedding(100, 8, mask_zero=True)(ids)
    assert emb.shape == (None, 5, 8) and emb.dtype == jnp.float32
    q, v = L.Input((5, 16)), L.Input((7, 16))
    att = L.Attention()
    assert att([q, v]).shape == (None, 5, 16)
    out, scores = att([q, v], return_attention_scores=True)
    assert (out.shape, scores.shape) == ((None, 5, 16), (None, 5, 7))
    k = L.Input((7, 16))
    v2 = L.Input((7, 3))
    assert L.Attention(score_mode="concat")([q, v2, k]).shape == (None, 5, 3)
    assert L.Concatenate()([q, L.Input((5, 4))]).shape == (None, 5, 20)
    assert L.Concatenate(axis=1)([q, v]).shape == (None, 12, 16)
    assert L.Add()([q, L.Input((5, 1))]).shape == (None, 5, 16)
    assert L.Multiply()([L.Input((None, 4)), L.Input((3, 4))]).shape == (None, None, 4)
    assert L.Average()([q, q]).shape == (None, 5, 16)
    h, c = L.Input((4,)), L.Input((4,))
    seq = L.Input((6, 3))
    out = L.LSTM(4, return_sequences=True)(seq, initial_state=[h, c])
    assert out.shape == (None, 6, 4)
    assert out.node.kwargs["initial_state"] == [h, c]


def _bad(cls_name):
    """A Keras-style error: names the layer ('<name>' (<Class>)) and what was received."""
    return pytest.raises(ValueError, match=rf"(?s)Layer '[^']+' \({cls_name}\).*Received")


def test_errors_wrong_rank():
    with _bad("Conv2D"):
        L.Conv2D(4, 3)(L.Input((8, 8)))
    with _bad("MaxPooling2D"):
        L.MaxPooling2D()(L.Input((8,)))
    with _bad("GlobalAveragePooling2D"):
        L.GlobalAveragePooling2D()(L.Input((8, 3)))
    with _bad("ZeroPadding2D"):
        L.ZeroPadding2D()(L.Input((8, 3)))
    with _bad("LSTM"):
        L.LSTM(3)(L.Input((8,)))
    with _bad("Bidirectional"):
        L.Bidirectional(L.LSTM(3))(L.Input((8,)))
    with _bad("Attention"):
        L.Attention()(L.Input((4, 3)))
    with _bad("BatchNormalization"):
        L.BatchNormalization(axis=3)(L.Input((4, 3)))
    with _bad("Concatenate"):
        L.Concatenate()([L.Input((4, 3)), L.Input((5, 3))])
    with _bad("Add"):
        L.Add()([L.Input((4, 3)), L.Input((4, 2))])
    with _bad("Conv2D"):
        L.Conv2D(4, 5)(L.Input((3, 3, 1)))  # empty output
    with pytest.raises(ValueError, match=r"Layer 'c' \(Conv2D\) expects inputs of rank 4.*"
                                         r"Received: input\.shape=\(None, 8, 8\)"):
        L.Conv2D(4, 3, name="c")(L.Input((8, 8)))
    conv = L.Conv2D(4, 3)
    conv(L.Input((8, 8, 3)))
    with _bad("Conv2D"):
        conv(L.Input((8, 8, 2)))  # channels differ from the built ones
    with _bad("Conv2D"):  # eager calls are checked too
        L.Conv2D(4, 3)(jnp.ones((8, 8, 3)))


def test_errors_bad_arguments():
    with _bad("Conv2D"):
        L.Conv2D(4, 3, padding="full")
    with _bad("MaxPooling2D"):
        L.MaxPooling2D(padding="causal")
    with _bad("AveragePooling2D"):
        L.AveragePooling2D(pool_size=(2, 0))
    with _bad("Conv2D"):
        L.Conv2D(4, 3, strides=2, dilation_rate=2)
    with _bad("Conv2D"):
        L.Conv2D(4, 3, kernel="cuda")
    with _bad("Conv2D"):
        L.Conv2D(0, 3)
    with _bad("Conv2D"):
        L.Conv2D(4, 3, activation="swishy")
    with _bad("Dense"):
        L.Dense(4, activation="nope")
    with _bad("Activation"):
        L.Activation("nope")
    with _bad("LSTM"):
        L.LSTM(4, activation="nope")
    with _bad("LSTM"):
        L.LSTM(4, dropout=1.5)
    with _bad("Bidirectional"):
        L.Bidirectional(L.LSTM(4), merge_mode="max")
    with _bad("Bidirectional"):
        L.Bidirectional(L.LSTM(4), backward_layer=L.LSTM(4))  # same go_backwards
    with _bad("Attention"):
        L.Attention(score_mode="cosine")
    with _bad("ZeroPadding2D"):
        L.ZeroPadding2D((1, 2, 3))
    with _bad("Embedding"):
        L.Embedding(0, 4)
    with _bad("BatchNormalization"):
        L.BatchNormalization(axis=[1, 2])


def test_error_reshape_not_divisible():
    with pytest.raises(ValueError, match=r"(?s)Layer '[^']+' \(Reshape\).*Received"):
        L.Reshape((4, -1))(L.Input((6,)))


ALL_LAYERS = [
    (lambda: L.Conv2D(4, (3, 2), strides=2, padding="same", activation="relu", kernel="auto"),
     (6, 6, 2)),
    (lambda: L.MaxPooling2D(3, strides=2, padding="same"), (6, 6, 2)),
    (lambda: L.AveragePooling2D(), (6, 6, 2)),
    (lambda: L.GlobalAveragePooling2D(keepdims=True), (6, 6, 2)),
    (lambda: L.GlobalMaxPooling2D(), (6, 6, 2)),
    (lambda: L.ZeroPadding2D(((1, 0), (2, 3))), (6, 6, 2)),
    (lambda: L.BatchNormalization(momentum=0.9, center=False), (6, 2)),
    (lambda: L.LayerNormalization(axis=[1, 2], epsilon=1e-5), (6, 2)),
    (lambda: L.Embedding(10, 3, mask_zero=True), (6,)),
    (lambda: L.LSTM(3, return_sequences=True, go_backwards=True, dropout=0.1), (6, 2)),
    (lambda: L.Bidirectional(L.LSTM(3, return_state=True), merge_mode="ave"), (6, 2)),
    (lambda: L.Concatenate(axis=1), [(6, 2), (4, 2)]),
    (lambda: L.Add(), [(6, 2), (6, 2)]),
    (lambda: L.Multiply(), [(6, 2), (6, 2)]),
    (lambda: L.Average(), [(6, 2), (6, 2)]),
    (lambda: L.Attention(use_scale=True, score_mode="concat", dropout=0.1), [(6, 2), (4, 2)]),
]


@pytest.mark.parametrize("make,input_shape", ALL_LAYERS)
def test_config_round_trip(make, input_shape):
    layer = make()
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = L.get_layer_class(type(layer).__name__).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    shape = ([(None,) + s for s in input_shape] if isinstance(input_shape, list)
             else (None,) + input_shape)
    layer._maybe_build(shape)
    clone._maybe_build(shape)
    assert {n: (s.shape, s.trainable, s.axes) for n, s in layer.weight_specs.items()} == {
        n: (s.shape, s.trainable, s.axes) for n, s in clone.weight_specs.items()}


def test_bidirectional_config_keeps_inner_layers():
    layer = L.Bidirectional(L.LSTM(3, return_sequences=True, name="enc"))
    config = layer.get_config()
    assert config["layer"]["class_name"] == "LSTM"
    assert config["layer"]["config"]["name"] == "forward_enc"
    assert config["backward_layer"]["config"]["go_backwards"] is True
    clone = L.Bidirectional.from_config(config)
    assert clone.forward_layer.name == "forward_enc"
    assert clone.backward_layer.name == "backward_enc"
    assert clone.backward_layer.go_backwards and not clone.forward_layer.go_backwards
    assert clone.forward_layer.zero_output_for_mask  # forced on with return_sequences
    explicit = L.Bidirectional(L.LSTM(3, name="f"),
                               backward_layer=L.LSTM(5, go_backwards=True, name="b"))
    clone = L.Bidirectional.from_config(json.loads(json.dumps(explicit.get_config())))
    assert clone.backward_layer.units == 5 and clone.backward_layer.name == "b"
    assert clone(L.Input((4, 2))).shape == (None, 8)


@pytest.mark.parametrize("cls,expected", [(L.Conv2D, "conv2d"), (L.MaxPooling2D, "max_pooling2d"),
                                          (L.LSTM, "lstm"), (L.ZeroPadding2D, "zero_padding2d")])
def test_default_names_follow_keras(cls, expected):
    from hybridnet import utils
    assert utils.snake_case(cls.__name__) == expected
