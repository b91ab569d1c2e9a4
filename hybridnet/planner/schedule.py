"""Pipeline schedules (GPipe, 1F1B) as pure data: which stage runs which microbatch's
forward or backward, in what order. Shared by the executor, the plan figure and the
benchmarks."""
from __future__ import annotations

from hybridnet.strategies import SCHEDULES  # noqa: F401  (the one list of schedules)


def _stage_ops(num_stages: int, microbatches: int, schedule: str, stage: int) -> list:
    if schedule == "gpipe":
        return [(j, "F") for j in range(microbatches)] + [(j, "B") for j in range(microbatches)]
    warmup = min(num_stages - stage - 1, microbatches)
    ops = [(j, "F") for j in range(warmup)]
    for i in range(microbatches - warmup):
        ops += [(warmup + i, "F"), (i, "B")]
    return ops + [(j, "B") for j in range(microbatches - warmup, microbatches)]


def _check_schedule(num_stages, microbatches, schedule):
    if schedule not in SCHEDULES:
        raise ValueError(f"Pipeline: unknown schedule. Expected one of {list(SCHEDULES)}. "
                         f"Received: schedule={schedule!r}")
    if not isinstance(num_stages, int) or num_stages < 1 or not isinstance(
            microbatches, int) or microbatches < 1:
        raise ValueError("Pipeline: `num_stages` and `microbatches` must be positive ints. "
                         f"Received: num_stages={num_stages!r}, microbatches={microbatches!r}")


def schedule_ticks(num_stages: int, microbatches: int, schedule: str = "gpipe") -> list:
    """The schedule on a clock: a list of ticks, each a list of ``(stage, mb, "F"|"B")``
    that run at the same time (one op per stage per tick, every op taking one tick).

    Each stage runs its op list in order (GPipe: all forwards then all backwards;
    1F1B / PipeDream-flush: ``num_stages - stage - 1`` warm-up forwards, then one
    forward one backward, then the cool-down backwards) as soon as the op's inputs
    were produced at an earlier tick.
    """
    _check_schedule(num_stages, microbatches, schedule)
    ops = [_stage_ops(num_stages, microbatches, schedule, s) for s in range(num_stages)]
    pos = [0] * num_stages
    done: set = set()
    ticks = []
    while any(pos[s] < len(ops[s]) for s in range(num_stages)):
        tick = []
        for s in range(num_stages):
            if pos[s] >= len(ops[s]):
                continue
            j, kind = ops[s][pos[s]]
            if kind == "F":
                ready = s == 0 or (s - 1, j, "F") in done
            else:
                ready = (s, j, "F") in done and (
                    s == num_stages - 1 or (s + 1, j, "B") in done)
            if ready:
                tick.append((s, j, kind))
        if not tick:  # pragma: no cover - the two schedules never deadlock
            raise RuntimeError(f"Pipeline schedule {schedule!r} deadlocked")
        for s, j, kind in tick:
            pos[s] += 1
        done.update(tick)
        ticks.append(tick)
    return ticks


def schedule_events(num_stages: int, microbatches: int, schedule: str = "gpipe") -> list:
    """The ``(stage, microbatch, "F"|"B")`` events of one training step, in dispatch order.

    Every (stage, microbatch) has exactly one "F" and one "B"; an event comes after the
    events it needs (F after the previous stage's F, B after the next stage's B and the
    stage's own F). Pure: used by the executor, the planner's figure and benchmarks.

    Example:
        >>> schedule_events(2, 2, "1f1b")[:3]
        [(0, 0, 'F'), (0, 1, 'F'), (1, 0, 'F')]
    """
    return [event for tick in schedule_ticks(num_stages, microbatches, schedule)
            for event in tick]


def peak_inflight_microbatches(num_stages: int, microbatches: int,
                               schedule: str = "gpipe") -> list[int]:
    """Per stage, the most microbatches whose stashed stage inputs are alive at once
    (forward done, backward not yet): ``microbatches`` for GPipe, at most
    ``num_stages - stage`` for 1F1B."""
    live, peak = [0] * num_stages, [0] * num_stages
    for s, _, kind in schedule_events(num_stages, microbatches, schedule):
        live[s] += 1 if kind == "F" else -1
        peak[s] = max(peak[s], live[s])
    return peak


def bubble_fraction(num_stages: int, microbatches: int, schedule: str = "gpipe") -> float:
    """Idle fraction of stage-ticks on the schedule clock (forward = backward = 1 tick)."""
    ticks = schedule_ticks(num_stages, microbatches, schedule)
    return 1.0 - 2 * num_stages * microbatches / (num_stages * len(ticks))
