"""The planner: (layer infos, a strategy, devices) -> Plan. Pure: reads shapes only.

``make_plan`` turns a strategy and the layers' ``parallel=``/``stage=`` annotations
into a mesh, a PartitionSpec for every weight, a sharding constraint for every
layer output and pipeline stages; ``build_plan`` is the mechanism underneath,
shared with the automatic planner. Every invalid request fails here, before any
compilation, naming the layer, the dimension and the sizes.
"""
from __future__ import annotations


import math
from typing import Sequence

import numpy as np
from jax.sharding import PartitionSpec

from hybridnet import strategies as S
from hybridnet.strategies import SCHEDULES as PIPELINE_SCHEDULES
from hybridnet.planner.feasibility import (annotated_stages, assign_stages, batch_split,
                                           check_plan, stage_errors)
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
# Logical weight axes that tensor parallelism splits over the model axis, for layers the
# tables above do not know (custom layers declare axes in ``add_weight(axes=...)``).
MODEL_SHARDED_AXES = ("mlp", "heads", "vocab", "conv_out", "lstm_gates", "kv")


def _axes_template(info: LayerInfo) -> dict:
    return {w: tuple(M if a in MODEL_SHARDED_AXES else None for a in weight.axes)
            for w, weight in info.weights.items()
            if weight.axes and any(a in MODEL_SHARDED_AXES for a in weight.axes)}


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
        if _axes_template(info) and requested in (None, "axes"):
            return "axes"
        supported = sorted(TENSOR_PARALLEL)
        raise ValueError(f"Layer '{info.name}' ({info.kind}) does not support parallel='model'. "
                         f"Tensor parallelism is available for {supported} and for layers "
                         f"whose weights declare logical axes among {list(MODEL_SHARDED_AXES)} "
                         f"(add_weight(..., axes=...)). Received: parallel={info.parallel!r}")
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
    if mode == "axes":
        template, last_sharded = _axes_template(info), False
    else:
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
    """Stages from ``stage=`` annotations (by the graph's dependencies: an unannotated
    layer joins the latest stage it reads), else contiguous runs balanced by
    ``cost(info)``."""
    names = [i.name for i in infos]
    if num_stages > len(infos):
        raise ValueError(f"Pipeline: more stages than layers. Received: {num_stages} stages "
                         f"for {len(infos)} layers {names}")
    stage = annotated_stages(infos)
    if stage is not None:
        errors = stage_errors(infos, stage)
        if errors:
            raise ValueError(f"Pipeline: {errors[0]}")
        used = sorted(set(stage.values()))
        count = used[-1] + 1
        if count != num_stages or used != list(range(count)):
            raise ValueError(f"Pipeline: the stage= annotations give stages {used}; the mesh "
                             f"has {num_stages} pipeline stages. Received: {count} annotated "
                             f"stages")
        return [[n for n in names if stage[n] == k] for k in range(num_stages)]
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
               notes: list[str] | None = None, changes: list[str] | None = None,
               optional: Sequence[str] = ()) -> Plan:
    """The Plan for a mesh, a set of tensor-parallel layers (name -> mode or None for the
    layer's default) and pipeline stages (lists of layer names in execution order).

    Data-parallel layers keep their weights replicated and split the batch over every
    non-pipeline axis; tensor-parallel layers shard their weights over ``model`` and the
    batch over the remaining axes. A layer named in ``optional`` whose dimensions no
    tensor-parallel mode divides stays replicated, said in ``changes`` (others raise).
    Stages must respect the graph's dependencies: no stage reads a later stage's output.
    """
    changes = list(changes or [])
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
            if info.name in optional:
                mode = _dividing_mode(info, mode, model_axis, model_size)
            if mode is None:
                why = (f"no tensor-parallel mode of {info.kind} divides its weights over "
                       f"'{model_axis}'={model_size}")
                changes.append(f"layer '{info.name}' ({info.kind}) is left unsharded "
                               f"(replicated): {why}")
                layers[info.name] = LayerPlan(
                    info.name, info.kind, parallel="data",
                    weights={w: PartitionSpec() for w in info.weights},
                    output_spec=_output_spec(info, stage_axes, None),
                    reason=f"replicated, batch split: {why}")
                continue
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
            unknown = [n for n in names if n not in layers]
            if unknown:
                raise ValueError(f"Pipeline: stage {k} names unknown layers {unknown}. "
                                 f"Received: stages={stages}")
            stage_plans.append(StagePlan(k, list(names), [int(i) for i in grid[k].ravel()]))
        stage_of = assign_stages(infos, {n: k for k, names in enumerate(stages) for n in names})
        errors = stage_errors(infos, stage_of)
        if errors:
            raise ValueError(f"Pipeline: {errors[0]}")
        for n, k in stage_of.items():
            layers[n].stage = k
        if schedule == "none":
            schedule = "gpipe"
    notes = list(notes or [])
    return Plan(mesh_axes=dict(mesh_axes), device_ids=list(device_ids), layers=layers,
                batch_axes=stage_axes, model_axis=model_axis, pipe_axis=pipe,
                stages=stage_plans, microbatches=microbatches,
                schedule=schedule if pipe else "none", device_kind=device_kind,
                notes=notes + [c for c in changes if c not in notes], changes=changes)


def _dividing_mode(info: LayerInfo, preferred: str, model_axis: str, model_size: int):
    """``preferred`` if it divides the layer's weights over the model axis, else another
    mode of the layer's kind that does, else None."""
    for mode in [preferred] + [m for m in TENSOR_PARALLEL.get(info.kind, {}) if m != preferred]:
        try:
            tensor_parallel_specs(info, mode, model_axis, model_size)
        except ValueError:
            continue
        return mode
    return None


def _devices(strategy, devices) -> tuple[list[int], str]:
    chosen = getattr(strategy, "devices", None)
    chosen = chosen if chosen is not None else devices
    if chosen is None:
        import jax
        chosen = jax.devices()  # every process's devices: one plan for the whole job
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

    With ``batch_size``, a plan that cannot run that batch is refused here (microbatches
    that do not divide it, more data-parallel devices than samples), and one that runs it
    differently from the request (replicated instead of split) says so in
    ``plan.changes``; so does any annotation the strategy ignores.

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
    staged = [i.name for i in infos if i.stage is not None]
    if strategy is None:
        strategy = S.ModelParallel() if annotated else S.DataParallel()
        implicit = True
    else:
        strategy = S.get(strategy)
        implicit = False
    device_ids, kind = _devices(strategy, devices)
    kind = device_kind or kind
    n = len(device_ids)
    name = type(strategy).__name__
    notes: list[str] = []
    changes: list[str] = []

    if isinstance(strategy, S.Auto):
        from hybridnet.planner import auto
        if strategy.batch_size is not None:
            if isinstance(strategy.batch_size, bool) or not isinstance(
                    strategy.batch_size, int) or strategy.batch_size < 1:
                raise ValueError(f"Auto: `batch_size` must be a positive int or None. "
                                 f"Received: batch_size={strategy.batch_size!r}")
            batch_size = strategy.batch_size
        plan = auto.auto_plan(infos, strategy, device_ids, batch_size, kind)
        unsharded = sorted(a for a in annotated if plan.layers[a].parallel != "model")
        if unsharded:
            changes.append(f"Auto leaves the layers {unsharded}, annotated parallel='model', "
                           f"unsharded: " + ("the chosen mesh has no 'model' axis"
                                             if plan.model_axis is None else
                                             "their dimensions do not divide over 'model'"))
    elif isinstance(strategy, S.DataParallel):
        if annotated:
            changes.append(f"DataParallel ignores the parallel='model' annotations of "
                           f"{sorted(annotated)}")
        plan = build_plan(infos, mesh_axes={strategy.axis_name: n}, device_ids=device_ids,
                          tensor_parallel={}, device_kind=kind)
        plan.batch_axes = (strategy.axis_name,)
    elif isinstance(strategy, S.ModelParallel):
        model = strategy.model or n
        data = _factor(n, "model", model)
        tp = dict(annotated) if implicit else {
            i.name: annotated.get(i.name) for i in infos
            if i.kind in TENSOR_PARALLEL or i.name in annotated}
        if implicit:
            notes.append(f"layers annotated parallel='model' are sharded over all {n} devices")
        optional = [] if implicit else [a for a in tp if a not in annotated]
        plan = build_plan(infos, mesh_axes={"data": data, "model": model},
                          device_ids=device_ids, tensor_parallel=tp, device_kind=kind,
                          optional=optional)
    elif isinstance(strategy, S.Pipeline):
        annotated_stages = {i.stage for i in infos if i.stage is not None}
        p = strategy.stages or (max(annotated_stages) + 1 if annotated_stages else min(
            n, len(infos)))
        if p > n:
            raise ValueError(f"Pipeline: {p} stages need at least {p} devices. Received: "
                             f"{n} devices")
        if n % p:
            device_ids = device_ids[:p * (n // p)]
            changes.append(f"Pipeline uses {len(device_ids)} of {n} devices ({p} stages x "
                           f"{n // p}): {p} does not divide {n}")
        data = len(device_ids) // p
        if annotated:
            changes.append(f"Pipeline has no 'model' axis: the parallel='model' annotations "
                           f"of {sorted(annotated)} are ignored (use Hybrid)")
        plan = build_plan(infos, mesh_axes={"pipe": p, "data": data}, device_ids=device_ids,
                          tensor_parallel={}, microbatches=strategy.microbatches,
                          schedule=strategy.schedule, device_kind=kind)
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
            changes.append(f"Hybrid uses {len(device_ids)} of {n} devices: the mesh {mesh} "
                           f"needs {len(device_ids)}")
        order = {a: mesh[a] for a in ("pipe", "data", "model") if a in mesh}
        tp = annotated if "model" in mesh else {}
        if annotated and "model" not in mesh:
            changes.append(f"Hybrid: the mesh has no 'model' axis: the parallel='model' "
                           f"annotations of {sorted(annotated)} are ignored")
        piped = mesh.get("pipe", 1) > 1
        if strategy.microbatches > 1 and not piped:
            changes.append(f"Hybrid: microbatches={strategy.microbatches} is ignored: the "
                           f"mesh has no 'pipe' axis, so each batch runs whole")
        plan = build_plan(infos, mesh_axes=order, device_ids=device_ids, tensor_parallel=tp,
                          microbatches=strategy.microbatches if piped else 1,
                          schedule=strategy.schedule if piped else "none",
                          device_kind=kind)
    else:  # pragma: no cover - S.get validates
        raise ValueError(f"Unknown strategy {strategy!r}")

    if staged and not plan.pipe_axis and not isinstance(strategy, S.Auto):
        changes.append(f"{name} has no 'pipe' axis: the stage= annotations of {staged} are "
                       f"ignored (use Pipeline, or Hybrid with a 'pipe' axis)")
    plan.notes = notes + plan.notes
    _say(plan, changes)
    if batch_size is not None:
        plan.batch_size = int(batch_size)
        result = check_plan(plan, plan.batch_size, infos, what=name).raise_errors()
        plan.notes += [c for c in result.changes if c not in plan.notes]  # fit re-checks
        if batch_split(plan, plan.batch_size) == 1 and plan.data_parallel_size > 1:
            for lp in plan.layers.values():
                if lp.reason.startswith("replicated, batch split"):
                    lp.reason = lp.reason.replace("batch split", "batch replicated (see notes)",
                                                  1)
    else:
        check_plan(plan, None, infos, what=name).raise_errors()

    from hybridnet.planner import cost
    cost.estimate(plan, infos, batch_size=batch_size or 32, device_kind=plan.device_kind,
                  memory_limit=getattr(strategy, "memory_limit", None))
    return plan


def _say(plan: Plan, changes: Sequence[str]) -> None:
    """Adds changes of the request to the plan's changes and notes (once each)."""
    for c in changes:
        if c not in plan.changes:
            plan.changes.append(c)
        if c not in plan.notes:
            plan.notes.append(c)


def check_batch(plan: Plan, batch_size: int, what: str = "fit", *,
                partial: bool = False) -> list[str]:
    """Fails early if ``batch_size`` cannot run under ``plan``; returns what runs
    differently from the plan's request (a batch replicated instead of split)."""
    return list(check_plan(plan, batch_size, what=what, partial=partial)
                .raise_errors().changes)


__all__ = ["build_plan", "make_plan", "check_batch", "tensor_parallel_specs", "TENSOR_PARALLEL"]
