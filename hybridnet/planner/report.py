"""A Plan for people: a text table (:func:`summary`) and a figure (:func:`save_figure`).

``Plan.summary()`` and ``Plan.save_figure(path)`` call these.

Example:
    >>> plan = make_plan(model.layer_infos(), Auto(device_kind="h100"), devices=64)
    >>> print(plan.summary())
    >>> plan.save_figure("plan.png")      # or .svg; needs `pip install hybridnet[plots]`
"""
from __future__ import annotations


import math
from pathlib import Path

import numpy as np

from hybridnet.planner.cost import format_bytes
from hybridnet.planner.feasibility import batch_split
from hybridnet.planner.schedule import schedule_ticks
from hybridnet.planner.plan import Plan
from hybridnet.planner.planner import SCHEDULES



# ------------------------------------------------------------------------- formatting

def format_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def format_spec(spec) -> str:
    """``PartitionSpec(None, 'model') -> 'P(None, model)'``; empty -> 'replicated'."""
    if spec is None:
        return "?"
    entries = list(spec)
    if not any(e is not None for e in entries):
        return "replicated"
    parts = []
    for e in entries:
        if e is None:
            parts.append("None")
        elif isinstance(e, (tuple, list)):
            parts.append("(" + ",".join(map(str, e)) + ")")
        else:
            parts.append(str(e))
    return "P(" + ", ".join(parts) + ")"


def _batch_axes(plan: Plan) -> tuple:
    axes = getattr(plan, "batch_axes", None) or (getattr(plan, "batch_axis", None),)
    return tuple(a for a in axes if a)


def _parallel_text(lp) -> str:
    if lp.parallel == "model" and lp.mode:
        return f"model/{lp.mode}"
    return lp.parallel


def _weights_text(lp) -> str:
    if not lp.weights:
        return "-"
    return ", ".join(f"{w} {format_spec(s)}" for w, s in lp.weights.items())


# ---------------------------------------------------------------------------- summary

def summary(plan: Plan) -> str:
    """The plan as a table: per layer its kind, parallelism, stage, each weight's
    PartitionSpec, per-device memory, collective bytes per step and why; then the mesh,
    stages, schedule, estimates and notes.

    Example:
        >>> print(summary(plan))
    """
    lines = []
    mesh = " x ".join(f"{a}={n}" for a, n in plan.mesh_axes.items()) or "1 device"
    lines.append(f"Plan: {plan.num_devices} devices ({plan.device_kind}), mesh {mesh}")
    batch = _batch_axes(plan)
    planned = getattr(plan, "batch_size", None)
    if planned and batch and plan.data_parallel_size > 1 and batch_split(plan, planned) == 1:
        split = f"a batch of {planned} replicated (it does not divide over {batch})"
    else:
        split = f"batch split over {batch if batch else 'nothing (replicated)'}"
    lines.append(f"  {split}; "
                 f"tensor-parallel axis: {plan.model_axis or '-'}; "
                 f"pipeline axis: {plan.pipe_axis or '-'}")
    if plan.stages:
        lines.append(f"  {len(plan.stages)} pipeline stages, {plan.microbatches} microbatches, "
                     f"schedule {plan.schedule}:")
        for st in plan.stages:
            first, last = st.layers[0], st.layers[-1]
            span = first if first == last else f"{first} .. {last}"
            lines.append(f"    stage {st.index}: devices {_ids_text(st.device_ids)}; "
                         f"{len(st.layers)} layers ({span}); "
                         f"{format_bytes(st.memory_bytes)} per device")
    else:
        lines.append(f"  no pipeline (1 stage on devices {_ids_text(plan.device_ids)}), "
                     f"microbatches {plan.microbatches}")

    header = ("Layer", "Kind", "Parallel", "Stage", "Weights (PartitionSpec)", "Mem/device",
              "Comm/step", "Reason")
    rows = [(lp.name, lp.kind, _parallel_text(lp), str(lp.stage), _weights_text(lp),
             format_bytes(lp.memory_bytes), format_bytes(lp.comm_bytes), lp.reason or "")
            for lp in plan.layers.values()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the reason runs on, unpadded
    right = {5, 6}

    def fmt(row):
        cells = [row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i])
                 for i in range(len(row) - 1)]
        return ("  ".join(cells) + "  " + row[-1]).rstrip()

    sep = "-" * min(sum(widths) + 2 * (len(widths) - 1) + 40, 200)
    lines += [sep, fmt(header), sep] + [fmt(r) for r in rows] + [sep]

    e = plan.estimates
    total_params = sum(lp.param_bytes for lp in plan.layers.values())
    lines.append(f"Estimated step time: {format_seconds(e.step_time_s)} "
                 f"(compute {format_seconds(e.compute_time_s)}, "
                 f"communication {format_seconds(e.comm_time_s)}, "
                 f"bubble {e.bubble_fraction:.1%})")
    lines.append(f"Communication per step: {format_bytes(e.comm_bytes)} per device")
    lines.append(f"Memory per device: {format_bytes(e.memory_bytes_per_device)} "
                 f"(weights {format_bytes(total_params)} unsharded)")
    if plan.notes:
        lines.append("Notes:")
        lines += [f"  - {n}" for n in plan.notes]
    return "\n".join(lines)


def _ids_text(ids) -> str:
    ids = list(ids)
    if len(ids) > 2 and ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}-{ids[-1]}"
    if len(ids) > 12:
        return ", ".join(map(str, ids[:6])) + f", ... ({len(ids)} devices)"
    return ", ".join(map(str, ids))


# ------------------------------------------------------------------------- schedule

def schedule_timeline(num_stages: int, microbatches: int, schedule: str = "gpipe") -> list:
    """The pipeline schedule on a clock (see :func:`hybridnet.planner.schedule.schedule_ticks`);
    ``schedule="none"`` is one stage running one microbatch."""
    if schedule == "none":
        schedule = "gpipe"
    return schedule_ticks(num_stages, microbatches, schedule)


# --------------------------------------------------------------------------- figure

def _mesh_grid(plan: Plan):
    """Device ids and their per-axis coordinates as a 2-D grid for drawing: rows are
    the outer axes, columns the last axis; a single axis wraps into a near-square."""
    axes = list(plan.mesh_axes) or ["data"]
    sizes = [plan.mesh_axes.get(a, 1) for a in axes] if plan.mesh_axes else [plan.num_devices]
    ids = np.array(plan.device_ids).reshape(sizes)
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1)
    flat_ids = ids.reshape(-1)
    flat_coords = coords.reshape(-1, len(sizes))
    n = len(flat_ids)
    real = [s for s in sizes if s > 1]
    if len(real) <= 1:
        cols = n if n <= 16 else int(math.ceil(math.sqrt(n)))
    else:
        cols = real[-1]
    rows = int(math.ceil(n / cols))
    return axes, flat_ids, flat_coords, rows, cols


def save_figure(plan: Plan, path) -> None:
    """Draws the plan: the device mesh coloured by pipeline stage (each device with its
    mesh coordinates), the pipeline schedule (forward/backward of each microbatch per
    stage; empty cells are the bubble) and each layer's per-device memory. The format
    follows the suffix (``.png``, ``.svg``, ``.pdf``).

    Raises:
        ImportError: if matplotlib is missing (``pip install hybridnet[plots]``).

    Example:
        >>> save_figure(plan, "plan.svg")
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch, Rectangle
    except ImportError as e:  # pragma: no cover - matplotlib is installed in tests
        raise ImportError("Plan.save_figure needs matplotlib: pip install hybridnet[plots]") from e
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"save_figure: unsupported file type. Expected a .png, .svg or .pdf "
                         f"path. Received: path={str(path)!r}")

    fig = Figure(figsize=(15, 9), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2], width_ratios=[2, 3])
    ax_mesh, ax_sched, ax_mem = (fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]),
                                 fig.add_subplot(grid[1, :]))
    cmap = _colormap()
    num_stages = max(len(plan.stages), 1)

    # mesh: one cell per device, coloured by stage
    axes, ids, coords, rows, cols = _mesh_grid(plan)
    stage_of = {}
    for st in plan.stages:
        for i in st.device_ids:
            stage_of[i] = st.index
    short = {"pipe": "p", "data": "d", "model": "m"}
    small = len(ids) > 32
    for k, (dev, co) in enumerate(zip(ids, coords)):
        r, c = divmod(k, cols)
        s = stage_of.get(int(dev), 0)
        ax_mesh.add_patch(Rectangle((c, rows - 1 - r), 0.94, 0.94, facecolor=cmap(s % 10),
                                    alpha=0.55, edgecolor="black", linewidth=0.6))
        label = f"{int(dev)}" if small else (
            f"dev {int(dev)}\n" + " ".join(f"{short.get(a, a[:1])}{int(x)}"
                                            for a, x in zip(axes, co)))
        ax_mesh.text(c + 0.47, rows - 1 - r + 0.47, label, ha="center", va="center",
                     fontsize=6 if small else 8)
    ax_mesh.set_xlim(-0.1, cols + 0.1)
    ax_mesh.set_ylim(-0.1, rows + 0.1)
    ax_mesh.set_aspect("equal")
    ax_mesh.set_xticks([])
    ax_mesh.set_yticks([])
    mesh_text = " x ".join(f"{a}={n}" for a, n in plan.mesh_axes.items())
    ax_mesh.set_title(f"Device mesh ({mesh_text}), colour = pipeline stage", fontsize=10)
    if num_stages > 1:
        ax_mesh.legend(handles=[Patch(facecolor=cmap(s % 10), alpha=0.55, edgecolor="black",
                                      label=f"stage {s}") for s in range(num_stages)],
                       loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(num_stages, 8),
                       fontsize=7, frameon=False)

    # schedule timeline
    schedule = plan.schedule if plan.schedule in SCHEDULES else "gpipe"
    micro = max(int(plan.microbatches or 1), 1)
    ticks = schedule_timeline(num_stages, micro, schedule)
    busy = set()
    for t, tick in enumerate(ticks):
        for s, j, kind in tick:
            busy.add((t, s))
            y = num_stages - 1 - s
            face = cmap(s % 10)
            ax_sched.add_patch(Rectangle((t, y), 0.96, 0.9, facecolor=face,
                                         alpha=0.9 if kind == "F" else 0.45,
                                         edgecolor="black", linewidth=0.5,
                                         hatch=None if kind == "F" else "//"))
            if len(ticks) <= 64:
                ax_sched.text(t + 0.48, y + 0.45, f"{kind}{j}", ha="center", va="center",
                              fontsize=7)
    for t in range(len(ticks)):
        for s in range(num_stages):
            if (t, s) not in busy:
                ax_sched.add_patch(Rectangle((t, num_stages - 1 - s), 0.96, 0.9,
                                             facecolor="0.92", edgecolor="0.75", linewidth=0.4))
    ax_sched.set_xlim(0, max(len(ticks), 1))
    ax_sched.xaxis.get_major_locator().set_params(integer=True)
    ax_sched.set_ylim(0, num_stages)
    ax_sched.set_yticks([num_stages - 1 - s + 0.45 for s in range(num_stages)])
    ax_sched.set_yticklabels([f"stage {s}" for s in range(num_stages)])
    ax_sched.set_xlabel("time slot (F = forward, B = backward of microbatch j; grey = idle)")
    e = plan.estimates
    ax_sched.set_title(f"Schedule: {schedule}, {micro} microbatches, bubble "
                       f"{e.bubble_fraction:.1%}; est. step {format_seconds(e.step_time_s)}",
                       fontsize=10)

    # memory per layer
    layers = list(plan.layers.values())
    colours = {"data": "#4C72B0", "model": "#DD8452", "none": "#A0A0A0"}
    xs = np.arange(len(layers))
    ax_mem.bar(xs, [lp.memory_bytes / 2 ** 20 for lp in layers],
               color=[colours.get(lp.parallel, "#55A868") for lp in layers],
               edgecolor=[cmap(lp.stage % 10) for lp in layers], linewidth=1.2)
    ax_mem.set_xticks(xs)
    ax_mem.set_xticklabels([lp.name for lp in layers], rotation=60, ha="right", fontsize=7)
    ax_mem.set_ylabel("memory per device (MB)")
    ax_mem.legend(handles=[Patch(facecolor=c, label=n) for n, c in colours.items()],
                  fontsize=8, title="parallelism", title_fontsize=8)
    ax_mem.set_title(f"Per-layer memory per device (total "
                     f"{format_bytes(e.memory_bytes_per_device)}; comm "
                     f"{format_bytes(e.comm_bytes)} per step)", fontsize=10)
    fig.suptitle(f"hybridnet plan: {plan.num_devices} x {plan.device_kind}", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=suffix, dpi=110)


def _colormap():
    from matplotlib import colormaps
    return colormaps["tab10"]


__all__ = ["summary", "save_figure", "schedule_timeline", "format_bytes", "format_spec"]
