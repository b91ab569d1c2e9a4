"""Parallel plans on 8 simulated devices: collective bytes, pipeline bubble, memory.

Four measurements, each next to what the planner estimated:

1. **Collective bytes per training step** of AlexNet (``examples/alexnet.py``,
   224x224x3 input, 1000 classes, batch 128, Adam) under pure data parallelism and
   under the ``Auto`` plan. The train step is lowered and compiled
   (``compiled_train_step`` below: the runner's ``train_fn(batch).lower(...).compile()``)
   from an *abstract* train state (``jax.ShapeDtypeStruct`` with the Plan's shardings):
   nothing of the 224 model is allocated or run. The collectives are read from
   ``compiled.as_text()`` (the per-device program after SPMD partitioning):

   - every instruction ``%name = <shape> <opcode>(<operands>), ...`` is indexed by name
     with its result shape (names are unique in an HLO module; parameters included);
   - for each ``all-reduce``, ``all-gather``, ``reduce-scatter``,
     ``collective-permute`` and ``all-to-all`` (and their ``-start`` forms of async
     pairs; ``-done`` is skipped so nothing is counted twice) the operand names are
     looked up and their shapes summed: ``bytes = sum(prod(dims) * dtype size)``
     (tuple shapes summed element-wise). The compiled text of XLA:CPU does not print
     operand shapes inline, hence the lookup. A collective inside a loop body would
     count once; the train step has no loops (checked: ``while`` is reported).
   - The group size comes from ``replica_groups`` (``{{0,1,..}}``, iota
     ``[G,S]<=[..]`` or ``mesh[...] {axes}`` forms).

   ``comm_bytes`` (the issue's metric) is the sum of operand bytes per device. Because
   an all-gather's operand is 1/n of what it produces, the table also gives the
   *ring-equivalent bytes sent per device* -- all-reduce ``2(n-1)/n * S``, all-gather
   ``(n-1) * operand``, reduce-scatter and all-to-all ``(n-1)/n * operand``,
   collective-permute ``operand`` -- which is what the planner's ``comm_bytes``
   estimate counts (``hybridnet/planner/cost.py``), so the estimate is compared with
   that one.

2. **Pipeline bubble** of GPipe, 4 stages x 8 microbatches, on an MLP of 4 equal
   ``Dense`` layers (``Pipeline(stages=4, microbatches=8, schedule="gpipe")``, mesh
   pipe=4 x data=2). The pipeline runner's ``profile_step`` gives per-stage busy time and
   the step's wall time: ``bubble = 1 - mean(stage busy) / wall`` (median of several
   steps), against ``(p-1)/(m+p-1)``. profile_step blocks on the host after every
   event, so stages never overlap while profiled; on simulated CPU devices that share
   the host's cores they cannot overlap anyway. Two more figures are given for
   context: the *replayed* bubble (the measured event durations placed on the
   schedule's dependency graph with every stage its own device: what the measured
   op times give with ideal overlap) and the *async* bubble (busy time from the
   profiled steps over the wall time of unprofiled, asynchronously dispatched steps).

3. **Peak memory per device** of GPipe and 1F1B on the same MLP from the pipeline
   runner's ``stage_memory_analysis`` (compiled stage programs + stashed
   microbatch inputs x in-flight microbatches), max over stages.

4. **Planner memory estimate error**: ``plan.estimates.memory_bytes_per_device`` vs the
   compiled AlexNet train step's ``memory_analysis()``: argument + output - aliased
   (donated) + temp bytes per device (the whole step's footprint, batch included).
   The sharded parameter + optimizer bytes actually allocated per device (from the
   train state's shardings) are given next to the planner's parameter + optimizer
   terms, to show which term is off.

Usage::

    python benchmarks/parallel.py            # table
    python benchmarks/parallel.py --json     # table on stderr, one JSON object on stdout
    python benchmarks/parallel.py --quick    # smoke run (seconds): 64x64 AlexNet, small MLP

Every use of model / runner internals is in the section "internals" right below the
imports (``compiled_train_step``, ``pipeline_probe``, ``schedule_ops``): when the
execution API changes, adapt those and nothing else.
"""
from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "examples"))
import _common  # noqa: E402

TARGETS = {"comm_ratio_auto_over_dp": 0.25, "bubble_abs_error_gpu": 0.05,
           "planner_memory_rel_error": 0.15}
MB = 1e6
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all")


# ------------------------------------------------------------------------- internals
# EVERY use of model or runner (executor) internals in this script is in this section,
# so that a change of the execution API is adapted here and nowhere else. The rest of
# the script uses public API only: compile(strategy=...), Model.plan, make_plan,
# layer_infos, train_state, Plan fields and the planner's cost model.

@dataclasses.dataclass
class CompiledStep:
    """One train step compiled from an abstract train state (nothing allocated)."""
    compiled: Any             # jax.stages.Compiled: as_text(), memory_analysis()
    plan: Any                 # the Plan it was compiled under
    weights_and_optimizer: list  # abstract sharded leaves: parameters + optimizer state
    batch: Any                # the abstract (sharded) input batch it was compiled for


def compiled_train_step(model, batch_size: int) -> CompiledStep:
    """Compiles the train step of ``model`` (compiled with its optimizer, loss and
    strategy) for ``batch_size`` from an abstract train state with the Plan's shardings:
    nothing of the model is allocated or run."""
    from hybridnet.execution import TrainState

    model._planned_batch_size = batch_size  # as fit does: the cost model plans for it
    model._reset_runner()
    runner = model._get_runner()
    params, state = {}, {}
    for info in model.layer_infos():
        for w, wi in info.weights.items():
            (params if wi.trainable else state).setdefault(info.name, {})[w] = (
                jax.ShapeDtypeStruct(wi.shape, jnp.dtype(wi.dtype)))
    # new_state traced abstractly gives the state's structure (and sets the runner's
    # optimizer-state shardings); train_state_sharding() gives its placement.
    abstract = jax.eval_shape(runner.new_state, params, state)
    shardings = runner.train_state_sharding()
    ts = jax.tree_util.tree_map(
        lambda sh, sub: jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), sub),
        shardings, abstract)
    assert isinstance(ts, TrainState), type(ts)
    bsh = runner.batch_sharding(batch_size)
    x = jax.ShapeDtypeStruct((batch_size, *model.inputs[0].shape[1:]), jnp.float32,
                             sharding=bsh)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=bsh)
    compiled = runner.train_fn(batch_size).lower(ts, [x], y, None).compile()
    return CompiledStep(compiled=compiled, plan=runner.plan, batch=x,
                        weights_and_optimizer=jax.tree_util.tree_leaves(
                            (ts.params, ts.opt_state)))


def pipeline_probe(model, batch_size: int) -> types.SimpleNamespace:
    """For a model compiled with a ``Pipeline`` strategy: three closures over its
    pipeline runner and a live train state (the model's own state is consumed):

    * ``step(x, y)``: one ordinary (asynchronously dispatched) train step, then a block;
    * ``profile(x, y) -> {"stage_busy_s": [...], "wall_s": s, "events": [(stage, mb,
      kind, start, end), ...]}``: one train step blocking after every event;
    * ``stage_memory() -> [{"stage", "peak_bytes": {schedule: bytes}, ...}]``: compiled
      memory per stage (after a step of ``batch_size`` has run).
    """
    runner = model._get_runner()
    fn = runner.train_fn(batch_size)
    live = [model.train_state]

    def step(x, y):
        live[0] = fn(live[0], [x], y, None)
        jax.block_until_ready(live[0])

    def profile(x, y):
        live[0], prof = runner.profile_step(live[0], [x], y, None)
        return prof

    return types.SimpleNamespace(
        step=step, profile=profile,
        stage_memory=lambda: runner.stage_memory_analysis(batch_size))


def schedule_ops(num_stages: int, microbatches: int, schedule: str, stage: int) -> list:
    """``[(microbatch, "F" | "B"), ...]`` in the order the schedule runs them on a stage."""
    from hybridnet.planner.schedule import _stage_ops
    return _stage_ops(num_stages, microbatches, schedule, stage)


# ---------------------------------------------------------------------- HLO parsing

_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e4m3fn|f8e5m2|c64|c128)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape string (``f32[128,4096]{1,0}`` or a tuple of them)."""
    return sum(_DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(shape_text))


def _operands(rest: str) -> list[str]:
    """Operand names of ``<operands>), attrs`` (the text after the opcode's '(')."""
    depth, i = 1, 0
    while depth and i < len(rest):
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    inner = re.sub(r"/\*.*?\*/", "", rest[:i - 1])  # drop /*index=5*/ comments
    names = []
    for part in inner.split(","):
        part = part.strip()
        if not part:
            continue
        names.append(part.split()[-1].lstrip("%"))  # "f32[8]{0} %x" or "%x"
    return names


def _group_size(attrs: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:
        sizes = {k.strip("' "): int(v) for k, v in
                 (kv.split("=") for kv in m.group(1).split(",") if "=" in kv)}
        axes = [a.strip("' ") for a in m.group(2).split(",") if a.strip("' ")]
        return math.prod(sizes.get(a, 1) for a in axes) if axes else num_devices
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = re.search(r"source_target_pairs=", attrs)
    if m:
        return 2
    return num_devices  # replica_groups={} : all devices


def collectives_from_hlo(text: str, num_devices: int) -> dict:
    """Every collective of a compiled (per-device) HLO module: opcode, operand bytes,
    result bytes, group size and ring-equivalent bytes sent per device."""
    shapes, instrs = {}, []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        shapes[name] = shape
        instrs.append((name, shape, opcode, rest))
    ops, loops = [], 0
    for name, shape, opcode, rest in instrs:
        if opcode == "while":
            loops += 1
        base = opcode[:-6] if opcode.endswith("-start") else opcode
        if base not in COLLECTIVES:
            continue
        names = _operands(rest)
        missing = [o for o in names if o not in shapes]
        if missing:
            raise ValueError(f"HLO parse: operands {missing} of {name} ({opcode}) not found")
        operand_bytes = sum(shape_bytes(shapes[o]) for o in names)
        n = _group_size(rest, num_devices)
        if base == "all-reduce":
            sent = 2 * (n - 1) / n * operand_bytes
        elif base == "all-gather":
            sent = (n - 1) * operand_bytes
        elif base in ("reduce-scatter", "all-to-all"):
            sent = (n - 1) / n * operand_bytes
        else:
            sent = float(operand_bytes)
        result = shape_bytes(shape)
        if opcode.endswith("-start"):  # async start: result tuple holds operand + result
            result = None
        expected = {"all-gather": n * operand_bytes, "reduce-scatter": operand_bytes / n}.get(
            base, operand_bytes)
        ops.append({"op": base, "name": name, "operand_bytes": int(operand_bytes),
                    "result_bytes": result, "group": n, "sent_bytes": sent,
                    "result_shape": re.sub(r"/\*.*?\*/", "", shape)[:60],
                    "shape_check": result is None or abs(result - expected) <= 0.01 * max(
                        result, 1)})
    by_op = {}
    for o in ops:
        d = by_op.setdefault(o["op"], {"count": 0, "operand_bytes": 0, "sent_bytes": 0.0})
        d["count"] += 1
        d["operand_bytes"] += o["operand_bytes"]
        d["sent_bytes"] += o["sent_bytes"]
    return {"operand_bytes": int(sum(o["operand_bytes"] for o in ops)),
            "sent_bytes": float(sum(o["sent_bytes"] for o in ops)), "by_op": by_op,
            "largest": sorted(ops, key=lambda o: -o["sent_bytes"])[:4], "while_loops": loops,
            "shape_check_failures": [o["name"] for o in ops if not o["shape_check"]],
            "ops": ops}


# ------------------------------------------------------------------ AlexNet (compile)

def _per_device_bytes(a) -> int:
    shape = a.sharding.shard_shape(a.shape)
    return int(np.prod(shape)) * jnp.dtype(a.dtype).itemsize


def planner_terms(model, plan, batch: int) -> dict:
    """The planner's per-device memory estimate split into its terms (same formulas as
    ``cost.layer_memory``): parameters, gradients, optimizer slots, activations."""
    from hybridnet.planner import cost
    params = grads = 0.0
    for info in model.layer_infos():
        lp = plan.layers[info.name]
        for w, wi in info.weights.items():
            shard, _ = cost.weight_shard(lp.weights.get(w), plan.mesh_axes)
            params += wi.nbytes / shard
            grads += wi.nbytes / shard if wi.trainable else 0.0
    total = float(plan.estimates.memory_bytes_per_device)
    return {"params": params, "grads": grads, "optimizer": 2 * grads,
            "activations": total - params - 3 * grads, "total": total}


def alexnet_section(quick: bool, log) -> dict:
    import hybridnet
    from alexnet import alexnet
    from hybridnet.strategies import Auto, DataParallel

    shape, classes, batch = ((64, 64, 3), 10, 64) if quick else ((224, 224, 3), 1000, 128)
    model = alexnet(shape, classes)
    n = jax.device_count()
    out = {"input_shape": list(shape), "classes": classes, "batch": batch, "plans": {}}
    for key, strategy in (("dp", DataParallel()), ("auto", Auto())):
        model.compile(hybridnet.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      metrics=["accuracy"], strategy=strategy)
        t0 = time.perf_counter()
        step = compiled_train_step(model, batch)
        compile_s = time.perf_counter() - t0
        plan, compiled, x = step.plan, step.compiled, step.batch
        if plan.summary() != model.make_plan(strategy, batch_size=batch).summary():
            raise RuntimeError(f"alexnet {key}: the compiled step's plan is not the one "
                               f"make_plan gives for batch {batch}")
        comm = collectives_from_hlo(compiled.as_text(), n)
        mem = compiled.memory_analysis()
        footprint = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                        - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        persistent = sum(_per_device_bytes(a) for a in step.weights_and_optimizer)
        terms = planner_terms(model, plan, batch)
        sharded = {f"[{','.join(map(str, info.weights[w].shape))}]": f"{info.name}.{w}"
                   for info in model.layer_infos() for w, spec in
                   plan.layers[info.name].weights.items() if any(a is not None for a in spec)}
        weight_gathers = [
            {"weight": sharded[dims], "full_bytes": o["result_bytes"],
             "shard_bytes": o["operand_bytes"]}
            for o in comm["ops"] if o["op"] == "all-gather"
            for dims in [re.sub(r"^\w+(\[[0-9,]*\]).*$", r"\1", o["result_shape"])]
            if dims in sharded]
        est = terms["total"]
        row = {
            "mesh": dict(plan.mesh_axes),
            "tensor_parallel": {lp.name: lp.mode for lp in plan.layers.values()
                                if lp.parallel == "model"},
            "compile_s": compile_s,
            "comm_operand_bytes": comm["operand_bytes"],
            "comm_sent_bytes": comm["sent_bytes"],
            "comm_estimated_bytes": float(plan.estimates.comm_bytes),
            "collectives": comm["by_op"],
            "largest_collectives": comm["largest"],
            "while_loops_in_step": comm["while_loops"],
            "hlo_shape_check_failures": comm["shape_check_failures"],
            "whole_weights_all_gathered": weight_gathers,
            "memory_compiled": {"argument": int(mem.argument_size_in_bytes),
                                "output": int(mem.output_size_in_bytes),
                                "alias": int(mem.alias_size_in_bytes),
                                "temp": int(mem.temp_size_in_bytes), "total": footprint,
                                "batch_inputs": _per_device_bytes(x),
                                "params_plus_optimizer_allocated": int(persistent)},
            "memory_estimated": terms,
            "memory_rel_error": abs(est - footprint) / footprint,
            "params_plus_optimizer_rel_error": abs(
                terms["params"] + terms["optimizer"] - persistent) / persistent,
        }
        out["plans"][key] = row
        log(f"  alexnet {key}: mesh {row['mesh']}, compiled in {compile_s:.1f}s, "
            f"collectives {comm['operand_bytes'] / MB:.1f} MB operand / "
            f"{comm['sent_bytes'] / MB:.1f} MB sent")
    dp, auto = out["plans"]["dp"], out["plans"]["auto"]
    out["ratio_operand"] = auto["comm_operand_bytes"] / dp["comm_operand_bytes"]
    out["ratio_sent"] = auto["comm_sent_bytes"] / dp["comm_sent_bytes"]
    out["ratio_estimated"] = auto["comm_estimated_bytes"] / dp["comm_estimated_bytes"]
    return out


# -------------------------------------------------------------------- pipeline (MLP)

def _replay(events, num_stages: int, microbatches: int, schedule: str) -> float:
    """Bubble of the measured event durations placed on the schedule's dependencies,
    each stage its own device (the optimizer updates, 'U', left out as in the theory)."""
    dur = {}
    for s, j, kind, a, b in events:
        if kind in ("F", "B"):
            dur[(s, j, kind)] = dur.get((s, j, kind), 0.0) + (b - a)
    p, m = num_stages, microbatches
    order = []
    for s in range(p):
        ops = [(j, k) for j, k in schedule_ops(p, m, schedule, s)]
        if s == p - 1:  # the last stage's backward runs fused with its forward
            ops = [(j, k) for j, k in ops if k == "F"]
        order.append(ops)
    end, pos, free = {}, [0] * p, [0.0] * p
    while any(pos[s] < len(order[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            if pos[s] >= len(order[s]):
                continue
            j, k = order[s][pos[s]]
            if k == "F":
                deps = [(s - 1, j, "F")] if s > 0 else []
            else:
                nxt = (s + 1, j, "F") if s + 1 == p - 1 else (s + 1, j, "B")
                deps = [(s, j, "F"), nxt]
            if any(d not in end for d in deps):
                continue
            start = max([free[s]] + [end[d] for d in deps])
            end[(s, j, k)] = free[s] = start + dur.get((s, j, k), 0.0)
            pos[s] += 1
            progressed = True
        if not progressed:  # pragma: no cover
            raise RuntimeError("replay deadlocked")
    makespan = max(end.values())
    busy = [sum(v for (s, _, _), v in dur.items() if s == st) for st in range(p)]
    return 1.0 - statistics.mean(busy) / makespan


def _mlp(width: int, depth: int):
    import hybridnet
    from hybridnet import Input, Sequential, layers
    hybridnet.utils.set_random_seed(0)
    return Sequential([Input((width,))] + [
        layers.Dense(width, activation="relu" if i < depth - 1 else None)
        for i in range(depth)], name="mlp")


def pipeline_section(quick: bool, repeats: int, log) -> dict:
    import hybridnet
    from hybridnet.planner.cost import bubble_fraction as theory_bubble
    from hybridnet.planner.schedule import bubble_fraction as tick_bubble
    from hybridnet.strategies import Pipeline

    p, m = 4, 8
    width, batch = (256, 128) if quick else (1024, 2048)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, width)).astype("float32")
    y = rng.normal(size=(batch, width)).astype("float32")
    out = {"stages": p, "microbatches": m, "width": width, "batch": batch,
           "theory": (p - 1) / (m + p - 1),
           "theory_planner": theory_bubble(p, m, "gpipe"),
           "theory_schedule_clock": tick_bubble(p, m, "gpipe"), "schedules": {}}
    for schedule in ("gpipe", "1f1b"):
        model = _mlp(width, p)
        model.compile(hybridnet.optimizers.SGD(1e-3), "mse",
                      strategy=Pipeline(stages=p, microbatches=m, schedule=schedule))
        probe = pipeline_probe(model, batch)
        plan = model.plan
        xd = jax.device_put(x)
        yd = jax.device_put(y)
        probe.step(xd, yd)  # compiles every stage program
        measured, replayed, busy_runs, walls, events0 = [], [], [], [], None
        for _ in range(repeats):
            prof = probe.profile(xd, yd)
            busy = prof["stage_busy_s"]
            measured.append(1.0 - statistics.mean(busy) / prof["wall_s"])
            replayed.append(_replay(prof["events"], p, m, schedule))
            busy_runs.append(busy)
            walls.append(prof["wall_s"])
            events0 = events0 or prof["events"]
        async_walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            probe.step(xd, yd)
            async_walls.append(time.perf_counter() - t0)
        mean_busy = statistics.median(statistics.mean(b) for b in busy_runs)
        mem_rows = probe.stage_memory()
        row = {
            "stages_layers": [s.layers for s in plan.stages],
            "mesh": dict(plan.mesh_axes),
            "bubble_measured": statistics.median(measured),
            "bubble_measured_runs": measured,
            "bubble_replayed": statistics.median(replayed),
            "bubble_async": 1.0 - mean_busy / statistics.median(async_walls),
            "wall_profiled_s": statistics.median(walls),
            "wall_async_s": statistics.median(async_walls),
            "stage_busy_s": [statistics.median(b[s] for b in busy_runs) for s in range(p)],
            "event_s": {k: statistics.median([b - a for s, j, kk, a, b in events0 if kk == k])
                        for k in ("F", "B", "U")},
            "peak_bytes": max(r["peak_bytes"][schedule] for r in mem_rows),
            "stage_memory": mem_rows,
            "planner_memory_estimate": float(plan.estimates.memory_bytes_per_device),
        }
        out["schedules"][schedule] = row
        log(f"  pipeline {schedule}: bubble measured {row['bubble_measured']:.3f}, "
            f"replayed {row['bubble_replayed']:.3f}, async {row['bubble_async']:.3f}; "
            f"peak {row['peak_bytes'] / MB:.2f} MB/device")
    return out


# ---------------------------------------------------------------------------- report

def build_report(alex: dict, pipe: dict, runtime_s: float, quick: bool) -> dict:
    dp, auto = alex["plans"]["dp"], alex["plans"]["auto"]
    g, f = pipe["schedules"]["gpipe"], pipe["schedules"]["1f1b"]
    on_cpu = jax.devices()[0].platform == "cpu"
    errors = {"alexnet_dp": dp["memory_rel_error"], "alexnet_auto": auto["memory_rel_error"]}
    errors["max"] = max(errors.values())
    notes = []
    if on_cpu:
        notes.append(
            f"CPU run: {jax.device_count()} simulated devices share {os.cpu_count()} host "
            "cores, so pipeline stages cannot overlap and the measured bubble cannot match "
            "the theory; profile_step also blocks after every event (stages serialised), so "
            "bubble_measured is ~1-1/p = 0.75 by construction. bubble_replayed puts the "
            "measured op times on the schedule with ideal overlap.")
    if quick:
        notes.append("--quick: 64x64 AlexNet (10 classes, batch 64) and a 256-wide MLP; "
                     "not the issue's configuration.")
    for key, row in (("dp", dp), ("auto", auto)):
        for o in row["whole_weights_all_gathered"]:
            notes.append(
                f"alexnet {key}: the compiled step all-gathers the whole tensor-parallel weight "
                f"{o['weight']} ({o['full_bytes'] / MB:.1f} MB on every device) instead of "
                f"moving activations; the planner's comm model assumes an activation "
                f"all-to-all/all-gather there")
        if row["hlo_shape_check_failures"]:
            notes.append(f"alexnet {key}: HLO operand/result sizes disagree for "
                         f"{row['hlo_shape_check_failures']} (parser check)")
    if auto["comm_sent_bytes"] > 2 * auto["comm_estimated_bytes"]:
        notes.append(
            f"planner comm estimate for the Auto plan is {auto['comm_estimated_bytes'] / MB:.1f}"
            f" MB sent per device, the compiled step sends ~{auto['comm_sent_bytes'] / MB:.1f}"
            f" MB (ring-equivalent)")
    t = auto["memory_estimated"]
    c = auto["memory_compiled"]
    gathered = sum(o["full_bytes"] for o in auto["whole_weights_all_gathered"])
    if auto["memory_rel_error"] > TARGETS["planner_memory_rel_error"]:
        notes.append(
            f"planner memory error (Auto) {auto['memory_rel_error']:.0%}: parameters + "
            f"optimizer {(t['params'] + t['optimizer']) / MB:.1f} MB estimated vs "
            f"{c['params_plus_optimizer_allocated'] / MB:.1f} MB allocated "
            f"({auto['params_plus_optimizer_rel_error']:.1%} apart); the transient term: "
            f"compiled temp {c['temp'] / MB:.1f} MB vs estimated gradients + activations "
            f"{(t['grads'] + t['activations']) / MB:.1f} MB"
            + (f", of which {gathered / MB:.1f} MB are whole weights all-gathered (above)"
               if gathered else ""))
    if dp["memory_rel_error"] > TARGETS["planner_memory_rel_error"]:
        t, c = dp["memory_estimated"], dp["memory_compiled"]
        notes.append(
            f"planner memory error (DP) {dp['memory_rel_error']:.0%}: compiled temp "
            f"{c['temp'] / MB:.1f} MB vs estimated gradients + activations "
            f"{(t['grads'] + t['activations']) / MB:.1f} MB")
    return {
        "benchmark": "parallel",
        "quick": quick,
        "platform": jax.devices()[0].platform,
        "devices": jax.device_count(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "jax": jax.__version__},
        "alexnet_input_shape": alex["input_shape"], "alexnet_classes": alex["classes"],
        "alexnet_batch": alex["batch"],
        "alexnet_auto_mesh": auto["mesh"],
        "alexnet_auto_tensor_parallel": auto["tensor_parallel"],
        "alexnet_comm_bytes_dp": dp["comm_operand_bytes"],
        "alexnet_comm_bytes_auto": auto["comm_operand_bytes"],
        "alexnet_comm_ratio": alex["ratio_operand"],
        "alexnet_comm_target_met": alex["ratio_operand"] <= TARGETS["comm_ratio_auto_over_dp"],
        "alexnet_comm_sent_bytes_dp": dp["comm_sent_bytes"],
        "alexnet_comm_sent_bytes_auto": auto["comm_sent_bytes"],
        "alexnet_comm_sent_ratio": alex["ratio_sent"],
        "alexnet_comm_bytes_estimated_dp": dp["comm_estimated_bytes"],
        "alexnet_comm_bytes_estimated_auto": auto["comm_estimated_bytes"],
        "alexnet_comm_estimated_ratio": alex["ratio_estimated"],
        # Busy time per stage from a blocking profile; wall time from normal, overlapped
        # (asynchronously dispatched) steps: the figure that approaches the theory on
        # hardware where stages run concurrently.
        "pipeline_bubble_measured": g["bubble_async"],
        "pipeline_bubble_serialized": g["bubble_measured"],
        "pipeline_bubble_theory": pipe["theory"],
        "pipeline_bubble_replayed": g["bubble_replayed"],
        "pipeline_bubble_async": g["bubble_async"],
        "pipeline_bubble_measured_1f1b": f["bubble_measured"],
        "pipeline_bubble_replayed_1f1b": f["bubble_replayed"],
        "pipeline_bubble_target_met": abs(g["bubble_async"] - pipe["theory"]) <= TARGETS[
            "bubble_abs_error_gpu"],
        "peak_memory_gpipe": g["peak_bytes"],
        "peak_memory_1f1b": f["peak_bytes"],
        "peak_memory_target_met": f["peak_bytes"] < g["peak_bytes"],
        "planner_memory_estimate_gpipe": g["planner_memory_estimate"],
        "planner_memory_estimate_1f1b": f["planner_memory_estimate"],
        "planner_estimate_error": errors,
        "planner_estimate_error_compared": "plan.estimates.memory_bytes_per_device vs compiled "
                                           "memory_analysis() argument + output - alias + temp "
                                           "bytes per device",
        "planner_estimate_target_met": errors["max"] <= TARGETS["planner_memory_rel_error"],
        "targets": TARGETS,
        "notes": notes,
        "details": {"alexnet": alex, "pipeline": pipe},
        "runtime_s": runtime_s,
    }


def format_report(r: dict) -> str:
    alex = r["details"]["alexnet"]
    dp, auto = alex["plans"]["dp"], alex["plans"]["auto"]
    pipe = r["details"]["pipeline"]
    g, f = pipe["schedules"]["gpipe"], pipe["schedules"]["1f1b"]
    shape = "x".join(map(str, r["alexnet_input_shape"]))
    lines = [f"hybridnet parallel benchmark: {r['devices']} x {r['platform']} devices "
             f"({r['host']['cpus']} host cores), jax {r['host']['jax']}", "",
             f"AlexNet {shape}, {r['alexnet_classes']} classes, batch {r['alexnet_batch']}, "
             f"Adam: collectives per training step per device (MB = 1e6 bytes)",
             _common.format_table(
                 ["plan", "mesh", "operand MB", "sent MB (ring)", "planner est. sent MB",
                  "mem compiled MB", "mem est. MB", "mem err"],
                 [[k, " x ".join(f"{a}={s}" for a, s in row["mesh"].items()),
                   row["comm_operand_bytes"] / MB, row["comm_sent_bytes"] / MB,
                   row["comm_estimated_bytes"] / MB, row["memory_compiled"]["total"] / MB,
                   row["memory_estimated"]["total"] / MB, f"{row['memory_rel_error']:.1%}"]
                  for k, row in (("data parallel", dp), ("Auto", auto))]),
             f"auto / dp: operand bytes {r['alexnet_comm_ratio']:.3f} (target <= "
             f"{TARGETS['comm_ratio_auto_over_dp']}: "
             f"{'met' if r['alexnet_comm_target_met'] else 'NOT met'}), ring-sent "
             f"{r['alexnet_comm_sent_ratio']:.3f}, planner estimate "
             f"{r['alexnet_comm_estimated_ratio']:.3f}",
             f"Auto tensor-parallel layers: {auto['tensor_parallel']}", ""]
    for key, row in (("dp", dp), ("auto", auto)):
        lines.append(f"collectives ({key}): " + ", ".join(
            f"{op} x{d['count']} {d['operand_bytes'] / MB:.1f} MB" for op, d in
            row["collectives"].items()))
    for key, row in (("dp", dp), ("auto", auto)):
        t, c = row["memory_estimated"], row["memory_compiled"]
        lines.append(
            f"memory terms ({key}), MB/device: compiled argument {c['argument'] / MB:.1f} "
            f"(params+optimizer allocated {c['params_plus_optimizer_allocated'] / MB:.1f}, "
            f"batch {c['batch_inputs'] / MB:.1f}) + temp {c['temp'] / MB:.1f} + unaliased "
            f"output {(c['output'] - c['alias']) / MB:.3f}; planner params+optimizer "
            f"{(t['params'] + t['optimizer']) / MB:.1f} + grads {t['grads'] / MB:.1f} + "
            f"activations {t['activations'] / MB:.1f}")
    lines += ["", f"Pipeline: MLP {pipe['width']}x{pipe['stages']} Dense, batch {pipe['batch']}, "
              f"{pipe['stages']} stages x {pipe['microbatches']} microbatches, mesh "
              f"{g['mesh']}",
              _common.format_table(
                  ["schedule", "bubble serialized", "replayed", "measured (async)", "theory",
                   "wall profiled s", "wall async s", "peak MB/device", "planner est. MB"],
                  [[k, row["bubble_measured"], row["bubble_replayed"], row["bubble_async"],
                    pipe["theory"], row["wall_profiled_s"], row["wall_async_s"],
                    row["peak_bytes"] / MB, row["planner_memory_estimate"] / MB]
                   for k, row in (("gpipe", g), ("1f1b", f))]),
              "per stage peak MB (gpipe / 1f1b): " + ", ".join(
                  f"s{row['stage']} {row['peak_bytes']['gpipe'] / MB:.2f}/"
                  f"{row['peak_bytes']['1f1b'] / MB:.2f}" for row in g["stage_memory"]),
              f"1F1B peak lower than GPipe: {r['peak_memory_target_met']}; bubble within 0.05 "
              f"of theory: {r['pipeline_bubble_target_met']}"
              + (" (CPU; the target is for a GPU)" if r["platform"] == "cpu" else ""),
              f"planner memory error max {r['planner_estimate_error']['max']:.1%} (target <= "
              f"{TARGETS['planner_memory_rel_error']:.0%}: "
              f"{'met' if r['planner_estimate_target_met'] else 'NOT met'})", ""]
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append(f"runtime {r['runtime_s']:.1f}s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (the table goes to stderr)")
    parser.add_argument("--quick", action="store_true", help="smaller shapes: a smoke run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="profiled pipeline steps (default 7, --quick 2)")
    args = parser.parse_args(argv)
    if jax.device_count() < 8:
        raise SystemExit(f"parallel.py needs 8 devices. Received: {jax.device_count()} "
                         f"(set XLA_FLAGS={_FLAG} before jax is imported)")
    repeats = args.repeats or (2 if args.quick else 7)
    log = _common.eprint
    start = time.perf_counter()
    alex = alexnet_section(args.quick, log)
    pipe = pipeline_section(args.quick, repeats, log)
    report = build_report(alex, pipe, time.perf_counter() - start, args.quick)
    text = format_report(report)
    _common.print_report(text, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
