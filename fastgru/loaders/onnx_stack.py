"""Which GRU nodes of an ONNX graph form one stacked model, proved from the whole dataflow.

The rules (docs/onnx-patterns.md lists them for users). `fastgru.load` / `GRU.from_onnx` read a
graph as a GRU stack only when:

1. one GRU reads a graph input X as a sequence: X itself, or X moved by the ops of
   onnx_dataflow's table (batch-first when its time axis is X's axis 1);
2. each other GRU reads the Y of the layer below, moved to (T, B, dirs*H) by those ops, and
   has the same direction, options, hidden size and element type, and layout 0;
3. each layer's initial_h is absent, a constant (zeros, or one state for every batch row: the
   model's stored initial state), or its layer's rows of one graph input (the model's h0); the
   layers do not mix stored and fed states;
4. sequence_lens is absent on every layer, or every layer reads the same graph input;
5. every graph output is the top layer's sequence or state, or h_n (every layer's Y_h,
   concatenated in order), in an ONNX or PyTorch layout;
6. every other node on the way from the graph's inputs to its outputs is one of those moves, or
   computes constants.

Anything else is a FormatError that says what to use instead: fastgru.InferenceSession for the
whole graph, node= for one GRU node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastgru._weights import num_directions
from fastgru.errors import FormatError
from fastgru.loaders import onnx_graph, onnx_node
from fastgru.loaders.onnx_dataflow import Dataflow
from fastgru.loaders.onnx_moves import MOVES
from fastgru.loaders.onnx_symbols import Atom, Size, Tensor, symbol

WHOLE_GRAPHS = onnx_node.WHOLE_GRAPHS
_ELEM = {np.dtype(np.float32): 1, np.dtype(np.float64): 11, np.dtype(np.float16): 10}


def dataflow(graph, folder, opset: int) -> Dataflow:
    """A Dataflow over `graph` whose constants are folded on demand (once each)."""
    known = onnx_graph.constant_names(graph)
    cache: dict = {}

    def constant(name):
        if name not in known:
            return None
        if name not in cache:
            cache[name] = onnx_graph.fold_constants(graph, folder, {name: f"{name!r}"},
                                                     opset).get(name)
        return cache[name]

    return Dataflow(onnx_graph.producers(graph), constant, onnx_graph.node_attributes, opset)


def input_tensors(graph) -> dict[str, Tensor]:
    """The graph's inputs (not initializers) as sources: axis k of input g is atom "g:k", its
    size fixed where the graph fixes it, else a symbol."""
    initializers = {t.name for t in graph.initializer}
    sources = {}
    for value in graph.input:
        tensor = value.type.tensor_type
        if value.name in initializers or not tensor.HasField("shape"):
            continue
        axes = []
        for k, dim in enumerate(tensor.shape.dim):
            name = f"{value.name}:{k}"
            fixed = dim.dim_value if dim.HasField("dim_value") else 0
            axes.append((name, Size(fixed) if fixed > 0 else symbol(name)))
        sources[value.name] = Tensor.source(axes, tensor.elem_type)
    return sources


@dataclass(frozen=True)
class Layer:
    """The symbolic Y and Y_h of layer k of a stack (atoms T, B, D, H and slice k of h_n)."""

    y: Tensor
    y_h: Tensor
    atoms: tuple  # (T, B, D, H)

    @staticmethod
    def make(k: int, layout: int, dirs: int, hidden: int, steps: Size, batch: Size,
             elem: int) -> "Layer":
        t, b, d, h = Atom("T", steps), Atom("B", batch), Atom("D", Size(dirs)), \
            Atom("H", Size(hidden))
        state = Atom("h_n", Size(dirs), k * dirs)
        y = (t, d, b, h) if not layout else (b, t, d, h)
        y_h = ((state,), (b,), (h,)) if not layout else ((b,), (state,), (h,))
        return Layer(Tensor(tuple((a,) for a in y), elem), Tensor(y_h, elem), (t, b, d, h))

    @property
    def sequence(self) -> tuple:
        """The key of Y as (T, B, dirs*H): what the layer above reads."""
        t, b, d, h = self.atoms
        return Tensor(((t,), (b,), (d, h)), 0).key()


def output_layouts(top: Layer, layers: int, dirs: int) -> dict:
    """{key: what it is} of the values a stack may output (ONNX's and PyTorch's layouts)."""
    t, b, d, h = top.atoms
    h_n = Atom("h_n", Size(layers * dirs), 0)
    last = Atom("h_n", Size(dirs), (layers - 1) * dirs)
    shapes = {"Y (T, dirs, B, H)": (t, d, b, h), "Y (B, T, dirs, H)": (b, t, d, h),
              "h_n": (h_n, b, h), "h_n (B, layers*dirs, H)": (b, h_n, h),
              "the top layer's Y_h": (last, b, h), "the top layer's Y_h (B, dirs, H)": (b, last, h)}
    keys = {Tensor(tuple((a,) for a in atoms), 0).key(): what for what, atoms in shapes.items()}
    keys[top.sequence] = "y (T, B, dirs*H)"
    keys[Tensor(((b,), (t,), (d, h)), 0).key()] = "y (B, T, dirs*H)"
    return keys


def sequence_sizes(flow: Dataflow, sources: dict, gru, layout: int) -> tuple:
    """(T, B, graph input, batch_first) when the GRU reads a graph input as its sequence,
    else fresh symbols and None."""
    x = onnx_node.gru_inputs(gru)[0]
    for name, source in sources.items():
        value = flow.trace(x, {name: source})
        if not isinstance(value, Tensor) or len(source.dims) != 3:
            continue
        a0, a1, a2 = (dim[0] for dim in source.dims)
        key = value.key()
        for time, batch in ((a0, a1), (a1, a0)):
            order = (time, batch) if not layout else (batch, time)
            if key == Tensor(((order[0],), (order[1],), (a2,)), 0).key():
                return time.size, batch.size, name, time is a1
    return symbol("T"), symbol("B"), None, False


def elem_type(gru, values: dict) -> int:
    return _ELEM.get(values[onnx_node.gru_inputs(gru)[1]].dtype, 0)


def reads_sequence_of(flow: Dataflow, lower, upper, layer: Layer, sources: dict) -> bool:
    """Whether `upper`'s X is provably `lower`'s Y as (T, B, dirs*H)."""
    value = flow.trace(onnx_node.gru_inputs(upper)[0], {**sources, lower.output[0]: layer.y})
    return isinstance(value, Tensor) and value.key() == layer.sequence


def name_of(node) -> str:
    """How errors name a GRU node."""
    return f"GRU node {node.name or '<unnamed>'!r}"


def _fed_state(flow, sources, name, k, layers, dirs, hidden, elem) -> str | None:
    """The graph input whose rows [k*dirs, (k+1)*dirs) initial_h `name` is, else None."""
    for source, tensor in sources.items():
        if len(tensor.dims) != 3:
            continue
        value = flow.trace(name, {source: tensor})
        if not isinstance(value, Tensor):
            continue
        (rows,), (batch,), (width,) = tensor.dims
        if rows.size.fixed not in (None, layers * dirs) or width.size.fixed not in (None, hidden):
            continue
        wanted = Tensor(((Atom(rows.axis, Size(dirs), k * dirs),), (batch,), (width,)), elem)
        if value.key() == wanted.key() or (layers == 1 and value.key() == tensor.key()):
            return source
    return None


def _lengths_source(flow: Dataflow, name: str) -> str | None:
    """The graph input sequence_lens `name` is, through Identity and Cast, else None."""
    for _ in range(64):
        node = flow.producers.get(name)
        if node is None:
            return name
        if node.op_type not in ("Identity", "Cast") or not node.input:
            return None
        flow.visited.add(id(node))
        name = node.input[0]
    return None


def _path_back(producers: dict, gru) -> list:
    """The nodes on the way back from `gru`'s X (following data inputs) to another GRU or a
    graph input, ending early at the first that is not a move of onnx_dataflow's table."""
    path, name = [], onnx_node.gru_inputs(gru)[0]
    for _ in range(64):
        node = producers.get(name)
        if node is None or node.op_type == "GRU":
            break
        path.append(node)
        if node.op_type not in MOVES or not node.input:
            break
        name = node.input[0]
    return path


def _describe(node, flow: Dataflow) -> str:
    what = f"{node.op_type} {node.name or '<unnamed>'!r}"
    if node.op_type == "Transpose":
        return f"{what} (perm {flow.attributes(node).get('perm')})"
    return what


@dataclass(frozen=True)
class Stack:
    chain: list
    batch_first: bool
    states: list  # per layer: ndarray (dirs, H) stored, or None when fed as h0


def read_stack(graph, folder, opset: int, grus: list, values: dict, read: dict) -> Stack:
    """The GRU stack `graph` computes (rules in the module docstring), or FormatError.

    read: id(node) -> onnx_node.read_gru_node's (LayerWeights, options, layout) for each of
    `grus`.
    """
    onnx_graph.check_dataflow(graph)
    sources = input_tensors(graph)
    search = dataflow(graph, folder, opset)
    firsts = []
    for gru in grus:
        layout = read[id(gru)][2]
        steps, batch, x, batch_first = sequence_sizes(search, sources, gru, layout)
        if x is not None:
            firsts.append((gru, steps, batch, batch_first))
    if len(firsts) != 1:
        names = [g.name for g in grus]
        what = "none reads" if not firsts else f"{len(firsts)} read"
        raise FormatError(f"the ONNX graph has {len(grus)} GRU nodes {names} that do not form "
                          f"one stack; {WHOLE_GRAPHS} (a stack's first layer reads a graph input "
                          f"as its sequence, moved only by the ops docs/onnx-patterns.md lists: "
                          f"here {what} one)")
    first, steps, batch, batch_first = firsts[0]
    w0, options, layout0 = read[id(first)]
    dirs = num_directions(options["direction"])
    hidden = w0.r.shape[-1]
    elem = elem_type(first, values)
    chain = [first]
    layers = [Layer.make(0, layout0, dirs, hidden, steps, batch, elem)]
    while True:
        lower = chain[-1]
        uppers = [g for g in grus if all(g is not c for c in chain)
                  and reads_sequence_of(search, lower, g, layers[-1], sources)]
        if not uppers:
            break
        if len(uppers) > 1:
            raise FormatError(f"{name_of(lower)}'s sequence is read by several GRU nodes "
                              f"{[g.name for g in uppers]}: not one stack; {WHOLE_GRAPHS}")
        upper = uppers[0]
        weights, opts, layout = read[id(upper)]
        if opts != options or layout or weights.r.shape[-1] != hidden or \
                elem_type(upper, values) != elem:
            raise FormatError(f"{name_of(upper)} reads the sequence of {name_of(lower)} but has "
                              f"other options (hidden size {weights.r.shape[-1]} against "
                              f"{hidden}; {opts} against {options}; layout {layout}): a "
                              f"fastgru stack has layers of one kind; {WHOLE_GRAPHS}")
        chain.append(upper)
        layers.append(Layer.make(len(chain) - 1, 0, dirs, hidden, steps, batch, elem))
    apart = [g for g in grus if all(g is not c for c in chain)]
    for gru in apart:
        path = _path_back(search.producers, gru)
        if path and path[-1].op_type not in MOVES:
            raise FormatError(f"{name_of(gru)}: node {path[-1].name or '<unnamed>'!r} "
                              f"({path[-1].op_type}) stands between it and the previous layer; "
                              f"{WHOLE_GRAPHS}")
        if path:
            moves = ", ".join(_describe(n, search) for n in reversed(path))
            raise FormatError(f"{name_of(gru)}: the nodes between it and the layer below "
                              f"[{moves}] do not pass the sequence on as a stacked GRU reads it; "
                              f"{WHOLE_GRAPHS}")
    if apart:
        raise FormatError(f"the GRU nodes {[g.name for g in apart]} are not layers of the stack "
                          f"that starts at "
                          f"{name_of(first)}: the nodes between them and the layer below do not "
                          f"pass the sequence on as a stacked GRU reads it, or they read "
                          f"something else; {WHOLE_GRAPHS}")

    # the proof, traced again from scratch so that only what it uses is accounted for
    flow = dataflow(graph, folder, opset)
    sequence_sizes(flow, sources, first, layout0)
    for k in range(1, len(chain)):
        reads_sequence_of(flow, chain[k - 1], chain[k], layers[k - 1], sources)
    states, fed, lengths = _states(graph, folder, opset, flow, sources, chain, dirs, hidden,
                                   elem)
    unknown = _unknown_outputs(graph, flow, sources, chain, layers, dirs)
    needed = {*(onnx_node.gru_inputs(g)[0] for g in chain), *fed, *lengths}
    _check_accounted(graph, flow, chain, needed)  # names the node an unknown output comes from
    if unknown:
        raise FormatError(unknown[0])
    return Stack(chain, batch_first, states)


def _states(graph, folder, opset, flow, sources, chain, dirs, hidden, elem):
    """(per-layer stored states or None, the fed initial_h names, the sequence_lens names)."""
    constants = onnx_graph.constant_names(graph)
    states, fed_names, fed_inputs, lengths = [], [], set(), set()
    for k, gru in enumerate(chain):
        _, _, _, _, seq, h0 = onnx_node.gru_inputs(gru)
        if seq in constants:
            raise FormatError(f"{name_of(gru)}: its sequence_lens is a constant, which a GRU stack "
                              f"read alone cannot keep; {WHOLE_GRAPHS}")
        lengths.add(_lengths_source(flow, seq) if seq else "")
        value = onnx_node.stored_state(graph, h0, folder, opset) if h0 else 0.0
        if value is not None:
            states.append(onnx_node.layer_state(value, dirs, hidden, name_of(gru)))
            continue
        source = _fed_state(flow, sources, h0, k, len(chain), dirs, hidden, elem)
        if source is None:
            raise FormatError(f"{name_of(gru)}: its initial_h is computed by the graph (not a "
                              f"constant, nor its layer's rows of one graph input), which a GRU "
                              f"stack's h0 cannot take; {WHOLE_GRAPHS}")
        states.append(None)
        fed_names.append(h0)
        fed_inputs.add(source)
    if len(lengths) > 1 or None in lengths:
        raise FormatError(f"the GRU layers {[g.name for g in chain]} do not all read the same "
                          f"graph input as sequence_lens (a stack reads one lengths for every "
                          f"layer); {WHOLE_GRAPHS}")
    if fed_names and (len(fed_inputs) > 1 or len(fed_names) != len(chain)):
        raise FormatError(f"the GRU stack's initial states are not all the rows of one graph "
                          f"input, layer by layer (the model's h0); {WHOLE_GRAPHS}")
    lengths.discard("")
    return states, fed_names, [onnx_node.gru_inputs(g)[4] for g in chain if lengths]


def _unknown_outputs(graph, flow, sources, chain, layers, dirs) -> list[str]:
    """Why each graph output that is not one of the stack's outputs (in a layout ONNX or
    PyTorch uses) is refused."""
    results = {chain[-1].output[0]: layers[-1].y}
    for gru, layer in zip(chain, layers, strict=True):
        if len(gru.output) > 1 and gru.output[1]:
            results[gru.output[1]] = layer.y_h
    known = output_layouts(layers[-1], len(chain), dirs)
    constants = onnx_graph.constant_names(graph)
    reasons = []
    for out in graph.output:
        if out.name in constants:
            reasons.append(f"the ONNX graph output {out.name!r} is a constant, which a GRU "
                           f"model does not compute; {WHOLE_GRAPHS}")
            continue
        value = flow.trace(out.name, {**sources, **results})
        if not isinstance(value, Tensor) or value.key() not in known:
            reasons.append(f"the ONNX graph output {out.name!r} is not the GRU stack's sequence "
                           f"or state (the top layer's Y or Y_h, or h_n) in a layout ONNX or "
                           f"PyTorch uses; {WHOLE_GRAPHS}")
    return reasons


def _check_accounted(graph, flow, chain, needed: set) -> None:
    """Every node that the graph's outputs depend on is a layer, a proved move, or computes
    constants."""
    constants = onnx_graph.constant_names(graph)
    producers = flow.producers
    layers = {id(g) for g in chain}
    pending, seen = [o.name for o in graph.output], set()
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if node is None or id(node) in seen or name in constants:
            continue
        seen.add(id(node))
        if id(node) in layers:
            pending.extend(n for n in onnx_node.gru_inputs(node) if n in needed)
            continue
        if id(node) not in flow.visited:
            raise FormatError(f"the ONNX graph is more than a GRU stack: node "
                              f"{node.name or '<unnamed>'!r} ({node.op_type}) computes something "
                              f"a GRU model leaves out; {WHOLE_GRAPHS}")
        pending.extend(i for i in node.input if i)

