"""The staged plan of fastgru.InferenceSession: the graph cut at its GRU nodes into stages.

Stage 0 is every other node that needs no GRU output, run as one onnxruntime session; then the
GRU nodes whose inputs are ready, each chain of them (a stack) by one fastgru.GRU; then the nodes
those made ready, as the next onnxruntime session, and so on. The planning is here (live nodes in
topological order, GRU chains by onnx_stack's rule, stages); the session runs the stages.
"""

from __future__ import annotations

import numpy as np

from fastgru._model import GRU
from fastgru._onnxruntime import cpu_session
from fastgru._weights import num_directions
from fastgru.errors import FormatError
from fastgru.loaders import onnx_graph, onnx_node, onnx_stack
from fastgru.loaders.onnx_symbols import Size


class GRUStep:
    """A chain of GRU nodes that forms a stack (one node, or the layers torch.onnx.export
    writes with Transpose/Reshape/Squeeze between them) run by fastgru as one model, with ONNX's
    input and output layouts. Looks like a node to the planner: .input, .output, .attribute."""

    op_type = "GRU"
    attribute = ()

    def __init__(self, nodes: list, read: dict, values: dict, precision: str | None) -> None:
        """nodes: the chain's GRU nodes; read: id(node) -> read_gru_node's result; precision:
        the model's dtype= (None: the weights' own, float32 or float64)."""
        from fastgru._weights import GRUSpec

        read = [read[id(node)] for node in nodes]
        dtype = _weight_dtype(nodes[0], values)
        if dtype not in (np.float32, np.float64):
            raise FormatError(f"GRU node {nodes[0].name!r}: fastgru runs float and double "
                              f"GRUs, this one is {dtype.name}")
        # the values around the node keep the graph's element type: float32 for a float
        # node (bfloat16 and int8 models take and give float32), float64 for a double one
        allowed = (dtype.name, "bfloat16", "int8") if dtype == np.float32 else (dtype.name,)
        if precision is not None and precision not in allowed:
            raise FormatError(f"GRU node {nodes[0].name!r} computes in {dtype.name}: "
                              f"dtype={precision!r} is not one of {list(allowed)}, the "
                              f"precisions whose inputs and outputs are {dtype.name}")
        dtype = dtype.name if precision is None else precision
        layers = tuple(layer for layer, _, _ in read)
        self.model = GRU(GRUSpec(layers, **read[0][1]), batch_first=bool(read[0][2]),
                         dtype=dtype)
        self.layout = read[0][2]
        padded = [onnx_node.gru_inputs(n) for n in nodes]
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
        dirs, H = m.spec.num_directions, m.hidden_size
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
        pending.extend(_reads(node) if not isinstance(node, GRUStep) else node.input)
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
        dirs = num_directions(low_options["direction"])
        hidden = low.r.shape[-1]
        steps, batch, x, _ = onnx_stack.sequence_sizes(flow, sources, lower, low_layout)
        dims = onnx_graph.fixed_dims(types.get(lower.output[0]))
        if x is None and dims and len(dims) == 4:  # sizes the graph's inputs fix
            t, b = (dims[0], dims[2]) if not low_layout else (dims[1], dims[0])
            steps, batch = (steps if t is None else Size(t)), (batch if b is None else Size(b))
        layer = onnx_stack.Layer.make(0, low_layout, dirs, hidden, steps, batch,
                                      onnx_stack.elem_type(lower, values))
        for upper in grus:
            weights, options, layout = read[id(upper)]
            if upper is lower or options != low_options or layout or low_layout or \
                    weights.r.shape[-1] != hidden or \
                    onnx_node.gru_inputs(lower)[4] != onnx_node.gru_inputs(upper)[4] or \
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
            state = onnx_node.gru_inputs(upper)[4:6]
            if _ancestors(state, producers) & {id(g) for g in chain}:
                break  # its state comes from the chain below: it runs after it
            chain.append(upper)
        placed.update(id(g) for g in chain)
        chains.append(chain)
    return chains



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


class Stages:
    """What the staged plan needs to know of the model, and `build()` to make its stages.

    model: the ModelProto (its opset imports, IR version and functions go to every stage);
    values: the GRUs' folded constant inputs; types: value infos by name; elem: element types by
    name; feed_names: the graph's inputs (their value infos go to the stages that read them);
    threads: onnxruntime's intra-op threads (None: its default); precision: the dtype= of the
    GRU models (None: their weights' own)."""

    def __init__(self, model, folder, opset: int, values: dict, types: dict, elem: dict,
                 feed_names: set, threads: int | None, precision: str | None) -> None:
        self.model, self.folder, self.opset = model, folder, opset
        self.values, self.types, self.elem = values, types, elem
        self.feed_names, self.threads, self.precision = feed_names, threads, precision

    def build(self, grus: list, initializers: set) -> list:
        """[("onnxruntime", session, input names, output names, description, direct_run(session)) |
        ("gru", GRUStep)], in the order they run."""
        graph, values = self.model.graph, self.values
        gru_ids = {id(g) for g in grus}

        def reads(node) -> list[str]:  # a GRU's weights are folded: it reads only the rest
            if id(node) in gru_ids:
                x, _, _, _, lengths, h0 = onnx_node.gru_inputs(node)
                return [n for n in (x, lengths, h0) if n and n not in values]
            return _reads(node)

        nodes = onnx_graph.live_nodes(graph, list(graph.node), reads)
        available = {i.name for i in graph.input} | initializers | set(values)
        available |= {o for n in graph.node for o in n.output if o}
        for node in nodes:
            lacking = [i for i in reads(node) if i not in available]
            if lacking:
                raise FormatError(f"node {node.name or '<unnamed>'!r} ({node.op_type}) reads "
                                  f"{lacking}, which no graph input, initializer or node "
                                  f"provides")
        live_grus = [n for n in nodes if id(n) in gru_ids]
        read = {id(g): onnx_node.read_gru(graph, self.folder, self.opset, g, values)
                for g in live_grus}  # once each
        chains = _chains(graph, nodes, live_grus, read, values, reads, self.folder,
                         self.opset, self.types)
        steps = [GRUStep(chain, read, values, self.precision) for chain in chains]
        # the plumbing inside a chain is read by no one now: live_nodes drops it
        others = [n for n in nodes if id(n) not in gru_ids]
        order = onnx_graph.live_nodes(graph, others + steps, _reads)
        # stage 2k: run by onnxruntime session k; stage 2k + 1: GRU nodes run by fastgru.
        # Graph inputs and constants are ready at stage 0.
        stage_of_node: dict[int, int] = {}
        stage_of_name: dict[str, int] = {}
        for node in order:
            ready = max((stage_of_name.get(i, 0) for i in _reads(node)), default=0)
            if isinstance(node, GRUStep):
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
                stages.append(self._onnxruntime_stage(members, stage, last_read, initializers))
        return stages

    def _onnxruntime_stage(self, members, stage, last_read, initializers):
        from onnx import helper

        graph = self.model.graph
        produced = {o for n in members for o in n.output if o}
        reads = list(dict.fromkeys(i for n in members for i in _reads(n)))
        inputs = [n for n in reads if n not in produced and n not in initializers]
        inits = [t for t in graph.initializer if t.name in set(reads) - produced]
        outputs = [o for n in members for o in n.output if o and last_read.get(o, -1) > stage]
        proto = helper.make_model(
            helper.make_graph(members, f"stage{stage}",
                              [self._value_info(n, shape=n in self.feed_names) for n in inputs],
                              [self._value_info(n, shape=False) for n in outputs], inits),
            opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version,
            functions=list(self.model.functions))
        # its idle workers would spin on the cores fastgru's threads need next
        names = [n.name or n.op_type for n in members[:5]]
        session = onnxruntime_session(proto.SerializeToString(), self.threads, spinning=False,
                                      what=f"the nodes {names}")
        kinds = sorted({n.op_type for n in members})
        return ("onnxruntime", session, inputs, outputs, f"{len(members)} node(s): {kinds}",
                direct_run(session))

    def _value_info(self, name: str, shape: bool = True):
        from onnx import helper

        known = self.types.get(name)
        if known is not None and shape:
            return known
        return helper.make_tensor_value_info(name, self.elem.get(name, 0) or 1, None)


def onnxruntime_session(data: bytes, threads: int | None, spinning: bool, what: str,
                        quiet: bool = False):
    """_onnxruntime.cpu_session for the session's stages: FormatError if onnxruntime refuses the
    model (quiet: without onnxruntime's own log line, for a refusal the caller handles)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ImportError("fastgru.InferenceSession runs the nodes other than GRUs with "
                          "onnxruntime: pip install fastgru[onnxruntime]") from None
    try:
        return cpu_session(data, threads=threads, spinning=spinning, quiet=quiet)
    except Exception as error:  # onnxruntime raises its own exception types
        raise FormatError(f"onnxruntime cannot load {what}: {error}") from None


def direct_run(session):
    """session.run(output names, feeds) without onnxruntime's Python checks of the feeds, which
    the session has made already: its compiled session's run, where onnxruntime has one (1.5 µs
    less per call, 2-3% of a one-frame network), else its public run."""
    compiled = getattr(session, "_sess", None)
    if compiled is None or not callable(getattr(compiled, "run", None)):
        return session.run
    return lambda names, feeds: compiled.run(names, feeds, None)
