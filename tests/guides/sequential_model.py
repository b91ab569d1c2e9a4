"""Keras 3's guide "The Sequential model" (keras-io, guides/sequential_model.py), with the
imports changed to hybridnet and images shrunk from 250x250 to 64x64 (CPU time); asserts
added on what it computes."""
import numpy as np

import hybridnet as keras
from hybridnet import layers
from hybridnet import ops

keras.utils.set_random_seed(0)  # reproducible runs (the checks below are on training results)

model = keras.Sequential([
    layers.Dense(2, activation="relu", name="layer1"),
    layers.Dense(3, activation="relu", name="layer2"),
    layers.Dense(4, name="layer3"),
])
x = ops.ones((3, 3))
y = model(x)
assert y.shape == (3, 4)

layer1 = layers.Dense(2, activation="relu", name="layer1")
layer2 = layers.Dense(3, activation="relu", name="layer2")
layer3 = layers.Dense(4, name="layer3")
x = ops.ones((3, 3))
y = layer3(layer2(layer1(x)))

model = keras.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"),
                          layers.Dense(4)])
assert len(model.layers) == 3

model = keras.Sequential()
model.add(layers.Dense(2, activation="relu"))
model.add(layers.Dense(3, activation="relu"))
model.add(layers.Dense(4))
model.pop()
print(len(model.layers))  # 2
assert len(model.layers) == 2

model = keras.Sequential(name="my_sequential")
model.add(layers.Dense(2, activation="relu", name="layer1"))
model.add(layers.Dense(3, activation="relu", name="layer2"))
model.add(layers.Dense(4, name="layer3"))

layer = layers.Dense(3)
assert layer.weights == []
x = ops.ones((1, 4))
y = layer(x)
assert [tuple(w.shape) for w in layer.weights] == [(4, 3), (3,)]

model = keras.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"),
                          layers.Dense(4)])
x = ops.ones((1, 4))
y = model(x)
print("Number of weights after calling the model:", len(model.weights))  # 6
assert len(model.weights) == 6
model.summary()

model = keras.Sequential()
model.add(keras.Input(shape=(4,)))
model.add(layers.Dense(2, activation="relu"))
model.summary()
assert len(model.layers) == 1

model = keras.Sequential()
model.add(keras.Input(shape=(64, 64, 3)))
model.add(layers.Conv2D(32, 5, strides=2, activation="relu"))
model.add(layers.Conv2D(32, 3, activation="relu"))
model.add(layers.MaxPooling2D(3))
model.summary()
assert model.output.shape == (None, 9, 9, 32)
model.add(layers.Conv2D(32, 3, activation="relu"))
model.add(layers.MaxPooling2D(2))
model.summary()
model.add(layers.GlobalMaxPooling2D())
model.add(layers.Dense(10))
assert model(np.ones((2, 64, 64, 3), "float32")).shape == (2, 10)

initial_model = keras.Sequential([
    keras.Input(shape=(64, 64, 3)),
    layers.Conv2D(32, 5, strides=2, activation="relu"),
    layers.Conv2D(32, 3, activation="relu"),
    layers.Conv2D(32, 3, activation="relu"),
])
feature_extractor = keras.Model(inputs=initial_model.inputs,
                                outputs=[layer.output for layer in initial_model.layers])
x = ops.ones((1, 64, 64, 3))
features = feature_extractor(x)
assert [tuple(f.shape) for f in features] == [(1, 30, 30, 32), (1, 28, 28, 32), (1, 26, 26, 32)]

initial_model = keras.Sequential([
    keras.Input(shape=(64, 64, 3)),
    layers.Conv2D(32, 5, strides=2, activation="relu"),
    layers.Conv2D(32, 3, activation="relu", name="my_intermediate_layer"),
    layers.Conv2D(32, 3, activation="relu"),
])
feature_extractor = keras.Model(
    inputs=initial_model.inputs,
    outputs=initial_model.get_layer(name="my_intermediate_layer").output)
x = ops.ones((1, 64, 64, 3))
features = feature_extractor(x)
np.testing.assert_allclose(np.asarray(features),
                           np.asarray(keras.Model(initial_model.inputs,
                                                  initial_model.layers[1].output)(x)))

# Transfer learning: freeze all layers except the last one, then a frozen base model
# inside a Sequential.
model = keras.Sequential([keras.Input(shape=(784,)), layers.Dense(32, activation="relu"),
                          layers.Dense(32, activation="relu"), layers.Dense(10)])
for layer in model.layers[:-1]:
    layer.trainable = False
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = model.get_weights()
model.fit(np.random.random((64, 784)), np.random.randint(0, 10, 64), verbose=0)
after = model.get_weights()
assert all(np.array_equal(a, b) for a, b in zip(before[:4], after[:4]))
assert not np.array_equal(before[-1], after[-1])

base_model = keras.Sequential([keras.Input(shape=(16,)), layers.Dense(8, activation="relu")])
base_model.trainable = False
model = keras.Sequential([base_model, layers.Dense(3)])
model.compile("adam", "mse")
frozen = base_model.get_weights()
model.fit(np.random.random((32, 16)), np.random.random((32, 3)), verbose=0)
assert all(np.array_equal(a, b) for a, b in zip(frozen, base_model.get_weights()))
