"""Keras 3's guide "Writing your own callbacks" (keras-io, guides/writing_your_own_callbacks.py)
with the imports changed to hybridnet; MNIST replaced by random data (no download);
asserts added on the hooks called and what the callbacks did."""
import numpy as np

import hybridnet as keras

keras.utils.set_random_seed(0)  # reproducible runs (the checks below are on training results)


def get_model():
    model = keras.Sequential()
    model.add(keras.layers.Dense(1))
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.1),
                  loss="mean_squared_error", metrics=["mean_absolute_error"])
    return model


rng = np.random.default_rng(0)
x_train = rng.random((1000, 784)).astype("float32")
y_train = x_train[:, :5].sum(1)
x_test, y_test = x_train[:200], y_train[:200]
calls = []


class CustomCallback(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        calls.append("on_train_begin")
        print("Starting training; got log keys: {}".format(list(logs.keys())))

    def on_train_end(self, logs=None):
        calls.append("on_train_end")

    def on_epoch_begin(self, epoch, logs=None):
        calls.append("on_epoch_begin")

    def on_epoch_end(self, epoch, logs=None):
        calls.append("on_epoch_end")
        print("End epoch {} of training; got log keys: {}".format(epoch, list(logs.keys())))

    def on_test_begin(self, logs=None):
        calls.append("on_test_begin")

    def on_test_end(self, logs=None):
        calls.append("on_test_end")

    def on_predict_begin(self, logs=None):
        calls.append("on_predict_begin")

    def on_predict_end(self, logs=None):
        calls.append("on_predict_end")

    def on_train_batch_begin(self, batch, logs=None):
        calls.append("on_train_batch_begin")

    def on_train_batch_end(self, batch, logs=None):
        calls.append("on_train_batch_end")

    def on_test_batch_begin(self, batch, logs=None):
        calls.append("on_test_batch_begin")

    def on_test_batch_end(self, batch, logs=None):
        calls.append("on_test_batch_end")

    def on_predict_batch_begin(self, batch, logs=None):
        calls.append("on_predict_batch_begin")

    def on_predict_batch_end(self, batch, logs=None):
        calls.append("on_predict_batch_end")


model = get_model()
model.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0, validation_split=0.5,
          callbacks=[CustomCallback()])
assert calls[:3] == ["on_train_begin", "on_epoch_begin", "on_train_batch_begin"]
assert "on_test_begin" in calls and calls[-2:] == ["on_epoch_end", "on_train_end"]
calls.clear()
res = model.evaluate(x_test, y_test, batch_size=128, verbose=0, callbacks=[CustomCallback()])
assert calls[0] == "on_test_begin" and calls[-1] == "on_test_end"
calls.clear()
res = model.predict(x_test, batch_size=128, callbacks=[CustomCallback()])
assert calls[0] == "on_predict_begin" and calls[-1] == "on_predict_end"


class LossAndErrorPrintingCallback(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("Up to batch {}, the average loss is {:7.2f}.".format(batch, logs["loss"]))

    def on_test_batch_end(self, batch, logs=None):
        print("Up to batch {}, the average loss is {:7.2f}.".format(batch, logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        print("The average loss for epoch {} is {:7.2f} and mean absolute error is {:7.2f}."
              .format(epoch, logs["loss"], logs["mean_absolute_error"]))


model = get_model()
model.fit(x_train, y_train, batch_size=128, epochs=2, verbose=0,
          callbacks=[LossAndErrorPrintingCallback()])
res = model.evaluate(x_test, y_test, batch_size=128, verbose=0,
                     callbacks=[LossAndErrorPrintingCallback()])


class EarlyStoppingAtMinLoss(keras.callbacks.Callback):
    def __init__(self, patience=0):
        super().__init__()
        self.patience = patience
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = np.inf

    def on_epoch_end(self, epoch, logs=None):
        current = logs.get("loss")
        if np.less(current, self.best):
            self.best = current
            self.wait = 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
                print("Restoring model weights from the end of the best epoch.")
                self.model.set_weights(self.best_weights)

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")


model = get_model()
stopper = EarlyStoppingAtMinLoss()
model.fit(x_train, y_train, batch_size=64, steps_per_epoch=5, epochs=30, verbose=0,
          callbacks=[LossAndErrorPrintingCallback(), stopper])
assert stopper.best_weights is not None


class CustomLearningRateScheduler(keras.callbacks.Callback):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self.model.optimizer, "learning_rate"):
            raise ValueError('Optimizer must have a "learning_rate" attribute.')
        lr = self.model.optimizer.learning_rate
        scheduled_lr = self.schedule(epoch, lr)
        self.model.optimizer.learning_rate = scheduled_lr
        print(f"\nEpoch {epoch}: Learning rate is {float(np.array(scheduled_lr))}.")


LR_SCHEDULE = [(3, 0.05), (6, 0.01), (9, 0.005), (12, 0.001)]


def lr_schedule(epoch, lr):
    if epoch < LR_SCHEDULE[0][0] or epoch > LR_SCHEDULE[-1][0]:
        return lr
    for i in range(len(LR_SCHEDULE)):
        if epoch == LR_SCHEDULE[i][0]:
            return LR_SCHEDULE[i][1]
    return lr


model = get_model()
model.fit(x_train, y_train, batch_size=64, steps_per_epoch=5, epochs=8, verbose=0,
          callbacks=[LossAndErrorPrintingCallback(),
                     CustomLearningRateScheduler(lr_schedule)])
assert abs(float(np.array(model.optimizer.learning_rate)) - 0.01) < 1e-7
