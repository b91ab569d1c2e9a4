"""Model files: one zip holding ``config.json`` and ``.npy`` arrays named by tree path.

Nothing is pickled, nothing is imported or executed from a file (after Keras 3's
``saving_lib.py`` / ``serialization_lib.py``). A file is checked before any array
in it is read: every array's path, dtype and shape (listed in ``config.json``)
against what the model built from the file's config needs, and every zip member's
declared size against what that dtype and shape take, so a forged member is
refused before anything is inflated. Saves are atomic (a temp file beside the
target, fsync, rename, directory fsync); an interrupted save's temp file is
removed by the next save into that directory.

``config.json`` (format "hybridnet", version 2)::

    {"format": "hybridnet", "version": 2, "hybridnet_version": "0.1.0",
     "model": {"class_name": "Sequential", "registered_name": null,
               "config": <model.get_config(); custom layer entries carry "registered_name">},
     "compile": null | {"optimizer": <entry>, "loss": <tagged>, "metrics": <tagged>,
                        "weighted_metrics": <tagged>, "loss_weights": ...,
                        "steps_per_execution": 1},
     "train_steps": 12,
     "weights": [{"layer": "dense", "weights": [{"name": "kernel",
                  "file": "weights/dense/kernel.npy", "dtype": "float32",
                  "shape": [4, 3]}, ...]}, ...],               # weighted layers, in order
     "optimizer_state": null | [{"path": ".inner_state[0][0].mu['dense']['kernel']",
                  "file": "optimizer/inner_state/0/0/mu/dense/kernel.npy",
                  "dtype": "float32", "shape": [4, 3]}, ...]}

An ``<entry>`` is a built-in name (``"adam"``, ``"mse"``), a built-in class
``{"class_name", "config"}``, a custom one ``{"class_name", "registered_name",
"config"}`` (functions: ``"class_name": "function"``, ``"config"``: the name), or
``{"unsaveable": "<what>"}``. ``<tagged>`` is ``{"item": entry}``,
``{"list": [...]}`` or ``{"per_output": {output: ...}}``. Weights files
(``save_weights``) hold ``{"format", "version", "weights_only": true, "weights"}``.

Example:
    >>> model.save("digits.hnet")
    >>> restored = hybridnet.models.load_model("digits.hnet")
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import socket
import tempfile
import time
import urllib.parse
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass

import jax
import numpy as np

from hybridnet.saving import keras_format, registry

FORMAT = "hybridnet"
VERSION = 2  # what this code writes; it reads versions 1..VERSION
TMP_PREFIX = ".hybridnet-tmp-"
STALE_TMP_SECONDS = 3600  # a temp file this old is removed whoever left it
MAX_CONFIG_BYTES = 64 << 20
_COMPILE_KEYS = ("optimizer", "loss", "metrics", "weighted_metrics", "loss_weights",
                 "steps_per_execution")


# =====================================================================================
# The model interface: everything saving reads from or writes to a model is in these
# two functions.
# =====================================================================================

def _read_model(model, *parts: str) -> dict:
    """What saving needs from ``model``; ``parts`` among "config", "specs", "weights",
    "compile", "optimizer_state", "optimizer_template"."""
    out = {}
    if "config" in parts:
        out["class"] = type(model)
        out["config"] = model.get_config()
        out["layer_classes"] = {layer.name: type(layer) for layer in model.layers}
    if {"specs", "weights"} & set(parts):  # weighted layers, in order
        out["specs"] = [(layer.name, {w: (tuple(int(d) for d in s.shape), np.dtype(s.dtype))
                                      for w, s in layer.weight_specs.items()})
                        for layer in model.layers if layer.weight_specs]
    if "weights" in parts:
        variables = model.variables
        out["weights"] = {name: {w: variables[name][w] for w in specs}
                          for name, specs in out["specs"]}
    if "compile" in parts:
        out["compile"] = None if not model.compiled else {
            "optimizer": model.optimizer, "loss": model._loss_arg,
            "metrics": model._metrics_arg, "weighted_metrics": model._weighted_metrics_arg,
            "loss_weights": model._loss_weights_arg,
            "steps_per_execution": model.steps_per_execution}
        out["train_steps"] = int(model._train_step_count)
    if "optimizer_state" in parts:
        out["optimizer_state"] = model._optimizer_state_for_save() if model.compiled else None
    if "optimizer_template" in parts:
        out["optimizer_template"] = model._optimizer_state_template()
    return out


def _write_model(model=None, *, build=None, weights=None, compile=None,
                 optimizer_state=None, train_steps=None):
    """Builds (``build=(cls, config, find_layer_class)``) or updates ``model``; returns it.

    ``find_layer_class(name, builtin_lookup)`` resolves layer class names (layers nested
    in others, e.g. inside ``Bidirectional``, are found by ``get_layer_class`` through
    the active ``custom_object_scope``).
    """
    if build is not None:
        from hybridnet.layers import get_layer_class
        cls, config, find_layer_class = build
        model = cls.from_config(
            config, get_class=lambda name: find_layer_class(name, get_layer_class))
    if compile is not None:
        model.compile(**compile)
    for layer_name, values in (weights or {}).items():
        model._set_layer_weights(layer_name, values)
    if optimizer_state is not None:
        model._restore_optimizer_state(optimizer_state)
    if train_steps is not None:
        model._train_step_count = int(train_steps)
    return model


# =====================================================================================
# Array entries: path, file, dtype, shape
# =====================================================================================

# Logical dtypes a file may declare. Extension types (bfloat16, float8) are stored as
# unsigned integers of the same width and viewed back.
def _known_dtypes(names):
    out = []
    for name in names:
        try:
            np.dtype(name)  # the extension types exist once ml_dtypes is loaded (by jax)
        except TypeError:
            continue
        out.append(name)
    return tuple(out)


_DTYPES = _known_dtypes(("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                         "uint64", "float16", "float32", "float64", "complex64", "complex128",
                         "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                         "float8_e5m2fnuz", "float8_e4m3b11fnuz"))


@dataclass(frozen=True)
class _Entry:
    path: str  # what the array is: "weights/dense/kernel" or an optimizer keystr
    file: str  # the zip member
    dtype: str  # logical dtype name
    shape: tuple

    @property
    def storage(self) -> np.dtype:
        dt = np.dtype(self.dtype)
        return dt if dt.kind in "biufc" else np.dtype(f"u{dt.itemsize}")

    @property
    def nbytes(self) -> int:
        n = np.dtype(self.dtype).itemsize
        for d in self.shape:
            n *= d
        return n

    @property
    def max_member_bytes(self) -> int:
        """The data plus a generous .npy header (magic, version, dict, padding)."""
        return self.nbytes + 256 + 32 * len(self.shape)

    def describe(self) -> str:
        return f"shape={self.shape}, dtype={self.dtype}"

    def to_json(self) -> dict:
        return {"path": self.path, "file": self.file, "dtype": self.dtype,
                "shape": list(self.shape)}


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"save: arrays of dtype {name} cannot be saved. Expected one of "
                         f"{list(_DTYPES)}")
    return name


def _quote(part) -> str:
    text = urllib.parse.quote(str(part), safe="-_.~")
    return text.replace(".", "%2E") if text in ("", ".", "..") else text


def _weight_file(layer: str, weight: str) -> str:
    return f"weights/{_quote(layer)}/{_quote(weight)}.npy"


def _key_part(key) -> str:
    for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _optimizer_file(path) -> str:
    parts = [_quote(_key_part(k)) for k in path]
    return "optimizer/" + ("/".join(parts) or "state") + ".npy"


def _entry_from_json(item, key: str, where: str) -> _Entry:
    ok = (isinstance(item, dict) and isinstance(item.get(key), str)
          and isinstance(item.get("file"), str) and item.get("dtype") in _DTYPES
          and isinstance(item.get("shape"), list)
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                  for d in item["shape"]))
    if not ok:
        raise ValueError(f"{where}: malformed array entry. Expected {{{key!r}: str, 'file': "
                         f"str, 'dtype': one of {list(_DTYPES)}, 'shape': [int >= 0, ...]}}. "
                         f"Received: {item!r}")
    return _Entry(item[key], item["file"], item["dtype"], tuple(item["shape"]))


def _put_array(zf: zipfile.ZipFile, entry: _Entry, array) -> None:
    array = np.asarray(array, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    if array.dtype != entry.storage:
        array = array.view(entry.storage)
    with zf.open(entry.file, "w", force_zip64=array.nbytes > (1 << 30)) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


def _get_array(zf: zipfile.ZipFile, entry: _Entry, where: str) -> np.ndarray:
    """Reads one member whose declared size ``_check_members`` has bounded, never more
    than that bound, and checks what it holds against ``entry``."""
    limit = entry.max_member_bytes
    with zf.open(entry.file) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{where}: '{entry.file}' ({entry.path}) holds more than the "
                         f"{limit} bytes its shape and dtype need.")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{where}: '{entry.file}' ({entry.path}) is not a valid .npy "
                         f"array: {e}") from None
    storage = entry.storage
    if (not isinstance(array, np.ndarray) or array.shape != entry.shape
            or array.dtype.str[1:] != storage.str[1:]):
        raise ValueError(f"{where}: '{entry.file}' ({entry.path}) expected {entry.describe()}."
                         f" Received: shape={getattr(array, 'shape', None)}, "
                         f"dtype={getattr(array, 'dtype', None)}")
    array = array.astype(storage, copy=False)
    return array if storage == np.dtype(entry.dtype) else array.view(np.dtype(entry.dtype))


# =====================================================================================
# Atomic writes; stale temp files
# =====================================================================================

def _host_tag() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:64] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temp_files(directory: str) -> list[str]:
    """Removes temp files left by interrupted saves into ``directory`` (only ours:
    ``.hybridnet-tmp-<host>-<pid>-*``): those of this host whose process is gone, and any
    older than ``STALE_TMP_SECONDS``. Returns the names removed."""
    removed, host, now = [], _host_tag(), time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TMP_PREFIX):
            continue
        parts = name[len(TMP_PREFIX):].split("-", 2)
        path = os.path.join(directory, name)
        try:
            stat = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            dead = (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                    and int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])))
            if dead or now - stat.st_mtime > STALE_TMP_SECONDS:
                os.remove(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def _check_overwrite(filepath, overwrite: bool) -> None:
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"save: {os.fspath(filepath)!r} exists. Received: "
                              f"overwrite=False")


def _atomic_write(filepath, overwrite: bool, write) -> None:
    filepath = os.fspath(filepath)
    _check_overwrite(filepath, overwrite)
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temp_files(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                write(zf)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is an ordinary file
        os.replace(tmp, filepath)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_once(filepath, overwrite: bool, write, arrays) -> None:
    """Saves from every process of a job (or from the one): ``arrays``, (key, array)
    pairs, reach the chief one at a time as ``write(zf, pairs)`` reads them (gathered
    shard by shard where an array spans processes); only the chief writes the file;
    every process returns once it is in place."""
    from hybridnet.distributed.arrays import barrier, fetch_to_chief
    _check_overwrite(filepath, overwrite)
    barrier("hybridnet.save: checked")
    pairs = ((key, fetch_to_chief(array)) for key, array in arrays)
    if jax.process_index() == 0:
        _atomic_write(filepath, overwrite, lambda zf: write(zf, pairs))
    else:
        for _ in pairs:
            pass
    barrier("hybridnet.save: written")


# =====================================================================================
# Compile arguments
# =====================================================================================

def _serialize_item(value, kind: str, problems: list) -> dict | str:
    from hybridnet import losses, metrics, optimizers
    module = {"loss": losses, "metric": metrics, "optimizer": optimizers}[kind]
    config = module.serialize(value)
    if config is not None:
        return config
    label = _label(value)
    try:
        config = registry.by_name_config(value)
        if config is not None:
            json.dumps(config)
    except (ValueError, TypeError) as e:
        config, reason = None, f"{type(e).__name__}: {e}"
    else:
        reason = "it has no name to save it by" if config is None else None
    if config is not None:
        key = config["config"] if config["class_name"] == "function" else config["class_name"]
        problems.append(
            f"{kind} {label} is not registered: the file names it {key!r}, and load_model "
            f"restores it only with custom_objects={{{key!r}: ...}}. To make it saveable, "
            f"{registry.HOW_TO_REGISTER}.")
        return config
    if isinstance(value, optimizers.OptaxOptimizer):
        reason, advice = "optax transformations are code", (
            "use a hybridnet optimizer (e.g. hybridnet.optimizers.Adam(...)) or a registered "
            "hybridnet.optimizers.Optimizer subclass")
    else:
        advice = registry.HOW_TO_REGISTER
    extra = " and without its optimizer state" if kind == "optimizer" else ""
    problems.append(f"{kind} {label} cannot be saved ({reason}): the file will load "
                    f"uncompiled{extra}. To make it saveable, {advice}.")
    return {"unsaveable": f"{kind} {label}"}


def _label(value) -> str:
    from hybridnet import optimizers
    if isinstance(value, optimizers.OptaxOptimizer):
        return f"given as an optax.GradientTransformation ({type(value.transformation).__name__})"
    if inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.ismethod(value):
        return f"function {value.__qualname__!r}"
    name = getattr(value, "name", None)
    return f"{type(value).__name__} object" + (f" {name!r}" if isinstance(name, str) else "")


def _encode(value, kind: str, problems: list):
    """A compile argument (one item, a list, or a dict per output) as tagged JSON."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"per_output": {k: _encode(v, kind, problems) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v, kind, problems) for v in value]}
    return {"item": _serialize_item(value, kind, problems)}


def _decode(config, kind: str, custom_objects, missing: list):
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"load: malformed compile {kind} entry. Received: {config!r}")
    if "per_output" in config:
        return {k: _decode(v, kind, custom_objects, missing)
                for k, v in config["per_output"].items()}
    if "list" in config:
        return [_decode(v, kind, custom_objects, missing) for v in config["list"]]
    return _deserialize_item(config.get("item"), kind, custom_objects, missing)


def _deserialize_item(config, kind: str, custom_objects, missing: list):
    from hybridnet import losses, metrics, optimizers
    if isinstance(config, dict) and "unsaveable" in config:
        missing.append(f"{config['unsaveable']} could not be saved (see the warning at save "
                       "time)")
        return None
    if isinstance(config, str):  # a name the user gave: compile resolves it as it did then
        found = registry.get_registered_object(config, custom_objects)
        return found if found is not None else config
    try:
        if kind == "loss":
            return losses.deserialize(config, custom_objects=custom_objects)
        if kind == "metric":
            return metrics.deserialize(config, custom_objects=custom_objects)
        return optimizers.deserialize(config, custom_objects=custom_objects)
    except registry.UnknownObjectError as e:
        missing.append(str(e))
        return None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _compile_config(args) -> tuple[dict | None, list]:
    if args is None:
        return None, []
    problems: list = []
    config = {"optimizer": _serialize_item(args["optimizer"], "optimizer", problems),
              "loss": _encode(args["loss"], "loss", problems),
              "metrics": _encode(args["metrics"], "metric", problems),
              "weighted_metrics": _encode(args["weighted_metrics"], "metric", problems),
              "loss_weights": _jsonable(args["loss_weights"]),
              "steps_per_execution": args["steps_per_execution"]}
    return config, problems


# =====================================================================================
# Reading and checking a file
# =====================================================================================

@contextlib.contextmanager
def _open_zip(path: str, where: str):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{where}: {path!r} is not a hybridnet model file (not a zip "
                         f"archive: {e}).") from None
    with zf:
        yield zf


def _read_config(zf: zipfile.ZipFile, path: str, where: str) -> dict:
    try:
        info = zf.getinfo("config.json")
    except KeyError:
        raise ValueError(f"{where}: {path!r} is not a hybridnet model file: it has no "
                         "config.json.") from None
    if info.file_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{where}: {path!r}: config.json declares {info.file_size} bytes; "
                         f"at most {MAX_CONFIG_BYTES} are accepted.")
    with zf.open(info) as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    try:
        config = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{where}: {path!r}: config.json is not valid JSON ({e}).") from None
    fmt = config.get("format") if isinstance(config, dict) else None
    version = config.get("version") if isinstance(config, dict) else None
    if fmt != FORMAT or not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: {path!r} is not a hybridnet model file. Expected "
                         f"format={FORMAT!r} with version 1 to {VERSION}. Received: "
                         f"format={fmt!r}, version={version!r}")
    if version > VERSION:
        raise ValueError(f"{where}: {path!r} has format {FORMAT!r} version {version}, newer "
                         f"than this hybridnet reads (versions 1 to {VERSION}). Upgrade "
                         "hybridnet to load it.")
    return config


def _check_members(zf: zipfile.ZipFile, entries: list[_Entry], path: str, where: str) -> None:
    """Before any array is read: every entry has one member, nothing else is there, and no
    member declares more bytes than its entry's dtype and shape take."""
    infos = zf.infolist()
    dup = sorted(n for n, c in Counter(i.filename for i in infos).items() if c > 1)
    if dup:
        raise ValueError(f"{where}: {path!r} holds several members named {dup}.")
    by_name = {i.filename: i for i in infos}
    expected = {e.file: e for e in entries}
    if len(expected) != len(entries):
        raise ValueError(f"{where}: {path!r} lists one file for several arrays.")
    missing = [f"{e.file} ({e.path})" for e in entries if e.file not in by_name]
    if missing:
        raise ValueError(f"{where}: {path!r} is missing arrays: {missing}")
    extra = sorted(n for n, i in by_name.items() if n != "config.json" and n not in expected
                   and not (i.is_dir() and i.file_size == 0))
    if extra:
        raise ValueError(f"{where}: {path!r} holds members its config.json does not list: "
                         f"{extra}")
    for e in entries:
        size = by_name[e.file].file_size
        if size > e.max_member_bytes:
            raise ValueError(
                f"{where}: {path!r}: '{e.file}' ({e.path}) declares {size} bytes "
                f"uncompressed, but {e.describe()} needs {e.nbytes} bytes plus a .npy header "
                f"(at most {e.max_member_bytes}). Refusing to read it.")


def _weight_entries_from_file(config: dict, specs: list, path: str, where: str) -> list:
    """The file's weights as ``[(layer name, {weight name: _Entry})]``, in file order.
    Version 1 files list names only (at ``weights/<i>/<w>.npy``): their dtypes and shapes
    are taken to be the model's, and checked against the arrays when read."""
    manifest = config.get("weights")
    if not isinstance(manifest, list):
        raise ValueError(f"{where}: {path!r}: config.json has no 'weights' list.")
    out = []
    for i, item in enumerate(manifest):
        if config["version"] == 1:
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                  and isinstance(item[1], list) and all(isinstance(w, str) for w in item[1]))
        else:
            ok = (isinstance(item, dict) and isinstance(item.get("layer"), str)
                  and isinstance(item.get("weights"), list))
        if not ok:
            raise ValueError(f"{where}: {path!r}: malformed weights entry {item!r}")
        entries = {}
        if config["version"] == 1:
            layer = item[0]
            ref = specs[i][1] if i < len(specs) else {}
            for w in item[1]:
                shape, dtype = ref.get(w, ((), np.dtype("float32")))
                entries[w] = _Entry(f"weights/{layer}/{w}", f"weights/{i}/{w}.npy",
                                    _dtype_name(dtype), shape)
        else:
            layer = item["layer"]
            for w in item["weights"]:
                e = _entry_from_json(w, "name", f"{where}: {path!r}")
                if e.path in entries:
                    raise ValueError(f"{where}: {path!r}: layer '{layer}' lists weight "
                                     f"'{e.path}' twice.")
                entries[e.path] = _Entry(f"weights/{layer}/{e.path}", e.file, e.dtype, e.shape)
        out.append((layer, entries))
    return out


def _match_weights(file_layers: list, specs: list, by_order: bool, path: str,
                   where: str) -> dict:
    """File entries matched to the model's weighted layers: by layer name (model files) or
    by position (weights files, as Keras). Returns ``{model layer: {weight: _Entry}}``;
    anything missing, extra or of another shape or dtype is refused, naming the path."""
    if by_order:
        if len(file_layers) != len(specs):
            raise ValueError(
                f"{where}: {path!r} holds weights for {len(file_layers)} layers "
                f"{[n for n, _ in file_layers]}; the model has {len(specs)} layers with "
                f"weights {[n for n, _ in specs]}. Weights files are matched by layer order.")
        pairs = list(zip(specs, file_layers))
    else:
        file_by_name = dict(file_layers)
        extra = sorted(set(file_by_name) - {n for n, _ in specs})
        missing = [n for n, _ in specs if n not in file_by_name]
        if extra or missing:
            raise ValueError(f"{where}: {path!r}: the weights do not match the model built "
                             f"from its config. Missing layers: {missing}. Extra layers: "
                             f"{extra}")
        pairs = [((n, s), (n, file_by_name[n])) for n, s in specs]
    matched = {}
    for (layer, layer_specs), (file_layer, got) in pairs:
        if sorted(got) != sorted(layer_specs):
            raise ValueError(f"{where}: {path!r}: layer '{layer}' has weights "
                             f"{list(layer_specs)}, but the file's layer '{file_layer}' has "
                             f"{list(got)}.")
        for w, (shape, dtype) in layer_specs.items():
            e = got[w]
            if e.shape != shape or e.dtype != _dtype_name(dtype):
                raise ValueError(
                    f"{where}: {path!r}: weights/{layer}/{w} expected shape={shape}, "
                    f"dtype={_dtype_name(dtype)} (from the model). Received: {e.describe()} "
                    f"('{e.file}')")
        matched[layer] = got
    return matched


def _optimizer_entries_from_file(config: dict, zf: zipfile.ZipFile, path: str,
                                 where: str) -> list | None:
    """Version 2: the listed leaves. Version 1: ``optimizer/<i>.npy`` by flat index (their
    paths are bound to the template's leaves in order, when compiled)."""
    if config["version"] == 1:
        names = [n for n in zf.namelist() if n.startswith("optimizer/")]
        if not names:
            return None
        try:
            names.sort(key=lambda n: int(n[len("optimizer/"):-len(".npy")]))
        except ValueError:
            raise ValueError(f"{where}: {path!r}: unexpected optimizer members "
                             f"{names}") from None
        # Placeholders: any size passes the first member check; once compiled, the
        # template gives each its dtype and shape, checked again before reading.
        return [_Entry(f"[{i}]", n, "uint8", (1 << 62,)) for i, n in enumerate(names)]
    items = config.get("optimizer_state")
    if items is None:
        return None
    if not isinstance(items, list):
        raise ValueError(f"{where}: {path!r}: 'optimizer_state' must be a list. Received: "
                         f"{type(items).__name__}")
    return [_entry_from_json(item, "path", where) for item in items]


def _match_template(entries: list, template, version: int, path: str, where: str):
    """Checks the file's optimizer leaves against the compiled optimizer's template, leaf by
    leaf (path, shape, dtype). Returns (entries in template order, treedef)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = [_Entry(jax.tree_util.keystr(p), _optimizer_file(p), _dtype_name(leaf.dtype),
                       tuple(int(d) for d in leaf.shape)) for p, leaf in leaves]
    if version == 1:
        if len(entries) != len(expected):
            raise ValueError(
                f"{where}: {path!r} (format version 1) holds {len(entries)} optimizer arrays; "
                f"the compiled optimizer expects {len(expected)}. Load it with compile=False "
                "and compile again.")
        return [_Entry(x.path, e.file, x.dtype, x.shape)
                for e, x in zip(entries, expected)], treedef
    got = {e.path: e for e in entries}
    missing = [x.path for x in expected if x.path not in got]
    extra = sorted(set(got) - {x.path for x in expected})
    if missing or extra:
        raise ValueError(f"{where}: {path!r}: the optimizer state does not match the compiled "
                         f"optimizer. Missing: {missing}. Extra: {extra}")
    for x in expected:
        e = got[x.path]
        if e.shape != x.shape or e.dtype != x.dtype:
            raise ValueError(f"{where}: {path!r}: optimizer state {x.path} expected "
                             f"{x.describe()} (from the compiled optimizer). Received: "
                             f"{e.describe()} ('{e.file}')")
    return [got[x.path] for x in expected], treedef


# Keras-style requests for code: never honoured; refused in safe mode.
_CODE_CLASS_NAMES = ("__lambda__", "__python__", "__function__")
_CODE_KEYS = ("module", "fn_module", "function_type", "__code__")


def _code_requests(tree, where="config.json") -> list[str]:
    found = []
    if isinstance(tree, dict):
        if tree.get("class_name") in _CODE_CLASS_NAMES:
            found.append(f"{where}: class_name={tree['class_name']!r} (Python code)")
        if "class_name" in tree:
            found += [f"{where}: {k}={tree[k]!r} (a module to import)"
                      for k in _CODE_KEYS if tree.get(k) is not None]
        for k, v in tree.items():
            found += _code_requests(v, f"{where}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += _code_requests(v, f"{where}/{i}")
    return found


def _layer_finder(model_config: dict, custom_objects, path: str):
    """``find(name, builtin)`` for layer class names: registered names recorded in the file
    first, then ``custom_objects``/scope by class name, the built-ins, and a registered class
    of that name."""
    from hybridnet.layers import Layer
    recorded: dict = {}
    for entry in model_config.get("layers", []):
        if isinstance(entry, dict) and entry.get("registered_name"):
            cls = registry.resolve(entry, custom_objects, what="layer")
            name = entry.get("class_name")
            if not (isinstance(cls, type) and issubclass(cls, Layer)):
                raise ValueError(f"load_model: layer {registry.describe(entry)} resolved to "
                                 f"{cls!r}, which is not a hybridnet Layer subclass.")
            if recorded.get(name, cls) is not cls:
                raise ValueError(f"load_model: {path!r} uses two layer classes named {name!r} "
                                 "(registered under different names); rename one.")
            recorded[name] = cls

    def find(name, builtin):
        if name in recorded:
            return recorded[name]
        found = registry.get_registered_object(name, custom_objects)
        if isinstance(found, type) and issubclass(found, Layer):
            return found
        try:
            return builtin(name)
        except ValueError:
            pass
        found = registry.find_class(name, Layer)
        if found is not None:
            return found
        raise registry.UnknownObjectError(
            f"load_model: {path!r} uses layer class {name!r}, which is not built in, "
            f"registered or given in custom_objects. Pass custom_objects={{{name!r}: "
            f"{name}}} to load_model, or {registry.HOW_TO_REGISTER}. Nothing is imported "
            "from a saved file.")
    return find


def _model_class(model_entry: dict, custom_objects, path: str):
    from hybridnet.models.model import Model
    from hybridnet.models.sequential import Sequential
    name = model_entry.get("class_name")
    if model_entry.get("registered_name") or (custom_objects and name in custom_objects):
        cls = registry.resolve(model_entry, custom_objects, what="model class")
        if isinstance(cls, type) and issubclass(cls, Model):
            return cls
        raise ValueError(f"load_model: model class {registry.describe(model_entry)} resolved "
                         f"to {cls!r}, which is not a hybridnet Model subclass.")
    if name == "Sequential":
        return Sequential
    if name not in ("Model", "Functional"):
        warnings.warn(f"load_model: {path!r} holds a model of class {name!r}, which is not "
                      f"registered or given in custom_objects: it is rebuilt as a functional "
                      f"hybridnet Model. Pass custom_objects={{{name!r}: {name}}} or "
                      f"{registry.HOW_TO_REGISTER}.", stacklevel=3)
    return Model


# =====================================================================================
# Public API
# =====================================================================================

def _weight_manifest(specs: list) -> list:
    return [{"layer": layer, "weights": [
        {"name": w, "file": _weight_file(layer, w), "dtype": _dtype_name(dtype),
         "shape": list(shape)} for w, (shape, dtype) in layer_specs.items()]}
        for layer, layer_specs in specs]


def _model_entry(view: dict, problems: list) -> dict:
    """The model's class and config; custom layer entries get their registered name, and
    unregistered custom classes a warning."""
    from hybridnet.layers import Layer, get_layer_class
    from hybridnet.models.model import Model
    from hybridnet.models.sequential import Sequential
    cls, config = view["class"], view["config"]
    registered = registry._registered(cls)
    if registered is None and cls not in (Model, Sequential):
        problems.append(f"model class {cls.__name__!r} is not registered: load_model rebuilds "
                        f"it as a functional Model unless given custom_objects="
                        f"{{{cls.__name__!r}: {cls.__name__}}}. To restore it as such, "
                        f"{registry.HOW_TO_REGISTER}.")
    for entry in config.get("layers", []):
        layer_cls = view["layer_classes"].get((entry.get("config") or {}).get("name"))
        if layer_cls is None or not issubclass(layer_cls, Layer):
            continue
        if registry._registered(layer_cls):
            entry["registered_name"] = registry._registered(layer_cls)
            continue
        try:
            builtin = get_layer_class(entry["class_name"]) is layer_cls
        except ValueError:
            builtin = False
        if not builtin:
            name = layer_cls.__name__
            problems.append(
                f"layer {entry['config'].get('name')!r} (class {name!r}) is not registered: "
                f"load_model restores it only with custom_objects={{{name!r}: {name}}}. To "
                f"make it saveable, {registry.HOW_TO_REGISTER}.")
    return {"class_name": cls.__name__, "registered_name": registered, "config": config}


def save_model(model, filepath, overwrite: bool = True) -> None:
    """Saves architecture, weights, compile arguments and optimizer state to one file.

    Whatever cannot be restored later (an optimizer given as a raw optax
    transformation, an unregistered custom loss) is named in a warning here;
    the file still loads, uncompiled, with its weights. A name ending in ``.keras``
    gets Keras 3's format instead (see :mod:`hybridnet.saving.keras_format`).
    """
    from hybridnet import __version__
    if os.fspath(filepath).endswith(keras_format.SUFFIX):
        return keras_format.save_model(model, filepath, overwrite)
    view = _read_model(model, "config", "weights", "compile", "optimizer_state")
    problems: list = []
    model_entry = _model_entry(view, problems)
    compile_config, compile_problems = _compile_config(view["compile"])
    problems += compile_problems
    weights = _weight_manifest(view["specs"])
    arrays = [(_Entry(w["name"], w["file"], w["dtype"], tuple(w["shape"])),
               view["weights"][item["layer"]][w["name"]])
              for item in weights for w in item["weights"]]
    optimizer_state = None
    state = view["optimizer_state"]
    if compile_config is not None and state is not None and not (
            isinstance(compile_config["optimizer"], dict)
            and "unsaveable" in compile_config["optimizer"]):
        optimizer_state = []
        for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            entry = _Entry(jax.tree_util.keystr(p), _optimizer_file(p),
                           _dtype_name(leaf.dtype if hasattr(leaf, "dtype") else
                                       np.asarray(leaf).dtype), tuple(np.shape(leaf)))
            optimizer_state.append(entry.to_json())
            arrays.append((entry, leaf))
    file_config = {"format": FORMAT, "version": VERSION, "hybridnet_version": __version__,
                   "model": model_entry, "compile": compile_config,
                   "train_steps": view["train_steps"], "weights": weights,
                   "optimizer_state": optimizer_state}
    try:
        text = json.dumps(file_config, indent=1)
    except TypeError as e:
        raise ValueError(f"save: model '{model.name}': its config is not JSON ({e}). Layer "
                         "get_config() must return plain values.") from None
    for problem in problems:
        warnings.warn(f"save: model '{model.name}': {problem}", stacklevel=3)

    def write(zf, pairs):
        zf.writestr("config.json", text)
        for entry, array in pairs:
            _put_array(zf, entry, array)
    _save_once(filepath, overwrite, write, arrays)


def load_model(filepath, custom_objects: dict | None = None, compile: bool = True,
               safe_mode: bool = True):
    """Loads a model saved by ``model.save``: architecture, weights, optimizer state.

    Args:
        filepath: a hybridnet model file (any name; ``.hnet`` by convention), or a
            ``.keras`` file in Keras 3's format (told apart by its contents).
        custom_objects: name -> class or function, for custom layers, losses,
            metrics, optimizers and schedules (by registered name ``"package>name"``
            or plain name). Registered objects (``@hybridnet.saving.register_serializable``)
            need no entry.
        compile: compile with the saved compile arguments and restore the optimizer
            state. Compile arguments that cannot be rebuilt are named in a warning
            and the model is returned uncompiled, with its weights.
        safe_mode: refuse files whose config asks for code (Keras-style ``module``
            paths or ``__lambda__`` entries). hybridnet never imports or runs code from
            a file; with ``safe_mode=False`` such entries are only looked up by name.

    Returns:
        The model, compiled if it was saved compiled and ``compile=True``.
    """
    path = os.fspath(filepath)
    where = "load_model"
    if keras_format.is_keras_file(path):
        return keras_format.load_model(path, compile=compile, safe_mode=safe_mode)
    with _open_zip(path, where) as zf, registry.custom_object_scope(custom_objects):
        config = _read_config(zf, path, where)
        if config.get("weights_only"):
            raise ValueError(f"{where}: {path!r} holds weights only (written by save_weights):"
                             " build the model and call model.load_weights(path).")
        requests = _code_requests(config)
        if requests and safe_mode:
            raise ValueError(f"{where}: {path!r} asks for code to be imported or run, which "
                             f"safe_mode=True refuses: {requests}. hybridnet never runs code "
                             "from a file; with safe_mode=False these entries are looked up "
                             "by name only (custom_objects, registered objects).")
        if requests:
            warnings.warn(f"{where}: {path!r}: ignoring requests for code (looked up by name "
                          f"only): {requests}", stacklevel=2)
        model_entry = config.get("model")
        if not isinstance(model_entry, dict) or not isinstance(model_entry.get("config"), dict):
            raise ValueError(f"{where}: {path!r}: config.json has no model config.")
        cls = _model_class(model_entry, custom_objects, path)
        model = _write_model(build=(cls, model_entry["config"], _layer_finder(
            model_entry["config"], custom_objects, path)))
        specs = _read_model(model, "specs")["specs"]
        file_layers = _weight_entries_from_file(config, specs, path, where)
        weights = _match_weights(file_layers, specs, False, path, where)
        opt_entries = _optimizer_entries_from_file(config, zf, path, where)
        checked = [e for entries in weights.values() for e in entries.values()]
        _check_members(zf, checked + (opt_entries or []), path, where)

        compile_kwargs, missing = None, []
        cc = config.get("compile")
        if compile and cc is not None:
            if not isinstance(cc, dict) or set(_COMPILE_KEYS) - set(cc):
                raise ValueError(f"{where}: {path!r}: malformed compile config {cc!r}")
            compile_kwargs = {
                "optimizer": _deserialize_item(cc["optimizer"], "optimizer", custom_objects,
                                               missing),
                "loss": _decode(cc["loss"], "loss", custom_objects, missing),
                "metrics": _decode(cc["metrics"], "metric", custom_objects, missing),
                "weighted_metrics": _decode(cc["weighted_metrics"], "metric", custom_objects,
                                            missing),
                "loss_weights": cc["loss_weights"],
                "steps_per_execution": cc["steps_per_execution"]}
            if missing:
                compile_kwargs = None
                listed = " ".join(f"({i}) {m.rstrip('.')}." for i, m in enumerate(missing, 1))
                warnings.warn(
                    f"{where}: {path!r} was saved compiled, but these compile arguments cannot "
                    f"be rebuilt here: {listed} The model is loaded uncompiled, with its "
                    "weights; its optimizer state is not restored. Call model.compile(...) "
                    "before training.", stacklevel=2)
        opt_order = treedef = None
        if compile_kwargs is not None:
            _write_model(model, compile=compile_kwargs)
            if opt_entries:
                template = _read_model(model, "optimizer_template")["optimizer_template"]
                opt_order, treedef = _match_template(opt_entries, template, config["version"],
                                                     path, where)
                if config["version"] == 1:  # sizes now known from the template
                    _check_members(zf, checked + opt_order, path, where)

        # Everything is checked: only now are arrays read.
        values = {layer: {w: _get_array(zf, e, where) for w, e in entries.items()}
                  for layer, entries in weights.items()}
        state = None
        if opt_order is not None:
            state = jax.tree_util.tree_unflatten(
                treedef, [_get_array(zf, e, where) for e in opt_order])
        train_steps = config.get("train_steps", 0)
        _write_model(model, weights=values, optimizer_state=state,
                     train_steps=train_steps if isinstance(train_steps, int) else 0)
    return model


def save_weights(model, filepath, overwrite: bool = True) -> None:
    """Saves the weights only, layer by layer (loaded back by layer order, as Keras)."""
    view = _read_model(model, "weights")
    weights = _weight_manifest(view["specs"])
    text = json.dumps({"format": FORMAT, "version": VERSION, "weights_only": True,
                       "weights": weights}, indent=1)

    arrays = [(_Entry(w["name"], w["file"], w["dtype"], tuple(w["shape"])),
               view["weights"][item["layer"]][w["name"]])
              for item in weights for w in item["weights"]]

    def write(zf, pairs):
        zf.writestr("config.json", text)
        for entry, array in pairs:
            _put_array(zf, entry, array)
    _save_once(filepath, overwrite, write, arrays)


def load_weights(model, filepath) -> None:
    """Loads weights saved by ``save_weights`` (or the weights of a model file) into
    ``model``, matching weighted layers by order and checking every shape and dtype
    before reading any array."""
    path = os.fspath(filepath)
    where = "load_weights"
    with _open_zip(path, where) as zf:
        config = _read_config(zf, path, where)
        specs = _read_model(model, "specs")["specs"]
        file_layers = _weight_entries_from_file(config, specs, path, where)
        weights = _match_weights(file_layers, specs, True, path, where)
        checked = [e for entries in weights.values() for e in entries.values()]
        others = [] if config.get("weights_only") else (
            _optimizer_entries_from_file(config, zf, path, where) or [])  # never read here
        _check_members(zf, checked + others, path, where)
        values = {layer: {w: _get_array(zf, e, where) for w, e in entries.items()}
                  for layer, entries in weights.items()}
        _write_model(model, weights=values)
