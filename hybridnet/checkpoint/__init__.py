"""Training checkpoints: a model's whole TrainState, sharded, asynchronous and atomic.

Built on orbax-checkpoint. Each process writes the shards its devices hold (no array is
gathered whole), ``save`` returns once the arrays are copied off the devices and the
files are written in the background while training goes on, a step directory appears
under its final name only once complete (a crash mid-save leaves the previous
checkpoint), and only the last ``max_to_keep`` are kept. ``restore`` reads into the
model's own plan: a checkpoint written under one plan, device count or process count
restores under any other (each array is read straight into its target sharding).

On disk, ``<directory>/<step>/``: ``state/`` (the arrays, orbax's tensorstore format)
and ``meta/`` (JSON: format, version, a manifest of every array's path, shape and dtype,
and the caller's metadata). Nothing is pickled.

Example:
    >>> ckpt = hybridnet.checkpoint.CheckpointManager("ckpt", max_to_keep=3)
    >>> ckpt.save(model)                  # returns while the files are written
    >>> ckpt.restore(other_model)         # any plan, any device count
    >>> ckpt.close()
"""
from __future__ import annotations

import atexit
import json
import os
import re
import threading

import jax
import numpy as np

FORMAT = "hybridnet-checkpoint"
VERSION = 1
_ITEMS = ("state", "meta")
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


# --------------------------------------------------------------- trees <-> flat paths

def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree) -> list[tuple[str, object]]:
    """``(path, leaf)`` for every array leaf, ``path`` joined by ``/``.

    Example:
        >>> [p for p, _ in leaf_paths(ts)][:2]
        ['params/dense/bias', 'params/dense/kernel']
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def _encode(part: str) -> str:
    """A path part as a name orbax stores as is (``inner/kernel`` -> ``inner%2Fkernel``)."""
    return _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), part)


def to_nested(tree) -> dict:
    """Any pytree as nested string-keyed dicts (orbax's plainest format), keyed by the
    encoded parts of each leaf's key path.

    Example:
        >>> to_nested({"a": (1, 2)})
        {'a': {'0': 1, '1': 2}}
    """
    out: dict = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in flat:
        node = out
        parts = [_encode(_key_name(k)) for k in path] or ["value"]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return out


def from_nested(nested: dict, like):
    """Inverse of :func:`to_nested`: the leaves of ``nested`` in the structure of
    ``like`` (a pytree of the same key paths)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, _ in flat:
        node = nested
        for part in [_encode(_key_name(k)) for k in path] or ["value"]:
            node = node[part]
        leaves.append(node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def manifest(tree) -> dict:
    """``{path: [shape, dtype]}`` of every leaf: what a restore checks first.

    Example:
        >>> manifest({"w": np.zeros((2, 3), "float32")})
        {'w': [[2, 3], 'float32']}
    """
    return {path: [list(np.shape(leaf)), np.dtype(leaf.dtype).name]
            for path, leaf in leaf_paths(tree)}


def compare_manifests(saved: dict, target: dict, limit: int = 6) -> list[str]:
    """What differs between a checkpoint's manifest and the model's, one line each
    (empty when they agree)."""
    lines = []
    for path in target:
        if path not in saved:
            lines.append(f"'{path}' is in the model but not in the checkpoint")
    for path in saved:
        if path not in target:
            lines.append(f"'{path}' is in the checkpoint but not in the model")
    for path, (shape, dtype) in target.items():
        if path in saved and [list(saved[path][0]), saved[path][1]] != [shape, dtype]:
            lines.append(f"'{path}': expected shape {tuple(shape)} {dtype} (the model). "
                         f"Received: shape {tuple(saved[path][0])} {saved[path][1]} "
                         f"(the checkpoint)")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def abstract_like(tree):
    """Each array leaf as ``jax.ShapeDtypeStruct(shape, dtype, sharding=leaf.sharding)``:
    the target a restore reads into."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                       sharding=getattr(a, "sharding", None)), tree)


# ------------------------------------------------------------------- the directory

def _step_dirs(directory: str) -> tuple[list[int], list[str]]:
    """(complete steps, uncommitted entries) found in ``directory``."""
    steps, partial = [], []
    for name in sorted(os.listdir(directory)):
        if name.isdigit() and os.path.isdir(os.path.join(directory, name)):
            steps.append(int(name))
        elif ".orbax-checkpoint-tmp" in name:
            partial.append(name)
    return sorted(steps), partial


def check_step_dir(path: str) -> None:
    """Raises when a step directory lacks what a complete checkpoint holds (``state/``,
    ``meta/`` and orbax's ``_CHECKPOINT_METADATA``), naming what is missing."""
    expected = ["_CHECKPOINT_METADATA", "meta", "state"]
    present = sorted(os.listdir(path)) if os.path.isdir(path) else []
    missing = [e for e in expected if e not in present]
    if missing:
        raise ValueError(f"restore: the checkpoint at '{path}' is partial: it lacks "
                         f"{missing}. Expected: {expected}. Received: {present}")


class CheckpointManager:
    """Saves and restores a model's TrainState under ``directory``, one step directory
    per save, keeping the last ``max_to_keep``.

    Every process must create the manager and call ``save`` / ``restore`` (each writes
    and reads its own shards).

    Args:
        directory: where the step directories go (created if missing).
        max_to_keep: how many complete checkpoints to keep (oldest deleted first);
            None keeps all.
        async_save: when True (default) ``save`` returns once the arrays are off the
            devices and the files are written in the background; the next ``save``,
            ``restore``, ``wait_until_finished`` or ``close`` waits for it.
        compress: zstd-compress the arrays (default False: trained float weights shrink
            by under 10% and the save takes about 1.5x as long). Either kind restores.

    Example:
        >>> ckpt = CheckpointManager("ckpt", max_to_keep=2)
        >>> for epoch in range(3):
        ...     model.fit(x, y, epochs=1)
        ...     ckpt.save(model, metadata={"epoch": epoch + 1})
        >>> meta = ckpt.restore(model)        # the latest; meta == {"epoch": 3}
    """

    _open: dict = {}  # directory -> the manager writing there (until closed)
    _lock = threading.Lock()

    def __init__(self, directory, max_to_keep: int | None = 3, async_save: bool = True,
                 compress: bool = False):
        import orbax.checkpoint as ocp
        _register_exit_hook()
        if not isinstance(directory, (str, os.PathLike)):
            raise ValueError("CheckpointManager: `directory` must be a path. "
                             f"Received: directory={directory!r}")
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(
                max_to_keep, int) or max_to_keep < 1):
            raise ValueError("CheckpointManager: `max_to_keep` must be a positive int or "
                             f"None. Received: max_to_keep={max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.async_save = bool(async_save)
        with CheckpointManager._lock:  # one writer per directory in a process: a new
            previous = CheckpointManager._open.get(self.directory)  # one waits for the old
        if previous is not None:
            previous.close()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=self.async_save,
            create=True, cleanup_tmp_directories=True)
        self._ocp = ocp
        handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=bool(compress)),
                    "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)
        self._closed = False
        with CheckpointManager._lock:
            CheckpointManager._open[self.directory] = self

    # ------------------------------------------------------------ what is there
    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    # -------------------------------------------------------------------- save
    def save(self, model_or_state, step: int | None = None, metadata: dict | None = None
             ) -> bool:
        """Saves a model's TrainState (or a TrainState / pytree of arrays) as ``step``
        (default: the state's training step). Returns False, writing nothing, when that
        step is already saved.

        Args:
            model_or_state: a compiled model, or a pytree of ``jax.Array``s.
            step: the checkpoint's number (an int >= 0).
            metadata: a JSON-serializable dict stored beside the arrays.
        """
        state = _state_of(model_or_state)
        if step is None and hasattr(state, "step"):
            step = int(_local_value(state.step))
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError("CheckpointManager.save: `step` must be an int >= 0 (default: "
                             f"the state's step). Received: step={step!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("CheckpointManager.save: `metadata` must be a dict. "
                             f"Received: {type(metadata).__name__}")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise ValueError("CheckpointManager.save: `metadata` must be JSON-serializable "
                             f"(nothing is pickled). Received: {error}") from None
        if int(step) in self._manager.all_steps():
            return False
        meta = {"format": FORMAT, "version": VERSION, "manifest": manifest(state),
                "metadata": metadata or {}}
        args = self._ocp.args
        return bool(self._manager.save(int(step), args=args.Composite(
            state=args.PyTreeSave(to_nested(state)), meta=args.JsonSave(meta))))

    # ----------------------------------------------------------------- restore
    def _step_path(self, step: int | None, what: str) -> tuple[int, str]:
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"{what}: no checkpoint directory at '{self.directory}'. Expected a "
                f"directory written by hybridnet.checkpoint.CheckpointManager. Received: "
                f"a path that does not exist")
        steps, partial = _step_dirs(self.directory)
        if step is None:
            if not steps:
                raise FileNotFoundError(
                    f"{what}: '{self.directory}' holds no complete checkpoint. Expected: "
                    f"step directories such as '100/' holding 'state/' and 'meta/'. "
                    f"Received: {sorted(os.listdir(self.directory))}"
                    + (f" ({partial} are saves that never completed)" if partial else ""))
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"{what}: no complete checkpoint for step {step} in "
                                    f"'{self.directory}'. Expected one of: {steps}. "
                                    f"Received: step={step!r}")
        path = os.path.join(self.directory, str(step))
        check_step_dir(path)
        return step, path

    def read_metadata(self, step: int | None = None) -> dict:
        """The stored JSON (``format``, ``version``, ``manifest``, ``metadata``) of
        ``step`` (default: the latest)."""
        self.wait_until_finished()
        step, path = self._step_path(step, "restore")
        meta = self._manager.restore(step, args=self._ocp.args.Composite(
            meta=self._ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"restore: '{path}' is not a {FORMAT} checkpoint. Expected "
                             f"meta format '{FORMAT}'. Received: "
                             f"{meta.get('format') if isinstance(meta, dict) else meta!r}")
        if meta.get("version", 0) > VERSION:
            raise ValueError(f"restore: '{path}' was written by a newer hybridnet. "
                             f"Expected version <= {VERSION}. Received: "
                             f"version={meta.get('version')}")
        return meta

    def restore_state(self, target, step: int | None = None, name: str = "the target"):
        """The arrays of ``step`` (default: the latest) read into ``target``'s structure
        and shardings (a pytree of ``jax.Array`` or ``jax.ShapeDtypeStruct`` with
        shardings). Returns ``(state, metadata)``."""
        meta = self.read_metadata(step)
        step, path = self._step_path(step, "restore")
        expected = manifest(target)
        differences = compare_manifests(meta["manifest"], expected)
        if differences:
            raise ValueError(f"restore: the checkpoint at '{path}' does not fit {name}: "
                             + "; ".join(differences))
        abstract = to_nested(abstract_like(target))
        restored = self._manager.restore(step, args=self._ocp.args.Composite(
            state=self._ocp.args.PyTreeRestore(
                abstract, restore_args=self._ocp.checkpoint_utils.construct_restore_args(
                    abstract)))).state
        return from_nested(restored, target), meta.get("metadata", {})

    def restore(self, model, step: int | None = None) -> dict:
        """Restores ``step`` (default: the latest) into ``model``: weights, optimizer
        state, metric accumulators, step and RNG, each array read into the model's own
        plan. The model must be compiled and built. Returns the metadata saved with it."""
        _check_model(model, "restore")
        self.wait_until_finished()
        self._step_path(step, "restore")  # a missing or partial checkpoint fails first
        target = model.train_state
        state, metadata = self.restore_state(target, step, name=f"model '{model.name}'")
        install_state(model, state)
        return metadata

    # ------------------------------------------------------------------- end
    def wait_until_finished(self) -> None:
        """Blocks until the save in progress (if any) is complete on disk."""
        if not self._closed:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in progress and releases the manager."""
        if not self._closed:
            self._closed = True
            with CheckpointManager._lock:
                if CheckpointManager._open.get(self.directory) is self:
                    del CheckpointManager._open[self.directory]
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"CheckpointManager('{self.directory}', max_to_keep={self.max_to_keep}, "
                f"async_save={self.async_save})")


def _finish_open_saves():
    """At exit, a save still being written completes (before Python stops the thread
    pools orbax writes with: threading's exit hooks run first, atexit's after)."""
    for manager in list(CheckpointManager._open.values()):
        try:
            manager.close()
        except Exception:  # noqa: BLE001 - at exit, a failed close must not hide others
            pass


_EXIT_HOOK = []


def _register_exit_hook() -> None:
    """Registers :func:`_finish_open_saves` once, after the thread pools' own exit hook
    (threading runs its exit hooks last registered first)."""
    if not _EXIT_HOOK:
        import importlib
        importlib.import_module("concurrent.futures.thread")  # registers the pools' hook
        getattr(threading, "_register_atexit", atexit.register)(_finish_open_saves)
        _EXIT_HOOK.append(True)


# ------------------------------------------------------------------------- models

def _check_model(model, what: str) -> None:
    if not hasattr(type(model), "train_state"):
        raise ValueError(f"{what}: expected a hybridnet Model. Received: "
                         f"{type(model).__name__}")
    if not model.built:
        raise ValueError(f"{what}: model '{model.name}' is not built, so its state has no "
                         f"shapes to restore into. Build it first (call it on data, "
                         f"`build(input_shape)` or start it with an `Input`).")
    if not model.compiled:
        raise ValueError(f"{what}: model '{model.name}' is not compiled. Call compile() "
                         f"with the optimizer, loss and metrics it was trained with.")


def _local_value(array) -> np.ndarray:
    """A replicated array's value from this process's first shard (no collective)."""
    if isinstance(array, jax.Array):
        return np.asarray(array.addressable_data(0))
    return np.asarray(array)


def _state_of(model_or_state):
    if hasattr(type(model_or_state), "train_state"):
        _check_model(model_or_state, "save")
        return model_or_state.train_state
    return model_or_state


def install_state(model, state) -> None:
    """Makes ``state`` (placed as the model's plan says) the model's, and its learning
    rate the optimizer's (as Keras restores the optimizer's learning-rate variable)."""
    from hybridnet import optimizers as optimizers_lib
    model._commit_state(state)
    inject = optimizers_lib._find_inject_state(state.opt_state) \
        if state.opt_state is not None else None
    if inject is not None and isinstance(getattr(model.optimizer, "learning_rate", None),
                                         (int, float)):
        lr = float(_local_value(inject.hyperparams["learning_rate"]))
        model.optimizer.learning_rate = lr
        model._applied_lr = lr


def save(directory, model, step: int | None = None, metadata: dict | None = None) -> int:
    """Saves ``model``'s TrainState into ``directory`` synchronously (keeping every
    step); returns the step written.

    Example:
        >>> hybridnet.checkpoint.save("ckpt", model)
    """
    with CheckpointManager(directory, max_to_keep=None, async_save=False) as manager:
        state = _state_of(model)
        step = int(_local_value(state.step)) if step is None else step
        manager.save(state, step=step, metadata=metadata)
    return step


def restore(directory, model, step: int | None = None) -> dict:
    """Restores the latest (or ``step``) checkpoint of ``directory`` into ``model``,
    under the model's own plan; returns the saved metadata.

    Example:
        >>> hybridnet.checkpoint.restore("ckpt", model)
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):  # never create a directory when reading
        raise FileNotFoundError(
            f"restore: no checkpoint directory at '{directory}'. Expected a directory "
            f"written by hybridnet.checkpoint.CheckpointManager. Received: a path that "
            f"does not exist")
    with CheckpointManager(directory, max_to_keep=None, async_save=False) as manager:
        return manager.restore(model, step)


__all__ = ["CheckpointManager", "abstract_like", "compare_manifests", "from_nested",
           "install_state", "leaf_paths", "manifest", "restore", "save", "to_nested"]
