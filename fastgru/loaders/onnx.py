"""One ONNX GRU node (weights as initializers or Constant nodes) to the canonical layout.

ONNX already stores gates as (z, r, h) with W (dirs, 3H, D), R (dirs, 3H, H), B (dirs, 6H), so
the weights are taken as they are; the attributes become the spec's options.
"""

from __future__ import annotations

import os

import numpy as np

from fastgru._weights import DIRECTIONS, GRUSpec, LayerWeights

MIN_OPSET = 7  # GRU-7 dropped GRU-3's output_sequence attribute; the semantics since are stable
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")


def _load_model(src):
    import onnx

    if isinstance(src, onnx.ModelProto):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_from_string(bytes(src))
        except Exception as error:  # protobuf raises its own DecodeError types
            raise ValueError(f"these bytes are not an ONNX model: {error}") from None
    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"no ONNX file at {os.fspath(src)!r}")
        try:
            return onnx.load(os.fspath(src), load_external_data=False)
        except Exception as error:
            raise ValueError(f"{os.fspath(src)!r} is not an ONNX model: {error}") from None
    raise TypeError(f"from_onnx takes a path, bytes or onnx.ModelProto, got {type(src).__name__}")


def _constants(graph) -> dict[str, object]:
    """Tensors known before run time: initializers and the outputs of Constant nodes."""
    from onnx import helper

    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = helper.get_attribute_value(attr)
    return tensors


def _tensor(tensors, name: str, role: str, node_name: str) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    tensor = tensors.get(name)
    if tensor is None:
        raise ValueError(f"GRU node {node_name!r}: input {role} ({name!r}) must be an initializer "
                         f"or a Constant, but it is computed or fed at run time")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"GRU node {node_name!r}: {role} ({name!r}) is stored as external data, "
                         f"which this reader does not follow")
    array = numpy_helper.to_array(tensor)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise TypeError(f"GRU node {node_name!r}: {role} must be floating point, got {array.dtype}")
    return array.astype(np.float64)


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def _pick_node(graph, node: str | None):
    grus = [n for n in graph.node if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]
    if node is not None:
        named = [n for n in grus if n.name == node]
        if not named:
            raise ValueError(f"no GRU node named {node!r}; GRU nodes: {[n.name for n in grus]}")
        return named[0]
    if not grus:
        kinds = sorted({n.op_type for n in graph.node})
        raise ValueError(f"the ONNX graph has no GRU node (its op types: {kinds})")
    if len(grus) > 1:
        raise ValueError(f"the ONNX graph has {len(grus)} GRU nodes {[n.name for n in grus]}; "
                         f"pick one with node=")
    return grus[0]


def spec_from_onnx(src, node: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of one GRU node; batch_first is the node's layout attribute."""
    from onnx import helper

    model = _load_model(src)
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; GRU is read from opset "
                         f"{MIN_OPSET} on")
    gru = _pick_node(model.graph, node)
    name = gru.name or "<unnamed>"
    attrs = {a.name: helper.get_attribute_value(a) for a in gru.attribute}

    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in DIRECTIONS:
        raise ValueError(f"GRU node {name!r}: direction must be one of {DIRECTIONS}, "
                         f"got {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if activations and tuple(activations) != DEFAULT_ACTIVATIONS * dirs:
        other = sorted(set(activations) - set(DEFAULT_ACTIVATIONS)) or activations
        raise ValueError(f"GRU node {name!r}: only the default activations "
                         f"{list(DEFAULT_ACTIVATIONS)} are supported, got {other}")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"GRU node {name!r}: layout must be 0 or 1, got {layout}")
    lbr = int(attrs.get("linear_before_reset", 0))
    if lbr not in (0, 1):
        raise ValueError(f"GRU node {name!r}: linear_before_reset must be 0 or 1, got {lbr}")
    clip = attrs.get("clip")

    inputs = list(gru.input) + [""] * (6 - len(gru.input))
    tensors = _constants(model.graph)
    w = _tensor(tensors, inputs[1], "W", name)
    r = _tensor(tensors, inputs[2], "R", name)
    if r.ndim != 3 or r.shape[0] != dirs or r.shape[1] != 3 * r.shape[2]:
        raise ValueError(f"GRU node {name!r}: R must have shape ({dirs}, 3*H, H) for direction "
                         f"{direction!r}, got {r.shape}")
    H = r.shape[2]
    if "hidden_size" in attrs and int(attrs["hidden_size"]) != H:
        raise ValueError(f"GRU node {name!r}: hidden_size={attrs['hidden_size']} but R has "
                         f"shape {r.shape} (H={H})")
    if w.ndim != 3 or w.shape[:2] != (dirs, 3 * H):
        raise ValueError(f"GRU node {name!r}: W must have shape ({dirs}, {3 * H}, input_size), "
                         f"got {w.shape}")
    b = _tensor(tensors, inputs[3], "B", name) if inputs[3] else np.zeros((dirs, 6 * H))
    if b.shape != (dirs, 6 * H):
        raise ValueError(f"GRU node {name!r}: B must have shape {(dirs, 6 * H)}, got {b.shape}")
    spec = GRUSpec((LayerWeights(w=w, r=r, b=b),), direction=direction,
                   linear_before_reset=bool(lbr), clip=None if clip is None else float(clip))
    return spec, layout == 1
