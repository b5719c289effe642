"""Adversarial ONNX graphs that onnxruntime runs: fastgru.load / GRU.from_onnx must refuse them
(FormatError) or compute exactly what onnxruntime computes, and InferenceSession must run them as
onnxruntime does. Each test is a minimal reproducer of one soundness hole in the stack proof
(onnx_dataflow / onnx_stack) or in the constant folding it relies on."""

from __future__ import annotations


import numpy as np
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.testing.graphs import constant as const, graph_bytes as model
from fastgru.testing.graphs import gru_node as gru, onnxruntime_run, same_as_onnxruntime
from fastgru.testing.graphs import value as vi
from fastgru.errors import FormatError

F = TensorProto.FLOAT
INT64_MAX = 2**63 - 1


def _layouts(y, h_n, dirs=1):
    """Every layout fastgru.load claims a graph output may be in, from the model's y, h_n."""
    T, B, _ = y.shape
    Y = y.reshape(T, B, dirs, -1).transpose(0, 2, 1, 3)
    top = h_n[-dirs:]
    return [y, y.transpose(1, 0, 2), Y, Y.transpose(2, 0, 1, 3), h_n, h_n.transpose(1, 0, 2),
            top, top.transpose(1, 0, 2)]


def load_is_sound(proto, x):
    """fastgru.load refuses the graph, or each graph output is one of the model's outputs."""
    try:
        m = fastgru.GRU.from_onnx(proto)
    except FormatError:
        return
    assert not m.batch_first
    y, h_n = m(x)
    for ref in onnxruntime_run(proto, {"X": x}):
        candidates = [c for c in _layouts(y, h_n) if c.shape == ref.shape]
        assert candidates, f"graph output of shape {ref.shape} is none of the model's layouts"
        errors = [np.max(np.abs(c - ref) - 1e-4 * np.abs(ref)) for c in candidates]
        assert min(errors) <= 1e-5, f"accepted, but the model differs from onnxruntime by " \
                                    f"{min(errors):.3g}"


def test_shape_mul_with_an_empty_shape_is_no_crash(rng):
    """Mul broadcasts an empty shape tensor with a 1-element one (the result is empty): the
    shape arithmetic must not divide by zero (ZeroDivisionError from `k % len(a)`)."""
    node, inits = gru(rng, "g", "xr", 3, 4)
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Shape", ["X"], ["e"], start=0, end=0),
             helper.make_node("Mul", ["e", "one"], ["m"]),
             helper.make_node("Concat", ["s", "m"], ["target"], axis=0),
             helper.make_node("Reshape", ["X", "target"], ["xr"]), node]
    proto = model(nodes, [vi("X", ["T", "B", 3])], [vi("g_Y")], inits + [const("one", [1])],
                  opset=15)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    load_is_sound(proto, x)
    same_as_onnxruntime(proto, {"X": x})


def _reversed_shape_slice_graph(rng):
    """X goes to the GRU through Reshape -> Transpose -> Reshape -> Transpose -> Reshape whose
    first target is Concat([T], w, [-1]), w = Slice(Shape(X)[1:2], starts=-10, ends=-20,
    steps=-1). ONNX clamps a negative step's start to [0, dim-1]: w = [B], the first Reshape
    keeps (T, B, 3) and the chain scrambles X. Python's slice gives w = [], so fastgru sees a
    Reshape to (T, 3B) and a chain that gives X back unchanged."""
    node, inits = gru(rng, "g", "x3", 3, 4)
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Slice", ["s", "i0", "i1"], ["sT"]),
             helper.make_node("Slice", ["s", "i1", "i2"], ["sB"]),
             helper.make_node("Slice", ["sB", "m10", "m20", "i0", "m1"], ["w"]),
             helper.make_node("Concat", ["sT", "w", "m1"], ["r1"], axis=0),
             helper.make_node("Reshape", ["X", "r1"], ["x1"]),
             helper.make_node("Transpose", ["x1"], ["x1t"]),
             helper.make_node("Concat", ["m1", "sT"], ["r2"], axis=0),
             helper.make_node("Reshape", ["x1t", "r2"], ["x2"]),
             helper.make_node("Transpose", ["x2"], ["x2t"]),
             helper.make_node("Reshape", ["x2t", "s"], ["x3"]), node]
    inits += [const("i0", [0]), const("i1", [1]), const("i2", [2]), const("m10", [-10]),
              const("m20", [-20]), const("m1", [-1])]
    return model(nodes, [vi("X", ["T", "B", 3])], [vi("g_Y"), vi("g_Yh")], inits)


def test_shape_slice_with_a_negative_step_clamps_as_onnx_does(rng):
    proto = _reversed_shape_slice_graph(rng)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    load_is_sound(proto, x)


def test_session_joins_layers_only_where_a_negative_step_slice_is_read_as_onnx_does(rng):
    """The same clamping between two layers: the session must not join them into one stack."""
    n0, w0 = gru(rng, "g0", "X", 3, 4)
    n1, w1 = gru(rng, "g1", "x3", 4, 4)
    nodes = [n0, helper.make_node("Squeeze", ["g0_Y", "i1"], ["seq"]),
             helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Slice", ["s", "i0", "i1"], ["sT"]),
             helper.make_node("Slice", ["s", "i1", "i2"], ["sB"]),
             helper.make_node("Slice", ["sB", "m10", "m20", "i0", "m1"], ["w"]),
             helper.make_node("Concat", ["sT", "w", "m1"], ["r1"], axis=0),
             helper.make_node("Reshape", ["seq", "r1"], ["x1"]),
             helper.make_node("Transpose", ["x1"], ["x1t"]),
             helper.make_node("Concat", ["m1", "sT"], ["r2"], axis=0),
             helper.make_node("Reshape", ["x1t", "r2"], ["x2"]),
             helper.make_node("Transpose", ["x2"], ["x2t"]),
             helper.make_node("Concat", ["sT", "sB", "m1"], ["r3"], axis=0),
             helper.make_node("Reshape", ["x2t", "r3"], ["x3"]), n1]
    inits = w0 + w1 + [const("i0", [0]), const("i1", [1]), const("i2", [2]),
                       const("m10", [-10]), const("m20", [-20]), const("m1", [-1])]
    proto = model(nodes, [vi("X", ["T", "B", 3])], [vi("g1_Y")], inits)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    same_as_onnxruntime(proto, {"X": x})
    load_is_sound(proto, x)


def test_folded_weights_slice_to_int_max_with_a_negative_step_as_onnxruntime_does(rng):
    """W = Slice(Concat(Slice(A, -1, INT64_MAX, step -1), C), 0, 3H): onnxruntime reads an end
    of INT32_MAX / INT64_MAX with a negative step as "to the beginning", so W is A reversed; the
    folding gives an empty slice and W = C: both entry points run other weights."""
    H, D = 2, 3
    node, inits = gru(rng, "g", "X", D, H)
    inits = [t for t in inits if t.name != "g_W"]
    a = rng.standard_normal((1, 3 * H, D)).astype(np.float32)
    c = rng.standard_normal((1, 3 * H, D)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["A", "s", "e", "axis", "step"], ["reversed"]),
             helper.make_node("Concat", ["reversed", "C"], ["both"], axis=1),
             helper.make_node("Slice", ["both", "zero", "n", "axis"], ["g_W"]), node]
    inits += [numpy_helper.from_array(a, "A"), numpy_helper.from_array(c, "C"),
              const("s", [-1]), const("e", [INT64_MAX]), const("axis", [1]),
              const("step", [-1]), const("zero", [0]), const("n", [3 * H])]
    proto = model(nodes, [vi("X", ["T", "B", D])], [vi("g_Y"), vi("g_Yh")], inits)
    x = rng.standard_normal((4, 2, D)).astype(np.float32)
    same_as_onnxruntime(proto, {"X": x})
    load_is_sound(proto, x)


def test_squeeze_with_an_empty_axes_input_removes_every_size_1_axis(rng):
    """Squeeze(Y, axes=[]) removes every axis of size 1, as if axes were absent: (T, 1, B, H)
    -> (T, B, H), and Gather(axis=1, 0) then picks batch row 0, (T, H). fastgru reads the empty
    axes as "squeeze nothing", so Gather removes the directions axis and the output passes for
    the whole sequence y (T, B, H)."""
    node, inits = gru(rng, "g", "X", 3, 4)
    nodes = [node, helper.make_node("Squeeze", ["g_Y", "none"], ["squeezed"]),
             helper.make_node("Gather", ["squeezed", "zero"], ["out"], axis=1)]
    inits += [const("none", np.zeros(0, np.int64)), const("zero", 0)]
    proto = model(nodes, [vi("X", ["T", "B", 3])], [vi("out")], inits)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    load_is_sound(proto, x)


def test_folded_weights_squeeze_with_an_empty_axes_input_as_onnxruntime_does(rng):
    """W = Reshape(Concat(Squeeze(A1, []), Squeeze(A2, []), axis=1), (1, 3H, D)) with A1, A2 of
    shape (1, 3, D): the empty axes squeeze the leading 1 away, so the Concat interleaves the
    rows of A1 and A2; the folding squeezes nothing and stacks A2 under A1: other weights."""
    H, D = 2, 3
    node, inits = gru(rng, "g", "X", D, H)
    inits = [t for t in inits if t.name != "g_W"]
    a1 = rng.standard_normal((1, 3, D)).astype(np.float32)
    a2 = rng.standard_normal((1, 3, D)).astype(np.float32)
    nodes = [helper.make_node("Squeeze", ["A1", "none"], ["s1"]),
             helper.make_node("Squeeze", ["A2", "none"], ["s2"]),
             helper.make_node("Concat", ["s1", "s2"], ["both"], axis=1),
             helper.make_node("Reshape", ["both", "shape"], ["g_W"]), node]
    inits += [numpy_helper.from_array(a1, "A1"), numpy_helper.from_array(a2, "A2"),
              const("none", np.zeros(0, np.int64)), const("shape", [1, 3 * H, D])]
    proto = model(nodes, [vi("X", ["T", "B", D])], [vi("g_Y"), vi("g_Yh")], inits)
    x = rng.standard_normal((4, 2, D)).astype(np.float32)
    same_as_onnxruntime(proto, {"X": x})
    load_is_sound(proto, x)
