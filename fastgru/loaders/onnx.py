"""ONNX GRU graphs to the canonical layout.

ONNX stores gates as (z, r, h) with W (dirs, 3H, D), R (dirs, 3H, H), B (dirs, 6H), the canonical
order, so weights are taken as they are. A graph may hold one GRU node or a chain of them, as
torch.onnx.export writes a stacked nn.GRU: layer k + 1 reads layer k's Y (T, dirs, B, H) through
Transpose(0, 2, 1, 3) + Reshape, or Squeeze(1) when unidirectional, and a leading
Transpose(1, 0, 2) of the graph input means batch_first.

Weights may be initializers, Constant nodes, or computed from those by data-movement ops (Slice,
Concat, Transpose, Unsqueeze... as torch.onnx.export's default exporter writes them): such
tensors are folded once at load by the ONNX package's reference evaluator. External data is read
only from files inside the model's own folder, after checking each file's size against the
tensor's shape.

Without node=, the graph must be a GRU stack and nothing more: every other node must move data
between the graph's inputs, the layers and the graph's outputs, or compute constants. Any other
operator is refused by name (fastgru.InferenceSession runs such graphs whole).
"""

from __future__ import annotations

import os

import numpy as np

from fastgru._weights import DIRECTIONS, GRUSpec, LayerWeights
from fastgru.errors import FormatError

PROTOBUF_LIMIT = 2**31 - 1  # bytes a protobuf message (an ONNX file) can hold
MIN_OPSET = 7  # GRU-7 dropped GRU-3's output_sequence attribute; the semantics since are stable
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")
# Ops that only move data between stacked layers; reading follows their first input.
_PLUMBING = {"Transpose", "Reshape", "Squeeze", "Identity"}


def load_model(src):
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
        if os.path.getsize(path) > PROTOBUF_LIMIT:  # refused before reading gigabytes
            raise FormatError(f"{path!r} is {os.path.getsize(path) / 2**30:.1f} GiB; an ONNX "
                              f"file holds at most 2 GiB (protobuf's limit): larger models keep "
                              f"their weights as external data")
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


def _producers(graph) -> dict:
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


def _decode(tensor, folder: str | None, where: str) -> np.ndarray:
    """A TensorProto as an ndarray, its stored size checked against its shape before decoding."""
    from onnx import TensorProto, helper, numpy_helper

    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except Exception:
        raise FormatError(f"{where} has an unknown data type {tensor.data_type}") from None
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise FormatError(f"{where} has an invalid shape {dims}")
    count = int(np.prod(dims, dtype=np.int64))
    if tensor.data_location == TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, folder, count * dtype.itemsize, where)
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)
    if tensor.HasField("raw_data"):
        stored = len(tensor.raw_data) // max(dtype.itemsize, 1)
        exact = len(tensor.raw_data) % max(dtype.itemsize, 1) == 0
    else:
        stored, exact = max(len(tensor.float_data), len(tensor.double_data),
                            len(tensor.int32_data), len(tensor.int64_data),
                            len(tensor.uint64_data), len(tensor.string_data)), True
    if dtype.kind != "O" and (stored != count or not exact):
        raise FormatError(f"{where} has shape {dims} ({count} values) but stores {stored}")
    try:
        with np.errstate(invalid="ignore"):  # a signalling NaN; GRUSpec refuses NaN later
            return numpy_helper.to_array(tensor)
    except Exception as error:
        raise FormatError(f"{where} cannot be decoded: {error}") from None


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


# Ops whose results are folded when all their inputs are constants: data movement and casts, what
# exporters put between stored weights and a GRU node. Nothing that can grow data much.
FOLDABLE = {"Identity", "Cast", "Slice", "Concat", "Transpose", "Unsqueeze", "Squeeze",
            "Reshape", "Split", "Gather", "Flatten", "Constant"}


def constant_names(graph) -> set[str]:
    """Names known before run time: initializers, and outputs of FOLDABLE nodes (Constant
    among them) whose inputs are all constant. One pass in the graph's order (ONNX requires a
    topological one), so a cycle ends as "not constant" rather than as a loop."""
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in FOLDABLE and node.domain in ("", "ai.onnx") and \
                all(i in names for i in node.input if i):
            names.update(o for o in node.output if o)
    return names


def fold_constants(graph, folder: str | None, names: dict, opset: int) -> dict[str, np.ndarray]:
    """{name: ndarray} for each of `names` ({name: what it is, for errors}) that is constant
    (see constant_names); the nodes that compute them are evaluated once here. Other names are
    left out."""
    initializers = {t.name: t for t in graph.initializer}
    producers = _producers(graph)
    known = constant_names(graph)
    wanted = [n for n in dict.fromkeys(names) if n and n in known]
    stored = {n: _decode(initializers[n], folder, names[n]) for n in wanted if n in initializers}
    computed = [n for n in wanted if n not in initializers]
    if not computed:
        return stored
    nodes, seen, stack = [], set(), list(computed)
    while stack:  # the nodes that compute them, and the initializers those read
        node = producers[stack.pop()]
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        for i in node.input:
            if i in initializers:
                stored.setdefault(i, _decode(initializers[i], folder, f"initializer {i!r}"))
            elif i:
                stack.append(i)
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    return {**stored, **_evaluate(nodes, stored, computed, opset)}


def _evaluate(nodes, feeds: dict, outputs: list, opset: int) -> dict[str, np.ndarray]:
    """Run `nodes` with the ONNX reference evaluator, `feeds` given, and return `outputs`."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    sub = helper.make_graph(list(nodes), "fold", inputs,
                            [helper.make_empty_tensor_value_info(n) for n in outputs])
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as error:
        raise FormatError(f"cannot fold the constant inputs {outputs[:3]} of the GRU nodes: "
                          f"{type(error).__name__}: {error}") from None
    return {n: np.asarray(r) for n, r in zip(outputs, results, strict=True)}


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


def gru_inputs(node) -> list[str]:
    """A GRU node's six inputs X, W, R, B, sequence_lens, initial_h ("" where absent)."""
    return (list(node.input) + [""] * 6)[:6]


def read_gru_node(node, values: dict):
    """(LayerWeights, options dict, layout == 1) of one GRU node; values: its folded constant
    inputs (fold_constants)."""
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


def _trace_back(name: str, producers, graph_inputs, stop):
    """Follow `name` back through plumbing ops to a GRU node's Y or a graph input.

    Returns (kind, value, ops): kind "gru" with the GRU node, or "input" with the input name;
    ops lists the plumbing nodes passed. Raises FormatError naming the node that is neither.
    """
    ops, seen = [], set()
    while True:
        node = producers.get(name)
        if node is None:
            if name in graph_inputs:
                return "input", name, ops
            raise FormatError(f"{stop}: its input {name!r} is neither a graph input nor produced "
                              f"by any node")
        if id(node) in seen:
            raise FormatError(f"{stop}: its input comes through a cycle of nodes "
                              f"({node.name or node.op_type!r} feeds itself)")
        seen.add(id(node))
        if node.op_type == "GRU":
            if node.output[0] != name:
                raise FormatError(f"{stop}: it reads Y_h of GRU node {node.name!r}, not a "
                                  f"sequence")
            return "gru", node, ops
        if node.op_type not in _PLUMBING:
            raise FormatError(f"{stop}: node {node.name or '<unnamed>'!r} ({node.op_type}) "
                              f"stands between it and the previous layer; {_WHOLE_GRAPHS}")
        if not node.input or not node.input[0]:
            raise FormatError(f"{stop}: node {node.name or '<unnamed>'!r} ({node.op_type}) has "
                              f"no input")
        ops.append(node)
        name = node.input[0]


_WHOLE_GRAPHS = ("fastgru.InferenceSession runs whole graphs, and node= reads one GRU node of "
                 "them")


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


def value_infos(model) -> dict:
    """{name: ValueInfoProto} of the graph's inputs, outputs and inferred intermediates."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    except Exception:  # shape inference is a help, not a must
        inferred = []
    return {v.name: v for v in (*inferred, *model.graph.input, *model.graph.output)}


def fixed_sizes(infos: dict, name: str) -> tuple[int, int]:
    """(T, B) of a GRU's Y (T, dirs, B, H) where the graph fixes them, else (3, 2)."""
    info = infos.get(name)
    if info is not None and info.type.tensor_type.HasField("shape"):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if len(dims) == 4:
            return dims[0] or 3, dims[2] or 2
    return 3, 2


def moves_layer_output(graph, ops, dirs: int, hidden: int, folder, opset: int,
                       steps: int = 3, batch: int = 2) -> bool:
    """Whether the plumbing `ops` (from one GRU's Y to the next one's X, as _trace_back lists
    them) turn Y (T, dirs, B, H) into (T, B, dirs*H): checked by running them on a probe of
    `steps` x `batch` (the sizes a graph fixes, if it does), so a Reshape to another layout is
    never taken for a stack."""
    if not ops:
        return False  # Y is 4-D: a GRU cannot read it without plumbing
    T, B = steps, batch
    probe = np.arange(T * dirs * B * hidden, dtype=np.float32).reshape(T, dirs, B, hidden)
    nodes = list(reversed(ops))
    extra = {i: i for node in nodes for i in node.input[1:] if i}
    known = fold_constants(graph, folder, extra, opset)
    if set(extra) - set(known):
        return False  # shapes computed at run time: not provably a stack
    try:
        moved = _evaluate(nodes, {nodes[0].input[0]: probe, **known}, [nodes[-1].output[0]],
                          opset)[nodes[-1].output[0]]
    except FormatError:
        return False
    expected = probe.transpose(0, 2, 1, 3).reshape(T, B, dirs * hidden)
    return moved.shape == expected.shape and np.array_equal(moved, expected)


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
    from onnx import numpy_helper

    producers = _producers(graph)
    constants = constant_names(graph)

    def constant(n):
        return fold_constants(graph, folder, {n: f"initial_h ({n!r})"}, opset).get(n)

    node = producers.get(name)
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
        node = producers.get(current)
        if current in constants:
            if np.any(constant(current)):
                return None
        elif node is None or node.domain not in ("", "ai.onnx"):
            return None
        elif node.op_type == "ConstantOfShape":
            fill = [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
            if fill and np.any(fill[0]):
                return None
        elif node.op_type in _KEEPS_ZEROS and node.input:
            pending.extend(node.input if node.op_type == "Concat" else node.input[:1])
        else:
            return None
    return 0.0


def _layer_state(value, dirs: int, hidden: int, where: str) -> np.ndarray:
    """A stored initial_h (0.0, or a constant broadcast over the batch) as (dirs, H)."""
    if isinstance(value, float):
        return np.zeros((dirs, hidden))
    array = np.asarray(value, np.float64)
    if array.ndim != 3 or array.shape[1] != 1:
        raise FormatError(f"{where}: its initial_h is a constant of shape {list(array.shape)}; "
                          f"a stored initial state must be ({dirs}, 1, {hidden}), the same for "
                          f"every batch row; {_WHOLE_GRAPHS}")
    try:
        return np.broadcast_to(array, (dirs, 1, hidden))[:, 0, :].copy()
    except ValueError:
        raise FormatError(f"{where}: its initial_h has shape {list(array.shape)}, expected "
                          f"({dirs}, 1, {hidden})") from None


# Ops that may carry the graph's h0 / lengths inputs to the layers' initial_h / sequence_lens
# (torch.onnx.export and fastgru's own export slice h0 per layer).
_STATE_PLUMBING = _PLUMBING | {"Slice", "Split", "Gather", "Cast", "Unsqueeze", "Shape", "Concat",
                               "Expand", "ConstantOfShape", "Tile"}
# Ops that may carry the stack's outputs to the graph's outputs (layout changes, h_n's Concat).
_OUTPUT_PLUMBING = _PLUMBING | {"Unsqueeze", "Concat"}


def _check_nothing_else(graph, chain, graph_inputs) -> None:
    """Refuse a graph that computes more than the GRU stack `chain`: every node must be a layer,
    plumbing traced between layers, constant folding, or data movement from graph inputs to the
    layers' state inputs or from the layers' outputs to the graph's outputs."""
    folded = constant_names(graph)
    layers = {id(gru) for gru, _ in chain}
    accounted = layers | {id(op) for _, ops in chain for op in ops}
    for gru, _ in chain:
        stop = f"GRU node {gru.name or '<unnamed>'!r}"
        lengths = gru_inputs(gru)[4]
        if lengths and lengths in folded:
            raise FormatError(f"{stop}: its sequence_lens is a constant, which a GRU stack read "
                              f"alone cannot keep; {_WHOLE_GRAPHS}")
    producers = _producers(graph)
    stack_outputs = {o for gru, _ in chain for o in gru.output if o}
    from_inputs, from_outputs = set(graph_inputs), set(stack_outputs)
    for node in graph.node:  # nodes are in topological order in a valid graph
        if id(node) in accounted or all(o in folded or not o for o in node.output):
            continue
        sources = [i for i in node.input if i and i not in folded]
        what = f"node {node.name or '<unnamed>'!r} ({node.op_type})"
        if node.op_type in _STATE_PLUMBING and sources and all(i in from_inputs for i in sources):
            from_inputs.update(node.output)
        elif node.op_type in _OUTPUT_PLUMBING and sources and \
                all(i in from_outputs for i in sources):
            from_outputs.update(node.output)
        else:
            raise FormatError(f"the ONNX graph is more than a GRU stack: {what} computes "
                              f"something fastgru's GRU would leave out; {_WHOLE_GRAPHS}")
    last_y = chain[-1][0].output[0]
    for out in graph.output:
        name = out.name
        node = producers.get(name)
        if name in stack_outputs - {last_y} - {g.output[1] for g, _ in chain if len(g.output) > 1}:
            raise FormatError(f"the ONNX graph outputs {name!r}, the sequence of a layer below "
                              f"the top; {_WHOLE_GRAPHS}")
        if node is not None and id(node) not in accounted and name not in from_outputs \
                and name not in folded:
            raise FormatError(f"the ONNX graph output {name!r} is not an output of the GRU "
                              f"stack; {_WHOLE_GRAPHS}")


def spec_from_onnx(src, node: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of the GRU stack in an ONNX graph, or of the node named `node`."""
    model, folder = load_model(src)
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise FormatError(f"ONNX opset {opset} is not supported; GRU is read from opset "
                          f"{MIN_OPSET} on")
    graph = model.graph
    grus = gru_nodes(graph)
    if not grus:
        kinds = sorted({n.op_type for n in graph.node})
        raise FormatError(f"the ONNX graph has no GRU node (its op types: {kinds})")
    if node is not None:
        named = [n for n in grus if n.name == node]
        if not named:
            raise ValueError(f"no GRU node named {node!r}; GRU nodes: {[n.name for n in grus]}")
        values = constant_inputs(graph, folder, named, opset)
        layer, options, layout = read_gru_node(named[0], values)
        return GRUSpec((layer,), **options), layout

    values = constant_inputs(graph, folder, grus, opset)
    producers = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - initializers
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
                          f"that do not form one stack; {_WHOLE_GRAPHS}")
    chain = [firsts[0]]
    while id(chain[-1][0]) in after:
        chain.append(after[id(chain[-1][0])])
        if len(chain) > len(grus):
            raise FormatError("the ONNX graph's GRU nodes feed each other in a cycle")

    layers, options, batch_first = [], None, False
    infos = value_infos(model) if len(chain) > 1 else {}
    for k, (gru, ops) in enumerate(chain):
        layer, opts, layout = read_gru_node(gru, values)
        stop = f"GRU node {gru.name or '<unnamed>'!r}"
        if k == 0:
            moved = [op for op in ops if op.op_type != "Identity"]
            perms = [_perm(op) for op in moved if op.op_type == "Transpose"]
            if len(perms) != len(moved) or perms not in ([], [[1, 0, 2]]):
                raise FormatError(f"the graph input reaches the first GRU through "
                                  f"{[op.op_type for op in moved]} (Transpose perms {perms}); "
                                  f"only none or one Transpose (1, 0, 2) is understood; "
                                  f"{_WHOLE_GRAPHS}")
            batch_first = bool(layout) != bool(perms)
        else:
            if opts != options:
                raise FormatError(f"{stop}: layer {k} has options {opts}, layer 0 has {options}")
            if layout:
                raise FormatError(f"{stop}: layout=1 on a layer above the first is not supported")
            dirs = 2 if opts["direction"] == "bidirectional" else 1
            _check_between_layers(ops, dirs, stop)
            steps, batch = fixed_sizes(infos, chain[k - 1][0].output[0])
            if not moves_layer_output(graph, ops, dirs, layer.r.shape[-1], folder, opset,
                                      steps, batch):
                raise FormatError(f"{stop}: the nodes {[op.name or op.op_type for op in ops]} "
                                  f"between it and the layer below do not pass the sequence "
                                  f"on as a stacked GRU reads it; {_WHOLE_GRAPHS}")
        options = opts
        layers.append(layer)
    _check_nothing_else(graph, chain, graph_inputs)
    initial_state = _stored_states(graph, chain, folder, opset, layers, options)
    try:
        spec = GRUSpec(tuple(layers), **options, initial_state=initial_state)
    except ValueError as error:
        raise FormatError(f"the GRU stack is inconsistent: {error}") from None
    return spec, batch_first


def _stored_states(graph, chain, folder, opset, layers, options):
    """The stack's stored initial state (layers*dirs, H), or None: each layer's initial_h is
    absent, zeros, or a constant broadcast over the batch (stored), or else fed by the caller
    (h0 at call time), and the layers cannot mix stored and fed states."""
    dirs = 2 if options["direction"] == "bidirectional" else 1
    hidden = layers[0].r.shape[-1]
    states, fed = [], []
    for gru, _ in chain:
        name = gru_inputs(gru)[5]
        where = f"GRU node {gru.name or '<unnamed>'!r}"
        value = stored_state(graph, name, folder, opset) if name else 0.0
        fed.append(value is None)
        states.append(None if value is None else _layer_state(value, dirs, hidden, where))
    stored = [s for s in states if s is not None and np.any(s)]
    if stored and any(fed):
        raise FormatError(f"the GRU stack mixes stored initial states with states fed at run "
                          f"time; {_WHOLE_GRAPHS}")
    return np.concatenate(states) if stored else None
