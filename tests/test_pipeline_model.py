"""Pipelines and the 3-axis hybrid through the Model API match the one-device run."""
import jax
import numpy as np
import pytest

import hybridnet
from hybridnet.strategies import DataParallel, Hybrid, Pipeline
from test_tensor_parallel import _image_data, _same, _seq_data, _train, alexnet_small, seq2seq

ONE = DataParallel(devices=jax.devices()[:1])
CE = "sparse_categorical_crossentropy"


@pytest.mark.parametrize("stages,schedule", [(2, "gpipe"), (2, "1f1b"), (4, "gpipe"),
                                             (4, "1f1b")])
def test_alexnet_pipeline(stages, schedule):
    x, y = _image_data(48)
    reference = _train(alexnet_small(), ONE, x, y, CE, batch_size=16)
    model = alexnet_small()
    result = _train(model, Pipeline(stages=stages, microbatches=2, schedule=schedule), x, y, CE,
                    batch_size=16)
    _same(reference, result)
    plan = model.plan
    assert len(plan.stages) == stages and plan.schedule == schedule
    assert sorted(d for s in plan.stages for d in s.device_ids) == list(range(8))


@pytest.mark.parametrize("stages,schedule", [(2, "1f1b"), (4, "gpipe")])
def test_seq2seq_pipeline(stages, schedule):
    x, y = _seq_data(48)
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = _train(seq2seq(), ONE, x, y, loss, batch_size=16)
    result = _train(seq2seq(), Pipeline(stages=stages, microbatches=2, schedule=schedule), x, y,
                    loss, batch_size=16)
    _same(reference, result)


def test_three_axis_hybrid_alexnet_and_seq2seq():
    strategy = Hybrid(mesh={"data": 2, "model": 2, "pipe": 2}, microbatches=2, schedule="1f1b")
    x, y = _image_data(48)
    _same(_train(alexnet_small(), ONE, x, y, CE, batch_size=16),
          _train(alexnet_small(parallel_fc="model"), strategy, x, y, CE, batch_size=16))
    xs, ys = _seq_data(48)
    loss = hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = seq2seq(parallel="model")
    _same(_train(seq2seq(), ONE, xs, ys, loss, batch_size=16),
          _train(model, strategy, xs, ys, loss, batch_size=16))
    plan = model.plan
    assert plan.mesh_axes == {"pipe": 2, "data": 2, "model": 2}
    assert {lp.parallel for lp in plan.layers.values()} >= {"model"}


def test_pipeline_fit_evaluate_predict_and_stage_annotations():
    hybridnet.utils.set_random_seed(0)
    from hybridnet import Input, Sequential, layers
    model = Sequential([Input((8,)), layers.Dense(16, activation="relu"),
                        layers.Dense(16, activation="relu", stage=1), layers.Dense(3, stage=2)])
    model.compile("adam", hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], strategy=Pipeline(microbatches=2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    history = model.fit(x, y, batch_size=24, epochs=2, verbose=0)  # last batch: 4 samples
    assert [s.layers for s in model.plan.stages] == [[model.layers[0].name],
                                                     [model.layers[1].name],
                                                     [model.layers[2].name]]
    assert len(history.history["loss"]) == 2
    probs = model.predict(x, batch_size=24, verbose=0)
    _, acc = model.evaluate(x, y, batch_size=24, verbose=0)
    assert acc == pytest.approx(np.mean(probs.argmax(-1) == y), abs=1e-6)
    with pytest.raises(ValueError, match="microbatches. Received: batch_size=25"):
        model.fit(x, y, batch_size=25, verbose=0)
    with pytest.raises(ValueError, match="more stages than layers"):
        Sequential([Input((8,)), layers.Dense(4)]).make_plan(Pipeline(stages=2),
                                                             devices=jax.devices()[:2])
