"""A functional graph of layer calls: topological order and a pure runner.

``Graph`` is built once from symbolic inputs and outputs; ``Graph.run`` is a pure
function of (weights, inputs) that jit, grad and vmap can transform.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hybridnet.layers.base import InputLayer, KerasTensor, Layer, Node

_is_kt = lambda t: isinstance(t, KerasTensor)  # noqa: E731


def _flatten_tensors(tree) -> list[KerasTensor]:
    return [t for t in jax.tree_util.tree_leaves(tree, is_leaf=_is_kt) if _is_kt(t)]


class Graph:
    """The nodes between ``inputs`` and ``outputs`` in execution order."""

    def __init__(self, inputs: list[KerasTensor], outputs: list[KerasTensor]):
        for t in inputs:
            if not _is_kt(t) or not isinstance(t.node.layer, InputLayer):
                raise ValueError("Model inputs must be tensors returned by hybridnet.Input(). "
                                 f"Received: {t!r}")
        for t in outputs:
            if not _is_kt(t):
                raise ValueError(f"Model outputs must be symbolic tensors. Received: {t!r}")
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.nodes: list[Node] = self._topological_nodes()
        self.layers: list[Layer] = []
        for t in self.inputs:
            self.layers.append(t.node.layer)
        for node in self.nodes:
            if node.layer not in self.layers:
                self.layers.append(node.layer)
        names = [layer.name for layer in self.layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Layer names must be unique within a model. Received duplicate "
                             f"names: {duplicates}")

    def _topological_nodes(self) -> list[Node]:
        order: list[Node] = []
        state: dict[int, int] = {}  # 1 = visiting, 2 = done
        input_ids = {id(t) for t in self.inputs}

        def visit(node: Node):
            if state.get(id(node)) == 2:
                return
            if state.get(id(node)) == 1:
                raise ValueError(f"The graph has a cycle at layer '{node.layer.name}'.")
            state[id(node)] = 1
            for t in node.input_tensors:
                if id(t) in input_ids:
                    continue
                if isinstance(t.node.layer, InputLayer):
                    raise ValueError(
                        f"Layer '{node.layer.name}' depends on input '{t.node.layer.name}', "
                        f"which is not among the model's inputs "
                        f"{[i.node.layer.name for i in self.inputs]}.")
                visit(t.node)
            state[id(node)] = 2
            order.append(node)

        for t in self.outputs:
            if id(t) not in input_ids:
                visit(t.node)
        return order

    def run(self, weights: dict, inputs: list, *, training: bool = False, rng=None,
            constrain=None):
        """Runs the graph. Returns ``(outputs, output_masks, updates)``.

        ``weights`` maps layer name -> {weight name -> array}; ``updates`` maps layer name
        -> new non-trainable values produced in training (e.g. BatchNorm statistics).
        ``constrain(layer_name, value)``, if given, is applied to every layer output (the
        executor uses it for the Plan's sharding constraints).
        """
        values: dict[int, Any] = {id(t): v for t, v in zip(self.inputs, inputs)}
        masks: dict[int, Any] = {}
        updates = self.run_nodes(range(len(self.nodes)), weights, values, masks,
                                 training=training, rng=rng, constrain=constrain)
        return ([values[id(t)] for t in self.outputs], [masks.get(id(t)) for t in self.outputs],
                updates)

    def run_nodes(self, indices, weights: dict, values: dict, masks: dict, *,
                  training: bool = False, rng=None, constrain=None) -> dict:
        """Runs ``self.nodes[i]`` for ``i`` in ``indices`` (in order), reading and writing
        tensor values and masks keyed by ``id(KerasTensor)``. Returns the state updates.

        The building block of pipeline stages: a stage runs a contiguous range of nodes.
        """
        updates: dict[str, dict] = {}
        lookup = lambda t: values[id(t)] if _is_kt(t) else t  # noqa: E731
        for index in indices:
            node = self.nodes[index]
            layer = node.layer
            args = jax.tree_util.tree_map(lookup, list(node.args), is_leaf=_is_kt)
            inputs_ = args[0]
            kwargs = jax.tree_util.tree_map(lookup, dict(node.kwargs), is_leaf=_is_kt)
            mask = kwargs.pop("mask", None)
            if mask is None:
                mask = _masks_of(node.args[0], masks)
            layer_rng = None if rng is None else jax.random.fold_in(rng, index)
            out, new = layer.apply(weights.get(layer.name, {}), *args, training=training,
                                   rng=layer_rng, mask=mask, **kwargs)
            if new:
                updates[layer.name] = {**updates.get(layer.name, {}), **new}
            out_mask = layer.compute_mask(inputs_, mask)
            out_tensors = _flatten_tensors(node.outputs)
            out_values = out if isinstance(out, (list, tuple)) else [out]
            out_masks = out_mask if isinstance(out_mask, (list, tuple)) else [out_mask] * len(
                out_tensors)
            for t, v, m in zip(out_tensors, out_values, out_masks):
                values[id(t)] = v if constrain is None else constrain(layer.name, v)
                if m is not None:
                    masks[id(t)] = m
        return updates

    # ------------------------------------------------------------ serialisation
    def to_config(self) -> dict:
        """Keras-like functional config: layers with their inbound nodes."""
        used = {id(n) for n in self.nodes}
        node_index = {}
        for layer in self.layers:
            for i, node in enumerate(n for n in layer._inbound_nodes if id(n) in used):
                node_index[id(node)] = i

        def ref(t: KerasTensor):
            if isinstance(t.node.layer, InputLayer):
                return [t.node.layer.name, 0, 0]
            return [t.node.layer.name, node_index[id(t.node)], t.index]

        def encode(tree):
            return jax.tree_util.tree_map(
                lambda t: {"__tensor__": ref(t)} if _is_kt(t) else _jsonable(t), tree,
                is_leaf=_is_kt)

        layers = []
        for layer in self.layers:
            entry = {"class_name": type(layer).__name__, "config": layer.get_config(),
                     "inbound_nodes": []}
            for node in layer._inbound_nodes:
                if id(node) in used:
                    entry["inbound_nodes"].append({"args": encode(list(node.args)),
                                                   "kwargs": encode(dict(node.kwargs))})
            layers.append(entry)
        return {"layers": layers, "input_layers": [ref(t) for t in self.inputs],
                "output_layers": [ref(t) for t in self.outputs]}

    @staticmethod
    def from_config(config: dict, get_class) -> "Graph":
        """Rebuilds layers and re-calls them symbolically, in saved order."""
        layers, tensors = {}, {}  # tensors: (layer, node, index) -> KerasTensor

        def decode(tree):
            if isinstance(tree, dict) and "__tensor__" in tree:
                return tensors[tuple(tree["__tensor__"])]
            if isinstance(tree, dict):
                return {k: decode(v) for k, v in tree.items()}
            if isinstance(tree, list):
                return [decode(v) for v in tree]
            return tree

        pending = []
        for entry in config["layers"]:
            cls = get_class(entry["class_name"])
            layer = cls.from_config(dict(entry["config"]))
            layers[layer.name] = layer
            if isinstance(layer, InputLayer):
                tensors[(layer.name, 0, 0)] = layer.output
            else:
                pending.extend((layer, i, n) for i, n in enumerate(entry["inbound_nodes"]))
        # Nodes may depend on nodes of layers listed later: retry until all resolve.
        while pending:
            progressed, rest = False, []
            for layer, i, node in pending:
                try:
                    args, kwargs = decode(node["args"]), decode(node["kwargs"])
                except KeyError:
                    rest.append((layer, i, node))
                    continue
                out = layer(*args, **kwargs)
                for j, t in enumerate(_flatten_tensors(out)):
                    tensors[(layer.name, i, j)] = t
                progressed = True
            if not progressed:
                raise ValueError("Cannot rebuild the saved graph: unresolved layer inputs "
                                 f"{[layer.name for layer, _, _ in rest]}")
            pending = rest
        return Graph([tensors[tuple(r)] for r in config["input_layers"]],
                     [tensors[tuple(r)] for r in config["output_layers"]])


def _masks_of(tree, masks):
    if _is_kt(tree):
        return masks.get(id(tree))
    if isinstance(tree, (list, tuple)):
        found = [_masks_of(t, masks) for t in tree]
        return None if all(m is None for m in found) else found
    return None


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value
