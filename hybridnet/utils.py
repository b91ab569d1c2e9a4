"""Small shared utilities, and Keras' ``keras.utils``: ``set_random_seed``,
``to_categorical``, ``normalize``, ``pad_sequences``, ``PyDataset``, ``plot_model``.
"""
from __future__ import annotations

import collections
import os
import random
import re

import numpy as np

_SEEDS: list = [None]  # a numpy Generator after set_random_seed, else None
_NAME_COUNTS: collections.Counter = collections.Counter()


def set_random_seed(seed: int) -> None:
    """Seeds parameter initialisation, dropout, shuffling, Python's ``random`` and
    NumPy's global generator (like ``keras.utils.set_random_seed``).

    After it, every new layer and model draws its own seed from one sequence: models
    built one after the other get distinct weights, and repeating the same calls after
    the same ``set_random_seed`` reproduces them.

    Example:
        >>> hybridnet.utils.set_random_seed(42)
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: `seed` must be a non-negative int. "
                         f"Received: seed={seed!r}")
    _SEEDS[0] = np.random.default_rng(int(seed))
    random.seed(int(seed))
    np.random.seed(int(seed))
    _NAME_COUNTS.clear()


def next_seed() -> int:
    """The next seed of the global sequence (fresh entropy when no seed was set)."""
    if _SEEDS[0] is not None:
        return int(_SEEDS[0].integers(0, 2**31 - 1))
    return int.from_bytes(os.urandom(4), "little") >> 1


def next_rng_key():
    """A fresh PRNG key from the global sequence (eager layers in training mode)."""
    import jax
    return jax.random.PRNGKey(next_seed())


def snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base: str) -> str:
    """``dense``, ``dense_1``, ``dense_2``... as Keras names layers."""
    count = _NAME_COUNTS[base]
    _NAME_COUNTS[base] += 1
    return base if count == 0 else f"{base}_{count}"


def format_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")")


def normalize_tuple(value, n: int, name: str, owner: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; validates a tuple of ``n`` positive ints."""
    if isinstance(value, int):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"{owner}: `{name}` must be an int or a tuple of {n} positive ints. "
                         f"Received: {name}={value!r}")
    return tuple(int(v) for v in value)


def to_categorical(x, num_classes: int | None = None, dtype="float32"):
    """One-hot encodes integer class labels, as ``keras.utils.to_categorical``.

    A trailing axis of size 1 is dropped first; the class axis is placed last. NumPy
    (and list) input gives a NumPy array, a JAX array gives a JAX array.

    Example:
        >>> to_categorical([0, 2, 1], num_classes=3)
        array([[1., 0., 0.], [0., 0., 1.], [0., 1., 0.]], dtype=float32)
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)) or num_classes < 1):
        raise ValueError("to_categorical: `num_classes` must be a positive int or None. "
                         f"Received: num_classes={num_classes!r}")
    if _is_jax_array(x):
        import jax
        import jax.numpy as jnp
        if x.ndim > 1 and x.shape[-1] == 1:
            x = jnp.squeeze(x, -1)
        if num_classes is None:
            num_classes = int(jnp.max(x)) + 1
        return jax.nn.one_hot(x, num_classes, dtype=dtype)
    x = np.array(x)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        if not np.issubdtype(x.dtype, np.number) or np.any(x != np.round(x)):
            raise ValueError("to_categorical: `x` must hold integer class labels. "
                             f"Received: x with dtype {x.dtype}")
    x = x.astype("int64")
    shape = x.shape[:-1] if x.ndim > 1 and x.shape[-1] == 1 else x.shape
    x = x.reshape(-1)
    if num_classes is None:
        num_classes = int(x.max()) + 1 if x.size else 0
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must be in [0, {num_classes}). Received: "
                         f"labels from {int(x.min())} to {int(x.max())}")
    out = np.zeros((x.size, num_classes), dtype=dtype)
    out[np.arange(x.size), x] = 1
    return out.reshape(shape + (num_classes,))


def normalize(x, axis=-1, order=2):
    """Divides ``x`` by its ``order``-norm along ``axis``, as ``keras.utils.normalize``.

    NumPy input: zero norms are left as 1 (the zeros stay zeros). A JAX array: the
    L2 norm is clamped at ``1e-7`` squared (``keras.ops.normalize``).

    Example:
        >>> normalize(np.array([[3.0, 4.0]]))  # [[0.6, 0.8]]
    """
    if _is_jax_array(x):
        import jax.numpy as jnp
        if order == 2:
            square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
            return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(square_sum, 1e-7)))
        norm = jnp.linalg.norm(x, ord=order, axis=axis, keepdims=True)
        return x / jnp.maximum(norm, 1e-7)
    x = np.asarray(x)
    norm = np.atleast_1d(np.linalg.norm(x, order, axis))
    norm[norm == 0] = 1
    return x / np.expand_dims(norm, -1 if axis is None else axis)


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """Pads (and truncates) sequences to one length, as ``keras.utils.pad_sequences``.

    Args:
        sequences: a list of sequences (lists or arrays; items may be arrays of one
            shape).
        maxlen: the length of the result; default the longest sequence.
        dtype: the result's dtype (``object`` for variable-length strings).
        padding: "pre" or "post": where to pad.
        truncating: "pre" or "post": where to cut sequences longer than ``maxlen``.
        value: the padding value.

    Returns:
        A NumPy array of shape ``(len(sequences), maxlen) + item shape``.

    Example:
        >>> pad_sequences([[1], [2, 3], [4, 5, 6]], maxlen=2, padding="post")
        array([[1, 0], [2, 3], [5, 6]], dtype=int32)
    """
    if padding not in ("pre", "post"):
        raise ValueError(f"pad_sequences: `padding` must be 'pre' or 'post'. "
                         f"Received: padding={padding!r}")
    if truncating not in ("pre", "post"):
        raise ValueError(f"pad_sequences: `truncating` must be 'pre' or 'post'. "
                         f"Received: truncating={truncating!r}")
    if not hasattr(sequences, "__len__"):
        raise ValueError("pad_sequences: `sequences` must be a list of sequences. "
                         f"Received: {type(sequences).__name__}")
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(
            maxlen, (int, np.integer)) or maxlen < 0):
        raise ValueError(f"pad_sequences: `maxlen` must be an int >= 0 or None. "
                         f"Received: maxlen={maxlen!r}")
    lengths, sample_shape = [], None
    for i, seq in enumerate(sequences):
        if not hasattr(seq, "__len__"):
            raise ValueError("pad_sequences: `sequences` must be a list of sequences. "
                             f"Received: sequences[{i}]={seq!r}")
        lengths.append(len(seq))
        if sample_shape is None and len(seq):
            sample_shape = np.asarray(seq).shape[1:]
    sample_shape = sample_shape or ()
    maxlen = int(max(lengths, default=0)) if maxlen is None else int(maxlen)
    is_text = np.issubdtype(dtype, np.str_) or np.issubdtype(dtype, np.bytes_)
    if isinstance(value, str) and dtype is not object and not is_text:
        raise ValueError(f"pad_sequences: `dtype` {dtype} cannot hold the string `value`; "
                         f"use dtype=object for strings. Received: value={value!r}")
    out = np.full((len(sequences), maxlen) + tuple(sample_shape), value, dtype=dtype)
    if maxlen == 0:
        return out
    for i, seq in enumerate(sequences):
        if not len(seq):
            continue
        kept = np.asarray(seq[-maxlen:] if truncating == "pre" else seq[:maxlen], dtype=dtype)
        if kept.shape[1:] != tuple(sample_shape):
            raise ValueError(f"pad_sequences: every item must have shape {tuple(sample_shape)}. "
                             f"Received: shape {kept.shape[1:]} in sequences[{i}]")
        if padding == "post":
            out[i, :len(kept)] = kept
        else:
            out[i, -len(kept):] = kept
    return out


def _is_jax_array(x) -> bool:
    import jax
    return isinstance(x, jax.Array)


# ------------------------------------------------------------------------- plot_model

def _import_pydot():
    try:
        import pydot
    except ImportError:
        return None
    return pydot


def model_to_dot(model, show_shapes=False, show_dtype=False, show_layer_names=True,
                 rankdir="TB", expand_nested=False, dpi=200, show_layer_activations=False,
                 show_trainable=False, splines="ortho"):
    """The model's layer graph as a ``pydot.Dot`` (one node per layer, an edge per
    tensor passed between layers), as ``keras.utils.model_to_dot``.

    Raises:
        ImportError: ``pydot`` is not installed.
    """
    del expand_nested  # layers of a model are one level deep here
    pydot = _import_pydot()
    if pydot is None:
        raise ImportError("plot_model: you must install pydot (`pip install pydot`) for "
                          "`plot_model` / `model_to_dot` to work.")
    if not getattr(model, "built", False):
        raise ValueError(f"plot_model: model '{model.name}' has not been built yet. Build "
                         "it first by calling it on a batch of data, or give it an Input.")
    dot = pydot.Dot(graph_type="digraph", rankdir=rankdir, concentrate=True, dpi=dpi,
                    splines=splines)
    dot.set_node_defaults(shape="record")
    for layer in model.graph.layers:
        dot.add_node(pydot.Node(str(id(layer)), label=_layer_label(
            layer, show_shapes, show_dtype, show_layer_names, show_layer_activations,
            show_trainable)))
    for node in model.graph.nodes:
        for tensor in node.input_tensors:
            src, dst = str(id(tensor.node.layer)), str(id(node.layer))
            if not dot.get_edge(src, dst):
                dot.add_edge(pydot.Edge(src, dst))
    return dot


def _layer_label(layer, show_shapes, show_dtype, show_names, show_activations,
                 show_trainable) -> str:
    parts = [f"{layer.name} ({type(layer).__name__})" if show_names else type(layer).__name__]
    activation = getattr(layer, "activation", None)
    if show_activations and activation is not None:
        parts.append("activation: " + getattr(activation, "__name__", str(activation)))
    if show_dtype:
        parts.append(f"dtype: {getattr(layer, 'dtype', None)}")
    if show_shapes:
        nodes = getattr(layer, "_inbound_nodes", None)
        outs = nodes[0].output_tensors if nodes else [getattr(layer, "output", None)]
        shapes = [format_shape(t.shape) for t in outs if t is not None]
        parts.append("output: " + (", ".join(shapes) or "?"))
    if show_trainable:
        parts.append(f"trainable: {bool(getattr(layer, 'trainable', True))}")
    return "\\n".join(p.replace("{", "\\{").replace("}", "\\}").replace("|", "\\|")
                       .replace("<", "\\<").replace(">", "\\>") for p in parts)


def plot_model(model, to_file="model.png", show_shapes=False, show_dtype=False,
               show_layer_names=False, rankdir="TB", expand_nested=False, dpi=200,
               show_layer_activations=False, show_trainable=False, splines="ortho",
               **kwargs):
    """Draws the model's layer graph to an image file, as ``keras.utils.plot_model``.

    Needs ``pydot`` and the Graphviz ``dot`` program; raises ImportError naming the
    missing one.

    Example:
        >>> hybridnet.utils.plot_model(model, "model.png", show_shapes=True)
    """
    if kwargs:
        raise ValueError(f"plot_model: unrecognized keyword arguments. Received: {kwargs}")
    pydot = _import_pydot()
    if pydot is None:
        raise ImportError("plot_model: you must install pydot (`pip install pydot`) for "
                          "`plot_model` to work.")
    try:
        pydot.Dot.create(pydot.Dot())
    except (OSError, pydot.PydotException, FileNotFoundError) as e:
        raise ImportError("plot_model: you must install Graphviz (its `dot` program must "
                          "be on PATH, e.g. `apt-get install graphviz`) for `plot_model` "
                          "to work.") from e
    dot = model_to_dot(model, show_shapes=show_shapes, show_dtype=show_dtype,
                       show_layer_names=show_layer_names, rankdir=rankdir,
                       expand_nested=expand_nested, dpi=dpi,
                       show_layer_activations=show_layer_activations,
                       show_trainable=show_trainable, splines=splines)
    to_file = os.fspath(to_file)
    extension = os.path.splitext(to_file)[1][1:] or "png"
    dot.write(to_file, format=extension)
    if extension != "pdf":
        try:
            from IPython import display
        except ImportError:
            return None
        return display.Image(filename=to_file)
    return None


def __getattr__(name):
    # Imported on use: those modules import this one.
    if name == "PyDataset":
        from hybridnet.data.py_dataset import PyDataset
        return PyDataset
    if name in ("register_keras_serializable", "get_registered_name", "get_registered_object",
                "custom_object_scope", "get_custom_objects"):
        from hybridnet import saving
        return getattr(saving, name)
    raise AttributeError(f"module 'hybridnet.utils' has no attribute {name!r}")
