"""Small helpers shared by the scripts under ``benchmarks/``.

Conventions (see DESIGN.md): a benchmark prints a table and, with ``--json``,
exactly one JSON object on stdout; both sides of a comparison run in the same
process, interleaved, and we quote ratios rather than absolute times.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np

# AlexNet's convolutions (torchvision): name, input H=W, Cin, kernel, Cout,
# stride, padding; the kernel benchmarks run them at batch 128.
ALEXNET_CONVS = [
    ("conv1", 224, 3, 11, 64, 4, 2),
    ("conv2", 27, 64, 5, 192, 1, 2),
    ("conv3", 13, 192, 3, 384, 1, 1),
    ("conv4", 13, 384, 3, 256, 1, 1),
    ("conv5", 13, 256, 3, 256, 1, 1),
]
# GNMT's LSTM layer
GNMT_LSTM = dict(batch=128, steps=50, input=1024, hidden=1024)


def digits_dataset(num_samples: int, image: bool = False, seed: int = 0):
    """sklearn's 8x8 digits (1797 samples, 10 classes), tiled to ``num_samples``.

    Returns ``(x, y)``: ``x`` float32 in [0, 1], shape ``(n, 64)`` or, with
    ``image=True``, ``(n, 8, 8, 1)`` (NHWC); ``y`` int32 labels, shape ``(n,)``.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    reps = -(-num_samples // len(x))
    order = np.random.default_rng(seed).permutation(len(x) * reps) % len(x)
    x, y = x[order[:num_samples]], y[order[:num_samples]]
    if image:
        x = x.reshape(-1, 8, 8, 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def interleaved(runners: dict[str, Callable[[], object]], repeats: int,
                log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Times each runner ``repeats`` times, round-robin, so slow phases of a noisy
    machine hit every side alike. Returns name -> list of seconds."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            if log:
                log(f"  round {r + 1}/{repeats} {name}: {elapsed:.3f}s")
    return times


def summarize(seconds: Sequence[float], stat: str) -> float:
    if stat == "best":
        return min(seconds)
    if stat == "median":
        return statistics.median(seconds)
    raise ValueError(f"stat must be 'best' or 'median'. Received: stat={stat!r}")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def emit_json(obj: dict) -> None:
    """Prints exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_report(text: str, report: dict, as_json: bool) -> None:
    """The table on stdout; with ``as_json``, the table on stderr and the
    report as one JSON object on stdout."""
    if as_json:
        eprint(text)
        emit_json(report)
    else:
        print(text)


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
