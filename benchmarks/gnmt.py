"""GNMT training throughput: hybridnet against the same model in Keras 3 (JAX backend),
side by side in one process, plus what bucketing and load-balanced batching save.

Both sides build GNMT v2 (``hybridnet.applications.gnmt``; the Keras side is the same
graph written with ``keras.layers`` and a Keras layer for the normalised Bahdanau
attention), start from the same weights (copied layer by layer), use Adam with the same
epsilon and the same label-smoothed loss, and train on the same bucketed batches of the
embedded synthetic corpus through ``fit`` (one compiled step per batch shape on each
side; every shape is compiled in a warm-up epoch before timing). Rounds are
interleaved; the figure is training tokens (real source + target tokens, padding not
counted) per second. Both sides must reach the same loss: the final losses of the timed
rounds are reported with their relative difference.

Keys: ``gnmt_tokens_vs_keras`` (hybridnet / Keras tokens per second; target >= 1.2),
``tokens_per_s``, ``final_loss``, ``loss_rel_diff``, ``padding_fraction_bucketed``,
``padding_fraction_naive`` (random batches padded to their longest pair),
``shard_token_imbalance_balanced`` / ``_naive`` (8 data-parallel shards: every shard's
part from one bucket, dealt by length, against every shard bucketing alone).

Usage::

    python benchmarks/gnmt.py            # hidden 128, 4 layers, 24 steps, 3 rounds
    python benchmarks/gnmt.py --quick    # tiny model, 1 round (a smoke run)
    python benchmarks/gnmt.py --json     # table on stderr, one JSON object on stdout
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported anywhere

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

EPSILON = 1e-7  # Keras' Adam default
TARGET = 1.2


# ------------------------------------------------------------------------------ data

def corpus(args):
    """Bucketed batches (a fixed list, the same for both sides) and the batching figures."""
    from hybridnet.data import text

    train, _ = text.embedded_corpus(args.pairs, 10, seed=0)
    tok = text.SubwordTokenizer.train(train.source + train.target, vocab_size=args.vocab)
    pairs = text.encode_pairs(tok, train.source, train.target, max_length=args.max_length)
    batches = text.BucketedBatches(pairs.source, pairs.target, batch_size=args.batch,
                                   bucket_width=args.bucket_width, seed=0)
    fixed = list(batches.epoch(np.random.default_rng(0)))[:args.steps]
    tokens = sum(int((x[0] != 0).sum() + (y != 0).sum()) for x, y, _ in fixed)
    kw = dict(batch_size=args.balance_batch, shards=8)
    figures = {
        "padding_fraction_bucketed": batches.statistics()["padding_fraction"],
        "padding_fraction_naive": text.BucketedBatches(
            pairs.source, pairs.target, batch_size=args.batch,
            bucket_width=None).statistics()["padding_fraction"],
        "shard_token_imbalance_balanced": text.BucketedBatches(
            pairs.source, pairs.target, bucket_width=args.bucket_width,
            **kw).statistics()["shard_token_imbalance"],
        "shard_token_imbalance_naive": text.BucketedBatches(
            pairs.source, pairs.target, bucket_width=args.bucket_width, balanced=False,
            **kw).statistics()["shard_token_imbalance"],
        "padding_fraction_naive_shards": text.BucketedBatches(
            pairs.source, pairs.target, bucket_width=args.bucket_width, balanced=False,
            **kw).statistics()["padding_fraction"],
    }
    return tok.vocab_size, [(x, y) for x, y, _ in fixed], tokens, figures


# ---------------------------------------------------------------------------- models

def hybridnet_side(vocab, args):
    import hybridnet
    from hybridnet.applications import LabelSmoothedCrossentropy, gnmt
    from hybridnet.strategies import DataParallel

    hybridnet.utils.set_random_seed(0)
    model = gnmt(vocab, hidden=args.hidden, layers=args.layers, dropout=0.0)
    model.compile(hybridnet.optimizers.Adam(args.learning_rate, epsilon=EPSILON),
                  loss=LabelSmoothedCrossentropy(0.1),
                  strategy=DataParallel(devices=jax.devices()[:1]))
    return model


def keras_gnmt(vocab, hidden, layers):
    """GNMT v2 in Keras 3, layer for layer (and name for name) as hybridnet's builder."""
    import keras
    from keras import ops

    class BahdanauAttention(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.supports_masking = True

        def build(self, input_shape):
            q, k = input_shape
            u = self.units
            self.query_kernel = self.add_weight(shape=(q[-1], u), name="query_kernel")
            self.key_kernel = self.add_weight(shape=(k[-1], u), name="key_kernel")
            self.attention_v = self.add_weight(shape=(u,), name="attention_v")
            self.attention_g = self.add_weight(shape=(), name="attention_g")
            self.attention_b = self.add_weight(shape=(u,), name="attention_b",
                                               initializer="zeros")

        def call(self, inputs, mask=None):
            query, keys = inputs
            v = self.attention_g * self.attention_v / ops.sqrt(
                ops.sum(ops.square(self.attention_v)))
            hidden_ = ops.tanh(ops.expand_dims(ops.matmul(query, self.query_kernel), 2)
                               + ops.expand_dims(ops.matmul(keys, self.key_kernel), 1)
                               + self.attention_b)
            scores = ops.einsum("bqku,u->bqk", hidden_, v)
            if mask is not None and mask[1] is not None:
                scores = ops.where(ops.expand_dims(mask[1], 1), scores, -1.0e9)
            return ops.matmul(ops.softmax(scores, axis=-1), keys)

        def compute_mask(self, inputs, mask=None):
            return None if mask is None else mask[0]

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[0][:-1]) + (input_shape[1][-1],)

    L = keras.layers
    lstm = lambda name: L.LSTM(hidden, return_sequences=True, name=name)  # noqa: E731
    source = keras.Input((None,), dtype="int32", name="source")
    target_in = keras.Input((None,), dtype="int32", name="target_in")
    x = L.Embedding(vocab, hidden, mask_zero=True, name="encoder_embedding")(source)
    x = L.Bidirectional(L.LSTM(hidden, return_sequences=True), name="encoder_lstm_0")(x)
    x = lstm("encoder_lstm_1")(x)
    for i in range(2, layers):
        x = L.Add(name=f"encoder_residual_{i}")([lstm(f"encoder_lstm_{i}")(x), x])
    y = L.Embedding(vocab, hidden, mask_zero=True, name="decoder_embedding")(target_in)
    query = lstm("decoder_lstm_0")(y)
    context = BahdanauAttention(hidden, name="attention")([query, x])
    y = lstm("decoder_lstm_1")(L.Concatenate(name="decoder_concat_1")([query, context]))
    for i in range(2, layers):
        z = lstm(f"decoder_lstm_{i}")(L.Concatenate(name=f"decoder_concat_{i}")([y, context]))
        y = L.Add(name=f"decoder_residual_{i}")([z, y])
    logits = L.Dense(vocab, name="classifier")(y)
    return keras.Model([source, target_in], logits)


def keras_side(vocab, args, reference):
    import keras
    from keras import ops

    class LabelSmoothed(keras.losses.Loss):
        def call(self, y_true, y_pred):
            logp = ops.log_softmax(y_pred, axis=-1)
            labels = ops.expand_dims(ops.cast(y_true, "int32"), -1)
            nll = -ops.squeeze(ops.take_along_axis(logp, labels, axis=-1), -1)
            return 0.9 * nll - 0.1 * ops.mean(logp, axis=-1)

    keras.utils.set_random_seed(0)
    model = keras_gnmt(vocab, args.hidden, args.layers)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(reference.get_layer(layer.name).get_weights())
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate, epsilon=EPSILON),
                  loss=LabelSmoothed())
    return model


class Side:
    """One framework's model and a ``fit`` over the fixed batch list (one epoch)."""

    def __init__(self, model, batches, block):
        self.model, self.batches, self.block = model, batches, block
        self.losses = []

    def epoch(self):
        history = self.model.fit((b for b in self.batches), epochs=1, verbose=0,
                                 steps_per_epoch=len(self.batches))
        self.block(self.model)
        self.losses.append(float(history.history["loss"][-1]))


# ------------------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=24, help="batches per timed epoch")
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument("--bucket-width", type=int, default=8)
    p.add_argument("--balance-batch", type=int, default=256,
                   help="global batch of the 8-shard balance figures")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stat", choices=("median", "best"), default="median")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: hidden 32, 2 layers, 8 steps, 1 round")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.steps, args.repeats = 32, 2, 8, 1
        args.pairs, args.max_length, args.bucket_width = 3000, 24, 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print  # noqa: E731
    vocab, batches, tokens, figures = corpus(args)
    hn = hybridnet_side(vocab, args)
    sides = {"hybridnet": Side(hn, batches, lambda m: jax.block_until_ready(m.variables))}
    sides["keras"] = Side(keras_side(vocab, args, hn), batches, lambda m: jax.block_until_ready(
        [v.value for v in m.trainable_variables]))
    for side in sides.values():  # warm-up: compiles every batch shape
        side.epoch()
    warm = {name: side.losses[-1] for name, side in sides.items()}
    times = _common.interleaved({n: s.epoch for n, s in sides.items()}, args.repeats,
                                log=log if not args.json else None)
    tokens_per_s = {n: tokens / _common.summarize(t, args.stat) for n, t in times.items()}
    final = {n: s.losses[-1] for n, s in sides.items()}
    rel = abs(final["hybridnet"] - final["keras"]) / abs(final["keras"])
    ratio = tokens_per_s["hybridnet"] / tokens_per_s["keras"]
    result = {
        "benchmark": "gnmt", "quick": args.quick, "devices": jax.device_count(),
        "config": {k: getattr(args, k) for k in ("hidden", "layers", "batch", "steps",
                                                  "pairs", "max_length", "bucket_width",
                                                  "repeats", "stat")},
        "vocab": vocab, "tokens_per_epoch": tokens,
        "gnmt_tokens_vs_keras": ratio, "target": TARGET, "target_met": bool(ratio >= TARGET),
        "tokens_per_s": tokens_per_s, "seconds": times, "warmup_loss": warm,
        "final_loss": final, "loss_rel_diff": rel, **figures,
    }
    rows = [[n, f"{tokens_per_s[n]:.0f}", f"{final[n]:.4f}"] for n in sides]
    log(_common.format_table(["side", "tokens/s", "final loss"], rows))
    log(f"gnmt_tokens_vs_keras: {ratio:.2f} (target >= {TARGET}); loss difference "
        f"{rel:.2e}")
    log(f"padding: {figures['padding_fraction_bucketed']:.3f} bucketed, "
        f"{figures['padding_fraction_naive']:.3f} random batches; 8-shard token imbalance: "
        f"{figures['shard_token_imbalance_balanced']:.3f} balanced, "
        f"{figures['shard_token_imbalance_naive']:.3f} naive")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
