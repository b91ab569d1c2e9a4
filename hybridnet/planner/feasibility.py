"""Whether a plan can run: stage dependencies, and a batch size against the data axes and
the microbatches. Pure: one check shared by plan construction, Auto's search and fit.

A check returns errors (what cannot run: fit refuses before compiling) and changes (what
runs differently from what was asked, such as a batch that is replicated instead of
split: the plan's notes and a warning at fit say so).

Example:
    >>> result = check_plan(plan, batch_size=12, infos=model.layer_infos())
    >>> result.errors, result.changes
    ((), ("a batch of 12 samples does not divide over the 8 data-parallel devices ...",))
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from hybridnet.planner.graph_info import LayerInfo
from hybridnet.planner.plan import Plan


@dataclasses.dataclass(frozen=True)
class Feasibility:
    """Errors (the plan cannot run) and changes (it runs, differently from the request)."""
    errors: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def __add__(self, other: "Feasibility") -> "Feasibility":
        return Feasibility(self.errors + other.errors, self.changes + other.changes)

    def raise_errors(self) -> "Feasibility":
        """Raises ``ValueError`` with every error; returns ``self`` when there is none."""
        if self.errors:
            raise ValueError("\n".join(self.errors))
        return self


# ---------------------------------------------------------------------------- stages

def assign_stages(infos: Sequence[LayerInfo], fixed: Mapping[str, int]) -> dict[str, int]:
    """Every layer's pipeline stage: ``fixed[name]`` where given, else the latest stage of
    the layers it reads (0 for a layer that reads only model inputs). ``infos`` must be in
    a topological order (``model.layer_infos()`` is)."""
    stage: dict[str, int] = {}
    for info in infos:
        if info.name in fixed:
            stage[info.name] = int(fixed[info.name])
        else:
            stage[info.name] = max((stage[n] for n in info.inbound if n in stage), default=0)
    return stage


def annotated_stages(infos: Sequence[LayerInfo]) -> dict[str, int] | None:
    """Stages from the layers' ``stage=`` annotations (None when no layer has one)."""
    fixed = {i.name: i.stage for i in infos if i.stage is not None}
    return assign_stages(infos, fixed) if fixed else None


def stage_errors(infos: Sequence[LayerInfo], stage: Mapping[str, int]) -> list[str]:
    """One message per layer that reads the output of a later stage. Depends on the
    graph's edges only, not on the order of a merge layer's inputs."""
    errors = []
    for info in infos:
        if info.name not in stage:
            continue
        for src in info.inbound:
            if src in stage and stage[src] > stage[info.name]:
                errors.append(
                    f"Layer '{info.name}' (stage {stage[info.name]}) reads the output of layer "
                    f"'{src}' (stage {stage[src]}); a stage can only use outputs of its own or "
                    f"earlier stages. Received: stage={stage[info.name]} for '{info.name}', "
                    f"stage={stage[src]} for '{src}'")
    return errors


# ----------------------------------------------------------------------------- batch

def pipelined(plan: Plan) -> bool:
    """Whether the plan runs pipeline stages (and so microbatches)."""
    return len(plan.stages) > 1


def microbatches_for(plan: Plan, batch_size: int) -> int:
    """Microbatches a batch runs as: the plan's count, or one for a batch it does not
    divide (the last, smaller batch of an epoch)."""
    m = max(int(plan.microbatches or 1), 1) if pipelined(plan) else 1
    return m if batch_size % m == 0 else 1


def batch_split(plan: Plan, batch_size: int) -> int:
    """How many ways each (micro)batch is split inside a stage: the data-parallel size,
    or 1 when it does not divide (every device of the stage computes the whole batch)."""
    per = batch_size // microbatches_for(plan, batch_size)
    dp = plan.data_parallel_size
    return dp if per >= dp and per % dp == 0 else 1


def check_batch_size(batch_size: int, data_ways: int, microbatches: int = 1, *,
                     partial: bool = False, what: str = "fit",
                     axes: Sequence[str] = ()) -> Feasibility:
    """Whether a batch runs split over ``data_ways`` devices in ``microbatches`` equal
    microbatches.

    Args:
        batch_size: samples per step.
        data_ways: devices each (micro)batch is split over (within one stage).
        microbatches: pipeline microbatches (1 without a pipeline).
        partial: the batch is the last, smaller one of an epoch: what the configured batch
            must satisfy only changes how this one runs.
        what: the caller, for messages ("fit", "Pipeline", ...).
        axes: the mesh axes the batch is split over, for messages.

    A batch that does not divide runs replicated: every device of a stage computes it
    whole.

    Returns:
        A :class:`Feasibility`.
    """
    errors, changes = [], []
    m = max(int(microbatches), 1)
    where = f" (mesh axes {tuple(axes)})" if axes else ""
    if m > 1 and batch_size % m:
        if not partial:
            errors.append(f"{what}: the batch must split into {m} equal microbatches. "
                          f"Received: batch_size={batch_size}, microbatches={m}")
            return Feasibility(tuple(errors))
        changes.append(f"{what}: the last batch ({batch_size} samples) does not split into "
                       f"{m} microbatches: it runs as one")
        m = 1
    per = batch_size // m
    if per % data_ways == 0:
        return Feasibility((), tuple(changes))
    if per < data_ways and not partial:
        if m > 1:
            errors.append(f"{what}: each microbatch ({per} samples) must be at least the "
                          f"data-parallel size {data_ways}{where}. Received: "
                          f"batch_size={batch_size}, microbatches={m}")
        else:
            errors.append(f"{what}: `batch_size` must be at least the number of devices the "
                          f"batch is split over ({data_ways}){where}. Received: "
                          f"batch_size={batch_size}")
        return Feasibility(tuple(errors), tuple(changes))
    first = f"the last batch of {batch_size} samples" if partial else \
        f"a batch of {batch_size} samples"
    if m > 1:
        first += f" (microbatches of {per})"
    result = "every device of a stage computes it whole (replicated, not split)"
    fix = "" if partial else f"; a batch size that is a multiple of {data_ways * m} is split"
    changes.append(f"{what}: {first} does not divide over the {data_ways} "
                   f"data-parallel devices{where}: {result}{fix}")
    return Feasibility(tuple(errors), tuple(changes))


def check_plan(plan: Plan, batch_size: int | None = None,
               infos: Sequence[LayerInfo] | None = None, *, partial: bool = False,
               what: str = "fit") -> Feasibility:
    """Whether ``plan`` runs ``batch_size`` (and, given ``infos``, whether its stages
    respect the graph's dependencies). The one check behind plan construction, Auto's
    search and fit.

    Example:
        >>> check_plan(plan, 12, model.layer_infos()).raise_errors().changes
    """
    result = Feasibility()
    uneven = getattr(plan, "uneven_batch", "replicate")
    if uneven != "replicate":
        result += Feasibility((f"{what}: the plan's `uneven_batch` must be 'replicate' (a "
                               f"batch that does not divide runs whole on every device of "
                               f"a stage; padding is not implemented). Received: "
                               f"uneven_batch={uneven!r}",))
    if infos is not None and pipelined(plan):
        stage = {n: lp.stage for n, lp in plan.layers.items()}
        result += Feasibility(tuple(f"{what}: {e}" for e in stage_errors(infos, stage)))
    if batch_size is not None:
        if batch_size < 1:
            return result + Feasibility((f"{what}: `batch_size` must be a positive int. "
                                         f"Received: batch_size={batch_size}",))
        m = int(plan.microbatches or 1) if pipelined(plan) else 1
        result += check_batch_size(batch_size, plan.data_parallel_size, m, partial=partial,
                                   what=what, axes=plan.batch_axes)
    return result


__all__ = ["Feasibility", "annotated_stages", "assign_stages", "batch_split",
           "check_batch_size", "check_plan", "microbatches_for", "pipelined", "stage_errors"]
