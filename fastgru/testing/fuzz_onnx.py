"""Differential fuzzing of fastgru's ONNX entry points, with onnxruntime as the oracle.

``run_case(seed)`` builds one random ONNX graph from the seed (``generate``) and checks every
entry point against onnxruntime running the same graph (``check``):

- ``InferenceSession(model)``: ``run(None, feeds)`` equals onnxruntime's run, every output, same
  shapes and dtypes, at every size tried; it never refuses a graph onnxruntime runs, and it
  refuses (ValueError, TypeError or onnxruntime's own error) every feed onnxruntime refuses.
- ``load(path)`` and ``GRU.from_onnx(model)``: either FormatError, or the model, called with the
  graph's X feed, an h0 made of the graph's initial_h inputs (per layer, concatenated) and lengths
  from its sequence_lens input, gives every graph output in one of the layouts ONNX or torch use
  (``_layouts``). A graph input that has no place in that call must make the loader refuse.
- ``GRU.from_onnx(model, node=N)`` for each GRU node: either FormatError, or the model, called
  with the node's X (and its initial_h / sequence_lens where they depend on the graph's inputs),
  gives the node's own Y and Y_h, read from onnxruntime by adding them as graph outputs. A
  constant initial_h must be kept as the model's stored state; a constant sequence_lens that
  changes the result must be refused.

Each is tried on the sizes the graph allows (its fixed dims and constants), at least two when
it allows them, T=1 among them. Tolerance: float32 against onnxruntime, |diff| <= 1e-5 +
1e-4 * |ref|. A crash, a hang (``CASE_SECONDS``), another exception type or a mismatch fails:
``run_case`` returns {entry point: "refused" | "matched"} or raises ``FuzzFailure`` (an
AssertionError) that lists every failure of the case, the seed and the graph as text.
``GeneratorError`` means this module made a graph onnxruntime cannot run (its own bug).

The generator (``generate``) combines 1-3 GRU nodes (stacks, encoder -> decoder with the state
passed, side by side) with what exporters write around them: Squeeze/Unsqueeze in both opset
forms, Transpose, Reshape with -1/0/fixed targets or a target computed from Shape/Gather/Concat,
Concat, Slice, Shape/Gather/ConstantOfShape zero states, Expand, Cast, Identity; front-ends
(MatMul, Conv1d), dense heads, several consumers of one value, states and lengths as graph
inputs or constants, dynamic and fixed dims, value_info on intermediates, opsets 11-21.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import traceback
from dataclasses import dataclass, field, replace

import numpy as np

ATOL, RTOL = 1e-5, 1e-4  # float32 against onnxruntime (tests/conftest.py's TOLERANCE)
CASE_SECONDS = 60.0  # a case takes well under a second; past this it is a hang
OPSETS = (11, 21)  # the opsets generated, both included
FLOAT, INT32, INT64, DOUBLE = 1, 6, 7, 11  # onnx.TensorProto element types
INT64_MIN = int(np.iinfo(np.int64).min)
SESSION = "InferenceSession"
BAD_FEED = "InferenceSession(bad feed)"  # "refused": a feed onnxruntime refuses, refused too
ENTRY_POINTS = (SESSION, BAD_FEED, "load", "from_onnx", "from_onnx(node=)")


class GeneratorError(Exception):
    """The generated graph is one onnxruntime cannot run: a bug of this module, not fastgru's."""


class CaseTimeout(BaseException):
    """A case ran past its time limit (BaseException: no entry point's handler catches it)."""


class FuzzFailure(AssertionError):
    """One case's failures: .seed, .failures [(entry point, category, detail)], .model."""

    def __init__(self, message: str, seed: int, failures: list, model) -> None:
        super().__init__(message)
        self.seed, self.failures, self.model = seed, failures, model

    def keys(self) -> list[str]:
        """'entry point: category' of each failure, node names left out: what tells distinct
        failures apart across cases."""
        return sorted({f"{entry_kind(e)}: {c}" for e, c, _ in self.failures})


def entry_kind(entry: str) -> str:
    return "from_onnx(node=)" if entry.startswith("from_onnx(node=") else entry


# ---- what the generator records -----------------------------------------------------------------


@dataclass
class GruInfo:
    """One generated GRU node and where its inputs come from."""

    name: str
    dirs: int
    hidden: int
    x: str  # the value its X reads
    y: str
    y_h: str
    h0: str = ""  # the value its initial_h reads ("" when absent)
    # none | zeros (any zeros: constant or shaped at run time) | const (a constant of batch b)
    # | stored (a constant (dirs, 1, H) expanded over the batch) | input | combined | gru
    h0_kind: str = "none"
    h0_input: str = ""  # the graph input it comes from (input, combined)
    h0_value: np.ndarray | None = None  # const and stored
    h0_slice: int = -1  # combined: the layer's part of the graph's state it reads
    lens: str = ""  # the value its sequence_lens reads
    lens_kind: str = "none"  # none | input | const
    node: object = None  # its NodeProto while the graph is built


@dataclass
class InputInfo:
    role: str  # "x" | "state" | "lens"
    shape: tuple  # ints and size symbols ("T", "T2", "B")
    dtype: str
    default: np.ndarray | None = None  # an initializer of the same name: feeding it is optional
    layout: str = ""  # "batch-first" for a state (B, dirs, H) the graph transposes


@dataclass
class Case:
    seed: int
    model: object  # onnx.ModelProto
    grus: list  # [GruInfo] in graph order
    inputs: dict  # graph input name -> InputInfo
    x_main: str | None  # the graph input the first GRU reads, or None
    x_const: np.ndarray | None  # that X when it is an initializer
    combined: str | None  # one state input sliced per layer (torch's h0), or None
    sizes: list  # [{symbol: size}] to try
    summary: str = ""
    fixed: dict = field(default_factory=dict)  # symbol -> the only size the graph runs with
    least: dict = field(default_factory=dict)  # symbol -> the least size it runs with


# ---- the generator ------------------------------------------------------------------------------


class _Builder:
    """An ONNX graph under construction, with the symbolic shape of every value."""

    def __init__(self, rng, opset: int, nominal: dict) -> None:
        self.rng, self.opset, self.nominal = rng, opset, dict(nominal)
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

    def sequence_input(self, name: str, tsym: str, d: int) -> str:
        """A graph input read as the sequence (T, B, d): time-major, or batch-first and
        transposed; float32, or float64 and cast."""
        batch_first, f64 = self.chance(0.3), self.chance(0.1)
        self.declare(name, DOUBLE if f64 else FLOAT, ("B", tsym, d) if batch_first else
                     (tsym, "B", d), "x")
        x = name
        if f64:
            x = self.op("Cast", [x], self.shapes[name], to=FLOAT)
        elif self.chance(0.05):
            x = self.op("Cast", [x], self.shapes[name], to=FLOAT)  # a no-op cast
        if batch_first:
            x = self.op("Transpose", [x], (tsym, "B", d), perm=[1, 0, 2])
        return self.maybe_identity(x)

    def front_end(self, x: str, d: int) -> tuple[str, int]:
        """Nothing, or what a network computes before its GRU: MatMul (+Add, Tanh), Conv1d
        (Transpose, Conv, Transpose, Relu), Relu."""
        kind = self.pick(["none", "matmul", "conv", "relu", "features", "reverse", "twice",
                          "reshape", "half"], p=[0.46, 0.18, 0.1, 0.04, 0.05, 0.05, 0.04, 0.05,
                                                 0.03])
        T, B, _ = self.shapes[x]
        if kind == "none":
            return x, d
        if kind == "relu":
            return self.op("Relu", [x], (T, B, d)), d
        if kind == "features" and d > 1:  # some of the features only
            k = int(self.rng.integers(1, d))
            start = self.pick([0, d - k])
            return self.slice(x, [start], [start + k], [self.pick([2, -1])], shape=(T, B, k)), k
        if kind == "reshape":  # exact, or with a fixed size (exact at the nominal sizes)
            target = self.pick([[0, 0, -1], [0, -1, d], [-1, self.size(B) or -1, d],
                                [self.size(T) or -1, -1, d]])
            return self.op("Reshape", [x, self.ints(_one_unknown(target))], (T, B, d)), d
        if kind == "half":  # through float16 and back: not a move, it rounds
            h = self.op("Cast", [x], (T, B, d), 10, to=10)
            return self.op("Cast", [h], (T, B, d), to=FLOAT), d
        if kind == "reverse":  # the steps in reverse order
            return self.slice(x, [-1], [INT64_MIN], [0], [-1], shape=(T, B, d)), d
        if kind == "twice":  # two transposes that cancel
            t = self.op("Transpose", [x], (B, T, d), perm=[1, 0, 2])
            return self.op("Transpose", [t], (T, B, d), perm=[1, 0, 2]), d
        d2 = int(self.rng.integers(1, 9))
        if kind == "matmul":
            w = self.constant((0.5 * self.rng.standard_normal((d, d2))).astype(np.float32), "Wf")
            x = self.op("MatMul", [x, w], (T, B, d2))
            if self.chance(0.5):
                bias = self.constant(self.rng.standard_normal(d2).astype(np.float32), "bf")
                x = self.op("Add", [x, bias], (T, B, d2))
            if self.chance(0.3):
                x = self.op("Tanh", [x], (T, B, d2))
            return x, d2
        k = self.pick([1, 3])
        w = self.constant((0.4 * self.rng.standard_normal((d2, d, k))).astype(np.float32), "Wc")
        bias = self.constant((0.1 * self.rng.standard_normal(d2)).astype(np.float32), "bc")
        x = self.op("Transpose", [x], (B, d, T), perm=[1, 2, 0])
        x = self.op("Conv", [x, w, bias], (B, d2, T), kernel_shape=[k], pads=[k // 2, k // 2])
        if self.chance(0.5):
            x = self.op("Relu", [x], (B, d2, T))
        return self.op("Transpose", [x], (T, B, d2), perm=[2, 0, 1]), d2

    # states and lengths
    def initial_state(self, kind: str, x: str, dirs: int, hidden: int,
                      combined: str | None = None, layer: int = 0) -> tuple[str, dict]:
        """The value a GRU's initial_h reads, and what GruInfo records of it."""
        from onnx import helper

        batch = (self.shapes.get(x) or (None, None))[1]
        if kind in ("const", "zeros_const", "input") and batch is None or \
                kind == "combined" and batch != "B":
            kind = "zeros_shape"  # a batch size unknown here: shaped at run time instead
        if kind == "none":
            return "", {}
        if kind in ("zeros_shape", "zeros_expand", "stored"):
            b = self.dims_of(x, 1, 2)
            target = self.op("Concat", [self.ints([dirs]), b, self.ints([hidden])], (3,), INT64,
                             axis=0)
            if kind == "zeros_shape":
                zero = helper.make_tensor("value", FLOAT, [1], [0.0])
                h0 = self.op("ConstantOfShape", [target], (dirs, batch, hidden), value=zero)
                return self.maybe_identity(h0), {"h0_kind": "zeros"}
            fill = np.zeros((dirs, 1, hidden), np.float32) if kind == "zeros_expand" else \
                (0.8 * self.rng.standard_normal((dirs, 1, hidden))).astype(np.float32)
            h0 = self.op("Expand", [self.constant(fill, "h0c"), target], (dirs, batch, hidden))
            return h0, {"h0_kind": "zeros" if kind == "zeros_expand" else "stored",
                        "h0_value": fill}
        if kind in ("const", "zeros_const"):
            self.fix(batch)
            b = self.size(batch)
            if kind == "zeros_const":
                value = np.zeros((dirs, b, hidden), np.float32)
            elif self.chance(0.3):  # the same state for every row
                value = np.repeat(0.8 * self.rng.standard_normal((dirs, 1, hidden)), b, axis=1)
            else:
                value = 0.8 * self.rng.standard_normal((dirs, b, hidden))
            value = value.astype(np.float32)
            return self.maybe_identity(self.constant(value, "h0c")), {
                "h0_kind": "zeros" if kind == "zeros_const" else "const", "h0_value": value}
        if kind == "input":
            name = self.name("h0_in")
            batch_first = self.chance(0.15)
            shape = (batch, dirs, hidden) if batch_first else (dirs, batch, hidden)
            self.declare(name, FLOAT, shape, "state")
            if self.chance(0.04) and isinstance(self.size(batch), int):  # a default value
                default = (0.5 * self.rng.standard_normal(_resolve(shape, self.nominal))
                           ).astype(np.float32)
                self.input_info[name].default = default
                self.constant(default, "unused", node=False)
                self.inits[-1].name = name
                self.fix(batch)
            h0 = name
            if batch_first:
                self.input_info[name].layout = "batch-first"
                h0 = self.op("Transpose", [name], (dirs, batch, hidden), perm=[1, 0, 2])
            return self.maybe_identity(h0), {"h0_kind": "input", "h0_input": name}
        assert kind == "combined" and combined is not None
        if self.chance(0.1):  # the slices of another layer
            layer = self.combined_layers - 1 - layer
            self.notes.append("state slices swapped")
        shift = -self.combined_layers * dirs if self.chance(0.3) else 0  # negative indices
        if dirs == 1 and self.chance(0.3):
            h0 = self.op("Gather", [combined, self.ints([layer + shift])], (1, batch, hidden),
                         axis=0)
        else:
            end = (layer + 1) * dirs + shift
            h0 = self.slice(combined, [layer * dirs + shift], [end if end else 2**62], [0],
                            shape=(dirs, batch, hidden))
        return h0, {"h0_kind": "combined", "h0_input": combined, "h0_slice": layer}

    def lengths(self, kind: str, x: str) -> tuple[str, str]:
        """The value a GRU's sequence_lens reads (one per graph, shared; "input2": a second
        graph input), and its kind."""
        shape = self.shapes.get(x) or (None, None)
        if kind == "none" or shape[0] != "T" or shape[1] != "B":
            return "", "none"  # only the main sequence (T, B) has lengths here
        if kind == "input2":
            if "sequence_lens2" not in self.input_info:
                self.declare("sequence_lens2", INT32, ("B",), "lens")
            return self.maybe_identity("sequence_lens2"), "input"
        if self.lens_value is None:
            if kind == "input":
                wide = self.chance(0.4)  # torch exports int64 lengths, cast to int32
                self.declare("sequence_lens", INT64 if wide else INT32, ("B",), "lens")
                value = "sequence_lens"
                if wide:
                    value = self.op("Cast", [value], ("B",), INT32, to=INT32)
            else:
                self.fix("B")
                T = self.nominal["T"]
                values = self.rng.integers(1, T + 1, self.nominal["B"])
                self.least["T"] = max(self.least.get("T", 1), int(values.max()))
                value = self.constant(values.astype(np.int32), "lens")
            self.lens_value = (self.maybe_identity(value), kind)
        return self.lens_value

    # GRU nodes
    def options(self, like: dict | None = None) -> dict:
        if like is not None:
            return dict(like)
        direction = self.pick(["forward", "reverse", "bidirectional"])
        clip = None if self.chance(0.75) else float(self.pick([0.5, 1.0, 3.0]))
        return {"direction": direction, "hidden": int(self.rng.integers(1, 9)),
                "lbr": int(self.rng.integers(0, 2)), "clip": clip, "bias": self.chance(0.8)}

    def weight(self, array: np.ndarray, stem: str) -> str:
        """A weight as an initializer or Constant, or computed from stored parts as exporters
        write it (Concat of the gates, Unsqueeze of a 2-D weight)."""
        array = array.astype(np.float32)
        form = self.pick(["plain", "concat", "unsqueeze"], p=[0.75, 0.15, 0.1])
        if form == "concat" and array.ndim == 3:
            H = array.shape[1] // 3
            parts = [self.constant(array[:, k * H:(k + 1) * H], stem) for k in range(3)]
            return self.op("Concat", parts, array.shape, axis=1)
        if form == "unsqueeze" and array.shape[0] == 1:
            return self.axes_op("Unsqueeze", self.constant(array[0], stem), [0], array.shape)
        return self.constant(array, stem)

    def gru(self, x: str, d: int, opts: dict, h0: tuple = ("", {}), lens: tuple = ("", "none"),
            weights: tuple | None = None) -> GruInfo:
        from onnx import helper

        dirs = 2 if opts["direction"] == "bidirectional" else 1
        H, k = opts["hidden"], len(self.grus)
        rng = self.rng
        if weights is not None:  # another node's
            w, r, b = weights
        else:
            w = self.weight(0.5 * rng.standard_normal((dirs, 3 * H, d)), f"W{k}_")
            r = self.weight(0.5 * rng.standard_normal((dirs, 3 * H, H)), f"R{k}_")
            b = self.weight(0.5 * rng.standard_normal((dirs, 6 * H)), f"B{k}_") \
                if opts["bias"] else ""
            if not opts["bias"] and self.chance(0.3):
                b = self.constant(np.zeros((dirs, 6 * H), np.float32), f"B{k}_")
        attrs = {"hidden_size": H}
        if opts["direction"] != "forward" or self.chance(0.5):
            attrs["direction"] = opts["direction"]
        if opts["lbr"] or self.chance(0.5):
            attrs["linear_before_reset"] = opts["lbr"]
        if opts["clip"] is not None:
            attrs["clip"] = opts["clip"]
        if self.chance(0.1):
            attrs["activations"] = ["Sigmoid", "Tanh"] * dirs
        if self.opset >= 14 and self.chance(0.1):
            attrs["layout"] = 0
        inputs = [x, w, r, b, lens[0], h0[0]]
        while not inputs[-1]:
            inputs.pop()
        name = "" if self.chance(0.05) else f"gru{k}"  # node= cannot name an unnamed node
        y, y_h = self.name(f"Y{k}_"), self.name(f"Y_h{k}_")
        node = helper.make_node("GRU", inputs, [y, y_h], name=name, **attrs)
        self.nodes.append(node)
        T, B = (self.shapes.get(x) or (None, None))[:2]
        self.shapes[y], self.shapes[y_h] = (T, dirs, B, H), (dirs, B, H)
        self.types[y] = self.types[y_h] = FLOAT
        info = GruInfo(name, dirs, H, x, y, y_h, h0=h0[0], **h0[1], lens=lens[0],
                       lens_kind=lens[1], node=node)
        self.weights = (w, r, b)
        self.grus.append(info)
        return info

    # plumbing after a GRU
    def to_sequence(self, g: GruInfo) -> str:
        """Y (T, dirs, B, H) as (T, B, dirs*H), as exporters write it between stacked layers
        (exact at every size, except the fixed Reshape targets, exact at the nominal size)."""
        y, dirs, H = g.y, g.dirs, g.hidden
        T, _, B, _ = self.shapes[y]
        out = (T, B, dirs * H)
        forms = ["transpose_reshape", "dynamo", "fixed", "cast"]
        if dirs == 1:
            forms += ["squeeze", "squeeze", "reshape_0", "transpose_squeeze"]
        form = self.pick(forms)
        if form == "squeeze":
            v = self.axes_op("Squeeze", y, [self.pick([1, -3])], out)
        elif form == "reshape_0":
            v = self.op("Reshape", [y, self.ints([0, -1, H])], out)
        else:
            t = self.op("Transpose", [y], (T, B, dirs, H), perm=[0, 2, 1, 3])
            t = self.maybe_identity(t)
            if form == "transpose_squeeze":
                v = self.axes_op("Squeeze", t, [self.pick([2, -2])], out)
            elif form == "dynamo":  # the target computed at run time, as torch's dynamo writes
                rest = self.ints([self.pick([-1, dirs * H])])
                source = t
                if self.chance(0.3) and "X" in self.input_info and \
                        self.shapes["X"][:2] == (T, B):  # the same (T, B) from the graph input
                    source = "X"
                    self.notes.append("a Reshape target from the input's shape")
                if self.chance(0.25):  # the last size as dirs times H, computed
                    rest = self.op("Mul", [self.dims_of(t, 2, 3), self.dims_of(t, 3, 4)], (1,),
                                   INT64)
                target = self.op("Concat", [self.dims_of(source, 0, 2), rest], (3,), INT64,
                                 axis=0)
                v = self.op("Reshape", [t, target], out)
            elif form == "fixed":
                nt, nb = self.size(T) or -1, self.size(B) or -1
                target = self.pick([[nt, nb, dirs * H], [-1, nb, dirs * H], [nt, -1, dirs * H],
                                    [0, nb, -1]])
                v = self.op("Reshape", [t, self.ints(_one_unknown(target))], out)
            else:
                target = self.pick([[0, 0, -1], [0, 0, dirs * H], [0, -1, dirs * H]])
                v = self.op("Reshape", [t, self.ints(target)], out)
                if form == "cast":
                    v = self.op("Cast", [v], out, to=FLOAT)
        if self.chance(0.1):  # a Slice that keeps everything
            v = self.slice(v, [0], [2**62], [0], shape=out)
        return self.maybe_identity(v)

    def odd_plumbing(self, g: GruInfo) -> tuple[str, int]:
        """Y turned into a valid next input that is not what a stacked layer reads."""
        y, dirs, H = g.y, g.dirs, g.hidden
        T, _, B, _ = self.shapes[y]
        forms = ["reverse_time", "swap_tb", "scale", "interleave", "time_major_swap"]
        if "X" in self.input_info and self.shapes["X"][:2] == (B, T):
            forms.append("input_target")
        if dirs == 2:
            forms.append("dirs_into_batch")
        forms += ["forward_only", "raw_reshape", "raw_reshape"] if dirs == 2 else \
            ["squeeze_all"] if H > 1 and (self.size(T) or 0) > 1 and (self.size(B) or 0) > 1 \
            else []
        form = self.pick(forms)
        if form == "forward_only":
            v = self.slice(y, [0], [1], [1], shape=(T, 1, B, H))
            return self.axes_op("Squeeze", v, [1], (T, B, H)), H
        if form == "raw_reshape":  # (T, 2, B, H) read as (T, B, 2H): rows and directions mixed
            target = self.pick([[0, -1, 2 * H], [self.size(T) or -1, self.size(B) or -1, 2 * H]])
            return self.op("Reshape", [y, self.ints(_one_unknown(target))], (T, B, 2 * H)), 2 * H
        if form == "squeeze_all":  # every axis of size 1: also T or B when they are 1
            return self.axes_op("Squeeze", y, None, (T, B, H)), H
        if form == "dirs_into_batch":  # (T, dirs*B, H): each direction a row of its own
            batch = self.op("Mul", [self.dims_of(y, 1, 2), self.dims_of(y, 2, 3)], (1,), INT64)
            target = self.op("Concat", [self.dims_of(y, 0, 1), batch, self.ints([H])], (3,),
                             INT64, axis=0)
            return self.op("Reshape", [y, target], (T, None, H)), H
        if form == "input_target":  # a batch-first input's (B, T) as the target: rows mixed
            t = self.op("Transpose", [y], (T, B, dirs, H), perm=[0, 2, 1, 3])
            target = self.op("Concat", [self.dims_of("X", 0, 2), self.ints([-1])], (3,), INT64,
                             axis=0)
            return self.op("Reshape", [t, target], (B, T, dirs * H)), dirs * H
        if form == "interleave":  # (T, B, H, dirs): the directions interleaved unit by unit
            t = self.op("Transpose", [y], (T, B, H, dirs), perm=[0, 2, 3, 1])
            return self.op("Reshape", [t, self.ints([0, 0, -1])], (T, B, dirs * H)), dirs * H
        if form == "time_major_swap":  # (B, T, dirs, H) flattened: B read as time
            t = self.op("Transpose", [y], (B, T, dirs, H), perm=[2, 0, 1, 3])
            return self.op("Reshape", [t, self.ints([0, 0, -1])], (B, T, dirs * H)), dirs * H
        v = self.to_sequence(g)
        if form == "reverse_time":
            return self.slice(v, [-1], [INT64_MIN], [0], [-1], shape=(T, B, dirs * H)), dirs * H
        if form == "swap_tb":
            return self.op("Transpose", [v], (B, T, dirs * H), perm=[1, 0, 2]), dirs * H
        half = self.constant(np.array(0.5, np.float32), "half")
        return self.op("Mul", [v, half], (T, B, dirs * H)), dirs * H

    def head(self, v: str) -> str:
        """A dense head on (..., n): MatMul, maybe Add and Sigmoid."""
        shape = self.shapes[v]
        n = shape[-1]
        k = int(self.rng.integers(1, 5))
        w = self.constant((0.5 * self.rng.standard_normal((n, k))).astype(np.float32), "Wh")
        out = self.op("MatMul", [v, w], (*shape[:-1], k))
        if self.chance(0.6):
            bias = self.constant(self.rng.standard_normal(k).astype(np.float32), "bh")
            out = self.op("Add", [out, bias], (*shape[:-1], k))
        if self.chance(0.3):
            out = self.op("Sigmoid", [out], (*shape[:-1], k))
        return out

    def output_value(self, kind: str, g: GruInfo, layers: list) -> str | None:
        T, dirs, B, H = self.shapes[g.y]
        if kind == "Y":
            return g.y
        if kind == "Y_h":
            return g.y_h
        if kind == "y":
            return self.to_sequence(g)
        if kind == "y_bf":
            return self.op("Transpose", [self.to_sequence(g)], (B, T, dirs * H), perm=[1, 0, 2])
        if kind == "Y_layout1":
            return self.op("Transpose", [g.y], (B, T, dirs, H), perm=[2, 0, 1, 3])
        if kind == "Y_h_bf":
            return self.op("Transpose", [g.y_h], (B, dirs, H), perm=[1, 0, 2])
        if kind == "h_n" and len(layers) > 1 and len({self.shapes[x.y_h] for x in layers}) == 1:
            return self.op("Concat", [x.y_h for x in layers], (len(layers) * dirs, B, H), axis=0)
        if kind == "head_y":
            return self.head(self.to_sequence(g))
        if kind == "head_h":
            t = self.op("Transpose", [g.y_h], (B, dirs, H), perm=[1, 0, 2])
            return self.head(self.op("Reshape", [t, self.ints([0, -1])], (B, dirs * H)))
        if kind == "lower" and len(layers) > 1:
            low = layers[int(self.rng.integers(0, len(layers) - 1))]
            return self.pick([low.y, low.y_h])
        if kind == "const":
            return self.constant(self.rng.standard_normal(2).astype(np.float32), "const_out",
                                 node=False)
        if kind == "last_step":  # Y[-1]: Y_h for a forward GRU of full-length rows only
            last = self.slice(g.y, [-1], [2**62], [0], shape=(1, dirs, B, H))
            return self.axes_op("Squeeze", last, [0], (dirs, B, H))
        if kind == "Y_h_flat":  # (dirs*B, H)
            return self.op("Reshape", [g.y_h, self.ints([-1, H])], (None, H))
        if kind == "Y_flat" and dirs == 2:  # (T, dirs, B*H): directions not moved
            return self.op("Reshape", [g.y, self.ints([0, 0, -1])], (T, dirs, None))
        if kind == "input" and "X" in self.input_info:  # the graph input itself
            return "X"
        if kind == "h_n_reversed" and len(layers) > 1 and \
                len({self.shapes[x.y_h] for x in layers}) == 1:  # top layer first
            return self.op("Concat", [x.y_h for x in layers[::-1]], (len(layers) * dirs, B, H),
                           axis=0)
        if kind == "Y_h_unsqueezed":  # (1, dirs, B, H): h_n.view of a 1-layer model only
            return self.axes_op("Unsqueeze", g.y_h, [0], (1, dirs, B, H))
        if kind == "Y_odd_perm":  # (dirs, T, B, H): no layout anyone uses
            return self.op("Transpose", [g.y], (dirs, T, B, H), perm=[1, 0, 2, 3])
        if kind == "Y_h_squeezed" and dirs == 1:
            return self.axes_op("Squeeze", g.y_h, [self.pick([0, -3])], (B, H))
        if kind == "one_direction" and dirs == 2:
            k = int(self.rng.integers(0, 2))
            if self.chance(0.5):
                return self.slice(g.y_h, [k], [k + 1], [0], shape=(1, B, H))
            return self.op("Gather", [g.y_h, self.ints([k])], (1, B, H), axis=0)
        return None

    def add_outputs(self, g: GruInfo, layers: list, count: int | None = None,
                    clean: bool = False) -> None:
        from onnx import helper

        kinds = ["Y", "Y_h", "y", "y_bf", "Y_layout1", "Y_h_bf", "Y_h_squeezed", "h_n",
                 "head_y", "head_h", "lower", "const", "last_step", "Y_h_flat", "Y_flat",
                 "input", "h_n_reversed", "one_direction", "Y_h_unsqueezed", "Y_odd_perm"]
        odd = not clean
        p = np.array([10, 8, 10, 4, 3, 3, 3, 5, 5 * odd, 3 * odd, 2 * odd, 1 * odd, 2 * odd,
                      1 * odd, 1 * odd, 3 * odd, 2, 1.5, 1.5, 1], float)
        count = count or int(self.pick([1, 2, 3], p=[0.45, 0.4, 0.15]))
        done = {o.name for o in self.outputs}
        for _ in range(count):
            value = self.output_value(self.pick(kinds, p=p / p.sum()), g, layers)
            if value is None or value in done:
                continue
            done.add(value)
            shape = self.shapes.get(value)
            form = self.pick(["none", "symbolic", "fixed"], p=[0.3, 0.5, 0.2])
            if shape is None or form == "none":
                dims = None
            elif form == "symbolic":
                dims = [d if isinstance(d, (int, str)) else None for d in shape]
            else:
                dims = [self.size(d) if d is not None else None for d in shape]
            self.outputs.append(helper.make_tensor_value_info(value, self.types.get(value, FLOAT),
                                                              dims))

    def finish(self, seed: int, x_main, x_const, combined, summary: str) -> Case:
        """Drop what no output needs, blank some unused GRU outputs, annotate some
        intermediates with value_info, and make the model."""
        from onnx import helper

        nodes, needed = _needed(self.nodes, [o.name for o in self.outputs])
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
                if not out or out in io or node.op_type == "Constant":
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


def _one_unknown(target: list) -> list:
    """A Reshape target with at most one -1 (an unknown size gave -1 in a fixed target)."""
    if target.count(-1) < 2:
        return target
    first = target.index(-1)
    return [0 if k != first and d == -1 else d for k, d in enumerate(target)]


def _needed(nodes: list, outputs: list) -> tuple[list, set]:
    """The nodes some output needs (in order), and every name they and the outputs read."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1], needed


def generate(seed: int) -> Case:
    """One random graph (see the module's docstring), the same for the same seed."""
    rng = np.random.default_rng(seed)
    opset = int(rng.integers(OPSETS[0], OPSETS[1] + 1))
    nominal = {"T": int(rng.integers(2, 7)), "B": int(rng.integers(1, 5)),
               "T2": int(rng.integers(1, 7))}
    b = _Builder(rng, opset, nominal)
    d = int(rng.integers(1, 9))
    x_main, x_const = None, None
    if b.chance(0.05):  # X is an initializer: the graph runs at one size
        x_const = rng.standard_normal((nominal["T"], nominal["B"], d)).astype(np.float32)
        x = b.constant(x_const, "X", node=False)
        b.shapes[x] = ("T", "B", d)
        b.fix("T")
        b.fix("B")
        x_main = x
    else:
        x = x_main = b.sequence_input("X", "T", d)
        x_main = "X"
    topology = b.pick(["stack", "encdec", "parallel"], p=[0.6, 0.2, 0.2])
    # an exporter's plain stack: nothing in front, the stack's outputs only
    clean = topology == "stack" and b.chance(0.4)
    if not clean:
        x, d = b.front_end(x, d)
    lens_kind = b.pick(["none", "input", "const"], p=[0.5, 0.35, 0.15])
    state_kinds = ["none", "zeros_shape", "zeros_expand", "zeros_const", "const", "stored",
                   "input"]
    state_p = np.array([4, 1, 1, 0.5 * (not clean), 1 * (not clean), 1, 3])
    state_p = state_p / state_p.sum()
    combined = None
    if topology == "stack":
        n = int(b.pick([1, 2, 3], p=[0.35, 0.45, 0.2]))
        opts = b.options()
        same = b.chance(0.8)
        lens_everywhere = b.chance(0.75)
        if n > 1 and same and b.chance(0.25):  # torch's h0 (layers*dirs, B, H), sliced per layer
            dirs = 2 if opts["direction"] == "bidirectional" else 1
            combined = b.name("state")
            b.combined_layers = n
            b.declare(combined, FLOAT, (n * dirs, "B", opts["hidden"]), "state")
        second_lens = n > 1 and lens_kind == "input" and b.chance(0.1)
        layers = []
        for k in range(n):
            layer_opts = opts if same or k == 0 else b.options(None if b.chance(0.5) else opts)
            if not same and k > 0 and b.chance(0.5):
                layer_opts = dict(opts, hidden=int(rng.integers(1, 9)))
            dirs = 2 if layer_opts["direction"] == "bidirectional" else 1
            kind = "combined" if combined else b.pick(state_kinds, p=state_p)
            below = layers[-1] if layers else None
            if below is not None and not combined and b.chance(0.08) and \
                    (below.dirs, below.hidden) == (dirs, layer_opts["hidden"]) and \
                    b.shapes[below.y_h][1] == (b.shapes.get(x) or (0, 0))[1]:
                h0 = (b.maybe_identity(below.y_h), {"h0_kind": "gru"})  # the state passed up
                b.notes.append("a layer starts from the state of the one below")
            else:
                h0 = b.initial_state(kind, x, dirs, layer_opts["hidden"], combined, k)
            if k > 0 and second_lens:
                lens = b.lengths("input2", x)
            else:
                lens = b.lengths(lens_kind, x) if k == 0 or lens_everywhere else ("", "none")
            g = b.gru(x, d, layer_opts, h0, lens)
            layers.append(g)
            if k < n - 1:
                if b.chance(0.8):
                    x, d = b.to_sequence(g), g.dirs * g.hidden
                else:
                    x, d = b.odd_plumbing(g)
        b.add_outputs(layers[-1], layers, clean=clean)
        summary = f"{'plain ' if clean else ''}stack of {n} " \
                  f"({'same options' if same else 'options differ'})"
    elif topology == "encdec":
        n = int(b.pick([1, 2]))
        opts = b.options()
        encoder = []
        for k in range(n):
            kind = b.pick(state_kinds, p=state_p)
            h0 = b.initial_state(kind, x, 2 if opts["direction"] == "bidirectional" else 1,
                                 opts["hidden"])
            g = b.gru(x, d, opts, h0, b.lengths(lens_kind, x))
            encoder.append(g)
            if k < n - 1:
                x, d = b.to_sequence(g), g.dirs * g.hidden
        reads = b.pick(["X2", "X", "encoder"], p=[0.5, 0.15, 0.35])
        if reads == "X2":
            d2 = int(rng.integers(1, 9))
            x2 = b.sequence_input("X2", "T2", d2)
        elif reads == "X":  # the same sequence as the encoder
            x2, d2 = encoder[0].x, b.shapes[encoder[0].x][2]
        else:  # the decoder reads the encoder's output sequence
            x2, d2 = b.to_sequence(encoder[-1]), encoder[-1].dirs * encoder[-1].hidden
        dec_opts = dict(opts, lbr=int(rng.integers(0, 2))) if b.chance(0.4) else dict(opts)
        decoder = []
        m = 1  # at most 3 GRU nodes
        for k in range(m):
            source = encoder[n - m + k]
            h0 = (b.maybe_identity(source.y_h, 0.3), {"h0_kind": "gru"})
            g = b.gru(x2, d2, dec_opts, h0)
            decoder.append(g)
            if k < m - 1:
                x2, d2 = b.to_sequence(g), g.dirs * g.hidden
        b.add_outputs(decoder[-1], decoder)
        if b.chance(0.3):
            b.add_outputs(encoder[-1], encoder, 1)
        summary = f"encoder ({n}) -> decoder ({m}), decoder input {reads}"
    else:
        a_opts, b_opts = b.options(), b.options()
        ga = b.gru(x, d, a_opts, b.initial_state(b.pick(state_kinds, p=state_p), x,
                                                 2 if a_opts["direction"] == "bidirectional"
                                                 else 1, a_opts["hidden"]),
                   b.lengths(lens_kind, x))
        shared = b.chance(0.15)  # the same weights for both (identical nodes would be merged
        # by onnxruntime's common subexpression elimination, which then fails to load them)
        if shared:
            b_opts = dict(a_opts, lbr=1 - a_opts["lbr"])
        gb = b.gru(x, d, b_opts, ("", {}),
                   b.lengths(lens_kind, x) if b.chance(0.5) else ("", "none"),
                   weights=b.weights if shared else None)
        merge = b.pick(["gru", "out", "separate"])
        if merge == "separate":
            b.add_outputs(ga, [ga], 1)
            b.add_outputs(gb, [gb], 1)
        else:
            ya, yb = b.to_sequence(ga), b.to_sequence(gb)
            T, B, _ = b.shapes[ya]
            n = ga.dirs * ga.hidden + gb.dirs * gb.hidden
            both = b.op("Concat", [ya, yb], (T, B, n), axis=2)
            if merge == "out":
                from onnx import helper

                value = b.head(both) if b.chance(0.5) else both
                b.outputs.append(helper.make_tensor_value_info(value, FLOAT, None))
                if b.chance(0.3):
                    b.add_outputs(ga, [ga], 1)
            else:
                gc = b.gru(both, n, b.options())
                b.add_outputs(gc, [gc])
        summary = f"two GRUs side by side{' sharing weights' if shared else ''}, merged: {merge}"
    if not b.outputs:
        b.add_outputs(b.grus[-1], [b.grus[-1]], 1)
    if not b.outputs:
        from onnx import helper

        b.outputs.append(helper.make_tensor_value_info(b.grus[-1].y, FLOAT, None))
    notes = "".join(f"; {note}" for note in dict.fromkeys(b.notes))
    return b.finish(seed, x_main, x_const, combined, f"opset {opset}, {summary}{notes}")


# ---- feeds --------------------------------------------------------------------------------------


def _resolve(shape: tuple, size: dict) -> tuple:
    return tuple(size[d] if isinstance(d, str) else d for d in shape)


def make_feeds(case: Case, size: dict, rng) -> dict:
    """Random feeds for every graph input at `size`; lengths in [1, T]."""
    feeds = {}
    for name, info in case.inputs.items():
        shape = _resolve(info.shape, size)
        if info.default is not None and rng.random() < 0.5:
            continue  # the graph's default value
        if info.role == "lens":
            T = size["T"]
            value = np.full(shape, T) if rng.random() < 0.3 else rng.integers(1, T + 1, shape)
        elif info.role == "state":
            value = 0.8 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape)
        feeds[name] = np.asarray(value).astype(info.dtype)
    return feeds


def session_feeds(case: Case, runs: list, rng) -> list:
    """[(label, feeds)] for the session only: feeds onnxruntime refuses (a state of another
    batch size than X, lengths past T) and lengths of 0 (onnxruntime's Y_h is 0 for such rows,
    where fastgru.GRU keeps the initial state: only the session promises onnxruntime's)."""
    out = []
    for label, size, feeds, _ in runs:
        B, T = size["B"], size["T"]
        states = [n for n, i in case.inputs.items() if i.role == "state" and n in feeds and
                  i.shape[0 if i.layout else 1] == "B"]
        lens = [n for n, i in case.inputs.items() if i.role == "lens" and n in feeds]

        def rows(name, b):  # the state `name` with b rows
            axis = 0 if case.inputs[name].layout else 1
            return np.ascontiguousarray(np.take(feeds[name], range(b), axis=axis))

        if states and B > 1:
            bad = dict(feeds)
            bad[states[0]] = rows(states[0], 1)
            out.append((f"{label}, {states[0]} of batch 1", bad))
            if B > 2:
                bad = dict(feeds)
                bad[states[-1]] = rows(states[-1], B - 1)
                out.append((f"{label}, {states[-1]} of batch {B - 1}", bad))
        if lens:
            bad = dict(feeds)
            bad[lens[0]] = feeds[lens[0]].copy()
            bad[lens[0]][0] = T + 1
            out.append((f"{label}, sequence_lens past T", bad))
            zero = dict(feeds)
            zero[lens[0]] = feeds[lens[0]].copy()
            zero[lens[0]][rng.integers(0, B)] = 0
            out.append((f"{label}, a sequence of length 0", zero))
        # sizes the graph does not run with: another batch or length than it fixes, a length
        # below its constant sequence_lens
        for symbol, fixed in case.fixed.items():
            other = dict(size, **{symbol: fixed + 1 if fixed < 4 else fixed - 1})
            out.append((f"{symbol}={other[symbol]}, which the graph fixes at {fixed}",
                        make_feeds(case, other, rng)))
        for symbol, least in case.least.items():
            if least > 1 and symbol not in case.fixed:
                other = dict(size, **{symbol: least - 1})
                out.append((f"{symbol}={least - 1}, below the graph's least {least}",
                            make_feeds(case, other, rng)))
        break  # at the first size onnxruntime runs
    return out


# ---- the check ----------------------------------------------------------------------------------


def _declares_sizes(model) -> bool:
    """Whether the graph fixes a size on a value other than its inputs (value_info, outputs)."""
    return any(d.HasField("dim_value") for v in (*model.graph.value_info, *model.graph.output)
               for d in v.type.tensor_type.shape.dim)


def _ort_session(data: bytes, optimize: bool = True):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # fastgru.InferenceSession's sessions too
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # refused feeds are expected here: no error logs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _takes_plan() -> bool:
    import inspect

    import fastgru

    return "plan" in inspect.signature(fastgru.InferenceSession).parameters


def _is_ort_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("onnxruntime")


def compare(actual, expected) -> tuple[bool, float]:
    """(within tolerance, max |diff|) in float64; shapes must be equal."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return False, float("inf")
    if actual.size == 0:
        return True, 0.0
    same_nan = np.isnan(actual) & np.isnan(expected)
    err = np.where(same_nan, 0.0, np.abs(actual - expected))
    ok = bool(np.all(err <= ATOL + RTOL * np.abs(expected)))
    return ok, float(np.nanmax(np.where(np.isnan(err), np.inf, err)))


def _layouts(y, h_n, m) -> dict:
    """The model's results in every layout ONNX or torch uses: {description: array}."""
    dirs = 2 if m.bidirectional else 1
    H, L = m.hidden_size, m.num_layers
    y_tm = np.swapaxes(y, 0, 1) if m.batch_first else y
    T, B = y_tm.shape[:2]
    Y = y_tm.reshape(T, B, dirs, H).transpose(0, 2, 1, 3)
    out = {"y (T, B, dirs*H)": y_tm, "y batch-first (B, T, dirs*H)": np.swapaxes(y_tm, 0, 1),
           "Y (T, dirs, B, H)": Y, "Y layout 1 (B, T, dirs, H)": Y.transpose(2, 0, 1, 3),
           "y.view(T, B, dirs, H)": y_tm.reshape(T, B, dirs, H),
           "h_n (layers*dirs, B, H)": h_n,
           "h_n.view(layers, dirs, B, H)": h_n.reshape(L, dirs, B, H)}
    for k in range(L):  # each layer's Y_h: the top one, and h_n's slices of the others
        state = h_n[k * dirs:(k + 1) * dirs]
        which = "the top layer's Y_h" if k == L - 1 else f"layer {k}'s Y_h (h_n's slice)"
        out[f"{which} (dirs, B, H)"] = state
        out[f"{which} (B, dirs, H)"] = np.swapaxes(state, 0, 1)
    if dirs == 1:
        out["the top layer's Y_h squeezed (B, H)"] = h_n[-1]
    return out


def _shape(a) -> str:
    return str(tuple(np.shape(a)))


class _Checker:
    def __init__(self, case: Case) -> None:
        self.case = case
        self.data = case.model.SerializeToString()
        self.failures: list = []
        self.outcomes: dict = {}
        self.entry = "onnxruntime"

    def fail(self, category: str, detail: str = "") -> None:
        self.failures.append((self.entry, category, detail))

    def failed(self, entry: str) -> bool:
        return any(e == entry for e, _, _ in self.failures)

    def run(self) -> dict:
        import fastgru

        self.reference()
        self.check_session()
        with tempfile.TemporaryDirectory(prefix="fuzz_onnx") as folder:
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(self.data)
            self.check_whole("load", lambda: fastgru.load(path))
        self.check_whole("from_onnx", lambda: fastgru.GRU.from_onnx(self.copy()))
        self.check_nodes()
        return self.outcomes

    def copy(self):
        import onnx

        model = onnx.ModelProto()
        model.ParseFromString(self.data)
        return model

    # onnxruntime, the oracle
    def reference(self) -> None:
        """onnxruntime's results at each size. Where the graph declares fixed sizes on values
        other than its inputs, onnxruntime's optimizer trusts them (it folds Shape, reshapes
        for Gemm) and at other sizes computes what the graph does not say: a size where the
        optimized and the unoptimized runs disagree is ambiguous and left out."""
        case = self.case
        try:
            sessions = [_ort_session(self.data)]
            if _declares_sizes(case.model):
                sessions.append(_ort_session(self.data, optimize=False))
        except Exception as error:
            raise GeneratorError(f"onnxruntime cannot load the graph: {error}") from None
        self.ort_inputs = [(i.name, i.type) for i in sessions[0].get_inputs()]
        self.ort_outputs = [(o.name, o.type) for o in sessions[0].get_outputs()]
        rng = np.random.default_rng([case.seed, 7])
        self.runs, self.ambiguous = [], []
        for size in case.sizes:
            label = ", ".join(f"{k}={v}" for k, v in size.items())
            feeds = make_feeds(case, size, rng)
            result = self._oracle(sessions, feeds)
            (self.ambiguous if result is None else self.runs).append((label, size, feeds, result))
        self.valid = [r for r in self.runs if not isinstance(r[3], Exception)]
        if not self.valid:
            raise GeneratorError("onnxruntime runs the graph at none of the sizes tried: " +
                                 "; ".join(f"{r[0]}: {r[3]}" for r in self.runs) +
                                 f" ({len(self.ambiguous)} ambiguous)")
        self.extra = []
        for label, feeds in session_feeds(case, self.valid, rng):
            result = self._oracle(sessions, feeds)
            if result is not None:
                self.extra.append((label, None, feeds, result))

    def _oracle(self, sessions, feeds):
        """onnxruntime's outputs or its exception; None where its sessions disagree."""
        results = [self._ort_run(s, feeds) for s in sessions]
        first = results[0]
        for other in results[1:]:
            if isinstance(first, Exception) != isinstance(other, Exception):
                return None
            if not isinstance(first, Exception) and \
                    not all(compare(a, b)[0] for a, b in zip(first, other)):
                return None
        return first

    @staticmethod
    def _ort_run(session, feeds):
        try:
            return session.run(None, feeds)
        except Exception as error:  # onnxruntime's own exception types
            return error

    # InferenceSession
    def check_session(self) -> None:
        import fastgru

        self.entry = SESSION
        model = self.copy()
        # fastgru's own computation: the staged plan where the session has a choice of plans
        # (with plan="auto" it may keep onnxruntime alone, which would compare it with itself)
        staged = {"plan": "staged"} if _takes_plan() else {}
        try:
            session = fastgru.InferenceSession(model, threads=1, **staged)
        except fastgru.FormatError as error:
            self.fail("refuses a graph onnxruntime runs", f"FormatError: {error}")
            return
        except Exception:
            self.fail("constructor raised", traceback.format_exc(limit=-4))
            return
        if model.SerializeToString() != self.data:
            self.fail("changed the caller's ModelProto")
        ours = ([(i.name, i.type) for i in session.get_inputs()],
                [(o.name, o.type) for o in session.get_outputs()])
        if ours != (self.ort_inputs, self.ort_outputs):
            self.fail("get_inputs/get_outputs differ from onnxruntime's",
                      f"fastgru: {ours}\nonnxruntime: {(self.ort_inputs, self.ort_outputs)}")
        refused = 0
        names = [n for n, _ in self.ort_outputs]
        for label, _, feeds, expected in self.runs + self.extra:
            try:
                got = session.run(None, feeds)
            except Exception as error:
                if not isinstance(expected, Exception):
                    self.fail("raised on a feed onnxruntime runs",
                              f"feed {label}: {traceback.format_exc(limit=-4)}")
                elif isinstance(error, (ValueError, TypeError)) or _is_ort_error(error):
                    refused += 1
                else:
                    self.fail(f"raised {type(error).__name__} on a feed onnxruntime refuses "
                              f"(expected ValueError or TypeError)",
                              f"feed {label}: {error!r}\nonnxruntime: {expected}")
                continue
            if isinstance(expected, Exception):
                self.fail("ran a feed onnxruntime refuses",
                          f"feed {label}: onnxruntime says {str(expected).strip()}\n"
                          f"fastgru returned shapes {[_shape(a) for a in got]}")
                continue
            for name, a, e in zip(names, got, expected):
                a = np.asarray(a)
                if a.shape != e.shape or a.dtype != e.dtype:
                    self.fail("output shape or dtype differs from onnxruntime's",
                              f"feed {label}: output {name!r}: fastgru {a.shape} {a.dtype}, "
                              f"onnxruntime {e.shape} {e.dtype}")
                    continue
                ok, err = compare(a, e)
                if not ok:
                    self.fail("output values differ from onnxruntime's",
                              f"feed {label}: output {name!r} {e.shape}: max |diff| {err:.3g}")
        if staged:  # what users get by default, on the feeds onnxruntime runs
            try:
                default = fastgru.InferenceSession(self.copy(), threads=1)
                for label, _, feeds, expected in self.valid:
                    for _ in range(2):  # auto tries each plan in turn
                        for name, a, e in zip(names, default.run(None, feeds), expected):
                            if np.shape(a) != e.shape or not compare(a, e)[0]:
                                self.fail("the default plan's output differs from "
                                          "onnxruntime's", f"feed {label}: output {name!r}")
            except Exception:
                self.fail("the default plan raised", traceback.format_exc(limit=-4))
        if not self.failed(SESSION):
            self.outcomes[SESSION] = "matched"
            if refused:
                self.outcomes[BAD_FEED] = "refused"

    # load and from_onnx without node=
    def model_call(self, feeds: dict, size: dict):
        """(x, h0, lengths, unused graph inputs) for a whole-graph model, or raise ValueError
        when the graph's states cannot make one h0."""
        case = self.case
        x = feeds[case.x_main] if case.x_main in feeds else case.x_const
        used = {case.x_main}
        h0 = None
        if case.combined:
            h0 = feeds[case.combined]
            used.add(case.combined)
        elif any(g.h0_kind == "input" for g in case.grus):
            parts = []
            for g in case.grus:
                B = size["B"]
                if g.h0_kind == "input":
                    info = case.inputs[g.h0_input]
                    part = feeds.get(g.h0_input, info.default)
                    parts.append(np.swapaxes(part, 0, 1) if info.layout else part)
                    used.add(g.h0_input)
                elif g.h0_kind in ("const", "stored"):
                    parts.append(np.broadcast_to(g.h0_value, (g.dirs, B, g.hidden)))
                else:
                    parts.append(np.zeros((g.dirs, B, g.hidden), np.float32))
            if len({p.shape[1:] for p in parts}) > 1:
                raise ValueError(f"the graph feeds states of shapes {[p.shape for p in parts]} "
                                 f"to its GRUs: no one h0 holds them")
            h0 = np.concatenate(parts)
        lengths = None
        if any(g.lens_kind == "input" for g in case.grus):
            name = next(n for n, i in case.inputs.items() if i.role == "lens")
            lengths = feeds[name]
            used.add(name)
        return x, h0, lengths, sorted(set(feeds) - used)

    def check_whole(self, entry: str, read) -> None:
        import fastgru

        self.entry = entry
        try:
            m = read()
        except fastgru.FormatError:
            self.outcomes[entry] = "refused"
            return
        except Exception:
            self.fail("raised another exception than FormatError",
                      traceback.format_exc(limit=-4))
            return
        names = [n for n, _ in self.ort_outputs]
        for label, size, feeds, expected in self.valid:
            try:
                x, h0, lengths, unused = self.model_call(feeds, size)
            except ValueError as error:
                self.fail("accepted a graph whose states no h0 holds", str(error))
                return
            if unused:
                self.fail("accepted a graph with inputs the model cannot take",
                          f"graph inputs {unused} have no place in m(x, h0, lengths=); {m!r}")
                return
            try:
                y, h_n = m(x, h0, lengths=lengths)
            except Exception as error:
                self.fail("accepted, but the model cannot be called with the graph's inputs",
                          f"feed {label}: m(x {_shape(x)}, h0 "
                          f"{None if h0 is None else _shape(h0)}, lengths {lengths}) raised "
                          f"{error!r}; {m!r}")
                return
            layouts = _layouts(y, h_n, m)
            for name, e in zip(names, expected):
                scores = [(compare(a, e)[1], what) for what, a in layouts.items()
                          if np.shape(a) == e.shape]
                if not any(compare(layouts[what], e)[0] for _, what in scores):
                    closest = min(scores, default=None)
                    self.fail("a graph output matches none of the model's results",
                              f"feed {label}: output {name!r} {e.shape}: "
                              + (f"closest {closest[1]}, max |diff| {closest[0]:.3g}"
                                 if closest else "no result of that shape")
                              + f"; model {m!r}, called with h0 "
                                f"{'None' if h0 is None else _shape(h0)}, lengths {lengths}")
                    return
        self.outcomes[entry] = "matched"

    # from_onnx(node=)
    def check_nodes(self) -> None:
        import fastgru
        from onnx import helper, numpy_helper

        case = self.case
        probe = self.copy()
        inputs = {i.name for i in probe.graph.input}
        inits = {t.name: t for t in probe.graph.initializer}
        wanted = []
        nodes = [n for n in probe.graph.node if n.op_type == "GRU"]
        assert len(nodes) == len(case.grus), "the generator lost track of its GRU nodes"
        for k, (node, g) in enumerate(zip(nodes, case.grus)):
            while len(node.output) < 2:
                node.output.append("")
            for j, stem in ((0, "Y"), (1, "Y_h")):
                if not node.output[j]:
                    node.output[j] = f"gru_{k}__{stem}"
            g.y, g.y_h = node.output[0], node.output[1]
            for name in (g.x, g.h0, g.lens, g.y, g.y_h):
                if name and name not in inputs and name not in inits and name not in wanted:
                    wanted.append(name)
        known = {t.name: numpy_helper.to_array(t) for t in inits.values()}
        for name in wanted:
            elem = INT32 if any(name == g.lens for g in case.grus) else FLOAT
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        session = _ort_session(probe.SerializeToString())
        values = []
        for label, size, feeds, _ in self.valid:
            result = session.run(wanted, feeds)
            values.append((label, {**known, **feeds, **dict(zip(wanted, result))}))
        for g in case.grus:
            if not g.name:
                continue  # an unnamed node: node= cannot pick it
            self.entry = f"from_onnx(node={g.name})"
            try:
                m = fastgru.GRU.from_onnx(self.copy(), node=g.name)
            except fastgru.FormatError:
                self.outcomes[self.entry] = "refused"
                continue
            except Exception:
                self.fail("raised another exception than FormatError",
                          traceback.format_exc(limit=-4))
                continue
            for label, v in values:
                h0 = v[g.h0] if g.h0_kind in ("input", "combined", "gru") else None
                lengths = v[g.lens] if g.lens_kind == "input" else None
                try:
                    y, h_n = m(v[g.x], h0, lengths=lengths)
                except Exception as error:
                    self.fail("the node's model cannot be called with the node's inputs",
                              f"feed {label}: {error!r}; {m!r}")
                    break
                layouts = _layouts(y, h_n, m)
                Y, Y_h = layouts["Y (T, dirs, B, H)"], h_n
                for what, a, e in (("Y", Y, v[g.y]), ("Y_h", Y_h, v[g.y_h])):
                    ok, err = compare(a, e)
                    if not ok:
                        how = "without h0" if h0 is None else "with the node's initial_h"
                        how += ", without lengths" if lengths is None else \
                            ", with the node's sequence_lens"
                        stored = "stored" if m.initial_state is not None else "none"
                        self.fail(f"the node's {what} differs from the model's",
                                  f"feed {label}: {what} {e.shape} vs {_shape(a)}: max |diff| "
                                  f"{err:.3g}; called {how}; the node's initial_h is "
                                  f"{g.h0_kind}, sequence_lens {g.lens_kind}; the model's "
                                  f"initial_state: {stored}; {m!r}")
                        break
                else:
                    continue
                break
            if not self.failed(self.entry):
                self.outcomes[self.entry] = "matched"


@contextlib.contextmanager
def _time_limit(seconds: float):
    """CaseTimeout past `seconds` (in the main thread, where signals arrive; a hang inside a
    compiled kernel is only seen when it returns: tools/fuzz.py runs cases in a child process
    it can kill)."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"the case ran past {seconds:g} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


@contextlib.contextmanager
def _one_thread():
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def check(case: Case, seconds: float = CASE_SECONDS) -> dict:
    """Every entry point on `case` against onnxruntime: {entry point: "refused" | "matched"};
    FuzzFailure on any failure, GeneratorError when onnxruntime cannot run the graph."""
    checker = _Checker(case)
    try:
        with _time_limit(seconds), _one_thread():
            outcomes = checker.run()
    except CaseTimeout as error:
        checker.fail("hang", str(error))
        outcomes = checker.outcomes
    if checker.failures:
        raise FuzzFailure(describe(case, checker.failures), case.seed, checker.failures,
                          case.model)
    return outcomes


def run_case(seed: int) -> dict[str, str]:
    """Generate the graph of `seed` and check every entry point on it (see the module's
    docstring)."""
    return check(generate(seed))


# ---- reports ------------------------------------------------------------------------------------


def graph_text(model) -> str:
    """The graph in ONNX's text syntax; initializers of more than 16 values are listed as
    inputs (their values are in the model file)."""
    import onnx
    from onnx import helper

    shown = onnx.ModelProto()
    shown.CopyFrom(model)
    big = [t for t in shown.graph.initializer if int(np.prod(t.dims)) > 16]
    for t in big:
        shown.graph.initializer.remove(t)
        shown.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    text = onnx.printer.to_text(shown)
    if big:
        text += f"\n(initializers shown as inputs: {[t.name for t in big]})"
    return text


def describe(case: Case, failures: list) -> str:
    lines = [f"fuzz_onnx seed {case.seed}: {case.summary}",
             "sizes tried: " + "; ".join(", ".join(f"{k}={v}" for k, v in s.items())
                                         for s in case.sizes), ""]
    for entry, category, detail in failures:
        lines.append(f"[{entry}] {category}")
        lines.extend("    " + line for line in detail.strip().splitlines())
    lines += ["", graph_text(case.model)]
    return "\n".join(lines)


# ---- shrinking ----------------------------------------------------------------------------------


def _with_outputs(case: Case, keep: list) -> Case:
    """`case` with only the graph outputs `keep`, and what they need."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    outputs = [o for o in graph.output if o.name in keep]
    all_nodes = list(graph.node)
    nodes, needed = _needed(all_nodes, [o.name for o in outputs])
    new = helper.make_graph(nodes, graph.name, [i for i in graph.input if i.name in needed],
                            outputs, [t for t in graph.initializer if t.name in needed],
                            value_info=[v for v in graph.value_info if v.name in needed])
    model.graph.CopyFrom(new)
    kept = {id(n) for n in nodes}
    grus = [replace(g) for g, n in zip(case.grus, [n for n in all_nodes if n.op_type == "GRU"])
            if id(n) in kept]
    inputs = {n: i for n, i in case.inputs.items() if n in needed}
    return replace(case, model=model, grus=grus,
                   inputs=inputs, x_main=case.x_main if case.x_main in inputs else None,
                   combined=case.combined if case.combined in inputs else None)


def shrink(case: Case, key: str | None = None) -> Case:
    """A smaller case that still fails with `key` ('entry point: category', by default the
    first failure's): graph outputs are dropped one at a time, with what only they need."""
    def failing(c: Case) -> bool:
        try:
            check(replace(c, grus=[replace(g) for g in c.grus]))
        except FuzzFailure as failure:
            return key in failure.keys()
        except GeneratorError:
            return False
        return False

    if key is None:
        try:
            check(replace(case, grus=[replace(g) for g in case.grus]))
            return case
        except FuzzFailure as failure:
            key = f"{entry_kind(failure.failures[0][0])}: {failure.failures[0][1]}"
    changed = True
    while changed:
        changed = False
        names = [o.name for o in case.model.graph.output]
        for name in names if len(names) > 1 else []:
            smaller = _with_outputs(case, [n for n in names if n != name])
            if failing(smaller):
                case, changed = smaller, True
                break
    return case


__all__ = ["ATOL", "CASE_SECONDS", "Case", "CaseTimeout", "ENTRY_POINTS", "FuzzFailure",
           "GeneratorError", "GruInfo", "check", "describe", "entry_kind", "generate",
           "graph_text", "make_feeds", "run_case", "shrink"]
