"""Losses, metrics and optimizers against hand-written numpy versions of Keras 3's formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridnet import losses, metrics, optimizers

EPS = 1e-7
RNG = np.random.default_rng(0)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_cce_probs(y, p):
    p = p / p.sum(-1, keepdims=True)
    return -(y * np.log(np.clip(p, EPS, 1 - EPS))).sum(-1)


def np_cce_logits(y, z):
    return -(y * np.log(np_softmax(z))).sum(-1)


def np_bce_probs(y, p):
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)


def np_bce_logits(y, z):
    s = 1 / (1 + np.exp(-z))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s)).mean(-1)


# ----------------------------------------------------------------------------- losses

def test_categorical_crossentropy_probs_logits_and_smoothing():
    y = np.eye(4)[[0, 3, 1, 2, 2]].astype(np.float32)
    probs = RNG.random((5, 4)).astype(np.float32) * 2  # unnormalised on purpose
    probs[0, 0] = 0.0                                  # clipped to 1e-7
    logits = RNG.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.CategoricalCrossentropy()(y, probs),
                               np_cce_probs(y, probs).mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.categorical_crossentropy(y, probs), np_cce_probs(y, probs),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.CategoricalCrossentropy(from_logits=True)(y, logits),
                               np_cce_logits(y, logits).mean(), rtol=1e-5)
    ys = y * 0.9 + 0.1 / 4
    np.testing.assert_allclose(
        losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(y, logits),
        np_cce_logits(ys, logits).mean(), rtol=1e-5)


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_sparse_categorical_crossentropy_label_shapes(label_shape):
    labels = np.array([0, 3, 1, 2, 2])
    logits = RNG.normal(size=(5, 4)).astype(np.float32)
    probs = np_softmax(logits).astype(np.float32)
    y = labels if label_shape == "flat" else labels[:, None]
    expected = np_cce_logits(np.eye(4)[labels], logits)
    np.testing.assert_allclose(losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits),
                               expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.SparseCategoricalCrossentropy()(y, probs),
                               np_cce_probs(np.eye(4)[labels], probs).mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.sparse_categorical_crossentropy(y, logits, from_logits=True),
                               expected, rtol=1e-5)


def test_sparse_categorical_crossentropy_sequences_mask_and_ignore_class():
    labels = RNG.integers(0, 5, size=(3, 4))
    logits = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    per = np_cce_logits(np.eye(5)[labels], logits)                          # (3, 4)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(loss(labels, logits), per.mean(), rtol=1e-5)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    np.testing.assert_allclose(loss(labels, logits, mask=mask), per[mask].mean(), rtol=1e-5)
    # (B,) padding mask on a (B, T) loss: mean over the valid samples' elements.
    np.testing.assert_allclose(loss(labels, logits, mask=np.array([1, 0, 1], bool)),
                               per[[0, 2]].mean(), rtol=1e-5)
    # Mask and (B,) sample weights together.
    sw = np.array([2.0, 1.0, 0.5], np.float32)
    np.testing.assert_allclose(loss(labels, logits, sample_weight=sw, mask=mask),
                               (per * sw[:, None])[mask].sum() / mask.sum(), rtol=1e-5)
    ignored = np.where(mask, labels, -1)
    ign = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    np.testing.assert_allclose(ign(ignored, logits), per[mask].mean(), rtol=1e-5)
    fn = losses.sparse_categorical_crossentropy(ignored, logits, from_logits=True, ignore_class=-1)
    np.testing.assert_allclose(fn, np.where(mask, per, 0), rtol=1e-5, atol=1e-7)


def test_binary_crossentropy():
    y = RNG.integers(0, 2, size=(6, 3)).astype(np.float32)
    p = RNG.random((6, 3)).astype(np.float32)
    p[0, 0] = 1.0
    z = RNG.normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(losses.BinaryCrossentropy()(y, p), np_bce_probs(y, p).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.BinaryCrossentropy(from_logits=True)(y, z),
                               np_bce_logits(y, z).mean(), rtol=1e-5)
    ys = y * 0.8 + 0.1
    np.testing.assert_allclose(losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2)(y, z),
                               np_bce_logits(ys, z).mean(), rtol=1e-5)
    # Labels (B,) against predictions (B, 1): expanded, as Keras.
    np.testing.assert_allclose(losses.BinaryCrossentropy()(y[:, 0], p[:, :1]),
                               np_bce_probs(y[:, :1], p[:, :1]).mean(), rtol=1e-5)


def test_regression_losses_and_reductions():
    y = RNG.normal(size=(4, 3)).astype(np.float32)
    p = RNG.normal(size=(4, 3)).astype(np.float32) * 2
    sq, ab = ((y - p) ** 2).mean(-1), np.abs(y - p).mean(-1)
    e = np.abs(p - y)
    hub = np.where(e <= 1.0, 0.5 * e ** 2, e - 0.5).mean(-1)
    np.testing.assert_allclose(losses.MeanSquaredError()(y, p), sq.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.MeanAbsoluteError()(y, p), ab.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.Huber()(y, p), hub.mean(), rtol=1e-5)
    e2 = np.where(e <= 0.5, 0.5 * e ** 2, 0.5 * e - 0.125).mean(-1)
    np.testing.assert_allclose(losses.Huber(delta=0.5)(y, p), e2.mean(), rtol=1e-5)
    w = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    np.testing.assert_allclose(losses.MeanSquaredError()(y, p, sample_weight=w),
                               (sq * w).sum() / 4, rtol=1e-5)
    np.testing.assert_allclose(losses.MeanSquaredError(reduction="sum")(y, p, sample_weight=w),
                               (sq * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        losses.MeanSquaredError(reduction="mean_with_sample_weight")(y, p, sample_weight=w),
        (sq * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(losses.MeanSquaredError(reduction=None)(y, p, sample_weight=w),
                               sq * w, rtol=1e-5)
    # (B,) targets vs (B, 1) predictions and (B, 1) sample weights.
    np.testing.assert_allclose(losses.mean_squared_error(y[:, 0], p[:, :1]),
                               (y[:, 0] - p[:, 0]) ** 2, rtol=1e-5)
    np.testing.assert_allclose(losses.MeanAbsoluteError()(y, p, sample_weight=w[:, None]),
                               (ab * w).sum() / 4, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        losses.MeanSquaredError(reduction="avg")


def test_loss_get_wrap_serialize_and_jit():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert losses.get("mse").name == "mse"
    assert isinstance(losses.get("sparse_categorical_crossentropy"),
                      losses.SparseCategoricalCrossentropy)
    assert isinstance(losses.get("huber"), losses.Huber)
    custom = losses.get(lambda t, p: jnp.abs(t - p).sum(-1))
    y, p = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    w = np.array([1, 1, 0, 0], np.float32)
    np.testing.assert_allclose(custom(y, p, sample_weight=w), 2 * 2 / 4)
    with pytest.raises(ValueError, match=r"Received: loss='foo'"):
        losses.get("foo")
    with pytest.raises(ValueError, match="mean_squared_error"):
        losses.get("foo")
    for loss in (losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                 losses.SparseCategoricalCrossentropy(ignore_class=0), losses.Huber(delta=2.0)):
        again = losses.deserialize(losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
    assert losses.serialize("mse") == "mse"
    assert losses.serialize(losses.mean_absolute_error) == "mean_absolute_error"
    assert losses.serialize(custom) is None
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    labels, logits = np.array([1, 0, 2]), RNG.normal(size=(3, 3)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(loss.__call__)(labels, logits), loss(labels, logits),
                               rtol=1e-6)
    g = jax.grad(lambda z: loss(labels, z))(jnp.asarray(logits))
    np.testing.assert_allclose(g, (np_softmax(logits) - np.eye(3)[labels]) / 3, atol=1e-6)


# ----------------------------------------------------------------------------- metrics

def test_mean_and_accuracy_accumulate_with_zero_weights():
    m = metrics.SparseCategoricalAccuracy()
    state = m.init()
    assert set(state) == {"total", "count"}
    update = jax.jit(m.update)
    correct, weights = [], []
    for _ in range(3):
        labels = RNG.integers(0, 4, size=(8,))
        probs = RNG.random((8, 4)).astype(np.float32)
        w = RNG.random(8).astype(np.float32)
        w[-2:] = 0.0  # padded samples
        state = update(state, labels[:, None], probs, w)
        correct.append((probs.argmax(-1) == labels).astype(np.float64))
        weights.append(w)
    c, w = np.concatenate(correct), np.concatenate(weights)
    np.testing.assert_allclose(m.result(state), (c * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(state["count"], w.sum(), rtol=1e-5)

    mean = metrics.Mean()
    s = mean.update(mean.init(), jnp.array([1.0, 3, 5, 7]), jnp.array([1.0, 1, 0, 0]))
    s = mean.update(s, jnp.array([10.0]))
    np.testing.assert_allclose(mean.result(s), 14.0 / 3)
    s2 = mean.merge(s, s)
    np.testing.assert_allclose(mean.result(s2), 14.0 / 3)
    # Eager Keras API.
    mean.update_state(jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(mean.result(), 2.0)
    mean.reset_state()
    np.testing.assert_allclose(mean.result(), 0.0)


def test_metric_functions_match_numpy():
    labels = RNG.integers(0, 6, size=(10,))
    onehot = np.eye(6)[labels].astype(np.float32)
    probs = RNG.random((10, 6)).astype(np.float32)
    w = RNG.random(10).astype(np.float32)
    w[0] = 0.0
    rank = (probs > probs[np.arange(10), labels][:, None]).sum(-1) + 1

    def run(metric, y_true, y_pred, sw=None):
        return float(metric.result(metric.update(metric.init(), y_true, y_pred, sw)))

    wm = lambda v: (v * w).sum() / w.sum()  # noqa: E731
    np.testing.assert_allclose(run(metrics.CategoricalAccuracy(), onehot, probs, w),
                               wm(probs.argmax(-1) == labels), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.TopKCategoricalAccuracy(k=3), onehot, probs, w),
                               wm(rank <= 3), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.SparseTopKCategoricalAccuracy(k=2), labels, probs),
                               (rank <= 2).mean(), rtol=1e-5)
    yb = RNG.integers(0, 2, size=(10, 1)).astype(np.float32)
    pb = RNG.random((10, 1)).astype(np.float32)
    np.testing.assert_allclose(run(metrics.BinaryAccuracy(), yb, pb, w),
                               wm(((pb > 0.5) == yb)[:, 0]), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.BinaryAccuracy(threshold=0.3), yb, pb),
                               ((pb > 0.3) == yb).mean(), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.MeanSquaredError(), onehot, probs, w),
                               wm(((onehot - probs) ** 2).mean(-1)), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.MeanAbsoluteError(), onehot, probs),
                               np.abs(onehot - probs).mean(), rtol=1e-5)
    np.testing.assert_allclose(run(metrics.Accuracy(), labels, probs.argmax(-1)),
                               (labels == probs.argmax(-1)).mean(), rtol=1e-6)
    # Sequence accuracy with a (B, T) mask: mean over the valid steps only.
    seq_labels = RNG.integers(0, 3, size=(2, 5))
    seq_probs = RNG.random((2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    m = metrics.SparseCategoricalAccuracy()
    res = m.result(m.update(m.init(), seq_labels, seq_probs, mask=mask))
    np.testing.assert_allclose(res, (seq_probs.argmax(-1) == seq_labels)[mask].mean(), rtol=1e-5)


def test_accuracy_string_resolution():
    by_loss = {
        "sparse_categorical_crossentropy": metrics.SparseCategoricalAccuracy,
        "categorical_crossentropy": metrics.CategoricalAccuracy,
        "binary_crossentropy": metrics.BinaryAccuracy,
    }
    for loss, cls in by_loss.items():
        m = metrics.get("acc", loss=loss)
        assert type(m) is cls and m.name == "acc"
        assert type(metrics.get("accuracy", loss=losses.get(loss))) is cls
    assert type(metrics.get("accuracy", loss=losses.SparseCategoricalCrossentropy(
        from_logits=True))) is metrics.SparseCategoricalAccuracy
    assert type(metrics.get("accuracy", output_shape=(None, 1))) is metrics.BinaryAccuracy

    auto = metrics.get("accuracy", loss="mse")
    assert auto.name == "accuracy"
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    run = lambda y, p: float(auto.result(auto.update(auto.init(), y, p)))  # noqa: E731
    assert run(np.array([1, 0, 0]), probs) == pytest.approx(2 / 3)          # sparse (B,)
    assert run(np.array([[1], [0], [0]]), probs) == pytest.approx(2 / 3)    # sparse (B, 1)
    assert run(np.eye(2)[[1, 1, 1]], probs) == pytest.approx(2 / 3)        # categorical
    assert run(np.array([[1.0], [0.0], [0.0]]), probs[:, 1:]) == pytest.approx(2 / 3)  # binary
    assert metrics.serialize(auto) == "accuracy"


def test_metric_get_errors_callables_and_serialize():
    with pytest.raises(ValueError, match=r"Received: metrics='acuracy'"):
        metrics.get("acuracy")
    assert type(metrics.get("mse")) is metrics.MeanSquaredError and metrics.get("mse").name == "mse"

    def my_metric(y_true, y_pred):
        return jnp.abs(y_true - y_pred)

    m = metrics.get(my_metric)
    assert isinstance(m, metrics.MeanMetricWrapper) and m.name == "my_metric"
    s = m.update(m.init(), np.zeros(4, np.float32), np.arange(4, dtype=np.float32))
    np.testing.assert_allclose(m.result(s), 1.5)
    assert metrics.serialize(m) is None
    for metric in (metrics.BinaryAccuracy(threshold=0.3), metrics.TopKCategoricalAccuracy(k=2),
                   metrics.SparseCategoricalAccuracy(name="acc")):
        again = metrics.deserialize(metrics.serialize(metric))
        assert type(again) is type(metric) and again.get_config() == metric.get_config()


# ----------------------------------------------------------------------------- optimizers

A = np.array([1.0, 2.0, 0.5, 3.0])
B = np.array([0.5, -1.0, 0.2, 0.0])
P0 = np.array([1.0, -2.0, 3.0, 0.5])


def quad_grad(p):
    return A * p + B  # gradient of 0.5 * sum(A p^2) + B . p


def run_optimizer(opt, steps=5):
    tx = opt.to_optax()
    params = {"w": jnp.asarray(P0, jnp.float32)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = {"w": A.astype(np.float32) * params["w"] + B.astype(np.float32)}
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"]), state


def np_sgd(lr, momentum=0.0, nesterov=False, wd=None, steps=5):
    p, m = P0.copy(), np.zeros_like(P0)
    for _ in range(steps):
        g = quad_grad(p)
        if wd:
            p = p - p * wd * lr
        if momentum:
            m = momentum * m - lr * g
            p = p + (momentum * m - lr * g if nesterov else m)
        else:
            p = p - lr * g
    return p


def np_adam(lr, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, wd=None, steps=5):
    p, m, v, vhat = P0.copy(), np.zeros(4), np.zeros(4), np.zeros(4)
    for t in range(1, steps + 1):
        g = quad_grad(p)
        if wd:
            p = p - p * wd * lr
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        vhat = np.maximum(vhat, v)
        p = p - m * alpha / (np.sqrt(vhat if amsgrad else v) + eps)
    return p


def np_rmsprop(lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False, steps=5):
    p, v, mom, avg = P0.copy(), np.zeros(4), np.zeros(4), np.zeros(4)
    for _ in range(steps):
        g = quad_grad(p)
        v = rho * v + (1 - rho) * g * g
        if centered:
            avg = rho * avg + (1 - rho) * g
            denom = v - avg ** 2 + eps
        else:
            denom = v + eps
        inc = lr * g / np.sqrt(denom)
        if momentum:
            mom = momentum * mom + inc
            p = p - mom
        else:
            p = p - inc
    return p


def np_adagrad(lr, init=0.1, eps=1e-7, steps=5):
    p, acc = P0.copy(), np.full(4, init)
    for _ in range(steps):
        g = quad_grad(p)
        acc = acc + g * g
        p = p - lr * g / np.sqrt(acc + eps)
    return p


@pytest.mark.parametrize("opt,expected", [
    (lambda: optimizers.SGD(0.1), lambda: np_sgd(0.1)),
    (lambda: optimizers.SGD(0.05, momentum=0.9), lambda: np_sgd(0.05, 0.9)),
    (lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True), lambda: np_sgd(0.05, 0.9, True)),
    (lambda: optimizers.SGD(0.05, momentum=0.5, weight_decay=0.1),
     lambda: np_sgd(0.05, 0.5, wd=0.1)),
    (lambda: optimizers.Adam(0.1), lambda: np_adam(0.1)),
    (lambda: optimizers.Adam(0.1, epsilon=0.5), lambda: np_adam(0.1, eps=0.5)),
    (lambda: optimizers.Adam(0.1, beta_1=0.8, amsgrad=True), lambda: np_adam(0.1, b1=0.8, amsgrad=True)),
    (lambda: optimizers.AdamW(0.1, weight_decay=0.05), lambda: np_adam(0.1, wd=0.05)),
    (lambda: optimizers.RMSprop(0.01), lambda: np_rmsprop(0.01)),
    (lambda: optimizers.RMSprop(0.01, momentum=0.9, centered=True, epsilon=1e-3),
     lambda: np_rmsprop(0.01, momentum=0.9, centered=True, eps=1e-3)),
    (lambda: optimizers.Adagrad(0.1), lambda: np_adagrad(0.1)),
])
def test_optimizers_match_keras_update_rules(opt, expected):
    got, _ = run_optimizer(opt())
    np.testing.assert_allclose(got, expected(), atol=1e-5, rtol=1e-5)


def test_gradient_clipping():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5, 0.0])}
    params = jax.tree.map(jnp.zeros_like, g)

    def first_update(opt):
        tx = opt.to_optax()
        updates, _ = tx.update(g, tx.init(params), params)
        return jax.tree.map(np.asarray, updates)

    u = first_update(optimizers.SGD(1.0, clipnorm=1.0))           # per-variable norm
    np.testing.assert_allclose(u["a"], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(u["b"], [-0.5, 0.0], rtol=1e-6)
    u = first_update(optimizers.SGD(1.0, global_clipnorm=1.0))
    gn = np.sqrt(25 + 0.25)
    np.testing.assert_allclose(u["a"], -np.array([3.0, 4.0]) / gn, rtol=1e-6)
    u = first_update(optimizers.SGD(1.0, clipvalue=1.0))
    np.testing.assert_allclose(u["a"], [-1.0, -1.0])
    with pytest.raises(ValueError, match="Only one of"):
        optimizers.SGD(clipnorm=1.0, clipvalue=1.0)


def test_set_learning_rate_without_retracing():
    traces = []
    tx = optimizers.SGD(0.1, momentum=0.0).to_optax()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state)
    np.testing.assert_allclose(params["w"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(optimizers.get_learning_rate(state), 0.1, rtol=1e-7)
    state = optimizers.set_learning_rate(state, 0.5)
    params, state = step(params, state)
    np.testing.assert_allclose(params["w"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(optimizers.get_learning_rate(state), 0.5)
    assert int(optimizers.get_iterations(state)) == 2
    assert len(traces) == 1
    # Inside jit too, and found inside an outer chain.
    outer = optax.chain(optax.clip(10.0), optimizers.Adam(0.01).to_optax())
    st = outer.init(params)
    st = jax.jit(optimizers.set_learning_rate)(st, 0.002)
    np.testing.assert_allclose(optimizers.get_learning_rate(st), 0.002, rtol=1e-6)
    with pytest.raises(ValueError, match="no injectable learning rate"):
        optimizers.set_learning_rate(optax.sgd(0.1).init(params), 0.1)


def test_schedules_match_keras_formulas():
    steps = np.arange(0, 40)
    exp = optimizers.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    np.testing.assert_allclose([exp(s) for s in steps], 0.1 * 0.5 ** (steps / 10), rtol=1e-5)
    stair = optimizers.schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)
    np.testing.assert_allclose([stair(s) for s in steps], 0.1 * 0.5 ** (steps // 10), rtol=1e-5)
    pw = optimizers.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    np.testing.assert_allclose([pw(s) for s in steps],
                               np.where(steps <= 10, 1.0, np.where(steps <= 20, 0.5, 0.1)))
    cos = optimizers.CosineDecay(0.1, decay_steps=30, alpha=0.1)
    frac = np.minimum(steps, 30) / 30
    np.testing.assert_allclose([cos(s) for s in steps],
                               0.1 * (0.9 * 0.5 * (1 + np.cos(np.pi * frac)) + 0.1), rtol=1e-5)
    warm = optimizers.CosineDecay(0.0, decay_steps=20, warmup_target=0.1, warmup_steps=10)
    expected = np.where(steps < 10, 0.01 * steps,
                        0.1 * 0.5 * (1 + np.cos(np.pi * np.minimum(steps - 10, 20) / 20)))
    np.testing.assert_allclose([warm(s) for s in steps], expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="values"):
        optimizers.PiecewiseConstantDecay([10], [1.0])

    # A scheduled SGD uses schedule(step) at step 0, 1, ...
    opt = optimizers.SGD(learning_rate=pw)
    tx = opt.to_optax()
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    for _ in range(12):
        u, state = tx.update({"w": jnp.ones(())}, state, params)
    np.testing.assert_allclose(u["w"], -0.5)  # step 11 > 10
    with pytest.raises(ValueError, match="schedule"):
        optimizers.set_learning_rate(state, 0.1)
    with pytest.raises(TypeError, match="schedule"):
        opt.learning_rate = 0.1


def test_optimizer_get_serialize_and_optax_wrapping():
    for name, cls in [("sgd", optimizers.SGD), ("adam", optimizers.Adam),
                      ("adamw", optimizers.AdamW), ("rmsprop", optimizers.RMSprop),
                      ("adagrad", optimizers.Adagrad)]:
        assert type(optimizers.get(name)) is cls
    assert optimizers.get("adam").learning_rate == 0.001
    assert optimizers.get("sgd").learning_rate == 0.01
    with pytest.raises(ValueError, match=r"Received: optimizer='adamm'"):
        optimizers.get("adamm")
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.Adam(learning_rate="fast")
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)

    wrapped = optimizers.get(optax.adam(1e-3))
    assert isinstance(wrapped, optimizers.OptaxOptimizer)
    with pytest.raises(TypeError, match="cannot be changed"):
        wrapped.learning_rate = 0.1
    assert optimizers.serialize(wrapped) is None

    for opt in (optimizers.SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0),
                optimizers.AdamW(0.002, weight_decay=0.01, amsgrad=True),
                optimizers.RMSprop(centered=True),
                optimizers.Adam(learning_rate=optimizers.CosineDecay(0.1, 100))):
        again = optimizers.deserialize(optimizers.serialize(opt))
        assert type(again) is type(opt)
        assert again.get_config() == opt.get_config()

    adam = optimizers.Adam(0.1)
    adam.learning_rate = 0.2
    assert adam.learning_rate == 0.2
    state = adam.init({"w": jnp.zeros(2)})
    np.testing.assert_allclose(optimizers.get_learning_rate(state), 0.2, rtol=1e-6)


def test_gradient_accumulation_steps():
    opt = optimizers.SGD(1.0, gradient_accumulation_steps=2)
    tx = opt.to_optax()
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    u1, state = tx.update({"w": jnp.array(1.0)}, state, params)
    u2, state = tx.update({"w": jnp.array(3.0)}, state, params)
    np.testing.assert_allclose([u1["w"], u2["w"]], [0.0, -2.0])
    state = optimizers.set_learning_rate(state, 0.5)
    np.testing.assert_allclose(optimizers.get_learning_rate(state), 0.5)
