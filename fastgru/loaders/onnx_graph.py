"""ONNX graphs: reading files, decoding tensors, constant folding, and the graph's dataflow
(producers, order, shapes) that the loaders and fastgru.InferenceSession share.

External data is read only from files inside the model's own folder, after checking each file's
size against the tensor's shape. Weights computed from stored tensors by data-movement ops (as
torch.onnx.export's default exporter writes them) are folded once, by onnx_fold.
"""

from __future__ import annotations

import math
import os

import numpy as np

from fastgru.errors import FormatError
from fastgru.loaders import onnx_fold, onnx_proto


PROTOBUF_LIMIT = 2**31 - 1  # bytes a protobuf message (an ONNX file) can hold



def load_model(src):
    """(ModelProto, folder for external data or None)."""
    if onnx_proto.is_model(src):
        return src, None
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _parse(bytes(src), "these bytes"), None
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX file at {path!r}")
        if os.path.getsize(path) > PROTOBUF_LIMIT:  # refused before reading gigabytes
            raise FormatError(f"{path!r} is {os.path.getsize(path) / 2**30:.1f} GiB; an ONNX "
                              f"file holds at most 2 GiB (protobuf's limit): larger models keep "
                              f"their weights as external data")
        with open(path, "rb") as f:
            data = f.read()
        return _parse(data, repr(path)), os.path.dirname(os.path.abspath(path))
    raise TypeError(f"from_onnx takes a path, bytes or onnx.ModelProto, got {type(src).__name__}")



def _parse(data: bytes, what: str):
    model = onnx_proto.messages().ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as error:  # protobuf raises its own DecodeError types
        raise FormatError(f"{what} is not an ONNX model: {error}") from None
    if not model.HasField("graph"):
        raise FormatError(f"{what} is not an ONNX model: it has no graph")
    return model



def check_dataflow(graph) -> None:
    """FormatError unless every node input is provided (by a graph input, an initializer or a
    node) and no node depends on itself."""
    made_by = producers(graph)
    provided = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        lacking = [i for i in node.input if i and i not in provided and i not in made_by]
        if lacking:
            raise FormatError(f"node {node.name or node.op_type!r} reads {lacking}, which no "
                              f"graph input, initializer or node provides")
    topological_order(list(graph.node), lambda node: node.input)


def topological_order(nodes: list, reads) -> list:
    """`nodes` in an order where each comes after the nodes (of `nodes`) whose outputs it reads;
    reads(node) -> the names it reads. FormatError on a cycle."""
    made_by = {o: n for n in nodes for o in n.output if o}
    order, state = [], {}  # state: 1 on the path being followed, 2 placed
    for root in nodes:
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[id(node)] = 2
                order.append(node)
                continue
            if state.get(id(node)) == 2:
                continue
            state[id(node)] = 1
            stack.append((node, True))
            for name in reads(node):
                before = made_by.get(name)
                if before is None or state.get(id(before)) == 2:
                    continue
                if state.get(id(before)) == 1:
                    raise FormatError(f"the ONNX graph has a cycle through node "
                                      f"{before.name or before.op_type!r}")
                stack.append((before, False))
    return order


def live_nodes(graph, nodes: list, reads) -> list:
    """`nodes` in topological order, less those whose outputs no graph output needs (such as the
    nodes that computed folded weights)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(topological_order(nodes, reads)):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(reads(node))
    return kept[::-1]


def producers(graph) -> dict:
    """{tensor name: the node that outputs it}."""
    return {out: n for n in graph.node for out in n.output if out}



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



def decode(tensor, folder: str | None, where: str) -> np.ndarray:
    """A TensorProto as an ndarray, its stored size checked against its shape before decoding."""
    size = onnx_proto.itemsize(tensor.data_type)
    if size is None or tensor.data_type == 0:
        raise FormatError(f"{where} has an unknown data type {tensor.data_type}")
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise FormatError(f"{where} has an invalid shape {dims}")
    count = math.prod(dims)  # exact: int64 would wrap past 2**63 and pass the checks below
    raw = None
    if tensor.data_location == onnx_proto.EXTERNAL:
        raw = _external_bytes(tensor, folder, count * size, where)
    elif tensor.HasField("raw_data"):
        stored = len(tensor.raw_data) // max(size, 1)
        if stored != count or len(tensor.raw_data) % max(size, 1):
            raise FormatError(f"{where} has shape {dims} ({count} values) but stores {stored}")
    elif tensor.data_type != 8:  # strings are counted as they are decoded
        stored = max(len(tensor.float_data), len(tensor.double_data), len(tensor.int32_data),
                     len(tensor.int64_data), len(tensor.uint64_data))
        if stored != count:
            raise FormatError(f"{where} has shape {dims} ({count} values) but stores {stored}")
    try:
        with np.errstate(invalid="ignore"):  # a signalling NaN; GRUSpec refuses NaN later
            return onnx_proto.values(tensor, dims, raw)
    except Exception as error:
        raise FormatError(f"{where} cannot be decoded: {error}") from None



def constant_names(graph) -> set[str]:
    """Names known before run time: initializers, and outputs of onnx_fold.FOLDABLE nodes (Constant
    among them) whose inputs are all constant. One pass in the graph's order (ONNX requires a
    topological one), so a cycle ends as "not constant" rather than as a loop."""
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in onnx_fold.FOLDABLE and node.domain in ("", "ai.onnx") and \
                all(i in names for i in node.input if i):
            names.update(o for o in node.output if o)
    return names



def fold_constants(graph, folder: str | None, names: dict, opset: int) -> dict[str, np.ndarray]:
    """{name: ndarray} for each of `names` ({name: what it is, for errors}) that is constant
    (see constant_names); the nodes that compute them are evaluated once here. Other names are
    left out."""
    initializers = {t.name: t for t in graph.initializer}
    made_by = producers(graph)
    known = constant_names(graph)
    wanted = [n for n in dict.fromkeys(names) if n and n in known]
    stored = {n: decode(initializers[n], folder, names[n]) for n in wanted if n in initializers}
    computed = [n for n in wanted if n not in initializers]
    if not computed:
        return stored
    nodes, seen, stack = [], set(), list(computed)
    while stack:  # the nodes that compute them, and the initializers those read
        node = made_by[stack.pop()]
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        for i in node.input:
            if i in initializers:
                stored.setdefault(i, decode(initializers[i], folder, f"initializer {i!r}"))
            elif i:
                stack.append(i)
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    stored_values = sum(math.prod(t.dims) for t in graph.initializer)
    values = onnx_fold.evaluate(nodes, dict(stored), opset, node_attributes,
                                lambda node: _constant_value(node, folder),
                                onnx_fold.limit_for(stored_values))
    return {n: values[n] for n in wanted}



def _constant_value(node, folder) -> np.ndarray:
    """The tensor a Constant node holds."""
    attrs = node_attributes(node)
    where = f"Constant node {node.name or node.output[0]!r}"
    if "value" in attrs:
        return decode(attrs["value"], folder, where)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    raise FormatError(f"{where} holds no tensor fastgru reads ({sorted(attrs)})")



def opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1



def node_attributes(node) -> dict:
    """{name: value} of a node's attributes; FormatError naming the node if one is malformed."""
    try:
        return {a.name: onnx_proto.attribute_value(a) for a in node.attribute}
    except Exception as error:
        raise FormatError(f"node {node.name or node.op_type!r} has a malformed attribute: "
                          f"{error}") from None



def value_infos(model) -> dict:
    """{name: ValueInfoProto} of the graph's inputs, outputs and intermediates, the shapes of all
    but the inputs inferred from the inputs' alone: a size the file declares on an intermediate
    value or an output is a claim onnxruntime does not enforce, not a fact (fuzz findings
    onnx-03, onnx-04: a graph output named like the input, declared with fixed sizes)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        bare = onnx.shape_inference.infer_shapes(bare)
    except Exception:  # shape inference is a help, not a must
        pass
    return {v.name: v for v in (*bare.graph.value_info, *bare.graph.output, *model.graph.input)}



def fixed_dims(info) -> list[int | None] | None:
    """The dims of a ValueInfoProto (None where not fixed), or None without a shape."""
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in info.type.tensor_type.shape.dim]
