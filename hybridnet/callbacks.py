"""Keras callbacks, importable as ``hybridnet.callbacks`` (like ``keras.callbacks``)."""
from hybridnet.training.callbacks import (  # noqa: F401
    BackupAndRestore, Callback, CallbackList, CSVLogger, EarlyStopping, History,
    LambdaCallback, LazyLogs, LearningRateScheduler, ModelCheckpoint, ProgbarLogger,
    ReduceLROnPlateau, TensorBoard, TerminateOnNaN)
