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

``shared_input_cpu_per_sample``: N = 1, 2, 4 members on a preprocessing-heavy image
pipeline (generated JPEGs in a temporary image folder; random crop with jitter, resize,
flip, colour jitter, normalise; one grain worker per pipeline): N independent training
processes, each with its own pipeline (what users do today), against one process whose
one pipeline feeds all N members (a stacked ``Ensemble``). Reported: preprocessing CPU
seconds per trained sample (each batch timed where a worker computed it; the workers'
whole process CPU beside it), seconds until every member finished (process start-up,
compilation and workers included on both sides, the processes of a side started
together), and each member's test accuracy (the same seeds and batches on both sides).
Keys ``cpu_per_sample_ratio_n4`` (independent / shared, target >= 3.0) and
``throughput_ratio_n4`` (shared / independent members per second, target >= 2.0).

``--mpi`` (under ``mpirun -n 4``): one member per rank, a pipeline per rank against the
share modes "all_gather", "broadcast" and "multi_broadcast" (pairs), barrier to barrier.

Usage::

    python benchmarks/ensemble.py                # table
    python benchmarks/ensemble.py --json         # one JSON object on stdout
    python benchmarks/ensemble.py --quick        # smoke mode (seconds; in one process)
    python benchmarks/ensemble.py --skip-stacked --json --figure docs/ensemble_shared_input.png
    mpirun -n 4 python benchmarks/ensemble.py --mpi --json > mpi.json
    python benchmarks/ensemble.py --from-json full.json --mpi-json mpi.json \
        --figure docs/ensemble_shared_input.png
"""
from __future__ import annotations

import argparse
import functools
import os
import json
import platform
import sys
import time

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
SHARED_TARGETS = {"cpu_per_sample_ratio_n4": 3.0, "throughput_ratio_n4": 2.0}
MPI_VARIANTS = ("independent", "all_gather", "broadcast", "multi_broadcast")


def shared_config(quick: bool) -> dict:
    """The image set, pipeline and training of the shared-input comparison."""
    if quick:
        return dict(classes=4, per_class=12, test_per_class=6, size=(48, 48), out=(16, 16),
                    batch=16, epochs=1, workers=0, members=(2,), in_process=True)
    return dict(classes=4, per_class=150, test_per_class=40, size=(320, 320), out=(32, 32),
                batch=32, epochs=2, workers=1, members=(1, 2, 4))


def make_image_sets(root: str, cfg: dict) -> tuple[str, str]:
    """JPEG folders (train, test) of synthetic shapes under ``root``."""
    from hybridnet.data import images
    common = dict(classes=cfg["classes"], size=cfg["size"], formats=("jpeg",))
    train = images.make_synthetic_image_folder(os.path.join(root, "train"),
                                               per_class=cfg["per_class"], seed=0, **common)
    test = images.make_synthetic_image_folder(os.path.join(root, "test"),
                                              per_class=cfg["test_per_class"], seed=1, **common)
    return str(train), str(test)


def train_pipeline(path: str, cfg: dict, workers: int):
    """The preprocessing-heavy pipeline: JPEG decode, random crop with jitter, resize,
    flip, colour jitter, normalise; the same seed everywhere (the same batches)."""
    from hybridnet.data import images
    return images.ImagePipeline(images.image_folder(path), [
        images.RandomCropWithJitter(area_range=(0.35, 1.0)), images.Resize(cfg["out"]),
        images.RandomFlip(), images.ColorJitter(0.4, 0.4, 0.4), images.Normalize()],
        batch_size=cfg["batch"], seed=0, worker_count=workers, drop_remainder=True)


def test_arrays(path: str, cfg: dict):
    from hybridnet.data import images
    pipeline = images.ImagePipeline(images.image_folder(path), [
        images.Resize(cfg["out"]), images.Normalize()], batch_size=64, shuffle=False,
        num_epochs=1)
    parts = list(pipeline)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_image_member(out=(32, 32), classes: int = 4):
    import hybridnet
    from hybridnet import Input, Sequential
    from hybridnet.layers import Conv2D, Dense, Flatten, MaxPooling2D
    model = Sequential([Input((*out, 3)), Conv2D(8, 3, strides=2, activation="relu"),
                        MaxPooling2D(2), Flatten(), Dense(classes)])
    model.compile(hybridnet.optimizers.Adam(3e-3),
                  hybridnet.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _member_accuracies(ens_or_model, ids, x_test, y_test) -> list:
    logs = ens_or_model.evaluate(x_test, y_test, batch_size=64, verbose=0,
                                 return_dict=True) if not hasattr(ens_or_model, "members") \
        else ens_or_model.evaluate(x_test, y_test, batch_size=64, verbose=0)
    if len(ids) == 1 or "accuracy" in logs:
        return [round(float(logs["accuracy"]), 4)]
    return [round(float(logs[f"member{i}_accuracy"]), 4) for i in ids]


def shared_worker(spec: dict) -> dict:
    """One training process of the comparison: the members ``spec["members"]`` on one
    pipeline of its own. Returns its pipeline's CPU, samples, and the members' test
    accuracy."""
    import hybridnet
    from hybridnet.ensemble import Ensemble
    cfg, ids = spec["cfg"], spec["members"]
    build = functools.partial(build_image_member, tuple(cfg["out"]), cfg["classes"])
    pipeline = train_pipeline(spec["train"], cfg, cfg["workers"])
    start = time.perf_counter()
    if len(ids) == 1:
        hybridnet.utils.set_random_seed(ids[0])
        trained = build()
        trained.fit(pipeline, epochs=cfg["epochs"], verbose=0)
    else:
        trained = Ensemble(build, n=len(ids), seed=0, stacked=True)
        trained.fit(pipeline, epochs=cfg["epochs"], verbose=0)
    fit_s = time.perf_counter() - start
    result = {"cpu": pipeline.cpu_seconds, "worker_cpu": pipeline.worker_cpu_seconds,
              "samples": pipeline.samples_seen, "members": len(ids), "fit_s": fit_s}
    pipeline.close()
    x_test, y_test = test_arrays(spec["test"], cfg)
    result["accuracy"] = _member_accuracies(trained, ids, x_test, y_test)
    return result


def _child_env() -> dict:
    env = dict(os.environ)  # one CPU device per process, on both sides
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_processes(specs: list) -> tuple[float, list]:
    """Starts one process per spec at once; (seconds until the last finished, results).
    With ``in_process`` (``--quick``: a smoke run) the specs run here, one after the
    other."""
    import subprocess
    start = time.perf_counter()
    if specs[0]["cfg"].get("in_process"):
        results = [shared_worker(spec) for spec in specs]
        return time.perf_counter() - start, results
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                               json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_child_env())
             for spec in specs]
    outs = [p.communicate() for p in procs]
    seconds = time.perf_counter() - start
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"a benchmark process failed ({p.returncode}):\n{err[-3000:]}")
    return seconds, [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _summary(seconds: float, results: list) -> dict:
    trained = sum(r["samples"] * r["members"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    worker = sum(r["worker_cpu"] or 0.0 for r in results)
    return {"seconds": round(seconds, 3), "processes": len(results),
            "cpu_seconds": round(cpu, 3), "worker_cpu_seconds": round(worker, 3),
            "trained_samples": trained, "cpu_per_sample_ms": round(1e3 * cpu / trained, 4),
            "worker_cpu_per_sample_ms": round(1e3 * worker / trained, 4),
            "test_accuracy": [a for r in results for a in r["accuracy"]]}


def shared_input_cpu_per_sample(args) -> dict:
    """N members trained by N independent processes, each with its own image pipeline
    (what users do today), against one process whose one pipeline feeds all N
    (``Ensemble``, stacked): preprocessing CPU per trained sample (every batch timed
    where a worker computed it), the time until all members finished (process start-up,
    compilation and the pipeline's workers included, on both sides), and each member's
    test accuracy."""
    import tempfile
    cfg = shared_config(args.quick)
    log = _common.eprint
    with tempfile.TemporaryDirectory() as root:
        train, test = make_image_sets(root, cfg)
        rows = {}
        for n in cfg["members"]:
            spec = {"cfg": cfg, "train": train, "test": test}
            shared = _summary(*run_processes([{**spec, "members": list(range(n))}]))
            indep = _summary(*run_processes([{**spec, "members": [i]} for i in range(n)]))
            rows[n] = {"independent": indep, "shared": shared,
                       "cpu_per_sample_ratio": round(indep["cpu_per_sample_ms"]
                                                     / shared["cpu_per_sample_ms"], 3),
                       "throughput_ratio": round(indep["seconds"] / shared["seconds"], 3)}
            log(f"shared input, {n} member(s): {rows[n]}")
    out = {"status": "measured", "by_members": {str(n): r for n, r in rows.items()},
           "config": {**cfg, "size": list(cfg["size"]), "out": list(cfg["out"]),
                      "members": list(cfg["members"]), "images": "synthetic JPEG folder",
                      "cpu_count": os.cpu_count()}}
    top = max(cfg["members"])
    out[f"cpu_per_sample_ratio_n{top}"] = rows[top]["cpu_per_sample_ratio"]
    out[f"throughput_ratio_n{top}"] = rows[top]["throughput_ratio"]
    return out


def shared_input_figure(shared: dict, path: str, mpi: dict | None = None) -> None:
    """CPU per trained sample and time until all members finished, against N."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = shared["by_members"]
    ns = sorted(int(n) for n in rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for side, marker in (("independent", "o-"), ("shared", "s-")):
        label = {"independent": "N processes, a pipeline each",
                 "shared": "1 process, 1 shared pipeline"}[side]
        a.plot(ns, [rows[str(n)][side]["cpu_per_sample_ms"] for n in ns], marker, label=label)
        b.plot(ns, [rows[str(n)][side]["seconds"] for n in ns], marker, label=label)
    if mpi:
        for k, (name, res) in enumerate(mpi["variants"].items()):
            a.plot([4], [res["cpu_per_sample_ms"]], "x^v<"[k % 4],
                   label=f"mpirun -n 4, {name} (in-process, start-up excluded)")
            b.plot([4], [res["seconds"]], "x^v<"[k % 4],
                   label=f"mpirun -n 4, {name} (in-process, start-up excluded)")
    a.set(xlabel="members N", ylabel="preprocessing CPU ms per trained sample",
          title="CPU per trained sample", xticks=ns)
    b.set(xlabel="members N", ylabel="seconds until all members finished",
          title="End-to-end time", xticks=ns)
    a.legend(fontsize=7, loc="center right")
    b.legend(fontsize=7)
    fig.suptitle(f"Shared input for ensembles ({os.cpu_count()} CPU cores)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mpi_benchmark(args) -> dict:
    """Under ``mpirun -n 4``: one member per rank, its own pipeline per rank
    ("independent") against the three share modes, each timed from a barrier to a
    barrier (compilation included, the same for all). Rank 0 returns the report."""
    import tempfile
    from mpi4py import MPI
    from hybridnet.distributed import detect_cluster
    from hybridnet.ensemble import Ensemble, mpi_share
    if detect_cluster() != "mpi":
        raise SystemExit("--mpi runs under mpirun: mpirun -n 4 python benchmarks/ensemble.py "
                         "--mpi --json")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    cfg = {**shared_config(args.quick), "workers": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = tmp if rank == 0 else None
        if rank == 0:
            make_image_sets(folder, cfg)
        name = np.frombuffer((folder or "").ljust(512).encode(), np.uint8).copy()
        comm.Bcast(name, root=0)
        base = name.tobytes().decode().strip()
        train, test = os.path.join(base, "train"), os.path.join(base, "test")
        x_test, y_test = test_arrays(test, cfg)
        build = functools.partial(build_image_member, tuple(cfg["out"]), cfg["classes"])
        warm = build()  # one-time costs of the first fit in a process, outside the timing
        warm.fit(np.zeros((cfg["batch"], *cfg["out"], 3), np.float32),
                 np.zeros(cfg["batch"], np.int32), batch_size=cfg["batch"], verbose=0)
        variants = {}
        for variant in args.mpi_variants.split(","):
            comm.Barrier()
            start = time.perf_counter()
            pipeline = train_pipeline(train, cfg, 0)
            if variant == "independent":
                import hybridnet
                hybridnet.utils.set_random_seed(rank)
                model = build()
                model.fit(pipeline, epochs=cfg["epochs"], verbose=0)
                cpu, samples, members = pipeline.cpu_seconds, pipeline.samples_seen, [model]
                ids = [rank]
            else:
                mode = {"all_gather": mpi_share.AllGather(),
                        "broadcast": mpi_share.Broadcast(root=0),
                        "multi_broadcast": mpi_share.MultiBroadcast(group_size=2)}[variant]
                ens = Ensemble(build, n=size, seed=0, stacked=False, share=mode)
                ens.fit(pipeline, epochs=cfg["epochs"], verbose=0)
                local = mode.last_streams[0].local if mode.last_streams else None
                pipe = getattr(local, "pipeline", None)
                cpu = pipe.cpu_seconds if pipe is not None else 0.0
                samples = ens.members[0].iterations * cfg["batch"]  # trained per member
                members, ids = ens.members, ens.member_ids
            comm.Barrier()
            seconds = time.perf_counter() - start
            pipeline.close()
            acc = np.zeros(size, np.float64)
            for i, m in zip(ids, members):
                acc[i] = m.evaluate(x_test, y_test, batch_size=64, verbose=0,
                                    return_dict=True)["accuracy"]
            totals = np.array([cpu, samples * len(members)], np.float64)
            summed, accs = np.zeros(2), np.zeros(size)
            comm.Reduce(totals, summed, op=MPI.SUM, root=0)
            comm.Reduce(acc, accs, op=MPI.SUM, root=0)
            variants[variant] = {"seconds": round(seconds, 3), "cpu_seconds": round(
                float(summed[0]), 3), "trained_samples": int(summed[1]),
                "cpu_per_sample_ms": round(
                    1e3 * float(summed[0]) / max(float(summed[1]), 1.0), 4),
                "test_accuracy": [round(float(a), 4) for a in accs]}
            if rank == 0:
                _common.eprint(f"mpirun -n {size}, {variant}: {variants[variant]}")
    ind = variants.get("independent")
    others = [v for v in variants if v != "independent"] if ind else []
    return {"benchmark": "ensemble_mpi", "ranks": size, "quick": args.quick,
            "variants": variants, "config": {**cfg, "size": list(cfg["size"]),
                                             "out": list(cfg["out"]),
                                             "members": size, "cpu_count": os.cpu_count()},
            **{f"cpu_per_sample_ratio_{v}": round(ind["cpu_per_sample_ms"] / max(
                variants[v]["cpu_per_sample_ms"], 1e-9), 3) for v in others},
            **{f"throughput_ratio_{v}": round(ind["seconds"] / variants[v]["seconds"], 3)
               for v in others}}


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
    p.add_argument("--figure", default=None,
                   help="write the shared-input figure (PNG) here, e.g. "
                        "docs/ensemble_shared_input.png")
    p.add_argument("--mpi", action="store_true",
                   help="under mpirun -n 4: the three share modes against a pipeline per "
                        "rank (rank 0 reports)")
    p.add_argument("--mpi-variants", default=",".join(MPI_VARIANTS),
                   help="with --mpi: which of independent, all_gather, broadcast, "
                        "multi_broadcast to run (comma-separated)")
    p.add_argument("--mpi-json", default=None,
                   help="a JSON report of --mpi to add to the figure")
    p.add_argument("--skip-stacked", action="store_true",
                   help="only the shared-input comparison")
    p.add_argument("--from-json", default=None,
                   help="draw --figure from a saved --json report instead of running")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps_per_epoch, args.epochs, args.repeats = 16, 1, 1
    for name in ("members", "steps_per_epoch", "epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    return args


def build_report(args, res, shared) -> dict:
    report = {"benchmark": "ensemble", "quick": args.quick,
              "shared_input_cpu_per_sample": shared, "targets": {}}
    for key, t in SHARED_TARGETS.items():
        if key in shared:
            report[key] = shared[key]
            report["targets"][key] = {"threshold": t, "value": shared[key],
                                      "met": shared[key] >= t}
    if res is None:
        return report
    key = f"stacked_vs_separate_n{args.members}"
    other = next(k for k in res if k.startswith("ratio_by_"))
    report.update({
        key: round(res["ratio"], 4), f"{key}_{other}": round(res[other], 4),
        "steps_per_s": {v: round(s, 1) for v, s in res["steps_per_s"].items()},
        "train_accuracy": {v: round(a, 4) for v, a in res["train_accuracy"].items()},
        "test_accuracy": res["test_accuracy"],
        "seconds": {v: [round(t, 4) for t in ts] for v, ts in res["seconds"].items()},
        "config": {
            "members": args.members, "batch_size": BATCH,
            "steps_per_epoch": args.steps_per_epoch, "epochs": args.epochs,
            "timed_steps": res["timed_steps"], "repeats": args.repeats, "stat": args.stat,
            "interleaved": True, "learning_rates": [
                LEARNING_RATES[i % len(LEARNING_RATES)] for i in range(args.members)],
            "ensemble_mesh": res["ensemble_mesh"],
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count()}})
    report["targets"].update({k: {"threshold": t, "value": round(res["ratio"], 4),
                                  "met": res["ratio"] >= t}
                              for k, t in TARGETS.items() if k == key})
    return report


def format_shared(shared: dict) -> list[str]:
    if shared.get("status") != "measured":
        return [f"shared input CPU per sample: {shared['status']}"
                + (f" ({shared['reason']})" if "reason" in shared else "")]
    rows = []
    for n, r in shared["by_members"].items():
        for side in ("independent", "shared"):
            x = r[side]
            rows.append([n, side, x["processes"], x["cpu_per_sample_ms"],
                         x["worker_cpu_per_sample_ms"], x["seconds"],
                         " ".join(f"{a:.3f}" for a in x["test_accuracy"])])
    cfg = shared["config"]
    return [f"shared input: {cfg['classes'] * cfg['per_class']} JPEGs {cfg['size']} -> crop, "
            f"resize {cfg['out']}, flip, colour jitter; batch {cfg['batch']}, "
            f"{cfg['epochs']} epoch(s), {cfg['workers']} grain worker(s) per pipeline",
            _common.format_table(["N", "side", "processes", "prep CPU ms/sample",
                                  "worker CPU ms/sample", "seconds (all done)",
                                  "member test accuracy"], rows),
            "ratios (independent / shared): " + ", ".join(
                f"N={n}: CPU {r['cpu_per_sample_ratio']}, time {r['throughput_ratio']}"
                for n, r in shared["by_members"].items())]


def format_report(args, report) -> str:
    out = []
    if "config" in report:
        cfg = report["config"]
        sps, test = report["steps_per_s"], report["test_accuracy"]
        rows = [[v, sps[v], sps[v] / sps["separate"], report["train_accuracy"][v],
                 test[v]["soft_vote"], test[v]["hard_vote"]] for v in ("stacked", "separate")]
        out += [f"ensemble steps/s ({cfg['stat']} of {cfg['repeats']} interleaved round(s), "
                f"{cfg['timed_steps']} steps of batch {BATCH} for {cfg['members']} members, "
                f"{len(jax.devices())} {jax.devices()[0].platform} device(s), ensemble mesh "
                f"{cfg['ensemble_mesh']})",
                _common.format_table(["variant", "steps/s", "/separate", "train acc",
                                      "test soft vote", "test hard vote"], rows), ""]
        if "stacked_vs_separate_n4" not in report:
            out.append(f"(stacked_vs_separate_n4 applies at --members 4; this run: "
                       f"{cfg['members']})")
    out += format_shared(report["shared_input_cpu_per_sample"])
    out += ["", "targets:"]
    for key, t in report["targets"].items():
        out.append(f"  {key:<24} {t['value']:7.3f}  >= {t['threshold']:<4}  "
                   f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(out)


def format_mpi(report: dict) -> str:
    rows = [[v, r["seconds"], r["cpu_per_sample_ms"], " ".join(
        f"{a:.3f}" for a in r["test_accuracy"])] for v, r in report["variants"].items()]
    return "\n".join([f"mpirun -n {report['ranks']}: one member per rank",
                      _common.format_table(["variant", "seconds (all done)",
                                            "prep CPU ms/sample", "member test accuracy"],
                                           rows)])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(shared_worker(json.loads(args.worker))), flush=True)
        return 0
    if args.mpi:
        report = mpi_benchmark(args)
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 0:
            _common.print_report(format_mpi(report), report, args.json)
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        mpi = None
        if args.mpi_json:
            with open(args.mpi_json) as f:
                mpi = json.load(f)
        shared_input_figure(saved["shared_input_cpu_per_sample"], args.figure
                            or "docs/ensemble_shared_input.png", mpi)
        return 0
    res = None if args.skip_stacked else stacked_vs_separate(args)
    shared = shared_input_cpu_per_sample(args)
    if args.figure:
        mpi = None
        if args.mpi_json:
            with open(args.mpi_json) as f:
                mpi = json.load(f)
        shared_input_figure(shared, args.figure, mpi)
    report = build_report(args, res, shared)
    _common.print_report(format_report(args, report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
