"""The ``hybridnet`` command line.

    hybridnet plan examples/alexnet.py --devices 64 [--device-kind h100]
        [--strategy auto|data|model] [--batch-size 128] [--function NAME]
        [--input-shape 224,224,3] [--json] [--figure plan.png]
    hybridnet launch -n 2 [--devices-per-process 4] train.py [args ...]

``plan`` loads a Python file, calls its model-building function (``build_model``,
``alexnet`` or ``model``, or ``--function NAME``), which only declares weight shapes,
and plans the model for N abstract devices: no parameter is allocated and no real
device is needed. It prints the plan summary: per-layer parallelism and sharding,
per-device memory, communication per step and the estimated step time.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

BUILDER_NAMES = ("build_model", "alexnet", "model")


def load_module(path):
    """Imports a Python file as a module (its ``__main__`` block does not run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hybridnet plan: no such file. Received: {str(path)!r}")
    name = f"_hybridnet_plan_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"hybridnet plan: cannot import {str(path)!r} (not a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def find_builder(module, name: str | None = None):
    """The model-building function: ``name``, else the first of ``BUILDER_NAMES``."""
    if name is not None:
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ValueError(f"hybridnet plan: {module.__file__} has no function '{name}'. "
                             f"Received: --function {name}")
        return fn
    for candidate in BUILDER_NAMES:
        fn = getattr(module, candidate, None)
        if callable(fn):
            return fn
    raise ValueError(f"hybridnet plan: {module.__file__} defines none of {list(BUILDER_NAMES)}; "
                     f"name the model-building function with --function NAME")


def build_model(path, function: str | None = None, input_shape=None):
    """Builds the model of ``path`` symbolically (shapes only, no weights allocated)."""
    fn = find_builder(load_module(path), function)
    kwargs = {}
    if input_shape is not None:
        if "input_shape" not in inspect.signature(fn).parameters:
            raise ValueError(f"hybridnet plan: {fn.__name__}() takes no `input_shape`. "
                             f"Received: --input-shape {','.join(map(str, input_shape))}")
        kwargs["input_shape"] = tuple(input_shape)
    model = fn(**kwargs)
    if not hasattr(model, "layer_infos"):
        raise ValueError(f"hybridnet plan: {fn.__name__}() must return a hybridnet model. "
                         f"Received: {type(model).__name__}")
    return model


def _strategy(name: str, device_kind: str | None):
    from hybridnet import strategies
    if name == "auto":
        return strategies.Auto(device_kind=device_kind)
    if name == "data":
        return strategies.DataParallel()
    return strategies.ModelParallel()


def plan_command(args) -> int:
    from hybridnet.planner import cost
    from hybridnet.planner.planner import make_plan

    model = build_model(args.file, args.function, args.input_shape)
    infos = model.layer_infos()
    kind = args.device_kind or "cpu"
    cost.get_device(kind)  # fails early on an unknown kind
    plan = make_plan(infos, _strategy(args.strategy, kind), args.devices,
                     batch_size=args.batch_size, device_kind=kind)
    if args.figure:
        plan.save_figure(args.figure)
    if args.json:
        print(plan.to_json())
    else:
        print(plan.summary())
        if args.figure:
            print(f"figure written to {args.figure}")
    return 0


def _shape(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 224,224,3. Received: {text!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="plan a model for N devices and print the plan",
                       description="Plan a model for N abstract devices (nothing allocated).")
    p.add_argument("file", help="Python file defining the model-building function")
    p.add_argument("--devices", type=_positive, required=True, help="number of devices")
    p.add_argument("--device-kind", default="h100",
                   help="cost-model device: cpu, h100, h200, a100, v5e, v4 (default h100)")
    p.add_argument("--strategy", choices=("auto", "data", "model"), default="auto")
    p.add_argument("--batch-size", type=_positive, default=128, help="global batch per step")
    p.add_argument("--function", default=None,
                   help=f"model-building function (default: one of {', '.join(BUILDER_NAMES)})")
    p.add_argument("--input-shape", type=_shape, default=None,
                   help="passed as input_shape= to the function, e.g. 224,224,3")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--figure", default=None, help="also draw the plan to this .png/.svg file")
    p.set_defaults(run=plan_command)
    p = sub.add_parser("launch", help="run a script in N local processes on one coordinator",
                       description="Run `python script [args]` in N processes wired to one "
                                   "jax.distributed coordinator; output prefixed by rank.")
    p.add_argument("-n", "--num-processes", type=_positive, required=True)
    p.add_argument("--devices-per-process", type=_positive, default=None,
                   help="simulated CPU devices per process")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    p.set_defaults(run=launch_command)
    return parser


def launch_command(args) -> int:
    from hybridnet.distributed.launcher import launch
    if not Path(args.script).is_file():
        raise FileNotFoundError(f"no such script. Received: {args.script!r}")
    return launch([sys.executable, args.script, *args.script_args], args.num_processes,
                  args.devices_per_process)


def main(argv=None) -> int:
    """Entry point of the ``hybridnet`` console script.

    Example:
        >>> main(["plan", "examples/alexnet.py", "--devices", "64", "--device-kind", "h100"])
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"hybridnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
