"""Bias rewrites that take nodes out of an int8 decoder step without changing what it computes.

Builds on `onnx` graph edits; `quantize.per_row_matmuls` runs after it on int8 graphs and reads
weights with the same `weight_of`. There, every bias Add after a quantized MatMul stays a node
of its own (ONNX Runtime's fused MatMulIntegerToFloat would scale a bias by the per-row
activation scale, see `quantize._bias_apart`). At batch 1 such an Add costs about as much as the arithmetic around
it, so the biases of attention's keys and values, which attention itself makes redundant, go:

- **Keys**: a bias on the keys adds q . b to every score of a query, the same for every key, and
  softmax ignores a constant: dropped.
- **Values**: the probabilities of each query sum to 1, so a bias on the values comes out of
  attention unchanged, and through the output projection W as b @ W: added to that projection's
  own bias.

Each rewrite applies only where the pattern is exactly that: a 1-D float32 initializer bias,
tensors read only by the node the rewrite changes, no softcap on the attention. The self-attention
cache then holds keys and values without their biases; it is the graph's own state and only the
graph reads it. Cross-attention keys and values come from the encoder's outputs and keep theirs.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def weight_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The (K, N) float32 weight of a MatMul, or of a plain Gemm (alpha = beta = 1, A not
    transposed), whose weight is an initializer; None for any other node."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0)):
        return None
    value = numpy_helper.to_array(weight).astype(np.float32)
    return np.ascontiguousarray(value.T) if attrs.get("transB", 0) else value


class _Graph:
    """Producers, consumers and initializers of one graph, for local rewrites."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The node reading `name`, when exactly one does and it is not a graph output."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def vector(self, name: str) -> np.ndarray | None:
        """A 1-D float32 initializer's values; None for anything else."""
        init = self.inits.get(name)
        if init is None or len(init.dims) != 1 or init.data_type != onnx.TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(init)

    def bias_add(self, name: str) -> tuple[onnx.NodeProto, str, str] | None:
        """(the Add, its other input, the bias name) when `name` is made by Add(x, bias) of a
        1-D float32 initializer bias; else None."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Add" or len(node.input) != 2:
            return None
        for i in (0, 1):
            if self.vector(node.input[i]) is not None and node.input[1 - i] not in self.inits:
                return node, node.input[1 - i], node.input[i]
        return None

    def add_vector(self, name: str, value: np.ndarray) -> str:
        """Adds a float32 initializer named `name` (made unique) holding `value`; returns its name."""
        fresh, n = name, 1
        while fresh in self.inits:
            fresh, n = f"{name}/{n}", n + 1
        init = numpy_helper.from_array(value.astype(np.float32), fresh)
        self.graph.initializer.append(init)
        self.inits[fresh] = init
        return fresh


def _softcapped(node: onnx.NodeProto) -> bool:
    return any(a.name == "softcap" and a.f != 0.0 for a in node.attribute)


def _attention_biases(g: _Graph, removed: dict[int, onnx.NodeProto]) -> Counter[str]:
    done: Counter[str] = Counter()
    for node in g.graph.node:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or len(node.input) < 3 or _softcapped(node):
            continue
        key = g.bias_add(node.input[1])
        if key is not None and g.only_consumer(node.input[1]) is node:
            add, product, _ = key
            node.input[1] = product
            removed[id(add)] = add
            done["key bias dropped"] += 1
        value = g.bias_add(node.input[2])
        if value is None or g.only_consumer(node.input[2]) is not node:
            continue
        projection = g.only_consumer(node.output[0])
        weight = None if projection is None or projection.op_type != "MatMul" else weight_of(projection, g.inits)
        after = None if projection is None else g.only_consumer(projection.output[0])
        out_bias = None if after is None else g.bias_add(after.output[0])
        if weight is None or out_bias is None or out_bias[1] != projection.output[0]:
            continue
        add, product, bias = value
        b_out = out_bias[2]
        folded = g.vector(b_out) + g.vector(bias).astype(np.float64) @ weight.astype(np.float64)
        after.input[list(after.input).index(b_out)] = g.add_vector(f"{b_out}/with_value_bias", folded)
        node.input[2] = product
        removed[id(add)] = add
        done["value bias folded into the output projection"] += 1
    return done


def move_biases(model: onnx.ModelProto) -> Counter[str]:
    """Applies the rewrites above to `model` in place; returns how many of each it made."""
    graph = model.graph
    removed: dict[int, onnx.NodeProto] = {}
    done = _attention_biases(_Graph(graph), removed)
    nodes = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return done
