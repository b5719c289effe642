"""ONNX GRU graphs to the canonical layout.

ONNX stores gates as (z, r, h) with W (dirs, 3H, D), R (dirs, 3H, H), B (dirs, 6H), the canonical
order, so weights are taken as they are. A graph may hold one GRU node or a chain of them, as
torch.onnx.export writes a stacked nn.GRU: layer k + 1 reads layer k's Y (T, dirs, B, H) through
Transpose(0, 2, 1, 3) + Reshape, or Squeeze(1) when unidirectional, and a leading
Transpose(1, 0, 2) of the graph input means batch_first.

Weights must be initializers or Constant nodes. External data is read only from files inside the
model's own folder, after checking each file's size against the tensor's shape.
"""

from __future__ import annotations

import os

import numpy as np

from fastgru._weights import DIRECTIONS, GRUSpec, LayerWeights
from fastgru.errors import FormatError

MIN_OPSET = 7  # GRU-7 dropped GRU-3's output_sequence attribute; the semantics since are stable
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")
# Ops that only move data between stacked layers; reading follows their first input.
_PLUMBING = {"Transpose", "Reshape", "Squeeze", "Identity"}


def _load_model(src):
    """(ModelProto, folder for external data or None)."""
    import onnx

    if isinstance(src, onnx.ModelProto):
        return src, None
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _parse(bytes(src), "these bytes"), None
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX file at {path!r}")
        with open(path, "rb") as f:
            data = f.read()
        return _parse(data, repr(path)), os.path.dirname(os.path.abspath(path))
    raise TypeError(f"from_onnx takes a path, bytes or onnx.ModelProto, got {type(src).__name__}")


def _parse(data: bytes, what: str):
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as error:  # protobuf raises its own DecodeError types
        raise FormatError(f"{what} is not an ONNX model: {error}") from None
    if not model.HasField("graph"):
        raise FormatError(f"{what} is not an ONNX model: it has no graph")
    return model


def _constants(graph) -> dict[str, object]:
    """TensorProtos known before run time: initializers and the outputs of Constant nodes."""
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    tensors[node.output[0]] = attr.t
    return tensors


def _external_bytes(tensor, folder: str | None, expected: int, where: str) -> bytes:
    """The bytes of an external-data tensor, read only from inside `folder`."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    if folder is None:
        raise FormatError(f"{where} is stored as external data, which can only be read when the "
                          f"model is loaded from a path")
    location = info.get("location", "")
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or ".." in parts:
        raise FormatError(f"{where}: external data location {location!r} points outside the "
                          f"model's folder")
    path = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([path, os.path.realpath(folder)]) != os.path.realpath(folder):
        raise FormatError(f"{where}: external data location {location!r} leads outside the "
                          f"model's folder (through a link)")
    if not os.path.isfile(path):
        raise FormatError(f"{where}: external data file {location!r} does not exist")
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", expected))
    except ValueError:
        raise FormatError(f"{where}: external data offset/length are not integers") from None
    if length != expected or offset < 0 or offset + length > os.path.getsize(path):
        raise FormatError(f"{where}: external data needs {expected} bytes at offset {offset} of "
                          f"{location!r}, which has {os.path.getsize(path)} (length {length})")
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _tensor(tensors, name: str, role: str, node_name: str, folder: str | None) -> np.ndarray:
    """A weight tensor as float64, its size checked against its shape before it is decoded."""
    from onnx import TensorProto, helper, numpy_helper

    where = f"GRU node {node_name!r}: {role} ({name!r})"
    tensor = tensors.get(name)
    if tensor is None:
        raise FormatError(f"GRU node {node_name!r}: input {role} ({name!r}) must be an "
                          f"initializer or a Constant, but it is computed or fed at run time")
    if tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                TensorProto.BFLOAT16):
        kind = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in \
            TensorProto.DataType.values() else str(tensor.data_type)
        raise FormatError(f"{where} must be floating point, got {kind}")
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims) or len(dims) > 3:
        raise FormatError(f"{where} has an invalid shape {dims}")
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    count = int(np.prod(dims, dtype=np.int64))
    if tensor.data_location == TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, folder, count * itemsize, where)
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)
        with np.errstate(invalid="ignore"):  # a signalling NaN; GRUSpec refuses NaN later
            return array.astype(np.float64)
    stored = len(tensor.raw_data) // itemsize if tensor.HasField("raw_data") else max(
        len(tensor.float_data), len(tensor.double_data), len(tensor.int32_data))
    if stored != count or (tensor.HasField("raw_data") and len(tensor.raw_data) % itemsize):
        raise FormatError(f"{where} has shape {dims} ({count} values) but stores {stored}")
    try:
        with np.errstate(invalid="ignore"):  # a signalling NaN; GRUSpec refuses NaN later
            return numpy_helper.to_array(tensor).astype(np.float64)
    except Exception as error:
        raise FormatError(f"{where} cannot be decoded: {error}") from None


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def _attributes(node) -> dict:
    from onnx import helper

    try:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}
    except Exception as error:
        raise FormatError(f"GRU node {node.name!r} has a malformed attribute: {error}") from None


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read_layer(node, tensors, folder):
    """(LayerWeights, options dict) of one GRU node."""
    name = node.name or "<unnamed>"
    attrs = _attributes(node)
    direction = _text(attrs.get("direction", b"forward"))
    if direction not in DIRECTIONS:
        raise FormatError(f"GRU node {name!r}: direction must be one of {DIRECTIONS}, "
                          f"got {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
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

    inputs = list(node.input) + [""] * (6 - len(node.input))
    if not inputs[1] or not inputs[2]:
        raise FormatError(f"GRU node {name!r} lacks its W or R input")
    r = _tensor(tensors, inputs[2], "R", name, folder)
    if r.ndim != 3 or r.shape[0] != dirs or r.shape[1] != 3 * r.shape[2] or r.shape[2] == 0:
        raise FormatError(f"GRU node {name!r}: R must have shape ({dirs}, 3*H, H) for direction "
                          f"{direction!r}, got {r.shape}")
    H = r.shape[2]
    if "hidden_size" in attrs and attrs["hidden_size"] != H:
        raise FormatError(f"GRU node {name!r}: hidden_size={attrs['hidden_size']} but R has "
                          f"shape {r.shape} (H={H})")
    w = _tensor(tensors, inputs[1], "W", name, folder)
    if w.ndim != 3 or w.shape[:2] != (dirs, 3 * H) or w.shape[2] == 0:
        raise FormatError(f"GRU node {name!r}: W must have shape ({dirs}, {3 * H}, input_size), "
                          f"got {w.shape}")
    b = _tensor(tensors, inputs[3], "B", name, folder) if inputs[3] else np.zeros((dirs, 6 * H))
    if b.shape != (dirs, 6 * H):
        raise FormatError(f"GRU node {name!r}: B must have shape {(dirs, 6 * H)}, got {b.shape}")
    options = {"direction": direction, "linear_before_reset": bool(lbr),
               "clip": None if clip is None else float(clip)}
    return LayerWeights(w=w, r=r, b=b), options, layout == 1


def _trace_back(name: str, producers, graph_inputs, stop):
    """Follow `name` back through plumbing ops to a GRU node's Y or a graph input.

    Returns (kind, value, ops): kind "gru" with the GRU node, or "input" with the input name;
    ops lists the plumbing nodes passed. Raises FormatError naming the node that is neither.
    """
    ops = []
    while True:
        node = producers.get(name)
        if node is None:
            if name in graph_inputs:
                return "input", name, ops
            raise FormatError(f"{stop}: its input {name!r} is neither a graph input nor produced "
                              f"by any node")
        if node.op_type == "GRU":
            if node.output[0] != name:
                raise FormatError(f"{stop}: it reads Y_h of GRU node {node.name!r}, not a "
                                  f"sequence")
            return "gru", node, ops
        if node.op_type not in _PLUMBING:
            raise FormatError(f"{stop}: node {node.name or '<unnamed>'!r} ({node.op_type}) "
                              f"stands between it and the previous layer; only "
                              f"{sorted(_PLUMBING)} can")
        ops.append(node)
        name = node.input[0]


def _perm(node):
    return [int(p) for p in _attributes(node).get("perm", [])]


def _check_between_layers(ops, dirs: int, stop: str) -> None:
    """The ops between two layers must turn Y (T, dirs, B, H) into (T, B, dirs*H)."""
    for op in ops:
        if op.op_type == "Transpose" and _perm(op) != [0, 2, 1, 3]:
            raise FormatError(f"{stop}: Transpose {op.name!r} with perm {_perm(op)} between "
                              f"layers; only (0, 2, 1, 3) keeps the time-major layout")
    kinds = [op.op_type for op in ops if op.op_type != "Identity"]
    if dirs == 2 and "Transpose" not in kinds:
        raise FormatError(f"{stop}: a bidirectional layer's output must be transposed to "
                          f"(T, B, 2, H) before the next layer reads it")


def spec_from_onnx(src, node: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of the GRU stack in an ONNX graph, or of the node named `node`."""
    model, folder = _load_model(src)
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise FormatError(f"ONNX opset {opset} is not supported; GRU is read from opset "
                          f"{MIN_OPSET} on")
    graph = model.graph
    grus = [n for n in graph.node if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]
    if not grus:
        kinds = sorted({n.op_type for n in graph.node})
        raise FormatError(f"the ONNX graph has no GRU node (its op types: {kinds})")
    tensors = _constants(graph)
    if node is not None:
        named = [n for n in grus if n.name == node]
        if not named:
            raise ValueError(f"no GRU node named {node!r}; GRU nodes: {[n.name for n in grus]}")
        layer, options, layout = _read_layer(named[0], tensors, folder)
        return GRUSpec((layer,), **options), layout

    producers = {out: n for n in graph.node for out in n.output if out}
    graph_inputs = {i.name for i in graph.input} - set(tensors)
    # Each GRU reads either the graph input (the first layer) or another GRU's Y, through
    # plumbing ops; one stack means one first layer and no GRU read by two others.
    firsts, after = [], {}  # after: id(previous GRU) -> (GRU, plumbing ops between them)
    for gru in grus:
        stop = f"GRU node {gru.name or '<unnamed>'!r}"
        kind, source, ops = _trace_back(gru.input[0], producers, graph_inputs, stop)
        if kind == "input":
            firsts.append((gru, ops))
        elif id(source) in after:
            firsts.append(None)  # a fork: not one stack
        else:
            after[id(source)] = (gru, ops)
    if len(firsts) != 1 or firsts[0] is None:
        raise FormatError(f"the ONNX graph has {len(grus)} GRU nodes {[n.name for n in grus]} "
                          f"that do not form one stack; pick one with node=")
    chain = [firsts[0]]
    while id(chain[-1][0]) in after:
        chain.append(after[id(chain[-1][0])])

    layers, options, batch_first = [], None, False
    for k, (gru, ops) in enumerate(chain):
        layer, opts, layout = _read_layer(gru, tensors, folder)
        stop = f"GRU node {gru.name or '<unnamed>'!r}"
        if k == 0:
            perms = [_perm(op) for op in ops if op.op_type == "Transpose"]
            if perms not in ([], [[1, 0, 2]]):
                raise FormatError(f"the graph input reaches the first GRU through Transposes "
                                  f"{perms}; only none or one (1, 0, 2) is understood")
            batch_first = bool(layout) != bool(perms)
        else:
            if opts != options:
                raise FormatError(f"{stop}: layer {k} has options {opts}, layer 0 has {options}")
            if layout:
                raise FormatError(f"{stop}: layout=1 on a layer above the first is not supported")
            _check_between_layers(ops, 2 if opts["direction"] == "bidirectional" else 1, stop)
        options = opts
        layers.append(layer)
    try:
        spec = GRUSpec(tuple(layers), **options)
    except ValueError as error:
        raise FormatError(f"the GRU stack is inconsistent: {error}") from None
    return spec, batch_first
