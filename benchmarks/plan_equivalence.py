"""Every parallel plan computes the one-device result: a matrix of model family x plan.

Each family is trained with SGD for one epoch of 3 steps (batches 16, 16 and a partial
6) on 8 simulated CPU devices under each plan, from the same initial weights as the
one-device run, then evaluated and asked to predict (batch 16: the partial batch again).
A cell is the largest relative difference from the one-device run over the final
weights (BatchNorm moving statistics included), the epoch's logged loss and metrics,
``evaluate``'s results and ``predict``'s outputs: ``max|a - b| / max|b|`` per array
(for a weight, ``max|b|`` over its layer's weights), the max over arrays. fp32; the
tolerance is 1e-5.

Families (sizes chosen not to divide the mesh axes):

* ``resnet_bn``: a residual CNN with BatchNormalization (the first one normalises the
  raw input), stage cuts falling inside the residual branch.
* ``mlp_ln``: Dense -> LayerNormalization -> Dropout(rate 0) -> Dense, per-sample
  weights and a ``mean_with_sample_weight`` loss.
* ``seq2seq``: two token inputs with ``mask_zero`` Embeddings and variable lengths,
  a Bidirectional LSTM encoder, an LSTM decoder, Attention, and two outputs (per-token
  logits, masked; one class per sequence).

Under a pipeline with ``m > 1`` microbatches, BatchNormalization normalises each
microbatch with its own statistics (GPipe's choice), so the ``resnet_bn`` weights
differ from one device by design; there the cell checks the moving statistics of the
BatchNormalization that reads the raw input (its microbatch statistics combine to the
whole batch's exactly), and the difference of everything else is listed apart.

Usage::

    python benchmarks/plan_equivalence.py            # the full matrix (minutes)
    python benchmarks/plan_equivalence.py --quick    # one pipeline plan (a smoke run)
    python benchmarks/plan_equivalence.py --json     # table on stderr, JSON on stdout
"""
from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import hybridnet  # noqa: E402
from hybridnet import Input, Model, layers  # noqa: E402
from hybridnet.strategies import Auto, DataParallel, Hybrid, ModelParallel, Pipeline  # noqa

TOLERANCE = 1e-5
BATCH = 16
SAMPLES = 38  # 16 + 16 + a partial batch of 6


# ------------------------------------------------------------------------- families

def resnet_bn():
    hybridnet.utils.set_random_seed(0)
    x = Input((6, 6, 3))
    h = layers.BatchNormalization(name="input_bn")(x)
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv0")(h)
    r = layers.Conv2D(6, 3, padding="same", name="branch_conv")(h)
    r = layers.BatchNormalization(name="branch_bn")(r)
    r = layers.Activation("relu", name="branch_relu")(r)
    h = layers.Add(name="add")([h, r])
    h = layers.Conv2D(5, 3, padding="same", name="conv1")(h)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(7, name="out")(h)
    return Model(x, out)


def mlp_ln():
    hybridnet.utils.set_random_seed(0)
    x = Input((10,))
    h = layers.Dense(18, activation="relu", name="d0")(x)
    h = layers.LayerNormalization(name="ln")(h)
    h = layers.Dropout(0.0, name="drop")(h)
    h = layers.Dense(14, activation="tanh", name="d1")(h)
    h = layers.Dense(12, activation="relu", name="d2")(h)
    out = layers.Dense(5, name="out")(h)
    return Model(x, out)


def seq2seq():
    hybridnet.utils.set_random_seed(0)
    src = Input((7,), dtype="int32", name="src")
    tgt = Input((6,), dtype="int32", name="tgt")
    enc = layers.Embedding(23, 10, mask_zero=True, name="src_emb")(src)
    enc = layers.Bidirectional(layers.LSTM(6, return_sequences=True), name="encoder")(enc)
    dec = layers.Embedding(23, 12, mask_zero=True, name="tgt_emb")(tgt)
    dec = layers.LSTM(12, return_sequences=True, name="decoder")(dec)
    ctx = layers.Attention(name="attention")([dec, enc])
    merged = layers.Concatenate(name="merge")([dec, ctx])
    tokens = layers.Dense(23, name="tokens")(merged)
    summary = layers.LSTM(5, name="summary")(ctx)
    cls = layers.Dense(3, name="cls")(summary)
    return Model([src, tgt], [tokens, cls])


def data(family: str, n: int = SAMPLES, seed: int = 0) -> dict:
    """``fit`` keyword arguments (x, y, and sample weights where the family uses them)."""
    rng = np.random.default_rng(seed)
    if family == "resnet_bn":
        return dict(x=(rng.normal(size=(n, 6, 6, 3)) * 2 + 1).astype("float32"),
                    y=rng.integers(0, 7, n).astype("int32"))
    if family == "mlp_ln":
        return dict(x=rng.normal(size=(n, 10)).astype("float32"),
                    y=rng.integers(0, 5, n).astype("int32"),
                    sample_weight=rng.uniform(0.0, 2.0, n).astype("float32"))
    src = rng.integers(1, 23, (n, 7))
    tgt = rng.integers(1, 23, (n, 6))
    src[np.arange(7)[None] >= rng.integers(3, 8, (n, 1))] = 0   # variable lengths
    tgt[np.arange(6)[None] >= rng.integers(1, 7, (n, 1))] = 0
    labels = np.roll(tgt, -1, axis=1)
    return dict(x=[src.astype("int32"), tgt.astype("int32")],
                y=[labels.astype("int32"), rng.integers(0, 3, n).astype("int32")])


def compile_family(model, family: str, strategy) -> None:
    ce = hybridnet.losses.SparseCategoricalCrossentropy
    if family == "mlp_ln":
        loss = ce(from_logits=True, reduction="mean_with_sample_weight")
        model.compile(hybridnet.optimizers.SGD(0.1), loss, metrics=["accuracy"],
                      strategy=strategy)
    elif family == "seq2seq":
        model.compile(hybridnet.optimizers.SGD(0.1), [ce(from_logits=True), ce(from_logits=True)],
                      loss_weights=[1.0, 0.5], metrics=[["accuracy"], ["accuracy"]],
                      strategy=strategy)
    else:
        model.compile(hybridnet.optimizers.SGD(0.1), ce(from_logits=True), metrics=["accuracy"],
                      strategy=strategy)


FAMILIES = {"resnet_bn": resnet_bn, "mlp_ln": mlp_ln, "seq2seq": seq2seq}


# ------------------------------------------------------------------------ strategies

def strategies(quick: bool) -> dict:
    """Plan name -> strategy (one device first: the reference)."""
    out = {"one_device": DataParallel(devices=jax.devices()[:1]),
           "data": DataParallel(), "model2": ModelParallel(model=2),
           "model4": ModelParallel(model=4)}
    for p in (2, 4):
        for m in (1, 2, 4):
            for schedule in ("gpipe", "1f1b"):
                out[f"pipe{p}_m{m}_{schedule}"] = Pipeline(stages=p, microbatches=m,
                                                           schedule=schedule)
    out["hybrid_d2m2p2"] = Hybrid(mesh={"data": 2, "model": 2, "pipe": 2}, microbatches=2,
                                  schedule="1f1b")
    out["auto"] = Auto(microbatches=2)
    if quick:
        keep = ("one_device", "pipe2_m4_1f1b")
        out = {k: v for k, v in out.items() if k in keep}
    return out


# ----------------------------------------------------------------------------- runs

def train(family: str, strategy, initial=None) -> dict:
    """One epoch of fit, then evaluate and predict. Returns the arrays to compare (and
    the plan's pipeline shape)."""
    model = FAMILIES[family]()
    compile_family(model, family, strategy)
    if initial is not None:
        model.set_weights(initial)
    start = [np.asarray(w) for w in model.get_weights()]
    kwargs = data(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replicated partial batches are said, not errors
        history = model.fit(**kwargs, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        kwargs.pop("sample_weight", None)
        evaluated = model.evaluate(kwargs["x"], kwargs["y"], batch_size=BATCH, verbose=0,
                                   return_dict=True)
        predicted = model.predict(kwargs["x"], batch_size=BATCH, verbose=0)
    plan = model.plan
    return {"initial": start,
            "weights": {f"{layer}/{w}": np.asarray(v) for layer, values in
                        model.variables.items() for w, v in values.items()},
            "history": {k: np.asarray(v, np.float64) for k, v in history.history.items()},
            "evaluate": {k: np.asarray(v, np.float64) for k, v in evaluated.items()},
            "predict": [np.asarray(p) for p in (predicted if isinstance(predicted, list)
                                                else [predicted])],
            "microbatches": int(plan.microbatches or 1) if len(plan.stages) > 1 else 1}


def rel(a, b, scale=None) -> float:
    """``max|a - b|`` over ``scale`` (default ``max|b|``, at least 1e-6)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not b.size:
        return 0.0
    scale = float(np.max(np.abs(b))) if scale is None else scale
    return float(np.max(np.abs(a - b)) / max(scale, 1e-6))


def compare(ref: dict, got: dict, family: str) -> dict:
    """``{"max_rel": checked difference, "checked": what, "other_rel": the rest}``.

    A weight's difference is relative to the largest magnitude in its layer: a bias
    feeding a BatchNormalization has no gradient and stays at rounding noise, which
    relative to itself means nothing."""
    diffs, scales = {}, {}
    for name, w in ref["weights"].items():
        layer = name.split("/")[0]
        scales[layer] = max(scales.get(layer, 0.0), float(np.max(np.abs(w))))
    for name, w in ref["weights"].items():
        diffs[f"weight {name}"] = rel(got["weights"][name], w, scales[name.split("/")[0]])
    for section in ("history", "evaluate"):
        for k, v in ref[section].items():
            diffs[f"{section} {k}"] = rel(got[section][k], v)
    for i, (a, b) in enumerate(zip(got["predict"], ref["predict"])):
        diffs[f"predict {i}"] = rel(a, b)
    if family == "resnet_bn" and got["microbatches"] > 1:
        checked = {k: v for k, v in diffs.items() if k.startswith("weight") and
                   "input_bn" in k and "moving" in k}
        other = max(v for k, v in diffs.items() if k not in checked)
        return {"max_rel": max(checked.values()), "checked": "input BN moving statistics",
                "other_rel": other, "worst": max(checked, key=checked.get)}
    return {"max_rel": max(diffs.values()), "checked": "all", "other_rel": None,
            "worst": max(diffs, key=diffs.get)}


def run_matrix(families, plans: dict, log=None) -> dict:
    """family -> plan -> comparison row (plus seconds)."""
    out = {}
    for family in families:
        ref_name, ref_strategy = next(iter(plans.items()))
        ref = train(family, ref_strategy)
        out[family] = {}
        for name, strategy in list(plans.items())[1:]:
            t0 = time.perf_counter()
            try:
                row = compare(ref, train(family, strategy, ref["initial"]), family)
            except Exception as e:  # noqa: BLE001 - a plan that fails is a cell, not a crash
                row = {"max_rel": float("nan"), "checked": "error", "other_rel": None,
                       "worst": f"{type(e).__name__}: {str(e)[:200]}"}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            out[family][name] = row
            if log:
                log(f"{family:10s} {name:18s} {row['max_rel']:.2e}  {row['worst']}")
    return out


def format_table(matrix: dict) -> str:
    plans = list(next(iter(matrix.values())))
    width = max(len(p) for p in plans) + 2
    lines = ["max relative difference from one device (fp32; tolerance "
             f"{TOLERANCE:g}; * = input BN statistics only, see doc)",
             "plan".ljust(width) + "".join(f"{f:>14s}" for f in matrix)]
    for plan in plans:
        cells = []
        for family in matrix:
            row = matrix[family][plan]
            mark = "*" if row["checked"] == "input BN moving statistics" else " "
            value = row["max_rel"]
            cells.append(f"{'error':>13s} " if value is None else f"{value:>13.2e}{mark}")
        lines.append(plan.ljust(width) + "".join(cells))
    extra = [f"  {f} {p}: everything else {r['other_rel']:.2e} (per-microbatch batch "
             f"statistics)" for f, rows in matrix.items() for p, r in rows.items()
             if r["other_rel"] is not None]
    errors = [f"  {f} {p}: {r['worst']}" for f, rows in matrix.items()
              for p, r in rows.items() if r["checked"] == "error"]
    return "\n".join(lines + (["* rows:"] + extra if extra else [])
                     + (["errors:"] + errors if errors else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (the table goes to stderr)")
    parser.add_argument("--quick", action="store_true", help="fewer plans: a smoke run")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated families to run")
    args = parser.parse_args(argv)
    if jax.device_count() < 8:
        raise SystemExit(f"plan_equivalence.py needs 8 devices. Received: "
                         f"{jax.device_count()} (set XLA_FLAGS={_FLAG} before jax is imported)")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    matrix = run_matrix(args.families.split(","), strategies(args.quick), log)
    values = [r["max_rel"] for rows in matrix.values() for r in rows.values()]
    for rows in matrix.values():
        for r in rows.values():
            r["max_rel"] = None if math.isnan(r["max_rel"]) else r["max_rel"]
    report = {"benchmark": "plan_equivalence", "quick": args.quick,
              "devices": jax.device_count(), "tolerance": TOLERANCE,
              "matrix": {f: {p: r["max_rel"] for p, r in rows.items()}
                         for f, rows in matrix.items()},
              "details": matrix,
              "all_within_tolerance": bool(all(v <= TOLERANCE for v in values)),  # nan: False
              "seconds": round(time.perf_counter() - start, 1)}
    text = format_table(matrix)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(report))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
