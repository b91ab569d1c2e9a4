"""Pallas LSTM (interpret mode on CPU) against the lax.scan reference, which
follows Keras 3's LSTM (gate order i, f, c, o; masked steps carry h and c and
output the carried h; go_backwards returns the reversed sequence)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridnet.kernels import lstm, lstm_reference, shard_batch, supports_lstm

TOL = dict(rtol=1e-4, atol=1e-4)
B, T, D, U = 3, 6, 5, 8


def _params(b=B, t=T, d=D, u=U, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    f = lambda *s, scale=1.0: jnp.asarray(
        scale * rng.standard_normal(s, np.float32), dtype)
    x = f(b, t, d)
    k = f(d, 4 * u, scale=0.4)
    r = f(u, 4 * u, scale=0.4)
    bias = f(4 * u, scale=0.3)
    h0 = f(b, u)
    c0 = f(b, u)
    mask = jnp.asarray(rng.random((b, t)) < 0.7)
    return x, k, r, bias, h0, c0, mask


def _outputs_and_grads(fn, x, k, r, bias, h0, c0, cts, **kw):
    """Outputs and the gradient of a random linear functional of all three
    outputs w.r.t. (x, kernel, recurrent_kernel, bias, h0, c0)."""
    def f(x, k, r, bias, h0, c0):
        state = (h0, c0) if kw.pop("_with_state", True) else None
        return fn(x, k, r, bias, initial_state=state, **kw)

    outs, vjp = jax.vjp(f, x, k, r, bias, h0, c0)
    return outs, vjp(cts)


# mask: None | "mask" | "lengths"
CASES = [
    dict(mask=None, state=False, go_backwards=False, return_sequences=True),
    dict(mask="mask", state=True, go_backwards=False, return_sequences=True),
    dict(mask="lengths", state=True, go_backwards=True, return_sequences=True),
    dict(mask="mask", state=True, go_backwards=True, return_sequences=False),
    dict(mask="lengths", state=False, go_backwards=False,
         return_sequences=False),
]


RECURRENCES = ("persistent", "stepwise")


@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items()))
def test_lstm_outputs_and_all_grads_match_scan(case, recurrence):
    x, k, r, bias, h0, c0, mask = _params()
    kw = dict(go_backwards=case["go_backwards"],
              return_sequences=case["return_sequences"])
    if case["mask"] == "mask":
        kw["mask"] = mask.at[:, 0].set(False)  # leading masked step: carry h0
    elif case["mask"] == "lengths":
        kw["lengths"] = jnp.array([T, 2, 0])
    kw["_with_state"] = case["state"]
    out_shape = (B, T, U) if case["return_sequences"] else (B, U)
    rng = np.random.default_rng(1)
    cts = tuple(jnp.asarray(rng.standard_normal(s, np.float32))
                for s in (out_shape, (B, U), (B, U)))

    kernel = functools.partial(lstm, block_sizes={"recurrence": recurrence})

    @jax.jit
    def run(*args):
        return (_outputs_and_grads(kernel, *args, cts, **dict(kw)),
                _outputs_and_grads(lstm_reference, *args, cts, **dict(kw)))

    (outs, grads), (outs_r, grads_r) = run(x, k, r, bias, h0, c0)
    for name, a, c in zip(("outputs", "h_T", "c_T"), outs, outs_r):
        assert a.shape == c.shape, name
        np.testing.assert_allclose(a, c, **TOL, err_msg=name)
    for name, a, c in zip(("dx", "dkernel", "drecurrent", "dbias", "dh0",
                           "dc0"), grads, grads_r):
        assert a.shape == c.shape, name
        np.testing.assert_allclose(a, c, **TOL, err_msg=name)
    if not case["state"]:
        assert float(jnp.abs(grads[4]).max()) == 0.0


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_lstm_small_blocks_many_chunks(recurrence):
    """GPU-like tiling in interpret mode: several batch tiles, hidden chunks
    (stepwise: hidden tiles of the grid) and contraction chunks, padded batch
    (5 -> 6) and units (24 -> 32)."""
    x, k, r, bias, h0, c0, _ = _params(b=5, t=4, d=3, u=24, seed=2)
    bs = dict(block_b=2, block_u=8, block_k=16, recurrence=recurrence)
    kw = dict(lengths=jnp.array([4, 2, 1, 0, 3]))
    cts = (jnp.ones((5, 4, 24)), jnp.ones((5, 24)), -jnp.ones((5, 24)))
    (o, g), (o_r, g_r) = jax.jit(lambda *a: (
        _outputs_and_grads(functools.partial(lstm, block_sizes=bs), *a, cts,
                           **kw),
        _outputs_and_grads(lstm_reference, *a, cts, **kw)))(
            x, k, r, bias, h0, c0)
    for a, c in zip(o + g, o_r + g_r):
        np.testing.assert_allclose(a, c, **TOL)


def test_lstm_bfloat16_forward_close():
    x, k, r, bias, h0, c0, mask = _params(dtype=jnp.bfloat16)

    @jax.jit
    def run(x, k, r, bias, mask):
        out = lstm(x, k, r, bias, mask=mask)
        ref = lstm_reference(*(a.astype(jnp.float32) for a in (x, k, r, bias)),
                             mask=mask)
        g = jax.grad(lambda r: jnp.sum(lstm(x, k, r, bias)[0]
                                       .astype(jnp.float32)))(r)
        return out, ref, g

    out, ref, g = run(x, k, r, bias, mask)
    for a, c in zip(out, ref):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), c, atol=5e-2,
                                   rtol=5e-2)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_lstm_vmap_ensemble_equals_loop(recurrence):
    e = 2
    x, k, r, bias, h0, c0, mask = _params()
    ks = jnp.stack([k * (1 + 0.5 * i) for i in range(e)])
    rs = jnp.stack([r * (1 - 0.3 * i) for i in range(e)])
    xs = jnp.stack([x + i for i in range(e)])
    bs = {"recurrence": recurrence, "block_u": 4, "block_k": 4}

    def fg(x, k, r):
        f = lambda x, k, r: lstm(x, k, r, bias, mask=mask, block_sizes=bs)
        outs = f(x, k, r)
        grads = jax.grad(lambda k, r: jnp.sum(jnp.sin(f(x, k, r)[0])),
                         argnums=(0, 1))(k, r)
        return outs, grads

    got = jax.jit(jax.vmap(fg))(xs, ks, rs)
    loop = jax.jit(lambda xs, ks, rs: [fg(xs[i], ks[i], rs[i])
                                       for i in range(e)])(xs, ks, rs)
    for i in range(e):
        for a, c in zip(jax.tree_util.tree_leaves(got),
                        jax.tree_util.tree_leaves(loop[i])):
            np.testing.assert_allclose(a[i], c, **TOL)


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_lstm_shard_batch_equals_unsharded(recurrence):
    ndev = jax.device_count()
    mesh = jax.make_mesh((ndev,), ("data",))
    x, k, r, bias, h0, c0, _ = _params(b=2 * ndev, seed=4)
    lengths = jnp.asarray(np.arange(2 * ndev) % (T + 1))

    def f(x, k, r, bias, lengths, h0, c0):
        return lstm(x, k, r, bias, lengths=lengths, initial_state=(h0, c0),
                    block_sizes={"recurrence": recurrence})

    def fwd_grad(fn):
        def run(x, k, r, bias, lengths, h0, c0):
            outs, vjp = jax.vjp(lambda x, k, r, h0, c0: fn(
                x, k, r, bias, lengths, h0, c0), x, k, r, h0, c0)
            return outs, vjp(jax.tree_util.tree_map(jnp.cos, outs))
        return run

    sf = shard_batch(f, mesh, "data", batch_argnums=(0, 4, 5, 6))
    args = (x, k, r, bias, lengths, h0, c0)
    with jax.set_mesh(mesh):
        compiled = jax.jit(fwd_grad(sf)).lower(*args).compile()
        got = compiled(*args)
    want = jax.jit(fwd_grad(f))(*args)
    for a, c in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, c, **TOL)
    assert "all-gather" not in compiled.as_text()


def test_lstm_argument_errors_name_the_argument():
    x, k, r, bias, h0, c0, mask = _params()
    with pytest.raises(ValueError, match="either `mask` or `lengths`"):
        lstm(x, k, r, bias, mask=mask, lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="recurrent_kernel.shape"):
        lstm(x, k, r[:, :8], bias)
    with pytest.raises(ValueError, match="kernel.shape"):
        lstm(x, k[:2], r, bias)
    with pytest.raises(ValueError, match="lengths.shape"):
        lstm(x, k, r, bias, lengths=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="h0.shape"):
        lstm(x, k, r, bias, initial_state=(h0[:1], c0))
    with pytest.raises(ValueError, match="x.dtype"):
        lstm(x.astype(jnp.float16), k, r, bias)
    with pytest.raises(ValueError, match="block_sizes"):
        lstm(x, k, r, bias, block_sizes={"block_z": 8})
    with pytest.raises(ValueError, match=r"block_sizes\['recurrence'\].*"
                       r"\('persistent', 'stepwise'\). Received: 'fused'"):
        lstm(x, k, r, bias, block_sizes={"recurrence": "fused"})
    with pytest.raises(ValueError, match="'stepwise' is for GPU"):
        lstm(x, k, r, bias, backend="tpu", interpret=True,
             block_sizes={"recurrence": "stepwise"})
    ok, why = supports_lstm(x.shape, U, recurrent_activation="hard_sigmoid")
    assert not ok and "recurrent_activation" in why and "Received" in why
    ok, why = supports_lstm(x.shape, U, activation="relu")
    assert not ok and "activation='relu'" in why
    assert supports_lstm(x.shape, U, dtype=jnp.bfloat16, backend="tpu") == (
        True, "")
