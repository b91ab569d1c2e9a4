"""Pallas kernels vs XLA: AlexNet conv layers and GNMT's LSTM.

On GPU (one process run, same device for every side):
  * each AlexNet conv layer (batch 128, 224x224 input): Pallas conv2d vs
    ``lax.conv_general_dilated`` (XLA/cuDNN), forward and forward+backward;
  * GNMT's LSTM (hidden 1024, input 1024, batch 128, 50 steps) forward+
    backward: Pallas vs ``jax.experimental.rnn`` (cuDNN) vs a ``lax.scan``
    LSTM. Ratios are Pallas time / peer time (< 1: Pallas faster).
On CPU, speed is skipped (Pallas runs only in interpret mode): the same
layers are run scaled down and the max abs error against the XLA reference
is printed per layer, forward and gradients.

Usage:
  python benchmarks/kernels.py [--json] [--dtype float32|bfloat16]
                               [--iters 20] [--autotune] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hybridnet.kernels import (conv2d, conv2d_reference, lstm,  # noqa: E402
                               lstm_reference)

# name, input H=W, Cin, kernel, Cout, stride, padding (torchvision AlexNet)
ALEXNET = [
    ("conv1", 224, 3, 11, 64, 4, 2),
    ("conv2", 27, 64, 5, 192, 1, 2),
    ("conv3", 13, 192, 3, 384, 1, 1),
    ("conv4", 13, 384, 3, 256, 1, 1),
    ("conv5", 13, 256, 3, 256, 1, 1),
]
GNMT = dict(batch=128, steps=50, input=1024, hidden=1024)
# CPU (interpret mode) scale-down: batch 2, spatial and channels reduced
ALEXNET_CPU = [
    ("conv1", 35, 3, 11, 8, 4, 2),
    ("conv2", 7, 8, 5, 24, 1, 2),
    ("conv3", 5, 24, 3, 48, 1, 1),
    ("conv4", 5, 48, 3, 32, 1, 1),
    ("conv5", 5, 32, 3, 32, 1, 1),
]
GNMT_CPU = dict(batch=4, steps=6, input=32, hidden=32)


def _rand(rng, shape, dtype, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape, np.float32), dtype)


def _time(fn, args, iters):
    """Median wall time per call (ms); the first call compiles (untimed)."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _conv_inputs(layer, batch, dtype, seed=0):
    name, hw, cin, k, cout, s, p = layer
    rng = np.random.default_rng(seed)
    x = _rand(rng, (batch, hw, hw, cin), dtype)
    w = _rand(rng, (k, k, cin, cout), dtype, 1 / np.sqrt(k * k * cin))
    b = _rand(rng, (cout,), dtype, 0.1)
    kw = dict(strides=s, padding=((p, p), (p, p)), activation="relu")
    return x, w, b, kw


def _conv_fns(fn, kw):
    fwd = jax.jit(lambda x, w, b: fn(x, w, b, **kw))
    grad = jax.jit(jax.grad(
        lambda x, w, b: jnp.sum(fn(x, w, b, **kw).astype(jnp.float32)),
        argnums=(0, 1, 2)))
    return fwd, grad


def _lstm_inputs(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    b, t, d, u = cfg["batch"], cfg["steps"], cfg["input"], cfg["hidden"]
    x = _rand(rng, (b, t, d), dtype)
    k = _rand(rng, (d, 4 * u), dtype, 1 / np.sqrt(d))
    r = _rand(rng, (u, 4 * u), dtype, 1 / np.sqrt(u))
    bias = _rand(rng, (4 * u,), dtype, 0.1)
    return x, k, r, bias


def _lstm_grad(fn, **kw):
    return jax.jit(jax.grad(
        lambda x, k, r, b: jnp.sum(fn(x, k, r, b, **kw)[0].astype(jnp.float32)),
        argnums=(0, 1, 2, 3)))


def _maxerr(a, b):
    return float(max(jnp.max(jnp.abs(jnp.asarray(u, jnp.float32) -
                                     jnp.asarray(v, jnp.float32)))
                     for u, v in zip(jax.tree_util.tree_leaves(a),
                                     jax.tree_util.tree_leaves(b))))


# --------------------------------------------------------------------------
def run_cpu(dtype):
    rows = []
    for layer in ALEXNET_CPU:
        x, w, b, kw = _conv_inputs(layer, 2, dtype)
        (pf, pg), (rf, rg) = _conv_fns(conv2d, kw), _conv_fns(conv2d_reference, kw)
        rows.append(dict(kernel="conv2d", layer=layer[0],
                         shape=dict(x=list(x.shape), w=list(w.shape)),
                         fwd_max_abs_err=_maxerr(pf(x, w, b), rf(x, w, b)),
                         grad_max_abs_err=_maxerr(pg(x, w, b), rg(x, w, b))))
    args = _lstm_inputs(GNMT_CPU, dtype)
    f = jax.jit(lstm)
    fr = jax.jit(lstm_reference)
    rows.append(dict(kernel="lstm", layer="gnmt", shape=GNMT_CPU,
                     fwd_max_abs_err=_maxerr(f(*args), fr(*args)),
                     grad_max_abs_err=_maxerr(_lstm_grad(lstm)(*args),
                                              _lstm_grad(lstm_reference)(*args))))
    return rows


def _cudnn_lstm(cfg, dtype):
    from jax.experimental import rnn
    b, t, d, u = cfg["batch"], cfg["steps"], cfg["input"], cfg["hidden"]
    weights = rnn.init_lstm_weight(jax.random.PRNGKey(0), d, u, 1, False)
    weights = weights.astype(dtype)
    h0 = jnp.zeros((1, b, u), dtype)
    c0 = jnp.zeros((1, b, u), dtype)
    lens = jnp.full((b,), t, jnp.int32)

    def loss(x, weights):
        y, _, _ = rnn.lstm(x, h0, c0, weights, lens, input_size=d,
                           hidden_size=u, num_layers=1, dropout=0.0,
                           bidirectional=False)
        return jnp.sum(y.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1))), weights


def run_gpu(dtype, iters, autotune):
    bs = "autotune" if autotune else None
    rows = []
    for layer in ALEXNET:
        x, w, b, kw = _conv_inputs(layer, 128, dtype)
        row = dict(kernel="conv2d", layer=layer[0],
                   shape=dict(x=list(x.shape), w=list(w.shape),
                              stride=layer[5], pad=layer[6]))
        try:
            pf, pg = _conv_fns(conv2d, dict(kw, block_sizes=bs))
            rf, rg = _conv_fns(conv2d_reference, kw)
            row["fwd_max_abs_err"] = _maxerr(pf(x, w, b), rf(x, w, b))
            row["pallas_fwd_ms"] = _time(pf, (x, w, b), iters)
            row["xla_fwd_ms"] = _time(rf, (x, w, b), iters)
            row["pallas_fwdbwd_ms"] = _time(pg, (x, w, b), iters)
            row["xla_fwdbwd_ms"] = _time(rg, (x, w, b), iters)
            row["fwd_ratio_pallas_over_xla"] = (row["pallas_fwd_ms"] /
                                                row["xla_fwd_ms"])
            row["fwdbwd_ratio_pallas_over_xla"] = (row["pallas_fwdbwd_ms"] /
                                                   row["xla_fwdbwd_ms"])
        except Exception as e:  # report, keep going
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)

    args = _lstm_inputs(GNMT, dtype)
    row = dict(kernel="lstm", layer="gnmt", shape=GNMT)
    peers = {}
    try:
        peers["pallas"] = (_lstm_grad(lstm, block_sizes=bs), args)
        peers["scan"] = (_lstm_grad(lstm_reference), args)
        g, wts = _cudnn_lstm(GNMT, dtype)
        peers["cudnn"] = (g, (args[0], wts))
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    for name, (fn, a) in peers.items():
        try:
            row[f"{name}_fwdbwd_ms"] = _time(fn, a, iters)
        except Exception as e:
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        row["fwd_max_abs_err_vs_scan"] = _maxerr(
            jax.jit(lstm)(*args), jax.jit(lstm_reference)(*args))
    except Exception as e:
        row["fwd_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    for peer in ("scan", "cudnn"):
        if "pallas_fwdbwd_ms" in row and f"{peer}_fwdbwd_ms" in row:
            row[f"ratio_pallas_over_{peer}"] = (row["pallas_fwdbwd_ms"] /
                                                row[f"{peer}_fwdbwd_ms"])
    rows.append(row)
    return rows


def _print_table(result):
    print(f"backend: {result['backend']}  device: {result['device']}  "
          f"dtype: {result['dtype']}  jax {result['jax']}")
    if result["speed"] == "skipped":
        print("speed: skipped (Pallas runs in interpret mode on CPU); "
              "scaled-down correctness checks vs the XLA reference:")
        print(f"{'kernel':8} {'layer':6} {'fwd max|err|':>14} {'grad max|err|':>14}")
        for r in result["rows"]:
            print(f"{r['kernel']:8} {r['layer']:6} {r['fwd_max_abs_err']:14.3e} "
                  f"{r['grad_max_abs_err']:14.3e}")
        return
    print(f"{'layer':6} {'pallas fwd':>11} {'xla fwd':>9} {'ratio':>6} "
          f"{'pallas f+b':>11} {'xla f+b':>9} {'ratio':>6}  (ms, median)")
    for r in result["rows"]:
        if r["kernel"] != "conv2d":
            continue
        if "error" in r:
            print(f"{r['layer']:6} error: {r['error']}")
            continue
        print(f"{r['layer']:6} {r['pallas_fwd_ms']:11.3f} {r['xla_fwd_ms']:9.3f} "
              f"{r['fwd_ratio_pallas_over_xla']:6.2f} "
              f"{r['pallas_fwdbwd_ms']:11.3f} {r['xla_fwdbwd_ms']:9.3f} "
              f"{r['fwdbwd_ratio_pallas_over_xla']:6.2f}")
    for r in result["rows"]:
        if r["kernel"] == "lstm":
            print("GNMT LSTM fwd+bwd (ms): " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items() if k not in ("kernel", "layer", "shape")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dtype", default="float32",
                    choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--autotune", action="store_true",
                    help="GPU: block_sizes='autotune' (cached; every tuning "
                         "run is recorded in the cache file)")
    ap.add_argument("--cpu", action="store_true",
                    help="force the scaled-down CPU correctness run")
    a = ap.parse_args(argv)
    dtype = jnp.dtype(a.dtype)
    backend = jax.default_backend()
    result = dict(backend=backend, device=jax.devices()[0].device_kind,
                  jax=jax.__version__, dtype=a.dtype)
    if backend == "gpu" and not a.cpu:
        result.update(speed="measured", iters=a.iters, autotune=a.autotune,
                      rows=run_gpu(dtype, a.iters, a.autotune))
    else:
        result.update(speed="skipped",
                      reason=f"backend {backend!r}: Pallas runs in interpret "
                             "mode only; correctness checks at reduced size",
                      rows=run_cpu(dtype))
    if a.json:
        print(json.dumps(result))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
