"""ONNX GRU nodes: their inputs, weights, options and initial states in the canonical layout.

ONNX stores gates as (z, r, h) with W (dirs, 3H, D), R (dirs, 3H, H), B (dirs, 6H), the canonical
order, so weights are taken as they are. Which GRU nodes form a stack is decided in onnx_stack.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fastgru._weights import DIRECTIONS, Int8Layer, LayerWeights, num_directions
from fastgru.errors import FormatError
from fastgru.loaders import onnx_fold
from fastgru.loaders.onnx_graph import (constant_names, decode, fold_constants, node_attributes,
                                        producers)


WHOLE_GRAPHS = ("fastgru.InferenceSession runs whole graphs, and node= reads one GRU node of "
                "them")


MIN_OPSET = 7  # GRU-7 dropped GRU-3's output_sequence attribute; the semantics since are stable


DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")



def _weight(values: dict, name: str, role: str, node_name: str) -> np.ndarray:
    """A GRU weight input as float64, from the folded constants."""
    where = f"GRU node {node_name!r}: {role} ({name!r})"
    array = values.get(name)
    if array is None:
        raise FormatError(f"GRU node {node_name!r}: input {role} ({name!r}) must be a constant "
                          f"(an initializer, a Constant, or computed from those), but it is "
                          f"computed or fed at run time")
    if array.dtype.kind != "f":
        raise FormatError(f"{where} must be floating point, got {array.dtype.name.upper()}")
    if array.ndim > 3:
        raise FormatError(f"{where} has an invalid shape {list(array.shape)}")
    with np.errstate(invalid="ignore"):  # a signalling NaN; GRUSpec refuses NaN later
        return array.astype(np.float64)



def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)



def gru_inputs(node) -> list[str]:
    """A GRU node's six inputs X, W, R, B, sequence_lens, initial_h ("" where absent)."""
    return (list(node.input) + [""] * 6)[:6]



def read_gru_node(node, values: dict):
    """(LayerWeights, options dict, layout == 1) of one GRU node; values: its folded constant
    inputs (fold_constants)."""
    name = node.name or "<unnamed>"
    attrs = node_attributes(node)
    direction = _text(attrs.get("direction", b"forward"))
    if direction not in DIRECTIONS:
        raise FormatError(f"GRU node {name!r}: direction must be one of {DIRECTIONS}, "
                          f"got {direction!r}")
    dirs = num_directions(direction)
    activations = [_text(a) for a in attrs.get("activations", [])]
    if activations and tuple(activations) != DEFAULT_ACTIVATIONS * dirs:
        other = sorted(set(activations) - set(DEFAULT_ACTIVATIONS)) or activations
        raise FormatError(f"GRU node {name!r}: only the default activations "
                          f"{list(DEFAULT_ACTIVATIONS)} are supported, got {other}")
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        raise FormatError(f"GRU node {name!r}: layout must be 0 or 1, got {layout}")
    lbr = attrs.get("linear_before_reset", 0)
    if lbr not in (0, 1):
        raise FormatError(f"GRU node {name!r}: linear_before_reset must be 0 or 1, got {lbr}")
    clip = attrs.get("clip")
    if clip is not None and not (isinstance(clip, float) and clip > 0):
        raise FormatError(f"GRU node {name!r}: clip must be a positive number, got {clip!r}")

    inputs = gru_inputs(node)
    if not inputs[1] or not inputs[2]:
        raise FormatError(f"GRU node {name!r} lacks its W or R input")
    r = _weight(values, inputs[2], "R", name)
    if r.ndim != 3 or r.shape[0] != dirs or r.shape[1] != 3 * r.shape[2] or r.shape[2] == 0:
        raise FormatError(f"GRU node {name!r}: R must have shape ({dirs}, 3*H, H) for direction "
                          f"{direction!r}, got {r.shape}")
    H = r.shape[2]
    if "hidden_size" in attrs and attrs["hidden_size"] != H:
        raise FormatError(f"GRU node {name!r}: hidden_size={attrs['hidden_size']} but R has "
                          f"shape {r.shape} (H={H})")
    w = _weight(values, inputs[1], "W", name)
    if w.ndim != 3 or w.shape[:2] != (dirs, 3 * H) or w.shape[2] == 0:
        raise FormatError(f"GRU node {name!r}: W must have shape ({dirs}, {3 * H}, input_size), "
                          f"got {w.shape}")
    b = _weight(values, inputs[3], "B", name) if inputs[3] else np.zeros((dirs, 6 * H))
    if b.shape != (dirs, 6 * H):
        raise FormatError(f"GRU node {name!r}: B must have shape {(dirs, 6 * H)}, got {b.shape}")
    options = {"direction": direction, "linear_before_reset": bool(lbr),
               "clip": None if clip is None else float(clip)}
    return LayerWeights(w=w, r=r, b=b), options, layout == 1



def read_gru(graph, folder, opset: int, node, values: dict):
    """read_gru_node's (LayerWeights, options, layout), the layer carrying its int8 values and
    scales where W and R come quantized (int8_weights)."""
    layer, options, layout = read_gru_node(node, values)
    int8 = int8_weights(graph, folder, opset, node)
    return (layer if int8 is None else replace(layer, int8=int8)), options, layout


def int8_weights(graph, folder, opset: int, node) -> Int8Layer | None:
    """A GRU node's W and R as int8 values and a scale per row, where each comes straight from
    a DequantizeLinear of int8 constants that is symmetric (no zero point, or zeros) with one
    scale, a scale per direction (axis 0) or a scale per row (axis 1); else None (the weights
    are then read as the floats they dequantize to, by constant folding)."""
    made_by = producers(graph)
    parts = []
    for name in gru_inputs(node)[1:3]:
        dequantize = made_by.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        x, scale, zero = (list(dequantize.input) + ["", ""])[:3]
        got = fold_constants(graph, folder, {n: f"DequantizeLinear input {n!r}"
                                             for n in (x, scale, zero) if n}, opset)
        if x not in got or scale not in got or (zero and zero not in got):
            return None  # computed from the graph's inputs: not weights
        values, scales = got[x], got[scale]
        attrs = node_attributes(dequantize)
        if values.dtype != np.int8 or values.ndim != 3 or scales.dtype != np.float32 or \
                onnx_fold.dequantized_dtype(scales, attrs) != np.float32 or \
                (zero and np.any(got[zero] != 0)):
            return None
        try:
            shape = onnx_fold.scale_shape(values, scales, attrs)
        except ValueError:
            return None
        if len(shape) == 3 and shape[2] == -1:  # a scale per input column is not per row
            return None
        rows = np.broadcast_to(scales.reshape(shape[:2] if shape else ()), values.shape[:2])
        parts += [values, np.ascontiguousarray(rows, np.float32)]
    return Int8Layer(*parts)


def gru_nodes(graph) -> list:
    return [n for n in graph.node if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]



def constant_inputs(graph, folder, grus, opset: int) -> dict[str, np.ndarray]:
    """The folded constant inputs (W, R, B, and sequence_lens / initial_h when constant) of
    the GRU nodes `grus`."""
    for gru in grus:
        if len(gru.input) < 3 or len(gru.output) < 1:
            raise FormatError(f"GRU node {gru.name or '<unnamed>'!r} needs at least the inputs "
                              f"X, W, R and one output, got {len(gru.input)} and "
                              f"{len(gru.output)}")
    roles = {}
    for gru in grus:
        for name, role in zip(gru.input[1:], ("W", "R", "B", "sequence_lens", "initial_h"),
                              strict=False):
            roles.setdefault(name, f"GRU node {gru.name or '<unnamed>'!r}: {role} ({name!r})")
    return fold_constants(graph, folder, roles, opset)


# Ops whose result is all zeros when their data input (the first; every input for Concat) is:
# they only move, select or replicate values.
_KEEPS_ZEROS = {"Identity", "Cast", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
                "Expand", "Tile", "Gather", "Flatten", "Concat"}



def stored_state(graph, name: str, folder, opset: int):
    """What a GRU's initial_h `name` is whatever the graph's inputs, or None when it depends on
    them (a state the caller passes).

    Returns 0.0 for zeros of any shape (a constant of zeros, ConstantOfShape 0, or moves of
    those: exporters write these when a model passes no state), or the constant ndarray that a
    constant initial_h holds or that an Expand broadcasts to the batch (a stored state).
    """
    made_by = producers(graph)
    constants = constant_names(graph)

    def constant(n):
        return fold_constants(graph, folder, {n: f"initial_h ({n!r})"}, opset).get(n)

    node = made_by.get(name)
    if name in constants:
        value = constant(name)
        return 0.0 if not np.any(value) else value
    if node is not None and node.op_type == "Expand" and node.input[0] in constants:
        value = constant(node.input[0])
        return 0.0 if not np.any(value) else value
    pending, seen = [name], set()
    while pending:  # zeros shaped at run time
        current = pending.pop()
        if not current or current in seen:
            return None
        seen.add(current)
        node = made_by.get(current)
        if current in constants:
            if np.any(constant(current)):
                return None
        elif node is None or node.domain not in ("", "ai.onnx"):
            return None
        elif node.op_type == "ConstantOfShape":
            fill = [decode(a.t, folder, f"ConstantOfShape {node.name!r}")
                    for a in node.attribute if a.name == "value"]
            if fill and np.any(fill[0]):
                return None
        elif node.op_type in _KEEPS_ZEROS and node.input:
            pending.extend(node.input if node.op_type == "Concat" else node.input[:1])
        else:
            return None
    return 0.0



def layer_state(value, dirs: int, hidden: int, where: str) -> np.ndarray:
    """A stored initial_h (0.0, or a constant broadcast over the batch) as (dirs, H)."""
    if isinstance(value, float):
        return np.zeros((dirs, hidden))
    array = np.asarray(value, np.float64)
    if array.ndim != 3 or array.shape[1] != 1:
        raise FormatError(f"{where}: its initial_h is a constant of shape {list(array.shape)}; "
                          f"a stored initial state must be ({dirs}, 1, {hidden}), the same for "
                          f"every batch row; {WHOLE_GRAPHS}")
    try:
        return np.broadcast_to(array, (dirs, 1, hidden))[:, 0, :].copy()
    except ValueError:
        raise FormatError(f"{where}: its initial_h has shape {list(array.shape)}, expected "
                          f"({dirs}, 1, {hidden})") from None
