"""Conv2D and LSTM with kernel="pallas" (interpret mode on CPU) match kernel="xla"."""
import io
import warnings
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Model, Sequential, layers
from hybridnet.layers import init_weights
from hybridnet.strategies import DataParallel


def _pair(make, x, **call):
    """The same layer built with kernel='xla' and kernel='pallas', sharing weights."""
    xla, pallas = make("xla"), make("pallas")
    spec = (None,) + tuple(x.shape[1:])
    xla._maybe_build(spec)
    pallas._maybe_build(spec)
    weights = init_weights(xla, jax.random.PRNGKey(0))
    return xla, pallas, weights


@pytest.mark.parametrize("strides,padding,activation", [(1, "same", "relu"), (2, "valid", None),
                                                        (4, "same", "tanh")])
def test_conv2d_layer_pallas_matches_xla_forward_and_grads(strides, padding, activation):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 11, 11, 3))
    xla, pallas, w = _pair(lambda k: layers.Conv2D(4, 3, strides=strides, padding=padding,
                                                   activation=activation, kernel=k), x)

    def loss(layer):
        return lambda w, x: jnp.sum(jnp.sin(layer.apply(w, x)[0]))
    np.testing.assert_allclose(pallas.apply(w, x)[0], xla.apply(w, x)[0], rtol=1e-4, atol=1e-4)
    g_xla = jax.grad(loss(xla), argnums=(0, 1))(w, x)
    g_pal = jax.grad(loss(pallas), argnums=(0, 1))(w, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_pal), jax.tree_util.tree_leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert pallas.kernel_choice == "pallas" and xla.kernel_choice == "xla"


@pytest.mark.parametrize("go_backwards,zero_output", [(False, False), (True, True)])
def test_lstm_layer_pallas_matches_xla_with_mask_and_state(go_backwards, zero_output):
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 4))
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
    h0 = jax.random.normal(jax.random.PRNGKey(3), (3, 6))
    c0 = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
    xla, pallas, w = _pair(lambda k: layers.LSTM(6, return_sequences=True, return_state=True,
                                                 go_backwards=go_backwards,
                                                 zero_output_for_mask=zero_output, kernel=k), x)

    def loss(layer):
        def f(w, x, h0, c0):
            out, h, c = layer.apply(w, x, mask=mask, initial_state=[h0, c0])[0]
            return jnp.sum(jnp.sin(out)) + jnp.sum(h * c)
        return f
    for a, b in zip(pallas.apply(w, x, mask=mask, initial_state=[h0, c0])[0],
                    xla.apply(w, x, mask=mask, initial_state=[h0, c0])[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    g_xla = jax.grad(loss(xla), argnums=(0, 1, 2, 3))(w, x, h0, c0)
    g_pal = jax.grad(loss(pallas), argnums=(0, 1, 2, 3))(w, x, h0, c0)
    for a, b in zip(jax.tree_util.tree_leaves(g_pal), jax.tree_util.tree_leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _cnn(kernel):
    hybridnet.utils.set_random_seed(0)
    return Sequential([
        Input((12, 12, 3)),
        layers.Conv2D(8, 5, strides=2, padding="same", activation="relu", kernel=kernel),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, padding="same", activation="relu", kernel=kernel),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.Dense(4, activation="softmax"),
    ])


def _seq2seq(kernel):
    hybridnet.utils.set_random_seed(1)
    src, tgt = Input((5,), dtype="int32"), Input((4,), dtype="int32")
    enc, h, c = layers.LSTM(8, return_sequences=True, return_state=True, kernel=kernel)(
        layers.Embedding(16, 8, mask_zero=True)(src))
    dec = layers.LSTM(8, return_sequences=True, kernel=kernel)(
        layers.Embedding(16, 8, mask_zero=True)(tgt), initial_state=[h, c])
    out = layers.Dense(16)(layers.Concatenate()([dec, layers.Attention()([dec, enc])]))
    return Model([src, tgt], out)


def _three_steps(model, x, y, loss, devices):
    model.compile(hybridnet.optimizers.SGD(0.05), loss, strategy=DataParallel(devices=devices))
    return [model.train_on_batch(x, y) for _ in range(3)]


def test_cnn_trains_the_same_with_pallas_kernels_on_eight_devices():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 12, 12, 3)).astype("float32"), rng.integers(0, 4, 8)
    ref = _three_steps(_cnn("xla"), x, y, "sparse_categorical_crossentropy", jax.devices()[:1])
    model = _cnn("pallas")
    got = _three_steps(model, x, y, "sparse_categorical_crossentropy", jax.devices())
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    out = io.StringIO()
    with redirect_stdout(out):
        model.summary()
    assert "Conv2D, pallas" in out.getvalue()
    # the kernel ran per shard: the compiled step has no all-gather of the batch input
    hlo = model._runner.train_fn(8).lower(model.train_state, [x], y, None).as_text()
    assert "all-gather" not in hlo


def test_seq2seq_trains_the_same_with_pallas_lstm():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 16, size=(4, 5)).astype("int32")
    src[1, 3:] = 0
    tgt = rng.integers(1, 16, size=(4, 4)).astype("int32")
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    ref = _three_steps(_seq2seq("xla"), [src, tgt], tgt, loss, jax.devices()[:1])
    got = _three_steps(_seq2seq("pallas"), [src, tgt], tgt, loss, jax.devices()[:4])
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_unsupported_configurations():
    with pytest.raises(ValueError, match=r"Layer 'c' \(Conv2D\): kernel='pallas' cannot run "
                                         r"this layer.*dilation_rate"):
        layers.Conv2D(4, 3, dilation_rate=2, kernel="pallas", name="c")(Input((9, 9, 2)))
    with pytest.raises(ValueError, match=r"Layer 'l' \(LSTM\): kernel='pallas'.*recurrent_dropout"):
        layers.LSTM(4, recurrent_dropout=0.5, kernel="pallas", name="l")(Input((3, 2)))
    # "auto" on CPU is the XLA path, silently; the choice shows after tracing
    conv = layers.Conv2D(4, 3, dilation_rate=2, kernel="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv(jnp.ones((1, 9, 9, 2)))
    assert conv.kernel_choice == "xla"
    with pytest.raises(ValueError, match="Received: kernel='cuda'"):
        layers.Conv2D(4, 3, kernel="cuda")
