"""The planner: (layer infos, a strategy, devices) -> Plan. Pure: reads shapes only.

``make_plan`` turns a strategy and the layers' ``parallel=``/``stage=`` annotations
into a mesh, a PartitionSpec for every weight, a sharding constraint for every
layer output and pipeline stages; ``build_plan`` is the mechanism underneath,
shared with the automatic planner. Every invalid request fails here, before any
compilation, naming the layer, the dimension and the sizes.
"""
from __future__ import annotations


import math
from typing import Any, Sequence

import numpy as np
from jax.sharding import PartitionSpec

from hybridnet import strategies as S
from hybridnet.strategies import SCHEDULES as PIPELINE_SCHEDULES
from hybridnet.planner.graph_info import LayerInfo
from hybridnet.planner.plan import LayerPlan, Plan, StagePlan

M = "__model__"  # placeholder for the model axis in the tables below

# Tensor-parallel modes per layer kind: weight -> spec template, and whether the
# layer's output is sharded on its last (feature/channel) dimension.
TENSOR_PARALLEL = {
    "Dense": {"column": ({"kernel": (None, M), "bias": (M,)}, True),
              "row": ({"kernel": (M, None), "bias": ()}, False)},
    "Conv2D": {"out_channels": ({"kernel": (None, None, None, M), "bias": (M,)}, True)},
    "Embedding": {"vocab": ({"embeddings": (M, None)}, False)},
    "LSTM": {"hidden": ({"kernel": (None, M), "recurrent_kernel": (None, M), "bias": (M,)},
                        False)},
    "Bidirectional": {"hidden": ({f"{d}_{w}": spec for d in ("forward", "backward")
                                  for w, spec in (("kernel", (None, M)),
                                                  ("recurrent_kernel", (None, M)),
                                                  ("bias", (M,)))}, False)},
}
DEFAULT_MODE = {"Dense": "column", "Conv2D": "out_channels", "Embedding": "vocab",
                "LSTM": "hidden", "Bidirectional": "hidden"}
SCHEDULES = ("none",) + PIPELINE_SCHEDULES


def _annotation(info: LayerInfo) -> tuple[bool, str | None]:
    """(wants tensor parallelism, requested mode) from a layer's ``parallel=``."""
    p = info.parallel
    if p in (None, "data"):
        return False, None
    if p == "model":
        return True, None
    if isinstance(p, S.Shard):
        return True, p.mode
    if isinstance(p, str) and p.startswith("Shard("):  # from a saved config
        return True, None
    raise ValueError(f"Layer '{info.name}' ({info.kind}): unsupported `parallel` value. "
                     f"Expected 'data', 'model' or hybridnet.Shard(...). Received: "
                     f"parallel={p!r}")


def _choose_mode(info: LayerInfo, requested: str | None, previous_dense: str | None) -> str:
    modes = TENSOR_PARALLEL.get(info.kind)
    if not modes:
        supported = sorted(TENSOR_PARALLEL)
        raise ValueError(f"Layer '{info.name}' ({info.kind}) does not support parallel='model'. "
                         f"Tensor parallelism is available for {supported}. Received: "
                         f"parallel={info.parallel!r}")
    if requested is None:
        if info.kind == "Dense":  # Megatron pairing: column then row needs one all-reduce
            return "row" if previous_dense == "column" else "column"
        return DEFAULT_MODE[info.kind]
    if requested not in modes:
        raise ValueError(f"Layer '{info.name}' ({info.kind}): unsupported tensor-parallel mode. "
                         f"Expected one of {sorted(modes)}. Received: mode={requested!r}")
    return requested


def tensor_parallel_specs(info: LayerInfo, mode: str, model_axis: str, model_size: int):
    """The weights' PartitionSpecs for ``mode``; checks every sharded dimension divides."""
    template, last_sharded = TENSOR_PARALLEL[info.kind][mode]
    specs = {}
    for w, weight in info.weights.items():
        t = template.get(w, ())
        spec = tuple(model_axis if a == M else a for a in t)
        for dim, axis in enumerate(spec):
            if axis is not None and weight.shape[dim] % model_size:
                raise ValueError(
                    f"Layer '{info.name}' ({info.kind}): {mode}-parallel sharding splits "
                    f"dimension {dim} of weight '{w}' (size {weight.shape[dim]}) over mesh axis "
                    f"'{model_axis}' of size {model_size}, which does not divide it. Received: "
                    f"{w}.shape={weight.shape}")
        specs[w] = PartitionSpec(*spec)
    return specs, last_sharded


def _output_spec(info: LayerInfo, batch_axes: tuple, feature_axis: str | None):
    if len(info.output_shapes) != 1:
        return None
    rank = len(info.output_shapes[0])
    batch = batch_axes if len(batch_axes) > 1 else (batch_axes[0] if batch_axes else None)
    rest = [None] * (rank - 1)
    if feature_axis is not None and rank > 1:
        rest[-1] = feature_axis
    return PartitionSpec(batch, *rest)


def _split_stages(infos: Sequence[LayerInfo], num_stages: int, cost) -> list[list[str]]:
    """Contiguous stages: from ``stage=`` annotations, else balanced by ``cost(info)``."""
    names = [i.name for i in infos]
    if num_stages > len(infos):
        raise ValueError(f"Pipeline: more stages than layers. Received: {num_stages} stages "
                         f"for {len(infos)} layers {names}")
    if any(i.stage is not None for i in infos):
        stages, current = [], 0
        for info in infos:
            if info.stage is not None:
                if info.stage < current:
                    raise ValueError(f"Layer '{info.name}': stage annotations must not decrease "
                                     f"in execution order. Received: stage={info.stage} after "
                                     f"stage {current}")
                current = info.stage
            stages.append(current)
        count = max(stages) + 1
        if count != num_stages or sorted(set(stages)) != list(range(count)):
            raise ValueError(f"Pipeline: the stage= annotations give stages "
                             f"{sorted(set(stages))}; the mesh has {num_stages} pipeline "
                             f"stages. Received: {count} annotated stages")
        return [[n for n, s in zip(names, stages) if s == k] for k in range(num_stages)]
    weights = np.array([max(cost(i), 1.0) for i in infos])
    cum = np.cumsum(weights)
    total = cum[-1]
    cuts, start = [], 0
    for k in range(1, num_stages):
        target = total * k / num_stages
        idx = int(np.searchsorted(cum, target))
        idx = min(max(idx, start + 1), len(infos) - (num_stages - k))
        cuts.append(idx)
        start = idx
    bounds = [0] + cuts + [len(infos)]
    return [names[bounds[k]:bounds[k + 1]] for k in range(num_stages)]


def build_plan(infos: Sequence[LayerInfo], *, mesh_axes: dict[str, int], device_ids: list[int],
               tensor_parallel: dict[str, str | None], stages: list[list[str]] | None = None,
               microbatches: int = 1, schedule: str = "none", device_kind: str = "cpu",
               notes: list[str] | None = None) -> Plan:
    """The Plan for a mesh, a set of tensor-parallel layers (name -> mode or None for the
    layer's default) and pipeline stages (lists of layer names in execution order).

    Data-parallel layers keep their weights replicated and split the batch over every
    non-pipeline axis; tensor-parallel layers shard their weights over ``model`` and the
    batch over the remaining axes.
    """
    size = math.prod(mesh_axes.values())
    if size != len(device_ids):
        raise ValueError(f"The mesh {mesh_axes} needs {size} devices. Received: "
                         f"{len(device_ids)} devices")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown pipeline schedule. Expected one of {SCHEDULES[1:]}. "
                         f"Received: schedule={schedule!r}")
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"`microbatches` must be a positive int. Received: "
                         f"microbatches={microbatches!r}")
    pipe = "pipe" if mesh_axes.get("pipe", 1) > 1 or "pipe" in mesh_axes else None
    model_axis = "model" if "model" in mesh_axes else None
    model_size = mesh_axes.get("model", 1)
    stage_axes = tuple(a for a in mesh_axes if a != pipe)
    data_axes = tuple(a for a in stage_axes if a != model_axis)
    unknown = sorted(set(tensor_parallel) - {i.name for i in infos})
    if unknown:
        raise ValueError(f"tensor_parallel names unknown layers {unknown}")
    if tensor_parallel and model_axis is None:
        raise ValueError(f"Layers {sorted(tensor_parallel)} ask for tensor parallelism but the "
                         f"mesh has no 'model' axis. Received: mesh={mesh_axes}")

    layers, previous_dense = {}, None
    for info in infos:
        if info.name in tensor_parallel:
            mode = _choose_mode(info, tensor_parallel[info.name], previous_dense)
            if info.kind == "Dense":
                previous_dense = mode
            specs, last_sharded = tensor_parallel_specs(info, mode, model_axis, model_size)
            layers[info.name] = LayerPlan(
                info.name, info.kind, parallel="model", mode=mode, weights=specs,
                output_spec=_output_spec(info, data_axes, model_axis if last_sharded else None),
                reason=f"tensor parallel ({mode}) over '{model_axis}'")
        elif info.weights:
            layers[info.name] = LayerPlan(
                info.name, info.kind, parallel="data",
                weights={w: PartitionSpec() for w in info.weights},
                output_spec=_output_spec(info, stage_axes, None), reason="replicated, batch split")
        else:  # weightless layers keep their input's layout (no constraint)
            layers[info.name] = LayerPlan(info.name, info.kind, parallel="none",
                                          reason="no weights: keeps its input's layout")
    # A tensor-parallel layer reads its input in the layout its weights need: features
    # sharded for a row-parallel layer, batch over the data axes (features whole) otherwise.
    # The constraint goes on the producer's output, so XLA moves activations, not weights.
    by_name = {i.name: i for i in infos}
    for info in infos:
        lp = layers[info.name]
        if lp.parallel != "model" or len(info.inbound) != 1 or info.inbound[0] not in layers:
            continue
        producer = layers[info.inbound[0]]
        if producer.parallel == "model":
            continue
        feature = model_axis if lp.mode == "row" else None
        producer.output_spec = _output_spec(by_name[producer.name], data_axes, feature)

    stage_plans: list[StagePlan] = []
    if pipe:
        shared = [i.name for i in infos if i.calls > 1]
        if shared and mesh_axes.get(pipe, 1) > 1:
            raise ValueError(f"Pipeline: layers {shared} are called more than once (shared "
                             f"layers); a pipeline cannot split their calls over stages. "
                             f"Received: a '{pipe}' axis of size {mesh_axes[pipe]}")
        p = mesh_axes[pipe]
        ordered = {pipe: p, **{a: mesh_axes[a] for a in stage_axes}}
        if list(mesh_axes) != list(ordered):
            mesh_axes = ordered
        grid = np.array(device_ids).reshape(tuple(mesh_axes.values()))
        if stages is None:
            from hybridnet.planner import cost
            stages = _split_stages(infos, p, cost.layer_flops)
        if len(stages) != p:
            raise ValueError(f"Pipeline: {len(stages)} stages given for a '{pipe}' axis of size "
                             f"{p}. Received: stages={stages}")
        for k, names in enumerate(stages):
            if not names:
                raise ValueError(f"Pipeline: stage {k} has no layers. Received: stages={stages}")
            for n in names:
                layers[n].stage = k
            stage_plans.append(StagePlan(k, list(names), [int(i) for i in grid[k].ravel()]))
        if schedule == "none":
            schedule = "gpipe"
    return Plan(mesh_axes=dict(mesh_axes), device_ids=list(device_ids), layers=layers,
                batch_axes=stage_axes, model_axis=model_axis, pipe_axis=pipe,
                stages=stage_plans, microbatches=microbatches,
                schedule=schedule if pipe else "none", device_kind=device_kind,
                notes=list(notes or []))


def _devices(strategy, devices) -> tuple[list[int], str]:
    chosen = getattr(strategy, "devices", None)
    chosen = chosen if chosen is not None else devices
    if chosen is None:
        import jax
        chosen = jax.local_devices()
    if isinstance(chosen, int):
        if chosen < 1:
            raise ValueError(f"make_plan: need at least one device. Received: devices={chosen}")
        return list(range(chosen)), getattr(strategy, "device_kind", None) or "cpu"
    chosen = list(chosen)
    if not chosen:
        raise ValueError("make_plan: no devices. Received: devices=[]")
    kind = getattr(strategy, "device_kind", None) or _device_kind(chosen[0])
    return [d.id for d in chosen], kind


def _device_kind(device) -> str:
    if device.platform == "cpu":
        return "cpu"
    name = getattr(device, "device_kind", "").lower()
    for kind in ("h200", "h100", "a100", "v5e", "v4"):
        if kind in name.replace(" ", ""):
            return kind
    return device.platform


def _factor(total: int, axis: str, size: int) -> int:
    if size < 1 or total % size:
        raise ValueError(f"The '{axis}' axis size must divide the number of devices. Received: "
                         f"{axis}={size} for {total} devices")
    return total // size


def make_plan(infos: Sequence[LayerInfo], strategy=None, devices=None, *,
              batch_size: int | None = None, device_kind: str | None = None) -> Plan:
    """Plans ``infos`` under ``strategy`` for ``devices`` (a list, or a count for a
    cluster this machine does not have) of ``device_kind`` (default: the devices' kind,
    "cpu" for a count). Allocates nothing.

    Example:
        >>> plan = make_plan(model.layer_infos(), Auto(device_kind="h100"), devices=64)
        >>> print(plan.summary())
    """
    infos = list(infos)
    annotated = {}
    for info in infos:
        wants, mode = _annotation(info)
        if wants:
            annotated[info.name] = mode
    if strategy is None:
        strategy = S.ModelParallel() if annotated else S.DataParallel()
        implicit = True
    else:
        strategy = S.get(strategy)
        implicit = False
    device_ids, kind = _devices(strategy, devices)
    kind = device_kind or kind
    n = len(device_ids)
    notes: list[str] = []

    if isinstance(strategy, S.Auto):
        from hybridnet.planner import auto
        plan = auto.auto_plan(infos, strategy, device_ids, batch_size, kind)
    elif isinstance(strategy, S.DataParallel):
        if annotated:
            notes.append(f"DataParallel ignores the parallel='model' annotations of "
                         f"{sorted(annotated)}")
        plan = build_plan(infos, mesh_axes={strategy.axis_name: n}, device_ids=device_ids,
                          tensor_parallel={}, device_kind=kind, notes=notes)
        plan.batch_axes = (strategy.axis_name,)
    elif isinstance(strategy, S.ModelParallel):
        model = strategy.model or n
        data = _factor(n, "model", model)
        tp = dict(annotated) if implicit else {
            i.name: annotated.get(i.name) for i in infos if i.kind in TENSOR_PARALLEL}
        if implicit:
            notes.append(f"layers annotated parallel='model' are sharded over all {n} devices")
        plan = build_plan(infos, mesh_axes={"data": data, "model": model},
                          device_ids=device_ids, tensor_parallel=tp, device_kind=kind,
                          notes=notes)
    elif isinstance(strategy, S.Pipeline):
        annotated_stages = {i.stage for i in infos if i.stage is not None}
        p = strategy.stages or (max(annotated_stages) + 1 if annotated_stages else min(
            n, len(infos)))
        if p > n:
            raise ValueError(f"Pipeline: {p} stages need at least {p} devices. Received: "
                             f"{n} devices")
        if n % p:
            device_ids = device_ids[:p * (n // p)]
            notes.append(f"using {len(device_ids)} of {n} devices ({p} stages x {n // p})")
        data = len(device_ids) // p
        if annotated:
            notes.append(f"Pipeline has no 'model' axis: the parallel='model' annotations of "
                         f"{sorted(annotated)} are ignored (use Hybrid)")
        plan = build_plan(infos, mesh_axes={"pipe": p, "data": data}, device_ids=device_ids,
                          tensor_parallel={}, microbatches=strategy.microbatches,
                          schedule=strategy.schedule, device_kind=kind, notes=notes)
    elif isinstance(strategy, S.Hybrid):
        mesh = {a: int(s) for a, s in dict(strategy.mesh).items()}
        unknown = sorted(set(mesh) - {"data", "model", "pipe"})
        if unknown or not mesh:
            raise ValueError(f"Hybrid: mesh axes must be among 'data', 'model', 'pipe'. "
                             f"Received: mesh={mesh}")
        if math.prod(mesh.values()) > n:
            raise ValueError(f"Hybrid: the mesh {mesh} needs {math.prod(mesh.values())} "
                             f"devices, more than are available. Received: {n} devices")
        if math.prod(mesh.values()) != n:
            device_ids = device_ids[:math.prod(mesh.values())]
            notes.append(f"using {len(device_ids)} of {n} devices")
        order = {a: mesh[a] for a in ("pipe", "data", "model") if a in mesh}
        tp = annotated if "model" in mesh else {}
        if annotated and "model" not in mesh:
            notes.append(f"the mesh has no 'model' axis: parallel='model' annotations of "
                         f"{sorted(annotated)} are ignored")
        plan = build_plan(infos, mesh_axes=order, device_ids=device_ids, tensor_parallel=tp,
                          microbatches=strategy.microbatches,
                          schedule=strategy.schedule if mesh.get("pipe", 1) > 1 else "none",
                          device_kind=kind, notes=notes)
    else:  # pragma: no cover - S.get validates
        raise ValueError(f"Unknown strategy {strategy!r}")

    from hybridnet.planner import cost
    cost.estimate(plan, infos, batch_size=batch_size or 32, device_kind=plan.device_kind,
                  memory_limit=getattr(strategy, "memory_limit", None))
    return plan


def check_batch(plan: Plan, batch_size: int, what: str = "fit") -> None:
    """Fails early if ``batch_size`` cannot run under ``plan``."""
    if plan.microbatches > 1 and batch_size % plan.microbatches:
        raise ValueError(f"{what}: the batch must split into {plan.microbatches} equal "
                         f"microbatches. Received: batch_size={batch_size}")
    per_micro = batch_size // max(plan.microbatches, 1)
    if per_micro < plan.data_parallel_size and plan.microbatches > 1:
        raise ValueError(f"{what}: each microbatch ({per_micro} samples) must be at least the "
                         f"data-parallel size {plan.data_parallel_size}. Received: "
                         f"batch_size={batch_size}, microbatches={plan.microbatches}")


__all__ = ["build_plan", "make_plan", "check_batch", "tensor_parallel_specs", "TENSOR_PARALLEL"]
