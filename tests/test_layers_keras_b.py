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

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import hybridnet as hn  # noqa: E402
from hybridnet import layers as L  # noqa: E402

keras = pytest.importorskip("keras")

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


def same_weights(ours, theirs, seed=0, scale=0.5):
    """Random values for Keras' weights (so biases are non-zero), copied into ours."""
    theirs.set_weights([rand(seed + i, w.shape, scale) for i, w in enumerate(theirs.weights)])
    ours.set_weights(theirs.get_weights())
    assert [tuple(v.shape) for v in ours.weights] == [tuple(w.shape) for w in theirs.weights]


def compare(ours, theirs, inputs, fixed=(), ours_kwargs=None, keras_kwargs=None, seed=99):
    """Outputs and gradients of ``ours.apply(w, *inputs, *fixed, **ours_kwargs)`` and
    ``theirs.stateless_call(tv, ntv, *inputs, *fixed, **keras_kwargs)``: ``inputs`` are
    differentiated, ``fixed`` are not (masks, states). Both layers must be built."""
    ours_kwargs, keras_kwargs = dict(ours_kwargs or {}), dict(keras_kwargs or {})
    paths = list(ours.weight_specs)
    trainable = [jnp.asarray(v.value) for v in theirs.trainable_variables]
    frozen = [jnp.asarray(v.value) for v in theirs.non_trainable_variables]
    assert len(trainable) == len(paths)
    xs = [jnp.asarray(x) for x in inputs]
    fixed = [jnp.asarray(f) if f is not None else None for f in fixed]

    def run_ours(w, xs):
        return ours.apply(dict(zip(paths, w)), *xs, *fixed, **ours_kwargs)[0]

    def run_keras(w, xs):
        return theirs.stateless_call(w, frozen, *xs, *fixed, **keras_kwargs)[0]

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

RNN_CASES = [
    ("GRU", dict(), False, False),
    ("GRU", dict(reset_after=False, return_sequences=True, activation="relu"), True, False),
    ("GRU", dict(go_backwards=True, return_sequences=True, return_state=True), True, True),
    ("GRU", dict(use_bias=False, return_state=True, dropout=0.3, recurrent_dropout=0.2), True,
     False),
    ("SimpleRNN", dict(return_sequences=True), True, False),
    ("SimpleRNN", dict(go_backwards=True, return_state=True, dropout=0.3,
                       recurrent_dropout=0.2), True, True),
]


@pytest.mark.parametrize("cls,config,masked,with_state", RNN_CASES)
def test_recurrent_matches_keras(cls, config, masked, with_state):
    x = rand(1, (3, 5, 4))
    ours, theirs = getattr(L, cls)(3, **config), getattr(keras.layers, cls)(3, **config)
    ours(x), theirs(x)
    same_weights(ours, theirs)
    ours_kwargs, keras_kwargs = {}, {}
    if masked:
        ours_kwargs["mask"] = keras_kwargs["mask"] = jnp.asarray(MASK)
    # A positional initial state (both call signatures take it second) is differentiated.
    inputs = [x, rand(2, (3, 3))] if with_state else [x]
    compare(ours, theirs, inputs, (), ours_kwargs, keras_kwargs)
    # Inference is Keras' whatever the dropout rates; training with rate 0 is inference.
    if config.get("dropout"):
        quiet = round_trip(ours)
        quiet.dropout = quiet.recurrent_dropout = 0.0
        quiet._maybe_build((None, 5, 4))
        w = dict(zip(quiet.weight_specs, theirs.get_weights()))
        eval_out = quiet.apply(w, x, **ours_kwargs)[0]
        train_out = quiet.apply(w, x, training=True, rng=jax.random.PRNGKey(0),
                                **ours_kwargs)[0]
        for a, b in zip(_leaves(eval_out), _leaves(train_out)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        dropped = ours.apply(dict(zip(ours.weight_specs, theirs.get_weights())), x,
                             training=True, rng=jax.random.PRNGKey(0), **ours_kwargs)[0]
        assert not np.allclose(np.asarray(_leaves(dropped)[0]), np.asarray(_leaves(eval_out)[0]))


def test_recurrent_shapes_configs_and_weights():
    for cls in ("GRU", "SimpleRNN"):
        for config in (dict(), dict(return_sequences=True, return_state=True)):
            ours, theirs = getattr(L, cls)(3, **config), getattr(keras.layers, cls)(3, **config)
            assert symbolic_shapes(ours, (5, 4)) == symbolic_shapes(theirs, (5, 4))
            round_trip(ours)
    gru = L.GRU(4, seed=3, reset_after=False, zero_output_for_mask=True, dropout=0.1)
    clone = round_trip(gru)
    assert (clone.reset_after, clone.zero_output_for_mask, clone.seed) == (False, True, 3)
    gru = L.GRU(4)
    gru._maybe_build((None, 5, 2))
    specs = gru.weight_specs
    assert {p: (s.shape, s.axes) for p, s in specs.items()} == {
        "kernel": ((2, 12), ("embed", "lstm_gates")),
        "recurrent_kernel": ((4, 12), ("lstm_hidden", "lstm_gates")),
        "bias": ((2, 12), (None, "lstm_gates"))}
    seq = L.SimpleRNN(3, return_sequences=True, return_state=True)
    out_mask = seq.compute_mask(None, jnp.asarray(MASK))
    assert out_mask[0] is not None and out_mask[1] is None
    assert L.SimpleRNN(3).compute_mask(None, jnp.asarray(MASK)) is None


def test_recurrent_bad_inputs():
    x = hn.Input((5,))
    with pytest.raises(ValueError, match=r"Layer 'g' \(GRU\) expects inputs of rank 3.*"
                                         r"Received: input.shape=\(None, 5\)"):
        L.GRU(3, name="g")(x)
    with pytest.raises(ValueError, match=r"\(SimpleRNN\): `initial_state` must have shape "
                                         r"\(batch, 3\). Received: initial_state.shape"):
        L.SimpleRNN(3)(rand(0, (2, 5, 4)), initial_state=rand(1, (2, 4)))
    with pytest.raises(ValueError, match=r"\(GRU\): `dropout` must be in \[0, 1\). "
                                         r"Received: dropout=1.5"):
        L.GRU(3, dropout=1.5)


# ===================================================================== Bidirectional

@pytest.mark.parametrize("inner,mode,config", [
    ("GRU", "concat", dict(return_sequences=True)),
    ("GRU", "sum", dict(return_state=True)),
    ("SimpleRNN", None, dict(return_sequences=True, return_state=True)),
])
def test_bidirectional_matches_keras(inner, mode, config):
    x = rand(3, (3, 5, 4))
    ours = L.Bidirectional(getattr(L, inner)(3, **config), merge_mode=mode)
    theirs = keras.layers.Bidirectional(getattr(keras.layers, inner)(3, **config),
                                        merge_mode=mode)
    ours(x), theirs(x)
    same_weights(ours, theirs)
    mask = jnp.asarray(MASK)
    compare(ours, theirs, [x], (), {"mask": mask}, {"mask": mask})
    assert symbolic_shapes(ours, (5, 4)) == symbolic_shapes(theirs, (5, 4))
    masks = ours.compute_mask(None, mask)
    masks = masks if isinstance(masks, list) else [masks]
    outputs = 2 if mode is None else 1
    assert len(masks) == len(symbolic_shapes(ours, (5, 4)))
    assert all(m is None for m in masks[outputs:])
    clone = round_trip(ours)
    assert type(clone.forward_layer) is getattr(L, inner)


# =================================================================== TimeDistributed

@pytest.mark.parametrize("inner", ["Dense", "Conv2D"])
def test_time_distributed_matches_keras(inner):
    make = {"Dense": lambda m: m.layers.Dense(3, activation="tanh"),
            "Conv2D": lambda m: m.layers.Conv2D(2, 3, padding="same")}[inner]
    shape = {"Dense": (4, 5), "Conv2D": (3, 5, 5, 2)}[inner]
    x = rand(4, (2,) + shape)
    ours, theirs = L.TimeDistributed(make(hn)), keras.layers.TimeDistributed(make(keras))
    ours(x), theirs(x)
    same_weights(ours, theirs)
    assert list(ours.weight_specs) == ["layer/kernel", "layer/bias"]
    compare(ours, theirs, [x])
    assert symbolic_shapes(ours, shape) == symbolic_shapes(theirs, shape)
    clone = round_trip(ours)
    assert type(clone.layer).__name__ == inner
    with pytest.raises(ValueError, match=r"\(TimeDistributed\) expects an input of rank >= 3 "
                                         r".*Received: input.shape=\(None, 4\)"):
        L.TimeDistributed(L.Dense(2))(hn.Input((4,)))


def test_time_distributed_passes_the_mask_through():
    layer = L.TimeDistributed(L.Dense(2))
    mask = jnp.asarray(MASK)
    assert layer.compute_mask(None, mask) is mask
    out = layer(rand(5, (3, 5, 4)), mask=mask)
    assert out.shape == (3, 5, 2)


# =============================================================== MultiHeadAttention

def _mha_case(config, q_shape=(2, 5, 6), v_shape=(2, 4, 7), k_shape=None):
    q, v = rand(6, q_shape), rand(7, v_shape)
    ours, theirs = L.MultiHeadAttention(**config), keras.layers.MultiHeadAttention(**config)
    extra = [rand(8, k_shape)] if k_shape else []
    ours(q, v, *extra)
    # Keras' fused path mishandles value_dim != key_dim; the scores path builds it.
    theirs(q, v, *extra, return_attention_scores=True)
    same_weights(ours, theirs)
    return ours, theirs, [q, v] + extra


Q_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
V_MASK = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)


@pytest.mark.parametrize("config,call,k_shape", [
    (dict(num_heads=2, key_dim=3), dict(), None),
    # Keras' fused path: fully masked query rows get uniform weights.
    (dict(num_heads=2, key_dim=3), dict(query_mask=True, value_mask=True), None),
    # Keras' scores path: they get zero weights.
    (dict(num_heads=2, key_dim=3), dict(query_mask=True, value_mask=True,
                                        return_attention_scores=True), None),
    (dict(num_heads=2, key_dim=3, dropout=0.2), dict(query_mask=True, key_mask=True,
                                                     attention_mask=True), (2, 4, 3)),
    (dict(num_heads=3, key_dim=2, value_dim=4, use_gate=True, output_shape=(2, 3)),
     dict(use_causal_mask=True, return_attention_scores=True), (2, 4, 5)),
    (dict(num_heads=2, key_dim=3, use_bias=False, sliding_window=2),
     dict(use_causal_mask=True, value_mask=True), None),
])
def test_multi_head_attention_matches_keras(config, call, k_shape):
    ours, theirs, inputs = _mha_case(config, k_shape=k_shape)
    ours_kwargs, keras_kwargs = {}, {}
    attention = np.ones((2, 5, 4), bool)
    attention[0, 1, :] = False
    attention[1, :, 2] = False
    for name, value in (("value_mask", V_MASK), ("key_mask", V_MASK),
                        ("attention_mask", attention)):
        if call.get(name):
            ours_kwargs[name] = keras_kwargs[name] = jnp.asarray(value)
    if call.get("query_mask"):
        # Keras reads the query's mask off the tensor; folded into attention_mask it is the
        # same computation. Ours receives it as a model would pass it.
        ours_kwargs["mask"] = jnp.asarray(Q_MASK)
        folded = np.broadcast_to(Q_MASK[:, :, None], (2, 5, 4))
        keras_kwargs["attention_mask"] = jnp.asarray(folded & keras_kwargs.get(
            "attention_mask", True))
    for name in ("use_causal_mask", "return_attention_scores"):
        if call.get(name):
            ours_kwargs[name] = keras_kwargs[name] = True
    out = compare(ours, theirs, inputs, (), ours_kwargs, keras_kwargs)
    heads = config["num_heads"]
    assert out[0].shape == (2, 5) + tuple(config.get("output_shape", (6,)))
    if call.get("return_attention_scores"):
        assert out[1].shape == (2, heads, 5, 4)


def test_multi_head_attention_attention_axes_and_training():
    config = dict(num_heads=2, key_dim=3, attention_axes=(1, 2))
    ours, theirs, inputs = _mha_case(config, (2, 3, 4, 6), (2, 3, 4, 5))
    compare(ours, theirs, inputs, (), {"return_attention_scores": True},
            {"return_attention_scores": True})
    # Dropout: inference above equals Keras; training with rate 0 equals inference; with a
    # rate it drops (and the returned scores are the weights before dropout, as Keras).
    q, v = inputs
    layer = L.MultiHeadAttention(2, 3, dropout=0.5)
    layer(q[:, 0], v[:, 0])
    w = layer._weight_values()
    rng = jax.random.PRNGKey(1)
    infer = layer.apply(w, q[:, 0], v[:, 0], return_attention_scores=True)[0]
    train = layer.apply(w, q[:, 0], v[:, 0], return_attention_scores=True, training=True,
                        rng=rng)[0]
    np.testing.assert_allclose(np.asarray(train[1]), np.asarray(infer[1]), rtol=1e-6)
    assert not np.allclose(np.asarray(train[0]), np.asarray(infer[0]))
    quiet = L.MultiHeadAttention.from_config({**layer.get_config(), "dropout": 0.0})
    quiet(q[:, 0], v[:, 0])
    np.testing.assert_array_equal(
        np.asarray(quiet.apply(w, q[:, 0], v[:, 0], training=True, rng=rng)[0]),
        np.asarray(quiet.apply(w, q[:, 0], v[:, 0])[0]))


def test_multi_head_attention_shapes_config_axes_and_errors():
    ours = L.MultiHeadAttention(num_heads=2, key_dim=4, output_shape=3)
    theirs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, output_shape=3)
    assert symbolic_shapes(ours, (5, 6), (5, 7)) == symbolic_shapes(theirs, (5, 6), (5, 7))
    ours, theirs = L.MultiHeadAttention(2, 4), keras.layers.MultiHeadAttention(2, 4)
    kw = {"return_attention_scores": True}
    assert (symbolic_shapes(ours, (5, 6), (5, 7), **kw)
            == symbolic_shapes(theirs, (5, 6), (5, 7), **kw) == [(None, 5, 6), (None, 2, 5, 5)])
    assert [v.path for v in ours.weights] and list(ours.weight_specs) == [
        f"{s}/{w}" for s in ("query", "key", "value", "attention_output")
        for w in ("kernel", "bias")]
    axes = {p: s.axes for p, s in ours.weight_specs.items()}
    assert axes["query/kernel"] == ("embed", "heads", None)
    assert axes["value/bias"] == ("heads", None)
    assert axes["attention_output/kernel"] == ("heads", None, "embed")
    clone = round_trip(L.MultiHeadAttention(3, 2, value_dim=5, dropout=0.1, use_gate=True,
                                            output_shape=(4,), attention_axes=(1,),
                                            sliding_window=3, seed=5))
    assert (clone.value_dim, clone.output_shape_arg, clone.use_gate) == (5, (4,), True)
    key = L.MultiHeadAttention(2, 4, name="mha")
    with pytest.raises(ValueError, match=r"Layer 'mha' \(MultiHeadAttention\): all dimensions "
                                         r"of `value` and `key`, except the last one, must be "
                                         r"equal. Received: value.shape=\(None, 5, 7\)"):
        key(hn.Input((5, 6)), hn.Input((5, 7)), hn.Input((4, 7)))
    with pytest.raises(ValueError, match=r"`num_heads` must be a positive int. "
                                         r"Received: num_heads=0"):
        L.MultiHeadAttention(0, 4)


# ======================================================================= in models

def _keras_twin(build):
    """The same functional model in both libraries, with Keras' weights copied into ours."""
    theirs, ours = build(keras), build(hn)
    theirs.set_weights([rand(10 + i, w.shape, 0.3) for i, w in enumerate(theirs.weights)])
    ours.set_weights(theirs.get_weights())
    return ours, theirs


def _tokens(n=32, steps=6, vocab=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, steps))
    lengths = rng.integers(2, steps + 1, n)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0  # right padding, masked
    y = (x.sum(1) % 2).astype("int32")
    return x.astype("int32"), y


def _fit_a_few_steps(model, x, y, batch_size=8):
    model.compile(hn.optimizers.Adam(0.01),
                  hn.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=batch_size, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_gru_model_with_embedding_mask_matches_keras_and_fits():
    def build(m):
        inp = m.Input((6,), dtype="int32")
        h = m.layers.Embedding(12, 4, mask_zero=True)(inp)
        h = m.layers.Bidirectional(m.layers.GRU(3, return_sequences=True))(h)
        h = m.layers.SimpleRNN(3, go_backwards=True)(h)
        return m.Model(inp, m.layers.Dense(2)(h))
    ours, theirs = _keras_twin(build)
    x, y = _tokens()
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                               rtol=TOL, atol=TOL)
    _fit_a_few_steps(ours, x, y)


def test_attention_block_with_masks_matches_keras_and_fits():
    def build(m):
        inp = m.Input((6,), dtype="int32")
        e = m.layers.Embedding(12, 8, mask_zero=True)(inp)
        a = m.layers.MultiHeadAttention(2, 4)(e, e)
        h = m.layers.LayerNormalization()(m.layers.Add()([e, a]))
        h = m.layers.TimeDistributed(m.layers.Dense(4, activation="relu"))(h)
        return m.Model(inp, m.layers.Dense(2)(m.layers.GRU(4)(h)))
    ours, theirs = _keras_twin(build)
    x, y = _tokens(seed=1)
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                               rtol=TOL, atol=TOL)
    _fit_a_few_steps(ours, x, y)


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
                     hn.strategies.ModelParallel(model=2)):
        model = build()
        model.compile(hn.optimizers.SGD(0.1),
                      hn.losses.SparseCategoricalCrossentropy(from_logits=True),
                      strategy=strategy)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
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
