"""The examples build the models they promise and train."""
import io
from contextlib import redirect_stdout

import numpy as np

import examples.alexnet as alexnet


def test_alexnet_architecture_and_one_step():
    model = alexnet.alexnet((64, 64, 3), n_classes=10)
    out = io.StringIO()
    with redirect_stdout(out):
        model.summary()
    text = out.getvalue()
    shapes = [layer._inbound_nodes[0].outputs.shape for layer in model.layers]
    assert shapes[1] == (None, 15, 15, 64)      # Conv2D(64, 11, strides=4) after padding 2
    assert shapes[3] == (None, 7, 7, 64)        # MaxPooling2D(3, 2)
    assert shapes[14] == (None, 1, 1, 256)      # last MaxPooling2D
    assert shapes[-1] == (None, 10)
    conv = 11 * 11 * 3 * 64 + 64 + 5 * 5 * 64 * 192 + 192 + 3 * 3 * 192 * 384 + 384 + \
        3 * 3 * 384 * 256 + 256 + 3 * 3 * 256 * 256 + 256
    dense = 256 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert model.count_params() == conv + dense
    assert f"Total params: {conv + dense:,}" in text
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, _, y_train, _ = alexnet.load_data()
    assert x_train.shape[1:] == (64, 64, 3) and 0 <= x_train.min() and x_train.max() <= 1
    loss, acc = model.train_on_batch(x_train[:16], y_train[:16])
    assert np.isfinite(loss) and 0 <= acc <= 1
