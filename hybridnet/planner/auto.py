"""The automatic planner: per-layer data or tensor parallelism, mesh shape and pipeline
cuts chosen by the cost model (:mod:`hybridnet.planner.cost`).

For every factorisation ``n = pipe x data x model`` of the devices, a dynamic program
over the layers (in execution order) picks, for each weighted layer, data parallelism
or one of its tensor-parallel modes so that the time of the collectives is smallest:
a data-parallel layer pays a gradient all-reduce of its replicated weights, a
tensor-parallel one pays activation collectives (and an all-reduce of its sharded
gradients over ``data``). The program tracks the layout of the tensor between layers,
so it sees that a Dense column -> row pair needs one all-reduce and that entering the
tensor-parallel region from data-parallel layers costs an all-gather of the batch.
This reproduces Krizhevsky's "one weird trick" (arXiv:1404.5997): convolutions (few
weights, large activations) data parallel, fully connected layers (many weights, small
activations) model parallel. A layer whose dimension does not divide over ``model``
cannot be sharded that way. Each candidate is then built (``build_plan``) and costed
(``cost.estimate``); the fastest one that fits in memory wins. Pipelines are used when
nothing fits on one stage, or when they lower the estimated step time by 5% or more.
Only meshes that split the batch evenly are searched (the check fit applies,
:func:`hybridnet.planner.feasibility.check_plan`): where the batch does not divide over
all devices, the meshes of that pipeline depth span fewer, and the notes say so.

Example:
    >>> from hybridnet.strategies import Auto
    >>> plan = make_plan(model.layer_infos(), Auto(device_kind="h100"), devices=64,
    ...                  batch_size=128)          # calls auto_plan
    >>> print(plan.summary())
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from jax.sharding import PartitionSpec

from hybridnet.planner import cost
from hybridnet.planner.feasibility import (annotated_stages, check_batch_size, check_plan,
                                           stage_errors)
from hybridnet.planner.graph_info import LayerInfo
from hybridnet.planner.plan import Plan
from hybridnet.planner.planner import TENSOR_PARALLEL, build_plan, tensor_parallel_specs

PIPELINE_MARGIN = 0.95  # a pipeline must beat the best single-stage plan by 5%
CONV_KINDS = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D"}


def _device_ids(devices) -> list[int]:
    if isinstance(devices, int):
        if devices < 1:
            raise ValueError(f"auto_plan: need at least one device. Received: devices={devices}")
        return list(range(devices))
    ids = [d if isinstance(d, int) else int(d.id) for d in devices]
    if not ids:
        raise ValueError("auto_plan: no devices. Received: devices=[]")
    return ids


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _wants_model(info: LayerInfo) -> tuple[bool, str | None]:
    """(annotated parallel='model' / Shard, requested mode)."""
    p = info.parallel
    if p == "model":
        return True, None
    if getattr(p, "mode", None) is not None or type(p).__name__ == "Shard":
        return True, getattr(p, "mode", None)
    return False, None


@dataclasses.dataclass
class _Option:
    parallel: str
    mode: str | None
    specs: dict

    @property
    def label(self) -> str:
        return f"model/{self.mode}" if self.parallel == "model" else self.parallel


def _options(info: LayerInfo, m: int, memory_first: bool) -> tuple[list[_Option], str]:
    """The placements a layer may take on a mesh with a model axis of size ``m``, and
    why tensor parallelism is unavailable (empty if it is)."""
    if not info.weights:
        return [_Option("none", None, {})], ""
    data = _Option("data", None, {w: PartitionSpec() for w in info.weights})
    if m <= 1:
        return [data], "the mesh has no model axis"
    if info.kind not in TENSOR_PARALLEL:
        return [data], f"{info.kind} has no tensor-parallel mode"
    if not any(w.trainable for w in info.weights.values()):
        return [data], "no trainable weights"
    forced, requested = _wants_model(info)
    tp, why = [], []
    for mode in TENSOR_PARALLEL[info.kind]:
        if requested and mode != requested:
            continue
        try:
            specs, _ = tensor_parallel_specs(info, mode, "model", m)
        except ValueError:
            dims = _sharded_dims(info, mode)
            why.append(f"{mode} splits {dims} that model={m} does not divide")
            continue
        tp.append(_Option("model", mode, specs))
    if tp and (forced or memory_first):
        return tp, ""
    return [data] + tp, "; ".join(why)


def _sharded_dims(info: LayerInfo, mode: str) -> str:
    template, _ = TENSOR_PARALLEL[info.kind][mode]
    out = []
    for w, t in template.items():
        if w in info.weights:
            out += [f"{w}.shape[{i}]={info.weights[w].shape[i]}"
                    for i, a in enumerate(t) if a is not None]
    return ", ".join(out[:1]) or "a dimension"


def _comm_time(comms, ctx, device, act_weight: float) -> float:
    return sum(cost.comm_time(c, ctx.mesh_axes, device) * (1.0 if c.phase == "grad" else act_weight)
               for c in comms)


def _describe(comms) -> str:
    grad = sum(c.bytes for c in comms if c.phase == "grad")
    act = [c for c in comms if c.phase != "grad" and c.bytes > 0]
    parts = []
    if act:
        names = []
        for c in act:
            if c.what not in names:
                names.append(c.what)
        parts.append(f"{' + '.join(names)} {cost.format_bytes(sum(c.bytes for c in act))}")
    if grad > 0:
        parts.append(f"grad all-reduce {cost.format_bytes(grad)}")
    return " + ".join(parts) if parts else "no collectives"


def _assign(infos, ctx, device, act_weight, memory_first):
    """Dynamic program over layouts: the cheapest placement of every layer.

    Returns ``[(info, option, incoming layout, options, why_not_tp)]``."""
    states = {cost.B: (0.0, [])}
    for info in infos:
        opts, why = _options(info, ctx.m, memory_first)
        new: dict = {}
        for cur, (total, path) in states.items():
            for opt in opts:
                out, comms = cost.layer_comms(info, opt.parallel, opt.mode, opt.specs, cur, ctx)
                t = total + _comm_time(comms, ctx, device, act_weight)
                if out not in new or t < new[out][0]:
                    new[out] = (t, path + [(info, opt, cur, opts, why)])
        states = new
    return min(states.values(), key=lambda s: s[0])[1]


def _reason(info, opt, cur, opts, why, ctx, device, act_weight) -> str:
    if opt.parallel == "none":
        return f"no weights; keeps its input's layout ({cost.LAYOUT_NAMES[cur]})" if (
            ctx.m > 1) else "no weights"
    _, mine = cost.layer_comms(info, opt.parallel, opt.mode, opt.specs, cur, ctx)
    t_mine = _comm_time(mine, ctx, device, act_weight)
    alts = []
    for alt in opts:
        if alt is opt:
            continue
        _, comms = cost.layer_comms(info, alt.parallel, alt.mode, alt.specs, cur, ctx)
        alts.append((_comm_time(comms, ctx, device, act_weight), alt, comms))
    head = f"{opt.label}: {_describe(mine)} ({t_mine * 1e3:.3g} ms)"
    if not alts:
        forced, _ = _wants_model(info)
        return head + (f"; annotated parallel={info.parallel!r}" if forced and ctx.m > 1
                       else f"; {why or 'only choice'}")
    t_alt, alt, comms = min(alts, key=lambda a: a[0])
    sign = "<" if t_mine <= t_alt else ">="
    text = f"{head} {sign} {alt.label}: {_describe(comms)} ({t_alt * 1e3:.3g} ms)"
    if sign == ">=":
        text += "; cheaper overall with its neighbours' layouts"
    return text


def _partition(values: Sequence[float], p: int) -> list[int]:
    """Contiguous split of ``values`` into ``p`` non-empty parts minimising the largest
    sum; returns the start index of each part after the first."""
    n = len(values)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(p + 1)]
    cut = [[0] * (n + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for k in range(1, p + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                v = max(best[k - 1][i], prefix[j] - prefix[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    bounds, j = [], n
    for k in range(p, 0, -1):
        j = cut[k][j]
        bounds.append(j)
    return sorted(bounds)[1:]


def _stage_splits(infos: Sequence[LayerInfo], p: int) -> list[list[list[str]]]:
    names = [i.name for i in infos]
    splits = []
    for weight in (cost.training_flops, lambda i: float(i.param_bytes)):
        values = [max(weight(i), 1.0) for i in infos]
        cuts = [0] + _partition(values, p) + [len(infos)]
        split = [names[cuts[k]:cuts[k + 1]] for k in range(p)]
        if split not in splits:
            splits.append(split)
    return splits


def _microbatches(batch: int, ways: int, p: int, want: int) -> int | None:
    """The most microbatches (at most ``want``; 1 without a pipeline) that split ``batch``
    into equal microbatches that each divide over ``ways`` devices; None if none does."""
    for micro in range(min(want, batch) if p > 1 else 1, 0, -1):
        result = check_batch_size(batch, ways, micro, what="Auto")
        if result.ok and not result.changes:
            return micro
    return None


def _mesh(p: int, d: int, m: int) -> dict:
    return ({"pipe": p} if p > 1 else {}) | {"data": d} | ({"model": m} if m > 1 else {})


def auto_plan(infos: Sequence[LayerInfo], strategy, devices, batch_size: int | None,
              device_kind: str | None) -> Plan:
    """The plan with the lowest estimated step time that fits in memory.

    Only plans that run the batch split evenly are searched: for each pipeline depth
    ``p`` the mesh spans ``p * gcd(n / p, batch)`` devices (all ``n`` when the batch
    divides) and the microbatch count is the largest (at most ``strategy.microbatches``)
    whose microbatches divide over a stage's devices.

    Args:
        infos: the model's layers in execution order (``model.layer_infos()``).
        strategy: a :class:`hybridnet.strategies.Auto` (``memory_limit``,
            ``microbatches`` are read from it).
        devices: a device count, device ids or devices.
        batch_size: global batch per step (None: 32).
        device_kind: a key of :data:`hybridnet.planner.cost.DEVICES`.

    Raises:
        ValueError: if the layers' stage= annotations are invalid, or if no mesh gives a
            plan that fits in memory, naming the closest candidate, its largest layer and
            the sizes.

    Example:
        >>> plan = auto_plan(model.layer_infos(), Auto(), 8, 128, "h100")
        >>> [(lp.name, lp.parallel) for lp in plan.layers.values() if lp.weights]
    """
    infos = list(infos)
    ids = _device_ids(devices)
    n = len(ids)
    batch = int(batch_size or 32)
    kind = device_kind or getattr(strategy, "device_kind", None) or "cpu"
    device = cost.get_device(kind)
    limit = cost.memory_limit(kind, getattr(strategy, "memory_limit", None))
    want_micro = max(int(getattr(strategy, "microbatches", 8) or 1), 1)
    weighted = [i for i in infos if i.weights]
    stage = annotated_stages(infos)
    fixed_p = max(stage.values()) + 1 if stage else None
    if stage:
        errors = stage_errors(infos, stage)
        if errors:
            raise ValueError(f"Auto: {errors[0]}")
    if fixed_p is not None and n % fixed_p:
        raise ValueError(f"Auto: the layers' stage= annotations ask for {fixed_p} pipeline "
                         f"stages, which do not divide {n} devices. Received: {n} devices")
    tried, fitting = 0, []
    rejected: list[tuple[int, str, float, dict, str]] = []  # (p, kind, bytes, mesh, why)
    baseline = None

    def evaluate(p: int, m: int, micro: int, count: int) -> None:
        nonlocal tried, baseline
        mesh = _mesh(p, count // (p * m), m)
        ctx = cost.MeshContext(mesh, "model" if m > 1 else None, "pipe" if p > 1 else None,
                               batch, micro)
        bubble = cost.bubble_fraction(p, micro, "1f1b" if p > 1 else "none")
        act_weight = 1.0 / (1.0 - bubble)
        splits = [None] if p == 1 or fixed_p else _stage_splits(infos, p)
        seen = set()
        for memory_first in (False, True):
            path = _assign(infos, ctx, device, act_weight, memory_first)
            tp = {info.name: opt.mode for info, opt, *_ in path if opt.parallel == "model"}
            key = tuple(sorted(tp.items()))
            if key in seen:
                continue
            seen.add(key)
            for stages in splits:
                tried += 1
                try:
                    plan = build_plan(infos, mesh_axes=dict(mesh), device_ids=ids[:count],
                                      tensor_parallel=tp, stages=stages, microbatches=micro,
                                      schedule="1f1b" if p > 1 else "none", device_kind=kind)
                except ValueError as e:  # e.g. stage annotations that do not fit the mesh
                    rejected.append((p, "invalid", float("inf"), mesh, str(e)))
                    continue
                check = check_plan(plan, batch, infos, what="Auto")
                if check.errors or check.changes:
                    rejected.append((p, "batch", float("inf"), mesh,
                                     (check.errors + check.changes)[0]))
                    continue
                for info, opt, cur, opts, why in path:
                    plan.layers[info.name].reason = _reason(info, opt, cur, opts, why, ctx,
                                                            device, act_weight)
                try:
                    est = cost.estimate(plan, infos, batch_size=batch, device_kind=kind,
                                        memory_limit=limit)
                except ValueError as e:
                    rejected.append((p, "memory", plan.estimates.memory_bytes_per_device,
                                     mesh, str(e)))
                    continue
                fitting.append((est.step_time_s, -count, p, plan))
                if p == 1 and m == 1 and not tp:
                    baseline = est.step_time_s

    fewer = {}  # pipeline depth -> devices its meshes span, where fewer than n
    for p in _divisors(n):
        if fixed_p is not None and p != fixed_p:
            continue
        if p > 1 and p > max(len(weighted), 1):
            continue
        count = p * math.gcd(n // p, batch)
        if count < n:
            fewer[p] = count
        micro = _microbatches(batch, count // p, p, want_micro)
        for m in _divisors(count // p):
            evaluate(p, m, micro, count)
    if not fitting:
        memory = [r for r in rejected if r[1] == "memory"]
        if memory:
            closest = min(memory, key=lambda r: r[2])
            raise ValueError(f"Auto: no plan for {n} {device.name} devices fits in "
                             f"{cost.format_bytes(limit)} per device (tried {tried} "
                             f"placements). Closest, mesh {closest[3]}: {closest[4]}")
        if rejected:
            raise ValueError(f"Auto: no valid plan for {n} devices. First refused, mesh "
                             f"{rejected[0][3]}: {rejected[0][4]}")
        raise ValueError(f"Auto: no mesh over {n} devices gives a valid plan. Received: "
                         f"batch_size={batch}, {len(infos)} layers")

    single = [f for f in fitting if f[2] == 1]
    piped = [f for f in fitting if f[2] > 1]
    best_single = min(single, key=lambda f: f[:3]) if single else None
    best_piped = min(piped, key=lambda f: f[:3]) if piped else None
    if best_single and (not best_piped or best_piped[0] >= PIPELINE_MARGIN * best_single[0]):
        step, _, _, plan = best_single
        used = cost.format_bytes(plan.estimates.memory_bytes_per_device)
        why_pipe = f"no pipeline: one stage fits ({used} of {cost.format_bytes(limit)} per device)"
        if best_piped:
            t_pipe, mesh_pipe = best_piped[0] * 1e3, best_piped[3].mesh_axes
            if best_piped[0] < step:
                why_pipe += (f"; the best pipeline ({mesh_pipe}, {t_pipe:.3g} ms) is only "
                             f"{(1 - best_piped[0] / step) * 100:.2g}% faster, less than the "
                             f"{(1 - PIPELINE_MARGIN) * 100:.0f}% a pipeline must gain")
            else:
                why_pipe += f"; the best pipeline ({mesh_pipe}) is slower ({t_pipe:.3g} ms)"
    elif fixed_p:
        step, _, _, plan = best_piped
        why_pipe = (f"{plan.num_stages} pipeline stages from the layers' stage= annotations "
                    f"({plan.schedule}, {plan.microbatches} microbatches)")
    else:
        step, _, _, plan = best_piped
        why_pipe = (f"{plan.num_stages} pipeline stages ({plan.schedule}, {plan.microbatches} "
                    f"microbatch{'es' if plan.microbatches > 1 else ''}): " + (
                        f"{best_single[0] * 1e3:.3g} ms without a pipeline" if best_single else
                        _no_single_stage(rejected, limit)))

    count = plan.num_devices
    notes = [f"Auto ({device.name}, {n} devices, batch {batch}): mesh {plan.mesh_axes} has the "
             f"lowest estimated step time, {step * 1e3:.3g} ms, of {len(fitting)} placements "
             f"that fit ({tried} tried)"]
    if baseline is not None and plan.model_axis:
        notes.append(f"pure data parallel over {fewer.get(1, n)} devices: "
                     f"{baseline * 1e3:.3g} ms ({baseline / step:.2f}x the chosen plan)")
    elif baseline is None and n > 1 and fixed_p is None:
        dp = [r for r in rejected if r[0] == 1 and set(r[3]) == {"data"}]
        if dp and dp[0][1] == "memory":
            notes.append(f"pure data parallel over {dp[0][3]['data']} devices does not fit: "
                         f"it needs {cost.format_bytes(dp[0][2])} of "
                         f"{cost.format_bytes(limit)} per device")
        elif dp:
            notes.append(f"pure data parallel is not possible: {dp[0][4]}")
    kinds = {lp.name: lp for lp in plan.layers.values()}
    conv_data = [i.name for i in infos if i.kind in CONV_KINDS and kinds[i.name].parallel == "data"]
    dense_model = [i.name for i in infos if i.kind == "Dense" and kinds[i.name].parallel == "model"]
    if conv_data and dense_model:
        notes.append("convolutions data parallel (few weights, large activations), fully "
                     "connected layers tensor parallel (many weights, small activations): "
                     "Krizhevsky's 'one weird trick' (arXiv:1404.5997)")
    notes.append(why_pipe)
    if fewer:
        spans = ", ".join(f"{c} devices with {p} stage{'s' if p > 1 else ''}"
                          for p, c in fewer.items())
        notes.append(f"a batch of {batch} does not split evenly over all {n} devices at some "
                     f"pipeline depths; those meshes span fewer: {spans}")
    changes = []
    if count < n:
        changes.append(f"Auto uses {count} of {n} devices: a batch of {batch} splits evenly "
                       f"over at most {count // plan.num_stages} devices per stage here, and "
                       f"no plan over all {n} runs it faster")
    plan.notes = notes + changes + [x for x in plan.notes if x not in notes]
    plan.changes = changes + [x for x in plan.changes if x not in changes]
    return plan


def _no_single_stage(rejected, limit) -> str:
    """Why no single-stage plan was kept, from its rejections."""
    single = [r for r in rejected if r[0] == 1]
    memory = [r for r in single if r[1] == "memory"]
    if memory:
        closest = min(memory, key=lambda r: r[2])
        return (f"no single-stage plan fits in {cost.format_bytes(limit)} per device "
                f"(closest, mesh {closest[3]}, needs {cost.format_bytes(closest[2])})")
    if single:
        return f"no single-stage plan is valid: {single[0][4]}"
    return "no single-stage plan was tried"


__all__ = ["auto_plan"]
