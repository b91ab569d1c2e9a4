"""Ensemble: several models trained on one input pipeline's batches.

Two ways to hold the members:

* a list of compiled models (any architectures, optimizers, learning rates): each keeps
  its own TrainState and compiled step; every batch is read and prepared once;
* a model-building function and ``n``: homogeneous members stacked into one TrainState
  with a leading member axis and one vmapped step, laid out along an "ensemble" mesh
  axis (``hybridnet.ensemble.stacked``).

Either way the Trainer runs the loop, so ``fit`` behaves as ``Model.fit``: one progress
bar, a History, callbacks per member.

Example:
    >>> ens = Ensemble(build_mlp, n=4, learning_rate=[1e-3, 3e-3, 1e-2, 3e-2], seed=0)
    >>> history = ens.fit(x, y, batch_size=64, epochs=5, callbacks=[EarlyStopping("loss")])
    >>> ens.evaluate(x_test, y_test)["soft_vote_accuracy"]
"""
from __future__ import annotations

import copy
import json
import os
from typing import NamedTuple

import numpy as np

from hybridnet import utils
from hybridnet.ensemble import share as share_lib
from hybridnet.ensemble import votes
from hybridnet.ensemble.mpi_share import MPIShareMode
from hybridnet.ensemble.stacked import StackedGroup
from hybridnet.training.callbacks import Callback
from hybridnet.training.trainer import Trainer

FORMAT = "hybridnet-ensemble"
VERSION = 1


class Predictions(NamedTuple):
    """``Ensemble.predict``'s result.

    Attributes:
        members: each member's outputs, as its ``Model.predict`` returns them.
        soft: mean class probabilities ``(batch, classes)`` (single-output members).
        hard: majority-vote classes ``(batch,)`` (single-output members).
    """
    members: list
    soft: np.ndarray | None
    hard: np.ndarray | None


def _is_model(obj) -> bool:
    from hybridnet.models import Model
    return isinstance(obj, Model)


class Ensemble:
    """Models trained side by side on the same batches, read and prepared once.

    Args:
        members: a list of compiled models, or a function that builds and compiles one
            model (then ``n`` is required).
        n: how many members to build with ``members()``.
        share: how the batches reach the members: "local" (one process: every member
            reads this process's batches) or a share mode across MPI ranks
            ("all_gather", "broadcast", "multi_broadcast", or a configured
            ``hybridnet.ensemble.mpi_share`` mode). Under an MPI mode every rank makes
            the same calls; a building function gives each training rank its members
            (member ``i`` on the ``i % T``-th of ``T`` training ranks, seeded
            ``seed + i``, ``seed`` defaulting to 0), a list is this rank's members, and a
            preprocess-only rank holds none (``Ensemble([], share=mode)``).
        stacked: run the members as one vmapped program over a stacked TrainState
            (default: True for a building function, False for a list). Stacked members
            must share architecture and optimizer; learning rates may differ.
        learning_rate: one learning rate per member (a sequence), or one for all.
        seed: member ``i`` is built after ``hybridnet.utils.set_random_seed(seed + i)``,
            so it can be rebuilt alone; default: the global seed sequence.
        name: the ensemble's name.

    Example:
        >>> ens = Ensemble([mlp, cnn, wide_mlp])            # heterogeneous, one pipeline
        >>> ens = Ensemble(build, n=4, learning_rate=[1e-3, 2e-3, 5e-3, 1e-2])  # stacked
    """

    def __init__(self, members, n: int | None = None, *, share="local",
                 stacked: bool | None = None, learning_rate=None, seed: int | None = None,
                 name: str = "ensemble"):
        self.share = share_lib.get(share)
        self._mpi = isinstance(self.share, MPIShareMode)
        self._built_members = False
        if self._mpi:
            self.share.setup()  # collective: every rank constructs its Ensemble in turn
        if isinstance(members, (list, tuple)):
            models = list(members)
            ids, total = list(range(len(models))), len(models)
            if n is not None and n != len(models):
                raise ValueError(f"Ensemble: `n` must match the {len(models)} members "
                                 f"given (or be None). Received: n={n!r}")
            if seed is not None:
                raise ValueError("Ensemble: `seed` applies when members are built by a "
                                 "function; a list of models is already built. Received: "
                                 f"seed={seed!r}")
            stacked = False if stacked is None else stacked
        elif callable(members) and not _is_model(members):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError("Ensemble: with a model-building function, `n` must be a "
                                 f"positive int. Received: n={n!r}")
            ids, total = list(range(n)), n
            self._built_members = True
            if self._mpi:
                ids = self.share.member_indices(n)
                seed = 0 if seed is None else seed
            models = []
            for i in ids:
                if seed is not None:
                    utils.set_random_seed(seed + i)
                models.append(members())
            stacked = True if stacked is None else stacked
        else:
            raise ValueError("Ensemble: `members` must be a list of compiled models or a "
                             f"function that builds one. Received: members={members!r}")
        if self._mpi:
            self._check_role(models)
        elif not models:
            raise ValueError("Ensemble: `members` must hold at least one model. "
                             "Received: []")
        for i, model in enumerate(models):
            if not _is_model(model):
                raise ValueError(f"Ensemble: member {i} must be a hybridnet Model. "
                                 f"Received: {type(model).__name__}")
            if not model.compiled:
                raise ValueError(f"Ensemble: member {i} ('{model.name}') is not compiled; "
                                 f"call compile() on every member first.")
            if any(model is other for other in models[:i]):
                raise ValueError(f"Ensemble: member {i} ('{model.name}') is given twice; "
                                 f"each member must be its own model.")
        self.members = models
        self.member_ids = ids
        self.name = name
        self._set_learning_rates(learning_rate, total)
        self._check_inputs()
        self.stacked = bool(stacked)
        self._group = StackedGroup(models) if self.stacked and models else None

    # ---------------------------------------------------------------- members
    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index):
        return self.members[index]

    @property
    def stop_training(self) -> bool:
        """True once every member stopped; setting it stops (or resumes) all."""
        return all(m.stop_training for m in self.members)

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        for m in self.members:
            m.stop_training = bool(value)

    def get_weights(self) -> list:
        """Each member's ``get_weights()``."""
        return [m.get_weights() for m in self.members]

    def set_weights(self, weights) -> None:
        for m, w in zip(self.members, weights):
            m.set_weights(w)

    def _check_role(self, models):
        """Under an MPI share mode: members exactly on the ranks that train."""
        mode = self.share
        if mode.trains and not models:
            raise ValueError(f"Ensemble: rank {mode.rank} trains under share="
                             f"{mode.name!r} (training ranks {mode.layout.trainers}) and "
                             f"was given no members; give it members, or list it in "
                             f"`preprocess_only`. Received: members=[]")
        if not mode.trains and models:
            raise ValueError(f"Ensemble: rank {mode.rank} only preprocesses under share="
                             f"{mode.name!r} (preprocess_only={list(mode.preprocess_only)})"
                             f" and holds no members. Received: {len(models)} members")

    def _set_learning_rates(self, learning_rate, total):
        if learning_rate is None:
            return
        rates = list(learning_rate) if isinstance(learning_rate, (list, tuple, np.ndarray)) \
            else [learning_rate] * total
        if len(rates) != total:
            raise ValueError(f"Ensemble: `learning_rate` must hold one value per member "
                             f"({total}). Received: {len(rates)} values")
        for model, i in zip(self.members, self.member_ids):
            model.optimizer.learning_rate = float(rates[i])

    def _check_inputs(self):
        """Members that already know their inputs must agree with member 0."""
        from hybridnet.utils import format_shape
        built = [(i, m) for i, m in enumerate(self.members) if m.built]
        if len(built) < 2:
            return
        i0, ref = built[0]
        expected = [tuple(t.shape[1:]) for t in ref.inputs]
        for i, model in built[1:]:
            got = [tuple(t.shape[1:]) for t in model.inputs]
            if got != expected:
                raise ValueError(
                    f"Ensemble: member {i} ('{model.name}') takes inputs of shape "
                    f"{[format_shape((None,) + s) for s in got]}, and the shared batches "
                    f"fit member {i0} ('{ref.name}'): expected shape "
                    f"{[format_shape((None,) + s) for s in expected]}")

    def _trainer(self, shared: bool = True) -> Trainer:
        """The Trainer over the members; ``shared=False`` reads the data locally (MPI
        modes share fit's batches only)."""
        items = [self._group] if self.stacked else self.members
        share = self.share if shared or not self._mpi else None
        return Trainer(items, share=share, owner=self, merge_logs=self._merge_logs)

    def _merge_logs(self, logs: list) -> dict:
        """``mean_<metric>`` over the members, then ``member<i>_<metric>`` (``i`` the
        member's index in the whole ensemble, under MPI too)."""
        out = {}
        shared = [k for k in logs[0] if all(k in other for other in logs)]
        for key in shared:
            out[f"mean_{key}"] = float(np.mean([other[key] for other in logs]))
        for i, member_logs in zip(self.member_ids, logs):
            out.update({f"member{i}_{k}": v for k, v in member_logs.items()})
        return out

    def _member_callbacks(self, callbacks) -> list | None:
        if callbacks is None:
            return None
        if callable(callbacks) and not isinstance(callbacks, (list, tuple)):
            return [list(callbacks(i) or []) for i in self.member_ids]
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise ValueError("Ensemble.fit: `callbacks` must hold Callback instances "
                                 f"(copied for each member). Received: {cb!r}")
        return [[copy.deepcopy(cb) for cb in callbacks] for _ in self.members]

    # ------------------------------------------------------------------ loops
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, ensemble_callbacks=None):
        """Trains every member on the same batches; takes what ``Model.fit`` takes.

        Args:
            callbacks: callbacks run per member on that member's logs (``loss``,
                ``val_loss``, ...): a list, copied for each member, or a function
                ``i -> list`` for member ``i`` (its index in the whole ensemble). An
                ``EarlyStopping`` stops its member; the others go on.
            ensemble_callbacks: callbacks run once on the ensemble's logs
                (``mean_loss``, ``member0_loss``, ...) with ``model`` the ensemble;
                setting ``stop_training`` there stops every member.
        Returns:
            A ``History`` of the ensemble's logs (a stopped member keeps its last values).
        """
        kwargs = dict(batch_size=batch_size, epochs=epochs, verbose=verbose,
                      validation_split=validation_split, validation_data=validation_data,
                      shuffle=shuffle, class_weight=class_weight, sample_weight=sample_weight,
                      initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                      validation_steps=validation_steps,
                      validation_batch_size=validation_batch_size,
                      validation_freq=validation_freq)
        if not self._mpi:
            return self._trainer().fit(x, y, callbacks=ensemble_callbacks,
                                       member_callbacks=self._member_callbacks(callbacks),
                                       **kwargs)
        return self._fit_mpi(x, y, ensemble_callbacks, self._member_callbacks(callbacks),
                             kwargs)

    def _fit_mpi(self, x, y, ensemble_callbacks, member_callbacks, kw):
        """fit under an MPI share mode: the same epochs and data passes on every rank; a
        rank with no members left training (or none at all) keeps preparing or receiving
        batches until every rank is done."""
        from hybridnet.training.callbacks import History
        mode = self.share
        mode._recording = streams = []
        try:
            if self.members:
                sync = _EpochSync(mode, kw["initial_epoch"])
                history = self._trainer().fit(
                    x, y, callbacks=list(ensemble_callbacks or []) + [sync],
                    member_callbacks=member_callbacks, **kw)
                start, done = sync.next_epoch, sync.all_done
            else:
                history = History()
                self._open_streams(x, y, kw)
                start, done = kw["initial_epoch"], False
            if not done and start < kw["epochs"]:
                split = bool(kw["validation_split"])
                train = streams[1] if split else streams[0]
                val = streams[-1] if split or kw["validation_data"] is not None else None
                mode.feed(train, val, range(start, kw["epochs"]), kw["validation_freq"])
        finally:
            mode._recording = None
            mode.last_streams = streams
        return history

    def _open_streams(self, x, y, kw):
        """The data adapters ``Trainer.fit`` would open, wrapped by the share mode (a
        preprocess-only rank prepares the same batches)."""
        from hybridnet.data import get_data_adapter
        data = self.share.wrap(get_data_adapter(
            x, y, kw["sample_weight"], batch_size=kw["batch_size"],
            steps_per_epoch=kw["steps_per_epoch"], shuffle=kw["shuffle"],
            class_weight=kw["class_weight"], what="fit"))
        if kw["validation_split"]:
            data.split(kw["validation_split"], validation_batch_size=kw[
                "validation_batch_size"], validation_steps=kw["validation_steps"])
        vd = kw["validation_data"]
        if vd is not None:
            args = (vd[0], vd[1], vd[2] if len(vd) == 3 else None) if isinstance(
                vd, tuple) and len(vd) in (2, 3) and not isinstance(vd[0], tuple) else (
                vd, None, None)
            self.share.wrap(get_data_adapter(
                *args, batch_size=kw["validation_batch_size"] or kw["batch_size"],
                steps_per_epoch=kw["validation_steps"], shuffle=False,
                what="fit(validation_data)"))

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None) -> dict:
        """Each member's loss and metrics, their means and, with array targets ``y`` and
        single-output members, the votes' accuracy.

        Returns:
            ``{"mean_loss", ..., "member0_loss", ..., "soft_vote_accuracy",
            "hard_vote_accuracy"}``.
        """
        if not self.members:  # a preprocess-only rank
            return {}
        logs = self._trainer(shared=False).evaluate(x, y, batch_size=batch_size, verbose=0,
                                        sample_weight=sample_weight, steps=steps,
                                        callbacks=callbacks, return_dict=True)
        if y is not None and hasattr(y, "__len__") and not isinstance(y, (dict, list)):
            pred = self.predict(x, batch_size=batch_size, steps=steps)
            if pred.soft is not None:
                labels = votes.class_labels(np.asarray(y)[:len(pred.hard)],
                                            pred.soft.shape[-1])
                logs["soft_vote_accuracy"] = float(np.mean(pred.soft.argmax(-1) == labels))
                logs["hard_vote_accuracy"] = float(np.mean(pred.hard == labels))
        if verbose not in (0, False):
            from hybridnet.training.callbacks import _format_value
            print(" - ".join(f"{k}: {_format_value(v)}" for k, v in logs.items()))
        return logs

    def predict(self, x, batch_size=None, verbose="auto", steps=None,
                callbacks=None) -> Predictions:
        """Each member's predictions and, for single-output members, the soft vote
        (mean probabilities; logits are turned into probabilities first) and the hard
        vote (majority class)."""
        if not self.members:  # a preprocess-only rank
            return Predictions([], None, None)
        outputs = self._trainer(shared=False).predict(x, batch_size=batch_size, verbose=verbose,
                                          steps=steps, callbacks=callbacks)
        outputs = outputs if len(self.members) > 1 else [outputs]
        if any(len(m.outputs) != 1 for m in self.members):
            return Predictions(outputs, None, None)
        probs = np.stack([_probabilities(m, out) for m, out in zip(self.members, outputs)])
        return Predictions(outputs, votes.soft_vote(probs), votes.hard_vote(probs))

    # ----------------------------------------------------------------- saving
    def save(self, dirpath, overwrite: bool = True) -> None:
        """Writes every member (``member_<i>.hnet``: weights, optimizer state, compile
        arguments) and ``ensemble.json`` into the directory ``dirpath``.

        Under an MPI share mode ``save`` is collective: every rank writes its own members
        (named by their index in the whole ensemble) and rank 0 the index of all of them.

        Example:
            >>> ens.save("runs/ens"); ens2 = hybridnet.ensemble.load("runs/ens")
        """
        dirpath = os.fspath(dirpath)
        index = os.path.join(dirpath, "ensemble.json")
        if os.path.exists(index) and not overwrite:
            raise FileExistsError(f"Ensemble.save: {index} exists. Received: overwrite=False")
        os.makedirs(dirpath, exist_ok=True)
        if self._mpi and not self._built_members:
            rank = self.share.rank
            files = [f"member_r{rank}_{i}.hnet" for i in range(len(self.members))]
        else:
            files = [f"member_{i}.hnet" for i in self.member_ids]
        for model, file in zip(self.members, files):
            model.save(os.path.join(dirpath, file), overwrite=True)
        if self._mpi:
            world = self.share.setup()._world
            docs = world.channel.exchange({"files": files}, what="Ensemble.save")
            if world.rank != 0:
                return
            files = [f for doc in docs for f in doc["files"]]
            files.sort(key=lambda f: (len(f), f))
        config = {"format": FORMAT, "version": VERSION, "name": self.name,
                  "stacked": self.stacked, "share": self.share.name, "members": files}
        tmp = index + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, index)

    @classmethod
    def load(cls, dirpath, custom_objects: dict | None = None, share=None) -> "Ensemble":
        """The ensemble ``save`` wrote to ``dirpath`` (``share`` overrides the saved
        share mode, e.g. "local" to evaluate an MPI-trained ensemble in one process)."""
        from hybridnet.models import load_model
        dirpath = os.fspath(dirpath)
        index = os.path.join(dirpath, "ensemble.json")
        if not os.path.exists(index):
            raise FileNotFoundError(f"Ensemble.load: no ensemble.json in {dirpath!r}. "
                                    f"Expected a directory written by Ensemble.save")
        with open(index) as f:
            config = json.load(f)
        if config.get("format") != FORMAT or config.get("version", 0) > VERSION:
            raise ValueError(f"Ensemble.load: {index} is not a {FORMAT} file of version "
                             f"<= {VERSION}. Received: format={config.get('format')!r}, "
                             f"version={config.get('version')!r}")
        models = [load_model(os.path.join(dirpath, name), custom_objects=custom_objects)
                  for name in config["members"]]
        return cls(models, share=share if share is not None else config["share"],
                   stacked=config["stacked"], name=config.get("name", "ensemble"))

    def __repr__(self):
        kind = "stacked" if self.stacked else "list"
        return (f"<Ensemble {self.name!r}: {len(self.members)} members ({kind}), "
                f"share={self.share.name!r}>")


class _EpochSync(Callback):
    """Under an MPI share mode, at every epoch's end: whether every rank's members have
    all stopped (a collective exchange; every rank takes part in every epoch)."""

    def __init__(self, mode, initial_epoch: int):
        super().__init__()
        self.mode, self.next_epoch, self.all_done = mode, initial_epoch, False

    def on_epoch_end(self, epoch, logs=None):
        done = all(m.stop_training for m in self.model.members)
        self.all_done = self.mode.all_done(done)
        self.next_epoch = epoch + 1


def _probabilities(model, output) -> np.ndarray:
    """A member's output as class probabilities (softmax / sigmoid when its loss reads
    logits)."""
    out = np.asarray(output, np.float64)
    loss = model._losses[0] if getattr(model, "_losses", None) else None
    if getattr(loss, "from_logits", False):
        if out.shape[-1] == 1:
            return 1.0 / (1.0 + np.exp(-out))
        out = np.exp(out - out.max(axis=-1, keepdims=True))
        return out / out.sum(axis=-1, keepdims=True)
    return out


def load(dirpath, custom_objects: dict | None = None, share=None) -> Ensemble:
    """``Ensemble.load``: the ensemble saved in ``dirpath``."""
    return Ensemble.load(dirpath, custom_objects=custom_objects, share=share)


__all__ = ["Ensemble", "Predictions", "load"]
