"""Saving without pickle: one zip file holding ``config.json`` and ``.npy`` arrays.

The file is written beside its target and renamed into place, so a crash never
leaves a half-written model. Works with any file name (``model.hnet``,
``model.keras``, ``ckpt.weights.h5``...).

Example:
    >>> model.save("digits.hnet")
    >>> restored = hybridnet.models.load_model("digits.hnet")
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "hybridnet"
VERSION = 1


def _atomic_write(filepath, overwrite: bool, write) -> None:
    filepath = os.fspath(filepath)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"save: {filepath!r} exists. Received: overwrite=False")
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
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


def _put_array(zf: zipfile.ZipFile, name: str, array) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    zf.writestr(name, buffer.getvalue())


def _get_array(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.load(io.BytesIO(zf.read(name)), allow_pickle=False)


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weight_specs]


def _write_weights(zf, model) -> list:
    """Writes ``weights/<i>/<weight>.npy`` per weighted layer; returns the manifest."""
    manifest = []
    variables = model.variables  # the model's own arrays (a layer may serve several models)
    for i, layer in enumerate(_weighted_layers(model)):
        for w in layer.weight_specs:
            _put_array(zf, f"weights/{i}/{w}.npy", variables[layer.name][w])
        manifest.append([layer.name, list(layer.weight_specs)])
    return manifest


def _read_weights(zf, model, manifest) -> None:
    """Loads weights layer by layer in order (as Keras does), checking names and shapes."""
    layers = _weighted_layers(model)
    if len(layers) != len(manifest):
        raise ValueError(f"load: the file holds weights for {len(manifest)} layers; model "
                         f"'{model.name}' has {len(layers)} layers with weights.")
    for i, (layer, (saved_name, saved_weights)) in enumerate(zip(layers, manifest)):
        if list(layer.weight_specs) != saved_weights:
            raise ValueError(f"load: layer '{layer.name}' has weights {list(layer.weight_specs)}"
                             f" but the file's layer '{saved_name}' has {saved_weights}.")
        values = {w: _get_array(zf, f"weights/{i}/{w}.npy") for w in saved_weights}
        for w, spec in layer.weight_specs.items():
            if values[w].shape != spec.shape:
                raise ValueError(f"load: layer '{layer.name}' weight '{w}' expected shape "
                                 f"{spec.shape}. Received: shape={values[w].shape}")
        model._set_layer_weights(layer.name, {w: jnp.asarray(v, layer.weight_specs[w].dtype)
                                              for w, v in values.items()})


def _encode(value, serialize):
    """A compile argument (one item, a list, or a dict per output) as tagged JSON."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"per_output": {k: _encode(v, serialize) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v, serialize) for v in value]}
    config = serialize(value)
    if config is None:
        raise ValueError(f"{value!r} cannot be saved")
    return {"item": config}


def _decode(config, deserialize):
    if config is None:
        return None
    if "per_output" in config:
        return {k: _decode(v, deserialize) for k, v in config["per_output"].items()}
    if "list" in config:
        return [_decode(v, deserialize) for v in config["list"]]
    return deserialize(config["item"])


def _compile_config(model) -> dict | None:
    if not model.compiled:
        return None
    from hybridnet import losses, metrics, optimizers
    try:
        return {"optimizer": optimizers.serialize(model.optimizer),
                "loss": _encode(model._loss_arg, losses.serialize),
                "metrics": _encode(model._metrics_arg, metrics.serialize),
                "weighted_metrics": _encode(model._weighted_metrics_arg, metrics.serialize),
                "loss_weights": model._loss_weights_arg,
                "steps_per_execution": model.steps_per_execution}
    except (ValueError, TypeError):
        return None  # custom callables or optax transforms: the model is saved uncompiled


def save_model(model, filepath, overwrite: bool = True) -> None:
    config = {"format": FORMAT, "version": VERSION,
              "model": {"class_name": type(model).__name__, "config": model.get_config()},
              "compile": _compile_config(model), "train_steps": model._train_step_count}

    def write(zf):
        config["weights"] = _write_weights(zf, model)
        zf.writestr("config.json", json.dumps(config, indent=1))
        if config["compile"] is not None and model._opt_state is not None:
            for i, leaf in enumerate(jax.tree_util.tree_leaves(model._opt_state)):
                _put_array(zf, f"optimizer/{i}.npy", leaf)
    _atomic_write(filepath, overwrite, write)


def load_model(filepath, compile: bool = True):
    """Loads a model saved by ``model.save``: architecture, weights, optimizer state."""
    from hybridnet import losses, metrics, optimizers
    from hybridnet.models.model import Model
    from hybridnet.models.sequential import Sequential
    with zipfile.ZipFile(os.fspath(filepath)) as zf:
        config = json.loads(zf.read("config.json"))
        if config.get("format") != FORMAT:
            raise ValueError(f"load_model: {filepath!r} is not a hybridnet model file. "
                             f"Received format={config.get('format')!r}")
        cls = {"Sequential": Sequential}.get(config["model"]["class_name"], Model)
        model = cls.from_config(config["model"]["config"])
        _read_weights(zf, model, config["weights"])
        model._train_step_count = config.get("train_steps", 0)
        cc = config.get("compile")
        if compile and cc is not None:
            model.compile(optimizer=optimizers.deserialize(cc["optimizer"]),
                          loss=_decode(cc["loss"], losses.deserialize),
                          metrics=_decode(cc["metrics"], metrics.deserialize),
                          weighted_metrics=_decode(cc.get("weighted_metrics"),
                                                   metrics.deserialize),
                          loss_weights=cc.get("loss_weights"),
                          steps_per_execution=cc.get("steps_per_execution", 1))
            names = sorted((n for n in zf.namelist() if n.startswith("optimizer/")),
                           key=lambda n: int(n.split("/")[1].split(".")[0]))
            if names:
                executor = model._prepare(None)
                params, _ = model._vars()
                fresh = executor.init_opt_state(params)
                leaves, treedef = jax.tree_util.tree_flatten(fresh)
                if len(leaves) != len(names):
                    raise ValueError(f"load_model: optimizer state has {len(names)} arrays; "
                                     f"the optimizer expects {len(leaves)}.")
                restored = [jax.device_put(_get_array(zf, n).astype(leaf.dtype), leaf.sharding)
                            for n, leaf in zip(names, leaves)]
                model._opt_state = jax.tree_util.tree_unflatten(treedef, restored)
    return model


def save_weights(model, filepath, overwrite: bool = True) -> None:
    def write(zf):
        manifest = _write_weights(zf, model)
        zf.writestr("config.json", json.dumps({"format": FORMAT, "version": VERSION,
                                               "weights_only": True, "weights": manifest}))
    _atomic_write(filepath, overwrite, write)


def load_weights(model, filepath) -> None:
    with zipfile.ZipFile(os.fspath(filepath)) as zf:
        config = json.loads(zf.read("config.json"))
        _read_weights(zf, model, config["weights"])
