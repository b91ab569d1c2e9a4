"""Pallas conv2d (interpret mode on CPU) against lax.conv_general_dilated.

Shapes are tiny and blocks default to one big block per image batch: the
interpret mode copies whole arrays per grid step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridnet.kernels import (conv2d, conv2d_reference, shard_batch,
                               supports_conv2d)

TOL = dict(rtol=1e-4, atol=1e-4)


def _data(n, h, w, cin, kh, kw, cout, seed=0, dtype=jnp.float32):
    # numpy RNG: jax.random would compile a program per shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin), np.float32)
    wt = rng.standard_normal((kh, kw, cin, cout), np.float32) / np.sqrt(
        kh * kw * cin)
    b = 0.1 * rng.standard_normal((cout,), np.float32)
    return tuple(jnp.asarray(a, dtype) for a in (x, wt, b))


def _fwd_and_vjp(fn, x, w, b, ct, **kw):
    if b is None:
        y, vjp = jax.vjp(lambda x, w: fn(x, w, None, **kw), x, w)
        return y, vjp(ct) + (None,)
    y, vjp = jax.vjp(lambda x, w, b: fn(x, w, b, **kw), x, w, b)
    return y, vjp(ct)


# (N, H, W, Cin, KH, KW, Cout, strides, padding, activation, bias)
CASES = [
    (2, 5, 6, 3, 1, 1, 4, 1, "valid", None, False),
    (2, 7, 7, 3, 3, 3, 5, 1, "same", "relu", True),
    (1, 9, 9, 4, 3, 3, 6, 2, "same", "relu", True),
    (2, 8, 11, 3, 3, 3, 4, 2, "valid", "linear", True),
    (1, 9, 8, 3, 5, 5, 4, 1, ((2, 1), (0, 2)), "relu", True),
    (2, 11, 11, 2, 5, 5, 3, 2, "same", None, True),
    (1, 13, 13, 3, 3, 3, 4, 4, ((1, 1), (2, 0)), "relu", False),
    (1, 7, 9, 3, 1, 1, 5, 2, "same", "relu", True),
    (1, 23, 23, 3, 11, 11, 4, 4, "valid", "relu", True),   # AlexNet conv1-like
    (1, 19, 17, 2, 11, 11, 3, 4, "same", None, True),
    (2, 9, 10, 3, 3, 3, 4, (1, 2), "same", "relu", True),
    # even filter + stride 3: SAME pads asymmetrically (extra at the bottom)
    (1, 10, 7, 2, 4, 4, 3, 3, "same", None, False),
]


# strided cases also run as stride-1 convolutions over space-to-depth
LAYOUT_CASES = ([(c, "auto") for c in CASES]
                + [(c, "depth") for c in CASES if c[7] != 1])


@pytest.mark.parametrize("case,stride_layout", LAYOUT_CASES, ids=lambda c: (
    c if isinstance(c, str) else
    f"k{c[4]}x{c[5]}_s{c[7]}_{c[8] if isinstance(c[8], str) else 'explicit'}"
    f"_{c[9]}_{'b' if c[10] else 'nob'}_{c[1]}x{c[2]}"))
def test_conv2d_forward_and_grads_match_xla(case, stride_layout):
    n, h, w, cin, kh, kw, cout, s, pad, act, has_b = case
    x, wt, b = _data(n, h, w, cin, kh, kw, cout)
    b = b if has_b else None
    kw_ = dict(strides=s, padding=pad, activation=act)
    out_shape = jax.eval_shape(
        functools.partial(conv2d_reference, **kw_), x, wt, b).shape
    ct = jnp.asarray(np.random.default_rng(7).standard_normal(out_shape,
                                                                np.float32))

    @jax.jit
    def run(x, wt, b, ct):
        return (_fwd_and_vjp(conv2d, x, wt, b, ct, **kw_,
                             block_sizes={"stride_layout": stride_layout}),
                _fwd_and_vjp(conv2d_reference, x, wt, b, ct, **kw_))

    (y, grads), (y_r, grads_r) = run(x, wt, b, ct)

    assert y.shape == y_r.shape and y.dtype == y_r.dtype
    np.testing.assert_allclose(y, y_r, **TOL)
    for name, g, gr in zip(("dx", "dw", "db"), grads, grads_r):
        if gr is None:
            continue
        assert g.shape == gr.shape, name
        np.testing.assert_allclose(g, gr, **TOL, err_msg=name)


def test_conv2d_stride_layout_auto_counts_executed_work():
    from hybridnet.kernels import default_conv2d_block_sizes
    from hybridnet.kernels.conv2d import _stride_layout
    gpu, tpu, cpu = (default_conv2d_block_sizes(b) for b in ("gpu", "tpu",
                                                             "cpu"))
    conv1 = ((128, 224, 224, 3), (11, 11, 3, 64), (4, 4))
    for bs in (gpu, tpu):
        assert _stride_layout(bs, *conv1) == "depth"
        assert _stride_layout(bs, (8, 56, 56, 128), (3, 3, 128, 128),
                              (2, 2)) == "phases"
        assert _stride_layout(bs, (8, 13, 13, 192), (3, 3, 192, 384),
                              (1, 1)) == "phases"
    # unpadded channels (CPU: one block): the zero taps of depth never pay
    assert _stride_layout(cpu, *conv1) == "phases"
    assert _stride_layout({**cpu, "stride_layout": "depth"}, *conv1) == "depth"
    x, w, _ = _data(1, 9, 9, 2, 3, 3, 4)
    with pytest.raises(ValueError, match=r"stride_layout.*\('auto', "
                       r"'phases', 'depth'\). Received: 'im2col'"):
        conv2d(x, w, block_sizes={"stride_layout": "im2col"})


@pytest.mark.parametrize("stride_layout", ["phases", "depth"])
def test_conv2d_small_blocks_many_grid_steps(stride_layout):
    """GPU-like tiling (row/channel tiles, split-K wgrad groups, tap blocks)
    run in interpret mode: exercises every multi-block code path."""
    x, w, b = _data(4, 9, 9, 20, 3, 3, 24, seed=3)
    bs = dict(block_n=2, block_m=16, block_cout=16, block_cin=8,
              wgrad_block_n=2, wgrad_block_taps=3,
              stride_layout=stride_layout)
    kw = dict(strides=2, padding="same", activation="relu")
    ct = jnp.ones((4, 5, 5, 24))
    (y, g), (y_r, g_r) = jax.jit(lambda x, w, b, ct: (
        _fwd_and_vjp(conv2d, x, w, b, ct, block_sizes=bs, **kw),
        _fwd_and_vjp(conv2d_reference, x, w, b, ct, **kw)))(x, w, b, ct)
    np.testing.assert_allclose(y, y_r, **TOL)
    for a, c in zip(g, g_r):
        np.testing.assert_allclose(a, c, **TOL)


def test_conv2d_bfloat16_forward_close():
    x, w, b = _data(2, 9, 9, 8, 3, 3, 16, dtype=jnp.bfloat16)
    kw = dict(padding="same", activation="relu")

    @jax.jit
    def run(x, w, b):
        y = conv2d(x, w, b, **kw)
        g = jax.grad(lambda w: jnp.sum(conv2d(x, w, b, **kw)
                                       .astype(jnp.float32)))(w)
        y_r = conv2d_reference(x.astype(jnp.float32), w.astype(jnp.float32),
                               b.astype(jnp.float32), **kw)
        return y, g, y_r

    y, g, y_r = run(x, w, b)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), y_r, rtol=3e-2, atol=3e-2)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g)))


def test_conv2d_vmap_ensemble_equals_loop():
    e = 2
    x, w, b = _data(2, 7, 7, 3, 3, 3, 4)
    xs = jnp.stack([x * (i + 1) for i in range(e)])
    ws = jnp.stack([w * (i - 1) for i in range(e)])
    bs = jnp.stack([b + i for i in range(e)])
    f = lambda x, w, b: conv2d(x, w, b, padding="same", activation="relu")
    fg = lambda x, w, b: (f(x, w, b), jax.grad(
        lambda w: jnp.sum(f(x, w, b) ** 2))(w))

    y, gw = jax.jit(jax.vmap(fg))(xs, ws, bs)
    loop = jax.jit(lambda xs, ws, bs: [fg(xs[i], ws[i], bs[i])
                                       for i in range(e)])(xs, ws, bs)
    for i in range(e):
        np.testing.assert_allclose(y[i], loop[i][0], **TOL)
        np.testing.assert_allclose(gw[i], loop[i][1], **TOL)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_conv2d_shard_batch_equals_unsharded(axis_type):
    ndev = jax.device_count()
    types = (jax.sharding.AxisType.Explicit if axis_type == "explicit"
             else jax.sharding.AxisType.Auto,)
    mesh = jax.make_mesh((ndev,), ("data",), axis_types=types)
    x, w, b = _data(2 * ndev, 7, 7, 3, 3, 3, 4)
    f = functools.partial(conv2d, strides=2, padding="same", activation="relu")

    def fwd_grad(fn):
        def run(x, w, b):
            y, vjp = jax.vjp(fn, x, w, b)
            return y, vjp(2 * y)  # = grad of sum(y ** 2)
        return run

    with jax.set_mesh(mesh):
        compiled = jax.jit(fwd_grad(shard_batch(f, mesh, "data"))).lower(
            x, w, b).compile()
        y, g = compiled(x, w, b)
    y1, g1 = jax.jit(fwd_grad(f))(x, w, b)
    np.testing.assert_allclose(y, y1, **TOL)
    for a, c in zip(g, g1):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-3)
    # the batch is never gathered around the kernel (weight grads are psum'd)
    assert "all-gather" not in compiled.as_text()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(dilation_rate=2), "dilation_rate"),
    (dict(groups=2), "groups"),
    (dict(activation="gelu"), "activation"),
    (dict(padding="full"), "padding"),
    (dict(padding=((-1, 0), (0, 0))), "padding"),
    (dict(strides=0), "strides"),
])
def test_conv2d_unsupported_arguments_raise_naming_them(kwargs, needle):
    x, w, b = _data(1, 6, 6, 2, 3, 3, 2)
    ok, why = supports_conv2d(x.shape, w.shape, **kwargs)
    assert not ok and needle in why and "Received" in why
    with pytest.raises(ValueError, match=needle):
        conv2d(x, w, b, **kwargs)


def test_conv2d_unsupported_dtype_and_shapes():
    x, w, _ = _data(1, 6, 6, 2, 3, 3, 2)
    ok, why = supports_conv2d(x.shape, w.shape, dtype=jnp.float16)
    assert not ok and "float16" in why
    with pytest.raises(ValueError, match="x.dtype"):
        conv2d(x.astype(jnp.float16), w.astype(jnp.float16))
    with pytest.raises(ValueError, match="w.shape"):
        conv2d(x, w[:, :, :1])
    with pytest.raises(ValueError, match="b.shape"):
        conv2d(x, w, jnp.zeros(5))
    with pytest.raises(ValueError, match="block_sizes"):
        conv2d(x, w, block_sizes={"block_q": 4})
    assert supports_conv2d(x.shape, w.shape, strides=2, padding="same",
                           activation="relu", backend="gpu") == (True, "")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("case", [
    (2, 12, 12, 8, 3, 3, 8, 1, "same", dict(block_m=16, block_cout=8,
                                            block_cin=8)),
    (1, 13, 11, 4, 5, 5, 6, 2, "valid", None),
], ids=["s1_row_tiles", "s2"])
def test_conv2d_tpu_code_path_in_tpu_interpreter(case, dtype):
    """backend="tpu": rows at unaligned tap offsets are loaded from aligned
    windows and rotated into place (Mosaic cannot prove the alignment of a
    dynamic row offset); JAX's TPU interpreter runs that code on CPU."""
    n, h, w, cin, kh, kw, cout, s, pad, bs = case
    x, wt, b = _data(n, h, w, cin, kh, kw, cout, seed=11, dtype=dtype)
    kw_ = dict(strides=s, padding=pad, activation="relu")
    f32 = lambda *a: tuple(v.astype(jnp.float32) for v in a)

    def loss(fn, **extra):
        return lambda *a: jnp.sum(jnp.sin(fn(*a, **kw_, **extra)
                                          .astype(jnp.float32)))

    tpu = dict(backend="tpu", interpret=True, block_sizes=bs)
    y = conv2d(x, wt, b, **kw_, **tpu)
    y_r = conv2d_reference(*f32(x, wt, b), **kw_)
    g = jax.grad(loss(conv2d, **tpu), argnums=(0, 1, 2))(x, wt, b)
    g_r = jax.grad(loss(conv2d_reference), argnums=(0, 1, 2))(*f32(x, wt, b))
    tol = TOL if dtype == jnp.float32 else dict(rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(y.astype(jnp.float32), y_r, **tol)
    for a, c in zip(g, g_r):
        scale = 1.0 if dtype == jnp.float32 else float(jnp.abs(c).max())
        np.testing.assert_allclose(a.astype(jnp.float32) / scale, c / scale,
                                   **tol)
