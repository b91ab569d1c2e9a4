"""Keras 3 ``.keras`` files: read and write the format Keras itself saves.

A ``.keras`` file is a zip of ``metadata.json``, ``config.json`` (the model as
``keras.saving.serialize_keras_object`` writes it) and ``model.weights.h5``
(each layer's variables at ``layers/<snake_case class>[_<k>]/vars/<i>``, in the
order Keras's ``Functional.layers`` / ``Sequential.layers`` list them). After
``keras/src/saving/saving_lib.py``, ``serialization_lib.py`` and
``models/functional.py``.

Only the layers hybridnet has are accepted (:data:`SUPPORTED`); any other class is
refused by name. Nothing is imported or run from a file: a ``Lambda`` layer or a
``__lambda__`` function is refused, as Keras's ``safe_mode`` does. Optimizer
variables are neither read nor written (a warning says so); the compile arguments
(optimizer and learning rate, loss, metrics) are.

Example:
    >>> model.save("model.keras")                 # keras.saving.load_model reads it
    >>> hybridnet.models.load_model("model.keras")  # also files saved by Keras 3
"""
from __future__ import annotations

import datetime
import inspect
import io
import json
import os
import re
import warnings
import zipfile

import numpy as np

from hybridnet.saving import model_file

SUFFIX = ".keras"
KERAS_VERSION = "3.0.0"  # for metadata.json; Keras's loader does not read it
CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
_MAX_EXPANSION = 100  # a zip member inflating to more than this times its size is refused
_BOMB_FLOOR = 1 << 28

# ====================================================================================
# Names and values
# ====================================================================================

SUPPORTED = ("InputLayer", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Conv2D",
             "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
             "GlobalMaxPooling2D", "ZeroPadding2D", "BatchNormalization",
             "LayerNormalization", "Embedding", "LSTM", "Bidirectional", "Attention", "Add",
             "Concatenate", "Multiply", "Average", "Subtract", "Maximum", "Minimum", "Conv1D",
             "Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D", "UpSampling2D",
             "Cropping2D", "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D",
             "GlobalMaxPooling1D", "RepeatVector", "Permute", "Masking", "ReLU", "LeakyReLU",
             "Softmax", "Rescaling", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
             "GaussianDropout", "GRU", "SimpleRNN")
_MODELS = ("Sequential", "Functional", "Model")
_CODE_CLASSES = ("Lambda", "__lambda__", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")

# hybridnet initializer name <-> Keras class (and its default config).
_INITIALIZERS = {
    "glorot_uniform": ("GlorotUniform", {"seed": None}),
    "glorot_normal": ("GlorotNormal", {"seed": None}),
    "he_uniform": ("HeUniform", {"seed": None}),
    "he_normal": ("HeNormal", {"seed": None}),
    "lecun_uniform": ("LecunUniform", {"seed": None}),
    "lecun_normal": ("LecunNormal", {"seed": None}),
    "orthogonal": ("Orthogonal", {"seed": None, "gain": 1.0}),
    "zeros": ("Zeros", {}),
    "ones": ("Ones", {}),
    "uniform": ("RandomUniform", {"seed": None, "minval": -0.05, "maxval": 0.05}),
    "random_uniform": ("RandomUniform", {"seed": None, "minval": -0.05, "maxval": 0.05}),
    "normal": ("RandomNormal", {"seed": None, "mean": 0.0, "stddev": 0.05}),
    "random_normal": ("RandomNormal", {"seed": None, "mean": 0.0, "stddev": 0.05}),
}
_INITIALIZER_NAMES = {cls: name for name, (cls, _) in reversed(_INITIALIZERS.items())}

# Keras arguments hybridnet does not have: the values each may hold (anything else is
# refused), or _ANY where the value does not change what the layer computes.
_ANY = object()
_NO_VALUE = object()  # an argument left to the layer's default
_KERAS_ONLY = {"groups": (1,), "stateful": (False,), "unroll": _ANY, "renorm": (False,),
               "renorm_clipping": (None,), "renorm_momentum": _ANY, "synchronized": _ANY,
               "rms_scaling": (False,), "sparse": (False, None), "ragged": (False, None),
               "optional": (False,), "quantization_config": (None,), "lora_rank": (None, 0),
               "lora_alpha": _ANY, "input_length": _ANY, "use_cudnn": _ANY,
               "data_format": ("channels_last", None)}
_WEIGHT_SUBPATHS = {"LSTM": ("cell",), "GRU": ("cell",), "SimpleRNN": ("cell",),
                    "Bidirectional": ("forward_layer/cell", "backward_layer/cell")}


def snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case`` (how weight groups are named)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _owner(config: dict, cls: str) -> str:
    return f"Layer '{config.get('name')}' ({cls})"


def _keras_object(module: str, class_name: str, config) -> dict:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": None}


def _dtype_policy(name: str) -> dict:
    return _keras_object("keras", "DTypePolicy", {"name": name})


def _initializer_to_keras(value, owner: str, arg: str):
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str) and value in _INITIALIZERS:
        cls, config = _INITIALIZERS[value]
        return _keras_object("keras.initializers", cls, dict(config))
    raise ValueError(f"save: {owner}: `{arg}` cannot be written to a .keras file. Expected one "
                     f"of {sorted(_INITIALIZERS)}. Received: {arg}={value!r}")


def _initializer_from_keras(value, owner: str, arg: str, notes: list):
    """A Keras initializer (name or serialized object) as a hybridnet name; only used to
    initialise weights, so anything unknown falls back to the layer's default."""
    if value is None or isinstance(value, str) and value in _INITIALIZERS:
        return value
    cls = value.get("class_name") if isinstance(value, dict) else value
    name = _INITIALIZER_NAMES.get(cls) or (cls if cls in _INITIALIZERS else None)
    config = dict(value.get("config") or {}) if isinstance(value, dict) else {}
    defaults = _INITIALIZERS[name][1] if name else {}
    if name is None or any(config.get(k, v) != v for k, v in defaults.items()) or (
            set(config) - set(defaults) - {"input_axes", "output_axes"}):
        notes.append(f"{owner}: `{arg}`={value!r} has no hybridnet equivalent; the layer's "
                     "default initializer is used (it only matters before weights load)")
        return _NO_VALUE
    return name


def _dtype_from_keras(value, owner: str):
    if isinstance(value, dict):
        value = (value.get("config") or {}).get("name")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"load_model: {owner}: unreadable dtype. Received: dtype={value!r}")
    if value and value.startswith("mixed_"):
        raise ValueError(f"load_model: {owner}: mixed precision policies are not supported by "
                         f"hybridnet. Expected a dtype such as 'float32'. Received: "
                         f"dtype={value!r}")
    return value


# ====================================================================================
# Code in configs: refused
# ====================================================================================

def code_requests(tree, where: str = "config.json") -> list[str]:
    """Places in a Keras config that carry Python code (``Lambda`` layers, ``__lambda__``
    functions, framework wrappers), which hybridnet never deserializes."""
    found = []
    if isinstance(tree, dict):
        cls = tree.get("class_name")
        if cls in _CODE_CLASSES:
            found.append(f"{where}: class_name={cls!r}")
        elif cls == "function" and not str(tree.get("module", "")).startswith("keras"):
            found.append(f"{where}: function {tree.get('config')!r} from module "
                         f"{tree.get('module')!r}")
        for k, v in tree.items():
            found += code_requests(v, f"{where}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += code_requests(v, f"{where}/{i}")
    return found


# ====================================================================================
# Layer configs: Keras -> hybridnet
# ====================================================================================

def _accepted_args(cls) -> set:
    from hybridnet.layers import Layer
    out = set()
    for c in (cls, Layer):
        out |= {n for n, p in inspect.signature(c.__init__).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
    return out


def _check_class(entry, path: str) -> str:
    cls = entry.get("class_name") if isinstance(entry, dict) else None
    if cls in _CODE_CLASSES:
        raise ValueError(f"load_model: {path!r}: layer {entry.get('config', {}).get('name')!r} "
                         f"is a {cls} layer, which carries Python code: refused, as Keras's "
                         "safe_mode=True does. hybridnet never runs code from a file.")
    if cls not in SUPPORTED:
        hint = ""
        if cls in ("NotEqual", "ConvertToTensor") or str(entry.get("module", "")).startswith(
                "keras.src.ops"):
            hint = (" Keras records masking operations (from Embedding(mask_zero=True) or "
                    "Masking) as graph nodes of functional models; hybridnet reads such "
                    "models only as Sequential, where masks propagate implicitly.")
        raise ValueError(f"load_model: {path!r} uses class {cls!r} (layer "
                         f"{(entry.get('config') or {}).get('name')!r}), which hybridnet "
                         f"cannot load from a .keras file. Supported: {list(SUPPORTED)}.{hint}")
    if entry.get("registered_name") not in (None, cls):
        raise ValueError(f"load_model: {path!r}: layer class {cls!r} is registered as "
                         f"{entry['registered_name']!r} (a custom class); only Keras's own "
                         f"layers can be loaded from a .keras file. Supported: "
                         f"{list(SUPPORTED)}.")
    return cls


def layer_from_keras(entry: dict, path: str, notes: list) -> dict:
    """A serialized Keras layer as hybridnet's ``{"class_name", "config"}``."""
    from hybridnet.layers import get_layer_class
    cls = _check_class(entry, path)
    config = dict(entry.get("config") or {})
    owner = _owner(config, cls)
    if cls == "InputLayer":
        shape = config.pop("batch_shape", None) or config.pop("batch_input_shape", None)
        if shape is None:
            shape = [config.pop("batch_size", None)] + list(config.pop("shape", []))
        config["shape"], config["batch_size"] = list(shape[1:]), shape[0]
    if cls == "Bidirectional":
        for key in ("layer", "backward_layer"):
            if config.get(key) is not None:
                config[key] = layer_from_keras(config[key], path, notes)
    if "dtype" in config:
        config["dtype"] = _dtype_from_keras(config["dtype"], owner)
        if config["dtype"] is None:
            del config["dtype"]
    accepted = _accepted_args(get_layer_class(cls))
    dropped = []
    out = {}
    for key, value in config.items():
        if key.endswith("_initializer"):
            value = _initializer_from_keras(value, owner, key, notes)
            if value is not _NO_VALUE:
                out[key] = value
        elif key.endswith(("_regularizer", "_constraint")):
            if value is not None:
                dropped.append(f"{key}={_describe(value)}")
        elif key in accepted:
            out[key] = value
        elif key in _KERAS_ONLY:
            allowed = _KERAS_ONLY[key]
            if allowed is not _ANY and value not in allowed:
                raise ValueError(f"load_model: {path!r}: {owner}: `{key}` is not supported by "
                                 f"hybridnet. Expected {key}={allowed[0]!r}. Received: "
                                 f"{key}={value!r}")
        elif value not in (None, False):
            raise ValueError(f"load_model: {path!r}: {owner}: argument `{key}` is not "
                             f"supported by hybridnet. Received: {key}={value!r}")
    if dropped:
        notes.append(f"{owner}: {', '.join(dropped)} dropped (hybridnet has no regularizers "
                     "or constraints; they only act in training)")
    return {"class_name": cls, "config": out}


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"{value.get('class_name')}({json.dumps(value.get('config'))})"
    return repr(value)


# ====================================================================================
# Layer configs: hybridnet -> Keras
# ====================================================================================

def layer_to_keras(class_name: str, config: dict, notes: list) -> dict:
    """hybridnet's ``(class_name, get_config())`` as a serialized Keras layer."""
    if class_name not in SUPPORTED:
        raise ValueError(f"save: layer '{config.get('name')}' has class {class_name!r}, which "
                         f"a .keras file cannot hold (Keras would not know it). Supported: "
                         f"{list(SUPPORTED)}. Save with another extension (e.g. '.hnet') for "
                         "hybridnet's own format.")
    owner = _owner(config, class_name)
    config = dict(config)
    for key in ("parallel", "stage"):
        if key in config:
            notes.append(f"{owner}: `{key}`={config.pop(key)!r} is a hybridnet annotation; "
                         "Keras has no place for it")
    config.pop("kernel", None)
    if class_name == "InputLayer":
        return _keras_object("keras.layers", "InputLayer", {
            "batch_shape": [config.get("batch_size")] + list(config["shape"]),
            "dtype": config.get("dtype", "float32"), "sparse": False,
            "name": config["name"]})
    if "dtype" in config:
        config["dtype"] = _dtype_policy(config["dtype"])
    for key in list(config):
        if key.endswith("_initializer"):
            config[key] = _initializer_to_keras(config[key], owner, key)
    if class_name == "Bidirectional":
        for key in ("layer", "backward_layer"):
            if config.get(key) is not None:
                config[key] = layer_to_keras(config[key]["class_name"], config[key]["config"],
                                             notes)
    return _keras_object("keras.layers", class_name, config)


# ====================================================================================
# Functional graphs
# ====================================================================================

def _map_refs(tree, fn):
    """``tree`` with every tensor reference replaced by ``fn(ref)``; refs are Keras's
    ``__keras_tensor__`` entries or hybridnet's ``{"__tensor__": ref}``."""
    if isinstance(tree, dict):
        if tree.get("class_name") == "__keras_tensor__":
            return fn(list(tree["config"]["keras_history"]))
        if "__tensor__" in tree:
            return fn(list(tree["__tensor__"]))
        return {k: _map_refs(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_map_refs(v, fn) for v in tree]
    return tree


def _refs_in(tree) -> list:
    """Tensor references in Keras's flattening order (dict keys sorted)."""
    found = []

    def visit(t):
        if isinstance(t, dict):
            if t.get("class_name") == "__keras_tensor__" or "__tensor__" in t:
                _map_refs(t, found.append)
                return
            for k in sorted(t):
                visit(t[k])
        elif isinstance(t, (list, tuple)):
            for v in t:
                visit(v)
    visit(tree)
    return found


def _flat_refs(struct) -> list:
    """A Keras ``input_layers``/``output_layers`` structure as a flat list of refs."""
    if isinstance(struct, list) and len(struct) == 3 and isinstance(struct[0], str):
        return [struct]
    if isinstance(struct, dict):
        return [r for k in struct for r in _flat_refs(struct[k])]
    return [r for s in struct for r in _flat_refs(s)]


def keras_layer_order(layers: list, inputs: list, outputs: list) -> list[str]:
    """The order in which Keras's ``Functional.layers`` lists a graph's layers
    (``ops/function.py`` ``map_graph``: by decreasing depth, then by first visit in a
    depth-first walk from the outputs). ``layers``: entries with ``name`` and
    ``inbound_nodes`` (args/kwargs holding tensor refs); ``inputs``/``outputs``: flat refs."""
    parents = {}
    for entry in layers:
        nodes = entry.get("inbound_nodes") or []
        if not nodes:
            parents[(entry["name"], 0)] = []
        for i, node in enumerate(nodes):
            parents[(entry["name"], i)] = [(r[0], r[1]) for r in _refs_in(
                [node.get("args", []), node.get("kwargs", {})])]
    finished, in_order, first_seen = set(), [], {}
    for ref in outputs:
        stack = [((ref[0], ref[1]), False)]
        while stack:
            key, expanded = stack.pop()
            if expanded:
                if key not in finished:
                    finished.add(key)
                    in_order.append(key)
                continue
            if key in finished:
                continue
            first_seen.setdefault(key[0], len(first_seen))
            stack.append((key, True))
            stack.extend((p, False) for p in reversed(parents[key]) if p not in finished)
    node_depth, layer_depth = {}, {}
    for key in reversed(in_order):
        depth = max(node_depth.setdefault(key, 0), layer_depth.get(key[0], 0))
        layer_depth[key[0]] = node_depth[key] = depth
        for p in parents[key]:
            if p in finished:
                node_depth[p] = max(depth + 1, node_depth.get(p, 0))
    for ref in inputs:
        if ref[0] not in layer_depth:
            layer_depth[ref[0]], first_seen[ref[0]] = 0, -1
    return sorted(layer_depth, key=lambda n: (-layer_depth[n], first_seen[n]))


def _structure_to_keras(refs: list, structure) -> object:
    if isinstance(structure, dict):
        return dict(zip(structure["dict"], refs))
    return refs[0] if structure == "single" and len(refs) == 1 else refs


def _structure_from_keras(struct):
    """(flat refs, hybridnet structure tag) of Keras's ``input_layers``/``output_layers``."""
    if isinstance(struct, list) and len(struct) == 3 and isinstance(struct[0], str):
        return [struct], "single"
    if isinstance(struct, dict):
        refs = []
        for k in struct:
            inner = _flat_refs(struct[k])
            if len(inner) != 1:
                raise ValueError("load_model: nested input/output structures are not "
                                 f"supported. Received: {struct!r}")
            refs += inner
        return refs, {"dict": list(struct)}
    refs = _flat_refs(struct)
    if len(refs) != len(struct):
        raise ValueError("load_model: nested input/output structures are not supported. "
                         f"Received: {struct!r}")
    return refs, "list"


# ====================================================================================
# Model configs
# ====================================================================================

def _model_from_keras(top: dict, path: str, notes: list):
    """(hybridnet model class, hybridnet config, Keras layer entries in weight order)."""
    from hybridnet.models.model import Model
    from hybridnet.models.sequential import Sequential
    cls = top.get("class_name")
    config = top.get("config")
    if cls not in _MODELS or not isinstance(config, dict):
        raise ValueError(f"load_model: {path!r} holds a model of class {cls!r}. hybridnet reads "
                         "Sequential and functional models from .keras files (subclassed "
                         "models carry code).")
    entries = config.get("layers")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"load_model: {path!r}: config.json has no list of layers.")
    if cls == "Sequential":
        out = {"name": config.get("name"), "layers": []}
        stack = list(entries)
        if stack and stack[0].get("class_name") == "InputLayer":
            first = layer_from_keras(stack.pop(0), path, notes)["config"]
            out["build_input_shape"] = [first["batch_size"]] + list(first["shape"])
            out["input_dtype"] = first.get("dtype", "float32")
        elif config.get("build_input_shape"):
            out["build_input_shape"] = list(config["build_input_shape"])
        out["layers"] = [layer_from_keras(e, path, notes) for e in stack]
        return Sequential, out, stack
    layers = []
    for entry in entries:
        converted = layer_from_keras(entry, path, notes)
        nodes = []
        for node in entry.get("inbound_nodes") or []:
            kwargs = dict(node.get("kwargs") or {})
            if kwargs.pop("training", None):
                notes.append(f"{_owner(converted['config'], converted['class_name'])}: a "
                             "call recorded with training=True is rebuilt without it")
            nodes.append({"args": _map_refs(node.get("args", []), lambda r: {"__tensor__": r}),
                          "kwargs": _map_refs(kwargs, lambda r: {"__tensor__": r})})
        converted["inbound_nodes"] = nodes
        layers.append(converted)
    input_refs, input_structure = _structure_from_keras(config["input_layers"])
    output_refs, output_structure = _structure_from_keras(config["output_layers"])
    out = {"name": config.get("name"), "layers": layers, "input_layers": input_refs,
           "output_layers": output_refs, "input_structure": input_structure,
           "output_structure": output_structure}
    return Model, out, entries


def _tensor_specs(model) -> dict:
    """(layer, node index, tensor index) -> (shape, dtype name) of the model's symbolic
    tensors, numbered as ``Graph.to_config`` numbers them."""
    used = {id(n) for n in model.graph.nodes}
    out = {}
    for t in model.inputs:
        out[(t.node.layer.name, 0, 0)] = (list(t.shape), t.dtype.name)
    for layer in model.layers:
        nodes = [n for n in layer._inbound_nodes if id(n) in used]
        for i, node in enumerate(nodes):
            for t in node.output_tensors:
                out[(layer.name, i, t.index)] = (list(t.shape), t.dtype.name)
    return out


def _model_to_keras(model, notes: list) -> tuple[dict, list[str]]:
    """(the model's serialized Keras config, layer names in Keras's weight order)."""
    from hybridnet.models.sequential import Sequential
    config = model.get_config()
    name = config.get("name") or model.name
    if isinstance(model, Sequential):
        layers = []
        if config.get("build_input_shape") is not None:
            shape = list(config["build_input_shape"])
            input_name = (getattr(model, "input_names", None) or ["input_layer"])[0]
            layers.append(layer_to_keras("InputLayer", {
                "name": input_name, "shape": shape[1:], "batch_size": shape[0],
                "dtype": config.get("input_dtype", "float32")}, notes))
        layers += [layer_to_keras(e["class_name"], e["config"], notes)
                   for e in config["layers"]]
        keras_config = {"name": name, "trainable": model.trainable,
                        "dtype": _dtype_policy("float32"), "layers": layers}
        if config.get("build_input_shape") is not None:
            keras_config["build_input_shape"] = list(config["build_input_shape"])
        top = {"module": "keras", "class_name": "Sequential", "config": keras_config,
               "registered_name": None,
               "build_config": {"input_shape": keras_config.get("build_input_shape")}}
        return top, [e["config"]["name"] for e in config["layers"]]
    if type(model).__name__ not in ("Model", "Functional"):
        notes.append(f"model class {type(model).__name__!r} is written as a functional "
                     "Keras model")

    specs = _tensor_specs(model)

    def tensor(ref):
        shape, dtype = specs[tuple(ref)]
        return {"class_name": "__keras_tensor__",
                "config": {"shape": shape, "dtype": dtype, "keras_history": list(ref)}}
    by_name = {}
    for entry in config["layers"]:
        keras_entry = layer_to_keras(entry["class_name"], entry["config"], notes)
        keras_entry["name"] = entry["config"]["name"]
        keras_entry["inbound_nodes"] = [
            {"args": _map_refs(n["args"], tensor), "kwargs": _map_refs(n["kwargs"], tensor)}
            for n in entry["inbound_nodes"]]
        by_name[keras_entry["name"]] = keras_entry
    inputs = [list(r) for r in config["input_layers"]]
    outputs = [list(r) for r in config["output_layers"]]
    order = keras_layer_order(list(by_name.values()), inputs, outputs)
    keras_config = {"name": name, "trainable": model.trainable,
                    "layers": [by_name[n] for n in order],
                    "input_layers": _structure_to_keras(
                        inputs, config.get("input_structure", "list")),
                    "output_layers": _structure_to_keras(
                        outputs, config.get("output_structure", "list"))}
    top = {"module": "keras.src.models.functional", "class_name": "Functional",
           "config": keras_config, "registered_name": "Functional",
           "build_config": {"input_shape": None}}
    return top, order


# ====================================================================================
# Weights (model.weights.h5)
# ====================================================================================

def _weight_groups(class_names: dict, order: list[str], sequential: bool) -> dict:
    """Layer name -> its group path (``layers/dense_1``), as Keras names them."""
    used, out = {}, {}
    for name in order:
        cls = class_names[name]
        if sequential and cls == "InputLayer":
            continue
        base = snake_case(cls)
        k = used.get(base)
        used[base] = 0 if k is None else k + 1
        out[name] = f"layers/{base}" if k is None else f"layers/{base}_{k + 1}"
    return out


def _entry_name(entry: dict) -> str:
    return entry.get("name") or (entry.get("config") or {}).get("name")


def _keras_weight_order(layer) -> list[str]:
    """The layer's weight names in Keras's order: trainable ones first, each in creation
    order (``Layer.save_own_variables``)."""
    specs = layer.weight_specs
    trainable = [w for w, s in specs.items() if getattr(s, "trainable", True)]
    return trainable + [w for w in specs if w not in trainable]


def _split(names: list, class_name: str) -> list[tuple[str, list]]:
    """(sub-path under the layer group, weight names) pairs."""
    subpaths = _WEIGHT_SUBPATHS.get(class_name, ("",))
    n = len(names) // len(subpaths)
    return [(sub, names[i * n:(i + 1) * n]) for i, sub in enumerate(subpaths)]


def _join(*parts) -> str:
    return "/".join(p for p in parts if p)


def _safe_group(h5, path: str, where: str):
    import h5py
    group = h5
    for part in path.split("/"):
        if part not in group:
            return None
        link = group.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ValueError(f"{where}: links are not allowed in {WEIGHTS} ('{path}').")
        group = group[part]
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where}: '{path}' in {WEIGHTS} is not a group.")
    return group


def _read_vars(h5, group_path: str, specs: list, owner: str, where: str) -> list:
    """The arrays at ``<group_path>/vars/0..n-1`` checked (count, shape, dtype kind, no
    external storage) against ``specs`` [(weight, shape, dtype)] before any is read."""
    import h5py
    group = _safe_group(h5, _join(group_path, "vars"), where)
    keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1) if group else []
    if keys != [str(i) for i in range(len(specs))]:
        raise ValueError(f"{where}: {owner}: expected {len(specs)} arrays at "
                         f"'{_join(group_path, 'vars')}' ({[w for w, _, _ in specs]}). "
                         f"Received: {keys}")
    datasets = []
    for key, (w, shape, dtype) in zip(keys, specs):
        if not isinstance(group.get(key, getlink=True), h5py.HardLink):
            raise ValueError(f"{where}: links are not allowed in {WEIGHTS}.")
        ds = group[key]
        if not isinstance(ds, h5py.Dataset) or ds.external or ds.is_virtual:
            raise ValueError(f"{where}: {owner}: '{group_path}/vars/{key}' is not a plain "
                             "dataset.")
        stored = np.dtype("uint16") if ds.attrs.get("dtype") == "bfloat16" else ds.dtype
        if tuple(ds.shape) != tuple(shape) or stored.kind not in "fiub":
            raise ValueError(f"{where}: {owner}: weight '{w}' ('{group_path}/vars/{key}') "
                             f"expected shape={tuple(shape)}, dtype={np.dtype(dtype).name}. "
                             f"Received: shape={tuple(ds.shape)}, dtype={ds.dtype}")
        datasets.append((ds, dtype))
    out = []
    for ds, dtype in datasets:
        array = ds[()]
        if ds.attrs.get("dtype") == "bfloat16":
            import ml_dtypes
            array = array.view(ml_dtypes.bfloat16)
        out.append(np.asarray(array).astype(dtype, copy=False))
    return out


def _named_groups(h5) -> dict:
    """Layer name -> group path, from the ``name`` attribute Keras writes on each layer's
    ``vars`` group (absent in files from older Keras)."""
    layers = _safe_group(h5, "layers", "load_model") if "layers" in h5 else None
    out = {}
    for key in (layers.keys() if layers is not None else []):
        vars_ = layers[key].get("vars") if hasattr(layers[key], "get") else None
        name = vars_.attrs.get("name") if vars_ is not None else None
        if isinstance(name, bytes):
            name = name.decode()
        if isinstance(name, str):
            out[name] = f"layers/{key}"
    return out


def _write_layer_groups(h5, layer, class_name: str, group: str, values: dict) -> None:
    def make(path, name):
        g = h5.require_group(_join(path, "vars"))
        g.attrs["name"] = name
        return g
    make(group, layer.name)
    if class_name == "LSTM":
        make(_join(group, "cell"), "lstm_cell")
    if class_name == "Bidirectional":
        for side in ("forward_layer", "backward_layer"):
            sub = getattr(layer, side, None)
            make(_join(group, side), getattr(sub, "name", side))
            make(_join(group, side, "cell"), "lstm_cell")
    for sub, names in _split(_keras_weight_order(layer), class_name):
        g = h5.require_group(_join(group, sub, "vars"))
        for i, w in enumerate(names):
            g.create_dataset(str(i), data=np.asarray(values[w]))


def _weights_h5(model, class_names: dict, order: list[str], sequential: bool,
                values: dict) -> bytes:
    """``model.weights.h5`` from ``values``, host arrays by layer and weight."""
    import h5py
    groups = _weight_groups(class_names, order, sequential)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers")
        for name, group in groups.items():
            _write_layer_groups(h5, model.get_layer(name), class_names[name], group,
                                values.get(name, {}))
        h5.create_group("vars").attrs["name"] = model.name
    return buffer.getvalue()


# ====================================================================================
# Compile arguments
# ====================================================================================

_MODULES = {"optimizer": "keras.optimizers", "loss": "keras.losses", "metric": "keras.metrics",
            "schedule": "keras.optimizers.schedules"}


def _strip(tree):
    """A Keras-serialized object tree as hybridnet's ``{"class_name", "config"}`` form."""
    if isinstance(tree, dict):
        out = {k: _strip(v) for k, v in tree.items()
               if k not in ("module", "shared_object_id", "build_config")}
        if "class_name" in tree and out.get("registered_name") in (None, tree["class_name"]):
            out.pop("registered_name", None)
        return out
    if isinstance(tree, list):
        return [_strip(v) for v in tree]
    return tree


def _tag(config, kind: str):
    if isinstance(config, dict) and "class_name" in config:
        inner = dict(config.get("config") or {})
        if isinstance(inner.get("learning_rate"), dict):
            inner["learning_rate"] = _tag(inner["learning_rate"], "schedule")
        return {"module": _MODULES[kind], "class_name": config["class_name"], "config": inner,
                "registered_name": None}
    return config


def _compile_to_keras(args, notes: list) -> dict | None:
    from hybridnet import losses, metrics, optimizers
    if args is None:
        return None
    problems = []

    def encode(value, kind):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, dict):
            return {k: encode(v, kind) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v, kind) for v in value]
        module = {"loss": losses, "metric": metrics, "optimizer": optimizers}[kind]
        try:
            config = module.serialize(value)
        except ValueError:
            config = None
        if config is None or isinstance(config, dict) and (
                config.get("registered_name") or config.get("class_name") == "function"):
            problems.append(f"{kind} {value!r}")
            return None
        return _tag(config, kind)
    config = {"optimizer": encode(args["optimizer"], "optimizer"),
              "loss": encode(args["loss"], "loss"),
              "loss_weights": model_file._jsonable(args["loss_weights"]),
              "metrics": encode(args["metrics"], "metric"),
              "weighted_metrics": encode(args["weighted_metrics"], "metric"),
              "run_eagerly": False, "steps_per_execution": args["steps_per_execution"],
              "jit_compile": True}
    if problems:
        notes.append(f"the compile arguments are not written ({', '.join(problems)} cannot be "
                     "described to Keras): the file loads uncompiled")
        return None
    return config


def _compile_from_keras(cc: dict) -> tuple[dict | None, str | None]:
    """hybridnet compile kwargs from Keras's ``compile_config``, or (None, why not)."""
    from hybridnet import losses, metrics, optimizers

    def decode(value, fn):
        if value is None:
            return None
        if isinstance(value, list):
            return [decode(v, fn) for v in value]
        if isinstance(value, dict) and "class_name" not in value:
            return {k: decode(v, fn) for k, v in value.items()}
        return fn(_strip(value))
    try:
        kwargs = {"optimizer": optimizers.deserialize(_strip(cc.get("optimizer") or "rmsprop")),
                  "loss": decode(cc.get("loss"), losses.deserialize),
                  "metrics": decode(cc.get("metrics"), metrics.deserialize),
                  "weighted_metrics": decode(cc.get("weighted_metrics"), metrics.deserialize),
                  "loss_weights": cc.get("loss_weights"),
                  "steps_per_execution": cc.get("steps_per_execution") or 1}
    except (ValueError, TypeError, NotImplementedError, KeyError) as e:
        return None, f"{type(e).__name__}: {e}"
    return kwargs, None


# ====================================================================================
# Files
# ====================================================================================

def _read_member(zf: zipfile.ZipFile, name: str, path: str, limit: int | None = None) -> bytes:
    info = zf.getinfo(name)
    if limit is not None and info.file_size > limit:
        raise ValueError(f"load_model: {path!r}: {name} declares {info.file_size} bytes; at "
                         f"most {limit} are accepted.")
    if info.file_size > _BOMB_FLOOR and info.file_size > _MAX_EXPANSION * info.compress_size:
        raise ValueError(f"load_model: {path!r}: {name} declares {info.file_size} bytes but "
                         f"stores {info.compress_size}: refusing a decompression bomb.")
    with zf.open(info) as f:
        return f.read(info.file_size + 1)


def is_keras_file(filepath) -> bool:
    """Whether ``filepath`` is a zip holding Keras's ``config.json`` (not hybridnet's)."""
    try:
        with zipfile.ZipFile(os.fspath(filepath)) as zf:
            names = set(zf.namelist())
            if CONFIG not in names or WEIGHTS not in names:
                return False
            config = json.loads(_read_member(zf, CONFIG, os.fspath(filepath),
                                             model_file.MAX_CONFIG_BYTES))
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return isinstance(config, dict) and "format" not in config and "class_name" in config


def save_model(model, filepath, overwrite: bool = True) -> None:
    """Writes ``model`` as a Keras 3 ``.keras`` file (config, metadata, weights).

    Everything Keras cannot hold is named in one warning (hybridnet's ``parallel`` and
    ``stage`` annotations, the optimizer state); a layer class Keras does not have, or
    an initializer given as a function, is refused.
    """
    from hybridnet import __version__
    from hybridnet.models.sequential import Sequential
    notes: list = []
    top, order = _model_to_keras(model, notes)
    view = model_file._read_model(model, "compile")
    top["compile_config"] = _compile_to_keras(view["compile"], notes)
    if view["compile"] is not None:
        notes.append("the optimizer state is not written (Keras starts a fresh optimizer)")
    sequential = isinstance(model, Sequential)
    class_names = {layer.name: type(layer).__name__ for layer in model.layers}
    if not sequential:
        class_names.update({e["name"]: e["class_name"] for e in top["config"]["layers"]})
    arrays = [((name, w), a) for name, ws in model_file._read_model(
        model, "weights")["weights"].items() for w, a in ws.items()]
    metadata = {"keras_version": KERAS_VERSION,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "producer": f"hybridnet {__version__}"}
    try:
        config_text = json.dumps(top)
    except TypeError as e:
        raise ValueError(f"save: model '{model.name}': its config is not JSON ({e}).") from None
    if notes:
        warnings.warn(f"save: model '{model.name}' as a .keras file: " + "; ".join(notes) + ".",
                      stacklevel=3)

    def write(zf, pairs):
        values: dict = {}
        for (name, w), array in pairs:
            values.setdefault(name, {})[w] = array
        zf.writestr(METADATA, json.dumps(metadata))
        zf.writestr(CONFIG, config_text)
        zf.writestr(WEIGHTS, _weights_h5(model, class_names, order, sequential, values))
    model_file._save_once(filepath, overwrite, write, arrays)


def load_model(filepath, compile: bool = True, safe_mode: bool = True):
    """Loads a Keras 3 ``.keras`` file (Sequential or functional, of :data:`SUPPORTED`
    layers): architecture, weights and, with ``compile=True``, the compile arguments.

    Code-carrying entries (``Lambda`` layers, ``__lambda__`` functions) are refused
    whatever ``safe_mode`` says: hybridnet never runs code from a file.
    """
    import h5py
    path = os.fspath(filepath)
    with model_file._open_zip(path, "load_model") as zf:
        names = set(zf.namelist())
        for member in (CONFIG, WEIGHTS):
            if member not in names:
                raise ValueError(f"load_model: {path!r} is not a .keras model file: it has no "
                                 f"{member}.")
        try:
            top = json.loads(_read_member(zf, CONFIG, path, model_file.MAX_CONFIG_BYTES))
        except ValueError as e:
            raise ValueError(f"load_model: {path!r}: config.json is not valid JSON ({e}).") \
                from None
        requests = code_requests(top)
        if requests:
            raise ValueError(f"load_model: {path!r} holds Python code ({'; '.join(requests)}),"
                             " which is refused, as Keras's safe_mode=True refuses it. hybridnet "
                             "never runs code from a file, whatever safe_mode says.")
        notes: list = []
        cls, config, entries = _model_from_keras(top, path, notes)
        model = model_file._write_model(build=(cls, config, lambda name, builtin: builtin(name)))
        if top["config"].get("trainable") is False:
            model.trainable = False
        order = [_entry_name(e) for e in entries]
        class_names = {_entry_name(e): e["class_name"] for e in entries}
        groups = _weight_groups(class_names, order, cls.__name__ == "Sequential")
        h5_bytes = _read_member(zf, WEIGHTS, path)
    with h5py.File(io.BytesIO(h5_bytes), "r") as h5:
        groups.update({n: g for n, g in _named_groups(h5).items() if n in groups})
        values = {}
        for layer in model.layers:
            if not layer.weight_specs:
                continue
            spec = layer.weight_specs
            owner = f"layer '{layer.name}' ({type(layer).__name__})"
            arrays = {}
            for sub, ws in _split(_keras_weight_order(layer), type(layer).__name__):
                read = _read_vars(h5, _join(groups[layer.name], sub),
                                  [(w, spec[w].shape, spec[w].dtype) for w in ws], owner,
                                  f"load_model: {path!r}")
                arrays.update(zip(ws, read))
            values[layer.name] = arrays
        optimizer_arrays = len(h5["optimizer/vars"]) if "optimizer/vars" in h5 else 0
    model_file._write_model(model, weights=values)
    cc = top.get("compile_config")
    if compile and cc:
        kwargs, why = _compile_from_keras(cc)
        if kwargs is None:
            notes.append(f"the compile arguments cannot be rebuilt here ({why}): the model is "
                         "loaded uncompiled; call model.compile(...) before training")
        else:
            model_file._write_model(model, compile=kwargs)
            if optimizer_arrays:
                notes.append(f"the optimizer state ({optimizer_arrays} arrays) is not loaded: "
                             "the optimizer starts fresh")
    if notes:
        warnings.warn(f"load_model: {path!r}: " + "; ".join(notes) + ".", stacklevel=3)
    return model
