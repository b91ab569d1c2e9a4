"""GRU, SimpleRNN, Bidirectional(GRU), TimeDistributed and MultiHeadAttention against
Keras 3 itself (JAX backend): the same weights (``set_weights(keras.get_weights())``), the
same inputs, forward outputs and gradients (inputs and weights) within 1e-5 in fp32;
symbolic shapes, configs, errors, ``fit`` in a model, and MultiHeadAttention sharded by
heads under ``ModelParallel``.

The gradient check differentiates ``sum(output * P)`` for a fixed random projection P;
ours runs through ``layer.apply`` and Keras' through ``stateless_call``.
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import hybridnet as hn  # noqa: E402
from hybridnet import layers as L  # noqa: E402
from hybridnet.variables import LossCollector  # noqa: E402

keras = pytest.importorskip("keras")
# Keras' own variables call np.array(copy=False) on JAX arrays under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-5
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool)


def rand(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _leaves(tree):
    return jax.tree_util.tree_leaves(list(tree) if isinstance(tree, tuple) else tree)


def _compile(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=_FAST_COMPILE)
    except Exception:  # an XLA build without these options
        return lowered.compile()


def build_pair(ours, theirs, *shapes, **kwargs):
    """Builds both layers by a symbolic call on inputs of ``shapes`` (batch left out),
    checks the output shapes agree and copies Keras' (random) weights into ours."""
    shapes_ours = symbolic_shapes(ours, *shapes, **kwargs)
    assert shapes_ours == symbolic_shapes(theirs, *shapes, **kwargs)
    same_weights(ours, theirs)
    return shapes_ours


def same_weights(ours, theirs, seed=0, scale=0.5):
    """Random values for Keras' weights (so biases are non-zero), copied into ours."""
    theirs.set_weights([rand(seed + i, w.shape, scale) for i, w in enumerate(theirs.weights)])
    ours.set_weights(theirs.get_weights())
    assert [tuple(v.shape) for v in ours.weights] == [tuple(w.shape) for w in theirs.weights]


def compare(ours, theirs, inputs, ours_kwargs=None, keras_kwargs=None, seed=99):
    """Outputs and gradients (w.r.t. the weights and ``inputs``) of
    ``ours.apply(w, *inputs, **ours_kwargs)`` and
    ``theirs.stateless_call(tv, ntv, *inputs, **keras_kwargs)`` agree; returns the outputs.
    Both layers must be built with the same weights."""
    ours_kwargs, keras_kwargs = dict(ours_kwargs or {}), dict(keras_kwargs or {})
    paths = list(ours.weight_specs)
    trainable = [jnp.asarray(v.value) for v in theirs.trainable_variables]
    frozen = [jnp.asarray(v.value) for v in theirs.non_trainable_variables]
    assert len(trainable) == len(paths)
    xs = [jnp.asarray(x) for x in inputs]

    def run_ours(w, xs):
        return ours.apply(dict(zip(paths, w)), *xs, **ours_kwargs)[0]

    def run_keras(w, xs):
        return theirs.stateless_call(w, frozen, *xs, **keras_kwargs)[0]

    shapes = jax.eval_shape(run_keras, trainable, xs)
    projection = [jnp.asarray(rand(seed + i, s.shape)) for i, s in enumerate(_leaves(shapes))]

    def value_and_grads(fn, w, xs):
        def scalar(w, xs):
            out = fn(w, xs)
            return sum(jnp.sum(o * p) for o, p in zip(_leaves(out), projection)), out
        return jax.grad(scalar, argnums=(0, 1), has_aux=True)(w, xs)

    def both(w, xs):
        return value_and_grads(run_ours, w, xs), value_and_grads(run_keras, w, xs)
    (grads, out), (expected_grads, expected) = _compile(both, trainable, xs)(trainable, xs)
    out, expected = _leaves(out), _leaves(expected)
    assert len(out) == len(expected)
    for a, e in zip(out + _leaves(grads), expected + _leaves(expected_grads)):
        assert a.shape == e.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=TOL, atol=TOL)
    return out


def symbolic_shapes(layer, *shapes, **kwargs):
    """Output shapes of a symbolic call on inputs of ``shapes`` (batch dimension left out)."""
    module = keras if layer.__module__.startswith("keras") else hn
    out = layer(*[module.Input(s) for s in shapes], **kwargs)
    return [tuple(t.shape) for t in (out if isinstance(out, (list, tuple)) else [out])]


def round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


# ======================================================================= GRU / SimpleRNN

# Both sides start from zeros (cheap to create) and then take the same random weights.
ZEROS = dict(kernel_initializer="zeros", bias_initializer="zeros")
RNN_ZEROS = dict(ZEROS, recurrent_initializer="zeros")

RNN_CASES = [
    ("GRU", dict(reset_after=False, return_sequences=True, activation="relu"), False),
    ("GRU", dict(go_backwards=True, return_sequences=True, return_state=True, dropout=0.3),
     True),
    ("GRU", dict(use_bias=False, return_state=True, dropout=0.3, recurrent_dropout=0.2), False),
    ("SimpleRNN", dict(return_sequences=True), False),
    ("SimpleRNN", dict(go_backwards=True, return_state=True, dropout=0.3,
                       recurrent_dropout=0.2), True),
]


@pytest.mark.parametrize("cls,config,with_state", RNN_CASES)
def test_recurrent_matches_keras(cls, config, with_state):
    x = rand(1, (3, 5, 4))
    config = {**config, **RNN_ZEROS}
    ours, theirs = getattr(L, cls)(3, **config), getattr(keras.layers, cls)(3, **config)
    build_pair(ours, theirs, (5, 4))
    mask = {"mask": jnp.asarray(MASK)}
    # A positional initial state (both call signatures take it second) is differentiated.
    inputs = [x, rand(2, (3, 3))] if with_state else [x]
    expected = compare(ours, theirs, inputs, mask, mask)
    if not config.get("dropout"):
        return
    # Inference (above) is Keras'; training with rate 0 is inference; training with the
    # same dropout masks on both sides is Keras' training.
    quiet = type(ours).from_config({**ours.get_config(), "dropout": 0.0,
                                    "recurrent_dropout": 0.0})
    quiet._maybe_build((None, 5, 4))
    train = jax.jit(lambda w, xs: quiet.apply(w, *xs, training=True,
                                              rng=jax.random.PRNGKey(0), **mask)[0])
    for a, e in zip(_leaves(train(dict(zip(ours.weight_specs, theirs.get_weights())), inputs)),
                    expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=TOL, atol=TOL)
    share_dropout_masks(ours, theirs, x.shape)
    training = dict(mask, training=True)
    dropped = compare(ours, theirs, inputs, training, training)
    assert not np.allclose(np.asarray(dropped[0]), np.asarray(expected[0]))


def share_dropout_masks(ours, theirs, input_shape, seed=20):
    """Fixed dropout masks for both layers: ours from ``_dropout_masks``, Keras' cached on
    its cell (one per gate where Keras draws one per gate)."""
    count, (batch, _, features) = ours._mask_count, input_shape

    def masks(rate, width, seed):
        if rate == 0:
            return None
        keep = np.random.default_rng(seed).random((count, batch, width)) >= rate
        return jnp.asarray(keep / (1.0 - rate), jnp.float32)
    x_masks = masks(ours.dropout, features, seed)
    h_masks = masks(ours.recurrent_dropout, ours.units, seed + 1)
    ours._dropout_masks = lambda x, training: (x_masks, h_masks) if training else (None, None)
    cell = theirs.cell
    as_keras = (lambda m: None if m is None else list(m)) if count > 1 else (
        lambda m: None if m is None else m[0])
    cell._dropout_mask, cell._recurrent_dropout_mask = as_keras(x_masks), as_keras(h_masks)
    cell.reset_dropout_mask = cell.reset_recurrent_dropout_mask = lambda: None


def test_recurrent_configs_weights_and_masks():
    for layer in (L.GRU(4, seed=3, reset_after=False, zero_output_for_mask=True, dropout=0.1,
                        recurrent_activation="relu", return_state=True),
                  L.SimpleRNN(2, activation="relu", use_bias=False, go_backwards=True)):
        round_trip(layer)
    gru = L.GRU(4)
    gru._maybe_build((None, 5, 2))
    assert {p: (s.shape, s.axes) for p, s in gru.weight_specs.items()} == {
        "kernel": ((2, 12), ("embed", "lstm_gates")),
        "recurrent_kernel": ((4, 12), ("lstm_hidden", "lstm_gates")),
        "bias": ((2, 12), (None, "lstm_gates"))}
    mask = jnp.asarray(MASK)
    out_mask = L.SimpleRNN(3, return_sequences=True, return_state=True).compute_mask(None, mask)
    assert out_mask[0] is mask and out_mask[1] is None
    assert L.GRU(3).compute_mask(None, mask) is None


def test_regularizers_match_keras():
    regs = dict(kernel_regularizer="l2", bias_regularizer="l1")
    pairs = [(L.GRU(3, recurrent_regularizer="l1", **regs, **RNN_ZEROS),
              keras.layers.GRU(3, recurrent_regularizer="l1", **regs, **RNN_ZEROS), [(5, 4)]),
             (L.MultiHeadAttention(2, 3, **regs, **ZEROS),
              keras.layers.MultiHeadAttention(2, 3, **regs, **ZEROS), [(5, 6), (4, 7)])]
    for ours, theirs, shapes in pairs:
        build_pair(ours, theirs, *shapes)
        assert type(round_trip(ours).kernel_regularizer).__name__ == "L2"
        w = dict(zip(ours.weight_specs, theirs.get_weights()))
        inputs = [rand(i, (2,) + s) for i, s in enumerate(shapes)]

        def penalty(w, inputs, ours=ours):
            with LossCollector() as collector:
                ours.apply(w, *inputs)
            return collector.total()
        expected = sum(float(loss) for loss in theirs.losses)
        np.testing.assert_allclose(float(jax.jit(penalty)(w, inputs)), expected, rtol=1e-5)


def test_recurrent_bad_inputs():
    with pytest.raises(ValueError, match=r"Layer 'g' \(GRU\) expects inputs of rank 3.*"
                                         r"Received: input.shape=\(None, 5\)"):
        L.GRU(3, name="g")(hn.Input((5,)))
    with pytest.raises(ValueError, match=r"\(SimpleRNN\): `initial_state` must have shape "
                                         r"\(batch, 3\). Received: initial_state.shape"):
        L.SimpleRNN(3).apply({}, rand(0, (2, 5, 4)), initial_state=rand(1, (2, 4)))
    with pytest.raises(ValueError, match=r"\(GRU\): `dropout` must be in \[0, 1\). "
                                         r"Received: dropout=1.5"):
        L.GRU(3, dropout=1.5)


# ===================================================================== Bidirectional

@pytest.mark.parametrize("mode,config", [
    ("concat", dict(return_sequences=True)),
    ("sum", dict(return_state=True)),
])
def test_bidirectional_gru_matches_keras(mode, config):
    config = {**config, **RNN_ZEROS}
    ours = L.Bidirectional(L.GRU(3, **config), merge_mode=mode)
    theirs = keras.layers.Bidirectional(keras.layers.GRU(3, **config), merge_mode=mode)
    shapes = build_pair(ours, theirs, (5, 4))
    mask = jnp.asarray(MASK)
    kwargs = {"mask": mask}
    if config.get("return_state"):
        kwargs["initial_state"] = [jnp.asarray(rand(4 + i, (3, 3))) for i in range(2)]
    compare(ours, theirs, [rand(3, (3, 5, 4))], kwargs, kwargs)
    masks = ours.compute_mask(None, mask)
    masks = masks if isinstance(masks, list) else [masks]
    assert len(masks) == len(shapes) and all(m is None for m in masks[1:])
    assert type(round_trip(ours).backward_layer) is L.GRU


# =================================================================== TimeDistributed

@pytest.mark.parametrize("inner", ["Dense", "Conv2D"])
def test_time_distributed_matches_keras(inner):
    make = {"Dense": lambda m: m.layers.Dense(3, activation="tanh", **ZEROS),
            "Conv2D": lambda m: m.layers.Conv2D(2, 3, padding="same", **ZEROS)}[inner]
    shape = {"Dense": (4, 5), "Conv2D": (3, 5, 5, 2)}[inner]
    ours, theirs = L.TimeDistributed(make(hn)), keras.layers.TimeDistributed(make(keras))
    build_pair(ours, theirs, shape)
    assert list(ours.weight_specs) == ["layer/kernel", "layer/bias"]
    compare(ours, theirs, [rand(4, (2,) + shape)])
    assert type(round_trip(ours).layer).__name__ == inner


def test_time_distributed_mask_and_bad_input():
    layer = L.TimeDistributed(L.Dense(2))
    mask = jnp.asarray(MASK)
    assert layer.compute_mask(None, mask) is mask
    assert layer(hn.Input((5, 4))).shape == (None, 5, 2)
    with pytest.raises(ValueError, match=r"\(TimeDistributed\) expects an input of rank >= 3 "
                                         r".*Received: input.shape=\(None, 4\)"):
        L.TimeDistributed(L.Dense(2))(hn.Input((4,)))


# =============================================================== MultiHeadAttention

Q_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
V_MASK = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
ATTENTION_MASK = np.ones((2, 5, 4), bool)
ATTENTION_MASK[0, 1, :] = ATTENTION_MASK[1, :, 2] = False


@pytest.mark.parametrize("config,call,k_dim", [
    # Keras' fused path: a fully masked query row gets uniform weights ...
    (dict(num_heads=2, key_dim=3), dict(query_mask=True, value_mask=True), None),
    # ... its scores path zero weights.
    (dict(num_heads=2, key_dim=3), dict(query_mask=True, value_mask=True,
                                        return_attention_scores=True), None),
    (dict(num_heads=2, key_dim=3, dropout=0.2), dict(query_mask=True, key_mask=True,
                                                     attention_mask=True), 3),
    (dict(num_heads=3, key_dim=2, value_dim=4, use_gate=True, output_shape=(2, 3)),
     dict(use_causal_mask=True, return_attention_scores=True), 5),
    (dict(num_heads=2, key_dim=3, use_bias=False, sliding_window=2),
     dict(use_causal_mask=True, value_mask=True), None),
])
def test_multi_head_attention_matches_keras(config, call, k_dim):
    config = {**config, **ZEROS}
    ours, theirs = L.MultiHeadAttention(**config), keras.layers.MultiHeadAttention(**config)
    shapes = [(5, 6), (4, 7)] + ([(4, k_dim)] if k_dim else [])
    build_pair(ours, theirs, *shapes)
    inputs = [rand(6 + i, (2,) + s) for i, s in enumerate(shapes)]
    ours_kwargs, keras_kwargs = {}, {}
    for name, value in (("value_mask", V_MASK), ("key_mask", V_MASK),
                        ("attention_mask", ATTENTION_MASK)):
        if call.get(name):
            ours_kwargs[name] = keras_kwargs[name] = jnp.asarray(value)
    if call.get("query_mask"):
        # Keras reads the query's mask off the tensor; folded into attention_mask it is the
        # same computation. Ours receives it as a model passes it.
        ours_kwargs["mask"] = jnp.asarray(Q_MASK)
        keras_kwargs["attention_mask"] = jnp.asarray(
            Q_MASK[:, :, None] & keras_kwargs.get("attention_mask", True))
    for name in ("use_causal_mask", "return_attention_scores"):
        if call.get(name):
            ours_kwargs[name] = keras_kwargs[name] = True
    out = compare(ours, theirs, inputs, ours_kwargs, keras_kwargs)
    assert out[0].shape == (2, 5) + tuple(config.get("output_shape", (6,)))
    if call.get("return_attention_scores"):
        assert out[1].shape == (2, config["num_heads"], 5, 4)


def test_multi_head_attention_axes_and_dropout():
    config = dict(num_heads=2, key_dim=3, attention_axes=(1, 2), **ZEROS)
    ours, theirs = L.MultiHeadAttention(**config), keras.layers.MultiHeadAttention(**config)
    build_pair(ours, theirs, (3, 4, 6), (3, 4, 5))
    q, v = rand(11, (2, 3, 4, 6)), rand(12, (2, 3, 4, 5))
    scores = {"return_attention_scores": True}
    expected = compare(ours, theirs, [q, v], scores, scores)
    # Inference equals Keras (above and in the test before); training with rate 0 equals
    # inference; with a rate it drops (the returned scores are those before dropout).
    w = dict(zip(ours.weight_specs, theirs.get_weights()))
    dropping = L.MultiHeadAttention.from_config({**ours.get_config(), "dropout": 0.5})
    dropping._maybe_build((None, 3, 4, 6), [(None, 3, 4, 6), (None, 3, 4, 5)])

    @jax.jit
    def train(w, q, v):
        rng = jax.random.PRNGKey(1)
        return [layer.apply(w, q, v, training=True, rng=rng, **scores)[0]
                for layer in (ours, dropping)]
    quiet, dropped = train(w, q, v)
    for out in (quiet, [quiet[0], dropped[1]]):  # scores: the weights before dropout
        for a, e in zip(out, expected):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=TOL, atol=TOL)
    assert not np.allclose(np.asarray(dropped[0]), np.asarray(expected[0]))


def test_multi_head_attention_shapes_config_axes_and_errors():
    ours = L.MultiHeadAttention(2, 4, **ZEROS)
    theirs = keras.layers.MultiHeadAttention(2, 4, **ZEROS)
    kw = {"return_attention_scores": True}
    assert (symbolic_shapes(ours, (5, 6), (5, 7), **kw)
            == symbolic_shapes(theirs, (5, 6), (5, 7), **kw) == [(None, 5, 6), (None, 2, 5, 5)])
    assert symbolic_shapes(L.MultiHeadAttention(2, 4), (5, 6), (3, 7), **kw) == [
        (None, 5, 6), (None, 2, 5, 3)]  # Keras' symbolic shape says (None, 2, 5, 5) here
    assert list(ours.weight_specs) == [f"{s}/{w}" for s in ("query", "key", "value",
                                                            "attention_output")
                                       for w in ("kernel", "bias")]
    axes = {p: s.axes for p, s in ours.weight_specs.items()}
    assert axes["query/kernel"] == ("embed", "heads", None)
    assert axes["value/bias"] == ("heads", None)
    assert axes["attention_output/kernel"] == ("heads", None, "embed")
    clone = round_trip(L.MultiHeadAttention(3, 2, value_dim=5, dropout=0.1, use_gate=True,
                                            output_shape=(4,), attention_axes=(1,),
                                            sliding_window=3, seed=5))
    assert (clone.value_dim, clone.output_shape_arg, clone.use_gate) == (5, (4,), True)
    with pytest.raises(ValueError, match=r"Layer 'mha' \(MultiHeadAttention\): all dimensions "
                                         r"of `value` and `key`, except the last one, must be "
                                         r"equal. Received: value.shape=\(None, 5, 7\)"):
        L.MultiHeadAttention(2, 4, name="mha")(hn.Input((5, 6)), hn.Input((5, 7)),
                                                hn.Input((4, 7)))
    with pytest.raises(ValueError, match=r"`num_heads` must be a positive int. "
                                         r"Received: num_heads=0"):
        L.MultiHeadAttention(0, 4)


# ======================================================================= in models

def _tokens(n=32, steps=6, vocab=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, steps))
    lengths = rng.integers(2, steps + 1, n)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0  # right padding, masked
    y = (x.sum(1) % 2).astype("int32")
    return x.astype("int32"), y


def test_masked_model_of_every_layer_matches_keras_and_fits():
    def build(m):
        inp = m.Input((6,), dtype="int32")
        e = m.layers.Embedding(12, 8, mask_zero=True, embeddings_initializer="zeros")(inp)
        # Self-attention: the query's mask is also the value's.
        a = m.layers.MultiHeadAttention(2, 4, **ZEROS)(e, e)
        h = m.layers.LayerNormalization()(m.layers.Add()([e, a]))
        h = m.layers.TimeDistributed(m.layers.Dense(4, activation="relu", **ZEROS))(h)
        h = m.layers.Bidirectional(m.layers.GRU(3, return_sequences=True, **RNN_ZEROS))(h)
        h = m.layers.SimpleRNN(3, go_backwards=True, **RNN_ZEROS)(h)
        return m.Model(inp, m.layers.Dense(2, **ZEROS)(h))
    theirs, ours = build(keras), build(hn)
    theirs.set_weights([rand(10 + i, w.shape, 0.3) for i, w in enumerate(theirs.weights)])
    ours.set_weights(theirs.get_weights())
    x, y = _tokens()
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                               rtol=TOL, atol=TOL)
    ours.compile(hn.optimizers.Adam(0.01),
                 hn.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = ours.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_multi_head_attention_model_parallel_matches_one_device():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 5, 8)).astype("float32")
    y = rng.integers(0, 3, 16)

    def build():
        hn.utils.set_random_seed(11)
        inp = hn.Input((5, 8))
        h = L.MultiHeadAttention(4, 4, parallel="model", name="mha")(inp, inp,
                                                                    use_causal_mask=True)
        return hn.Model(inp, L.Dense(3)(L.Flatten()(h)))

    results = []
    for strategy in (hn.strategies.DataParallel(devices=jax.devices()[:1]),
                     hn.strategies.ModelParallel(model=2, devices=jax.devices()[:4])):
        model = build()
        model.compile(hn.optimizers.SGD(0.1),
                      hn.losses.SparseCategoricalCrossentropy(from_logits=True),
                      strategy=strategy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        ignored = [w for w in caught if "ignores the parallel='model'" in str(w.message)]
        assert len(ignored) == (strategy.__class__.__name__ == "DataParallel")
        results.append((model, model.get_weights(), history.history["loss"]))
    sharded = results[1][0]
    plan = sharded.plan.layers["mha"]
    assert plan.parallel == "model"
    assert tuple(plan.weights["query/kernel"]) == (None, "model", None)
    assert tuple(plan.weights["attention_output/kernel"]) == ("model", None, None)
    kernel = sharded.get_layer("mha")._values["query/kernel"]
    assert kernel.sharding.shard_shape(kernel.shape) == (8, 2, 4)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
