"""On-chip memory budgets of the Pallas kernels, checked by lowering only.

TPU: Mosaic double-buffers every BlockSpec'ed block in VMEM; the kernels
derive the bytes from their own BlockSpecs and pass ``vmem_limit_bytes``
when the need exceeds the 16 MiB default scoped limit (it appears in the
``tpu_custom_call`` backend config as ``scoped_memory_configs``), or raise a
ValueError when it exceeds the chip. libtpu, which would enforce the limit,
is absent here, so these tests pin our own accounting: expected byte counts
are worked out by hand from the block shapes.

GPU: autotune candidates are filtered by an estimate of Triton's shared
memory against a Hopper block's 227 KiB.
"""

import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from hybridnet.kernels import (_common as C, conv2d, default_conv2d_block_sizes,
                               default_lstm_block_sizes, lstm)

conv_mod = importlib.import_module("hybridnet.kernels.conv2d")
lstm_mod = importlib.import_module("hybridnet.kernels.lstm")

MiB = 1 << 20
S = jax.ShapeDtypeStruct


@pytest.fixture(autouse=True)
def _no_chip_capacity(monkeypatch):
    """The cross-lowering ceiling, even where a TPU is attached."""
    monkeypatch.setattr(C, "tpu_vmem_capacity",
                        lambda: C.TPU_VMEM_CAPACITY_BYTES)


def _tpu_text(f, *args):
    return jax.jit(f).trace(*args).lower(
        lowering_platforms=("tpu",)).as_text()


def _vmem_limits(text):
    """The ``vmem_limit_bytes`` of each tpu_custom_call that has one."""
    return [int(v) for v in re.findall(
        r"scoped_memory_configs.*?size\\22: (\d+)", text)]


def _lstm_args(b, t, d, u, dtype=jnp.float32):
    return (S((b, t, d), dtype), S((d, 4 * u), dtype), S((u, 4 * u), dtype),
            S((4 * u,), dtype))


def _lstm_fn(block_sizes=None):
    return lambda *a: lstm(*a, block_sizes=block_sizes, backend="tpu",
                           interpret=False)[0]


# --------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------
def test_vmem_block_bytes_pads_to_tiles():
    assert C.vmem_block_bytes((8, 128), jnp.float32) == 8 * 128 * 4
    assert C.vmem_block_bytes((50, 8, 1), jnp.float32) == 50 * 8 * 128 * 4
    assert C.vmem_block_bytes((1, 128), jnp.float32) == 8 * 128 * 4
    assert C.vmem_block_bytes((8, 128), jnp.bfloat16) == 16 * 128 * 2
    assert C.vmem_block_bytes((1,), jnp.int32) == 8 * 128 * 4
    assert C.vmem_bytes([((8, 128), jnp.float32)] * 3) == 2 * 3 * 4096
    assert C.vmem_bytes([((8, 128), jnp.float32)], buffers=1) == 4096


def test_tpu_vmem_limit_thresholds():
    assert C.tpu_vmem_limit(1 * MiB) is None
    assert C.tpu_vmem_limit(12 * MiB) is None  # 12 + 4 MiB margin = 16
    assert C.tpu_vmem_limit(12 * MiB + 1) == 17 * MiB
    assert C.tpu_vmem_limit(50 * MiB) == 54 * MiB
    assert C.tpu_vmem_limit(127 * MiB, capacity=128 * MiB) == 128 * MiB
    with pytest.raises(ValueError, match=f"^k: .* need {65 * MiB} bytes"):
        C.tpu_vmem_limit(65 * MiB, kernel="k", capacity=64 * MiB)


def test_gpu_and_cpu_compiler_params_ignore_vmem():
    from jax.experimental.pallas import triton as plgpu
    p = C.compiler_params("gpu", False, vmem_bytes=1 << 40)
    assert isinstance(p, plgpu.CompilerParams)
    assert C.compiler_params("cpu", True, vmem_bytes=1 << 40) is None
    assert C.compiler_params("tpu", True, vmem_bytes=1 << 40) is None


# --------------------------------------------------------------------------
# (a) GNMT persistent LSTM: above the default limit, with vmem_limit_bytes
# --------------------------------------------------------------------------
def test_gnmt_lstm_carries_vmem_limit_on_tpu():
    b, t, d, u = 128, 50, 1024, 1024
    bs = default_lstm_block_sizes("tpu")
    assert bs["recurrence"] == "persistent" and bs["block_b"] == 8
    bb = bs["block_b"]
    # per program, float32: xp and gates (T, bb, 4U), R (U, 4U), h0/c0
    # (bb, U), mask (T, bb, 1 -> 128 lanes), h/c outputs (T+1, bb, U)
    words = (2 * t * bb * 4 * u + u * 4 * u + 2 * bb * u + t * bb * 128
             + 2 * (t + 1) * bb * u)
    need = 2 * 4 * words
    assert need == 66994176  # 63.9 MiB
    text = _tpu_text(_lstm_fn(), *_lstm_args(b, t, d, u))
    assert _vmem_limits(text) == [C.round_up(need + 4 * MiB, MiB)]
    assert _vmem_limits(text)[0] > 16 * MiB
    grad = jax.grad(lambda *a: jnp.sum(_lstm_fn()(*a)), argnums=(0, 1, 2, 3))
    limits = _vmem_limits(_tpu_text(grad, *_lstm_args(b, t, d, u)))
    assert len(limits) == 2 and min(limits) > 16 * MiB  # forward, backward


def test_small_lstm_carries_no_vmem_limit():
    text = _tpu_text(_lstm_fn(), *_lstm_args(32, 5, 48, 96))
    assert text.count("tpu_custom_call") == 1
    assert "scoped_memory_configs" not in text


# --------------------------------------------------------------------------
# (b) too large: a ValueError naming the kernel, block sizes and bytes
# --------------------------------------------------------------------------
def test_too_large_lstm_block_raises():
    bs = {**default_lstm_block_sizes("tpu"), "block_b": 128}
    with pytest.raises(ValueError) as e:
        _tpu_text(_lstm_fn(bs), *_lstm_args(128, 50, 1024, 1024))
    msg = str(e.value)
    for part in ("lstm forward", "'block_b': 128", "'block_u': 128",
                 "TPU VMEM", f"{C.TPU_VMEM_CAPACITY_BYTES} bytes",
                 "Pass smaller block sizes", "block_b rows"):
        assert part in msg, (part, msg)
    need = int(re.search(r"need (\d+) bytes", msg).group(1))
    assert need > C.TPU_VMEM_CAPACITY_BYTES


# --------------------------------------------------------------------------
# (c) AlexNet conv layers at the TPU defaults
# --------------------------------------------------------------------------
def _conv_fn(s, pad, block_sizes=None):
    return lambda x, w, b: conv2d(
        x, w, b, strides=s, padding=pad, activation="relu",
        block_sizes=block_sizes, backend="tpu", interpret=False)


def _conv_args(n, hw, cin, k, cout):
    return (S((n, hw, hw, cin), jnp.float32), S((k, k, cin, cout), jnp.float32),
            S((cout,), jnp.float32))


def test_alexnet_conv1_forward_needs_a_raised_limit_in_phases():
    """conv1 (224x224x3, 11x11 stride 4, pad 2) in the phases layout: the
    input block holds one image's 16 stride phases of 3448 wide rows,
    channels padded 3 -> 128, and the weight block all 121 taps: ~69 MiB,
    over the default limit. The default layout for it (depth: 9 taps over
    48 channels) fits the default limit."""
    bs = default_conv2d_block_sizes("tpu")
    assert bs["block_n"] == 1 and bs["block_cin"] == 128
    a = 16 * 3448 * 128 * 4
    w = 121 * 128 * 128 * 4
    bias = 8 * 128 * 4
    out = 256 * 128 * 4
    need = 2 * (a + w + bias + out)
    assert need == 72622080  # 69.3 MiB
    phases = _conv_fn(4, ((2, 2), (2, 2)), {"stride_layout": "phases"})
    text = _tpu_text(phases, *_conv_args(2, 224, 3, 11, 64))
    assert _vmem_limits(text) == [C.round_up(need + 4 * MiB, MiB)]
    text = _tpu_text(_conv_fn(4, ((2, 2), (2, 2))),
                     *_conv_args(2, 224, 3, 11, 64))
    assert text.count("tpu_custom_call") == 1
    assert "scoped_memory_configs" not in text


def test_alexnet_conv3_fits_the_default_limit():
    text = _tpu_text(_conv_fn(1, "same"), *_conv_args(2, 13, 192, 3, 384))
    assert text.count("tpu_custom_call") == 1
    assert "scoped_memory_configs" not in text


def test_alexnet_conv1_wgrad_names_wgrad_block_n():
    """At batch 128, in the phases layout, the default wgrad block (8 whole
    images of 16 phases) cannot fit any TPU; the error says so, and
    wgrad_block_n=1 lowers. The default (depth) layout lowers as it is,
    within a 64 MiB chip."""
    args = _conv_args(128, 224, 3, 11, 64)
    pad = ((2, 2), (2, 2))

    def grad(bs):
        f = _conv_fn(4, pad, bs)
        return jax.grad(lambda *a: jnp.sum(f(*a)), argnums=(0, 1, 2))

    with pytest.raises(ValueError) as e:
        _tpu_text(grad({"stride_layout": "phases"}), *args)
    msg = str(e.value)
    for part in ("conv2d wgrad", "'wgrad_block_n': 8", "wgrad_block_n whole"):
        assert part in msg, (part, msg)
    text = _tpu_text(grad({"stride_layout": "phases", "wgrad_block_n": 1}),
                     *args)
    assert text.count("tpu_custom_call") == 4
    assert max(_vmem_limits(text)) <= C.TPU_VMEM_CAPACITY_BYTES
    text = _tpu_text(grad(None), *args)
    assert text.count("tpu_custom_call") == 4
    assert max(_vmem_limits(text)) <= 64 * MiB


# --------------------------------------------------------------------------
# (d) Triton shared memory of defaults and autotune candidates
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("mod", [conv_mod, lstm_mod], ids=["conv2d", "lstm"])
def test_gpu_defaults_and_kept_candidates_fit_hopper_smem(mod, dtype):
    limit = C.TRITON_SMEM_LIMIT_BYTES
    assert limit == 227 * 1024
    defaults = mod._DEFAULTS["gpu"]
    assert mod.triton_smem_estimate(defaults, dtype) <= limit
    kept = mod._gpu_candidates(dtype)
    assert kept[0] == defaults
    for c in kept:
        assert mod.triton_smem_estimate(c, dtype) <= limit, c


def test_smem_estimates_at_gpu_defaults():
    # conv2d: dgrad/wgrad 2 stages x (64x64 + 64x32) f32 + 64x32 f32 acc
    assert conv_mod.triton_smem_estimate(
        default_conv2d_block_sizes("gpu")) == 2 * (4096 + 2048) * 4 + 8192
    # lstm forward: 2 stages x (h 32x64 + four R 64x32) f32 + four 32x32 acc
    assert lstm_mod.triton_smem_estimate(
        default_lstm_block_sizes("gpu")) == 2 * (2048 + 4 * 2048) * 4 + 16384


def test_smem_filter_drops_oversized_candidates():
    base = default_conv2d_block_sizes("gpu")
    big = {**base, "block_m": 256, "block_cout": 256, "block_cin": 64,
           "num_stages": 3}
    assert conv_mod.triton_smem_estimate(big) > C.TRITON_SMEM_LIMIT_BYTES
    kept = C.fit_triton_smem(
        [base, big], lambda bs: conv_mod.triton_smem_estimate(bs))
    assert kept == [base]
    assert C.fit_triton_smem(
        [big], lambda bs: conv_mod.triton_smem_estimate(bs, jnp.bfloat16),
        limit=10 ** 9) == [big]
