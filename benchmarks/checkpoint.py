"""Asynchronous training checkpoints: step-time overhead, save and restore throughput.

A model of about 200 MB of parameters (an MLP 1024 -> 4 x Dense(4096, relu) -> Dense(10),
54.6 M float32 parameters, 218 MB) with Adam (two more copies: 655 MB of TrainState) is
trained side by side in one process, interleaved, by

* ``none``: ``fit`` with no checkpointing (a no-op batch callback, so every arm pays the
  same per-batch callback cost and the difference is the checkpoint alone);
* ``async``: ``fit`` with a ``hybridnet.checkpoint.CheckpointManager`` save every
  ``--every`` steps (default 50): ``save`` returns once the arrays are off the devices,
  the files are written in the background while training goes on;
* ``sync``: the same saves, written before training continues (``async_save=False``).

The overhead is each arm's time per step over ``none``'s (``async_overhead`` = 0.03
means 3% slower; the target is under 5% at one checkpoint per 50 steps). On a shared,
loaded machine the arms' times vary more than that between rounds, so the direct measure
is reported too: ``async_blocked_share``, the share of the async arm's time spent inside
``save`` calls (copying, and waiting for the previous save when it is still being
written: on a CPU backend the background write competes with the training step for the
same cores). Before each save the callback waits for the steps still queued on the
device (JAX dispatches ahead); that wait is compute the loop owes anyway and is
reported apart (``step_wait_before_save_s``). A save still being written when the timed
steps end is waited for outside the timed region and reported as ``async_final_wait_s``.

Throughput, on the trained state: a complete save (``save`` + wait) and a restore
(into the model's own plan) in MB/s of TrainState, against ``model.save`` (one ``.hnet``
file with the optimizer state, written by the chief) and ``load_model``.

Usage::

    python benchmarks/checkpoint.py               # table
    python benchmarks/checkpoint.py --json        # one JSON object on stdout
    python benchmarks/checkpoint.py --quick       # smoke mode (a tiny model, seconds)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

INPUT, CLASSES = 1024, 10
TARGET_OVERHEAD = 0.05  # at one checkpoint per 50 steps


def build_model(width: int, depth: int, seed: int = 0):
    import hybridnet
    from hybridnet import layers
    hybridnet.utils.set_random_seed(seed)
    inputs = hybridnet.Input((INPUT,))
    h = inputs
    for i in range(depth):
        h = layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
    outputs = layers.Dense(CLASSES, name="logits")(h)
    model = hybridnet.Model(inputs, outputs)
    model.compile(hybridnet.optimizers.Adam(1e-4),
                  hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def state_bytes(model) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(model.train_state))


def param_bytes(model) -> int:
    return sum(a.size * a.dtype.itemsize
               for a in jax.tree_util.tree_leaves(model.train_state.params))


def _callback(manager, every):
    from hybridnet import callbacks

    class SaveEvery(callbacks.Callback):
        """Saves every ``every`` batches through ``manager`` (None: a no-op batch hook);
        records how long each ``save`` call held the training loop."""

        def __init__(self):
            super().__init__()
            self.batches, self.blocked, self.step_wait = 0, [], []

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if manager is not None and self.batches % every == 0:
                start = time.perf_counter()
                jax.block_until_ready(self.model.train_state)  # the steps queued
                ready = time.perf_counter()
                manager.save(self.model)
                self.step_wait.append(ready - start)
                self.blocked.append(time.perf_counter() - ready)
    return SaveEvery()


def timed_fit(model, x, y, batch, manager, every) -> tuple[float, list, list]:
    """Seconds of one fit epoch (the timed steps), the seconds each ``save`` call held
    the loop and those spent before it waiting for the steps queued."""
    callback = _callback(manager, every)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True,
              callbacks=[callback])
    jax.block_until_ready(model.train_state.params)
    elapsed = time.perf_counter() - start
    return elapsed, callback.blocked, callback.step_wait


def throughput(model, work: str, repeats: int) -> dict:
    """Seconds of a complete checkpoint save / restore and of ``model.save`` /
    ``load_model`` (each the best of ``repeats``)."""
    import hybridnet
    from hybridnet.checkpoint import CheckpointManager
    times = {"checkpoint_save": [], "checkpoint_restore": [], "model_save": [],
             "model_load": []}
    for r in range(repeats):
        directory = os.path.join(work, f"throughput_{r}")
        manager = CheckpointManager(directory, max_to_keep=1)
        start = time.perf_counter()
        manager.save(model, step=1)
        manager.wait_until_finished()
        times["checkpoint_save"].append(time.perf_counter() - start)
        jax.block_until_ready(model.train_state)
        start = time.perf_counter()
        manager.restore(model)
        jax.block_until_ready(model.train_state)
        times["checkpoint_restore"].append(time.perf_counter() - start)
        manager.close()
        shutil.rmtree(directory)
        path = os.path.join(work, f"model_{r}.hnet")
        start = time.perf_counter()
        model.save(path)
        times["model_save"].append(time.perf_counter() - start)
        start = time.perf_counter()
        loaded = hybridnet.models.load_model(path)
        jax.block_until_ready(loaded.train_state)
        times["model_load"].append(time.perf_counter() - start)
        os.remove(path)
        del loaded
    return times


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=4096, help="hidden width (default 4096)")
    p.add_argument("--depth", type=int, default=4, help="hidden layers (default 4)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--steps", type=int, default=100,
                   help="timed steps per measurement, one epoch (default 100)")
    p.add_argument("--every", type=int, default=50,
                   help="steps between checkpoints (default 50)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved measurement rounds per arm (default 2)")
    p.add_argument("--stat", choices=("median", "best"), default="median")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: width 128, 8 steps, a checkpoint every 4, 1 round")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.steps, args.every, args.repeats = 128, 8, 4, 1
    for name in ("width", "depth", "batch", "steps", "every", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1. Received: {getattr(args, name)}")
    return args


def run(args) -> dict:
    from hybridnet.checkpoint import CheckpointManager
    log = _common.eprint
    work = args.dir or tempfile.mkdtemp(prefix="hybridnet_ckpt_bench_")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch * args.steps, INPUT)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=(args.batch * args.steps,)).astype(np.int32)
    model = build_model(args.width, args.depth)
    managers = {"none": None,
                "async": CheckpointManager(os.path.join(work, "async"), max_to_keep=2),
                "sync": CheckpointManager(os.path.join(work, "sync"), max_to_keep=2,
                                          async_save=False)}
    log(f"model: {param_bytes(model) / 1e6:.1f} MB of parameters, "
        f"{state_bytes(model) / 1e6:.1f} MB of TrainState; warm-up epoch")
    timed_fit(model, x, y, args.batch, None, args.every)  # compiles, outside the timing
    for manager in managers.values():  # a first save starts orbax's threads: not timed
        if manager is not None:
            manager.save(model)
            manager.wait_until_finished()
    seconds = {arm: [] for arm in managers}
    blocked = {arm: [] for arm in managers}
    step_wait = {arm: [] for arm in managers}
    final_wait = []
    for r in range(args.repeats):
        for arm, manager in managers.items():
            elapsed, held, waited = timed_fit(model, x, y, args.batch, manager, args.every)
            seconds[arm].append(elapsed)
            blocked[arm].extend(held)
            step_wait[arm].extend(waited)
            if manager is not None:
                start = time.perf_counter()
                manager.wait_until_finished()  # outside the timed region
                if arm == "async":
                    final_wait.append(time.perf_counter() - start)
            log(f"  round {r + 1}/{args.repeats} {arm}: {elapsed:.3f}s")
    for manager in managers.values():
        if manager is not None:
            manager.close()
    log("throughput: checkpoint save/restore vs model.save/load_model")
    io = throughput(model, work, max(1, args.repeats))
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, "blocked": blocked, "step_wait": step_wait,
            "final_wait": final_wait, "io": io,
            "state_bytes": state_bytes(model), "param_bytes": param_bytes(model)}


def build_report(args, res) -> dict:
    step = {arm: _common.summarize(t, args.stat) / args.steps
            for arm, t in res["seconds"].items()}
    mb = res["state_bytes"] / 1e6
    best = {k: min(v) for k, v in res["io"].items()}
    async_overhead = step["async"] / step["none"] - 1
    return {
        "benchmark": "checkpoint",
        "quick": args.quick,
        "config": {"width": args.width, "depth": args.depth, "batch": args.batch,
                   "steps": args.steps, "every": args.every, "repeats": args.repeats,
                   "stat": args.stat, "devices": jax.device_count(),
                   "backend": jax.default_backend(), "platform": platform.platform(),
                   "jax": jax.__version__, "orbax_checkpoint": _orbax_version()},
        "param_mb": round(res["param_bytes"] / 1e6, 2),
        "state_mb": round(mb, 2),
        "step_s": step,
        "async_overhead": async_overhead,
        "sync_overhead": step["sync"] / step["none"] - 1,
        "async_save_blocked_s": _mean(res["blocked"]["async"]),
        "async_save_calls_s": res["blocked"]["async"],
        "step_wait_before_save_s": _mean(res["step_wait"]["async"] + res["step_wait"]["sync"]),
        "async_blocked_share": sum(res["blocked"]["async"]) / sum(res["seconds"]["async"]),
        "sync_save_blocked_s": _mean(res["blocked"]["sync"]),
        "async_final_wait_s": _mean(res["final_wait"]),
        "checkpoint_save_mb_per_s": mb / best["checkpoint_save"],
        "checkpoint_restore_mb_per_s": mb / best["checkpoint_restore"],
        "model_save_mb_per_s": mb / best["model_save"],
        "model_load_mb_per_s": mb / best["model_load"],
        "checkpoint_save_vs_model_save": best["model_save"] / best["checkpoint_save"],
        "checkpoint_restore_vs_load_model": best["model_load"] / best["checkpoint_restore"],
        "seconds": res["seconds"],
        "io_seconds": res["io"],
        "targets": {"async_overhead": {"value": async_overhead, "target": TARGET_OVERHEAD,
                                       "met": bool(async_overhead < TARGET_OVERHEAD),
                                       "applies": args.every == 50 and not args.quick}},
    }


def _mean(values) -> float:
    return float(np.mean(values)) if values else 0.0


def _orbax_version() -> str:
    from importlib.metadata import version
    return version("orbax-checkpoint")


def format_report(args, r) -> str:
    rows = [[arm, r["step_s"][arm] * 1e3,
             "" if arm == "none" else f"{r[f'{arm}_overhead'] * 100:+.1f}%",
             "" if arm == "none" else r[f"{arm}_save_blocked_s"]]
            for arm in ("none", "async", "sync")]
    table = _common.format_table(["arm", "ms/step", "overhead", "save held loop s"], rows)
    io = _common.format_table(
        ["", "MB/s"],
        [["checkpoint save (async, complete)", r["checkpoint_save_mb_per_s"]],
         ["checkpoint restore", r["checkpoint_restore_mb_per_s"]],
         ["model.save (.hnet)", r["model_save_mb_per_s"]],
         ["load_model (.hnet)", r["model_load_mb_per_s"]]])
    target = r["targets"]["async_overhead"]
    return (f"checkpoint: {r['param_mb']} MB of parameters, {r['state_mb']} MB of "
            f"TrainState, a checkpoint every {args.every} of {args.steps} steps, "
            f"{r['config']['devices']} {r['config']['backend']} device(s)\n{table}\n"
            f"async: {r['async_blocked_share'] * 100:.1f}% of the loop's time inside save()"
            f"\n\n{io}\n"
            f"targets: async overhead {target['value'] * 100:.1f}% < 5% "
            f"{'met' if target['met'] else 'not met'}"
            f"{'' if target['applies'] else ' (does not apply to this configuration)'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    report = build_report(args, run(args))
    _common.print_report(format_report(args, report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
