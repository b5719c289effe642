"""ONNX GRU graphs to the canonical layout: the stack a graph holds, or one of its GRU nodes.

The file is read without the onnx package (onnx_graph, onnx_proto); what the nodes mean is
decided from the whole dataflow (onnx_stack, onnx_dataflow; docs/onnx-patterns.md lists the
rules); a node's weights and options are read by onnx_node.
"""

from __future__ import annotations

import numpy as np

from fastgru._weights import GRUSpec, num_directions
from fastgru.errors import FormatError
from fastgru.loaders import onnx_graph, onnx_node
from fastgru.loaders.onnx_stack import name_of, read_stack


def spec_from_onnx(src, node: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of the GRU stack in an ONNX graph, or of the node named `node`."""
    model, folder = onnx_graph.load_model(src)
    opset = onnx_graph.opset(model)
    if opset < onnx_node.MIN_OPSET:
        raise FormatError(f"ONNX opset {opset} is not supported; GRU is read from opset "
                          f"{onnx_node.MIN_OPSET} on")
    graph = model.graph
    grus = onnx_node.gru_nodes(graph)
    if not grus:
        kinds = sorted({n.op_type for n in graph.node})
        raise FormatError(f"the ONNX graph has no GRU node (its op types: {kinds})")
    if node is not None:
        named = [n for n in grus if n.name == node]
        if not named:
            raise ValueError(f"no GRU node named {node!r}; GRU nodes: {[n.name for n in grus]}")
        grus = named[:1]
    values = onnx_node.constant_inputs(graph, folder, grus, opset)
    read = {id(g): onnx_node.read_gru(graph, folder, opset, g, values) for g in grus}
    if node is not None:
        return _single_node(graph, folder, opset, grus[0], read[id(grus[0])])
    stack = read_stack(graph, folder, opset, grus, values, read)
    first = read[id(stack.chain[0])]
    stored = [s for s in stack.states if s is not None]
    initial = np.concatenate(stored) if stored and len(stored) == len(stack.states) and \
        any(np.any(s) for s in stored) else None
    try:
        spec = GRUSpec(tuple(read[id(g)][0] for g in stack.chain), **first[1],
                       initial_state=initial)
    except ValueError as error:
        raise FormatError(f"the GRU stack is inconsistent: {error}") from None
    return spec, stack.batch_first


def _single_node(graph, folder, opset, gru, read) -> tuple[GRUSpec, bool]:
    """One GRU node as a model: its constant initial_h is the stored state; a constant
    sequence_lens cannot be kept."""
    layer, options, layout = read
    _, _, _, _, lengths, h0 = onnx_node.gru_inputs(gru)
    if lengths and lengths in onnx_graph.constant_names(graph):
        raise FormatError(f"{name_of(gru)}: its sequence_lens is a constant, which a GRU model "
                          f"read alone cannot keep; pass lengths= when calling it, or use "
                          f"fastgru.InferenceSession")
    dirs = num_directions(options["direction"])
    value = onnx_node.stored_state(graph, h0, folder, opset) if h0 else 0.0
    initial = None
    if value is not None and not isinstance(value, float):
        initial = onnx_node.layer_state(value, dirs, layer.r.shape[-1], name_of(gru))
    try:
        return GRUSpec((layer,), **options, initial_state=initial), bool(layout)
    except ValueError as error:
        raise FormatError(f"{name_of(gru)}: {error}") from None
