"""The cost model: FLOPs, memory, collective bytes and step time of a Plan.

Pure arithmetic on shapes (:class:`~hybridnet.planner.graph_info.LayerInfo`) and a
Plan; nothing here touches a device, so a model can be costed for a cluster this
machine does not have.

The model, per training step of a global batch ``B`` (all sizes per device):

* **Compute.** Forward FLOPs per sample come from :func:`layer_flops`; training is
  3x forward (backward = 2x forward). A stage's ``n_s`` devices share its work
  evenly (data-parallel layers split the batch over every stage axis; tensor-parallel
  layers split the batch over ``data`` and the weights over ``model``), so
  ``compute_s = 3 * FLOPs_s * B / (n_s * peak * efficiency)``; a batch (microbatch)
  that does not divide over the stage's devices runs whole on each: ``n_s = 1``.
* **Collectives** use a latency-bandwidth model: ``time = count * latency *
  ceil(log2(group)) + bytes / bandwidth`` where ``bytes`` is what one device sends
  with ring algorithms: all-reduce ``2(n-1)/n * S``, all-gather and reduce-scatter
  ``(n-1)/n * S``, all-to-all ``(n-1)/n**2 * S`` (``S`` the whole tensor of the group).
  A group whose devices span more than ``devices_per_node`` (mesh axes are laid out
  row-major, the last axis contiguous) uses the inter-node bandwidth.

  - Gradients: every trainable weight is all-reduced once per step over the devices
    that hold a replica of it (data-parallel layers: the whole stage; tensor-parallel
    layers: the ``data`` group, on their 1/m shard).
  - Activations, tracked by the layout of the tensor between layers: ``B`` (batch
    split over all stage axes, data-parallel layers), ``R`` (batch split over
    ``data``, replicated over ``model``: input of column / out_channels / vocab /
    hidden layers, output of row / vocab / hidden layers) and ``F`` (batch over
    ``data``, last dimension over ``model``: output of column / out_channels layers,
    input of row layers). A Dense column -> row pair costs one all-reduce of the
    activation in the forward (after row) and one in the backward (before column);
    going from data-parallel layers into tensor-parallel ones all-gathers the batch
    over ``model`` (and reduce-scatters its gradient) -- Krizhevsky's "one weird
    trick": convolutions data parallel, fully connected layers model parallel. An
    LSTM split over ``hidden`` all-gathers ``h`` every timestep (and all-reduces its
    gradient in the backward). Weightless layers keep their input's layout (layers
    that mix the last dimension, e.g. Flatten, first gather an ``F`` input).
    Activation collectives run once per microbatch.
  - Pipelines send each stage's output forward and its gradient back, per microbatch.

* **Step time.** ``t_s = compute_s + activation_comm_s + p2p_s`` per stage; with
  ``p`` stages and ``m`` microbatches (GPipe or 1F1B) the bubble is
  ``(p-1)/(m+p-1)`` and ``step = max_s t_s / (1 - bubble) + max_s grad_comm_s``
  (gradient all-reduces are not assumed to overlap the backward: conservative).
* **Memory per device.** Parameters (sharded as their PartitionSpec says) + gradients
  (sharded like the parameters) + ``optimizer_slots`` copies for trainable weights +
  each layer's output kept for the backward, divided by the batch split (and by
  ``model`` for ``F`` outputs), for the microbatches in flight (GPipe: all of them,
  1F1B: at most ``p - stage``).

The graph is costed as a chain in execution order (each layer's input is the
previous layer's output), which is exact for Sequential models and an
approximation for branching graphs.

Example:
    >>> from hybridnet.planner import cost
    >>> cost.layer_flops(info)                     # forward FLOPs per sample
    >>> cost.estimate(plan, infos, batch_size=128, device_kind="h100")
    >>> plan.estimates.step_time_s
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Iterable, Sequence

from hybridnet.planner.feasibility import batch_split
from hybridnet.planner.graph_info import LayerInfo
from hybridnet.planner.plan import Estimates, Plan

GB = 1e9
GiB = 2 ** 30


# ---------------------------------------------------------------------------- devices

@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """What the cost model knows of one accelerator.

    Attributes:
        name: a label.
        peak_flops_fp32: dense FLOP/s for float32 inputs at XLA's default matmul
            precision (TF32 tensor cores on NVIDIA, one bf16 MXU pass on TPU).
        peak_flops_bf16: dense bf16 FLOP/s.
        hbm_bytes: memory per device.
        intra_bandwidth: bytes/s one device sends per direction inside a node / ICI domain.
        inter_bandwidth: bytes/s one device sends per direction across nodes.
        devices_per_node: devices reachable over the intra-node link.
        latency_s: start-up time of one collective step.
        efficiency: fraction of peak reached by real layers (model FLOPs utilisation).
    """
    name: str
    peak_flops_fp32: float
    peak_flops_bf16: float
    hbm_bytes: float
    intra_bandwidth: float
    inter_bandwidth: float
    devices_per_node: int
    latency_s: float
    efficiency: float = 0.5

    def peak_flops(self, dtype_bytes: int = 4) -> float:
        return self.peak_flops_bf16 if dtype_bytes <= 2 else self.peak_flops_fp32


DEVICES: dict[str, DeviceSpec] = {
    # A stand-in for the simulated CPU devices of tests and demos (they share one
    # host): a few AVX-512 cores each (~16 FLOP/cycle/core x 2 FMA x 3 GHz x 4 cores
    # ~ 0.4 TFLOP/s, no native bf16 speed-up), memory copies at ~20 GB/s, 10 GbE
    # between hosts. Memory is generous so CPU runs are not refused.
    "cpu": DeviceSpec("cpu", 4e11, 4e11, 64 * GiB, 20 * GB, 1.25 * GB, 8, 20e-6, 0.3),
    # NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16 (1,979 with sparsity),
    # 495 TF32 dense (67 plain FP32), 80 GB HBM3, NVLink 4 900 GB/s total = 450 GB/s
    # per direction, 8 GPUs per HGX node, one 400 Gb/s NDR InfiniBand NIC per GPU
    # (50 GB/s). ~10 us per NCCL collective step.
    "h100": DeviceSpec("NVIDIA H100 SXM", 494.7e12, 989.4e12, 80 * GB, 450 * GB, 50 * GB, 8,
                       10e-6),
    # NVIDIA H200 SXM datasheet: H100's compute (989 TFLOP/s BF16 dense, 495 TF32),
    # 141 GB HBM3e (4.8 TB/s), NVLink 900 GB/s (450 per direction), NDR 400 Gb/s.
    "h200": DeviceSpec("NVIDIA H200 SXM", 494.7e12, 989.4e12, 141 * GB, 450 * GB, 50 * GB, 8,
                       10e-6),
    # NVIDIA A100 SXM4 80GB datasheet: 312 TFLOP/s BF16 dense, 156 TF32 dense (19.5
    # plain FP32), 80 GB HBM2e, NVLink 3 600 GB/s total = 300 per direction, HDR
    # InfiniBand 200 Gb/s per GPU (25 GB/s).
    "a100": DeviceSpec("NVIDIA A100 SXM 80GB", 156e12, 312e12, 80 * GB, 300 * GB, 25 * GB, 8,
                       10e-6),
    # Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip, 16 GB HBM2 (819 GB/s), ICI
    # 400 GB/s bidirectional per chip over 4 ports (all-reduce bandwidth 51.2 TB/s per
    # 256-chip pod = 200 GB/s per chip; ~100 GB/s per direction along one mesh axis),
    # pods of 256 chips on ICI, data-center network 6.4 Tbps per pod (~3 GB/s per chip).
    # fp32 matmuls at default precision take one bf16 MXU pass.
    "v5e": DeviceSpec("TPU v5e", 197e12, 197e12, 16 * GB, 100 * GB, 3.1 * GB, 256, 5e-6),
    # Cloud TPU v4 docs: 275 TFLOP/s bf16 per chip, 32 GiB HBM2 (1,200 GB/s), 4096-chip
    # pods in a 3D torus, all-reduce bandwidth 1.1 PB/s per pod (~270 GB/s per chip;
    # ~135 GB/s per direction along one axis); DCN assumed ~3 GB/s per chip.
    "v4": DeviceSpec("TPU v4", 275e12, 275e12, 32 * GiB, 135 * GB, 3.1 * GB, 4096, 5e-6),
}


def get_device(device_kind) -> DeviceSpec:
    """The :class:`DeviceSpec` of a kind name ("h100", ...) or a DeviceSpec itself.

    Example:
        >>> get_device("h100").hbm_bytes
        80000000000.0
    """
    if isinstance(device_kind, DeviceSpec):
        return device_kind
    key = str(device_kind or "cpu").lower().replace(" ", "").replace("-", "")
    if key in DEVICES:
        return DEVICES[key]
    for kind in DEVICES:  # e.g. "NVIDIA H100 80GB HBM3", "TPU v5 lite" -> v5e
        if kind in key:
            return DEVICES[kind]
    if "v5lite" in key or "tpu" in key:  # "TPU v5 lite"; newer TPUs: a conservative stand-in
        return DEVICES["v5e"]
    if key in ("gpu", "cuda", "rocm") or "nvidia" in key:
        return DEVICES["h100"]
    raise ValueError(f"Unknown device kind for the cost model. Expected one of "
                     f"{sorted(DEVICES)} (or a hybridnet.planner.cost.DeviceSpec). "
                     f"Received: device_kind={device_kind!r}")


def hbm_bytes(device_kind) -> float:
    """Memory per device of ``device_kind`` in bytes."""
    return get_device(device_kind).hbm_bytes


def memory_limit(device_kind, limit: float | None = None) -> float:
    """``limit`` if given, else the memory of ``device_kind``."""
    return float(limit) if limit is not None else hbm_bytes(device_kind)


# ------------------------------------------------------------------------------ FLOPs

def _prod(dims: Iterable) -> int:
    out = 1
    for d in dims:
        out *= 1 if d is None else int(d)
    return out


def _per_sample(shape) -> int:
    """Elements per sample of a batch-first shape (unknown dims count as 1)."""
    return _prod(tuple(shape)[1:]) if shape else 1


ACTIVATION_FLOPS = {"linear": 0, None: 0, "relu": 1, "relu6": 2, "leaky_relu": 2, "elu": 4,
                    "selu": 5, "sigmoid": 4, "hard_sigmoid": 3, "tanh": 4, "softplus": 4,
                    "softsign": 3, "swish": 5, "silu": 5, "gelu": 8, "softmax": 5,
                    "log_softmax": 5, "exponential": 1}

# Pointwise work of one LSTM step per unit: 4 bias adds, 3 sigmoids and 2 tanh
# (~4 FLOPs each), c = f*c + i*g (3) and h = o*tanh(c) (1).
LSTM_POINTWISE_FLOPS_PER_UNIT = 28

# Weightless layers, FLOPs per output element.
ELEMENTWISE_FLOPS = {"Dropout": 1, "SpatialDropout2D": 1, "GaussianNoise": 1,
                     "BatchNormalization": 5, "LayerNormalization": 8, "ReLU": 1,
                     "Softmax": 5, "LeakyReLU": 2, "Flatten": 0, "Reshape": 0,
                     "ZeroPadding2D": 0, "Concatenate": 0, "InputLayer": 0, "Permute": 0,
                     "RepeatVector": 0, "Cropping2D": 0, "UpSampling2D": 0}


def _activation_flops(activation) -> int:
    if isinstance(activation, dict):
        activation = activation.get("class_name") or activation.get("config", {}).get("name")
    return ACTIVATION_FLOPS.get(activation, 2)


def _lstm_flops(steps: int, features: int, units: int, bias: bool) -> float:
    """``2*T*4U*(D+U)`` matmul FLOPs + pointwise gate work, per sample."""
    return (2.0 * steps * 4 * units * (features + units)
            + steps * units * (LSTM_POINTWISE_FLOPS_PER_UNIT - (0 if bias else 4)))


def _forward_flops(info: LayerInfo) -> float:
    kind, cfg = info.kind, info.config or {}
    in_shape = tuple(info.input_shapes[0]) if info.input_shapes else ()
    out_shape = tuple(info.output_shapes[0]) if info.output_shapes else ()
    out = _per_sample(out_shape)
    w = info.weights

    if kind == "Dense":
        d_in = w["kernel"].shape[0] if "kernel" in w else int(in_shape[-1])
        units = w["kernel"].shape[1] if "kernel" in w else int(cfg["units"])
        positions = _prod(in_shape[1:-1])
        per = 2.0 * d_in * units + (units if "bias" in w else 0) + units * _activation_flops(
            cfg.get("activation"))
        return positions * per
    if kind in ("Conv2D", "Conv1D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D",
                "Conv2DTranspose") and "kernel" in w:
        k = w["kernel"].shape  # (*window, c_in, c_out)
        c_out = k[-1]
        positions = _prod(out_shape[1:-1])
        if kind == "Conv2DTranspose":  # kernel (kh, kw, out, in): every input position
            positions = _prod(in_shape[1:-1])
        macs = _prod(k)
        per_out = (c_out if "bias" in w else 0) + c_out * _activation_flops(cfg.get("activation"))
        return positions * (2.0 * macs + per_out)
    if kind in ("LSTM", "Bidirectional"):
        steps = int(in_shape[1]) if len(in_shape) > 2 and in_shape[1] is not None else 1
        total = 0.0
        for prefix in (("forward_", "backward_") if kind == "Bidirectional" else ("",)):
            kernel, rec = w.get(prefix + "kernel"), w.get(prefix + "recurrent_kernel")
            if kernel is None or rec is None:
                continue
            total += _lstm_flops(steps, kernel.shape[0], rec.shape[0], prefix + "bias" in w)
        if total or kind == "LSTM":
            return total
    if kind == "Embedding":
        return float(out)  # a gather: one element moved per output element
    if kind == "Attention":
        q = tuple(info.input_shapes[0])
        v = tuple(info.input_shapes[1]) if len(info.input_shapes) > 1 else q
        k = tuple(info.input_shapes[2]) if len(info.input_shapes) > 2 else v
        tq, tv = _prod(q[1:-1]), _prod(k[1:-1])
        d, dv = _prod(q[-1:]), _prod(v[-1:])
        scores = 2.0 * tq * tv * d if cfg.get("score_mode", "dot") == "dot" else 6.0 * tq * tv * d
        return scores + 2.0 * tq * tv * dv + 5.0 * tq * tv + (
            tq * tv if cfg.get("use_scale") else 0)
    if kind in ("MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D"):
        return float(out * _prod(cfg.get("pool_size") or (2, 2)))
    if kind.startswith("Global") and "Pooling" in kind:
        return float(_per_sample(in_shape))
    if kind == "Activation":
        return float(out * _activation_flops(cfg.get("activation")))
    if kind in ("Add", "Multiply", "Subtract", "Maximum", "Minimum"):
        return float(out * max(len(info.input_shapes) - 1, 1))
    if kind == "Average":
        return float(out * len(info.input_shapes))
    if kind in ELEMENTWISE_FLOPS:
        return float(out * ELEMENTWISE_FLOPS[kind])
    # Generic fallback: a multiply-add per trainable weight per output position.
    params = sum(wi.size for wi in w.values() if wi.trainable)
    if params:
        return 2.0 * params * _prod(out_shape[1:-1])
    return float(out)


def layer_flops(info: LayerInfo) -> float:
    """Forward FLOPs per sample of one layer (all its calls, for shared layers).

    Dense ``2*D*U`` per position (+ bias and activation per output), Conv2D
    ``2*kh*kw*cin*cout*Hout*Wout`` (+ bias and activation per output), LSTM
    ``2*T*4U*(D+U) + T*U*LSTM_POINTWISE_FLOPS_PER_UNIT``, Bidirectional both directions,
    Attention ``2*Tq*Tv*(d + dv)`` + softmax, pooling ``pool_size`` per output,
    normalisation/activation a few FLOPs per element, other weighted layers
    ``2 * weights * output positions``. Training costs 3x (see :func:`training_flops`).

    Example:
        >>> layer_flops(model.layer_infos()[0])
    """
    return _forward_flops(info) * max(int(info.calls or 1), 1)


def training_flops(info: LayerInfo) -> float:
    """Forward + backward FLOPs per sample (backward = 2x forward)."""
    return 3.0 * layer_flops(info)


# ------------------------------------------------------------------------ collectives

@dataclasses.dataclass
class Comm:
    """One kind of collective a layer causes in a training step.

    ``bytes``: what one device sends per step; ``count``: collectives per step (each
    pays the latency); ``axes``: the mesh axes of the group; ``phase``: "grad"
    (once per step), "act" (per microbatch, on the critical path) or "p2p".
    """
    what: str
    bytes: float
    count: int
    axes: tuple
    phase: str = "act"


def axes_size(axes: Sequence[str], mesh_axes: dict) -> int:
    return _prod(mesh_axes.get(a, 1) for a in axes)


def axes_span(axes: Sequence[str], mesh_axes: dict) -> int:
    """How many consecutive device ids a group over ``axes`` spans (row-major mesh)."""
    names = list(mesh_axes)
    idx = [names.index(a) for a in axes if a in names and mesh_axes[a] > 1]
    if not idx:
        return 1
    return _prod(mesh_axes[a] for a in names[min(idx):])


def comm_time(comm: Comm, mesh_axes: dict, device: DeviceSpec) -> float:
    """Latency-bandwidth time of ``comm`` on ``device`` links."""
    group = 2 if comm.phase == "p2p" else axes_size(comm.axes, mesh_axes)
    if group <= 1 or comm.bytes <= 0:
        return 0.0
    span = axes_span(comm.axes, mesh_axes)
    bandwidth = device.intra_bandwidth if span <= device.devices_per_node else (
        device.inter_bandwidth)
    steps = 1 if comm.phase == "p2p" else math.ceil(math.log2(group))
    return comm.count * device.latency_s * steps + comm.bytes / bandwidth


# ------------------------------------------------------------------------ layouts

B, R, F = "B", "R", "F"
LAYOUT_NAMES = {B: "batch over all axes", R: "batch over data, replicated over model",
                F: "batch over data, features over model"}

# Tensor-parallel modes: (input layout, output layout, input gradient is a partial sum).
MODE_LAYOUTS = {"column": (R, F, True), "out_channels": (R, F, True), "row": (F, R, False),
                "vocab": (R, R, False), "hidden": (R, R, True)}
# Weightless layers that act per channel, so a channel-sharded (F) input stays F.
CHANNEL_PRESERVING = {"Activation", "Dropout", "SpatialDropout2D", "GaussianNoise",
                      "MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D",
                      "ZeroPadding2D", "Cropping2D", "UpSampling2D", "GlobalAveragePooling2D",
                      "GlobalMaxPooling2D", "BatchNormalization", "Add", "Multiply",
                      "Average", "Subtract", "Maximum", "Minimum", "ReLU", "LeakyReLU"}


@dataclasses.dataclass
class MeshContext:
    """The mesh, batch and dtype the comm/memory formulas need."""
    mesh_axes: dict
    model_axis: str | None
    pipe_axis: str | None
    batch_size: int
    microbatches: int = 1
    dtype_bytes: int = 4

    @property
    def stage_axes(self) -> tuple:
        return tuple(a for a in self.mesh_axes if a != self.pipe_axis)

    @property
    def data_axes(self) -> tuple:
        return tuple(a for a in self.stage_axes if a != self.model_axis)

    @property
    def n_stage(self) -> int:
        return axes_size(self.stage_axes, self.mesh_axes)

    @property
    def m(self) -> int:
        return self.mesh_axes.get(self.model_axis, 1) if self.model_axis else 1

    @property
    def d(self) -> int:
        return axes_size(self.data_axes, self.mesh_axes)

    @property
    def num_stages(self) -> int:
        return self.mesh_axes.get(self.pipe_axis, 1) if self.pipe_axis else 1

    def split(self, layout: str) -> int:
        """Devices a tensor of ``layout`` is split over (the rest hold replicas)."""
        return self.n_stage if layout in (B, F) else self.d


def context_from_plan(plan: Plan, batch_size: int, dtype_bytes: int = 4) -> MeshContext:
    return MeshContext(dict(plan.mesh_axes), plan.model_axis, plan.pipe_axis, int(batch_size),
                       max(int(plan.microbatches or 1), 1), int(dtype_bytes))


def transition(src: str, dst: str, nbytes: float, ctx: MeshContext,
               partial_grad: bool = False) -> list[Comm]:
    """Collectives to turn a tensor of layout ``src`` into ``dst`` (forward) and its
    gradient back (backward). ``nbytes``: the tensor's bytes per data shard per step
    (batch ``B / d``); ``partial_grad``: the consumer's input gradient is a partial sum
    over ``model`` that must be reduced."""
    m = ctx.m
    if m <= 1 or nbytes <= 0:
        return []
    f = (m - 1) / m
    mb = ctx.microbatches
    axes = (ctx.model_axis,)
    out: list[Comm] = []
    if src == dst:
        if dst == R and partial_grad:
            out.append(Comm("activation-grad all-reduce", 2 * f * nbytes, mb, axes))
        return out
    if dst == R:  # B -> R or F -> R: gather over model; reduce-scatter the partial grad
        out.append(Comm("activation all-gather", f * nbytes, mb, axes))
        if partial_grad:
            out.append(Comm("activation-grad reduce-scatter", f * nbytes, mb, axes))
        return out
    if src == R:  # R -> F or R -> B: slice forward, all-gather the gradient backward
        out.append(Comm("activation-grad all-gather", f * nbytes, mb, axes))
        return out
    # B <-> F: all-to-all both ways
    out.append(Comm("activation all-to-all", 2 * f * nbytes / m, 2 * mb, axes))
    return out


def _tensor_bytes(shape, ctx: MeshContext, dtype_bytes: int | None = None) -> float:
    """Bytes of a batch-first tensor for one data shard (``B / d`` samples), per step."""
    return _per_sample(shape) * (dtype_bytes or ctx.dtype_bytes) * ctx.batch_size / max(ctx.d, 1)


def weight_shard(spec, mesh_axes: dict) -> tuple[int, tuple]:
    """(how many pieces a weight is split into, the mesh axes it is split over)."""
    axes = []
    for entry in (tuple(spec) if spec is not None else ()):
        if entry is None:
            continue
        axes.extend(entry if isinstance(entry, tuple) else (entry,))
    axes = tuple(a for a in axes if a in mesh_axes)
    return axes_size(axes, mesh_axes), axes


def grad_comms(info: LayerInfo, weight_specs: dict, ctx: MeshContext) -> list[Comm]:
    """One all-reduce per step of each trainable weight's gradient over its replicas."""
    groups: dict[tuple, float] = {}
    for w, wi in info.weights.items():
        if not wi.trainable:
            continue
        shard, sharded_axes = weight_shard(weight_specs.get(w), ctx.mesh_axes)
        replica_axes = tuple(a for a in ctx.stage_axes if a not in sharded_axes)
        r = axes_size(replica_axes, ctx.mesh_axes)
        if r <= 1:
            continue
        groups[replica_axes] = groups.get(replica_axes, 0.0) + 2 * (r - 1) / r * wi.nbytes / shard
    return [Comm("weight-grad all-reduce", b, 1, axes, "grad") for axes, b in groups.items()]


def layer_layouts(info: LayerInfo, parallel: str, mode: str | None, current: str):
    """(input layout, output layout, partial input gradient) of a layer placement."""
    if parallel == "model":
        return MODE_LAYOUTS.get(mode, (R, R, True))
    if parallel == "data":
        return B, B, False
    # weightless: keep the input's layout; mixing the last dim needs it whole first
    if current == F and info.kind not in CHANNEL_PRESERVING:
        return R, R, False
    return current, current, False


def layer_comms(info: LayerInfo, parallel: str, mode: str | None, weight_specs: dict,
                current: str, ctx: MeshContext) -> tuple[str, list[Comm]]:
    """The layout of the layer's output and the collectives the layer causes per step,
    given the layout ``current`` of its input (see the module docstring)."""
    lin, lout, partial = layer_layouts(info, parallel, mode, current)
    if ctx.m <= 1:
        lin = lout = current = B
    calls = max(int(info.calls or 1), 1)
    in_shape = info.input_shapes[0] if info.input_shapes else ()
    out_shape = info.output_shapes[0] if info.output_shapes else ()
    ids_input = info.kind == "Embedding"
    x = _tensor_bytes(in_shape, ctx, 4 if ids_input else None) * calls
    y = _tensor_bytes(out_shape, ctx) * calls
    comms = transition(current, lin, x, ctx, partial and not ids_input)
    if ctx.m > 1 and parallel == "model":
        f, mb, axes = (ctx.m - 1) / ctx.m, ctx.microbatches, (ctx.model_axis,)
        if mode in ("row", "vocab"):
            comms.append(Comm("output all-reduce", 2 * f * y, mb, axes))
        elif mode == "hidden":
            directions = 2 if info.kind == "Bidirectional" else 1
            steps = int(in_shape[1]) if len(in_shape) > 2 and in_shape[1] else 1
            units = max((wi.shape[0] for w, wi in info.weights.items()
                         if w.endswith("recurrent_kernel")), default=0)
            h = units * ctx.dtype_bytes * ctx.batch_size / max(ctx.d, 1) * calls
            comms.append(Comm("h all-gather per step", directions * steps * f * h,
                              directions * steps * mb, axes))
            comms.append(Comm("dh all-reduce per step", directions * steps * 2 * f * h,
                              directions * steps * mb, axes))
        elif mode not in MODE_LAYOUTS:
            comms.append(Comm("output all-gather", f * y, mb, axes))
    comms += grad_comms(info, weight_specs, ctx)
    return lout, comms


def in_flight_microbatches(stage: int, num_stages: int, microbatches: int,
                           schedule: str) -> int:
    """Microbatches whose activations a stage keeps at once (GPipe: all; 1F1B:
    at most ``num_stages - stage``; no pipeline: all, as one batch)."""
    if schedule == "1f1b":
        return max(min(microbatches, num_stages - stage), 1)
    return microbatches


def layer_memory(info: LayerInfo, weight_specs: dict, out_layout: str, ctx: MeshContext,
                 stage: int = 0, schedule: str = "none", optimizer_slots: int = 2) -> dict:
    """Per-device bytes of one layer: params, grads, optimizer slots, activations."""
    params = grads = 0.0
    for w, wi in info.weights.items():
        shard, _ = weight_shard(weight_specs.get(w), ctx.mesh_axes)
        b = wi.nbytes / shard
        params += b
        if wi.trainable:
            grads += b
    micro = ctx.batch_size / ctx.microbatches
    in_flight = in_flight_microbatches(stage, ctx.num_stages, ctx.microbatches, schedule)
    split = ctx.split(out_layout if ctx.m > 1 else B)
    # Backward reads each layer's inputs (weight and input gradients) and outputs (the
    # activation's derivative); XLA keeps both live until the layer's backward has run.
    saved = sum(_per_sample(s) for s in info.output_shapes) + sum(
        _per_sample(s) for s in info.input_shapes)
    acts = saved * ctx.dtype_bytes * micro * in_flight / split * max(int(info.calls or 1), 1)
    return {"params": params, "grads": grads, "optimizer": optimizer_slots * grads,
            "activations": acts, "total": params + grads + optimizer_slots * grads + acts}


# ------------------------------------------------------------------------ estimate

def format_bytes(n: float) -> str:
    """``1536 -> '1.50 KB'`` (powers of 1024, as ``Model.summary``)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TB"


def bubble_fraction(num_stages: int, microbatches: int, schedule: str) -> float:
    """``(p-1)/(m+p-1)`` for GPipe and 1F1B; 0 without a pipeline."""
    if num_stages <= 1 or schedule == "none":
        return 0.0
    return (num_stages - 1) / (microbatches + num_stages - 1)


@dataclasses.dataclass
class StageCost:
    flops: float = 0.0          # forward FLOPs per sample
    compute_s: float = 0.0
    act_comm_s: float = 0.0
    grad_comm_s: float = 0.0
    comm_bytes: float = 0.0
    memory_bytes: float = 0.0
    largest: tuple = ("", "", 0.0, None)  # (layer, kind, bytes, breakdown)


def estimate(plan: Plan, infos: Sequence[LayerInfo], *, batch_size: int, device_kind=None,
             optimizer_slots: int = 2, memory_limit: float | None = None,
             dtype_bytes: int = 4) -> Estimates:
    """Fills every LayerPlan's flops / param_bytes / memory_bytes / comm_bytes, the
    stages' flops and memory, and ``plan.estimates``; returns the estimates.

    Args:
        plan: the plan (modified in place).
        infos: the model's layers, in execution order (``model.layer_infos()``).
        batch_size: global batch per training step.
        device_kind: a key of :data:`DEVICES` (default: ``plan.device_kind``).
        optimizer_slots: optimizer state copies per trainable weight (Adam: 2).
        memory_limit: bytes per device (default: the device kind's memory).
        dtype_bytes: bytes per activation element (4: float32, 2: bfloat16).

    Raises:
        ValueError: if a device needs more than ``memory_limit``, naming the stage, its
            largest layer and the sizes.

    Example:
        >>> est = estimate(plan, model.layer_infos(), batch_size=128, device_kind="h100")
        >>> print(f"{est.step_time_s * 1e3:.1f} ms")
    """
    device = get_device(device_kind or plan.device_kind)
    limit = memory_limit if memory_limit is not None else device.hbm_bytes
    plan.device_kind = next((k for k, v in DEVICES.items() if v is device), device.name)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"estimate: `batch_size` must be a positive int. Received: "
                         f"batch_size={batch_size!r}")
    batch_size = int(batch_size)
    ctx = context_from_plan(plan, batch_size, dtype_bytes)
    ordered = [i for i in infos if i.name in plan.layers]
    missing = [n for n in plan.layers if n not in {i.name for i in ordered}]
    if missing:
        raise ValueError(f"estimate: the plan has layers {missing} that `infos` does not "
                         f"describe. Received: {len(ordered)} matching layer infos")
    num_stages = max(ctx.num_stages, 1)
    stages = [StageCost() for _ in range(num_stages)]
    peak = device.peak_flops(dtype_bytes) * device.efficiency
    mesh = ctx.mesh_axes
    # A batch that does not divide over the stage's data-parallel devices runs whole on
    # every one of them.
    split = ctx.n_stage if batch_split(plan, batch_size) > 1 else 1
    layout = B
    for idx, info in enumerate(ordered):
        lp = plan.layers[info.name]
        s = min(max(int(lp.stage or 0), 0), num_stages - 1)
        layout, comms = layer_comms(info, lp.parallel, lp.mode, lp.weights, layout, ctx)
        nxt = ordered[idx + 1] if idx + 1 < len(ordered) else None
        if nxt is not None and plan.layers[nxt.name].stage != lp.stage and ctx.pipe_axis:
            sent = sum(_per_sample(sh) for sh in info.output_shapes) * ctx.dtype_bytes * (
                ctx.batch_size / ctx.n_stage)
            comms.append(Comm("pipeline send (activation + gradient)", 2 * sent,
                              2 * ctx.microbatches, (ctx.pipe_axis,), "p2p"))
        mem = layer_memory(info, lp.weights, layout, ctx, s, plan.schedule, optimizer_slots)
        fl = layer_flops(info)
        lp.flops = fl
        lp.param_bytes = int(info.param_bytes)
        lp.memory_bytes = float(mem["total"])
        lp.comm_bytes = float(sum(c.bytes for c in comms))
        st = stages[s]
        st.flops += fl
        st.compute_s += 3.0 * fl * batch_size / (split * peak)
        for c in comms:
            t = comm_time(c, mesh, device)
            if c.phase == "grad":
                st.grad_comm_s += t
            else:
                st.act_comm_s += t
        st.comm_bytes += lp.comm_bytes
        st.memory_bytes += mem["total"]
        if mem["total"] > st.largest[2]:
            st.largest = (info.name, info.kind, mem["total"], mem)

    bubble = bubble_fraction(num_stages, ctx.microbatches, plan.schedule)
    busy = max(st.compute_s + st.act_comm_s for st in stages)
    grad = max(st.grad_comm_s for st in stages)
    compute = max(st.compute_s for st in stages)
    est = Estimates(
        step_time_s=busy / (1.0 - bubble) + grad,
        compute_time_s=compute,
        comm_time_s=max(st.act_comm_s for st in stages) + grad,
        comm_bytes=max(st.comm_bytes for st in stages),
        memory_bytes_per_device=max(st.memory_bytes for st in stages),
        bubble_fraction=bubble)
    plan.estimates = est
    for sp in plan.stages:
        if 0 <= sp.index < num_stages:
            sp.flops = stages[sp.index].flops
            sp.memory_bytes = stages[sp.index].memory_bytes

    for k, st in enumerate(stages):
        if st.memory_bytes > limit:
            name, kind, nbytes, mem = st.largest
            where = f"stage {k} of {num_stages}" if num_stages > 1 else "each device"
            raise ValueError(
                f"The plan does not fit in device memory: {where} needs "
                f"{format_bytes(st.memory_bytes)} per device, more than the memory limit "
                f"{format_bytes(limit)} ({device.name}). Largest layer: '{name}' ({kind}) "
                f"with {format_bytes(nbytes)} per device (weights {format_bytes(mem['params'])}, "
                f"gradients {format_bytes(mem['grads'])}, optimizer "
                f"{format_bytes(mem['optimizer'])}, activations "
                f"{format_bytes(mem['activations'])}; {format_bytes(info_bytes(ordered, name))} "
                f"of weights unsharded). Shard it (parallel='model'), add pipeline stages, "
                f"use more devices or a smaller batch. Received: batch_size={batch_size}, "
                f"mesh={dict(mesh)}, memory_limit={limit:.4g}")
    return est


def info_bytes(infos: Sequence[LayerInfo], name: str) -> int:
    for i in infos:
        if i.name == name:
            return i.param_bytes
    return 0


__all__ = ["DEVICES", "DeviceSpec", "Comm", "MeshContext", "estimate", "layer_flops",
           "training_flops", "get_device", "hbm_bytes", "memory_limit", "comm_time",
           "format_bytes", "bubble_fraction", "layer_comms", "layer_memory", "transition"]
