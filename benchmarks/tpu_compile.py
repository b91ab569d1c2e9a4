"""Compile the Pallas kernels for a TPU with libtpu, without a TPU: every
AlexNet conv layer (batch 128, 224x224) and GNMT's LSTM (batch 128, 50
steps, 1024 units), forward and backward, float32 and bfloat16, at the TPU
defaults, through Mosaic's real compiler (jax's deviceless ahead-of-time
path, ``jax.experimental.topologies``). This catches what cross-lowering
cannot: VMEM exhaustion and Mosaic's layout and alignment rules.

libtpu is not a dependency of hybridnet (with it installed, every process
probes for a TPU); run this in its own environment:

  python3 -m venv /tmp/tpu && . /tmp/tpu/bin/activate
  pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')" \
      flax optax
  python benchmarks/tpu_compile.py [--topology v5e:2x2] [--json]

The last row lowers GNMT's forward LSTM with the VMEM limit the kernel
asks for removed: on a chip with a 16 MiB default scoped limit (v5e, v4)
it must fail with a VMEM error, which shows the check can fail (v6e's
larger default lets it compile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ACCELERATOR = {"v5e": "v5litepod-4", "v6e": "v6e-4", "v5p": "v5p-8",
               "v4": "v4-8"}


def _environment(topology: str) -> None:
    """What libtpu needs to start without a TPU host around it."""
    chip = topology.split(":")[0]
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", ACCELERATOR.get(chip, chip))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def run(topology: str) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    from _common import ALEXNET_CONVS, GNMT_LSTM
    from hybridnet.kernels import _common as C
    from hybridnet.kernels import conv2d, lstm

    topo = topologies.get_topology_desc(topology_name=topology,
                                        platform="tpu")
    sharding = SingleDeviceSharding(topo.devices[0])
    S = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
    rows = []

    def compile_(name, dtype, fn, args, expect_ok=True):
        t0 = time.perf_counter()
        try:
            jax.jit(fn).trace(*args).lower().compile()
            ok, err = True, ""
        except Exception as e:  # the compiler's verdict is the result
            ok, err = False, f"{type(e).__name__}: {e}".replace("\n", " ")
        rows.append(dict(kernel=name, dtype=dtype.__name__, compiled=ok,
                         expected=expect_ok, error=err[:300],
                         seconds=round(time.perf_counter() - t0, 2)))

    grad = lambda f, n: jax.grad(
        lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=tuple(range(n)))
    for dt in (jnp.float32, jnp.bfloat16):
        for name, hw, cin, k, cout, s, p in ALEXNET_CONVS:
            f = lambda x, w, b, s=s, p=p: conv2d(
                x, w, b, strides=s, padding=((p, p), (p, p)),
                activation="relu", backend="tpu", interpret=False)
            compile_(f"{name} fwd+bwd", dt, grad(f, 3),
                     (S((128, hw, hw, cin), dt), S((k, k, cin, cout), dt),
                      S((cout,), dt)))
        f = lambda x, k, r, b: lstm(x, k, r, b, backend="tpu",
                                    interpret=False)[0]
        b, t, d, u = (GNMT_LSTM[k] for k in ("batch", "steps", "input",
                                             "hidden"))
        lstm_args = (S((b, t, d), dt), S((d, 4 * u), dt),
                     S((u, 4 * u), dt), S((4 * u,), dt))
        compile_("gnmt lstm fwd+bwd", dt, grad(f, 4), lstm_args)

    limit = C.tpu_vmem_limit
    C.tpu_vmem_limit = lambda need, **kw: None
    try:
        small_default = topology.split(":")[0] in ("v4", "v5e")
        compile_("gnmt lstm fwd, VMEM limit removed", jnp.float32, f,
                 tuple(S(a.shape, jnp.float32) for a in lstm_args),
                 expect_ok=False if small_default else None)
    finally:
        C.tpu_vmem_limit = limit
    return dict(topology=topology, device=topo.devices[0].device_kind,
                jax=jax.__version__, rows=rows,
                all_defaults_compile=all(r["compiled"] for r in rows
                                         if r["expected"] is True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="v5e:2x2",
                    help="a jax topology name, e.g. v5e:2x2, v6e:2x2")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    _environment(a.topology)
    result = run(a.topology)
    if a.json:
        print(json.dumps(result))
        return
    print(f"{result['device']} ({result['topology']}), jax {result['jax']}")
    for r in result["rows"]:
        verdict = "compiles" if r["compiled"] else "FAILS"
        note = ("" if r["expected"] in (None, r["compiled"])
                else "   <- unexpected")
        print(f"{r['dtype']:8} {r['kernel']:36} {verdict:8} "
              f"{r['seconds']:5.1f}s {r['error'][:90]}{note}")
    print("all defaults compile:", result["all_defaults_compile"])


if __name__ == "__main__":
    main()
