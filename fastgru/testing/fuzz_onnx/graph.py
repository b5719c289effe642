"""The ONNX graph under construction: values, nodes, graph inputs, and the finished model
(the base of the fuzzer's graph builder)."""

from __future__ import annotations

import numpy as np

from .case import DOUBLE, FLOAT, INT32, INT64, Case, InputInfo


class Graph:
    """An ONNX graph under construction, with the symbolic shape of every value."""

    def __init__(self, rng, opset: int, nominal: dict) -> None:
        self.rng, self.opset, self.nominal = rng, opset, dict(nominal)
        # choices added later draw from their own stream, so every seed still makes the
        # graph it made before they were added (the seeds of past findings stay meaningful)
        self.later = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
        self.quantized_layer = False  # whether the GRU being made stores int8 weights (QDQ)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.shapes: dict = {}  # value -> tuple of ints, size symbols and None, or None
        self.types: dict = {}
        self.input_info: dict = {}
        self.fixed: dict = {}  # size symbol -> the only size the graph runs with
        self.least: dict = {}  # size symbol -> the least size it runs with
        self.grus: list = []
        self.lens_value = None
        self.combined_layers = 0
        self.weights = None
        self.count = 0
        self.notes: list = []

    # choices
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options, p=None):
        return options[int(self.rng.choice(len(options), p=p))]

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def fix(self, symbol) -> None:
        if isinstance(symbol, str):
            self.fixed[symbol] = self.nominal[symbol]

    def size(self, dim) -> int | None:
        """The nominal size of a dim (what fixed shapes in the graph are built for)."""
        return self.nominal[dim] if isinstance(dim, str) else dim

    # values
    def constant(self, array, stem: str = "c", node: bool | None = None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(stem)
        array = np.asarray(array)
        tensor = numpy_helper.from_array(array, name)
        if node is None:
            node = self.chance(0.2)
        if node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                               name=self.name("Constant_")))
        else:
            self.inits.append(tensor)
        self.shapes[name] = array.shape
        self.types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        return name

    def ints(self, values) -> str:
        return self.constant(np.array(values, np.int64), "i")

    def op(self, op_type: str, inputs, shape, elem: int = FLOAT, **attrs) -> str:
        from onnx import helper

        out = self.name(op_type.lower() + "_")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.name(op_type + "_n"), **attrs))
        self.shapes[out] = None if shape is None else tuple(shape)
        self.types[out] = elem
        return out

    def axes_op(self, op_type: str, x: str, axes, shape, elem: int = FLOAT) -> str:
        """Squeeze/Unsqueeze: axes as an attribute before opset 13, as an input from 13."""
        if axes is None:
            return self.op(op_type, [x], shape, elem)
        if self.opset < 13:
            return self.op(op_type, [x], shape, elem, axes=list(axes))
        return self.op(op_type, [x, self.ints(axes)], shape, elem)

    def slice(self, x, starts, ends, axes, steps=None, shape=None, elem=FLOAT) -> str:
        inputs = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            inputs.append(self.ints(steps))
        return self.op("Slice", inputs, shape, elem)

    def maybe_identity(self, x: str, p: float = 0.15) -> str:
        if self.chance(p):
            return self.op("Identity", [x], self.shapes.get(x), self.types.get(x, FLOAT))
        return x

    def dims_of(self, x: str, start: int, end: int) -> str:
        """x's dims start..end at run time, as a 1-D int64 value (as exporters compute it)."""
        n = end - start
        if self.opset >= 15 and self.chance(0.3):
            return self.op("Shape", [x], (n,), INT64, start=start, end=end)
        rank = None if self.shapes.get(x) is None else len(self.shapes[x])
        shape = self.op("Shape", [x], (rank,), INT64)
        form = self.pick(["gather", "scalar", "slice"])
        if form == "slice":
            return self.slice(shape, [start], [end], [0], shape=(n,), elem=INT64)
        parts = []
        for k in range(start, end):
            if form == "gather":
                parts.append(self.op("Gather", [shape, self.ints([k])], (1,), INT64, axis=0))
            else:
                index = self.constant(np.array(k, np.int64), "k")
                one = self.op("Gather", [shape, index], (), INT64, axis=0)
                parts.append(self.axes_op("Unsqueeze", one, [0], (1,), INT64))
        return parts[0] if n == 1 else self.op("Concat", parts, (n,), INT64, axis=0)

    # graph inputs
    def declare(self, name: str, elem: int, shape: tuple, role: str) -> None:
        """A graph input of `shape` (ints and size symbols), its dims declared at random: a
        dim_param (the symbol's or one of its own), unknown, or fixed (then the graph runs
        with that size only)."""
        from onnx import helper

        dtype = {FLOAT: "float32", DOUBLE: "float64", INT32: "int32", INT64: "int64"}[elem]
        self.input_info[name] = InputInfo(role, tuple(shape), dtype)
        self.shapes[name], self.types[name] = tuple(shape), elem
        if self.chance(0.04):
            self.inputs.append(helper.make_tensor_value_info(name, elem, None))
            return
        dims = []
        for d in shape:
            if isinstance(d, str):
                form = self.pick(["param", "own", "unknown", "fixed"], p=[0.55, 0.15, 0.15, 0.15])
                if form == "fixed":
                    self.fix(d)
                    dims.append(self.nominal[d])
                else:
                    dims.append({"param": d, "own": f"{d.lower()}_{name}", "unknown": None}[form])
            else:
                dims.append(f"{name}_features" if self.chance(0.05) else d)
        self.inputs.append(helper.make_tensor_value_info(name, elem, dims))

    def finish(self, seed: int, x_main, x_const, combined, summary: str) -> Case:
        """Drop what no output needs, blank some unused GRU outputs, annotate some
        intermediates with value_info, and make the model."""
        from onnx import helper

        nodes, needed = needed_nodes(self.nodes, [o.name for o in self.outputs])
        for node in nodes:
            if node.op_type == "GRU":
                y, y_h = node.output
                if y_h not in needed and self.chance(0.5):
                    del node.output[1]
                if y not in needed and self.chance(0.5):
                    node.output[0] = ""
        inputs = [i for i in self.inputs if i.name in needed]
        inits = [t for t in self.inits if t.name in needed]
        io = {i.name for i in inputs} | {t.name for t in inits} | {o.name for o in self.outputs}
        infos = []
        annotate, fixed = self.chance(0.5), int(self.pick([0, 1, 2], p=[0.8, 0.15, 0.05]))
        for node in nodes:
            for out in node.output:
                shape = self.shapes.get(out)
                # (a DequantizeLinear makes a weight: a constant, and no draws of the main
                # stream, which would change every later choice of its seed)
                if not out or out in io or node.op_type in ("Constant", "DequantizeLinear"):
                    continue
                if shape is not None and fixed and self.chance(0.3):
                    # fixed at the nominal sizes: onnxruntime plans with them, so the graph runs
                    # with those sizes only
                    fixed -= 1
                    for d in shape:
                        self.fix(d)
                    dims = [self.size(d) for d in shape]
                elif annotate and self.chance(0.25):
                    dims = None if shape is None else \
                        [d if isinstance(d, (int, str)) else None for d in shape]
                else:
                    continue
                infos.append(helper.make_tensor_value_info(out, self.types.get(out, FLOAT), dims))
        graph = helper.make_graph(nodes, "fuzz", inputs, self.outputs, inits, value_info=infos)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=max(7, helper.find_min_ir_version_for(opsets)))
        grus = [g for g in self.grus if any(g.node is n for n in nodes)]
        kept = {i.name for i in inputs}
        info = {n: i for n, i in self.input_info.items() if n in kept}
        return Case(seed, model, grus, info, x_main if x_main in kept else None, x_const,
                    combined if combined in kept else None, self.sizes(), summary,
                    dict(self.fixed), dict(self.least))

    def sizes(self) -> list:
        """The sizes to try: the nominal ones, T=1 with another batch, and one more, each
        bent to what the graph fixes."""
        rng, nominal = self.rng, self.nominal
        others = [b for b in range(1, 5) if b != nominal["B"]]
        raw = [dict(nominal), {"T": 1, "B": int(rng.choice(others)), "T2": 1},
               {"T": int(rng.integers(1, 7)), "B": int(rng.integers(1, 5)),
                "T2": int(rng.integers(1, 7))}]
        sizes = []
        for size in raw:
            size.update(self.fixed)
            for symbol, least in self.least.items():
                size[symbol] = max(size[symbol], least)
            if size not in sizes:
                sizes.append(size)
        return sizes


def one_unknown(target: list) -> list:
    """A Reshape target with at most one -1 (an unknown size gave -1 in a fixed target)."""
    if target.count(-1) < 2:
        return target
    first = target.index(-1)
    return [0 if k != first and d == -1 else d for k, d in enumerate(target)]


def needed_nodes(nodes: list, outputs: list) -> tuple[list, set]:
    """The nodes some output needs (in order), and every name they and the outputs read."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1], needed
