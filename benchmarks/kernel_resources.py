"""What the GPU kernels use once compiled for Hopper (sm_90: H100/H200):
registers, spills and shared memory per kernel, for every AlexNet conv
layer (batch 128, 224x224) and GNMT's LSTM (batch 128, 50 steps, 1024
units), forward and backward, at the GPU defaults and at every autotune
candidate. Runs on any machine (no GPU): see
``hybridnet.kernels.triton_compile``.

Beside each kernel: the shared-memory estimate the autotuner filters
candidates with (``triton_smem_estimate``), so the two can be compared.

``--quick``: a smoke run in seconds: float32, AlexNet conv3 and GNMT's LSTM at
the defaults only (candidate 0), batch 8.

Usage:
  python benchmarks/kernel_resources.py [--json] [--dtype float32|bfloat16|all]
                                        [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from _common import ALEXNET_CONVS, GNMT_LSTM  # noqa: E402
from hybridnet.kernels import triton_compile  # noqa: E402

# the modules (the package exports the functions under the same names)
conv_mod = sys.modules["hybridnet.kernels.conv2d"]
lstm_mod = sys.modules["hybridnet.kernels.lstm"]

ALEXNET = ALEXNET_CONVS
GNMT = GNMT_LSTM
BATCH = 128
CANDIDATES = None  # None: every autotune candidate; n: the first n (0 = defaults)


def use_quick_sizes():
    """Rebinds the sizes ``rows_for`` reads to the ``--quick`` ones."""
    global ALEXNET, GNMT, BATCH, CANDIDATES
    ALEXNET = [c for c in ALEXNET_CONVS if c[0] == "conv3"]
    GNMT = dict(GNMT_LSTM, batch=8)
    BATCH = 8
    CANDIDATES = 1


def _conv_grad(layer, bs):
    _, _, _, _, _, s, p = layer

    def f(x, w, b):
        return conv_mod.conv2d(x, w, b, strides=s, padding=((p, p), (p, p)),
                               activation="relu", block_sizes=bs,
                               backend="gpu", interpret=False)

    return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                    argnums=(0, 1, 2))


def _conv_args(layer, dtype, batch=None):
    _, hw, cin, k, cout, _, _ = layer
    batch = BATCH if batch is None else batch
    S = jax.ShapeDtypeStruct
    return (S((batch, hw, hw, cin), dtype), S((k, k, cin, cout), dtype),
            S((cout,), dtype))


def _lstm_grad(bs):
    def f(x, k, r, b):
        return lstm_mod.lstm(x, k, r, b, block_sizes=bs, backend="gpu",
                             interpret=False)[0]

    return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                    argnums=(0, 1, 2, 3))


def _lstm_args(dtype, cfg=None):
    cfg = GNMT if cfg is None else cfg
    b, t, d, u = cfg["batch"], cfg["steps"], cfg["input"], cfg["hidden"]
    S = jax.ShapeDtypeStruct
    return (S((b, t, d), dtype), S((d, 4 * u), dtype), S((u, 4 * u), dtype),
            S((4 * u,), dtype))


def _short(bs, keys):
    return ",".join(f"{k.replace('block_', '')}={bs[k]}" for k in keys)


def rows_for(dtype):
    rows = []
    conv_keys = ("block_m", "block_cout", "block_cin", "num_warps")
    for layer in ALEXNET:
        for i, bs in enumerate(conv_mod._gpu_candidates(dtype)[:CANDIDATES]):
            est = conv_mod.triton_smem_estimate(bs, dtype)
            for k in triton_compile.compile_gpu_kernels(
                    _conv_grad(layer, bs), *_conv_args(layer, dtype)):
                rows.append(dict(layer=layer[0], candidate=i,
                                 block_sizes=_short(bs, conv_keys),
                                 estimate_bytes=est, **k.to_dict()))
    lstm_keys = ("recurrence", "block_b", "block_u", "block_k", "num_warps")
    for i, bs in enumerate(lstm_mod._gpu_candidates(dtype)[:CANDIDATES]):
        est = lstm_mod.triton_smem_estimate(bs, dtype)
        for k in triton_compile.compile_gpu_kernels(_lstm_grad(bs),
                                                    *_lstm_args(dtype)):
            rows.append(dict(layer="gnmt", candidate=i,
                             block_sizes=_short(bs, lstm_keys),
                             estimate_bytes=est, **k.to_dict()))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dtype", default="all",
                    choices=["float32", "bfloat16", "all"])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (seconds): float32, conv3 and the LSTM at the "
                         "defaults, batch 8")
    a = ap.parse_args(argv)
    if a.quick:
        use_quick_sizes()
        if a.dtype == "all":
            a.dtype = "float32"
    dtypes = (["float32", "bfloat16"] if a.dtype == "all" else [a.dtype])
    result = dict(target="sm_90", jax=jax.__version__,
                  triton=__import__("triton").__version__, quick=a.quick,
                  batch=dict(conv=BATCH, lstm=GNMT["batch"]), rows=[])
    for d in dtypes:
        for r in rows_for(jnp.dtype(d)):
            result["rows"].append(dict(dtype=d, **r))
    rows = result["rows"]
    result["summary"] = dict(
        kernels=len(rows), all_fit=all(r["fits"] for r in rows),
        spilling=[f"{r['dtype']} {r['layer']} {r['name']} {r['block_sizes']}: "
                  f"{r['spill_store_bytes']} B" for r in rows if r["spills"]],
        max_registers=max(r["registers"] for r in rows),
        max_shared_bytes=max(r["shared_bytes"] for r in rows),
        max_shared_over_estimate=max(r["shared_bytes"] / r["estimate_bytes"]
                                     for r in rows))
    if a.json:
        print(json.dumps(result))
        return
    print(f"Triton {result['triton']} for sm_90, jax {result['jax']}; "
          "shared = dynamic + static bytes per block; cand 0 = defaults")
    print(f"{'dtype':8} {'layer':6} {'cand':>4} {'kernel':32} {'regs':>4} "
          f"{'shared':>7} {'est.':>7} {'spill B':>7}  block sizes")
    for r in rows:
        print(f"{r['dtype']:8} {r['layer']:6} {r['candidate']:4d} "
              f"{r['name']:32} {r['registers']:4d} {r['shared_bytes']:7d} "
              f"{r['estimate_bytes']:7d} {r['spill_store_bytes']:7d}"
              f"  {r['block_sizes']}")
    print("summary:", json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
