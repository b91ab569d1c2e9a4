"""Confusion-matrix metrics and MAPE against Keras 3 (JAX backend) on the same inputs:
results within 1e-5, accumulated over several batches, in the pure and eager APIs, and
through compile / fit / evaluate."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import hybridnet
from hybridnet import Input, Sequential, layers, metrics
from hybridnet.strategies import DataParallel

ONE_DEVICE = DataParallel(devices=jax.devices()[:1])
TOL = 1e-5


def _batches(kind, n_batches=3, batch=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        if kind == "binary":
            y_true = rng.integers(0, 2, size=(batch, 1)).astype("float32")
            y_pred = rng.uniform(size=(batch, 1)).astype("float32")
            # predictions exactly on thresholds and at the ends of [0, 1]
            y_pred[:4, 0] = [0.0, 0.5, 1.0, 0.25]
        elif kind == "multi":
            y_true = rng.integers(0, 2, size=(batch, classes)).astype("float32")
            y_pred = rng.uniform(size=(batch, classes)).astype("float32")
        else:  # regression
            y_true = rng.normal(size=(batch, 3)).astype("float32")
            y_true[0, 0] = 0.0
            y_pred = rng.normal(size=(batch, 3)).astype("float32")
        sw = rng.uniform(size=(batch,)).astype("float32")
        out.append((y_true, y_pred, sw))
    return out


CASES = [
    ("TruePositives", {}, "binary"),
    ("FalsePositives", {"thresholds": [0.2, 0.5, 0.8]}, "binary"),
    ("TrueNegatives", {"thresholds": [0.0, 0.5, 1.0]}, "binary"),
    ("FalseNegatives", {"thresholds": 0.3}, "multi"),
    ("Precision", {}, "binary"),
    ("Precision", {"thresholds": [0.1, 0.4, 0.9]}, "binary"),
    ("Precision", {"top_k": 2}, "multi"),
    ("Precision", {"class_id": 1}, "multi"),
    ("Precision", {"top_k": 2, "class_id": 3, "thresholds": [0.0, 0.5]}, "multi"),
    ("Recall", {}, "binary"),
    ("Recall", {"thresholds": [0.0, 0.25, 0.5, 0.75, 1.0]}, "binary"),
    ("Recall", {"top_k": 1}, "multi"),
    ("Recall", {"class_id": 2}, "multi"),
    ("AUC", {}, "binary"),
    ("AUC", {"num_thresholds": 7}, "binary"),
    ("AUC", {"curve": "PR"}, "binary"),
    ("AUC", {"curve": "PR", "summation_method": "majoring"}, "binary"),
    ("AUC", {"summation_method": "minoring"}, "binary"),
    ("AUC", {"curve": "PRGAIN"}, "binary"),
    ("AUC", {"thresholds": [0.1, 0.35, 0.6, 0.9]}, "binary"),
    ("AUC", {"from_logits": True}, "regression"),
    ("AUC", {}, "multi"),
    ("AUC", {"label_weights": [0.1, 0.2, 0.3, 0.4]}, "multi"),
    ("AUC", {"multi_label": True, "num_labels": 4}, "multi"),
    ("AUC", {"multi_label": True, "num_labels": 4, "curve": "PR"}, "multi"),
    ("AUC", {"multi_label": True, "num_labels": 4, "label_weights": [1, 2, 0, 3]}, "multi"),
    ("AUC", {"multi_label": True, "num_labels": 4, "thresholds": [0.3, 0.5]}, "multi"),
    ("MeanAbsolutePercentageError", {}, "regression"),
]


def _ids(case):
    return f"{case[0]}-{case[2]}-" + ",".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_keras_over_batches(case, weighted):
    name, kwargs, kind = case
    ours, theirs = getattr(metrics, name)(**kwargs), getattr(keras.metrics, name)(**kwargs)
    update = jax.jit(ours.update)
    state = ours.init()
    for y_true, y_pred, sw in _batches(kind):
        sw = sw if weighted else None
        state = update(state, y_true, y_pred, sw)
        ours.update_state(y_true, y_pred, sample_weight=sw)
        theirs.update_state(y_true, y_pred, sample_weight=sw)
        want = np.asarray(theirs.result())
        np.testing.assert_allclose(np.asarray(ours.result(state)), want, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(np.asarray(ours.result()), want, rtol=TOL, atol=TOL)
    ours.reset_state()
    theirs.reset_state()
    np.testing.assert_allclose(np.asarray(ours.result()), np.asarray(theirs.result()))


def test_states_merge_by_summing():
    m = metrics.AUC(multi_label=True, num_labels=4, curve="PR")
    (a_t, a_p, a_w), (b_t, b_p, b_w), _ = _batches("multi")
    merged = m.merge(m.update(m.init(), a_t, a_p, a_w), m.update(m.init(), b_t, b_p, b_w))
    whole = m.update(m.init(), np.concatenate([a_t, b_t]), np.concatenate([a_p, b_p]),
                     np.concatenate([a_w, b_w]))
    np.testing.assert_allclose(m.result(merged), m.result(whole), rtol=TOL, atol=TOL)


def test_multi_label_auc_learns_num_labels_eagerly_and_asks_for_it_compiled():
    y_true, y_pred, _ = _batches("multi")[0]
    ours, theirs = metrics.AUC(multi_label=True), keras.metrics.AUC(multi_label=True)
    ours.update_state(y_true, y_pred)
    theirs.update_state(y_true, y_pred)
    np.testing.assert_allclose(ours.result(), theirs.result(), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="num_labels"):
        metrics.AUC(multi_label=True).init()


def test_bad_arguments_name_the_metric_and_value():
    with pytest.raises(ValueError, match=r"Precision: `thresholds` must be in \[0, 1\]\. "
                                         r"Received: thresholds=\[0\.5, 2\]"):
        metrics.Precision(thresholds=[0.5, 2])
    with pytest.raises(ValueError, match="curve=.bogus."):
        metrics.AUC(curve="bogus")
    with pytest.raises(ValueError, match="num_thresholds=1"):
        metrics.AUC(num_thresholds=1)
    with pytest.raises(ValueError, match="top_k=0"):
        metrics.Recall(top_k=0)


@pytest.mark.parametrize("metric", [
    metrics.Precision(thresholds=[0.3, 0.6], top_k=2, class_id=1, name="p"),
    metrics.AUC(thresholds=[0.2, 0.7], curve="PR", multi_label=True, num_labels=3,
                label_weights=[1.0, 2.0, 3.0]),
    metrics.FalseNegatives(thresholds=0.4),
    metrics.MeanAbsolutePercentageError(name="mape"),
])
def test_serialize_roundtrip(metric):
    back = metrics.deserialize(metrics.serialize(metric))
    assert type(back) is type(metric) and back.get_config() == metric.get_config()


def test_string_identifiers_follow_keras():
    for ident, cls in [("auc", metrics.AUC), ("precision", metrics.Precision),
                       ("recall", metrics.Recall), ("mape", metrics.MeanAbsolutePercentageError),
                       ("true_positives", metrics.TruePositives), ("AUC", metrics.AUC)]:
        m = metrics.get(ident)
        assert isinstance(m, cls) and m.name == ident


def _fit_both(y, out_units, activation, loss, our_metrics, keras_metrics, validate=True):
    """The same initial weights and data in both libraries; returns both histories and
    both evaluate() dicts."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 5)).astype("float32")
    sw = rng.uniform(size=(96,)).astype("float32")
    hybridnet.utils.set_random_seed(0)
    ours = Sequential([Input((5,)), layers.Dense(8, activation="relu"),
                       layers.Dense(out_units, activation=activation)])
    # Keras weighs only `weighted_metrics` by sample_weight
    ours.compile(hybridnet.optimizers.SGD(0.1), loss, weighted_metrics=our_metrics,
                 strategy=ONE_DEVICE)
    theirs = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.Dense(out_units, activation=activation)])
    theirs.compile(keras.optimizers.SGD(0.1), loss, weighted_metrics=keras_metrics)
    ours.evaluate(x[:8], y[:8], verbose=0)  # creates the weights
    theirs.set_weights(ours.get_weights())
    val = (x[:40], y[:40]) if validate else None
    h_ours = ours.fit(x, y, sample_weight=sw, batch_size=32, epochs=1, shuffle=False,
                      verbose=0, validation_data=val)
    h_theirs = theirs.fit(x, y, sample_weight=sw, batch_size=32, epochs=1, shuffle=False,
                          verbose=0, validation_data=val)
    e_ours = ours.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    e_theirs = theirs.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    return h_ours.history, h_theirs.history, e_ours, e_theirs


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=tol, atol=tol)


def test_compiled_binary_metrics_match_keras_fit_and_evaluate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(96, 1)).astype("float32")

    def make(lib):
        return [lib.metrics.AUC(name="auc"), lib.metrics.AUC(curve="PR", name="pr_auc"),
                lib.metrics.Precision(name="precision"), lib.metrics.Recall(name="recall"),
                lib.metrics.TruePositives(thresholds=[0.3, 0.6], name="tp"),
                lib.metrics.FalsePositives(name="fp"), lib.metrics.TrueNegatives(name="tn"),
                lib.metrics.FalseNegatives(name="fn")]

    h_ours, h_theirs, e_ours, e_theirs = _fit_both(
        y, 1, "sigmoid", "binary_crossentropy", make(hybridnet), make(keras))
    for key in ("auc", "pr_auc", "precision", "recall", "tp", "fp", "tn", "fn", "loss"):
        _close(e_ours[key], e_theirs[key])
        for prefix in ("", "val_"):
            _close(h_ours[prefix + key], h_theirs[prefix + key])
    assert np.shape(e_ours["tp"]) == (2,)


def test_compiled_multilabel_and_mape_match_keras():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(96, 3)).astype("float32")
    h_ours, h_theirs, e_ours, e_theirs = _fit_both(
        y, 3, "sigmoid", "binary_crossentropy",
        [metrics.AUC(multi_label=True, num_labels=3, name="ml_auc"),
         metrics.Precision(top_k=1, name="p_top1"), metrics.Recall(class_id=2, name="r2"),
         "mape"],
        [keras.metrics.AUC(multi_label=True, num_labels=3, name="ml_auc"),
         keras.metrics.Precision(top_k=1, name="p_top1"),
         keras.metrics.Recall(class_id=2, name="r2"), "mape"], validate=False)
    for key in ("ml_auc", "p_top1", "r2", "mape"):
        _close(h_ours[key], h_theirs[key])
    for key in ("ml_auc", "p_top1", "r2", "mape"):
        _close(e_ours[key], e_theirs[key])


def test_container_weighs_only_weighted_metrics_and_sizes_multilabel_auc():
    from hybridnet.training.compile_utils import MetricsContainer
    y_true, y_pred, sw = _batches("multi")[0]
    container = MetricsContainer(
        [[metrics.Precision(name="p")]], ["out"],
        weighted_per_output=[[metrics.Precision(name="p"), metrics.AUC(multi_label=True)]],
        output_shapes=[(None, 4)])
    assert container.names == ["loss", "p", "weighted_p", "auc"]
    state = container.update(container.init(), 0.0, {}, len(y_true), [y_true], [y_pred],
                             [sw], [None])
    got = container.results(state)
    plain, weighted = keras.metrics.Precision(), keras.metrics.Precision()
    auc = keras.metrics.AUC(multi_label=True)
    plain.update_state(y_true, y_pred)
    weighted.update_state(y_true, y_pred, sample_weight=sw)
    auc.update_state(y_true, y_pred, sample_weight=sw)
    for key, ref in (("p", plain), ("weighted_p", weighted), ("auc", auc)):
        np.testing.assert_allclose(got[key], ref.result(), rtol=TOL, atol=TOL)
