"""InferenceSession: a whole ONNX model, its GRU nodes run by fastgru and the rest by onnxruntime.

The graph is cut at its GRU nodes into stages run in turn: stage 0 is every other node that
needs no GRU output, run as one onnxruntime session; then the GRU nodes whose inputs are ready,
each by a fastgru.GRU; then the nodes those made ready, as the next onnxruntime session, and so
on. A graph whose GRUs all sit in one place (the usual case: front-end -> GRU stack -> head)
runs as at most two onnxruntime sessions around the GRUs. GRUs inside subgraphs (If, Loop, Scan)
stay with onnxruntime.

The interface is onnxruntime's: swap `onnxruntime.InferenceSession(path)` for
`fastgru.InferenceSession(path)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fastgru._model import GRU
from fastgru.errors import FormatError
from fastgru.loaders import onnx as onnx_reader
from fastgru.loaders import onnx_stack
from fastgru.loaders.onnx_dataflow import Size

# onnxruntime's names for ONNX element types, as NodeArg.type gives them
_ORT_TYPES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
              7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32",
              13: "uint64", 16: "bfloat16"}


@dataclass(frozen=True)
class NodeArg:
    """A graph input or output as onnxruntime describes it: .name, .shape (ints, names of
    symbolic dimensions, or None), .type ("tensor(float)")."""

    name: str
    shape: list
    type: str


def _node_arg(value_info) -> NodeArg:
    tensor = value_info.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim]
    return NodeArg(value_info.name, shape, f"tensor({_ORT_TYPES.get(tensor.elem_type, '?')})")


class _GRUStep:
    """A chain of GRU nodes that forms a stack (one node, or the layers torch.onnx.export
    writes with Transpose/Reshape/Squeeze between them) run by fastgru as one model, with ONNX's
    input and output layouts. Looks like a node to the planner: .input, .output, .attribute."""

    op_type = "GRU"
    attribute = ()

    def __init__(self, nodes: list, read: dict, values: dict) -> None:
        """nodes: the chain's GRU nodes; read: id(node) -> read_gru_node's result."""
        from fastgru._weights import GRUSpec

        read = [read[id(node)] for node in nodes]
        dtype = _weight_dtype(nodes[0], values)
        if dtype not in (np.float32, np.float64):
            raise FormatError(f"GRU node {nodes[0].name!r}: fastgru runs float and double "
                              f"GRUs, this one is {dtype.name}")
        dtype = dtype.name
        layers = tuple(layer for layer, _, _ in read)
        self.model = GRU(GRUSpec(layers, **read[0][1]), batch_first=bool(read[0][2]),
                         dtype=dtype)
        self.layout = read[0][2]
        padded = [onnx_reader.gru_inputs(n) for n in nodes]
        self.x, self.lengths = padded[0][0], padded[0][4]
        self.h0 = [p[5] for p in padded]
        outs = [list(n.output) + [""] * (2 - len(n.output)) for n in nodes]
        self.y, self.y_h = outs[-1][0], [o[1] for o in outs]
        self.name = ", ".join(repr(n.name or "<unnamed>") for n in nodes)
        self.input = [n for n in [self.x, self.lengths, *self.h0] if n and n not in values]
        self.output = [n for n in [self.y, *self.y_h] if n]

    def run(self, values: dict) -> None:
        """Read X, sequence_lens and initial_h from `values`; store Y and each Y_h there."""
        x = values[self.x]
        if x.ndim != 3:
            raise ValueError(f"GRU node {self.name}: X must be 3-D, got shape {x.shape}")
        lengths = values[self.lengths] if self.lengths else None
        m = self.model
        dirs, H = (2 if m.bidirectional else 1), m.hidden_size
        h0 = None
        if any(self.h0):
            batch = x.shape[0 if self.layout else 1]
            h0 = np.zeros((m.num_layers, dirs, batch, H), m.dtype)
            expected = (batch, dirs, H) if self.layout else (dirs, batch, H)
            for k, name in enumerate(self.h0):
                if name:  # (dirs, B, H), or (B, dirs, H) with layout 1
                    state = values[name]
                    if np.shape(state) != expected:  # onnxruntime refuses it too
                        raise ValueError(f"GRU node {self.name}: initial_h {name!r} must have "
                                         f"shape {expected} for X of shape {x.shape}, got "
                                         f"{np.shape(state)}")
                    h0[k] = np.swapaxes(state, 0, 1) if self.layout else state
            h0 = h0.reshape(-1, batch, H)
        y, h_n = m(x, h0, lengths=lengths)
        if lengths is not None:  # onnxruntime's Y_h is 0 for rows of length 0
            h_n[:, np.asarray(lengths).reshape(-1) == 0] = 0
        if self.y:
            if self.layout:  # (B, T, dirs*H) -> (B, T, dirs, H)
                values[self.y] = y.reshape(*y.shape[:2], dirs, H)
            else:  # (T, B, dirs*H) -> (T, dirs, B, H)
                values[self.y] = np.ascontiguousarray(
                    y.reshape(*y.shape[:2], dirs, H).transpose(0, 2, 1, 3))
        for k, name in enumerate(self.y_h):
            if name:
                layer = h_n[k * dirs:(k + 1) * dirs]
                values[name] = np.ascontiguousarray(np.swapaxes(layer, 0, 1)) \
                    if self.layout else layer


def _weight_dtype(node, values: dict) -> np.dtype:
    """The dtype W is stored in (read_gru_node gives float64 copies)."""
    return values[node.input[1]].dtype


def _ancestors(names, producers: dict) -> set[int]:
    """ids of the nodes (of those that run) that the values `names` are computed from."""
    found, pending = set(), [n for n in names if n]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in found:
            continue
        found.add(id(node))
        pending.extend(_reads(node) if not isinstance(node, _GRUStep) else node.input)
    return found


def _chains(graph, nodes: list, grus: list, read: dict, values: dict, reads, folder,
            opset, types: dict) -> list[list]:
    """The GRU nodes grouped into stacks, by onnx_stack's rule: node b joins a's chain when
    b's X is provably a's Y as (T, B, dirs*H) (onnx_stack.reads_sequence_of), both have the
    same options, hidden size and dtype and read the same sequence_lens, nothing else reads
    a's Y or the moves between them, and b's initial_h and sequence_lens do not depend on the
    chain below it (an encoder's state feeding a decoder). read: id(node) -> read_gru_node's
    result; `grus` in topological order; types: value infos, for the sizes the graph's inputs
    fix."""
    flow = onnx_stack.dataflow(graph, folder, opset)
    sources = onnx_stack.input_tensors(graph)
    producers = {o: n for n in nodes for o in n.output if o}
    readers: dict[str, set] = {}
    for node in nodes:
        for name in reads(node):
            readers.setdefault(name, set()).add(id(node))
    outputs = {o.name for o in graph.output}
    follows = {}  # id(lower GRU) -> upper GRU
    for lower in grus:
        low, low_options, low_layout = read[id(lower)]
        dirs = 2 if low_options["direction"] == "bidirectional" else 1
        hidden = low.r.shape[-1]
        steps, batch, x, _ = onnx_stack.sequence_sizes(flow, sources, lower, low_layout)
        dims = onnx_reader.fixed_dims(types.get(lower.output[0]))
        if x is None and dims and len(dims) == 4:  # sizes the graph's inputs fix
            t, b = (dims[0], dims[2]) if not low_layout else (dims[1], dims[0])
            steps, batch = (steps if t is None else Size(t)), (batch if b is None else Size(b))
        layer = onnx_stack.Layer.make(0, low_layout, dirs, hidden, steps, batch,
                                      onnx_stack.elem_type(lower, values))
        for upper in grus:
            weights, options, layout = read[id(upper)]
            if upper is lower or options != low_options or layout or low_layout or \
                    weights.r.shape[-1] != hidden or \
                    onnx_reader.gru_inputs(lower)[4] != onnx_reader.gru_inputs(upper)[4] or \
                    _weight_dtype(lower, values) != _weight_dtype(upper, values):
                continue
            flow.visited = set()
            if not onnx_stack.reads_sequence_of(flow, lower, upper, layer, sources):
                continue
            derived, moved = {lower.output[0]}, {id(upper)}
            for node in nodes:  # the moves that read a's Y, directly or not
                if id(node) in flow.visited and any(i in derived for i in node.input):
                    derived.update(o for o in node.output if o)
                    moved.add(id(node))
            if all(name not in outputs and readers.get(name, set()) <= moved
                   for name in derived):
                follows[id(lower)] = upper
                break
    chains, placed = [], set()
    for gru in grus:
        if id(gru) in placed:
            continue
        chain = [gru]
        while id(chain[-1]) in follows and id(follows[id(chain[-1])]) not in placed:
            upper = follows[id(chain[-1])]
            state = onnx_reader.gru_inputs(upper)[4:6]
            if _ancestors(state, producers) & {id(g) for g in chain}:
                break  # its state comes from the chain below: it runs after it
            chain.append(upper)
        placed.update(id(g) for g in chain)
        chains.append(chain)
    return chains


class _Feed:
    """Checks the feed for one graph input as onnxruntime would: refused for another element
    type, another rank, or another size where the graph fixes one. Made once per session, so a
    one-frame call spends 0.6 µs per input here rather than 1.4."""

    def __init__(self, arg: NodeArg) -> None:
        self.arg = arg
        expected = arg.type[len("tensor("):-1]
        name = {"float": "float32", "double": "float64", "string": "str"}.get(expected, expected)
        self.dtype = None if expected == "string" else np.dtype(name)
        self.dtype_name = name
        self.rank = None if arg.shape is None else len(arg.shape)
        self.fixed = () if arg.shape is None else \
            tuple((axis, d) for axis, d in enumerate(arg.shape) if isinstance(d, int))

    def __call__(self, value) -> np.ndarray:
        array = value if type(value) is np.ndarray else np.asarray(value)
        if self.dtype is not None and array.dtype != self.dtype:
            raise TypeError(f"input {self.arg.name!r} must be {self.arg.type} "
                            f"({self.dtype_name}), got {array.dtype}")
        if self.rank is not None:
            shape = array.shape
            if len(shape) != self.rank or any(shape[axis] != d for axis, d in self.fixed):
                raise ValueError(f"input {self.arg.name!r} must have shape {self.arg.shape}, "
                                 f"got {shape}")
        return array


def _subgraph_inputs(node) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for graph in graphs:
            inner = {t.name for t in graph.initializer} | {i.name for i in graph.input}
            for inner_node in graph.node:
                for name in list(inner_node.input) + list(_subgraph_inputs(inner_node)):
                    if name and name not in inner:
                        names.add(name)
                inner.update(inner_node.output)
    return names


def _reads(node) -> list[str]:
    return [i for i in node.input if i] + sorted(_subgraph_inputs(node))


class InferenceSession:
    """Run an ONNX model that contains GRU nodes: the GRUs by fastgru, the rest by onnxruntime.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
    threads : int, optional
        Threads for both fastgru's kernels and onnxruntime's sessions (default: Numba's and
        onnxruntime's own defaults).

    The GRU nodes' weights (W, R, B) must be constants, possibly computed from initializers by
    data-movement ops (folded once here); X, sequence_lens and initial_h may be anything.
    """

    def __init__(self, src, *, threads: int | None = None) -> None:
        import onnx

        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self._threads = threads
        model, folder = onnx_reader.load_model(src)
        if model is src:  # the caller's ModelProto: this session edits its own copy
            model = onnx.ModelProto()
            model.CopyFrom(src)
        graph = model.graph
        for k, tensor in enumerate(graph.initializer):  # onnxruntime gets every stage as bytes
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                array = onnx_reader.decode(tensor, folder, f"initializer {tensor.name!r}")
                graph.initializer[k].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        self._model = model
        self._folder = folder
        self._opset = opset = onnx_reader.opset(model)
        initializers = {t.name for t in graph.initializer}
        self._inputs = [_node_arg(i) for i in graph.input if i.name not in initializers]
        self._outputs = [_node_arg(o) for o in graph.output]
        self._feeds = [_Feed(arg) for arg in self._inputs]
        self._output_names = [o.name for o in self._outputs]
        # a stage's other inputs get no shape: a value_info's fixed sizes on an intermediate
        # value are a claim onnxruntime would enforce, and the graph's inputs decide them
        self._feed_names = {arg.name for arg in self._inputs}
        grus = onnx_reader.gru_nodes(graph)
        values = onnx_reader.constant_inputs(graph, folder, grus, opset)
        for gru in grus:  # zeros are the state a GRU starts from anyway: drop such initial_h
            h0 = onnx_reader.gru_inputs(gru)[5]
            if h0 and isinstance(onnx_reader.stored_state(graph, h0, folder, opset), float):
                gru.input[5] = ""
        self._types = onnx_reader.value_infos(model)
        self._elem = {v.name: v.type.tensor_type.elem_type for v in self._types.values()}
        for t in graph.initializer:
            self._elem[t.name] = t.data_type
        # what the GRU steps read and the graph outputs that are constants (initializers, for
        # which no stage runs): read from the constants at every run
        constants = onnx_reader.constant_names(graph)
        wanted = {onnx_reader.gru_inputs(g)[0]: f"GRU node {g.name!r}: X" for g in grus}
        wanted.update((o.name, f"graph output {o.name!r}") for o in graph.output)
        values.update(onnx_reader.fold_constants(
            graph, folder, {n: w for n, w in wanted.items() if n in constants}, opset))
        read = [n for g in grus for i, n in enumerate(onnx_reader.gru_inputs(g)) if i in (0, 4, 5)]
        stored = [o.name for o in graph.output if o.name in initializers]
        self._constants = {n: values[n] for n in read + stored if n in values}
        self._stages = self._plan(graph, grus, values, initializers)

    # ---- planning ----------------------------------------------------------------------------

    def _plan(self, graph, grus, values, initializers):
        """[("onnxruntime", session, input names, output names, description) |
        ("gru", _GRUStep)], in the order they run."""
        gru_ids = {id(g) for g in grus}

        def reads(node) -> list[str]:  # a GRU's weights are folded: it reads only the rest
            if id(node) in gru_ids:
                x, _, _, _, lengths, h0 = onnx_reader.gru_inputs(node)
                return [n for n in (x, lengths, h0) if n and n not in values]
            return _reads(node)

        nodes = self._live(graph, list(graph.node), reads)
        available = {i.name for i in graph.input} | initializers | set(values)
        available |= {o for n in graph.node for o in n.output if o}
        for node in nodes:
            lacking = [i for i in reads(node) if i not in available]
            if lacking:
                raise FormatError(f"node {node.name or '<unnamed>'!r} ({node.op_type}) reads "
                                  f"{lacking}, which no graph input, initializer or node "
                                  f"provides")
        live_grus = [n for n in nodes if id(n) in gru_ids]
        read = {id(g): onnx_reader.read_gru_node(g, values) for g in live_grus}  # once each
        chains = _chains(graph, nodes, live_grus, read, values, reads, self._folder,
                         self._opset, self._types)
        steps = [_GRUStep(chain, read, values) for chain in chains]
        # the plumbing inside a chain is read by no one now: _live drops it
        order = self._live(graph, [n for n in nodes if id(n) not in gru_ids] + steps, _reads)
        # stage 2k: run by onnxruntime session k; stage 2k + 1: GRU nodes run by fastgru.
        # Graph inputs and constants are ready at stage 0.
        stage_of_node: dict[int, int] = {}
        stage_of_name: dict[str, int] = {}
        for node in order:
            ready = max((stage_of_name.get(i, 0) for i in _reads(node)), default=0)
            if isinstance(node, _GRUStep):
                stage = ready + 1 if ready % 2 == 0 else ready  # the next (or this) GRU stage
            else:
                stage = ready if ready % 2 == 0 else ready + 1
            stage_of_node[id(node)] = stage
            stage_of_name.update((o, stage) for o in node.output if o)
        last_read: dict[str, int] = {o.name: 1 << 30 for o in graph.output}
        for node in order:
            for name in _reads(node):
                last_read[name] = max(last_read.get(name, -1), stage_of_node[id(node)])
        stages = []
        for stage in range(max(stage_of_node.values(), default=-1) + 1):
            members = [n for n in order if stage_of_node[id(n)] == stage]
            if not members:
                continue
            if stage % 2:
                stages.extend(("gru", step) for step in members)
            else:
                stages.append(self._onnxruntime_stage(graph, members, stage, last_read,
                                                      initializers))
        return stages

    def _live(self, graph, nodes, reads) -> list:
        """`nodes` in topological order, less those whose outputs nothing needs (such as the
        nodes that computed the folded weights)."""
        producers = {o: n for n in nodes for o in n.output if o}
        order = self._topological(nodes, producers, reads)
        live = {o.name for o in graph.output}
        kept = []
        for node in reversed(order):
            if any(o in live for o in node.output if o):
                kept.append(node)
                live.update(reads(node))
        return kept[::-1]

    @staticmethod
    def _topological(nodes, producers, reads):
        """The nodes in an order where each comes after those it reads; FormatError on a
        cycle."""
        order, state = [], {}
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
                    before = producers.get(name)
                    if before is None or state.get(id(before)) == 2:
                        continue
                    if state.get(id(before)) == 1:
                        raise FormatError(f"the ONNX graph has a cycle through node "
                                          f"{before.name or before.op_type!r}")
                    stack.append((before, False))
        return order

    def _onnxruntime_stage(self, graph, members, stage, last_read, initializers):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("fastgru.InferenceSession runs the nodes other than GRUs with "
                              "onnxruntime: pip install fastgru[onnxruntime]") from None
        from onnx import helper

        produced = {o for n in members for o in n.output if o}
        reads = list(dict.fromkeys(i for n in members for i in _reads(n)))
        inputs = [n for n in reads if n not in produced and n not in initializers]
        inits = [t for t in graph.initializer if t.name in set(reads) - produced]
        outputs = [o for n in members for o in n.output if o and last_read.get(o, -1) > stage]
        proto = helper.make_model(
            helper.make_graph(members, f"stage{stage}",
                              [self._value_info(n, shape=n in self._feed_names) for n in inputs],
                              [self._value_info(n, shape=False) for n in outputs], inits),
            opset_imports=list(self._model.opset_import), ir_version=self._model.ir_version,
            functions=list(self._model.functions))
        options = ort.SessionOptions()
        # its idle workers would spin on the cores fastgru's threads need next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        if self._threads:
            options.intra_op_num_threads = self._threads
        try:
            session = ort.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise FormatError(f"onnxruntime cannot load the nodes "
                              f"{[n.name or n.op_type for n in members[:5]]}: {error}") from None
        kinds = sorted({n.op_type for n in members})
        return ("onnxruntime", session, inputs, outputs, f"{len(members)} node(s): {kinds}")

    def _value_info(self, name: str, shape: bool = True):
        from onnx import helper

        known = self._types.get(name)
        if known is not None and shape:
            return known
        return helper.make_tensor_value_info(name, self._elem.get(name, 0) or 1, None)

    # ---- onnxruntime's interface -------------------------------------------------------------

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def run(self, output_names, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """The requested outputs (all, in the graph's order, when output_names is None)."""
        if run_options is not None:
            raise TypeError("fastgru.InferenceSession.run takes no run_options")
        names = self._output_names if output_names is None else list(output_names)
        unknown = [n for n in names if n not in self._output_names]
        if unknown:
            raise ValueError(f"unknown output names {unknown}; the outputs are "
                             f"{sorted(self._output_names)}")
        if len(input_feed) != len(self._feeds) or \
                any(feed.arg.name not in input_feed for feed in self._feeds):
            expected = {i.name for i in self._inputs}
            raise ValueError(f"the inputs are {sorted(expected)}; missing "
                             f"{sorted(expected - set(input_feed))}, unknown "
                             f"{sorted(set(input_feed) - expected)}")
        values = dict(self._constants)
        for feed in self._feeds:
            values[feed.arg.name] = feed(input_feed[feed.arg.name])
        before = numba.get_num_threads()
        wanted = min(self._threads, numba.config.NUMBA_NUM_THREADS) if self._threads else before
        if wanted != before:
            numba.set_num_threads(wanted)
        try:
            for stage in self._stages:
                if stage[0] == "gru":
                    stage[1].run(values)
                else:
                    _, session, inputs, outputs, _ = stage
                    results = session.run(outputs, {n: values[n] for n in inputs})
                    values.update(zip(outputs, results, strict=True))
        finally:
            if wanted != before:
                numba.set_num_threads(before)
        return [values[n] for n in names]

    def describe(self) -> list[str]:
        """One line per stage: what runs where (fastgru info prints it)."""
        lines = []
        for stage in self._stages:
            if stage[0] == "gru":
                step = stage[1]
                lines.append(f"fastgru: GRU node(s) {step.name}: {step.model!r}")
            else:
                lines.append(f"onnxruntime: {stage[4]}")
        return lines
