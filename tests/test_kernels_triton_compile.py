"""The GPU kernels compiled for Hopper (sm_90) by Triton itself, on this
CPU-only machine (hybridnet.kernels.triton_compile): every kernel at the
GPU defaults and at every autotune candidate fits a block's shared memory
and registers (the defaults without any spill), and the shared-memory
estimate the autotuner filters with is an upper bound on what Triton
allocates."""

import sys

import jax
import jax.numpy as jnp
import pytest

from hybridnet.kernels import _common as C
from hybridnet.kernels.triton_compile import compile_gpu_kernels

conv_mod = sys.modules["hybridnet.kernels.conv2d"]
lstm_mod = sys.modules["hybridnet.kernels.lstm"]
S = jax.ShapeDtypeStruct
DTYPES = pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                                 ids=["f32", "bf16"])

# AlexNet conv1 (space-to-depth) and conv4 (384 input channels: 12 channel
# chunks per tap at the defaults), batch 128, 224x224 input
CONV = {"conv1": ((128, 224, 224, 3), (11, 11, 3, 64), 4, 2),
        "conv4": ((128, 13, 13, 384), (3, 3, 384, 256), 1, 1)}
CONV_KERNELS = ["hybridnet_conv2d_matmul", "hybridnet_conv2d_bias_relu_bwd",
                "hybridnet_conv2d_dgrad", "hybridnet_conv2d_wgrad"]


def _conv_grad(layer, bs):
    _, _, s, p = CONV[layer]
    f = lambda x, w, b: conv_mod.conv2d(
        x, w, b, strides=s, padding=((p, p), (p, p)), activation="relu",
        block_sizes=bs, backend="gpu", interpret=False)
    return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                    argnums=(0, 1, 2))


def _conv_args(layer, dtype):
    x, w, _, _ = CONV[layer]
    return S(x, dtype), S(w, dtype), S((w[3],), dtype)


def _lstm_grad(bs):
    f = lambda x, k, r, b: lstm_mod.lstm(x, k, r, b, block_sizes=bs,
                                         backend="gpu", interpret=False)[0]
    return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                    argnums=(0, 1, 2, 3))


def _lstm_args(dtype, b=128, t=50, d=1024, u=1024):  # GNMT
    return S((b, t, d), dtype), S((d, 4 * u), dtype), S((u, 4 * u), dtype), \
        S((4 * u,), dtype)


def _assert_fit(kernels, estimate, *, spill_free):
    for k in kernels:
        assert k.capability == 90 and k.num_warps >= 4
        assert k.fits, k
        assert k.registers <= 255, k
        assert k.shared_bytes <= C.TRITON_SMEM_LIMIT_BYTES, k
        assert k.shared_bytes <= estimate, (k, estimate)
        if spill_free:
            assert not k.spills and k.spill_load_bytes == 0, k


@DTYPES
@pytest.mark.parametrize("layer", sorted(CONV))
def test_conv2d_kernels_compile_for_hopper_at_defaults(layer, dtype):
    bs = conv_mod.default_conv2d_block_sizes("gpu")
    kernels = compile_gpu_kernels(_conv_grad(layer, bs),
                                  *_conv_args(layer, dtype))
    assert [k.name for k in kernels] == CONV_KERNELS
    _assert_fit(kernels, conv_mod.triton_smem_estimate(bs, dtype),
                spill_free=True)
    fwd = kernels[0]
    # the forward's grid: (images, phases, row tiles, channel tiles)
    assert fwd.grid[0] == 128
    # one (tap, channel chunk) loop: shared memory does not grow with Cin
    assert fwd.shared_bytes <= (34 if dtype == jnp.float32 else 17) * 1024


def test_conv2d_every_autotune_candidate_compiles_for_hopper():
    dtype = jnp.float32  # the larger tiles
    for bs in conv_mod._gpu_candidates(dtype):
        kernels = compile_gpu_kernels(_conv_grad("conv4", bs),
                                      *_conv_args("conv4", dtype))
        _assert_fit(kernels, conv_mod.triton_smem_estimate(bs, dtype),
                    spill_free=False)


@DTYPES
@pytest.mark.parametrize("recurrence", ["stepwise", "persistent"])
def test_lstm_kernels_compile_for_hopper(recurrence, dtype):
    bs = {**lstm_mod.default_lstm_block_sizes("gpu"),
          "recurrence": recurrence}
    if recurrence == "persistent":
        bs.update(block_b=16, block_u=32, block_k=32)
    kernels = compile_gpu_kernels(_lstm_grad(bs), *_lstm_args(dtype))
    suffix = "_step" if recurrence == "stepwise" else ""
    assert [k.name for k in kernels] == [f"hybridnet_lstm_fwd{suffix}",
                                         f"hybridnet_lstm_bwd{suffix}"]
    _assert_fit(kernels, lstm_mod.triton_smem_estimate(bs, dtype),
                spill_free=recurrence == "stepwise")  # the GPU default
    if recurrence == "stepwise":  # batch tiles x hidden tiles
        assert kernels[0].grid == (128 // bs["block_b"],
                                   1024 // bs["block_u"], 1)


def test_lstm_every_autotune_candidate_compiles_for_hopper():
    dtype = jnp.float32
    for bs in lstm_mod._gpu_candidates(dtype):
        kernels = compile_gpu_kernels(_lstm_grad(bs), *_lstm_args(dtype))
        _assert_fit(kernels, lstm_mod.triton_smem_estimate(bs, dtype),
                    spill_free=False)


def test_compile_report_names_a_spill():
    """The check has teeth: a register-starved configuration (one warp for
    a 128x128 float32 accumulator) spills, and is reported as not fitting."""
    bs = {**conv_mod.default_conv2d_block_sizes("gpu"), "block_m": 128,
          "block_cout": 128, "num_warps": 1}
    kernels = compile_gpu_kernels(_conv_grad("conv4", bs),
                                  *_conv_args("conv4", jnp.float32))
    fwd = kernels[0]
    assert fwd.spills and fwd.spill_store_bytes > 0 and not fwd.fits
    assert fwd.to_dict()["spills"] is True
