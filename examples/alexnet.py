"""AlexNet, written exactly as Keras code, trained on small images.

The default data set is scikit-learn's bundled handwritten digits (1,797 real
images, no download) upscaled to 64x64 RGB, so the full AlexNet stack (11x11/4
convolution, three 3x3 convolutions, two 4096-wide fully connected layers) runs
in about a minute on a CPU. Prints the test accuracy.

    python examples/alexnet.py [--epochs 6] [--batch-size 128] [--devices 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def load_data(image_size: int = 64, seed: int = 0):
    """Digits upscaled to ``image_size`` x ``image_size`` x 3 in [0, 1], split 80/20."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    factor = image_size // 8
    images = np.kron(images, np.ones((factor, factor), "float32"))  # nearest-neighbour upscale
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype("int32")
    return train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)


def alexnet(input_shape=(64, 64, 3), n_classes=10):
    """AlexNet (the single-tower "one weird trick" variant) as plain Keras code."""
    from hybridnet import Input, Sequential
    from hybridnet.layers import (Activation, Conv2D, Dense, Dropout, Flatten, MaxPooling2D,
                                  ZeroPadding2D)

    return Sequential([
        Input(shape=input_shape),
        ZeroPadding2D(2),
        Conv2D(64, 11, strides=4),
        Activation("relu"),
        MaxPooling2D(3, 2),
        ZeroPadding2D(2),
        Conv2D(192, 5),
        Activation("relu"),
        MaxPooling2D(3, 2),
        Conv2D(384, 3, padding="same"),
        Activation("relu"),
        Conv2D(256, 3, padding="same"),
        Activation("relu"),
        Conv2D(256, 3, padding="same"),
        Activation("relu"),
        MaxPooling2D(3, 2),
        Flatten(),
        Dropout(0.5),
        Dense(4096),
        Activation("relu"),
        Dropout(0.5),
        Dense(4096),
        Activation("relu"),
        Dense(n_classes),
        Activation("softmax"),
    ], name="alexnet")


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--devices", type=int, default=None,
                        help="simulate this many CPU devices; the batch is split over them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax

    import hybridnet

    hybridnet.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = load_data(seed=args.seed)
    model = alexnet(x_train.shape[1:], n_classes=10)
    model.compile(optimizer=hybridnet.optimizers.Adam(learning_rate=args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
          f"plan: {model.plan.mesh_axes}")
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              verbose=args.verbose)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"trained {args.epochs} epochs on {len(x_train)} images in {seconds:.1f}s; "
          f"test accuracy: {accuracy:.4f} (loss {loss:.4f}) on {len(x_test)} images")
    return accuracy


if __name__ == "__main__":
    sys.exit(0 if main() > 0.5 else 1)
