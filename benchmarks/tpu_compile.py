"""Compile the Pallas kernels for a TPU with libtpu, without a TPU: every
AlexNet conv layer (batch 128, 224x224) and GNMT's LSTM (batch 128, 50
steps, 1024 units), forward and backward, float32 and bfloat16, at the TPU
defaults, through Mosaic's real compiler (jax's deviceless ahead-of-time
path, ``jax.experimental.topologies``). This catches what cross-lowering
cannot: VMEM exhaustion and Mosaic's layout and alignment rules.

libtpu is not a dependency of hybridnet (with it installed, every process
probes for a TPU); run this in its own environment:

  python3 -m venv /tmp/tpu && . /tmp/tpu/bin/activate
  pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')" \\
      flax optax
  python benchmarks/tpu_compile.py [--topology v5e:2x2] [--json] [--quick]

The last row lowers GNMT's forward LSTM with the VMEM limit the kernel
asks for removed: on a chip with a 16 MiB default scoped limit (v5e, v4)
it must fail with a VMEM error, which shows the check can fail (v6e's
larger default lets it compile).

``--quick``: two conv layers (conv1, conv3) at batch 8 and a 128-unit LSTM
(batch 8, 4 steps), both dtypes, no VMEM-limit row: seconds.

Without libtpu (``jax[tpu]`` not installed) nothing can be compiled for a
TPU. The script then says so (``"status": "needs jax[tpu]"``, every row
``"compiled": null``) and only cross-lowers each kernel for "tpu" with
jax's own lowering (``lower(lowering_platforms=("tpu",))``: Mosaic MLIR in a
``tpu_custom_call``; block shapes and primitives checked, VMEM and layouts
not). Exit status: 0 when compiled, and for ``--quick`` when only lowered;
3 (``EXIT_NEEDS_LIBTPU``) for a full run without libtpu, whose result is
missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ACCELERATOR = {"v5e": "v5litepod-4", "v6e": "v6e-4", "v5p": "v5p-8",
               "v4": "v4-8"}
EXIT_NEEDS_LIBTPU = 3
NEEDS_LIBTPU = "needs jax[tpu]"
QUICK_CONVS = ("conv1", "conv3")
QUICK_BATCH = 8
QUICK_LSTM = dict(batch=8, steps=4, input=128, hidden=128)


def _environment(topology: str) -> None:
    """What libtpu needs to start without a TPU host around it."""
    chip = topology.split(":")[0]
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", ACCELERATOR.get(chip, chip))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def _imports():
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (here, os.path.dirname(here)):
        if path not in sys.path:
            sys.path.insert(0, path)


def cases(quick: bool = False) -> list[tuple]:
    """The kernels to compile: ``(name, dtype, fn, [(shape, dtype), ...])``,
    forward and backward of each conv layer and of the LSTM, both dtypes."""
    import jax
    import jax.numpy as jnp

    _imports()
    from _common import ALEXNET_CONVS, GNMT_LSTM
    from hybridnet.kernels import conv2d

    convs = [c for c in ALEXNET_CONVS if not quick or c[0] in QUICK_CONVS]
    batch = QUICK_BATCH if quick else 128
    cfg = QUICK_LSTM if quick else GNMT_LSTM
    grad = lambda f, n: jax.grad(  # noqa: E731
        lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=tuple(range(n)))
    out = []
    for dt in (jnp.float32, jnp.bfloat16):
        for name, hw, cin, k, cout, s, p in convs:
            f = lambda x, w, b, s=s, p=p: conv2d(  # noqa: E731
                x, w, b, strides=s, padding=((p, p), (p, p)),
                activation="relu", backend="tpu", interpret=False)
            out.append((f"{name} fwd+bwd", dt, grad(f, 3),
                        [((batch, hw, hw, cin), dt), ((k, k, cin, cout), dt),
                         ((cout,), dt)]))
        b, t, d, u = (cfg[k] for k in ("batch", "steps", "input", "hidden"))
        out.append((f"{'lstm' if quick else 'gnmt lstm'} fwd+bwd", dt,
                    grad(lstm_forward, 4), _lstm_shapes(b, t, d, u, dt)))
    return out


def lstm_forward(x, k, r, b):
    from hybridnet.kernels import lstm
    return lstm(x, k, r, b, backend="tpu", interpret=False)[0]


def _lstm_shapes(b, t, d, u, dt):
    return [((b, t, d), dt), ((d, 4 * u), dt), ((u, 4 * u), dt), ((4 * u,), dt)]


def topology_or_reason(topology: str):
    """``(topology description, None)``, or ``(None, why)`` without libtpu."""
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(topology_name=topology,
                                            platform="tpu"), None
    except Exception as e:  # jax raises RuntimeError without jax[tpu]
        return None, f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def run(topology: str, quick: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    _imports()
    from _common import GNMT_LSTM
    from hybridnet.kernels import _common as C

    topo, reason = topology_or_reason(topology)
    rows = []
    if topo is None:  # no libtpu: lower only, and say so
        for name, dt, fn, shapes in cases(quick):
            args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
            t0 = time.perf_counter()
            try:
                text = jax.jit(fn).trace(*args).lower(
                    lowering_platforms=("tpu",)).as_text()
                ok, err = True, ""
                kernels = text.count("tpu_custom_call")
            except Exception as e:
                ok, err, kernels = False, f"{type(e).__name__}: {e}", 0
            rows.append(dict(kernel=name, dtype=dt.__name__, lowered=ok,
                             mosaic_kernels=kernels, compiled=None,
                             expected=True, error=err.replace("\n", " ")[:300],
                             seconds=round(time.perf_counter() - t0, 2)))
        return dict(topology=topology, device=None, jax=jax.__version__,
                    quick=quick, libtpu=False, status=NEEDS_LIBTPU,
                    reason=reason, rows=rows, all_defaults_compile=None,
                    all_lower=all(r["lowered"] for r in rows))

    sharding = SingleDeviceSharding(topo.devices[0])

    def compile_(name, dtype, fn, shapes, expect_ok=True):
        args = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in shapes]
        t0 = time.perf_counter()
        try:
            jax.jit(fn).trace(*args).lower().compile()
            ok, err = True, ""
        except Exception as e:  # the compiler's verdict is the result
            ok, err = False, f"{type(e).__name__}: {e}".replace("\n", " ")
        rows.append(dict(kernel=name, dtype=dtype.__name__, compiled=ok,
                         expected=expect_ok, error=err[:300],
                         seconds=round(time.perf_counter() - t0, 2)))

    for case in cases(quick):
        compile_(*case)
    if not quick:
        limit = C.tpu_vmem_limit
        C.tpu_vmem_limit = lambda need, **kw: None
        try:
            small_default = topology.split(":")[0] in ("v4", "v5e")
            b, t, d, u = (GNMT_LSTM[k] for k in ("batch", "steps", "input",
                                                 "hidden"))
            compile_("gnmt lstm fwd, VMEM limit removed", jnp.float32,
                     lstm_forward, _lstm_shapes(b, t, d, u, jnp.float32),
                     expect_ok=False if small_default else None)
        finally:
            C.tpu_vmem_limit = limit
    return dict(topology=topology, device=topo.devices[0].device_kind,
                jax=jax.__version__, quick=quick, libtpu=True,
                status="compiled", rows=rows,
                all_defaults_compile=all(r["compiled"] for r in rows
                                         if r["expected"] is True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="v5e:2x2",
                    help="a jax topology name, e.g. v5e:2x2, v6e:2x2")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true",
                    help="two conv layers at batch 8 and a small LSTM (seconds)")
    a = ap.parse_args(argv)
    _environment(a.topology)
    result = run(a.topology, a.quick)
    code = 0 if result["libtpu"] or a.quick else EXIT_NEEDS_LIBTPU
    if a.json:
        print(json.dumps(result))
        return code
    if not result["libtpu"]:
        print(f"{NEEDS_LIBTPU}: nothing compiled for a TPU ({result['reason']}).\n"
              "Cross-lowered for 'tpu' only (jax's Mosaic lowering: block shapes, "
              "primitives; not VMEM or layouts):")
        for r in result["rows"]:
            verdict = "lowers" if r["lowered"] else "FAILS to lower"
            print(f"{r['dtype']:8} {r['kernel']:36} {verdict:8} "
                  f"{r['seconds']:5.1f}s {r['error'][:90]}")
        return code
    print(f"{result['device']} ({result['topology']}), jax {result['jax']}")
    for r in result["rows"]:
        verdict = "compiles" if r["compiled"] else "FAILS"
        note = ("" if r["expected"] in (None, r["compiled"])
                else "   <- unexpected")
        print(f"{r['dtype']:8} {r['kernel']:36} {verdict:8} "
              f"{r['seconds']:5.1f}s {r['error'][:90]}{note}")
    print("all defaults compile:", result["all_defaults_compile"])
    return code


if __name__ == "__main__":
    sys.exit(main())
