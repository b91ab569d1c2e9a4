"""Cross-lowering of the Pallas kernels for GPU (Triton) and TPU (Mosaic) from
this CPU-only jaxlib, with each backend's default block sizes and
``interpret=False``.

What this checks: ``jax.jit(f).trace(*args).lower(lowering_platforms=(p,))``
runs JAX's own Pallas lowering for the platform: for "cuda", the kernel
jaxpr is lowered to Triton IR (power-of-two array shapes, dot operand
shapes, supported primitives, index arithmetic types) and embedded as a
``__gpu$xla.gpu.triton`` custom call; for "tpu", it is lowered to Mosaic
MLIR (block shapes divisible by (8, 128) or equal to the array, supported
primitives and dynamic slicing) in a ``tpu_custom_call``. Both forward
and backward (custom_vjp) kernels are lowered, float32 and bfloat16.

What it cannot check (needs the device's compiler, absent here): Triton's
compilation to PTX (register pressure, shared-memory limits, ``num_warps``
viability) happens inside XLA:GPU at ``compile()`` time, and Mosaic's
layout passes and VMEM capacity checks run inside libtpu at compile time;
neither is available in a CPU jaxlib (the kernels' own VMEM and shared-memory
estimates are checked in test_kernels_budget.py). Both platforms *can* be lowered, so
no lowering is skipped. (A plain ``pallas_call`` without Triton compiler
params would lower for "cuda" through Mosaic GPU, which fails on
``dot_general`` — hence the kernels pass ``plgpu.CompilerParams`` on GPU.)
"""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from hybridnet.kernels import (_common, conv2d, default_conv2d_block_sizes,
                               default_lstm_block_sizes, lstm)

PLATFORMS = [("cuda", "gpu", "__gpu$xla.gpu.triton"),
             ("tpu", "tpu", "tpu_custom_call")]

# (N, H, W, Cin, K, Cout, stride, padding): AlexNet conv1 and conv3 shapes
# at batch 2 (lowering is trace-only: full spatial sizes are cheap).
CONV_SHAPES = [(2, 224, 224, 3, 11, 64, 4, ((2, 2), (2, 2))),
               (2, 13, 13, 192, 3, 384, 1, "same")]


def _lower(f, args, platform):
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,))


def _n_kernels(text, marker):
    return text.count(marker)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("platform,backend,marker", PLATFORMS,
                         ids=[p[0] for p in PLATFORMS])
def test_conv2d_forward_and_backward_lower(platform, backend, marker, dtype):
    for n, h, w, cin, k, cout, s, pad in CONV_SHAPES:
        x = jax.ShapeDtypeStruct((n, h, w, cin), dtype)
        wt = jax.ShapeDtypeStruct((k, k, cin, cout), dtype)
        b = jax.ShapeDtypeStruct((cout,), dtype)
        f = lambda x, w, b: conv2d(
            x, w, b, strides=s, padding=pad, activation="relu",
            block_sizes=default_conv2d_block_sizes(backend), backend=backend,
            interpret=False)
        fwd = _lower(f, (x, wt, b), platform).as_text()
        assert _n_kernels(fwd, marker) == 1
        grad = jax.grad(lambda x, w, b: jnp.sum(f(x, w, b).astype(jnp.float32)),
                        argnums=(0, 1, 2))
        bwd = _lower(grad, (x, wt, b), platform).as_text()
        # forward + bias/relu epilogue + dgrad + wgrad
        assert _n_kernels(bwd, marker) == 4


LSTM_VARIANTS = [("cuda", "gpu", "__gpu$xla.gpu.triton", "stepwise"),
                 ("cuda", "gpu", "__gpu$xla.gpu.triton", "persistent"),
                 ("tpu", "tpu", "tpu_custom_call", "persistent")]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("platform,backend,marker,recurrence", LSTM_VARIANTS,
                         ids=[f"{v[0]}-{v[3]}" for v in LSTM_VARIANTS])
def test_lstm_forward_and_backward_lower(platform, backend, marker,
                                         recurrence, dtype):
    b, t, d, u = 32, 5, 48, 96  # u not a block multiple: padded to blocks
    x = jax.ShapeDtypeStruct((b, t, d), dtype)
    k = jax.ShapeDtypeStruct((d, 4 * u), dtype)
    r = jax.ShapeDtypeStruct((u, 4 * u), dtype)
    bias = jax.ShapeDtypeStruct((4 * u,), dtype)
    lengths = jnp.full((b,), 3)
    bs = {**default_lstm_block_sizes(backend), "recurrence": recurrence}
    f = lambda x, k, r, bias: lstm(
        x, k, r, bias, lengths=lengths, go_backwards=True, block_sizes=bs,
        backend=backend, interpret=False)
    fwd = _lower(f, (x, k, r, bias), platform).as_text()
    assert _n_kernels(fwd, marker) == 1
    grad = jax.grad(lambda *a: jnp.sum(f(*a)[0].astype(jnp.float32)),
                    argnums=(0, 1, 2, 3))
    bwd = _lower(grad, (x, k, r, bias), platform).as_text()
    assert _n_kernels(bwd, marker) == 2  # forward + backward-through-time
    if recurrence == "stepwise":
        # one launch per step inside a loop, its state buffers updated in
        # place: three aliased outputs per kernel, forward and backward
        assert "stablehlo.while" in bwd
        assert bwd.count("#stablehlo.output_operand_alias<") == 6


def test_gpu_default_lstm_is_stepwise_over_batch_and_hidden_tiles():
    """GNMT (batch 128, hidden 1024) at the GPU defaults: the stepwise grid
    fills an H100/H200 (132 SMs) where the persistent one has 8 programs."""
    bs = default_lstm_block_sizes("gpu")
    assert bs["recurrence"] == "stepwise"
    programs = (128 // bs["block_b"]) * (1024 // bs["block_u"])
    assert 100 <= programs <= 264
    assert default_lstm_block_sizes("tpu")["recurrence"] == "persistent"


def test_bad_triton_block_is_rejected_by_cross_lowering():
    """The check has teeth: a non-power-of-two Triton tile fails to lower."""
    x = jax.ShapeDtypeStruct((1, 16, 16, 16), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32)
    bs = {**default_conv2d_block_sizes("gpu"), "block_m": 48}
    f = lambda x, w: conv2d(x, w, block_sizes=bs, backend="gpu",
                            interpret=False)
    with pytest.raises(Exception, match="power of 2"):
        _lower(f, (x, w), "cuda")


def test_default_block_sizes_per_backend():
    cpu, gpu, tpu = (default_conv2d_block_sizes(b) for b in ("cpu", "gpu",
                                                             "tpu"))
    assert cpu["block_m"] is None  # one big block in interpret mode
    for key in ("block_m", "block_cout", "block_cin"):
        assert gpu[key] & (gpu[key] - 1) == 0 and gpu[key] >= 16
    assert tpu["block_m"] % 8 == 0 and tpu["block_cout"] % 128 == 0
    assert tpu["block_cin"] % 128 == 0
    lg, lt = default_lstm_block_sizes("gpu"), default_lstm_block_sizes("tpu")
    assert all(lg[k] & (lg[k] - 1) == 0 and lg[k] >= 16
               for k in ("block_b", "block_u", "block_k"))
    assert lt["block_b"] % 8 == 0 and lt["block_u"] % 128 == 0


def test_autotune_times_candidates_and_caches_atomically(tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("HYBRIDNET_CACHE_DIR", str(tmp_path))
    calls = []

    def run(bs):  # a fake kernel: larger block_m is faster
        calls.append(bs["block_m"])
        return jnp.zeros(()) + 1.0 / bs["block_m"]

    cands = [{"block_m": 16}, {"block_m": 64}, {"block_m": 32}]
    # CPU: defaults (first candidate), nothing timed or written
    assert _common.autotune("k", {"s": 1}, cands, run, "cpu") == cands[0]
    assert calls == [] and not os.path.exists(_common.cache_path())

    import time
    real = time.perf_counter
    clock = iter(range(10_000))
    # deterministic clock: each timed block lasts 1/block_m "seconds"
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock) * 1.0)

    def run_timed(bs):
        calls.append(bs["block_m"])
        for _ in range(max(0, 64 // bs["block_m"] - 1)):
            time.perf_counter()  # slower candidates burn clock ticks
        return jnp.zeros(())

    best = _common.autotune("k", {"s": 1}, cands, run_timed, "gpu", iters=1)
    monkeypatch.setattr(time, "perf_counter", real)
    assert best == {"block_m": 64}
    data = json.load(open(_common.cache_path()))
    (key, entry), = data.items()
    assert key.startswith("k|") and entry["block_sizes"] == {"block_m": 64}
    assert len(entry["timings_s"]) == 3  # every tuning run is recorded
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # second call hits the cache without running anything
    calls.clear()
    assert _common.autotune("k", {"s": 1}, cands, run_timed, "gpu") == best
    assert calls == []
    assert _common.cached_block_sizes("k", {"s": 1}, "gpu") == best
