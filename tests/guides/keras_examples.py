"""Five of keras.io's examples, condensed, with the imports changed to hybridnet and data
generated in place of downloads (asserts added): timeseries classification from scratch
(Conv1D), imbalanced classification (class weights, confusion metrics), text
classification with a bidirectional LSTM, character-level seq2seq (LSTM states), and a
small U-Net-like segmentation model (SeparableConv2D, Conv2DTranspose, UpSampling2D)."""
import numpy as np

import hybridnet as keras
from hybridnet import layers

keras.utils.set_random_seed(0)  # reproducible runs (the checks below are on training results)

rng = np.random.default_rng(0)

# --- Timeseries classification from scratch (examples/timeseries) -------------------
n, steps = 256, 64
x_train = rng.normal(size=(n, steps, 1)).astype("float32")
y_train = (x_train[:, :, 0].mean(1) > 0).astype("int32")
x_train[y_train == 1] += np.sin(np.linspace(0, 12, steps))[None, :, None]


def make_model(input_shape):
    input_layer = keras.layers.Input(input_shape)
    conv1 = keras.layers.Conv1D(filters=16, kernel_size=3, padding="same")(input_layer)
    conv1 = keras.layers.BatchNormalization()(conv1)
    conv1 = keras.layers.ReLU()(conv1)
    conv2 = keras.layers.Conv1D(filters=16, kernel_size=3, padding="same")(conv1)
    conv2 = keras.layers.BatchNormalization()(conv2)
    conv2 = keras.layers.ReLU()(conv2)
    gap = keras.layers.GlobalAveragePooling1D()(conv2)
    output_layer = keras.layers.Dense(2, activation="softmax")(gap)
    return keras.models.Model(inputs=input_layer, outputs=output_layer)


model = make_model(input_shape=x_train.shape[1:])
callbacks = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2,
                                               min_lr=0.0001),
             keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, verbose=1)]
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
              metrics=["sparse_categorical_accuracy"])
history = model.fit(x_train, y_train, batch_size=32, epochs=6, callbacks=callbacks,
                    validation_split=0.2, verbose=0)
assert history.history["sparse_categorical_accuracy"][-1] > 0.7

# --- Imbalanced classification: credit card fraud (examples/structured_data) --------
features = rng.normal(size=(2000, 30)).astype("float32")
targets = (features[:, 0] + 0.5 * features[:, 1] > 2.2).astype("float32")[:, None]
counts = np.bincount(targets[:, 0].astype("int64"))
weight_for_0, weight_for_1 = 1.0 / counts[0], 1.0 / counts[1]
model = keras.Sequential([
    keras.Input(shape=features.shape[1:]),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dropout(0.3),
    keras.layers.Dense(1, activation="sigmoid"),
])
metrics = [keras.metrics.FalseNegatives(name="fn"), keras.metrics.FalsePositives(name="fp"),
           keras.metrics.TrueNegatives(name="tn"), keras.metrics.TruePositives(name="tp"),
           keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy",
              metrics=metrics)
history = model.fit(features, targets, batch_size=256, epochs=6, verbose=0,
                    class_weight={0: weight_for_0, 1: weight_for_1})
last = {k: v[-1] for k, v in history.history.items()}
assert last["tp"] + last["fn"] == counts[1] and last["tn"] + last["fp"] == counts[0]
assert last["recall"] > 0.6

# --- Text classification with a bidirectional LSTM (examples/nlp) -------------------
max_features, maxlen = 200, 40
sequences = [list(rng.integers(2, max_features, rng.integers(5, maxlen))) for _ in range(256)]
labels = np.array([int(sum(s) / len(s) > max_features / 2) for s in sequences])
x = keras.utils.pad_sequences(sequences, maxlen=maxlen)
inputs = keras.Input(shape=(None,), dtype="int32")
h = layers.Embedding(max_features, 16)(inputs)
h = layers.Bidirectional(layers.LSTM(16, return_sequences=True))(h)
h = layers.Bidirectional(layers.LSTM(16))(h)
outputs = layers.Dense(1, activation="sigmoid")(h)
model = keras.Model(inputs, outputs)
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
history = model.fit(x, labels, batch_size=32, epochs=3, validation_split=0.25, verbose=0)
assert np.isfinite(history.history["val_loss"][-1])

# --- Character-level seq2seq (examples/nlp/lstm_seq2seq) -----------------------------
num_encoder_tokens, num_decoder_tokens, latent_dim = 12, 14, 32
enc = np.eye(num_encoder_tokens, dtype="float32")[rng.integers(0, 12, (128, 7))]
dec = np.eye(num_decoder_tokens, dtype="float32")[rng.integers(0, 14, (128, 9))]
dec_target = np.roll(dec, -1, axis=1)
encoder_inputs = keras.Input(shape=(None, num_encoder_tokens))
encoder = keras.layers.LSTM(latent_dim, return_state=True)
encoder_outputs, state_h, state_c = encoder(encoder_inputs)
encoder_states = [state_h, state_c]
decoder_inputs = keras.Input(shape=(None, num_decoder_tokens))
decoder_lstm = keras.layers.LSTM(latent_dim, return_sequences=True, return_state=True)
decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
decoder_dense = keras.layers.Dense(num_decoder_tokens, activation="softmax")
decoder_outputs = decoder_dense(decoder_outputs)
model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
history = model.fit([enc, dec], dec_target, batch_size=32, epochs=2, validation_split=0.2,
                    verbose=0)
encoder_model = keras.Model(encoder_inputs, encoder_states)
state_input_h, state_input_c = keras.Input(shape=(latent_dim,)), keras.Input(shape=(latent_dim,))
out, h2, c2 = decoder_lstm(decoder_inputs, initial_state=[state_input_h, state_input_c])
decoder_model = keras.Model([decoder_inputs, state_input_h, state_input_c],
                            [decoder_dense(out), h2, c2])
states = encoder_model.predict(enc[:2], verbose=0)
step_probs, h_next, c_next = decoder_model.predict([dec[:2, :1]] + list(states), verbose=0)
full = model.predict([enc[:2], dec[:2, :1]], verbose=0)
np.testing.assert_allclose(step_probs, full, rtol=1e-4, atol=1e-5)

# --- Image segmentation with a U-Net-like architecture (examples/vision) -------------
img_size, num_classes = (32, 32), 3


def get_model(img_size, num_classes):
    inputs = keras.Input(shape=img_size + (3,))
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for filters in [16, 32]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(
            previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    for filters in [32, 16, 8]:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous_block_activation = x
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


model = get_model(img_size, num_classes)
images = rng.random((32,) + img_size + (3,)).astype("float32")
masks = (images.argmax(-1))[..., None].astype("int32")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
history = model.fit(images, masks, batch_size=8, epochs=2, verbose=0)
assert model.predict(images[:2], verbose=0).shape == (2, 32, 32, 3)
assert history.history["loss"][-1] < history.history["loss"][0]
print("all five examples ran")
