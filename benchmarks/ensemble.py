"""Ensembles on shared input: N homogeneous members as one vmapped step against N
separately compiled steps on the same batches.

``stacked_vs_separate_n4``: steps/s of ``Ensemble(build, n=4)`` (one stacked TrainState,
one vmapped step, members along an "ensemble" mesh axis) over steps/s of
``Ensemble(build, n=4, stacked=False)`` (each member its own compiled step; the batches
are still read once). A step is one batch for all members. Target: >= 1.5.

Members: 64 -> Dense(128, relu) -> Dense(10) (logits), Adam with per-member learning
rates, batch 64, sklearn's 8x8 digits (train part tiled; the held-out 20% gives the
soft-vote test accuracy reported next to the throughput). Both variants are built with
the same seeds, warmed up with one epoch (compilation, outside the timed region), then
timed over whole ``fit`` epochs (shuffling, batching, the host fetch of the epoch's logs
included), interleaved round-robin, summarised by the median (``--stat best``).

The comparison of preprocessing cost (CPU time per sample of one shared image pipeline
against one pipeline per member) belongs beside this one: see
``shared_input_cpu_per_sample``.

Usage::

    python benchmarks/ensemble.py                # table
    python benchmarks/ensemble.py --json         # one JSON object on stdout
    python benchmarks/ensemble.py --quick        # smoke mode (seconds)
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

BATCH = 64
TARGETS = {"stacked_vs_separate_n4": 1.5}
LEARNING_RATES = (1e-3, 2e-3, 5e-3, 1e-2)


def digits_split(steps_per_epoch: int, seed: int = 0):
    """(x_train tiled to ``BATCH * steps_per_epoch``, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    n = BATCH * steps_per_epoch
    tiled = np.resize(train, n)
    return x[tiled], y[tiled], x[test], y[test]


def build_member():
    import hybridnet
    from hybridnet import Input, Sequential
    from hybridnet.layers import Dense
    model = Sequential([Input((64,)), Dense(128, activation="relu"), Dense(10)])
    model.compile(hybridnet.optimizers.Adam(1e-3, epsilon=1e-7),
                  hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def make_ensemble(variant: str, members: int):
    from hybridnet.ensemble import Ensemble
    rates = [LEARNING_RATES[i % len(LEARNING_RATES)] for i in range(members)]
    return Ensemble(build_member, n=members, seed=0, learning_rate=rates,
                    stacked=(variant == "stacked"))


def fit_epochs(ens, x, y, epochs: int) -> float:
    """``epochs`` epochs of ``fit``; returns the mean member training accuracy (read on
    the host) after the weights are ready."""
    history = ens.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)
    jax.block_until_ready([m.get_weights() for m in ens.members[-1:]])
    return history.history["mean_accuracy"][-1]


# --------------------------------------------------------- stacked vs separate steps
def stacked_vs_separate(args) -> dict:
    log = _common.eprint
    x, y, x_test, y_test = digits_split(args.steps_per_epoch)
    ensembles, acc = {}, {}
    for variant in ("stacked", "separate"):
        ens = make_ensemble(variant, args.members)
        fit_epochs(ens, x, y, 1)  # warm-up: compiles, outside the timed region
        ensembles[variant] = ens

    def timed(variant):
        acc[variant] = fit_epochs(ensembles[variant], x, y, args.epochs)

    steps = args.epochs * args.steps_per_epoch
    log(f"{args.members} members: {args.repeats} round(s) x {steps} steps per variant")
    times = _common.interleaved({v: functools.partial(timed, v) for v in ensembles},
                                args.repeats, log)
    sps = {v: steps / _common.summarize(t, args.stat) for v, t in times.items()}
    other = "best" if args.stat == "median" else "median"
    test = {}
    for variant, ens in ensembles.items():
        logs = ens.evaluate(x_test, y_test, batch_size=BATCH, verbose=0)
        test[variant] = {"soft_vote": logs["soft_vote_accuracy"],
                         "hard_vote": logs["hard_vote_accuracy"],
                         "members": [logs[f"member{i}_accuracy"]
                                     for i in range(args.members)]}
    return {
        "ratio": sps["stacked"] / sps["separate"],
        f"ratio_by_{other}": (_common.summarize(times["separate"], other)
                              / _common.summarize(times["stacked"], other)),
        "steps_per_s": sps, "seconds": times, "train_accuracy": acc, "test_accuracy": test,
        "timed_steps": steps,
        "ensemble_mesh": dict(ensembles["stacked"]._group.runner.plan.mesh_axes)}


# ------------------------------------------------------ shared input preprocessing
def shared_input_cpu_per_sample(args) -> dict:
    """CPU time per sample of one shared image preprocessing pipeline feeding the members
    against one pipeline per member (``hybridnet.data.images``), with the members' test
    accuracy beside it. Reports its status until that pipeline is available."""
    try:
        import hybridnet.data.images  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "hybridnet.data.images is not available"}
    return {"status": "skipped", "reason": "the image pipeline comparison is not written"}


# --------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=4, help="ensemble members (default 4)")
    p.add_argument("--steps-per-epoch", type=int, default=128,
                   help="batches per epoch (default 128)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per round (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved measurement rounds per variant (default 3)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="how the rounds are summarised (default median)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 16 steps per epoch, 1 timed epoch, 1 round")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps_per_epoch, args.epochs, args.repeats = 16, 1, 1
    for name in ("members", "steps_per_epoch", "epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    return args


def build_report(args, res, shared) -> dict:
    key = f"stacked_vs_separate_n{args.members}"
    other = next(k for k in res if k.startswith("ratio_by_"))
    report = {
        "benchmark": "ensemble", "quick": args.quick,
        key: round(res["ratio"], 4), f"{key}_{other}": round(res[other], 4),
        "steps_per_s": {v: round(s, 1) for v, s in res["steps_per_s"].items()},
        "train_accuracy": {v: round(a, 4) for v, a in res["train_accuracy"].items()},
        "test_accuracy": res["test_accuracy"],
        "seconds": {v: [round(t, 4) for t in ts] for v, ts in res["seconds"].items()},
        "shared_input_cpu_per_sample": shared,
        "targets": {k: {"threshold": t, "value": round(res["ratio"], 4),
                        "met": res["ratio"] >= t} for k, t in TARGETS.items() if k == key},
        "config": {
            "members": args.members, "batch_size": BATCH,
            "steps_per_epoch": args.steps_per_epoch, "epochs": args.epochs,
            "timed_steps": res["timed_steps"], "repeats": args.repeats, "stat": args.stat,
            "interleaved": True, "learning_rates": [
                LEARNING_RATES[i % len(LEARNING_RATES)] for i in range(args.members)],
            "ensemble_mesh": res["ensemble_mesh"],
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count()}}
    return report


def format_report(args, report) -> str:
    cfg = report["config"]
    sps, test = report["steps_per_s"], report["test_accuracy"]
    rows = [[v, sps[v], sps[v] / sps["separate"], report["train_accuracy"][v],
             test[v]["soft_vote"], test[v]["hard_vote"]] for v in ("stacked", "separate")]
    out = [f"ensemble steps/s ({cfg['stat']} of {cfg['repeats']} interleaved round(s), "
           f"{cfg['timed_steps']} steps of batch {BATCH} for {cfg['members']} members, "
           f"{len(jax.devices())} {jax.devices()[0].platform} device(s), ensemble mesh "
           f"{cfg['ensemble_mesh']})",
           _common.format_table(["variant", "steps/s", "/separate", "train acc",
                                 "test soft vote", "test hard vote"], rows), "", "targets:"]
    for key, t in report["targets"].items():
        out.append(f"  {key:<24} {t['value']:7.3f}  >= {t['threshold']:<4}  "
                   f"{'met' if t['met'] else 'MISSED'}")
    if not report["targets"]:
        out.append(f"  (stacked_vs_separate_n4 applies at --members 4; this run: "
                   f"{cfg['members']})")
    shared = report["shared_input_cpu_per_sample"]
    out.append(f"shared input CPU per sample: {shared['status']}"
               + (f" ({shared['reason']})" if "reason" in shared else ""))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    res = stacked_vs_separate(args)
    shared = shared_input_cpu_per_sample(args)
    report = build_report(args, res, shared)
    _common.print_report(format_report(args, report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
