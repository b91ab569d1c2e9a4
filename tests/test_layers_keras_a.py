"""Conv1D, Conv2DTranspose, SeparableConv2D, DepthwiseConv2D, UpSampling2D, Cropping2D,
RepeatVector, Permute, 1D pooling, Masking, ReLU, LeakyReLU, Softmax, Rescaling,
Normalization and the stochastic regularization layers against Keras 3 (JAX backend).

Each deterministic layer is built in both libraries from the same config, Keras's weights
are copied into ours (same order), and outputs and gradients (inputs and trainable
weights, the vector-Jacobian product with a fixed random projection) agree within 1e-5;
so do masks, symbolic output shapes and the config arguments Keras also has.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import hybridnet
from hybridnet import Input, layers as L
from hybridnet.strategies import DataParallel

TOL = 1e-5
ONE_DEVICE = DataParallel(devices=jax.devices()[:1])
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Keras config keys hybridnet leaves out: regularizers and constraints (not supported) and
# initializers, which Keras serializes as objects and hybridnet as names.
_SKIP_KEYS = ("name", "dtype", "trainable", "activity_regularizer")


def rand(seed, shape, scale=1.0):
    return np.asarray(np.random.default_rng(seed).normal(size=shape) * scale, np.float32)


def _compiled(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=_FAST_COMPILE)(*args)
    except Exception:  # an XLA build without these options
        return lowered.compile()(*args)


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def check_config(ours, theirs):
    """Every Keras argument (bar regularizers, constraints, initializers) has the same
    value in our config, and ours round-trips through from_config."""
    config = ours.get_config()
    for key, value in theirs.get_config().items():
        if key in _SKIP_KEYS or key.endswith(("_initializer", "_regularizer", "_constraint")):
            continue
        assert key in config, f"{type(ours).__name__}: config lacks Keras's `{key}`"
        assert _plain(config[key]) == _plain(value), (key, config[key], value)
    clone = type(ours).from_config(config)
    assert clone.get_config() == config


def compare(name, config, x, mask=None, ours_config=None, check_grads=True):
    """Builds ``name`` in both libraries and checks shapes, config, outputs, gradients and
    masks. Returns (ours, theirs)."""
    ours = getattr(L, name)(**(ours_config or config))
    theirs = getattr(keras.layers, name)(**config)
    shape = tuple(x.shape[1:])
    sym_ours, sym_theirs = ours(Input(shape)), theirs(keras.Input(shape))
    assert tuple(sym_ours.shape) == tuple(sym_theirs.shape)
    check_config(ours, theirs)
    ours.set_weights(theirs.get_weights())
    flags = ours._trainable_map()
    paths = list(ours._variables_by_path())
    t_paths = [p for p in paths if flags[p]]
    fixed = {p: v for p, v in zip(paths, theirs.get_weights()) if not flags[p]}
    trainable = [jnp.asarray(v) for v in theirs.trainable_weights]
    non_trainable = [jnp.asarray(v) for v in theirs.non_trainable_weights]
    kwargs = {} if mask is None else {"mask": mask}

    def f_ours(w, x):
        return ours.apply({**fixed, **dict(zip(t_paths, w))}, x, **kwargs)[0]

    def f_theirs(w, x):
        return theirs.stateless_call(w, non_trainable, x, **kwargs)[0]

    out_shape = jax.eval_shape(f_theirs, trainable, x)
    projection = rand(99, out_shape.shape)

    def both(w, x):
        results = []
        for f in (f_ours, f_theirs):
            out, vjp = jax.vjp(f, w, x)
            results.append((out, vjp(projection) if check_grads else ()))
        return results
    (out, grads), (expected, expected_grads) = _compiled(both, trainable, jnp.asarray(x))
    assert out.shape == expected.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=TOL, atol=TOL)
    for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=TOL, atol=TOL)
    assert len(jax.tree_util.tree_leaves(grads)) == len(trainable) + 1 or not check_grads
    if theirs.supports_masking or mask is not None:
        expected_mask = theirs.compute_mask(x, mask)
        got_mask = ours.compute_mask(jnp.asarray(x), mask)
        if expected_mask is None:
            assert got_mask is None
        else:
            np.testing.assert_array_equal(np.asarray(got_mask), np.asarray(expected_mask))
    return ours, theirs


# ====================================================================== convolutions

CONV_CASES = [
    ("Conv1D", {"filters": 4, "kernel_size": 3}, (2, 9, 4)),
    ("Conv1D", {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same",
                "activation": "relu"}, (2, 9, 4)),
    ("Conv1D", {"filters": 6, "kernel_size": 2, "dilation_rate": 2, "padding": "causal",
                "use_bias": False}, (2, 9, 4)),
    ("Conv1D", {"filters": 4, "kernel_size": 3, "groups": 2, "padding": "same"}, (2, 8, 4)),
    ("Conv2DTranspose", {"filters": 4, "kernel_size": 3}, (2, 5, 5, 3)),
    ("Conv2DTranspose", {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
     (2, 5, 5, 3)),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": (3, 2), "strides": (2, 3),
                         "output_padding": (1, 2)}, (2, 4, 5, 3)),
    ("Conv2DTranspose", {"filters": 3, "kernel_size": 3, "dilation_rate": 2,
                         "padding": "same", "activation": "tanh"}, (2, 5, 4, 2)),
    ("Conv2DTranspose", {"filters": 3, "kernel_size": 4, "strides": 2, "padding": "same",
                         "output_padding": 1}, (2, 4, 4, 2)),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": 2, "strides": 3}, (2, 3, 4, 2)),
    ("SeparableConv2D", {"filters": 4, "kernel_size": 3}, (2, 7, 7, 3)),
    ("SeparableConv2D", {"filters": 5, "kernel_size": 3, "strides": 2, "padding": "same",
                         "depth_multiplier": 2}, (2, 7, 6, 3)),
    ("SeparableConv2D", {"filters": 2, "kernel_size": 2, "dilation_rate": 2,
                         "use_bias": False, "activation": "relu"}, (2, 6, 6, 3)),
    ("DepthwiseConv2D", {"kernel_size": 3}, (2, 6, 6, 3)),
    ("DepthwiseConv2D", {"kernel_size": 3, "strides": 2, "padding": "same",
                         "depth_multiplier": 3}, (2, 7, 6, 2)),
    ("DepthwiseConv2D", {"kernel_size": (2, 3), "dilation_rate": (2, 1), "use_bias": False},
     (2, 6, 6, 3)),
]


def _id(case):
    return case[0] + "-" + ",".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("case", CONV_CASES, ids=[_id(c) for c in CONV_CASES])
def test_convolutions_match_keras(case):
    name, config, shape = case
    ours, theirs = compare(name, config, rand(1, shape))
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]


# ================================================================ reshaping, pooling

SHAPE_CASES = [
    ("UpSampling2D", {}, (2, 3, 4, 2)),
    ("UpSampling2D", {"size": (2, 3), "interpolation": "bilinear"}, (2, 3, 4, 2)),
    ("UpSampling2D", {"size": 3, "interpolation": "bicubic"}, (1, 3, 3, 2)),
    ("Cropping2D", {"cropping": 1}, (2, 6, 7, 2)),
    ("Cropping2D", {"cropping": ((1, 2), (0, 3))}, (2, 6, 7, 2)),
    ("Cropping2D", {"cropping": (2, 1)}, (2, 6, 7, 2)),
    ("RepeatVector", {"n": 3}, (2, 5)),
    ("Permute", {"dims": (2, 1)}, (2, 3, 4)),
    ("Permute", {"dims": (3, 1, 2)}, (2, 3, 4, 5)),
    ("MaxPooling1D", {}, (2, 9, 3)),
    ("MaxPooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 9, 3)),
    ("AveragePooling1D", {"pool_size": 2, "strides": 1}, (2, 9, 3)),
    ("AveragePooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 8, 3)),
    ("GlobalAveragePooling1D", {}, (2, 6, 3)),
    ("GlobalAveragePooling1D", {"keepdims": True}, (2, 6, 3)),
    ("GlobalMaxPooling1D", {}, (2, 6, 3)),
    ("GlobalMaxPooling1D", {"keepdims": True}, (2, 6, 3)),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[_id(c) for c in SHAPE_CASES])
def test_reshaping_and_pooling_match_keras(case):
    name, config, shape = case
    compare(name, config, rand(2, shape))


def test_global_average_pooling_1d_honours_the_mask():
    x = rand(3, (3, 5, 4))
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    ours, _ = compare("GlobalAveragePooling1D", {}, x, mask=mask)
    expected = [x[i][np.asarray(mask[i])].mean(0) for i in range(3)]
    np.testing.assert_allclose(ours.apply({}, x, mask=mask)[0], expected, rtol=TOL, atol=TOL)
    assert ours.compute_mask(x, mask) is None
    # Like Keras, the max ignores the mask (and drops it).
    layer = L.GlobalMaxPooling1D()
    np.testing.assert_array_equal(layer.apply({}, x, mask=mask)[0], x.max(1))
    assert layer.compute_mask(x, mask) is None


def _with_padding_steps(x):
    x = np.array(x)
    x[0, 1] = 0.0
    x[1, 3:] = 0.0
    x[2, 0, 1:] = 0.0  # not all features are the mask value: kept
    return x


@pytest.mark.parametrize("mask_value", [0.0, 1.5])
def test_masking_matches_keras(mask_value):
    x = _with_padding_steps(rand(4, (3, 5, 3)))
    x[1, 0] = mask_value
    ours, theirs = compare("Masking", {"mask_value": mask_value}, x)
    mask = ours.compute_mask(jnp.asarray(x), None)
    assert mask.shape == (3, 5) and not bool(mask[1, 0])


# ======================================================================= activations

ACTIVATION_CASES = [
    ("ReLU", {}), ("ReLU", {"max_value": 6.0}), ("ReLU", {"negative_slope": 0.1}),
    ("ReLU", {"threshold": 0.5}),
    ("ReLU", {"max_value": 2.0, "negative_slope": 0.2, "threshold": 0.3}),
    ("LeakyReLU", {}), ("LeakyReLU", {"negative_slope": 0.05}),
    ("Softmax", {}), ("Softmax", {"axis": 1}), ("Softmax", {"axis": [1, 2]}),
]


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=[_id(c + ((),)) for c in ACTIVATION_CASES])
def test_activation_layers_match_keras(case):
    name, config = case
    compare(name, config, rand(5, (2, 3, 4), 4.0))


@pytest.mark.parametrize("mask_shape", [(2, 3, 4), (2, 1, 4), (4,)])
def test_softmax_mask_matches_keras(mask_shape):
    mask = jnp.asarray(np.random.default_rng(6).uniform(size=mask_shape) > 0.3)
    ours, _ = compare("Softmax", {}, rand(7, (2, 3, 4), 3.0), mask=mask)
    float_mask = mask.astype(jnp.float32)  # Keras keeps float entries above 0.5
    np.testing.assert_allclose(ours.apply({}, rand(7, (2, 3, 4)), mask=float_mask)[0],
                               ours.apply({}, rand(7, (2, 3, 4)), mask=mask)[0])


# ===================================================================== preprocessing

PREPROCESSING_CASES = [
    ("Rescaling", {"scale": 1.0 / 255, "offset": -1.0}),
    ("Rescaling", {"scale": [0.5, 2.0, 1.0, 3.0]}),
    ("Normalization", {"mean": 2.0, "variance": 4.0}),
    ("Normalization", {"mean": [0.1, 0.2, 0.3, 0.4], "variance": [1.0, 2.0, 0.5, 4.0]}),
    ("Normalization", {"mean": [0.1, 0.2, 0.3, 0.4], "variance": [1.0, 2.0, 0.5, 4.0],
                       "invert": True}),
    ("Normalization", {"axis": (1, 2), "mean": [1.0, 2.0, 3.0, 4.0],
                       "variance": [1.0, 4.0, 9.0, 0.5]}),
    ("Normalization", {"axis": None, "mean": 1.0, "variance": 0.0}),
]


@pytest.mark.parametrize("case", PREPROCESSING_CASES,
                         ids=[_id(c + ((),)) for c in PREPROCESSING_CASES])
def test_preprocessing_matches_keras(case):
    name, config = case
    compare(name, config, rand(8, (2, 3, 4), 3.0))


def _adapt_data(kind, data):
    if kind == "array":
        return data
    if kind == "batches":
        return [data[i:i + 7] for i in range(0, len(data), 7)]
    return [(data[i:i + 10], np.zeros(len(data[i:i + 10]))) for i in range(0, len(data), 10)]


@pytest.mark.parametrize("axis,kind", [(-1, "array"), (-1, "batches"), (None, "array"),
                                       ((1, 2), "xy_batches"), (1, "batches")])
def test_normalization_adapt_matches_keras(axis, kind):
    data = rand(9, (30, 3, 4), 2.0) + np.arange(4, dtype=np.float32)
    ours, theirs = L.Normalization(axis=axis), keras.layers.Normalization(axis=axis)
    ours.adapt(_adapt_data(kind, data))
    # Keras 3 on JAX reaches for TensorFlow given an iterable; the merged statistics of
    # batches are those of the whole array.
    theirs.adapt(data)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
    x = rand(10, (2, 3, 4))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=TOL, atol=TOL)
    inverse = L.Normalization(axis=axis, invert=True)
    inverse.adapt(data)
    np.testing.assert_allclose(inverse(ours(x)), x, rtol=1e-4, atol=1e-4)


def test_normalization_weights_copy_from_keras_and_round_trip():
    data = rand(11, (20, 5), 3.0)
    theirs = keras.layers.Normalization()
    theirs.adapt(data)
    ours = L.Normalization()
    ours(Input((5,)))
    ours.set_weights(theirs.get_weights())
    compare_x = rand(12, (4, 5))
    np.testing.assert_allclose(ours(compare_x), theirs(compare_x), rtol=TOL, atol=TOL)
    assert all(not w.trainable for w in ours.weights)
    clone = L.Normalization.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()


# ====================================================================== stochastic

def _stochastic(name, config, shape, seed=0):
    layer = getattr(L, name)(**config)
    x = rand(seed, shape) + 3.0  # no exact zeros
    layer(Input(shape[1:]))
    inference = layer.apply({}, x)[0]
    np.testing.assert_array_equal(np.asarray(inference), x)
    out = layer.apply({}, x, training=True, rng=jax.random.PRNGKey(seed))[0]
    np.testing.assert_array_equal(  # the same rng draws the same noise
        np.asarray(layer.apply({}, x, training=True, rng=jax.random.PRNGKey(seed))[0]),
        np.asarray(out))
    return layer, x, np.asarray(out)


@pytest.mark.parametrize("name,shape", [("SpatialDropout1D", (64, 6, 32)),
                                        ("SpatialDropout2D", (32, 4, 5, 32))])
def test_spatial_dropout_drops_whole_channels(name, shape):
    layer, x, out = _stochastic(name, {"rate": 0.3}, shape)
    dropped = out == 0
    per_channel = dropped.reshape(shape[0], -1, shape[-1])
    assert (per_channel.all(1) | ~per_channel.any(1)).all()  # whole channels or nothing
    assert abs(per_channel.all(1).mean() - 0.3) < 0.05
    np.testing.assert_allclose(out[~dropped], x[~dropped] / 0.7, rtol=1e-6)
    assert abs(out.mean() / x.mean() - 1.0) < 0.05
    _, x0, out0 = _stochastic(name, {"rate": 0.0}, shape)
    np.testing.assert_array_equal(out0, x0)


def test_gaussian_noise_and_dropout_statistics():
    _, x, out = _stochastic("GaussianNoise", {"stddev": 0.5}, (128, 256))
    noise = out - x
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.5) < 0.01
    _, x, out = _stochastic("GaussianDropout", {"rate": 0.2}, (128, 256))
    factor = out / x
    assert abs(factor.mean() - 1.0) < 0.01 and abs(factor.std() - 0.5) < 0.01
    for name, config in (("GaussianNoise", {"stddev": 0.0}), ("GaussianDropout", {"rate": 0})):
        layer, x, out = _stochastic(name, config, (4, 8))
        np.testing.assert_array_equal(out, x)
        assert not layer.uses_rng


@pytest.mark.parametrize("name,config", [
    ("SpatialDropout1D", {"rate": 0.2, "seed": 3}), ("SpatialDropout2D", {"rate": 0.1}),
    ("GaussianNoise", {"stddev": 0.3, "seed": 1}), ("GaussianDropout", {"rate": 0.4})])
def test_stochastic_configs_match_keras(name, config):
    ours, theirs = getattr(L, name)(**config), getattr(keras.layers, name)(**config)
    check_config(ours, theirs)
    shape = {"SpatialDropout2D": (6, 4, 4), "SpatialDropout1D": (6, 4)}.get(name, (6,))
    assert tuple(ours(Input(shape)).shape) == tuple(theirs(keras.Input(shape)).shape)


# ========================================================================= bad input

@pytest.mark.parametrize("layer,shape", [
    (lambda: L.Conv1D(4, 3), (5, 5, 3)),
    (lambda: L.Conv2DTranspose(4, 3), (5, 3)),
    (lambda: L.SeparableConv2D(4, 3), (2, 2, 3)),
    (lambda: L.DepthwiseConv2D(3), (5, 5)),
    (lambda: L.UpSampling2D(), (5, 3)),
    (lambda: L.Cropping2D(3), (5, 5, 3)),
    (lambda: L.RepeatVector(2), (5, 3)),
    (lambda: L.Permute((2, 1)), (5, 3, 2)),
    (lambda: L.MaxPooling1D(4), (3, 2)),
    (lambda: L.GlobalAveragePooling1D(), (5, 3, 2)),
    (lambda: L.Masking(), ()),
    (lambda: L.Softmax(axis=3), (4, 3)),
    (lambda: L.Normalization(axis=2), (4,)),
    (lambda: L.SpatialDropout2D(0.1), (4, 3)),
])
def test_bad_input_names_the_layer_and_the_shape(layer, shape):
    layer = layer()
    with pytest.raises(ValueError, match=rf"Layer '{layer.name}' \({type(layer).__name__}\)"
                                         r".*Received: .*shape="):
        layer(Input(shape))


@pytest.mark.parametrize("make,match", [
    (lambda: L.Conv1D(4, 3, padding="full"), "padding"),
    (lambda: L.Conv1D(4, 3, groups=3), "groups"),
    (lambda: L.Conv2DTranspose(4, 3, strides=2, output_padding=2), "output_padding"),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=0), "depth_multiplier"),
    (lambda: L.UpSampling2D(interpolation="area"), "interpolation"),
    (lambda: L.Permute((1, 3)), "dims"),
    (lambda: L.ReLU(negative_slope=-1.0), "negative_slope"),
    (lambda: L.Normalization(mean=1.0), "variance"),
    (lambda: L.GaussianDropout(1.5), "rate"),
    (lambda: L.Conv1D(4, 3, data_format="channels_first"), "data_format"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ================================================================= trained in models

def _fit_both(build, x, y, loss, steps=3):
    """The same functional model in both libraries, same weights, a few SGD steps: the
    losses agree (the first is that of the initial weights)."""
    hybridnet.utils.set_random_seed(0)
    ours, theirs = build(L, Input, hybridnet.Model), build(keras.layers, keras.Input,
                                                           keras.Model)
    ours.compile(hybridnet.optimizers.SGD(0.05), loss, strategy=ONE_DEVICE)
    theirs.compile(keras.optimizers.SGD(0.05), loss)
    for a, b in zip([l for l in ours.layers if l.weights], [l for l in theirs.layers
                                                            if l.weights]):
        a.set_weights(b.get_weights())
    kwargs = dict(batch_size=8, epochs=1, shuffle=False, verbose=0)
    h_ours = ours.fit(x[:8 * steps], y[:8 * steps], **kwargs).history["loss"]
    h_theirs = theirs.fit(x[:8 * steps], y[:8 * steps], **kwargs).history["loss"]
    np.testing.assert_allclose(h_ours, h_theirs, rtol=1e-4)
    return ours


def test_conv1d_pooling_model_trains_like_keras():
    def build(layers, Input_, Model):
        inp = Input_((12, 3))
        h = layers.Conv1D(6, 3, padding="causal", activation="relu")(inp)
        h = layers.MaxPooling1D(2)(h)
        h = layers.AveragePooling1D(2, strides=1, padding="same")(h)
        h = layers.GlobalAveragePooling1D()(h)
        return Model(inp, layers.Dense(2)(h))
    x = rand(20, (24, 12, 3))
    _fit_both(build, x, rand(21, (24, 2)), "mse")


def test_image_model_trains_like_keras():
    def build(layers, Input_, Model):
        inp = Input_((6, 6, 2))
        h = layers.SeparableConv2D(4, 3, depth_multiplier=2, activation="relu")(inp)
        h = layers.Conv2DTranspose(3, 3, strides=2, padding="same")(h)
        h = layers.Cropping2D(((1, 2), (2, 1)))(layers.UpSampling2D()(h))
        return Model(inp, layers.Dense(1)(layers.GlobalAveragePooling2D()(h)))
    _fit_both(build, rand(22, (16, 6, 6, 2)), rand(23, (16, 1)), "mse", steps=2)


def test_masked_sequence_model_trains_like_keras():
    def build(layers, Input_, Model):
        inp = Input_((5, 4))
        h = layers.Masking()(layers.Rescaling(0.5)(inp))
        h = layers.GlobalAveragePooling1D()(h)
        h = layers.LeakyReLU(0.1)(layers.Dense(6)(h))
        h = layers.ReLU(max_value=3.0)(h)
        h = layers.RepeatVector(2)(h)
        return Model(inp, layers.Softmax()(layers.Dense(3)(layers.Flatten()(h))))
    x = _with_padding_steps(rand(24, (24, 5, 4)))
    x[5:, 4] = 0.0
    y = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    _fit_both(build, x, y, "categorical_crossentropy")


def test_normalization_and_noise_model_trains():
    x = rand(25, (48, 4), 3.0) + 5.0
    y = (x.sum(1, keepdims=True) > 20).astype(np.float32)
    norm = L.Normalization()
    norm.adapt(x)
    inp = Input((4, 1))
    h = L.SpatialDropout1D(0.1)(inp)
    h = L.GaussianNoise(0.1)(L.Flatten()(h))
    h = L.GaussianDropout(0.1)(norm(h))
    model = hybridnet.Model(inp, L.Dense(1, activation="sigmoid")(h))
    model.compile(hybridnet.optimizers.SGD(0.1), "binary_crossentropy", strategy=ONE_DEVICE)
    before = [np.asarray(w) for w in norm.get_weights()]
    history = model.fit(x[..., None], y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    for a, b in zip(before, norm.get_weights()):  # adapted statistics stay as adapted
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(norm.get_weights()[0], x.mean(0), rtol=1e-5)


def test_depthwise_model_trains_the_same_under_model_parallel():
    from hybridnet.strategies import ModelParallel

    def losses(strategy):
        hybridnet.utils.set_random_seed(0)
        inp = Input((6, 6, 4))
        h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)
        h = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, padding="same")(h))
        model = hybridnet.Model(inp, L.Dense(1)(h))
        model.compile(hybridnet.optimizers.SGD(0.1), "mse", strategy=strategy)
        return model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"]
    x = rand(26, (16, 6, 6, 4))
    y = x.mean((1, 2, 3))[:, None]
    np.testing.assert_allclose(losses(ModelParallel(model=4)), losses(ONE_DEVICE), rtol=1e-5)
