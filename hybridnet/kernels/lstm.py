"""Keras-compatible LSTM as a Pallas recurrence with a Pallas
backward-through-time kernel under ``jax.custom_vjp``.

Layout and maths are Keras 3's: ``kernel`` (D, 4U), ``recurrent_kernel``
(U, 4U), ``bias`` (4U,), gate order i, f, c (g), o; ``i, f, o = sigmoid``,
``g = tanh``; ``c' = f*c + i*g``, ``h' = o*tanh(c')``. Where ``mask[b, t]``
is False the state (h, c) is carried unchanged and the output at that step
is the carried h (Keras 3 ``RNN`` with ``zero_output_for_mask=False``).
``go_backwards`` processes the reversed sequence and returns outputs in
processing order (reversed), as Keras does.

Structure
---------
* The input projection ``x @ kernel + bias`` for all steps is one big matmul
  outside the recurrence (plain jnp, float32 accumulation; JAX differentiates
  it, which yields the x, kernel and bias gradients from ``dz``).
* Forward kernel: grid over batch tiles; inside, a ``fori_loop`` over time.
  Per step the four gates are one ``h @ R`` product ((B, U) x (U, 4U)),
  computed per hidden chunk of ``block_u`` units as a sum over ``block_k``
  chunks of h; sigmoid/tanh and the cell update are fused. The kernel writes
  h and c per step and the gate activations.
* Backward kernel (reverse ``fori_loop`` over time): per step the fused
  element-wise part gives ``dz`` (gate pre-activation gradients) and
  ``dc_{t-1}``; then ``dh_{t-1} = dz @ R^T``. It outputs ``dz`` for all steps
  and ``dh0``, ``dc0``. ``dR = sum_t h_{t-1}^T dz_t`` is one large matmul
  outside the kernel.
* Saved for backward (the choice): the gate activations (T, B, 4U) float32,
  plus h and c per step. Saving costs 4*T*B*U floats but spares the backward
  pass a second recurrent matmul per step (recomputing the gates would need
  ``h_{t-1} @ R`` again, doubling the serial matmul work in the backward).

Two recurrences (``block_sizes["recurrence"]``)
-----------------------------------------------
* ``"persistent"`` (TPU and CPU default): the structure above, one kernel for
  the whole sequence with a grid over batch tiles only. The recurrent weights
  stay in fast memory (VMEM) for all steps. On TPU a program's blocks (its
  batch rows of the whole sequence, and all of R) are double-buffered in
  VMEM: about 64 MiB forward for GNMT (batch 128, T=50, U=1024, float32) at
  the defaults, so the kernels raise the scoped VMEM limit from its 16 MiB
  default (``_common.tpu_vmem_limit``), and a ValueError names the block
  sizes when the need exceeds the chip. On GPU the per-step phases are
  separated by a thread barrier (the kernel reads back h written by other
  threads of its program); with only ``B / block_b`` programs it leaves most
  of a GPU's SMs idle (8 of 132 for GNMT's batch 128).
* ``"stepwise"`` (GPU default): one kernel launch per time step inside a
  ``fori_loop``, with a grid over batch tiles x hidden tiles (128 programs
  for GNMT at the GPU defaults). Program (b, j) computes the four gate tiles
  of hidden units ``j*block_u ...`` for its batch rows as one pass over
  ``h_{t-1}`` (block_k chunks) against the matching columns of R, then the
  fused cell update. The backward launch for step t first forms
  ``dh_t[:, j] = dz_{t+1} @ R[j]^T`` (dz_{t+1} is complete: the previous
  launch wrote it), then the fused element-wise part. No gate
  pre-activation goes to main memory; h, c, the gate activations and dz are
  written once per step into buffers aliased in place across launches
  (``input_output_aliases``), and the step index is a kernel argument, so
  one compiled kernel serves every step. R is read per step from L2 (8 MiB
  for U=1024 in bf16; an SM's shared memory cannot hold it, and keeping
  slices of R resident across SMs would need a grid-wide barrier per step).

Block sizes (``block_sizes=`` dict): ``block_b`` batch rows per program,
``block_u`` hidden units per chunk (stepwise: per program), ``block_k``
contraction chunk, ``num_warps``/``num_stages`` (Triton), ``recurrence``.
``None`` means the whole dimension. GPU autotuning skips candidates whose
estimated shared memory (:func:`triton_smem_estimate`) exceeds a Hopper
block's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from . import _common as C

__all__ = ["lstm", "lstm_reference", "supports_lstm",
           "default_lstm_block_sizes"]

RECURRENCES = ("persistent", "stepwise")

_DEFAULTS = {
    "cpu": dict(block_b=None, block_u=None, block_k=None, num_warps=4,
                num_stages=2, recurrence="persistent"),
    "gpu": dict(block_b=32, block_u=32, block_k=64, num_warps=4,
                num_stages=2, recurrence="stepwise"),
    "tpu": dict(block_b=8, block_u=128, block_k=128, num_warps=4,
                num_stages=2, recurrence="persistent"),
}


def default_lstm_block_sizes(backend: str | None = None) -> dict:
    """The default ``block_sizes`` dict of :func:`lstm` for a backend."""
    return dict(_DEFAULTS[C.resolve_backend(backend)])


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def supports_lstm(x_shape=None, units=None, *, dtype=jnp.float32,
                  w_dtype=None, activation="tanh",
                  recurrent_activation="sigmoid", use_bias=True, unroll=False,
                  dropout=0.0, recurrent_dropout=0.0, backend=None
                  ) -> tuple[bool, str]:
    """Whether the Pallas LSTM kernel handles a configuration.

    Returns ``(ok, reason)``; ``reason`` is "" when ok, else one line naming
    the argument. (``use_bias=False`` is fine: pass a zero bias.)

    Example:
        >>> supports_lstm((32, 10, 8), 16, recurrent_activation="hard_sigmoid")
        (False, "lstm kernel supports recurrent_activation='sigmoid' only. Received: recurrent_activation='hard_sigmoid'")
    """
    try:
        C.resolve_backend(backend)
        if activation not in ("tanh",):
            raise ValueError("lstm kernel supports activation='tanh' only. "
                             f"Received: activation={activation!r}")
        if recurrent_activation not in ("sigmoid",):
            raise ValueError("lstm kernel supports recurrent_activation="
                             "'sigmoid' only. Received: "
                             f"recurrent_activation={recurrent_activation!r}")
        if unroll:
            raise ValueError("lstm kernel does not unroll. Received: "
                             f"unroll={unroll!r}")
        if recurrent_dropout:
            raise ValueError("lstm kernel does not support recurrent_dropout. "
                             f"Received: recurrent_dropout={recurrent_dropout!r}")
        del dropout, use_bias  # input dropout is applied before the kernel
        for name, d in (("x", dtype),
                        ("kernel", w_dtype if w_dtype is not None else dtype)):
            msg = C.check_dtype("lstm kernel", name, d)
            if msg:
                raise ValueError(msg)
        if x_shape is not None and len(x_shape) != 3:
            raise ValueError("Argument `x` of lstm must be (batch, time, "
                             f"features). Received: x.shape={tuple(x_shape)}")
        if units is not None and units < 1:
            raise ValueError(f"Argument `units` must be >= 1. Received: "
                             f"units={units!r}")
    except ValueError as e:
        return False, str(e)
    return True, ""


def _prepare(x, kernel, recurrent_kernel, bias, initial_state, mask, lengths,
             name):
    if x.ndim != 3:
        raise ValueError(f"Argument `x` of {name} must be (batch, time, "
                         f"features). Received: x.shape={x.shape}")
    b, t, d = x.shape
    if kernel.ndim != 2 or kernel.shape[0] != d or kernel.shape[1] % 4:
        raise ValueError(f"Argument `kernel` of {name} must be (D, 4U) = "
                         f"({d}, 4U). Received: kernel.shape={kernel.shape}")
    u = kernel.shape[1] // 4
    if recurrent_kernel.shape != (u, 4 * u):
        raise ValueError(f"Argument `recurrent_kernel` of {name} must be "
                         f"({u}, {4 * u}). Received: "
                         f"recurrent_kernel.shape={recurrent_kernel.shape}")
    if bias is None:
        bias = jnp.zeros((4 * u,), kernel.dtype)
    if bias.shape != (4 * u,):
        raise ValueError(f"Argument `bias` of {name} must be ({4 * u},). "
                         f"Received: bias.shape={bias.shape}")
    if mask is not None and lengths is not None:
        raise ValueError(f"{name}: pass either `mask` or `lengths`, not both. "
                         f"Received: mask.shape={mask.shape}, "
                         f"lengths.shape={lengths.shape}")
    if lengths is not None:
        if lengths.shape != (b,):
            raise ValueError(f"Argument `lengths` of {name} must be ({b},). "
                             f"Received: lengths.shape={lengths.shape}")
        mask = jnp.arange(t)[None, :] < lengths[:, None]
    if mask is not None:
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != (b, t):
            raise ValueError(f"Argument `mask` of {name} must be ({b}, {t}). "
                             f"Received: mask.shape={mask.shape}")
        mask = mask.astype(bool)
    if initial_state is None:
        h0 = jnp.zeros((b, u), jnp.float32)
        c0 = jnp.zeros((b, u), jnp.float32)
    else:
        try:
            h0, c0 = initial_state
        except (TypeError, ValueError):
            raise ValueError(f"Argument `initial_state` of {name} must be a "
                             f"pair (h0, c0). Received: {initial_state!r}"
                             ) from None
        for nm, s in (("h0", h0), ("c0", c0)):
            if s.shape != (b, u):
                raise ValueError(f"Argument `initial_state` of {name}: {nm} "
                                 f"must be ({b}, {u}). Received: "
                                 f"{nm}.shape={s.shape}")
    dtype = jnp.result_type(x.dtype, kernel.dtype, recurrent_kernel.dtype)
    return bias, mask, h0, c0, u, dtype


# --------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------
def lstm_reference(x, kernel, recurrent_kernel, bias, *, initial_state=None,
                   mask=None, lengths=None, return_sequences=True,
                   go_backwards=False, block_sizes=None, interpret=None,
                   backend=None):
    """``lax.scan`` reference for :func:`lstm` (same signature and results;
    ``block_sizes``/``interpret``/``backend`` are ignored).

    Example:
        >>> out, h, c = lstm_reference(x, k, r, b, lengths=jnp.array([3, 5]))
    """
    del block_sizes, interpret, backend
    bias, mask, h0, c0, u, dtype = _prepare(
        x, kernel, recurrent_kernel, bias, initial_state, mask, lengths,
        "lstm_reference")
    b, t, _ = x.shape
    if mask is None:
        mask = jnp.ones((b, t), bool)
    if go_backwards:
        x = jnp.flip(x, 1)
        mask = jnp.flip(mask, 1)
    cpu = jax.default_backend() == "cpu"
    xp = jnp.einsum("btd,dg->tbg",
                    *C.cpu_safe(x.astype(dtype), kernel.astype(dtype),
                                upcast=cpu),
                    preferred_element_type=jnp.float32)
    xp = xp + bias.astype(jnp.float32)
    r = C.cpu_safe(recurrent_kernel.astype(dtype), upcast=cpu)

    def step(carry, inp):
        h, c = carry
        z, m = inp
        hq = C.cpu_safe(h.astype(dtype), upcast=cpu)
        z = z + jnp.dot(hq, r, preferred_element_type=jnp.float32)
        i = jax.nn.sigmoid(z[:, :u])
        f = jax.nn.sigmoid(z[:, u:2 * u])
        g = jnp.tanh(z[:, 2 * u:3 * u])
        o = jax.nn.sigmoid(z[:, 3 * u:])
        c2 = f * c + i * g
        h2 = o * jnp.tanh(c2)
        m = m[:, None]
        h2 = jnp.where(m, h2, h)
        c2 = jnp.where(m, c2, c)
        return (h2, c2), h2

    (h, c), hs = lax.scan(step, (h0.astype(jnp.float32),
                                 c0.astype(jnp.float32)), (xp, mask.T))
    out = jnp.swapaxes(hs, 0, 1) if return_sequences else h
    return out.astype(dtype), h.astype(dtype), c.astype(dtype)


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Cfg:
    t: int
    bp: int
    up: int
    bb: int
    bu: int
    bk: int
    backend: str
    interpret: bool
    num_warps: int
    num_stages: int
    recurrence: str = "persistent"


def _sigmoid(v):
    return 1.0 / (1.0 + jnp.exp(-v))


_HINT = ("each program holds block_b rows of the whole sequence and all of "
         "recurrent_kernel")


def _call(cfg, kernel, *, label, **kw):
    """:func:`_common.pallas_call` for one of the LSTM kernels."""
    return C.pallas_call(
        kernel, backend=cfg.backend, interpret=cfg.interpret,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, label=label,
        block_sizes=dict(block_b=cfg.bb, block_u=cfg.bu, block_k=cfg.bk),
        hint=_HINT, **kw)


def _fwd_kernel_call(xp, r, h0, c0, m, cfg: _Cfg):
    """xp (T, Bp, 4Up) f32, r (Up, 4Up), h0/c0 (Bp, Up) f32, m (T, Bp, 1) f32
    -> h_all, c_all (T+1, Bp, Up) f32 (index 0 = initial), gates (T, Bp, 4Up)."""
    t, bp, _ = xp.shape
    up, bb, bu, bk = cfg.up, cfg.bb, cfg.bu, cfg.bk
    nu, nk = up // bu, up // bk

    def kernel(xp_ref, r_ref, h0_ref, c0_ref, m_ref, h_ref, c_ref, g_ref):
        def init(j, c2):  # per chunk: Triton needs power-of-two tiles
            ch = pl.ds(pl.multiple_of(j * bu, bu), bu)
            h_ref[0, :, ch] = h0_ref[:, ch]
            c_ref[0, :, ch] = c0_ref[:, ch]
            return c2

        lax.fori_loop(0, nu, init, 0)
        C.gpu_barrier(cfg.backend, cfg.interpret)

        def step(s, carry):
            keep = m_ref[s] > 0.0  # (bb, 1)

            def chunk(j, c2):
                u0 = pl.multiple_of(j * bu, bu)
                zs = [xp_ref[s, :, pl.ds(q * up + u0, bu)] for q in range(4)]

                def kloop(kk, zs):
                    k0 = pl.multiple_of(kk * bk, bk)
                    hk = h_ref[s, :, pl.ds(k0, bk)].astype(r_ref.dtype)
                    return tuple(
                        z + jnp.dot(*C.cpu_safe(
                            hk, r_ref[pl.ds(k0, bk), pl.ds(q * up + u0, bu)],
                            upcast=cfg.interpret),
                            preferred_element_type=jnp.float32)
                        for q, z in enumerate(zs))

                zs = lax.fori_loop(0, nk, kloop, tuple(zs))
                i = _sigmoid(zs[0])
                f = _sigmoid(zs[1])
                g = jnp.tanh(zs[2])
                o = _sigmoid(zs[3])
                c_prev = c_ref[s, :, pl.ds(u0, bu)]
                h_prev = h_ref[s, :, pl.ds(u0, bu)]
                c_new = f * c_prev + i * g
                h_new = o * jnp.tanh(c_new)
                c_ref[s + 1, :, pl.ds(u0, bu)] = jnp.where(keep, c_new, c_prev)
                h_ref[s + 1, :, pl.ds(u0, bu)] = jnp.where(keep, h_new, h_prev)
                for q, v in enumerate((i, f, g, o)):
                    g_ref[s, :, pl.ds(q * up + u0, bu)] = v
                return c2

            lax.fori_loop(0, nu, chunk, 0)
            C.gpu_barrier(cfg.backend, cfg.interpret)
            return carry

        lax.fori_loop(0, t, step, 0)

    seq = lambda w: pl.BlockSpec((t, bb, w), lambda b: (0, b, 0))
    st = lambda w: pl.BlockSpec((t + 1, bb, w), lambda b: (0, b, 0))
    return _call(
        cfg, kernel, label="lstm forward",
        out_shape=(jax.ShapeDtypeStruct((t + 1, bp, up), jnp.float32),
                   jax.ShapeDtypeStruct((t + 1, bp, up), jnp.float32),
                   jax.ShapeDtypeStruct((t, bp, 4 * up), jnp.float32)),
        grid=(bp // bb,),
        in_specs=[seq(4 * up),
                  pl.BlockSpec((up, 4 * up), lambda b: (0, 0)),
                  pl.BlockSpec((bb, up), lambda b: (b, 0)),
                  pl.BlockSpec((bb, up), lambda b: (b, 0)),
                  seq(1)],
        out_specs=(st(up), st(up), seq(4 * up)),
        name="hybridnet_lstm_fwd",
    )(xp, r, h0, c0, m)


def _bwd_kernel_call(gates, c_all, m, r, dh_seq, dc_seq, cfg: _Cfg):
    """-> dz (T, Bp, 4Up) f32, dh0, dc0 (Bp, Up) f32.

    The running carries dh/dc live in parity double buffers (2, Bp, Up): step
    s reads buffer s % 2 and writes (s + 1) % 2, and the total dh_t goes to
    its own buffer, so no ref is read and written in the same phase (on GPU,
    threads of a program may not share a load/store layout).
    """
    t, bp, _ = gates.shape
    up, bb, bu, bk = cfg.up, cfg.bb, cfg.bu, cfg.bk
    nu, nk4 = up // bu, (4 * up) // bk

    def kernel(g_ref, c_ref, m_ref, r_ref, dh_ref, dc_ref,
               dz_ref, dhc_ref, dcc_ref, dht_ref):
        def init(j, c2):
            ch = pl.ds(pl.multiple_of(j * bu, bu), bu)
            dhc_ref[0, :, ch] = jnp.zeros((bb, bu), jnp.float32)
            dcc_ref[0, :, ch] = jnp.zeros((bb, bu), jnp.float32)
            return c2

        lax.fori_loop(0, nu, init, 0)
        C.gpu_barrier(cfg.backend, cfg.interpret)

        def step(s, carry):
            tt = t - 1 - s
            rd = lax.rem(s, 2)
            wr = 1 - rd
            keep = m_ref[tt] > 0.0

            def elementwise(j, c2):
                u0 = pl.multiple_of(j * bu, bu)
                ch = pl.ds(u0, bu)
                dh = dhc_ref[rd, :, ch] + dh_ref[tt, :, ch]
                dc = dcc_ref[rd, :, ch] + dc_ref[tt, :, ch]
                i, f, g, o = (g_ref[tt, :, pl.ds(q * up + u0, bu)]
                              for q in range(4))
                tc = jnp.tanh(c_ref[tt + 1, :, ch])
                c_prev = c_ref[tt, :, ch]
                dcn = dc + dh * o * (1.0 - tc * tc)
                dzs = (dcn * g * i * (1.0 - i),
                       dcn * c_prev * f * (1.0 - f),
                       dcn * i * (1.0 - g * g),
                       dh * tc * o * (1.0 - o))
                for q, v in enumerate(dzs):
                    dz_ref[tt, :, pl.ds(q * up + u0, bu)] = jnp.where(
                        keep, v, jnp.zeros_like(v))
                dcc_ref[wr, :, ch] = jnp.where(keep, dcn * f, dc)
                dht_ref[:, ch] = dh  # total dh_t, for the masked pass-through
                return c2

            lax.fori_loop(0, nu, elementwise, 0)
            C.gpu_barrier(cfg.backend, cfg.interpret)

            def recurrent(j, c2):
                u0 = pl.multiple_of(j * bu, bu)

                def kloop(kk, acc):
                    k0 = pl.multiple_of(kk * bk, bk)
                    dzk = dz_ref[tt, :, pl.ds(k0, bk)].astype(r_ref.dtype)
                    rk = r_ref[pl.ds(u0, bu), pl.ds(k0, bk)]
                    dzk, rk = C.cpu_safe(dzk, rk, upcast=cfg.interpret)
                    return acc + lax.dot_general(
                        dzk, rk, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)

                acc = lax.fori_loop(0, nk4, kloop,
                                    jnp.zeros((bb, bu), jnp.float32))
                ch = pl.ds(u0, bu)
                dhc_ref[wr, :, ch] = jnp.where(keep, acc, dht_ref[:, ch])
                return c2

            lax.fori_loop(0, nu, recurrent, 0)
            C.gpu_barrier(cfg.backend, cfg.interpret)
            return carry

        lax.fori_loop(0, t, step, 0)

    seq = lambda w: pl.BlockSpec((t, bb, w), lambda b: (0, b, 0))
    buf = pl.BlockSpec((2, bb, up), lambda b: (0, b, 0))
    dz, dhc, dcc, _ = _call(
        cfg, kernel, label="lstm backward",
        out_shape=(jax.ShapeDtypeStruct((t, bp, 4 * up), jnp.float32),
                   jax.ShapeDtypeStruct((2, bp, up), jnp.float32),
                   jax.ShapeDtypeStruct((2, bp, up), jnp.float32),
                   jax.ShapeDtypeStruct((bp, up), jnp.float32)),
        grid=(bp // bb,),
        in_specs=[seq(4 * up),
                  pl.BlockSpec((t + 1, bb, up), lambda b: (0, b, 0)),
                  seq(1),
                  pl.BlockSpec((up, 4 * up), lambda b: (0, 0)),
                  seq(up), seq(up)],
        out_specs=(seq(4 * up), buf, buf,
                   pl.BlockSpec((bb, up), lambda b: (b, 0))),
        name="hybridnet_lstm_bwd",
    )(gates, c_all, m, r, dh_seq, dc_seq)
    return dz, dhc[t % 2], dcc[t % 2]


def _step_index(s):
    return jnp.full((1,), s, jnp.int32)


_STEP_SPEC = pl.BlockSpec((1,), lambda b, j: (0,))


def _fwd_step_call(xp, r, h0, c0, m, cfg: _Cfg):
    """Stepwise forward: same contract as :func:`_fwd_kernel_call`, one
    launch per step over a (batch tiles, hidden tiles) grid."""
    t, bp, _ = xp.shape
    up, bb, bu, bk = cfg.up, cfg.bb, cfg.bu, cfg.bk
    nk = up // bk

    def kernel(s_ref, xp_ref, r_ref, m_ref, h_in, c_in, g_in,
               h_ref, c_ref, g_ref):
        del g_in  # aliased to g_ref; only written
        s = s_ref[0]
        u0 = pl.multiple_of(pl.program_id(1) * bu, bu)
        zs = tuple(xp_ref[s, :, pl.ds(q * up + u0, bu)] for q in range(4))

        def kloop(kk, zs):
            k0 = pl.multiple_of(kk * bk, bk)
            hk = h_in[s, :, pl.ds(k0, bk)].astype(r_ref.dtype)
            return tuple(
                z + jnp.dot(*C.cpu_safe(
                    hk, r_ref[pl.ds(k0, bk), pl.ds(q * up + u0, bu)],
                    upcast=cfg.interpret), preferred_element_type=jnp.float32)
                for q, z in enumerate(zs))

        zs = lax.fori_loop(0, nk, kloop, zs)
        i, f, g, o = (_sigmoid(zs[0]), _sigmoid(zs[1]), jnp.tanh(zs[2]),
                      _sigmoid(zs[3]))
        ch = pl.ds(u0, bu)
        c_prev = c_in[s, :, ch]
        h_prev = h_in[s, :, ch]
        c_new = f * c_prev + i * g
        h_new = o * jnp.tanh(c_new)
        keep = m_ref[s] > 0.0
        c_ref[s + 1, :, ch] = jnp.where(keep, c_new, c_prev)
        h_ref[s + 1, :, ch] = jnp.where(keep, h_new, h_prev)
        for q, v in enumerate((i, f, g, o)):
            g_ref[s, :, pl.ds(q * up + u0, bu)] = v

    rows = lambda n, w: pl.BlockSpec((n, bb, w), lambda b, j: (0, b, 0))
    h_all = jnp.zeros((t + 1, bp, up), jnp.float32).at[0].set(h0)
    c_all = jnp.zeros((t + 1, bp, up), jnp.float32).at[0].set(c0)
    gates = jnp.zeros((t, bp, 4 * up), jnp.float32)
    bufs = (h_all, c_all, gates)
    call = _call(
        cfg, kernel, label="lstm forward step",
        out_shape=tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in bufs),
        grid=(bp // bb, up // bu),
        in_specs=[_STEP_SPEC, rows(t, 4 * up),
                  pl.BlockSpec((up, 4 * up), lambda b, j: (0, 0)),
                  rows(t, 1), rows(t + 1, up), rows(t + 1, up),
                  rows(t, 4 * up)],
        out_specs=(rows(t + 1, up), rows(t + 1, up), rows(t, 4 * up)),
        input_output_aliases={4: 0, 5: 1, 6: 2},
        name="hybridnet_lstm_fwd_step",
    )
    return lax.fori_loop(
        0, t, lambda s, bufs: call(_step_index(s), xp, r, m, *bufs), bufs)


def _bwd_step_call(gates, c_all, m, r, dh_seq, dc_seq, cfg: _Cfg):
    """Stepwise backward through time: same contract as
    :func:`_bwd_kernel_call`.

    Buffers indexed by time, so a launch never reads what it writes:
    ``dz`` (T+1, ...) and ``dht`` (T+1, ...: the total dh per step, for
    masked pass-through) end in a zero row T; ``dcc[t]`` is the cell
    gradient carried into step t-1 (row T: zero). The launch for step t reads
    rows t+1 and writes rows t.
    """
    t, bp, _ = gates.shape
    up, bb, bu, bk = cfg.up, cfg.bb, cfg.bu, cfg.bk
    nk4 = (4 * up) // bk
    m1 = jnp.concatenate([m, jnp.ones((1, bp, 1), m.dtype)])  # row T: keep

    def kernel(s_ref, g_ref, c_ref, m_ref, r_ref, dh_ref, dc_ref,
               dz_in, dht_in, dcc_in, dz_out, dht_out, dcc_out):
        tt = t - 1 - s_ref[0]
        u0 = pl.multiple_of(pl.program_id(1) * bu, bu)
        ch = pl.ds(u0, bu)

        def kloop(kk, acc):  # dz_{t+1} @ R[rows of this tile]^T
            k0 = pl.multiple_of(kk * bk, bk)
            dzk, rk = C.cpu_safe(
                dz_in[tt + 1, :, pl.ds(k0, bk)].astype(r_ref.dtype),
                r_ref[ch, pl.ds(k0, bk)], upcast=cfg.interpret)
            return acc + lax.dot_general(dzk, rk, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32)

        acc = lax.fori_loop(0, nk4, kloop, jnp.zeros((bb, bu), jnp.float32))
        dh = (jnp.where(m_ref[tt + 1] > 0.0, acc, dht_in[tt + 1, :, ch])
              + dh_ref[tt, :, ch])
        dc = dcc_in[tt + 1, :, ch] + dc_ref[tt, :, ch]
        i, f, g, o = (g_ref[tt, :, pl.ds(q * up + u0, bu)] for q in range(4))
        tc = jnp.tanh(c_ref[tt + 1, :, ch])
        dcn = dc + dh * o * (1.0 - tc * tc)
        dzs = (dcn * g * i * (1.0 - i),
               dcn * c_ref[tt, :, ch] * f * (1.0 - f),
               dcn * i * (1.0 - g * g),
               dh * tc * o * (1.0 - o))
        keep = m_ref[tt] > 0.0
        for q, v in enumerate(dzs):
            dz_out[tt, :, pl.ds(q * up + u0, bu)] = jnp.where(
                keep, v, jnp.zeros_like(v))
        dcc_out[tt, :, ch] = jnp.where(keep, dcn * f, dc)
        dht_out[tt, :, ch] = dh

    rows = lambda n, w: pl.BlockSpec((n, bb, w), lambda b, j: (0, b, 0))
    bufs = (jnp.zeros((t + 1, bp, 4 * up), jnp.float32),
            jnp.zeros((t + 1, bp, up), jnp.float32),
            jnp.zeros((t + 1, bp, up), jnp.float32))
    call = _call(
        cfg, kernel, label="lstm backward step",
        out_shape=tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in bufs),
        grid=(bp // bb, up // bu),
        in_specs=[_STEP_SPEC, rows(t, 4 * up), rows(t + 1, up),
                  rows(t + 1, 1),
                  pl.BlockSpec((up, 4 * up), lambda b, j: (0, 0)),
                  rows(t, up), rows(t, up),
                  rows(t + 1, 4 * up), rows(t + 1, up), rows(t + 1, up)],
        out_specs=(rows(t + 1, 4 * up), rows(t + 1, up), rows(t + 1, up)),
        input_output_aliases={7: 0, 8: 1, 9: 2},
        name="hybridnet_lstm_bwd_step",
    )
    dz, dht, dcc = lax.fori_loop(
        0, t, lambda s, bufs: call(_step_index(s), gates, c_all, m1, r,
                                   dh_seq, dc_seq, *bufs), bufs)
    dz = dz[:t]
    dh0 = jnp.dot(*C.cpu_safe(dz[0].astype(r.dtype), r.T,
                              upcast=cfg.backend == "cpu"),
                  preferred_element_type=jnp.float32)
    dh0 = jnp.where(m[0] > 0.0, dh0, dht[0])
    return dz, dh0, dcc[0]


def _forward(xp, r, h0, c0, m, cfg):
    if cfg.recurrence == "stepwise":
        return _fwd_step_call(xp, r, h0, c0, m, cfg)
    return _fwd_kernel_call(xp, r, h0, c0, m, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lstm_core(xp, r, h0, c0, m, cfg):
    h_all, c_all, _ = _forward(xp, r, h0, c0, m, cfg)
    return h_all[1:], c_all[1:]


def _lstm_core_fwd(xp, r, h0, c0, m, cfg):
    h_all, c_all, gates = _forward(xp, r, h0, c0, m, cfg)
    return (h_all[1:], c_all[1:]), (gates, h_all, c_all, m, r)


def _lstm_core_bwd(cfg, res, cts):
    gates, h_all, c_all, m, r = res
    dh_seq, dc_seq = cts
    bwd = (_bwd_step_call if cfg.recurrence == "stepwise"
           else _bwd_kernel_call)
    dz, dh0, dc0 = bwd(gates, c_all, m, r, dh_seq.astype(jnp.float32),
                       dc_seq.astype(jnp.float32), cfg)
    dr = jnp.einsum("tbu,tbg->ug",
                    *C.cpu_safe(h_all[:-1].astype(r.dtype), dz.astype(r.dtype),
                                upcast=cfg.backend == "cpu"),
                    preferred_element_type=jnp.float32)
    return dz, dr.astype(r.dtype), dh0, dc0, jnp.zeros_like(m)


_lstm_core.defvjp(_lstm_core_fwd, _lstm_core_bwd)


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------
def lstm(x, kernel, recurrent_kernel, bias, *, initial_state=None, mask=None,
         lengths=None, return_sequences=True, go_backwards=False,
         block_sizes=None, interpret=None, backend=None):
    """Keras-compatible LSTM layer computation with a Pallas recurrence.

    Args:
      x: (B, T, D) float32 or bfloat16.
      kernel: (D, 4U); recurrent_kernel: (U, 4U); bias: (4U,) or None.
        Gate order i, f, c, o (Keras).
      initial_state: optional pair (h0, c0), each (B, U).
      mask: optional (B, T) bool (False = skip step, carry state); or
      lengths: optional (B,) int, meaning ``mask = t < lengths``.
      return_sequences: outputs (B, T, U) if True, else the last output (B, U).
      go_backwards: process the reversed sequence; outputs come in
        processing (reversed) order, as in Keras.
      block_sizes: None (per-backend defaults), or a dict overriding
        ``block_b``, ``block_u``, ``block_k``, ``num_warps``, ``num_stages``,
        ``recurrence`` ("persistent" or "stepwise", see the module doc),
        or "autotune" (GPU: time candidates once per shape and cache them).
      interpret: None = True on CPU, False elsewhere.
      backend: "cpu"/"gpu"/"tpu" (or "cuda"/"rocm"); None = default backend.

    Returns:
      ``(outputs, h_T, c_T)`` in ``result_type(x, kernel, recurrent_kernel)``;
      the recurrence state and all accumulation are float32. Differentiable
      w.r.t. x, kernel, recurrent_kernel, bias and initial_state
      (custom_vjp, Pallas backward-through-time kernel, gates saved in the
      forward).

    Example:
        >>> x = jnp.ones((4, 7, 3)); k = jnp.ones((3, 32)) * .1
        >>> r = jnp.ones((8, 32)) * .1; b = jnp.zeros(32)
        >>> out, h, c = lstm(x, k, r, b, lengths=jnp.array([7, 5, 2, 0]))
        >>> out.shape, h.shape
        ((4, 7, 8), (4, 8))
    """
    backend = C.resolve_backend(backend)
    ok, why = supports_lstm(x.shape, dtype=x.dtype, w_dtype=kernel.dtype,
                            backend=backend)
    if not ok:
        raise ValueError(why)
    for nm, a in (("recurrent_kernel", recurrent_kernel),):
        msg = C.check_dtype("lstm kernel", nm, a.dtype)
        if msg:
            raise ValueError(msg)
    bias, mask, h0, c0, u, dtype = _prepare(
        x, kernel, recurrent_kernel, bias, initial_state, mask, lengths, "lstm")
    interpret = C.resolve_interpret(interpret, backend)
    b, t, _ = x.shape
    bs = _block_sizes(block_sizes, b, t, x.shape[2], u, dtype, backend,
                      interpret)
    bb = bs["block_b"] or b
    if backend == "gpu" and not interpret and bb > b:
        bb = max(16, C.next_pow2(b))  # do not pad a small batch to the tile
    bu = bs["block_u"] or u
    bk = bs["block_k"] or u
    up = C.round_up(u, max(bu, bk))
    if up % bu or up % bk:
        up = C.round_up(u, bu * bk)
    bp = C.round_up(b, bb)
    if bs["recurrence"] == "stepwise" and backend == "tpu":
        raise ValueError("lstm kernel: block_sizes['recurrence']='stepwise' "
                         "is for GPU (Triton); on TPU use 'persistent'. "
                         "Received: recurrence='stepwise', backend='tpu'")
    cfg = _Cfg(t=t, bp=bp, up=up, bb=bb, bu=bu, bk=bk, backend=backend,
               interpret=interpret, num_warps=bs["num_warps"],
               num_stages=bs["num_stages"], recurrence=bs["recurrence"])

    if mask is None:
        mask = jnp.ones((b, t), bool)
    if go_backwards:
        x = jnp.flip(x, 1)
        mask = jnp.flip(mask, 1)
    # input projection for all steps: one matmul outside the recurrence
    xp = jnp.einsum("btd,dg->tbg",
                    *C.cpu_safe(x.astype(dtype), kernel.astype(dtype),
                                upcast=backend == "cpu"),
                    preferred_element_type=jnp.float32)
    xp = xp + bias.astype(jnp.float32)
    pad_u = up - u
    xp = jnp.pad(xp.reshape(t, b, 4, u),
                 ((0, 0), (0, bp - b), (0, 0), (0, pad_u))).reshape(t, bp, 4 * up)
    r = jnp.pad(recurrent_kernel.astype(dtype).reshape(u, 4, u),
                ((0, pad_u), (0, 0), (0, pad_u))).reshape(up, 4 * up)
    pad_s = lambda s: jnp.pad(s.astype(jnp.float32), ((0, bp - b), (0, pad_u)))
    m = jnp.pad(mask.T.astype(jnp.float32), ((0, 0), (0, bp - b)))[..., None]
    h_seq, c_seq = _lstm_core(xp, r, pad_s(h0), pad_s(c0), m, cfg)
    h_seq = h_seq[:, :b, :u]
    h_t = h_seq[-1]
    c_t = c_seq[-1, :b, :u]
    out = jnp.swapaxes(h_seq, 0, 1) if return_sequences else h_t
    return out.astype(dtype), h_t.astype(dtype), c_t.astype(dtype)


def _block_sizes(block_sizes, b, t, d, u, dtype, backend, interpret):
    defaults = _DEFAULTS[backend]
    key = dict(b=b, t=t, d=d, u=u, dtype=str(jnp.dtype(dtype)))
    if isinstance(block_sizes, str):
        if block_sizes != "autotune":
            raise ValueError("Argument `block_sizes` must be a dict, None or "
                             f"'autotune'. Received: block_sizes={block_sizes!r}")
        if backend == "cpu" or interpret:
            return dict(defaults)
        return _autotune(key, b, t, d, u, dtype, backend)
    if block_sizes is None and backend != "cpu":
        cached = C.cached_block_sizes("lstm", key, backend)
        if cached:
            return C.merge_block_sizes("lstm", defaults, cached,
                                       choices=_CHOICES)
    return C.merge_block_sizes("lstm", defaults, block_sizes,
                               choices=_CHOICES)


_CHOICES = {"recurrence": RECURRENCES}


def triton_smem_estimate(block_sizes, dtype=jnp.float32) -> int:
    """Estimated Triton shared memory (bytes) of the larger LSTM kernel at
    int ``block_sizes`` with a ``dtype`` recurrent kernel: the forward's
    four gate dots per h chunk, or the backward's ``dz @ R^T``. An
    estimate, not Triton's accounting (see ``_common.triton_smem_bytes``).

    Example:
        >>> triton_smem_estimate(default_lstm_block_sizes("gpu"))
        98304
    """
    bb, bu, bk = (block_sizes[k] for k in ("block_b", "block_u", "block_k"))
    dots = [([(bb, bk)], [(bk, bu)] * 4, [(bb, bu)] * 4, dtype),  # forward
            ([(bb, bk)], [(bu, bk)], [(bb, bu)], dtype)]  # backward
    return C.triton_smem_bytes(dots, num_stages=block_sizes["num_stages"])


def _gpu_candidates(dtype=jnp.float32):
    """Autotune candidates whose shared-memory estimate fits a Hopper block
    (``_common.TRITON_SMEM_LIMIT_BYTES``); the defaults come first."""
    variants = [dict(block_b=bb, block_u=bu, block_k=bk, num_warps=nw)
                for bb, bu, bk, nw in ((16, 32, 64, 4), (64, 32, 64, 4),
                                       (32, 64, 64, 8), (64, 64, 64, 8),
                                       (128, 32, 64, 8))]
    variants += [dict(recurrence="persistent", block_b=bb, block_u=32,
                      block_k=32)  # the whole-sequence kernel, for reference
                 for bb in (16, 32)]
    return C.gpu_candidates(_DEFAULTS["gpu"], variants,
                            lambda bs: triton_smem_estimate(bs, dtype))


def _autotune(key, b, t, d, u, dtype, backend):
    with jax.ensure_compile_time_eval():
        ks = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(ks[0], (b, t, d), dtype)
        k = (jax.random.normal(ks[1], (d, 4 * u)) * 0.05).astype(dtype)
        r = (jax.random.normal(ks[2], (u, 4 * u)) * 0.05).astype(dtype)
        bias = jnp.zeros((4 * u,), dtype)

        def run(bs):
            def loss(x, k, r, bias):
                return jnp.sum(lstm(x, k, r, bias, block_sizes=bs,
                                    backend=backend)[0].astype(jnp.float32))
            return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, k, r, bias)

        cands = (_gpu_candidates(dtype) if backend == "gpu"
                 else [dict(_DEFAULTS[backend])])
        return C.autotune("lstm", key, cands, run, backend)
