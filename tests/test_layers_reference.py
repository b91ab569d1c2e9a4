"""Every layer against an independent plain jax.numpy reference: forward outputs and
gradients (w.r.t. the inputs and every trainable weight) agree within 1e-5 in fp32.

The gradient check differentiates ``sum(output * P)`` for a fixed random projection P.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridnet import layers as L

RTOL = ATOL = 1e-5
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def rand(seed, shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def random_weights(layer, seed=0, scale=0.5):
    """Random values for every declared weight (biases non-zero, variances positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in layer.weight_specs.items():
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, spec.shape)
        else:
            value = rng.normal(size=spec.shape) * scale
        out[name] = jnp.asarray(value, spec.dtype)
    return out


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    assert a_tree == e_tree, f"structure {a_tree} != {e_tree}"
    for a, e in zip(a_leaves, e_leaves):
        assert np.shape(a) == np.shape(e), f"shape {np.shape(a)} != {np.shape(e)}"
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def check_fn(fn, ref, weights, trainable, inputs, *, grad_inputs=True, seed=123):
    """``fn(weights, inputs)`` vs ``ref(weights, inputs)``: outputs and gradients.

    ``trainable`` names the weights to differentiate; the others stay fixed. Both
    sides return their outputs and the vector-Jacobian product with a fixed random
    projection P (= the gradient of ``sum(out * P)``), in one compiled program.
    """
    train = {n: weights[n] for n in trainable}
    fixed = {n: v for n, v in weights.items() if n not in train}
    shapes = jax.eval_shape(lambda w, x: ref({**fixed, **w}, x), train, inputs)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    projection = treedef.unflatten([rand(seed + i, s.shape) for i, s in enumerate(leaves)])

    def value_and_grads(f, w, x):
        if grad_inputs:
            out, vjp = jax.vjp(lambda w, x: f({**fixed, **w}, x), w, x)
            return out, vjp(projection)
        out, vjp = jax.vjp(lambda w: f({**fixed, **w}, x), w)
        return out, vjp(projection)[0]

    def both(w, x):
        return value_and_grads(fn, w, x), value_and_grads(ref, w, x)
    # One compiled program per check, with cheap backend optimisation: these are
    # tiny shapes and compile time dominates the run time.
    lowered = jax.jit(both).lower(train, inputs)
    try:
        compiled = lowered.compile(compiler_options=_FAST_COMPILE)
    except Exception:  # an XLA build without these options
        compiled = lowered.compile()
    (out, grads), (expected, expected_grads) = compiled(train, inputs)
    assert_close(out, expected)
    assert_close(grads, expected_grads)
    return out


def check_layer(layer, inputs, ref, *, weights=None, grad_inputs=True, **call_kwargs):
    """Builds ``layer`` for ``inputs`` (if needed), then :func:`check_fn` on ``layer.apply``."""
    shape = jax.tree_util.tree_map(lambda a: (None,) + tuple(a.shape[1:]), inputs,
                                   is_leaf=lambda a: hasattr(a, "shape"))
    layer._maybe_build(shape)
    if weights is None:
        weights = random_weights(layer)
    trainable = [n for n, s in layer.weight_specs.items() if s.trainable]

    def fn(w, x):
        return layer.apply(w, x, **call_kwargs)[0]
    return check_fn(fn, ref, weights, trainable, inputs, grad_inputs=grad_inputs)


# =============================================================== core layers


def test_dense():
    x = rand(1, (3, 5))
    check_layer(L.Dense(4, activation="tanh"), x,
                lambda w, x: jnp.tanh(x @ w["kernel"] + w["bias"]))
    x3 = rand(2, (2, 3, 5))
    check_layer(L.Dense(4, use_bias=False), x3, lambda w, x: jnp.einsum("btf,fu->btu", x,
                                                                         w["kernel"]))


def _erf_gelu(x):
    return 0.5 * x * (1.0 + jax.scipy.special.erf(x / np.sqrt(2.0)))


ACTIVATION_REFS = {
    "relu": lambda x: jnp.maximum(x, 0.0),
    "tanh": lambda x: (jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x)),
    "sigmoid": lambda x: 1.0 / (1.0 + jnp.exp(-x)),
    "softmax": lambda x: jnp.exp(x - x.max(-1, keepdims=True)) / jnp.sum(
        jnp.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True),
    "gelu": _erf_gelu,  # Keras 3: gelu(x, approximate=False)
    "leaky_relu": lambda x: jnp.where(x > 0, x, 0.2 * x),  # Keras 3: negative_slope=0.2
    "linear": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFS))
def test_activation(name):
    x = rand(3, (4, 6), 2.0)
    check_layer(L.Activation(name), x, lambda w, x: ACTIVATION_REFS[name](x))


def test_flatten_reshape():
    x = rand(4, (2, 3, 4, 5))
    check_layer(L.Flatten(), x, lambda w, x: x.reshape(2, 60))
    check_layer(L.Reshape((4, -1)), x, lambda w, x: x.reshape(2, 4, 15))
    check_layer(L.Reshape((60,)), x, lambda w, x: x.reshape(2, 60))


def test_dropout_training_and_inference():
    x = rand(5, (8, 50)) + 3.0  # no exact zeros
    layer = L.Dropout(0.3)
    check_layer(layer, x, lambda w, x: x)  # inference: identity
    rng = jax.random.PRNGKey(0)
    out = layer.apply({}, x, training=True, rng=rng)[0]
    keep = np.asarray(out) != 0
    assert 0.5 < keep.mean() < 0.9
    check_layer(layer, x, lambda w, x: jnp.where(keep, x / 0.7, 0.0), training=True, rng=rng)
    np.testing.assert_array_equal(  # deterministic for a given rng
        np.asarray(layer.apply({}, x, training=True, rng=rng)[0]), np.asarray(out))
    with pytest.raises(ValueError, match="rng"):
        layer.apply({}, x, training=True)


# ==================================================================== conv2d
def _same_pads(n, k, s, d):
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def ref_conv2d(x, w, b, strides, padding, dilation):
    """Sum over kernel taps of shifted, strided slices times the tap's (Cin, Cout) matrix."""
    _, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    (sh, sw), (dh, dw) = strides, dilation
    if padding == "same":
        ph, pw = _same_pads(h, kh, sh, dh), _same_pads(wd, kw, sw, dw)
        x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    hp, wp = x.shape[1:3]
    oh = (hp - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wp - (dw * (kw - 1) + 1)) // sw + 1
    y = 0.0
    for a in range(kh):
        for c in range(kw):
            patch = x[:, a * dh: a * dh + sh * (oh - 1) + 1: sh,
                      c * dw: c * dw + sw * (ow - 1) + 1: sw, :]
            y = y + jnp.einsum("bhwi,io->bhwo", patch, w[a, c])
    return y if b is None else y + b


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (4, 1), (1, 2)])
def test_conv2d(padding, strides, dilation):
    x = rand(6, (2, 9, 10, 3))
    layer = L.Conv2D(4, (3, 2), strides=strides, padding=padding, dilation_rate=dilation,
                     activation="relu")
    s = layer.strides
    d = layer.dilation_rate
    out = check_layer(layer, x, lambda w, x: jax.nn.relu(
        ref_conv2d(x, w["kernel"], w["bias"], s, padding, d)))
    assert out.shape[1:] == layer.compute_output_shape((None, 9, 10, 3))[1:]


@pytest.mark.parametrize("strides,dilation,padding", [((1, 2), 1, "same"),
                                                      (1, (2, 1), "valid")])
def test_conv2d_no_bias_mixed_and_auto_kernel(strides, dilation, padding):
    x = rand(7, (1, 6, 5, 2))
    layer = L.Conv2D(3, 3, strides=strides, padding=padding, dilation_rate=dilation,
                     use_bias=False, kernel="auto")
    check_layer(layer, x, lambda w, x: ref_conv2d(x, w["kernel"], None, layer.strides, padding,
                                                  layer.dilation_rate))
    assert list(layer.weight_specs) == ["kernel"]
    assert layer.weight_specs["kernel"].axes == ("kernel_h", "kernel_w", "conv_in", "conv_out")
    assert layer.get_config()["kernel"] == "auto"


# =================================================================== pooling
def ref_pool(x, pool, strides, padding, mode):
    """Gathers every window position explicitly and reduces."""
    _, h, wd, _ = x.shape
    (ph_, pw_), (sh, sw) = pool, strides
    if padding == "same":
        ph, pw = _same_pads(h, ph_, sh, 1), _same_pads(wd, pw_, sw, 1)
    else:
        ph = pw = (0, 0)
    fill = -jnp.inf if mode == "max" else 0.0
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=fill)
    valid = jnp.pad(jnp.ones((1, h, wd, 1)), ((0, 0), ph, pw, (0, 0)))
    oh = (xp.shape[1] - ph_) // sh + 1
    ow = (xp.shape[2] - pw_) // sw + 1
    taps, counts = [], []
    for a in range(ph_):
        for c in range(pw_):
            taps.append(xp[:, a: a + sh * (oh - 1) + 1: sh, c: c + sw * (ow - 1) + 1: sw])
            counts.append(valid[:, a: a + sh * (oh - 1) + 1: sh, c: c + sw * (ow - 1) + 1: sw])
    taps = jnp.stack(taps)
    if mode == "max":
        return jnp.max(taps, axis=0)
    return jnp.sum(taps, axis=0) / jnp.sum(jnp.stack(counts), axis=0)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("pool,strides", [((2, 2), None), ((3, 2), (2, 3))])
def test_pooling2d(mode, padding, pool, strides):
    x = rand(8, (2, 7, 9, 3))
    cls = L.MaxPooling2D if mode == "max" else L.AveragePooling2D
    layer = cls(pool, strides=strides, padding=padding)
    out = check_layer(layer, x, lambda w, x: ref_pool(x, layer.pool_size, layer.strides,
                                                       padding, mode))
    assert out.shape[1:] == layer.compute_output_shape((None, 7, 9, 3))[1:]


def test_average_pooling_same_counts_only_valid_positions():
    x = jnp.ones((1, 3, 3, 1))
    out = L.AveragePooling2D(2, padding="same").apply({}, x)[0]
    np.testing.assert_allclose(np.asarray(out), np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(keepdims):
    x = rand(9, (2, 3, 5, 4))
    check_layer(L.GlobalAveragePooling2D(keepdims=keepdims), x,
                lambda w, x: (x.sum((1, 2), keepdims=keepdims) / 15.0))
    check_layer(L.GlobalMaxPooling2D(keepdims=keepdims), x,
                lambda w, x: x.max((1, 2), keepdims=keepdims))


@pytest.mark.parametrize("padding,pads", [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                                          (((1, 2), (3, 0)), ((1, 2), (3, 0)))])
def test_zero_padding2d(padding, pads):
    x = rand(10, (2, 3, 4, 2))
    (t, b), (l, r) = pads

    def ref(w, x):
        out = jnp.zeros((2, 3 + t + b, 4 + l + r, 2))
        return out.at[:, t:t + 3, l:l + 4, :].set(x)
    layer = L.ZeroPadding2D(padding)
    check_layer(layer, x, ref)
    assert layer.compute_output_shape((None, 3, None, 2)) == (None, 3 + t + b, None, 2)


# ============================================================= normalization
def ref_bn_train(x, gamma, beta, axis, eps=1e-3):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    n = np.prod([x.shape[i] for i in axes])
    mean = jnp.sum(x, axes, keepdims=True) / n
    var = jnp.sum((x - mean) ** 2, axes, keepdims=True) / n
    shape = [1] * x.ndim
    shape[axis] = -1
    y = (x - mean) / jnp.sqrt(var + eps)
    return y * gamma.reshape(shape) + beta.reshape(shape), mean.reshape(-1), var.reshape(-1)


@pytest.mark.parametrize("axis,shape", [(-1, (6, 3)), (-1, (2, 3, 4, 5)), (1, (4, 3, 5))])
def test_batch_normalization(axis, shape):
    x = rand(11, shape) * 2 + 1
    layer = L.BatchNormalization(axis=axis)
    layer._maybe_build((None,) + shape[1:])
    w = random_weights(layer)
    assert [n for n, s in layer.weight_specs.items() if s.trainable] == ["gamma", "beta"]
    # training: batch statistics, and the moving statistics are returned updated
    check_layer(layer, x, lambda w, x: ref_bn_train(x, w["gamma"], w["beta"], axis)[0],
                weights=w, training=True)
    _, updates = layer.apply(w, x, training=True)
    _, mean, var = ref_bn_train(x, w["gamma"], w["beta"], axis)
    assert_close(updates, {"moving_mean": 0.99 * w["moving_mean"] + 0.01 * mean,
                           "moving_variance": 0.99 * w["moving_variance"] + 0.01 * var})
    # inference: moving statistics, no updates
    bshape = [1] * len(shape)
    bshape[axis] = -1

    def ref_infer(w, x):
        return ((x - w["moving_mean"].reshape(bshape))
                / jnp.sqrt(w["moving_variance"].reshape(bshape) + 1e-3)
                * w["gamma"].reshape(bshape) + w["beta"].reshape(bshape))
    check_layer(layer, x, ref_infer, weights=w, training=False)
    assert layer.apply(w, x, training=False)[1] == {}


def test_batch_normalization_options_and_mask():
    x = rand(12, (3, 4, 2)) + 0.5
    layer = L.BatchNormalization(center=False, scale=False, momentum=0.9, epsilon=1e-2)
    layer._maybe_build((None, 4, 2))
    assert list(layer.weight_specs) == ["moving_mean", "moving_variance"]
    w = random_weights(layer)
    check_layer(layer, x, lambda w, x: ref_bn_train(x, jnp.ones(2), jnp.zeros(2), -1,
                                                    eps=1e-2)[0], weights=w, training=True)
    # masked moments: statistics over unmasked positions only
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    xs = x[mask]  # (7, 2)
    mean = xs.mean(0)
    var = ((xs - mean) ** 2).mean(0)
    out, upd = layer.apply(w, x, training=True, mask=mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray((x - mean) / jnp.sqrt(var + 1e-2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["moving_mean"]),
                               np.asarray(0.9 * w["moving_mean"] + 0.1 * mean), rtol=1e-5,
                               atol=1e-6)
    # a non-trainable BN uses the moving statistics even in training (Keras)
    frozen = L.BatchNormalization(trainable=False)
    frozen._maybe_build((None, 4, 2))
    wf = random_weights(frozen)
    out, upd = frozen.apply(wf, x, training=True)
    assert upd == {}
    np.testing.assert_allclose(np.asarray(out), np.asarray(
        (x - wf["moving_mean"]) / jnp.sqrt(wf["moving_variance"] + 1e-3) * wf["gamma"]
        + wf["beta"]), rtol=1e-5, atol=1e-5)


def test_batch_normalization_initial_weights():
    layer = L.BatchNormalization()
    layer._maybe_build((None, 3))
    w = L.init_weights(layer, jax.random.PRNGKey(0))
    assert_close(w, {"gamma": jnp.ones(3), "beta": jnp.zeros(3), "moving_mean": jnp.zeros(3),
                     "moving_variance": jnp.ones(3)})
    assert layer.momentum == 0.99 and layer.epsilon == 1e-3
    assert all(s.axes == ("norm",) for s in layer.weight_specs.values())


@pytest.mark.parametrize("axis,shape", [(-1, (3, 6)), (-1, (2, 3, 5)), ([1, 2], (2, 3, 4))])
def test_layer_normalization(axis, shape):
    x = rand(13, shape) * 3 + 1
    axes = tuple(a % len(shape) for a in (axis if isinstance(axis, list) else [axis]))

    def ref(w, x):
        n = np.prod([x.shape[a] for a in axes])
        mean = jnp.sum(x, axes, keepdims=True) / n
        var = jnp.sum((x - mean) ** 2, axes, keepdims=True) / n
        bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
        return ((x - mean) / jnp.sqrt(var + 1e-3) * w["gamma"].reshape(bshape)
                + w["beta"].reshape(bshape))
    check_layer(L.LayerNormalization(axis=axis), x, ref)


def test_layer_normalization_no_center_scale():
    x = rand(14, (3, 5))
    layer = L.LayerNormalization(center=False, scale=False, epsilon=1e-5)
    check_layer(layer, x, lambda w, x: (x - x.mean(-1, keepdims=True)) / jnp.sqrt(
        x.var(-1, keepdims=True) + 1e-5))
    assert layer.weight_specs == {}


# ================================================================= embedding
def test_embedding_lookup_and_mask():
    ids = jnp.array([[1, 4, 2, 0, 0], [3, 3, 9, 1, 0]], jnp.int32)
    layer = L.Embedding(10, 6, mask_zero=True)
    check_layer(layer, ids, lambda w, ids: jax.nn.one_hot(ids, 10) @ w["embeddings"],
                grad_inputs=False)
    mask = layer.compute_mask(ids, None)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ids) != 0)
    assert L.Embedding(10, 6).compute_mask(ids, None) is None
    out = layer.apply(random_weights(layer), ids.astype(jnp.int64 if jax.config.jax_enable_x64
                                                        else jnp.int32))[0]
    assert out.dtype == jnp.float32
    assert layer.weight_specs["embeddings"].axes == ("vocab", "embed")


def test_embedding_initializer_range():
    layer = L.Embedding(50, 40)
    layer._maybe_build((None, 3))
    table = np.asarray(L.init_weights(layer, jax.random.PRNGKey(1))["embeddings"])
    assert table.shape == (50, 40)
    assert -0.05 <= table.min() < -0.04 and 0.04 < table.max() <= 0.05


# =================================================================== merging
def test_merging_layers():
    a, b, c = rand(15, (2, 3, 4)), rand(16, (2, 3, 4)), rand(17, (2, 3, 1))
    check_layer(L.Add(), [a, b, c], lambda w, xs: xs[0] + xs[1] + xs[2])
    check_layer(L.Multiply(), [a, b], lambda w, xs: xs[0] * xs[1])
    check_layer(L.Average(), [a, b], lambda w, xs: (xs[0] + xs[1]) * 0.5)
    d = rand(18, (2, 3, 2))
    check_layer(L.Concatenate(), [a, d], lambda w, xs: jnp.concatenate(xs, -1))
    check_layer(L.Concatenate(axis=1), [a, b], lambda w, xs: jnp.concatenate(xs, 1))


def test_merging_masks():
    a, b = rand(19, (2, 3, 4)), rand(20, (2, 3, 2))
    ma = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    mb = jnp.array([[1, 0, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(L.Add().compute_mask([a, a], [ma, mb]), ma | mb)
    assert L.Add().compute_mask([a, a], [ma, None]) is None
    assert L.Add().compute_mask([a, a], None) is None
    # Concatenate on the last axis: a position is kept if any input keeps it
    np.testing.assert_array_equal(L.Concatenate().compute_mask([a, b], [ma, None]),
                                  np.ones((2, 3), bool))
    np.testing.assert_array_equal(L.Concatenate().compute_mask([a, b], [ma, mb]), ma | mb)
    # on the time axis the masks are concatenated
    out = L.Concatenate(axis=1).compute_mask([a, a], [ma, None])
    np.testing.assert_array_equal(out, np.concatenate([ma, np.ones((2, 3), bool)], 1))


# ================================================================= attention
def ref_attention(q, v, k=None, q_mask=None, v_mask=None, causal=False, scale=None,
                  concat_w=None):
    k = v if k is None else k
    if concat_w is None:
        scores = jnp.einsum("bqd,bkd->bqk", q, k)
        if scale is not None:
            scores = scores * scale
    else:
        s = q[:, :, None, :] + k[:, None, :, :]
        if scale is not None:
            s = s * scale
        scores = concat_w * jnp.tanh(s).sum(-1)
    allowed = jnp.ones(scores.shape, bool)
    if v_mask is not None:
        allowed = allowed & v_mask[:, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones(scores.shape[1:], bool))[None]
    scores = jnp.where(allowed, scores, -jnp.inf)
    e = jnp.exp(scores - scores.max(-1, keepdims=True))
    attn = e / e.sum(-1, keepdims=True)
    out = jnp.einsum("bqk,bkd->bqd", attn, v)
    if q_mask is not None:
        out = out * q_mask[:, :, None]
    return out, attn


@pytest.mark.parametrize("use_scale,score_mode", [(False, "dot"), (True, "concat")])
def test_attention_basic(use_scale, score_mode):
    q, v, k = rand(21, (2, 4, 3)), rand(22, (2, 5, 3)), rand(23, (2, 5, 3))
    layer = L.Attention(use_scale=use_scale, score_mode=score_mode)

    def ref(w, xs):
        return ref_attention(*xs, scale=w.get("scale"), concat_w=w.get("concat_score_weight"))[0]
    check_layer(layer, [q, v, k], ref)
    check_layer(layer, [q, v], ref)


def test_attention_masks_causal_and_scores():
    q, v = rand(24, (2, 5, 3)), rand(25, (2, 5, 3))
    q_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    v_mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    layer = L.Attention(use_scale=True)
    for causal in (False, True):
        check_layer(layer, [q, v], lambda w, xs: list(ref_attention(
            *xs, q_mask=q_mask, v_mask=v_mask, causal=causal, scale=w["scale"])),
            mask=[q_mask, v_mask], use_causal_mask=causal, return_attention_scores=True)
    check_layer(layer, [q, v], lambda w, xs: ref_attention(*xs, v_mask=v_mask,
                                                           scale=w["scale"])[0],
                mask=[None, v_mask])
    assert layer.compute_mask([q, v], [q_mask, v_mask]) is q_mask


def test_attention_dropout():
    q, v = rand(26, (2, 4, 3)), rand(27, (2, 6, 3))
    layer = L.Attention(dropout=0.5)
    layer._maybe_build([(None, 4, 3), (None, 6, 3)])
    rng = jax.random.PRNGKey(3)
    out, scores = layer.apply({}, [q, v], training=True, rng=rng,
                              return_attention_scores=True)[0]
    _, attn = ref_attention(q, v)
    keep = np.asarray(scores) != 0
    assert 0.2 < keep.mean() < 0.8
    assert_close(scores, jnp.where(keep, attn / 0.5, 0.0))
    assert_close(out, jnp.einsum("bqk,bkd->bqd", scores, v))
    check_layer(layer, [q, v], lambda w, xs: ref_attention(*xs)[0], training=False)


# ====================================================================== LSTM
def ref_lstm(w, x, *, mask=None, h0=None, c0=None, go_backwards=False, zero_output=False,
             return_sequences=False, return_state=False, prefix=""):
    """One LSTM step per scan iteration, per-gate matmuls (gate order i, f, c, o).

    Keras 3 semantics: masked steps carry h and c over and output the previous h
    (or zeros with ``zero_output``); ``go_backwards`` processes the flipped
    sequence and returns outputs in processing (reversed) order.
    """
    kernel, rec = w[prefix + "kernel"], w[prefix + "recurrent_kernel"]
    bias = w.get(prefix + "bias", jnp.zeros(kernel.shape[1]))
    b, t_len, _ = x.shape
    u = rec.shape[0]
    h = jnp.zeros((b, u)) if h0 is None else h0
    c = jnp.zeros((b, u)) if c0 is None else c0
    m = jnp.ones((b, t_len), bool) if mask is None else mask
    if go_backwards:
        x, m = x[:, ::-1], m[:, ::-1]

    def gate(xt, h, g):
        sl = slice(g * u, (g + 1) * u)
        return xt @ kernel[:, sl] + h @ rec[:, sl] + bias[sl]

    def step(carry, inp):
        h, c = carry
        xt, mt = inp
        i = jax.nn.sigmoid(gate(xt, h, 0))
        f = jax.nn.sigmoid(gate(xt, h, 1))
        g = jnp.tanh(gate(xt, h, 2))
        o = jax.nn.sigmoid(gate(xt, h, 3))
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        mt = mt[:, None]
        out = jnp.where(mt, h_new, 0.0 if zero_output else h)
        return (jnp.where(mt, h_new, h), jnp.where(mt, c_new, c)), out
    (h, c), outs = jax.lax.scan(step, (h, c), (jnp.moveaxis(x, 1, 0), m.T))
    output = jnp.moveaxis(outs, 0, 1) if return_sequences else outs[-1]
    return [output, h, c] if return_state else output


MASK = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)  # right-padded


@pytest.mark.parametrize("return_sequences,return_state,go_backwards,masked", [
    (False, False, False, False), (True, True, False, True), (True, True, True, True),
    (False, True, True, False)])
def test_lstm(return_sequences, return_state, go_backwards, masked):
    x = rand(30, (3, 5, 2))
    layer = L.LSTM(4, return_sequences=return_sequences, return_state=return_state,
                   go_backwards=go_backwards)
    mask = MASK if masked else None
    kwargs = {"mask": mask} if masked else {}
    out = check_layer(layer, x, lambda w, x: ref_lstm(
        w, x, mask=mask, go_backwards=go_backwards, return_sequences=return_sequences,
        return_state=return_state), **kwargs)
    shapes = layer.compute_output_shape((None, 5, 2))
    got = [o.shape for o in out] if return_state else out.shape
    want = ([(3,) + s[1:] for s in shapes] if return_state else (3,) + shapes[1:])
    assert got == want
    if masked and return_sequences and not go_backwards:
        seq = np.asarray(out[0])  # masked steps repeat the last valid output
        np.testing.assert_allclose(seq[0, 3], seq[0, 2])
        np.testing.assert_allclose(seq[2, 4], seq[2, 0])
        np.testing.assert_allclose(np.asarray(out[1])[0], seq[0, 2])


def test_lstm_initial_state_gradients():
    x, h0, c0 = rand(31, (3, 5, 2)), rand(32, (3, 4)), rand(33, (3, 4))
    layer = L.LSTM(4, return_sequences=True, return_state=True, use_bias=False)
    layer._maybe_build((None, 5, 2))
    assert "bias" not in layer.weight_specs
    w = random_weights(layer)

    def fn(w, xs):
        return layer.apply(w, xs[0], initial_state=[xs[1], xs[2]], mask=MASK)[0]

    def ref(w, xs):
        return ref_lstm(w, xs[0], h0=xs[1], c0=xs[2], mask=MASK, return_sequences=True,
                        return_state=True)
    check_fn(fn, ref, w, ["kernel", "recurrent_kernel"], (x, h0, c0))


def test_lstm_dropout_masks_shared_over_time():
    x = rand(34, (3, 5, 2))
    layer = L.LSTM(4, dropout=0.5, recurrent_dropout=0.25, return_sequences=True)
    layer._maybe_build((None, 5, 2))
    w = random_weights(layer)
    rng = jax.random.PRNGKey(7)
    out = layer.apply(w, x, training=True, rng=rng)[0]
    # reference: one input mask (B, 1, F) and one recurrent mask (B, U) for all steps,
    # from the layer's first draw of the call's key (see SeedGenerator.next)
    draw = jax.random.fold_in(jax.random.fold_in(rng, 1), layer.seed_generator.seed)
    k_in, k_rec = jax.random.split(draw)
    keep_x = jax.random.bernoulli(k_in, 0.5, (3, 1, 2))
    keep_h = jax.random.bernoulli(k_rec, 0.75, (3, 4)) / 0.75
    xd = jnp.where(keep_x, x / 0.5, 0.0)
    kernel, rec, bias = w["kernel"], w["recurrent_kernel"], w["bias"]
    h = c = jnp.zeros((3, 4))
    outs = []
    for t in range(5):
        z = xd[:, t] @ kernel + (h * keep_h) @ rec + bias
        i, f, g, o = jnp.split(z, 4, -1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        outs.append(h)
    assert_close(out, jnp.stack(outs, 1))
    assert_close(layer.apply(w, x, training=False)[0],
                 ref_lstm(w, x, return_sequences=True))


def test_lstm_initial_weights():
    layer = L.LSTM(3)
    layer._maybe_build((None, 4, 5))
    w = L.init_weights(layer, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(w["bias"]), [0] * 3 + [1] * 3 + [0] * 6)
    rec = np.asarray(w["recurrent_kernel"])
    assert rec.shape == (3, 12)
    np.testing.assert_allclose(rec @ rec.T, np.eye(3), atol=1e-5)  # orthogonal rows
    assert layer.weight_specs["kernel"].axes == ("embed", "lstm_gates")
    assert layer.weight_specs["recurrent_kernel"].axes == ("lstm_hidden", "lstm_gates")
    assert layer.weight_specs["bias"].axes == ("lstm_gates",)
    assert layer.compute_mask(None, MASK) is None
    seq = L.LSTM(3, return_sequences=True, return_state=True)
    out_mask = seq.compute_mask(None, MASK)
    assert out_mask[0] is MASK and out_mask[1:] == [None, None]


# ============================================================= Bidirectional
def _merge(y, y_rev, mode):
    return {"concat": lambda: [jnp.concatenate([y, y_rev], -1)], "sum": lambda: [y + y_rev],
            "mul": lambda: [y * y_rev], "ave": lambda: [(y + y_rev) / 2],
            None: lambda: [y, y_rev]}[mode]()


def ref_bidirectional(w, x, mode, return_sequences, return_state, mask=None, states=None):
    states = states or [None] * 4
    common = dict(mask=mask, return_sequences=return_sequences, return_state=True,
                  zero_output=return_sequences)
    y, hf, cf = ref_lstm(w, x, h0=states[0], c0=states[1], prefix="forward_", **common)
    y_rev, hb, cb = ref_lstm(w, x, h0=states[2], c0=states[3], go_backwards=True,
                             prefix="backward_", **common)
    if return_sequences:
        y_rev = jnp.flip(y_rev, 1)
    out = _merge(y, y_rev, mode) + ([hf, cf, hb, cb] if return_state else [])
    return out[0] if len(out) == 1 else out


@pytest.mark.parametrize("mode,return_sequences,return_state,masked", [
    ("concat", True, False, True), ("sum", False, True, True), (None, True, True, False)])
def test_bidirectional(mode, return_sequences, return_state, masked):
    x = rand(35, (3, 5, 2))
    layer = L.Bidirectional(L.LSTM(4, return_sequences=return_sequences,
                                   return_state=return_state), merge_mode=mode)
    mask = MASK if masked else None
    kwargs = {"mask": mask} if masked else {}
    out = check_layer(layer, x, lambda w, x: ref_bidirectional(
        w, x, mode, return_sequences, return_state, mask=mask), **kwargs)
    shapes = layer.compute_output_shape((None, 5, 2))
    outs = out if isinstance(out, list) else [out]
    shapes = shapes if isinstance(shapes, list) else [shapes]
    assert [o.shape for o in outs] == [(3,) + s[1:] for s in shapes]
    assert sorted(layer.weight_specs) == sorted(
        p + n for p in ("forward_", "backward_") for n in ("kernel", "recurrent_kernel", "bias"))


def test_bidirectional_initial_state_and_mask_output():
    x, states = rand(36, (3, 5, 2)), [rand(37 + i, (3, 4)) for i in range(4)]
    layer = L.Bidirectional(L.LSTM(4, return_sequences=True, return_state=True))
    layer._maybe_build((None, 5, 2))
    w = random_weights(layer)
    trainable = list(layer.weight_specs)

    def fn(w, xs):
        return layer.apply(w, xs[0], initial_state=list(xs[1:]), mask=MASK)[0]

    def ref(w, xs):
        return ref_bidirectional(w, xs[0], "concat", True, True, mask=MASK, states=list(xs[1:]))
    out = check_fn(fn, ref, w, trainable, (x, *states))
    # zero_output_for_mask is forced on when returning sequences
    assert float(jnp.abs(out[0][0, 3:]).max()) == 0.0
    assert layer.compute_mask(x, MASK)[0] is MASK
    assert layer.compute_mask(x, MASK)[1:] == [None] * 4


def test_bidirectional_merge_modes_mul_ave():
    x = rand(41, (3, 5, 2))
    base = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode=None)
    base._maybe_build((None, 5, 2))
    w = random_weights(base)
    y, y_rev = base.apply(w, x, mask=MASK)[0]
    for mode, want in (("mul", y * y_rev), ("ave", (y + y_rev) / 2)):
        layer = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode=mode)
        assert_close(layer.apply(w, x, mask=MASK)[0], want)
