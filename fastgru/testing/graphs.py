"""Small ONNX graphs built by hand around GRU nodes, for tests that attack the ONNX readers."""

from __future__ import annotations

import numpy as np

from fastgru.testing.models import random_spec

__all__ = ["constant", "gru_node", "graph_bytes", "onnxruntime_run", "same_as_onnxruntime",
           "value"]


def gru_node(rng, name, x, d_in, hidden, *, state="", lengths="", direction="forward",
             outputs=None):
    """(a GRU node reading `x`, its W/R/B initializers): random weights, linear_before_reset=1;
    outputs `{name}_Y`, `{name}_Yh` unless `outputs` names them."""
    from onnx import helper, numpy_helper

    spec = random_spec(rng, d_in, hidden, direction=direction)
    layer = spec.layers[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), f"{name}_{k}")
             for k, a in (("W", layer.w), ("R", layer.r), ("B", layer.b))]
    node = helper.make_node("GRU", [x, f"{name}_W", f"{name}_R", f"{name}_B", lengths, state],
                            outputs or [f"{name}_Y", f"{name}_Yh"], name=name,
                            hidden_size=hidden, linear_before_reset=1, direction=direction)
    return node, inits


def graph_bytes(nodes, inputs, outputs, initializers, opset=14) -> bytes:
    """A serialized model of one graph (IR version 8, which every onnxruntime here reads)."""
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8).SerializeToString()


def constant(name, values, dtype=np.int64):
    """An initializer `name` holding `values`."""
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype), name)


def value(name, shape=None, elem=1):
    """A graph input or output of element type `elem` (1: float) and `shape` (None: unknown)."""
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def onnxruntime_run(proto, feeds) -> list:
    """onnxruntime's outputs for `feeds` on a serialized model (its error logs silenced: the
    tests that call this expect some refusals)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto, options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def same_as_onnxruntime(proto, feeds, **session_options) -> None:
    """fastgru.InferenceSession(proto, **session_options) gives onnxruntime's outputs: the same
    shapes and dtypes, values within the float32 tolerance."""
    import fastgru
    from fastgru.testing.asserts import assert_close

    theirs = onnxruntime_run(proto, feeds)
    ours = fastgru.InferenceSession(proto, **session_options).run(None, feeds)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a, b, "float32")
