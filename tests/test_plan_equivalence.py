"""Every parallel plan computes the one-device result (DESIGN.md, invariant 1).

The model families and the comparison live in ``benchmarks/plan_equivalence.py``, which
prints the whole family x plan matrix; here a covering subset of its cells runs (every
family, every kind of plan, both schedules, m 1/2/4, a partial last batch, masked
sequences, sample weights, BatchNorm moving statistics), plus the pieces that make the
pipeline exact, checked directly.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridnet
from hybridnet import Input, Sequential, layers, losses
from hybridnet.execution.pipeline import merge_microbatch_updates
from hybridnet.strategies import DataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "plan_equivalence", os.path.join(ROOT, "benchmarks", "plan_equivalence.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PLANS = bench.strategies(quick=False)
# Data parallelism and one-microbatch pipelines are compared with one device in
# test_data_parallel.py and test_pipeline.py; here the cells those files do not cover.
CASES = [("mlp_ln", "model4"), ("mlp_ln", "pipe2_m4_1f1b"), ("mlp_ln", "auto"),
         ("seq2seq", "pipe4_m2_gpipe"), ("seq2seq", "hybrid_d2m2p2"),
         ("resnet_bn", "pipe4_m4_1f1b")]
_REFERENCES: dict = {}


def _reference(family):
    if family not in _REFERENCES:
        _REFERENCES[family] = bench.train(family, PLANS["one_device"])
    return _REFERENCES[family]


@pytest.mark.parametrize("family,plan", CASES)
def test_plan_matches_one_device(family, plan):
    ref = _reference(family)
    row = bench.compare(ref, bench.train(family, PLANS[plan], ref["initial"]), family)
    assert row["max_rel"] <= bench.TOLERANCE, row
    if family == "resnet_bn" and plan == "pipe4_m4_1f1b":
        # Per-microbatch batch statistics (GPipe) change the rest, by design; the moving
        # statistics of the BN on the raw input equal one device's: one combined update.
        assert row["checked"] == "input BN moving statistics"
        assert np.isfinite(row["other_rel"])


# ------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum",
                                       "mean_with_sample_weight"])
def test_loss_sums_add_over_pieces_and_divide_by_the_batch(reduction):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, (12, 4))
    logits = rng.normal(size=(12, 4, 5)).astype("float32")
    mask = rng.uniform(size=(12, 4)) > 0.4
    sw = rng.uniform(size=(12,)).astype("float32")
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    whole = loss(y, logits, sample_weight=sw, mask=mask)
    total, divisor = loss.sum_and_divisor(y, logits, sample_weight=sw, mask=mask)
    pieces = sum(loss.sum_and_divisor(y[i:i + 3], logits[i:i + 3], sample_weight=sw[i:i + 3],
                                      mask=mask[i:i + 3])[0] for i in range(0, 12, 3))
    np.testing.assert_allclose(total / divisor, whole, rtol=1e-6)
    np.testing.assert_allclose(pieces / divisor, whole, rtol=1e-6)


def test_batchnorm_merges_microbatch_statistics_by_total_variance():
    bn = layers.BatchNormalization(momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32") * [1.0, 2.0, 3.0] + [0.0, 1.0, -2.0]
    old = {"moving_mean": np.full(3, 0.5, np.float32), "moving_variance": np.ones(3, np.float32)}
    per_mb = [{"moving_mean": old["moving_mean"] * 0.9 + xi.mean(0) * 0.1,
               "moving_variance": old["moving_variance"] * 0.9 + xi.var(0) * 0.1} for xi in x]
    merged = merge_microbatch_updates(bn, old, per_mb)
    whole = x.reshape(-1, 3)
    np.testing.assert_allclose(merged["moving_mean"],
                               old["moving_mean"] * 0.9 + whole.mean(0) * 0.1, rtol=1e-6)
    np.testing.assert_allclose(merged["moving_variance"],
                               old["moving_variance"] * 0.9 + whole.var(0) * 0.1, rtol=1e-5)
    # A layer without the hook: the mean of the microbatch updates.
    plain = merge_microbatch_updates(layers.Dense(2), {}, [{"w": jnp.ones(2)},
                                                          {"w": jnp.zeros(2)}])
    np.testing.assert_allclose(plain["w"], [0.5, 0.5])


def test_a_batch_the_data_axes_do_not_divide_runs_replicated_and_says_so():
    """Replicated, not padded: zero-weight padding would enter BatchNorm's batch
    statistics. The result equals one device (the partial batches of the matrix)."""
    hybridnet.utils.set_random_seed(0)
    model = Sequential([Input((3,)), layers.Dense(2)])
    model.compile("sgd", "mse", strategy=DataParallel())
    with pytest.warns(UserWarning, match="12 samples .*replicated"):
        model.fit(np.ones((12, 3), np.float32), np.zeros((12, 2), np.float32), batch_size=12,
                  verbose=0)
    assert jax.device_count() == 8
