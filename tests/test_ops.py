"""``hybridnet.ops`` against ``keras.ops`` on the JAX backend.

Every exported op is called with the same inputs as its Keras counterpart: outputs must
match in structure, shape, dtype and value (1e-5, fp32), and for float outputs the
gradient of ``sum(output * P)`` with respect to the first argument must match too.
Signatures (parameter names, kinds and defaults) must be Keras's, and the names Keras
has that we do not are exactly the documented omissions below.
"""
from __future__ import annotations

import inspect
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hybridnet import ops  # noqa: E402

import keras  # noqa: E402  (the test extra installs it; KERAS_BACKEND is set above)

assert keras.backend.backend() == "jax", keras.backend.backend()
kops = keras.ops

RTOL = ATOL = 1e-5

# keras.ops names deliberately left out, with the reason.
OMISSIONS = {
    "ctc_decode": "beam-search decoding is a large stateful algorithm; greedy decoding is an argmax",
    "rearrange": "an einops pattern parser; use reshape/transpose/einsum",
    "affine_transform": "image augmentation geometry; belongs with augmentation layers",
    "perspective_transform": "image augmentation geometry; belongs with augmentation layers",
    "elastic_transform": "random image augmentation; needs the random-number API",
    "gaussian_blur": "image augmentation filter; belongs with augmentation layers",
    "sobel_edges": "image filter not used by layers, guides or examples",
    "ssim": "image quality metric not used by layers, guides or examples",
    "extract_patches_3d": "3-D volume patches; extract_patches covers images",
}


def rand(seed, shape, lo=-1.0, hi=1.0, dtype="float32"):
    return np.asarray(np.random.default_rng(seed).uniform(lo, hi, size=shape), dtype)


def ints(seed, shape, lo=0, hi=5):
    return np.random.default_rng(seed).integers(lo, hi, size=shape).astype("int32")


X = rand(0, (3, 4))
Y = rand(1, (3, 4))
POS = rand(2, (3, 4), 0.1, 0.9)
I = ints(3, (3, 4), -3, 4)
J = ints(4, (3, 4), 1, 5)
B = X > 0
V = rand(5, (5,))
SQ = rand(6, (3, 3)) + 3 * np.eye(3, dtype="float32")
SPD = (SQ @ SQ.T).astype("float32")
IMG = rand(7, (2, 6, 8, 3), 0.0, 1.0)
SEQ = rand(8, (2, 16))
LOGITS = rand(9, (4, 5))
PROBS = np.asarray(jax.nn.softmax(LOGITS), "float32")
LABELS = ints(10, (4,), 0, 5)
X4 = rand(11, (2, 5, 3, 4))

# (name, args, kwargs). Names are looked up in keras.ops and hybridnet.ops (dotted for submodules).
CASES = []


def case(name, *args, **kwargs):
    CASES.append((name, args, kwargs))


_FLOAT_UNARY = ["arccos", "arcsin", "arcsinh", "arctan", "arctanh", "ceil", "cos", "cosh", "exp", "exp2",
                "expm1", "floor", "log", "log10", "log1p", "log2", "sin", "sinc", "sinh", "sqrt", "tan", "tanh",
                "angle", "abs", "absolute", "fabs", "cbrt", "conj", "conjugate", "copy", "deg2rad", "rad2deg",
                "negative", "square", "sign", "signbit", "isfinite", "isinf", "isnan", "isneginf", "isposinf",
                "isreal", "real", "imag", "reciprocal", "ravel", "trunc", "round", "logical_not", "i0",
                "erf", "erfc", "erfinv", "rsqrt", "fliplr", "flipud"]
for _n in _FLOAT_UNARY:
    case(_n, POS if _n in ("log", "log10", "log2", "sqrt", "rsqrt", "reciprocal") else X)
    if _n not in ("erf", "erfc", "erfinv", "rsqrt", "reciprocal"):
        case(_n, I if _n not in ("arccos", "arcsin", "arctanh", "log", "log10", "log2", "log1p", "sqrt") else J)
case("arccosh", POS + 1.0)
case("arccosh", J)
case("round", X * 10, decimals=1)
case("round", I * 13, decimals=-1)
case("bitwise_invert", I)
case("bitwise_not", I)
case("nan_to_num", np.array([np.nan, np.inf, -np.inf, 1.0], "float32"))
case("nan_to_num", np.array([np.nan, np.inf, -np.inf, 1.0], "float32"), nan=2.0, posinf=3.0, neginf=-3.0)

_BINARY = ["add", "subtract", "multiply", "divide", "true_divide", "power", "maximum", "minimum", "fmax", "fmin",
           "mod", "fmod", "floor_divide", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
           "logical_and", "logical_or", "logical_xor", "hypot", "heaviside", "nextafter", "arctan2", "logaddexp",
           "logaddexp2", "divide_no_nan", "kron", "inner", "outer", "vdot"]
for _n in _BINARY:
    case(_n, POS if _n in ("power",) else X, Y)
    case(_n, I, J)
    if _n not in ("kron", "inner", "outer", "vdot", "nextafter"):
        case(_n, I, 2.5)
        case(_n, X, 2)
for _n in ["bitwise_and", "bitwise_or", "bitwise_xor", "gcd", "lcm", "left_shift", "right_shift",
           "bitwise_left_shift", "bitwise_right_shift"]:
    case(_n, J, J[::-1])
case("ldexp", X, I)
case("divide_no_nan", X, np.where(B, Y, 0.0))
case("clip", X, -0.3, 0.4)
case("clip", I, -1, 2)
case("clip", B, 0, 1)
case("matmul", X, Y.T)
case("matmul", I, J.T)
case("matmul", I.astype("int8"), J.T.astype("int8"))
case("dot", X, Y.T)
case("dot", V, V)
case("tensordot", X, Y, axes=2)
case("tensordot", X, Y.T, axes=1)
case("einsum", "ij,kj->ik", X, Y)
case("einsum", "ij,ij->", I.astype("int8"), J.astype("int8"))
case("cross", rand(12, (4, 3)), rand(13, (4, 3)))

_REDUCTIONS = ["sum", "mean", "max", "min", "amax", "amin", "prod", "std", "var", "all", "any", "argmax",
               "argmin", "median", "ptp", "nanmax", "nanmin", "nanmean", "nanmedian", "nanprod", "nanstd",
               "nansum", "nanvar", "nanargmax", "nanargmin", "logsumexp", "count_nonzero"]
for _n in _REDUCTIONS:
    case(_n, X)
    case(_n, X, axis=1)
    case(_n, I, axis=0)
    if _n not in ("argmax", "argmin", "nanargmax", "nanargmin", "count_nonzero"):
        case(_n, X, axis=(0, 1), keepdims=True)
        if _n != "ptp":
            case(_n, B)
case("max", X, axis=0, initial=0.5)
case("min", X, axis=1, keepdims=True, initial=-0.5)
case("prod", I, dtype="float32")
case("argmax", np.array([-0.0, 0.0, -0.0], "float32"))
case("count_nonzero", I, axis=(0, 1))
case("cumsum", X)
case("cumsum", I, axis=1)
case("cumsum", B, axis=0, dtype="int32")
case("cumprod", X, axis=0)
case("nancumsum", X, axis=1)
case("nancumprod", X, axis=1)
case("average", X)
case("average", X, axis=1, weights=POS[0])
case("average", I, axis=0)
case("quantile", X, 0.3)
case("quantile", X, np.array([0.2, 0.7], "float32"), axis=1, keepdims=True)
case("quantile", I, 0.5, method="nearest")
case("percentile", X, 30.0, axis=0)
case("nanquantile", X, 0.3, axis=1)
case("nanpercentile", X, 30.0)
case("median", X, keepdims=True)
case("allclose", X, X + 1e-7)
case("isclose", X, Y, atol=0.5)
case("isin", I, J)
case("isin", I, J, invert=True)

# Creation.
case("ones", (2, 3))
case("ones", (2,), dtype="int32")
case("zeros", (2, 3))
case("full", (2, 3), 7)
case("full", (2,), 1.5, dtype="bfloat16")
case("ones_like", I)
case("ones_like", X, dtype="int32")
case("zeros_like", X)
case("full_like", I, 2.5)
case("full_like", X, 2, dtype="float32")
case("eye", 3)
case("eye", 3, 4, k=1, dtype="int32")
case("identity", 3)
case("tri", 3, 4, k=-1)
case("arange", 5)
case("arange", 1.0, 4)
case("arange", 0, 10, 3)
case("arange", 0, 1, 0.25, dtype="float32")
case("linspace", 0.0, 1.0, 5)
case("linspace", 0, 1, num=4, endpoint=False, retstep=True)
case("logspace", 0.0, 2.0, 5)
case("geomspace", 1.0, 100.0, 3)
case("array", [[1, 2], [3, 4]])
case("array", [1.5, 2.5], dtype="float32")
case("convert_to_tensor", [[1, 2], [3, 4]])
case("convert_to_tensor", X, dtype="bfloat16")
case("convert_to_tensor", 2.5)
case("cast", X, "int32")
case("cast", I, "float16")
case("saturate_cast", X * 1000, "int8")
case("saturate_cast", I * 100, "uint8")
for _n in ["bartlett", "blackman", "hamming", "hanning"]:
    case(_n, 7)
case("kaiser", 7, 5.0)
case("meshgrid", V[:3], V[:2])
case("meshgrid", V[:3], V[:2], indexing="ij")
case("vander", V)
case("vander", V, N=3, increasing=True)

# Shapes.
case("reshape", X, (4, 3))
case("reshape", X, (-1,))
case("reshape", X, 12)
case("transpose", X)
case("transpose", X4, (0, 2, 1, 3))
case("expand_dims", X, 1)
case("expand_dims", X, (0, 3))
case("squeeze", X[None, :, None])
case("squeeze", X[None, :, None], axis=2)
case("broadcast_to", V, (2, 5))
case("moveaxis", X4, 0, -1)
case("swapaxes", X4, 1, 3)
case("concatenate", [X, Y], axis=1)
case("concatenate", [X, I])
case("stack", [X, Y])
case("stack", [X, Y], axis=-1)
case("hstack", [X, Y])
case("vstack", [X, Y])
case("dstack", [X, Y])
case("append", X, Y)
case("append", X, Y, axis=0)
case("split", X4, 5, axis=1)
case("split", X, [1, 3], axis=1)
case("array_split", X, 3, axis=1)
case("hsplit", X, 2)
case("vsplit", X, 3)
case("dsplit", X4, 3)
case("tile", X, (2, 1))
case("repeat", X, 2)
case("repeat", X, 2, axis=1)
case("flip", X)
case("flip", X, axis=1)
case("roll", X, 2)
case("roll", X, -1, axis=1)
case("rot90", X)
case("rot90", X4, k=3, axes=(1, 2))
case("pad", X, ((1, 2), (0, 1)))
case("pad", X, 1, mode="reflect")
case("pad", X, ((1, 1), (2, 0)), constant_values=3.0)
case("diag", X)
case("diag", V, k=1)
case("diagflat", X[0])
case("diagonal", X4, offset=1, axis1=1, axis2=3)
case("trace", X)
case("trace", X4, offset=1, axis1=2, axis2=3)
case("tril", X)
case("triu", X, k=1)
case("diff", X)
case("diff", X, n=2, axis=0)
case("trapezoid", X)
case("trapezoid", X, x=V[:4], axis=-1)
case("unstack", X)
case("unstack", X, axis=1)
case("get_item", X, (slice(0, 2), 1))
case("slice", X, (1, 0), (2, -1))
case("slice_update", X, (1, 1), Y[:2, :2])
case("scatter", np.array([[0, 1], [2, 3]]), np.array([1.0, 2.0], "float32"), (3, 4))
case("scatter_update", X, np.array([[0, 1], [2, 3]]), np.array([5.0, 6.0], "float32"))
case("scatter_update", X, np.array([[0, 1], [0, 1]]), np.array([5.0, 6.0], "float32"), reduction="add")
case("scatter_update", X, np.array([[0, 1]]), np.array([5.0], "float32"), reduction="max")

# Indexing, sorting, searching.
case("where", B, X, Y)
case("where", B, X, 0.0)
case("where", B)
case("select", [B, ~B], [X, Y])
case("select", [X > 0.5], [X], default=-1.0)
case("take", X, np.array([0, 2]))
case("take", X, np.array([[0, 2]]), axis=1)
case("take_along_axis", X, np.argsort(X, axis=1), axis=1)
case("sort", X)
case("sort", X, axis=0)
case("argsort", X)
case("argsort", X, axis=0)
case("argpartition", V, 2)
case("searchsorted", np.sort(V), X)
case("searchsorted", np.sort(V), X, side="right")
case("digitize", X, np.array([-0.5, 0.0, 0.5], "float32"))
case("nonzero", I)
case("unravel_index", np.array([1, 5, 7]), (3, 4))
case("unique", I)
case("unique", I, return_counts=True, return_inverse=True)
case("bincount", J.ravel())
case("bincount", J, minlength=6)
case("bincount", J.ravel(), weights=X.ravel())
case("histogram", X.ravel())
case("histogram", X.ravel(), bins=4, range=(-1.0, 1.0))
case("corrcoef", X)
case("correlate", V, V[:3])
case("correlate", V, V[:3], mode="full")
case("top_k", X, 2)
case("in_top_k", LABELS, LOGITS, 2)
case("view", X, "int32")
case("shape", X4)
case("ndim", X4)
case("size", X4)
case("dtype", I)
case("is_tensor", X)
case("is_tensor", jnp.asarray(X))

# Math.
_SEG = np.array([0, 0, 1], "int32")
for _n in ["segment_sum", "segment_max", "segment_min", "segment_prod"]:
    case(_n, X, _SEG, num_segments=2)
    case(_n, X, _SEG, num_segments=3, sorted=True)
case("extract_sequences", SEQ, 4, 3)
case("cdist", X, Y[:2])
case("cdist", X4, X4[:, :, :2])
case("fft", (X, Y))
case("fft2", (X, Y))
case("ifft2", (X, Y))
case("rfft", X)
case("rfft", X, fft_length=6)
case("irfft", (X, Y))
case("irfft", (X, Y), fft_length=6)
case("stft", SEQ, 8, 4, 8)
case("stft", SEQ, 6, 2, 8, window="hamming", center=False)
case("stft", SEQ, 8, 4, 8, window=None)
_SPEC = tuple(np.asarray(a) for a in kops.stft(SEQ, 8, 2, 8))
case("istft", _SPEC, 8, 2, 8)
case("istft", _SPEC, 8, 2, 8, length=12)
case("istft", _SPEC, 8, 2, 8, window=None)
case("logdet", SPD)
case("view_as_complex", rand(14, (3, 2)))
case("view_as_real", np.asarray(X + 1j * Y, "complex64"))
case("polar", POS, X)

# Linear algebra.
case("cholesky", SPD)
case("cholesky", SPD, upper=True)
case("cholesky_inverse", np.linalg.cholesky(SPD).astype("float32"))
case("det", SQ)
case("inv", SQ)
case("eigh", SPD)
case("lu_factor", SQ)
case("norm", X)
case("norm", X, axis=1)
case("norm", X, ord="fro", keepdims=True)
case("norm", I, ord=1, axis=0)
case("qr", X)
case("qr", X, mode="complete")
case("solve", SQ, X[:, :3])
case("solve_triangular", np.tril(SQ), X[:, :3], lower=True)
case("svd", X, full_matrices=False)
case("svd", X, compute_uv=False)
case("lstsq", X, V[:3])
case("matrix_rank", X)
case("pinv", X)
case("slogdet", SQ)

# Activations.
for _n in ["relu", "relu6", "sigmoid", "sparse_sigmoid", "softplus", "softsign", "sparse_plus", "silu", "swish",
           "log_sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "selu", "hard_tanh", "tanh_shrink", "squareplus",
           "leaky_relu", "elu", "celu", "gelu", "soft_shrink", "hard_shrink", "softmax", "log_softmax",
           "sparsemax", "glu"]:
    case(_n, X * 4)
case("gelu", X * 4, approximate=False)
case("leaky_relu", X, negative_slope=0.1)
case("elu", X, alpha=0.5)
case("celu", X, alpha=0.5)
case("squareplus", X, b=2)
case("soft_shrink", X, threshold=0.2)
case("hard_shrink", X, threshold=0.2)
case("threshold", X, 0.1, -2.0)
case("softmax", X4, axis=1)
case("softmax", X4, axis=(1, 3))
case("log_softmax", X4, axis=(2, 3))
case("sparsemax", X4, axis=1)
case("glu", X4, axis=0)
case("relu", I)
case("nn.relu", X)

# Convolutions and pooling.
K2 = rand(20, (3, 3, 3, 4))
case("conv", IMG, K2)
case("conv", IMG, K2, strides=2, padding="same")
case("conv", IMG, K2, dilation_rate=2, padding="same")
case("conv", np.transpose(IMG, (0, 3, 1, 2)), K2, data_format="channels_first")
case("conv", rand(21, (2, 10, 4)), rand(22, (3, 4, 5)), strides=2)
case("conv", rand(23, (1, 5, 6, 4, 2)), rand(24, (2, 2, 2, 2, 3)), padding="same")
case("conv", rand(25, (2, 6, 6, 4)), rand(26, (3, 3, 2, 6)))
case("depthwise_conv", IMG, rand(27, (3, 3, 3, 2)))
case("depthwise_conv", IMG, rand(27, (3, 3, 3, 2)), strides=(1, 2), padding="same")
case("separable_conv", IMG, rand(28, (3, 3, 3, 2)), rand(29, (1, 1, 6, 4)))
case("conv_transpose", IMG, rand(30, (3, 3, 5, 3)))
case("conv_transpose", IMG, rand(30, (3, 3, 5, 3)), strides=2, padding="same")
case("conv_transpose", IMG, rand(30, (3, 3, 5, 3)), strides=2, output_padding=1)
case("conv_transpose", rand(31, (2, 7, 3)), rand(32, (4, 2, 3)), strides=3, padding="same", dilation_rate=1)
case("max_pool", IMG, 2, strides=2)
case("max_pool", IMG, (3, 3), strides=2, padding="same")
case("max_pool", rand(33, (2, 9, 3)), 3, strides=2)
case("average_pool", IMG, 2, strides=(2, 1))
case("average_pool", IMG, 3, strides=2, padding="same")
case("average_pool", np.transpose(IMG, (0, 3, 1, 2)), 2, strides=2, data_format="channels_first")
case("adaptive_average_pool", IMG, (4, 3))
case("adaptive_average_pool", rand(34, (2, 10, 3)), 4)
case("adaptive_max_pool", IMG, (4, 3))
case("adaptive_max_pool", np.transpose(IMG, (0, 3, 1, 2)), 3, data_format="channels_first")
case("adaptive_average_pool", rand(35, (1, 5, 7, 6, 2)), (2, 3, 4))
case("unfold", np.transpose(IMG, (0, 3, 1, 2)), 2)
case("unfold", np.transpose(IMG, (0, 3, 1, 2)), (2, 3), dilation=1, padding=1, stride=2)
case("fold", np.asarray(kops.unfold(np.transpose(IMG, (0, 3, 1, 2)), 2, stride=2)), (6, 8), 2, stride=2)
case("fold", rand(36, (2, 12, 42)), (5, 6), 2, padding=1, stride=1)
case("depth_to_space", rand(37, (2, 3, 4, 8)), 2)
case("depth_to_space", rand(37, (2, 8, 3, 4)), 2, data_format="channels_first")
case("space_to_depth", IMG[:, :, :, :], 2)
case("space_to_depth", rand(38, (2, 3, 4, 6)), 2, data_format="channels_first")

# Encodings, losses, normalisation.
case("one_hot", LABELS, 5)
case("one_hot", I, 4, axis=0, dtype="int32")
case("multi_hot", J, 6)
case("multi_hot", J[0], 6, dtype="int32")
case("categorical_crossentropy", PROBS, PROBS[::-1])
case("categorical_crossentropy", PROBS, LOGITS, from_logits=True)
case("categorical_crossentropy", PROBS.T, LOGITS.T, from_logits=True, axis=0)
case("sparse_categorical_crossentropy", LABELS, PROBS)
case("sparse_categorical_crossentropy", LABELS[:, None], LOGITS, from_logits=True)
case("binary_crossentropy", (POS > 0.5).astype("float32"), POS)
case("binary_crossentropy", POS, X, from_logits=True)
_CTC_T = np.array([[1, 2, 2, 0], [3, 1, 0, 0]], "int32")
case("ctc_loss", _CTC_T, rand(39, (2, 8, 5)), np.array([3, 2]), np.array([8, 6]))
case("ctc_loss", _CTC_T, rand(40, (2, 8, 5)), np.array([3, 2]), np.array([8, 6]), mask_index=4)
case("moments", X4, axes=(0, 1))
case("moments", X4, axes=[2], keepdims=True)
case("moments", X4.astype("float16"), axes=[0])
case("batch_normalization", X4, V[:4] * 0.1, POS[0], axis=-1)
case("batch_normalization", X4, V[:3] * 0.1, POS[0, :3], axis=2, offset=V[:3], scale=POS[1, :3], epsilon=0.01)
case("layer_normalization", X4)
case("layer_normalization", X4, gamma=POS[0], beta=V[:4], axis=-1, epsilon=1e-3)
case("layer_normalization", X4, gamma=rand(41, (3, 4)), beta=rand(42, (3, 4)), axis=(2, 3))
case("layer_normalization", X4, gamma=POS[0], rms_scaling=True)
case("rms_normalization", X4)
case("rms_normalization", X4, scale=POS[0], epsilon=1e-3)
case("rms_normalization", X4, axis=(2, 3))
case("normalize", X)
case("normalize", X, axis=0, order=1)
case("normalize", X4, axis=1, order=3)
case("psnr", POS, POS[::-1], 1.0)
_Q, _K, _V = rand(43, (2, 5, 4, 8)), rand(44, (2, 6, 2, 8)), rand(45, (2, 6, 2, 8))
case("dot_product_attention", _Q, _K, _V)
case("dot_product_attention", _Q, _K[:, :5], _V[:, :5], is_causal=True, scale=0.5)
case("dot_product_attention", _Q, _K, _V, bias=rand(46, (2, 4, 5, 6)), mask=rand(47, (2, 1, 5, 6)) > -0.5)

# Images.
case("image.resize", IMG, (3, 4))
case("image.resize", IMG, (9, 5), interpolation="bicubic", antialias=True)
case("image.resize", IMG[0], (4, 4), interpolation="nearest")
case("image.resize", IMG, (4, 4), crop_to_aspect_ratio=True)
case("image.resize", IMG, (4, 4), pad_to_aspect_ratio=True, fill_value=0.5)
case("image.resize", IMG, (6, 4), pad_to_aspect_ratio=True)
case("image.resize", np.transpose(IMG, (0, 3, 1, 2)), (4, 4), data_format="channels_first",
     crop_to_aspect_ratio=True)
case("image.rgb_to_grayscale", IMG)
case("image.rgb_to_grayscale", np.transpose(IMG, (0, 3, 1, 2)), data_format="channels_first")
case("image.rgb_to_hsv", IMG)
case("image.hsv_to_rgb", IMG)
case("image.hsv_to_rgb", np.transpose(IMG[0], (2, 0, 1)), data_format="channels_first")
case("image.pad_images", IMG, 1, 2, 0, 1)
case("image.pad_images", IMG[0], top_padding=1, left_padding=0, target_height=9, target_width=10)
case("image.crop_images", IMG, 1, 2, 0, 1)
case("image.crop_images", IMG, top_cropping=1, left_cropping=2, target_height=3, target_width=4)
case("image.extract_patches", IMG, 2)
case("image.extract_patches", IMG[0], (3, 2), strides=(1, 2), padding="same")
case("image.map_coordinates", X, np.stack([rand(48, (5,), 0, 2), rand(49, (5,), 0, 3)]), 1)
case("image.map_coordinates", X, np.stack([rand(48, (5,), -1, 3), rand(49, (5,), 0, 3)]), 0, fill_mode="nearest")
case("image.scale_and_translate", IMG, (2, 9, 7, 3), np.array([1.5, 0.9], "float32"),
     np.array([0.5, -0.2], "float32"), (1, 2), "bilinear")


def _lookup(module, name):
    for part in name.split("."):
        module = getattr(module, part)
    return module


def _case_id(c):
    name, args, kwargs = c
    return name


def _as_tree(out):
    return jax.tree_util.tree_map(lambda a: np.asarray(a), out, is_leaf=lambda a: a is None)


def assert_same(actual, expected, rtol=RTOL, atol=ATOL):
    a_leaves, a_tree = jax.tree_util.tree_flatten(_as_tree(actual))
    e_leaves, e_tree = jax.tree_util.tree_flatten(_as_tree(expected))
    assert a_tree == e_tree, f"structure {a_tree} != {e_tree}"
    for a, e in zip(a_leaves, e_leaves):
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a.astype(e.dtype), e, rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("name,args,kwargs", CASES, ids=[_case_id(c) for c in CASES])
def test_forward_matches_keras(name, args, kwargs):
    expected = _lookup(kops, name)(*args, **kwargs)
    actual = _lookup(ops, name)(*args, **kwargs)
    assert_same(actual, expected)


def _is_float(a):
    return hasattr(a, "dtype") and np.dtype(a.dtype).kind == "f"


def _objective(fn, args, kwargs, proj_seed=0):
    def f(x0):
        out = fn(x0, *args[1:], **kwargs)
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(out) if _is_float(leaf)]
        total = 0.0
        for i, leaf in enumerate(leaves):
            p = np.random.default_rng(proj_seed + i).normal(size=np.shape(leaf)).astype(np.float32)
            total = total + jnp.sum(jnp.asarray(leaf, jnp.float32) * p)
        return total
    return f


_NO_GRAD = {"ones", "zeros", "full", "eye", "identity", "tri", "arange", "linspace", "logspace", "geomspace",
            "bartlett", "blackman", "hamming", "hanning", "kaiser", "shape", "ndim", "size", "dtype", "is_tensor",
            "nonzero", "unique", "bincount", "histogram", "view", "array", "convert_to_tensor", "saturate_cast",
            "cast", "unravel_index", "sort", "median", "nanmedian", "quantile", "percentile", "nanquantile",
            "nanpercentile", "lu_factor", "eigh", "qr", "svd", "argpartition",
            "nextafter", "segment_prod"}  # no JAX derivative (nextafter, segment_prod) or not needed

def _grad_cases():
    # The first float case of each differentiable op.
    seen, out = set(), []
    for c in CASES:
        name, args, _ = c
        if name in seen or name.split(".")[-1] in _NO_GRAD or not args or not isinstance(args[0], np.ndarray) \
                or args[0].dtype != np.float32:
            continue
        seen.add(name)
        out.append(c)
    return out


def _has_float_output(case) -> bool:
    name, args, kwargs = case
    try:
        out = jax.eval_shape(lambda: _lookup(ops, name)(*args, **kwargs))
    except Exception:  # noqa: BLE001 - an op that cannot trace abstractly is checked eagerly
        out = _lookup(ops, name)(*args, **kwargs)
    return any(_is_float(a) for a in jax.tree_util.tree_leaves(out))


GRAD_CASES = [c for c in _grad_cases() if _has_float_output(c)]


@pytest.mark.parametrize("name,args,kwargs", GRAD_CASES, ids=[_case_id(c) for c in GRAD_CASES])
def test_gradient_matches_keras(name, args, kwargs):
    x0 = jnp.asarray(args[0])
    expected_fn = _objective(_lookup(kops, name), args, kwargs)
    expected = jax.jit(jax.grad(expected_fn))(x0)
    actual = jax.jit(jax.grad(_objective(_lookup(ops, name), args, kwargs)))(x0)
    assert_same(actual, expected, rtol=1e-4, atol=1e-5)


def _public(module):
    return {n for n in dir(module) if not n.startswith("_") and not inspect.ismodule(getattr(module, n))}


def test_covers_keras_ops_except_documented_omissions():
    missing = set()
    for sub in ("", "nn", "numpy", "linalg", "image"):
        theirs, ours = (_lookup(kops, sub), _lookup(ops, sub)) if sub else (kops, ops)
        missing |= {n for n in _public(theirs) if not hasattr(ours, n)}
    assert sorted(missing) == sorted(OMISSIONS)


def test_every_op_has_a_value_case():
    tested = {name.split(".")[-1] for name, _, _ in CASES}
    untested = {n for n in _public(kops) | _public(kops.image) if hasattr(ops, n) or hasattr(ops.image, n)}
    untested -= tested | {"cond", "switch", "while_loop", "fori_loop", "scan", "associative_scan", "map",
                          "vectorized_map", "stop_gradient", "custom_gradient", "jvp", "convert_to_numpy",
                          "vectorize", "eig", "empty", "empty_like"}
    assert not sorted(untested)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_match_keras():
    wrong = []
    for sub in ("", "nn", "numpy", "linalg", "image"):
        theirs, ours = (_lookup(kops, sub), _lookup(ops, sub)) if sub else (kops, ops)
        for n in sorted(_public(theirs)):
            if hasattr(ours, n) and callable(getattr(theirs, n)):
                if _params(getattr(ours, n)) != _params(getattr(theirs, n)):
                    wrong.append(f"{sub}.{n}: {inspect.signature(getattr(ours, n))} != "
                                 f"{inspect.signature(getattr(theirs, n))}")
    assert not wrong, "\n".join(wrong)


def test_namespaces():
    assert ops.relu is ops.nn.relu
    assert ops.matmul is ops.numpy.matmul
    assert ops.tanh is ops.numpy.tanh
    assert ops.norm is ops.linalg.norm
    assert callable(ops.image.resize)
    assert ops.segment_sum is ops.math.segment_sum
    assert ops.scan is ops.core.scan


def test_control_flow_matches_keras():
    x = jnp.asarray(X)
    for mod in (kops, ops):
        assert float(mod.cond(x.sum() > 0, lambda: 1.0, lambda: -1.0)) == float(
            kops.cond(x.sum() > 0, lambda: 1.0, lambda: -1.0))
    assert_same(ops.switch(1, [lambda a: a + 1, lambda a: a * 2], x), kops.switch(1, [lambda a: a + 1,
                                                                                      lambda a: a * 2], x))
    assert_same(ops.while_loop(lambda i, s: i < 5, lambda i, s: (i + 1, s * 2), (0, x)),
                kops.while_loop(lambda i, s: i < 5, lambda i, s: (i + 1, s * 2), (0, x)))
    assert_same(ops.while_loop(lambda s: jnp.sum(s) < 100.0, lambda s: s + 1.0, x, maximum_iterations=3),
                kops.while_loop(lambda s: jnp.sum(s) < 100.0, lambda s: s + 1.0, x, maximum_iterations=3))
    assert_same(ops.fori_loop(0, 4, lambda i, s: s + i, x), kops.fori_loop(0, 4, lambda i, s: s + i, x))

    def step(c, a):
        return c + a, c * a
    assert_same(ops.scan(step, x[0], x), kops.scan(step, x[0], x))
    assert_same(ops.scan(step, x[0], x, reverse=True, unroll=2), kops.scan(step, x[0], x, reverse=True, unroll=2))
    assert_same(ops.associative_scan(jnp.add, x, axis=1), kops.associative_scan(jnp.add, x, axis=1))
    assert_same(ops.map(jnp.sum, x), kops.map(jnp.sum, x))
    assert_same(ops.vectorized_map(jnp.sum, x), kops.vectorized_map(jnp.sum, x))
    assert_same(ops.vectorize(lambda a, b: a * b)(x, 2.0), kops.vectorize(lambda a, b: a * b)(x, 2.0))
    assert_same(ops.jvp(jnp.sin, (x,), (x,)), kops.jvp(jnp.sin, (x,), (x,)))
    np.testing.assert_array_equal(ops.convert_to_numpy(x), kops.convert_to_numpy(x))
    assert isinstance(ops.convert_to_numpy(x), np.ndarray)
    with pytest.raises(ValueError, match="scan.*unroll"):
        ops.scan(step, x[0], x, unroll=0)


def test_gradient_utilities():
    g = jax.grad(lambda a: jnp.sum(ops.stop_gradient(a) * a))(jnp.asarray(X))
    np.testing.assert_allclose(g, X)

    @ops.custom_gradient
    def clipped(a):
        def grad(upstream):
            return jnp.clip(upstream, -0.1, 0.1)
        return a * 3.0, grad
    np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(clipped(a)))(jnp.asarray(X)), np.full_like(X, 0.1))


def test_pooling_strides_default_to_pool_size():
    # keras.ops.max_pool/average_pool with strides=None fail on Keras's JAX backend; ours follow the
    # documented default (strides = pool_size).
    assert_same(ops.max_pool(IMG, 2), kops.max_pool(IMG, 2, strides=2))
    assert_same(ops.average_pool(IMG, (2, 3)), kops.average_pool(IMG, (2, 3), strides=(2, 3)))


def test_empty_shapes_and_dtypes():
    # The values of empty tensors are unspecified; compare everything else.
    pairs = [(ops.empty((2, 3)), kops.empty((2, 3))), (ops.empty((2,), "int32"), kops.empty((2,), "int32")),
             (ops.empty_like(I), kops.empty_like(I)), (ops.empty_like(X, "int32"), kops.empty_like(X, "int32"))]
    for ours, theirs in pairs:
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)


def test_eig_reconstructs():
    w, v = ops.eig(SQ)
    np.testing.assert_allclose(np.asarray(v @ jnp.diag(w) @ jnp.linalg.inv(v)).real, SQ, atol=1e-4)


class _Holder:
    """A stand-in for a layer variable: an object exposing ``__jax_array__``."""

    def __init__(self, value):
        self.value = jnp.asarray(value)

    def __jax_array__(self):
        return self.value


def test_inputs_of_every_kind():
    for x in (X, jnp.asarray(X), X.tolist(), _Holder(X)):
        assert_same(ops.matmul(x, Y.T), kops.matmul(X, Y.T))
        assert_same(ops.mean(x, axis=0), kops.mean(X, axis=0))
        assert_same(ops.relu(x), kops.relu(X))
        assert_same(ops.conv(ops.reshape(x, (1, 3, 4, 1)), np.ones((2, 2, 1, 1), "float32")),
                    kops.conv(X.reshape(1, 3, 4, 1), np.ones((2, 2, 1, 1), "float32")))
    assert_same(ops.add(2, 3.5), kops.add(2, 3.5))
    assert_same(ops.mean([1, 2, 4]), kops.mean([1, 2, 4]))
    assert_same(ops.sqrt(4), kops.sqrt(4))
    assert_same(ops.multiply(jnp.ones(2, "bfloat16"), 2.0), kops.multiply(jnp.ones(2, "bfloat16"), 2.0))


def test_jit_and_vmap():
    f = jax.jit(lambda a, b: ops.softmax(ops.matmul(a, b)) + ops.mean(ops.conv(a[None, :, :, None],
                                                                                 jnp.ones((2, 2, 1, 1))), axis=None))
    np.testing.assert_allclose(f(X, Y.T), jax.nn.softmax(X @ Y.T) + jnp.mean(
        jax.lax.conv(X[None, None], jnp.ones((1, 1, 2, 2)), (1, 1), "VALID")), rtol=1e-5)
    v = jax.vmap(lambda a: ops.logsumexp(ops.one_hot(ops.argmax(a), 4) + a))(X)
    assert_same(v, jnp.stack([kops.logsumexp(kops.one_hot(kops.argmax(r), 4) + r) for r in X]))


@pytest.mark.parametrize("call,match", [
    (lambda: ops.conv(IMG, rand(0, (3, 3, 2, 4))), r"conv: .*in_channels.*Received: inputs.shape=\(2, 6, 8, 3\)"),
    (lambda: ops.conv(IMG, K2, padding="full"), r"conv: `padding`.*Received: padding='full'"),
    (lambda: ops.where(B, X), r"where: .*Received"),
    (lambda: ops.segment_sum(X, _SEG), r"segment_sum: .*num_segments.*Received: num_segments=None"),
    (lambda: ops.reshape(X, (-1, -1)), r"reshape: .*Received: newshape=\(-1, -1\)"),
    (lambda: ops.binary_crossentropy(X, Y[:2]), r"binary_crossentropy: .*Received: target.shape=\(3, 4\)"),
    (lambda: ops.image.resize(X, (2, 2)), r"resize: .*Received: images.shape=\(3, 4\)"),
    (lambda: ops.inv(X), r"inv: .*square.*Received: x.shape=\(3, 4\)"),
    (lambda: ops.one_hot(LABELS, 5, sparse=True), r"one_hot: .*Received: sparse=True"),
])
def test_errors_name_op_argument_and_value(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
