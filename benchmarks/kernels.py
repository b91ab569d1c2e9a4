"""Pallas kernels vs XLA: AlexNet conv layers and GNMT's LSTM.

On GPU (one process run, same device for every side):
  * each AlexNet conv layer (batch 128, 224x224 input): Pallas conv2d vs
    ``lax.conv_general_dilated`` (XLA/cuDNN), forward and forward+backward;
  * GNMT's LSTM (hidden 1024, input 1024, batch 128, 50 steps) forward and
    forward+backward: the Pallas kernel (both recurrences, "stepwise" and
    "persistent") vs ``jax.experimental.rnn`` (cuDNN) vs a ``lax.scan``
    LSTM.
Ratios are throughput ratios, Pallas / peer (> 1: Pallas faster), printed
beside the targets: conv fwd+bwd >= 0.9x XLA/cuDNN per layer; LSTM fwd+bwd
>= 1.5x lax.scan and >= 1/1.2 of cuDNN.
On CPU, speed is skipped (Pallas runs only in interpret mode): the same
layers are run scaled down and the max abs error against the XLA reference
is printed per layer, forward and gradients.

``--quick``: a smoke run in seconds (GPU: two conv layers at batch 8, a small
LSTM, two timed calls; CPU: one conv layer, one LSTM recurrence): the
structure of the result, not its figures.

Usage:
  python benchmarks/kernels.py [--json | --markdown] [--dtype float32|bfloat16]
                               [--iters 20] [--autotune] [--cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _common import ALEXNET_CONVS, GNMT_LSTM  # noqa: E402
from hybridnet.kernels import (conv2d, conv2d_reference, lstm,  # noqa: E402
                               lstm_reference)

ALEXNET = ALEXNET_CONVS
CONV_BATCH = 128
GNMT = GNMT_LSTM
# CPU (interpret mode) scale-down: batch 2, spatial and channels reduced
ALEXNET_CPU = [
    ("conv1", 35, 3, 11, 8, 4, 2),
    ("conv2", 7, 8, 5, 24, 1, 2),
    ("conv3", 5, 24, 3, 48, 1, 1),
    ("conv4", 5, 48, 3, 32, 1, 1),
    ("conv5", 5, 32, 3, 32, 1, 1),
]
GNMT_CPU = dict(batch=4, steps=6, input=32, hidden=32)
RECURRENCES = ("stepwise", "persistent")
CPU_RECURRENCES = RECURRENCES
# --quick. GPU: conv2 and conv3 at their real shapes, batch 8, a small LSTM, both
# recurrences; CPU (interpret mode, ~5 s per kernel and its gradient): conv3 and the
# persistent LSTM.
QUICK_ALEXNET = ALEXNET_CONVS[1:3]
QUICK_CONV_BATCH = 8
QUICK_GNMT = dict(batch=16, steps=5, input=256, hidden=256)
QUICK_ALEXNET_CPU = ALEXNET_CPU[2:3]
QUICK_GNMT_CPU = dict(batch=4, steps=3, input=16, hidden=16)
QUICK_CPU_RECURRENCES = ("persistent",)
QUICK_ITERS = 2
TARGETS = dict(conv_fwdbwd_vs_xla=0.9, lstm_vs_scan=1.5, lstm_vs_cudnn=1 / 1.2)


def use_quick_sizes():
    """Rebinds the sizes the runs read to the ``--quick`` ones."""
    global ALEXNET, CONV_BATCH, GNMT, ALEXNET_CPU, GNMT_CPU, CPU_RECURRENCES
    ALEXNET, CONV_BATCH, GNMT = QUICK_ALEXNET, QUICK_CONV_BATCH, QUICK_GNMT
    ALEXNET_CPU, GNMT_CPU = QUICK_ALEXNET_CPU, QUICK_GNMT_CPU
    CPU_RECURRENCES = QUICK_CPU_RECURRENCES


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
    fr = jax.jit(lstm_reference)
    for rec in CPU_RECURRENCES:
        bs = dict(recurrence=rec, block_b=2, block_u=16, block_k=16)
        f = jax.jit(lambda *a, bs=bs: lstm(*a, block_sizes=bs))
        rows.append(dict(kernel="lstm", layer=rec, shape=GNMT_CPU,
                         fwd_max_abs_err=_maxerr(f(*args), fr(*args)),
                         grad_max_abs_err=_maxerr(
                             _lstm_grad(lstm, block_sizes=bs)(*args),
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

    def fwd(x, weights):
        return rnn.lstm(x, h0, c0, weights, lens, input_size=d, hidden_size=u,
                        num_layers=1, dropout=0.0, bidirectional=False)[0]

    grad = jax.grad(lambda x, w: jnp.sum(fwd(x, w).astype(jnp.float32)),
                    argnums=(0, 1))
    return jax.jit(fwd), jax.jit(grad), weights


def _lstm_fwd(fn, **kw):
    return jax.jit(lambda x, k, r, b: fn(x, k, r, b, **kw)[0])


def run_gpu(dtype, iters, autotune):
    bs = "autotune" if autotune else None
    rows = []
    for layer in ALEXNET:
        x, w, b, kw = _conv_inputs(layer, CONV_BATCH, dtype)
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
            row["fwd_speed_vs_xla"] = row["xla_fwd_ms"] / row["pallas_fwd_ms"]
            row["fwdbwd_speed_vs_xla"] = (row["xla_fwdbwd_ms"] /
                                          row["pallas_fwdbwd_ms"])
            row["target_met"] = (row["fwdbwd_speed_vs_xla"] >=
                                 TARGETS["conv_fwdbwd_vs_xla"])
        except Exception as e:  # report, keep going
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)

    args = _lstm_inputs(GNMT, dtype)
    row = dict(kernel="lstm", layer="gnmt", shape=GNMT)
    peers = {}  # name -> (fwd, fwd+bwd, args)
    for rec in RECURRENCES:
        kw = dict(block_sizes=bs if bs else {"recurrence": rec})
        if bs:  # autotune picks the recurrence too: time it once
            if rec != RECURRENCES[0]:
                continue
            rec = "autotuned"
        peers[f"pallas_{rec}"] = (_lstm_fwd(lstm, **kw),
                                  _lstm_grad(lstm, **kw), args)
    peers["scan"] = (_lstm_fwd(lstm_reference), _lstm_grad(lstm_reference),
                     args)
    try:
        f, g, wts = _cudnn_lstm(GNMT, dtype)
        peers["cudnn"] = (f, g, (args[0], wts))
    except Exception as e:
        row["cudnn_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    ref = jax.jit(lstm_reference)(*args)[0]
    for name, (fwd, grad, a) in peers.items():
        try:
            if name.startswith("pallas"):
                row[f"{name}_fwd_max_abs_err"] = _maxerr(fwd(*a), ref)
            row[f"{name}_fwd_ms"] = _time(fwd, a, iters)
            row[f"{name}_fwdbwd_ms"] = _time(grad, a, iters)
        except Exception as e:
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    for name in [n for n in peers if n.startswith("pallas")]:
        for peer, target in (("scan", "lstm_vs_scan"),
                             ("cudnn", "lstm_vs_cudnn")):
            mine, theirs = (row.get(f"{n}_fwdbwd_ms") for n in (name, peer))
            if mine and theirs:
                row[f"{name}_speed_vs_{peer}"] = theirs / mine
                row[f"{name}_meets_{target}"] = (theirs / mine >=
                                                 TARGETS[target])
    rows.append(row)
    return rows


def _markdown(result):
    """The GPU result as Markdown tables (for the docs)."""
    out = [f"{result['device']}, jax {result['jax']}, {result['dtype']}, "
           f"median of {result.get('iters')} calls; speed = peer time / "
           "Pallas time (> 1: Pallas faster).", "",
           f"| AlexNet layer (batch {CONV_BATCH}) | Pallas fwd ms | XLA fwd ms | "
           "fwd speed | Pallas fwd+bwd ms | XLA fwd+bwd ms | fwd+bwd speed "
           f"(target >= {TARGETS['conv_fwdbwd_vs_xla']}) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if r["kernel"] != "conv2d":
            continue
        if "error" in r:
            out.append(f"| {r['layer']} | error: {r['error'][:80]} |"
                       + " |" * 5)
            continue
        out.append(f"| {r['layer']} | {r['pallas_fwd_ms']:.3f} | "
                   f"{r['xla_fwd_ms']:.3f} | {r['fwd_speed_vs_xla']:.2f} | "
                   f"{r['pallas_fwdbwd_ms']:.3f} | {r['xla_fwdbwd_ms']:.3f} | "
                   f"{r['fwdbwd_speed_vs_xla']:.2f} |")
    lstm_row = next(r for r in result["rows"] if r["kernel"] == "lstm")
    names = sorted({k[:-len("_fwdbwd_ms")] for k in lstm_row
                    if k.endswith("_fwdbwd_ms")})
    out += ["", f"| GNMT LSTM (B {GNMT['batch']}, T {GNMT['steps']}, "
            f"{GNMT['hidden']}) | fwd ms | fwd+bwd ms | "
            f"speed vs scan (>= {TARGETS['lstm_vs_scan']}) | speed vs cuDNN "
            f"(>= {TARGETS['lstm_vs_cudnn']:.2f}) |",
            "| --- | --- | --- | --- | --- |"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for n in names:
        out.append(f"| {n} | {fmt(lstm_row.get(f'{n}_fwd_ms'))} | "
                   f"{fmt(lstm_row.get(f'{n}_fwdbwd_ms'))} | "
                   f"{fmt(lstm_row.get(f'{n}_speed_vs_scan'))} | "
                   f"{fmt(lstm_row.get(f'{n}_speed_vs_cudnn'))} |")
    errors = {k: v for k, v in lstm_row.items() if k.endswith("error")}
    out += [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(out)


def _print_table(result):
    print(f"backend: {result['backend']}  device: {result['device']}  "
          f"dtype: {result['dtype']}  jax {result['jax']}")
    if result["speed"] == "skipped":
        print("speed: skipped (Pallas runs in interpret mode on CPU); "
              "scaled-down correctness checks vs the XLA reference:")
        print(f"{'kernel':8} {'layer':10} {'fwd max|err|':>14} {'grad max|err|':>14}")
        for r in result["rows"]:
            print(f"{r['kernel']:8} {r['layer']:10} {r['fwd_max_abs_err']:14.3e} "
                  f"{r['grad_max_abs_err']:14.3e}")
        return
    print(f"{'layer':6} {'pallas fwd':>11} {'xla fwd':>9} {'speed':>6} "
          f"{'pallas f+b':>11} {'xla f+b':>9} {'speed':>6}  (ms, median; "
          "speed = xla / pallas)")
    for r in result["rows"]:
        if r["kernel"] != "conv2d":
            continue
        if "error" in r:
            print(f"{r['layer']:6} error: {r['error']}")
            continue
        print(f"{r['layer']:6} {r['pallas_fwd_ms']:11.3f} {r['xla_fwd_ms']:9.3f} "
              f"{r['fwd_speed_vs_xla']:6.2f} "
              f"{r['pallas_fwdbwd_ms']:11.3f} {r['xla_fwdbwd_ms']:9.3f} "
              f"{r['fwdbwd_speed_vs_xla']:6.2f}")
    for r in result["rows"]:
        if r["kernel"] == "lstm":
            print("GNMT LSTM (ms; speed = peer / pallas): " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items() if k not in ("kernel", "layer", "shape")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--markdown", action="store_true",
                    help="GPU: print the tables as Markdown (for the docs)")
    ap.add_argument("--dtype", default="float32",
                    choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--autotune", action="store_true",
                    help="GPU: block_sizes='autotune' (cached; every tuning "
                         "run is recorded in the cache file)")
    ap.add_argument("--cpu", action="store_true",
                    help="force the scaled-down CPU correctness run")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run (seconds): fewer conv layers, a small LSTM, "
                         f"--iters {QUICK_ITERS}")
    a = ap.parse_args(argv)
    if a.quick:
        use_quick_sizes()
        a.iters = min(a.iters, QUICK_ITERS)
    dtype = jnp.dtype(a.dtype)
    backend = jax.default_backend()
    result = dict(backend=backend, device=jax.devices()[0].device_kind,
                  jax=jax.__version__, dtype=a.dtype, quick=a.quick)
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
    elif a.markdown and result["speed"] == "measured":
        print(_markdown(result))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
