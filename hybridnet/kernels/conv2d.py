"""2-D convolution (NHWC x HWIO) as Pallas matmul kernels, with a fused
bias + ReLU epilogue and Pallas backward kernels under ``jax.custom_vjp``.

How the convolution becomes matmuls
-----------------------------------
1. Outside the kernel (plain jnp, differentiated by JAX): the input is padded,
   cropped to the rows/columns the output needs, channel-padded to the block
   size, and split into ``sh*sw`` stride *phases* (space-to-depth), each
   flattened to rows of width ``Wq`` ("wide rows"):
   ``A[n, p, i*Wq + j, :] = xpad[n, i*sh + p // sw, j*sw + p % sw, :]``.
   A strided convolution becomes a unit-stride one: filter tap ``(kh, kw)``
   reads phase ``(kh % sh, kw % sw)`` shifted by ``(kh // sh)*Wq + kw // sw``
   rows.
2. Forward kernel: each program owns a tile of ``block_m`` output rows x
   ``block_cout`` channels and accumulates, in float32, the sum over the
   ``KH*KW`` taps and the ``block_cin`` channel chunks of
   ``A[rows + offset(tap)] @ W[tap]`` — the "sum of shifted matmuls" — in one
   ``fori_loop`` over (tap, chunk) pairs with one dot per step, so Triton
   stages ``num_stages`` pairs of tiles in shared memory whatever ``Cin``. Bias
   and ReLU are applied before the single store. Output columns
   ``j >= Wo`` of each wide row are computed and discarded (waste
   ``(Wq - Wo)/Wq``, small for the usual shapes).
3. Backward: an epilogue kernel applies the ReLU mask (``y > 0``) to the
   output gradient and reduces the bias gradient; *dgrad* is the same
   shifted-matmul kernel run on the zero-padded output gradient with the
   flipped, transposed weights, one output phase per grid row (taps whose
   phase is absent in the filter carry zero weights); *wgrad* computes
   ``sum_rows A[rows + offset(tap)]^T @ dz`` per tap, split over groups of
   images whose partial sums are added outside the kernel.

Strided convolutions: phases or depth
-------------------------------------
``block_sizes["stride_layout"]`` picks how a stride > 1 becomes matmuls.
``"phases"`` is the scheme above: every filter tap is one matmul over
``Cin`` channels, padded to ``block_cin``. ``"depth"`` first moves the stride
phases into channels (space-to-depth, plain jnp outside the kernels, so JAX
differentiates it): the input becomes ``(N, Hq, Wq, sh*sw*Cin)`` and the
filter, zero-padded to a multiple of the stride, ``(ceil(KH/sh),
ceil(KW/sw), sh*sw*Cin, Cout)``; the convolution is then a stride-1 one.
``"auto"`` (the default) takes the layout with fewer executed multiply-adds
per output row, ``KH*KW*round_up(Cin, block_cin)`` against
``ceil(KH/sh)*ceil(KW/sw)*round_up(sh*sw*Cin, block_cin)``. For AlexNet's
first layer (11x11, stride 4, 3 channels) at the GPU defaults this is 3872
against 576: 9% of the executed work is useful in phases, 63% in depth. A
3x3 stride-2 layer over 64 channels stays in phases (576 against 1024).

Block sizes (``block_sizes=`` dict, merged with the per-backend defaults):
``block_n`` images per forward/dgrad program, ``block_m`` output rows,
``block_cout``/``block_cin`` channel tiles, ``wgrad_block_n`` images per
wgrad program (split-K groups), ``wgrad_block_taps`` filter taps per wgrad
program, ``num_warps``/``num_stages`` (Triton), ``stride_layout`` (above).
``None`` means "the whole dimension". Pass ``block_sizes="autotune"`` on GPU to time a few candidates
and cache the choice (see ``_common.autotune``); candidates whose estimated
shared memory (:func:`triton_smem_estimate`) exceeds a Hopper block's are
not timed.

On TPU, Mosaic loads rows only at offsets it can prove sublane-aligned,
and a tap's row offset is dynamic: the kernels load an aligned window of
``block_m + 16`` rows and rotate it into place (``_shifted_rows``; the
arrays carry 16 rows of slack for it). ``backend="tpu", interpret=True``
runs this code in JAX's TPU interpreter; ``benchmarks/tpu_compile.py``
compiles it with libtpu.

On TPU every kernel's blocks are double-buffered in VMEM; each call derives
the bytes from its BlockSpecs and raises the scoped VMEM limit when they
exceed the 16 MiB default, or raises a ValueError naming the block sizes when
they exceed the chip (``_common.tpu_vmem_limit``). The forward and wgrad
input blocks hold whole images with channels padded to ``block_cin``: a
large, few-channel first layer in the phases layout (AlexNet conv1, 16
phases of 3 -> 128 channels) needs ~69 MiB forward and ~57 MiB per wgrad
image (``wgrad_block_n``) in float32; in the depth layout, which "auto"
picks for it, the forward fits the default limit and the backward at batch
128 needs 58 MiB.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from . import _common as C

__all__ = ["conv2d", "conv2d_reference", "supports_conv2d",
           "default_conv2d_block_sizes"]

_ACTIVATIONS = (None, "linear", "relu")

_DEFAULTS = {
    # CPU interpret mode copies whole arrays per grid step: one big block.
    "cpu": dict(block_n=None, block_m=None, block_cout=None, block_cin=None,
                wgrad_block_n=None, wgrad_block_taps=None, num_warps=4,
                num_stages=2, stride_layout="auto"),
    # Triton: power-of-two tiles, dot dims >= 16.
    "gpu": dict(block_n=1, block_m=64, block_cout=64, block_cin=32,
                wgrad_block_n=8, wgrad_block_taps=1, num_warps=4,
                num_stages=2, stride_layout="auto"),
    # Mosaic TPU: rows multiple of 8 (16 for bf16), channels multiple of 128.
    "tpu": dict(block_n=1, block_m=256, block_cout=128, block_cin=128,
                wgrad_block_n=8, wgrad_block_taps=1, num_warps=4,
                num_stages=2, stride_layout="auto"),
}


def default_conv2d_block_sizes(backend: str | None = None) -> dict:
    """The default ``block_sizes`` dict of :func:`conv2d` for a backend."""
    return dict(_DEFAULTS[C.resolve_backend(backend)])


# --------------------------------------------------------------------------
# argument normalisation
# --------------------------------------------------------------------------
def _pair(name, v):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        v = tuple(int(e) for e in v)
    except TypeError:
        raise ValueError(f"Argument `{name}` must be an int or a pair of ints. "
                         f"Received: {name}={v!r}") from None
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"Argument `{name}` must be an int or a pair of "
                         f"positive ints. Received: {name}={v!r}")
    return v


def _padding(padding, hw, khw, strides):
    """Returns ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        p = padding.lower()
        if p == "valid":
            return ((0, 0), (0, 0))
        if p == "same":  # TF / Keras / lax "SAME"
            out = []
            for n, k, s in zip(hw, khw, strides):
                o = -(-n // s)
                tot = max((o - 1) * s + k - n, 0)
                out.append((tot // 2, tot - tot // 2))
            return tuple(out)
        raise ValueError('Argument `padding` must be "valid", "same" or '
                         '((top, bottom), (left, right)). '
                         f'Received: padding={padding!r}')
    try:
        (t, b), (l, r) = padding
        pads = ((int(t), int(b)), (int(l), int(r)))
    except (TypeError, ValueError):
        raise ValueError('Argument `padding` must be "valid", "same" or '
                         '((top, bottom), (left, right)). '
                         f'Received: padding={padding!r}') from None
    if min(pads[0] + pads[1]) < 0:
        raise ValueError("Argument `padding` must be non-negative. "
                         f"Received: padding={padding!r}")
    return pads


def supports_conv2d(x_shape=None, w_shape=None, *, dtype=jnp.float32,
                    w_dtype=None, strides=(1, 1), padding="valid",
                    dilation_rate=(1, 1), groups=1, activation=None,
                    backend=None) -> tuple[bool, str]:
    """Whether the Pallas conv2d kernel handles a configuration.

    Returns ``(ok, reason)``; ``reason`` is "" when ok, else one line naming
    the argument, suitable for a fallback note under ``kernel="auto"`` or an
    error under ``kernel="pallas"``.

    Example:
        >>> supports_conv2d((8, 32, 32, 3), (3, 3, 3, 16), dilation_rate=2)
        (False, 'conv2d kernel supports dilation_rate=(1, 1) only. Received: dilation_rate=(2, 2)')
    """
    try:
        _check_config(x_shape, w_shape, dtype, w_dtype, strides, padding,
                      dilation_rate, groups, activation, backend)
    except ValueError as e:
        return False, str(e)
    return True, ""


def _check_config(x_shape, w_shape, dtype, w_dtype, strides, padding,
                  dilation_rate, groups, activation, backend):
    C.resolve_backend(backend)
    strides = _pair("strides", strides)
    dil = _pair("dilation_rate", dilation_rate)
    if dil != (1, 1):
        raise ValueError("conv2d kernel supports dilation_rate=(1, 1) only. "
                         f"Received: dilation_rate={dil}")
    if groups != 1:
        raise ValueError("conv2d kernel supports groups=1 only. "
                         f"Received: groups={groups!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError("Argument `activation` of conv2d kernel must be None, "
                         f"'linear' or 'relu'. Received: activation={activation!r}")
    for name, d in (("x", dtype), ("w", w_dtype if w_dtype is not None else dtype)):
        msg = C.check_dtype("conv2d kernel", name, d)
        if msg:
            raise ValueError(msg)
    if x_shape is not None and len(x_shape) != 4:
        raise ValueError("Argument `x` of conv2d must be 4-D NHWC. "
                         f"Received: x.shape={tuple(x_shape)}")
    if w_shape is not None and len(w_shape) != 4:
        raise ValueError("Argument `w` of conv2d must be 4-D HWIO "
                         f"(KH, KW, Cin, Cout). Received: w.shape={tuple(w_shape)}")
    if x_shape is not None and w_shape is not None:
        if x_shape[3] != w_shape[2]:
            raise ValueError(
                "conv2d expects w.shape[2] (input channels) == x.shape[3]. "
                f"Received: x.shape={tuple(x_shape)}, w.shape={tuple(w_shape)}")
        pads = _padding(padding, x_shape[1:3], w_shape[:2], strides)
        for i, name in ((0, "height"), (1, "width")):
            size = x_shape[1 + i] + sum(pads[i])
            if size < w_shape[i]:
                raise ValueError(
                    f"conv2d: padded input {name} {size} is smaller than the "
                    f"filter {name} {w_shape[i]}. Received: "
                    f"x.shape={tuple(x_shape)}, w.shape={tuple(w_shape)}, "
                    f"padding={padding!r}")
    elif padding is not None:
        if isinstance(padding, str) and padding.lower() not in ("valid", "same"):
            _padding(padding, (1, 1), (1, 1), (1, 1))


# --------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------
def conv2d_reference(x, w, b=None, *, strides=(1, 1), padding="valid",
                     activation=None, block_sizes=None, interpret=None,
                     dilation_rate=(1, 1), groups=1, backend=None):
    """XLA reference for :func:`conv2d`: ``lax.conv_general_dilated`` + bias +
    activation, float32 accumulation. ``block_sizes``/``interpret``/
    ``backend`` are accepted and ignored; dilation and groups are supported.

    Example:
        >>> y = conv2d_reference(x, w, b, strides=2, padding="same",
        ...                      activation="relu")
    """
    del block_sizes, interpret, backend
    strides = _pair("strides", strides)
    dil = _pair("dilation_rate", dilation_rate)
    if activation not in _ACTIVATIONS:
        raise ValueError("Argument `activation` must be None, 'linear' or "
                         f"'relu'. Received: activation={activation!r}")
    if isinstance(padding, str):
        pad = padding.upper()
        if pad not in ("VALID", "SAME"):
            _padding(padding, (1, 1), (1, 1), (1, 1))  # raises
    else:
        pad = _padding(padding, (1, 1), (1, 1), (1, 1))
    dtype = jnp.result_type(x.dtype, w.dtype)
    xc, wc = C.cpu_safe(x.astype(dtype), w.astype(dtype),
                        upcast=jax.default_backend() == "cpu")
    y = lax.conv_general_dilated(
        xc, wc, window_strides=strides, padding=pad,
        rhs_dilation=dil, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, preferred_element_type=jnp.float32)
    if b is not None:
        y = y + b.astype(jnp.float32)
    if activation == "relu":
        y = jnp.maximum(y, 0)
    return y.astype(dtype)


# --------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Geom:
    n: int
    kh: int
    kw: int
    sh: int
    sw: int
    hq: int       # phase height
    wq: int       # phase (wide-row) width
    ho: int
    wo: int
    kp: int       # padded input channels
    cp: int       # padded output channels
    m: int        # ho * wq
    mp: int       # m rounded up to block_m
    ra: int       # rows of each flattened phase (>= mp + max tap offset)
    bn: int
    bm: int
    bc: int       # cout tile
    bk: int       # cin tile
    wbn: int      # wgrad images per program
    wbt: int      # wgrad taps per program
    relu: bool
    has_bias: bool
    backend: str
    interpret: bool
    num_warps: int
    num_stages: int

    @property
    def p(self):
        return self.sh * self.sw

    def block_sizes(self, *keys):
        """The resolved ``block_sizes`` entries named by ``keys``."""
        vals = dict(block_n=self.bn, block_m=self.bm, block_cout=self.bc,
                    block_cin=self.bk, wgrad_block_n=self.wbn,
                    wgrad_block_taps=self.wbt)
        return {k: vals[k] for k in keys}

    @property
    def taps(self):
        return self.kh * self.kw

    # dgrad geometry: taps padded up to multiples of the stride
    @property
    def khq(self):
        return -(-self.kh // self.sh)

    @property
    def kwq(self):
        return -(-self.kw // self.sw)

    @property
    def dg_c(self):  # largest forward tap offset over the padded taps
        return (self.khq - 1) * self.wq + (self.kwq - 1)

    @property
    def dg_bm(self):
        return self.bm

    @property
    def dg_rows(self):  # dgrad output rows per phase (rounded to its block)
        return C.round_up(self.ra, self.dg_bm)

    @property
    def dg_rz(self):  # rows of the shifted, zero-padded output gradient
        return C.round_up(self.dg_rows + self.dg_c + _row_slack(self.backend),
                          8)


def _divisor_at_most(n, cap):
    cap = max(1, min(n, cap))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1


_TPU_ROW_ALIGN = 16  # sublanes of a bfloat16 vreg (float32: 8)


def _row_slack(backend):
    """Extra rows after the last one a kernel reads: on TPU, rows are loaded
    from an aligned window that may reach ``_TPU_ROW_ALIGN`` rows further."""
    return _TPU_ROW_ALIGN if backend == "tpu" else 0


def _shifted_rows(ref, lead, start, n, cols, g):
    """``ref[*lead, start:start + n, cols]`` for a dynamic, unaligned ``start``.

    Mosaic (TPU) loads rows only at offsets it can prove sublane-aligned, so
    there the rows come from an aligned window of ``n + 16`` rows, rotated
    into place (in float32: Mosaic does not rotate packed bfloat16)."""
    if g.backend != "tpu":
        return ref[(*lead, pl.ds(start, n), cols)]
    from jax.experimental.pallas import tpu as pltpu
    al = _TPU_ROW_ALIGN
    base = pl.multiple_of(lax.div(start, al) * al, al)
    wide = ref[(*lead, pl.ds(base, n + al), cols)].astype(jnp.float32)
    shift = lax.rem(n + al - (start - base), n + al)
    return pltpu.roll(wide, shift, 0)[:n].astype(ref.dtype)


def _interpret(g):
    """``pallas_call``'s ``interpret``: on the TPU backend, JAX's TPU
    interpreter (it runs TPU primitives such as the row rotation on CPU)."""
    if g.interpret and g.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.InterpretParams()
    return g.interpret


def _geometry(x_shape, w_shape, strides, pads, bs, relu, has_bias, backend,
              interpret):
    n, h, w, cin = x_shape
    kh, kw, _, cout = w_shape
    sh, sw = strides
    (pt, pb), (pleft, pr) = pads
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pleft + pr - kw) // sw + 1
    hneed = (ho - 1) * sh + kh
    wneed = (wo - 1) * sw + kw
    hq = -(-hneed // sh)
    wq = -(-wneed // sw)
    m = ho * wq
    align = 8 if backend != "tpu" else 16
    bm = bs["block_m"] or C.round_up(m, align)
    mp = C.round_up(m, bm)
    maxoff = ((kh - 1) // sh) * wq + (kw - 1) // sw
    ra = C.round_up(max(hq * wq, mp + maxoff + _row_slack(backend)), 8)
    bk = bs["block_cin"] or cin
    bc = bs["block_cout"] or cout
    kp = C.round_up(cin, bk)
    cp = C.round_up(cout, bc)
    bn = _divisor_at_most(n, bs["block_n"] or n)
    wbn = _divisor_at_most(n, bs["wgrad_block_n"] or n)
    wbt = _divisor_at_most(kh * kw, bs["wgrad_block_taps"] or kh * kw)
    return _Geom(n=n, kh=kh, kw=kw, sh=sh, sw=sw, hq=hq, wq=wq, ho=ho, wo=wo,
                 kp=kp, cp=cp, m=m, mp=mp, ra=ra, bn=bn, bm=bm, bc=bc, bk=bk,
                 wbn=wbn, wbt=wbt, relu=relu, has_bias=has_bias,
                 backend=backend, interpret=interpret,
                 num_warps=bs["num_warps"], num_stages=bs["num_stages"])


STRIDE_LAYOUTS = ("auto", "phases", "depth")
_CHOICES = {"stride_layout": STRIDE_LAYOUTS}


def _stride_layout(bs, x_shape, w_shape, strides) -> str:
    """"phases" or "depth" for ``bs["stride_layout"]`` (see the module
    docstring): "auto" takes the one with fewer executed multiply-adds."""
    if strides == (1, 1):
        return "phases"  # the two are the same convolution
    if bs["stride_layout"] != "auto":
        return bs["stride_layout"]
    kh, kw, cin, _ = w_shape
    sh, sw = strides
    ch = lambda c: C.round_up(c, bs["block_cin"] or c)
    phases = kh * kw * ch(cin)
    depth = -(-kh // sh) * -(-kw // sw) * ch(sh * sw * cin)
    return "depth" if depth < phases else "phases"


def _space_to_depth(x, w, strides, pads):
    """A strided convolution as a stride-1 one: ``(x, w)`` to ``(xs, ws)``
    with ``conv(x, w, strides, pads) == conv(xs, ws, 1, valid)``. Channel
    ``(ph*sw + pw)*Cin + c`` of ``xs`` is input phase ``(ph, pw)``; the
    filter is zero-padded to a multiple of the stride and split the same
    way."""
    n, h, wd, c = x.shape
    kh, kw, _, cout = w.shape
    sh, sw = strides
    (pt, pb), (pleft, pr) = pads
    khq, kwq = -(-kh // sh), -(-kw // sw)
    hq = (h + pt + pb - kh) // sh + khq
    wq = (wd + pleft + pr - kw) // sw + kwq
    cfg = [(0, 0, 0), (pt, hq * sh - h - pt, 0),
           (pleft, wq * sw - wd - pleft, 0), (0, 0, 0)]
    xs = lax.pad(x, jnp.zeros((), x.dtype), cfg)  # negative = crop
    xs = xs.reshape(n, hq, sh, wq, sw, c).transpose(0, 1, 3, 2, 4, 5)
    ws = jnp.pad(w, ((0, khq * sh - kh), (0, kwq * sw - kw), (0, 0), (0, 0)))
    ws = ws.reshape(khq, sh, kwq, sw, c, cout).transpose(0, 2, 1, 3, 4, 5)
    return (xs.reshape(n, hq, wq, sh * sw * c),
            ws.reshape(khq, kwq, sh * sw * c, cout))


def _to_phases(x, g: _Geom, pads):
    """(N, H, W, Cin) -> (N, P, RA, Kp) flattened stride phases (plain jnp)."""
    n, h, w, cin = x.shape
    (pt, _), (pleft, _) = pads
    cfg = [(0, 0, 0), (pt, g.hq * g.sh - h - pt, 0),
           (pleft, g.wq * g.sw - w - pleft, 0), (0, g.kp - cin, 0)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)  # negative = crop
    xp = xp.reshape(n, g.hq, g.sh, g.wq, g.sw, g.kp)
    xp = xp.transpose(0, 2, 4, 1, 3, 5).reshape(n, g.p, g.hq * g.wq, g.kp)
    return jnp.pad(xp, ((0, 0), (0, 0), (0, g.ra - g.hq * g.wq), (0, 0)))


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
_MATMUL_KEYS = ("block_n", "block_m", "block_cout", "block_cin")
_MATMUL_HINT = ("the input block holds block_n whole images (every stride "
                "phase and row, channels padded to block_cin) and the weight "
                "block every tap and input channel of block_cout outputs")


def _for_each(n, fn):
    """``fn(i)`` for ``i < n`` inside a kernel (no loop when ``n == 1``)."""
    if n == 1:
        fn(0)
        return

    def body(i, carry):
        fn(i)
        return carry

    lax.fori_loop(0, n, body, 0)


def _call(g: _Geom, kernel, *, label, keys, hint="", **kw):
    """:func:`_common.pallas_call` for one of the conv2d kernels; ``keys``
    name the block sizes a VMEM error reports."""
    return C.pallas_call(kernel, backend=g.backend, interpret=_interpret(g),
                         num_warps=g.num_warps, num_stages=g.num_stages,
                         label=label, block_sizes=g.block_sizes(*keys),
                         hint=hint, **kw)


def _shifted_matmul(a, wt, bias, *, out_rows, bm, bc, bk, bn, tw, tsh, tsw,
                    wq, base, sign, relu, out_dtype, g: _Geom,
                    kernel_name="conv2d forward",
                    name="hybridnet_conv2d_matmul"):
    """out[n, po, r, :] = epilogue(sum_t A[n, pa(t), r + off(t), :] @ W[po, t]).

    a: (N, PA, RA, K); wt: (PO, T, K, Cout); bias: (1, Cout) f32 or None.
    Tap t = (th, tw_): th = t // tw, tw_ = t % tw;
    pa(t) = (th % tsh) * tsw + tw_ % tsw;
    off(t) = base + sign * ((th // tsh) * wq + tw_ // tsw).
    ``kernel_name`` names the kernel (forward or dgrad) in errors, ``name``
    in compiled programs and profiles.
    """
    n, _, _, k = a.shape
    po, taps, _, cout = wt.shape
    nk = k // bk

    def kernel(*refs):
        if bias is not None:
            a_ref, w_ref, b_ref, o_ref = refs
        else:
            a_ref, w_ref, o_ref = refs
        r0 = pl.program_id(2) * bm

        def one_image(i):
            # One loop over (tap, channel chunk) with one dot per step: the
            # Triton pipeliner then stages num_stages pairs of tiles; a
            # static loop over chunks would stage every chunk's tiles at
            # once (shared memory growing with Cin / block_cin).
            def step(s, acc):
                t = lax.div(s, nk)
                k0 = pl.multiple_of(lax.rem(s, nk) * bk, bk)
                th = lax.div(t, tw)
                tv = lax.rem(t, tw)
                pa = lax.rem(th, tsh) * tsw + lax.rem(tv, tsw)
                off = base + sign * (lax.div(th, tsh) * wq + lax.div(tv, tsw))
                xa = _shifted_rows(a_ref, (i, pa), r0 + off, bm,
                                   pl.ds(k0, bk), g)
                wb = w_ref[0, t, pl.ds(k0, bk), :]
                return acc + jnp.dot(*C.cpu_safe(xa, wb, upcast=g.interpret),
                                     preferred_element_type=jnp.float32)

            acc = lax.fori_loop(0, taps * nk, step,
                                jnp.zeros((bm, bc), jnp.float32))
            if bias is not None:
                acc = acc + b_ref[...].astype(jnp.float32)
            if relu:
                acc = jnp.maximum(acc, 0.0)
            o_ref[i, 0] = acc.astype(o_ref.dtype)

        _for_each(bn, one_image)

    grid = (n // bn, po, out_rows // bm, cout // bc)
    in_specs = [
        pl.BlockSpec((bn,) + a.shape[1:], lambda b, p, i, j: (b, 0, 0, 0)),
        pl.BlockSpec((1, taps, k, bc), lambda b, p, i, j: (p, 0, 0, j)),
    ]
    args = [a, wt]
    if bias is not None:
        in_specs.append(pl.BlockSpec((1, bc), lambda b, p, i, j: (0, j)))
        args.append(bias)
    return _call(
        g, kernel, label=kernel_name, keys=_MATMUL_KEYS, hint=_MATMUL_HINT,
        out_shape=jax.ShapeDtypeStruct((n, po, out_rows, cout), out_dtype),
        grid=grid,
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bn, 1, bm, bc),
                               lambda b, p, i, j: (b, p, i, j)),
        name=name,
    )(*args)


def _epilogue_bwd(dy, y, g: _Geom):
    """dz = dy * (y > 0) (when relu) and per-block partial bias sums."""
    n, mp, cp = dy.shape
    bn, bm, bc = g.bn, g.bm, g.bc
    nm = mp // bm

    def kernel(dy_ref, y_ref, dz_ref, db_ref):
        dyv = dy_ref[...]
        if g.relu:
            dyv = jnp.where(y_ref[...] > 0, dyv, jnp.zeros_like(dyv))
        dz_ref[...] = dyv
        s = jnp.sum(dyv.astype(jnp.float32), axis=1)  # (bn, bc)
        if bn > 1:
            s = jnp.sum(s, axis=0, keepdims=True)
        db_ref[0] = s

    spec = pl.BlockSpec((bn, bm, bc), lambda b, i, j: (b, i, j))
    dz, dbp = _call(
        g, kernel, label="conv2d bias/relu backward",
        keys=("block_n", "block_m", "block_cout"),
        out_shape=(jax.ShapeDtypeStruct(dy.shape, dy.dtype),
                   jax.ShapeDtypeStruct(((n // bn) * nm, 1, cp),
                                        jnp.float32)),
        grid=(n // bn, nm, cp // bc),
        in_specs=[spec, spec],
        out_specs=(spec, pl.BlockSpec((1, 1, bc),
                                      lambda b, i, j: (b * nm + i, 0, j))),
        name="hybridnet_conv2d_bias_relu_bwd",
    )(dy, y)
    return dz, jnp.sum(dbp, axis=(0, 1))


def _wgrad(a, dz, g: _Geom):
    """dW[t] = sum_n sum_r A[n, pa(t), r + off(t)]^T @ dz[n, r]."""
    n = a.shape[0]
    taps, bk, bc, bm, wbn, wbt = g.taps, g.bk, g.bc, g.bm, g.wbn, g.wbt
    nrow = g.mp // bm
    groups = n // wbn

    def kernel(a_ref, dz_ref, o_ref):
        t0 = pl.program_id(1) * wbt

        def one_tap(tt):
            t = t0 + tt
            kh = lax.div(t, g.kw)
            kw = lax.rem(t, g.kw)
            pa = lax.rem(kh, g.sh) * g.sw + lax.rem(kw, g.sw)
            off = lax.div(kh, g.sh) * g.wq + lax.div(kw, g.sw)

            def body(it, acc):
                i = lax.div(it, nrow)
                r0 = lax.rem(it, nrow) * bm
                xa = _shifted_rows(a_ref, (i, pa), r0 + off, bm,
                                   slice(None), g)
                d = dz_ref[i, pl.ds(r0, bm), :]
                xa, d = C.cpu_safe(xa, d, upcast=g.interpret)
                return acc + lax.dot_general(
                    xa, d, (((0,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32)

            acc = lax.fori_loop(0, wbn * nrow, body,
                                jnp.zeros((bk, bc), jnp.float32))
            o_ref[0, tt] = acc

        _for_each(wbt, one_tap)

    part = _call(
        g, kernel, label="conv2d wgrad",
        keys=("wgrad_block_n", "wgrad_block_taps", "block_cin", "block_cout"),
        hint=("the input block holds wgrad_block_n whole images: every "
              "stride phase and row"),
        out_shape=jax.ShapeDtypeStruct((groups, taps, g.kp, g.cp),
                                       jnp.float32),
        grid=(groups, taps // wbt, g.kp // bk, g.cp // bc),
        in_specs=[
            pl.BlockSpec((wbn, g.p, g.ra, bk), lambda b, t, i, j: (b, 0, 0, i)),
            pl.BlockSpec((wbn, g.mp, bc), lambda b, t, i, j: (b, 0, j)),
        ],
        out_specs=pl.BlockSpec((1, wbt, bk, bc),
                               lambda b, t, i, j: (b, t, i, j)),
        name="hybridnet_conv2d_wgrad",
    )(a, dz)
    return jnp.sum(part, axis=0)


def _dgrad_weights(wt, g: _Geom):
    """(1, T, Kp, Cp) -> (P, KHq*KWq, Cp, Kp): per output phase, the taps of
    that phase (zero where the padded tap lies outside the filter)."""
    w4 = wt.reshape(g.kh, g.kw, g.kp, g.cp)
    w4 = jnp.pad(w4, ((0, g.khq * g.sh - g.kh), (0, g.kwq * g.sw - g.kw),
                      (0, 0), (0, 0)))
    w6 = w4.reshape(g.khq, g.sh, g.kwq, g.sw, g.kp, g.cp)
    w6 = w6.transpose(1, 3, 0, 2, 5, 4)  # (sh, sw, khq, kwq, Cp, Kp)
    return w6.reshape(g.p, g.khq * g.kwq, g.cp, g.kp)


def _dgrad(dz, wt, g: _Geom, a_dtype):
    """dA[n, p, q] = sum_{(a,b)} dzp[n, q + c - (a*Wq + b)] @ Wd[p, (a,b)]."""
    c = g.dg_c
    dzp = jnp.pad(dz, ((0, 0), (c, g.dg_rz - c - g.mp), (0, 0)))[:, None]
    wd = _dgrad_weights(wt, g).astype(dz.dtype)
    da = _shifted_matmul(
        dzp, wd, None, out_rows=g.dg_rows, bm=g.dg_bm, bc=g.bk, bk=g.bc,
        bn=g.bn, tw=g.kwq, tsh=1, tsw=1, wq=g.wq, base=c, sign=-1,
        relu=False, out_dtype=a_dtype, g=g, kernel_name="conv2d dgrad",
        name="hybridnet_conv2d_dgrad")
    return da[:, :, :g.ra, :]


def _fwd_matmul(a, wt, bias, g: _Geom, out_dtype):
    out = _shifted_matmul(
        a, wt, bias, out_rows=g.mp, bm=g.bm, bc=g.bc, bk=g.bk, bn=g.bn,
        tw=g.kw, tsh=g.sh, tsw=g.sw, wq=g.wq, base=0, sign=1, relu=g.relu,
        out_dtype=out_dtype, g=g)
    return out[:, 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_core(a, wt, bias, g: _Geom):
    return _fwd_matmul(a, wt, bias if g.has_bias else None, g, a.dtype)


def _conv_core_fwd(a, wt, bias, g):
    y = _fwd_matmul(a, wt, bias if g.has_bias else None, g, a.dtype)
    return y, (a, wt, y)


def _conv_core_bwd(g, res, dy):
    a, wt, y = res
    dy = dy.astype(y.dtype)
    if g.relu or g.has_bias:
        dz, db = _epilogue_bwd(dy, y, g)
    else:
        dz, db = dy, jnp.zeros((g.cp,), jnp.float32)
    da = _dgrad(dz, wt, g, a.dtype)
    dw = _wgrad(a, dz, g)[None].astype(wt.dtype)
    return da, dw, db.reshape(1, g.cp)


_conv_core.defvjp(_conv_core_fwd, _conv_core_bwd)


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------
def conv2d(x, w, b=None, *, strides=(1, 1), padding="valid", activation=None,
           block_sizes=None, interpret=None, dilation_rate=(1, 1), groups=1,
           backend=None):
    """2-D convolution with fused bias + activation as Pallas kernels.

    Args:
      x: (N, H, W, Cin) input, float32 or bfloat16.
      w: (KH, KW, Cin, Cout) weights (HWIO).
      b: optional (Cout,) bias.
      strides: int or (sh, sw).
      padding: "valid", "same" (TF/Keras/lax SAME) or ((top, bottom),
        (left, right)).
      activation: None / "linear" (identity) or "relu", fused in the kernel.
      block_sizes: None (per-backend defaults, or a cached autotuned choice on
        GPU), a dict overriding some keys (see module docstring), or
        "autotune" (GPU: time candidates once per shape, cache to
        ``~/.cache/hybridnet/autotune.json``; CPU: defaults).
      interpret: None = True on CPU, False elsewhere.
      dilation_rate, groups: only 1 is supported; anything else raises a
        ValueError (use :func:`supports_conv2d` to decide on a fallback).
      backend: "cpu" / "gpu" / "tpu" (or "cuda"/"rocm"); None = the default
        JAX backend. Selects block-size defaults and compiler parameters; set
        it to cross-lower for a platform other than the one running.

    Returns:
      (N, Ho, Wo, Cout) in ``result_type(x, w)``; accumulation is float32.
      Differentiable (custom_vjp with Pallas dgrad / wgrad / bias kernels),
      and usable under ``jit`` and ``vmap``; see ``shard_batch`` for
      data-parallel use.

    Example:
        >>> x = jnp.ones((2, 9, 9, 3)); w = jnp.ones((3, 3, 3, 8))
        >>> conv2d(x, w, jnp.zeros(8), strides=2, padding="same",
        ...        activation="relu").shape
        (2, 5, 5, 8)
    """
    if x.ndim == 5 or w.ndim == 5:
        raise ValueError("conv2d takes a single (unbatched) problem; use "
                         "jax.vmap for a leading ensemble axis. Received: "
                         f"x.shape={x.shape}, w.shape={w.shape}")
    backend = C.resolve_backend(backend)
    _check_config(x.shape, w.shape, x.dtype, w.dtype, strides, padding,
                  dilation_rate, groups, activation, backend)
    if b is not None and tuple(b.shape) != (w.shape[3],):
        raise ValueError(f"Argument `b` of conv2d must have shape "
                         f"({w.shape[3]},). Received: b.shape={tuple(b.shape)}")
    strides = _pair("strides", strides)
    pads = _padding(padding, x.shape[1:3], w.shape[:2], strides)
    interpret = C.resolve_interpret(interpret, backend)
    dtype = jnp.result_type(x.dtype, w.dtype)
    x = x.astype(dtype)
    w = w.astype(dtype)
    bs = _block_sizes(block_sizes, x.shape, w.shape, dtype, strides, pads,
                      activation, b is not None, backend, interpret)
    if _stride_layout(bs, x.shape, w.shape, strides) == "depth":
        x, w = _space_to_depth(x, w, strides, pads)
        strides, pads = (1, 1), ((0, 0), (0, 0))
    g = _geometry(x.shape, w.shape, strides, pads, bs, activation == "relu",
                  b is not None, backend, interpret)
    a = _to_phases(x, g, pads)
    cout = w.shape[3]
    wt = jnp.pad(w, ((0, 0), (0, 0), (0, g.kp - w.shape[2]),
                     (0, g.cp - cout)))
    wt = wt.reshape(1, g.taps, g.kp, g.cp)
    if b is None:
        bias = jnp.zeros((1, g.cp), jnp.float32)
    else:
        bias = jnp.pad(b.astype(jnp.float32), (0, g.cp - cout)).reshape(1, g.cp)
    y = _conv_core(a, wt, bias, g)  # (N, Mp, Cp)
    y = y[:, :g.m].reshape(g.n, g.ho, g.wq, g.cp)[:, :, :g.wo, :cout]
    return y


def _block_sizes(block_sizes, x_shape, w_shape, dtype, strides, pads,
                 activation, has_bias, backend, interpret):
    defaults = _DEFAULTS[backend]
    key = dict(x=list(x_shape), w=list(w_shape), dtype=str(jnp.dtype(dtype)),
               strides=list(strides), pads=[list(p) for p in pads],
               activation=activation, bias=has_bias)
    if isinstance(block_sizes, str):
        if block_sizes != "autotune":
            raise ValueError("Argument `block_sizes` must be a dict, None or "
                             f"'autotune'. Received: block_sizes={block_sizes!r}")
        if backend == "cpu" or interpret:
            return dict(defaults)
        return _autotune(key, x_shape, w_shape, dtype, strides, pads,
                         activation, has_bias, backend)
    if block_sizes is None and backend != "cpu":
        cached = C.cached_block_sizes("conv2d", key, backend)
        if cached:
            return C.merge_block_sizes("conv2d", defaults, cached,
                                       choices=_CHOICES)
    return C.merge_block_sizes("conv2d", defaults, block_sizes,
                               choices=_CHOICES)


def triton_smem_estimate(block_sizes, dtype=jnp.float32) -> int:
    """Estimated Triton shared memory (bytes) of the largest conv2d kernel
    (forward, dgrad or wgrad) at int ``block_sizes`` for operands of
    ``dtype``: an estimate, not Triton's accounting (see
    ``_common.triton_smem_bytes``).

    Example:
        >>> triton_smem_estimate(default_conv2d_block_sizes("gpu"))
        57344
    """
    bm, bc, bk = (block_sizes[k] for k in ("block_m", "block_cout",
                                            "block_cin"))
    dots = [([(bm, bk)], [(bk, bc)], [(bm, bc)], dtype),  # forward
            ([(bm, bc)], [(bc, bk)], [(bm, bk)], dtype),  # dgrad
            ([(bm, bk)], [(bm, bc)], [(bk, bc)], dtype)]  # wgrad: A^T dz
    return C.triton_smem_bytes(dots, num_stages=block_sizes["num_stages"])


def _gpu_candidates(dtype=jnp.float32):
    """Autotune candidates whose shared-memory estimate fits a Hopper block
    (``_common.TRITON_SMEM_LIMIT_BYTES``); the defaults come first."""
    variants = [dict(block_m=bm, block_cout=bc, block_cin=bk, num_warps=nw)
                for bm, bc, bk, nw in ((128, 64, 32, 4), (64, 128, 32, 4),
                                       (128, 128, 32, 8), (32, 64, 64, 4),
                                       (128, 64, 64, 8))]
    return C.gpu_candidates(_DEFAULTS["gpu"], variants,
                            lambda bs: triton_smem_estimate(bs, dtype))


def _autotune(key, x_shape, w_shape, dtype, strides, pads, activation,
              has_bias, backend):
    # Runs eagerly even when conv2d is being traced under jit.
    with jax.ensure_compile_time_eval():
        kx, kw_ = jax.random.split(jax.random.PRNGKey(0))
        x = jax.random.normal(kx, x_shape, dtype)
        w = jax.random.normal(kw_, w_shape, dtype)
        b = jnp.zeros((w_shape[3],), dtype) if has_bias else None

        def run(bs):
            def loss(x, w, b):
                return jnp.sum(conv2d(x, w, b, strides=strides, padding=pads,
                                      activation=activation, block_sizes=bs,
                                      backend=backend).astype(jnp.float32))
            return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w, b)

        cands = (_gpu_candidates(dtype) if backend == "gpu"
                 else [dict(_DEFAULTS[backend])])
        return C.autotune("conv2d", key, cands, run, backend)
