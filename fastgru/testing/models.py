"""GRU models for tests, tools and benchmarks: random weights as a GRUSpec, the same spec as a
one-node ONNX model, and onnxruntime's answer on it.

Shapes follow the ONNX GRU: per layer W (dirs, 3H, D_in), R (dirs, 3H, H), B (dirs, 6H), gates
(z, r, n); inputs time-major x (T, B, D), states (dirs, B, H). onnx_gru_model and run_onnxruntime
need the test extra (onnx, onnxruntime).
"""

from __future__ import annotations

import numpy as np

from fastgru import GRUSpec, LayerWeights
from fastgru.benchmark import onnxruntime_session
from fastgru.loaders.onnx_export import IR_VERSION

__all__ = ["random_spec", "spec_layers", "onnx_gru_model", "run_onnxruntime"]


def random_spec(rng, input_size, hidden_size, num_layers=1, direction="forward",
                linear_before_reset=True, bias=True, clip=None, scale=0.5) -> GRUSpec:
    """Random weights in the canonical (ONNX) layout: scale * standard normal, per layer
    W (dirs, 3H, D_in), R (dirs, 3H, H), B (dirs, 6H) (zeros when bias is False)."""
    dirs = 2 if direction == "bidirectional" else 1
    H = hidden_size
    layers = []
    for k in range(num_layers):
        d_in = input_size if k == 0 else dirs * H
        b = scale * rng.standard_normal((dirs, 6 * H)) if bias else np.zeros((dirs, 6 * H))
        layers.append(LayerWeights(w=scale * rng.standard_normal((dirs, 3 * H, d_in)),
                                   r=scale * rng.standard_normal((dirs, 3 * H, H)), b=b))
    return GRUSpec(tuple(layers), direction=direction,
                   linear_before_reset=linear_before_reset, clip=clip)


def spec_layers(spec: GRUSpec):
    """The spec's weights as the reference GRU takes them: [(W, R, B), ...]."""
    return [(layer.w, layer.r, layer.b) for layer in spec.layers]


def onnx_gru_model(spec: GRUSpec, dtype=np.float32, layout: int = 0, opset: int = 14):
    """A one-node ONNX model of a one-layer spec, built directly with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    (layer,) = spec.layers
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    attrs = dict(hidden_size=spec.hidden_size, direction=spec.direction,
                 linear_before_reset=int(spec.linear_before_reset))
    if spec.clip is not None:
        attrs["clip"] = float(spec.clip)
    if layout:
        attrs["layout"] = layout
    node = helper.make_node("GRU", ["X", "W", "R", "B", "sequence_lens", "initial_h"],
                            ["Y", "Y_h"], name="gru", **attrs)
    inits = [numpy_helper.from_array(np.asarray(a, dtype), n)
             for n, a in (("W", layer.w), ("R", layer.r), ("B", layer.b))]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", elem, ["T", "B", "D"]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("initial_h", elem, ["dirs", "B", "H"])],
        [helper.make_tensor_value_info("Y", elem, ["T", "dirs", "B", "H"]),
         helper.make_tensor_value_info("Y_h", elem, ["dirs", "B", "H"])],
        inits)
    # fastgru's export's IR version, or the oldest the opset allows: not the onnx package's
    # newest, which an older onnxruntime refuses (found on a machine with onnxruntime 1.30,
    # which reads up to 13, beside an onnx that writes 14)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets,
                             ir_version=max(IR_VERSION, helper.find_min_ir_version_for(opsets)))


def run_onnxruntime(spec: GRUSpec, x, lengths=None, h0=None, threads=1):
    """onnxruntime's CPU GRU on a one-layer spec: Y (T, dirs, B, H), Y_h (dirs, B, H).

    x is time-major (T, B, D); lengths (B,) and h0 (dirs, B, H) default to full length, zeros.
    """
    T, B = x.shape[:2]
    session = onnxruntime_session(onnx_gru_model(spec).SerializeToString(), threads)
    shape = (spec.num_directions, B, spec.hidden_size)
    feeds = {"X": np.asarray(x, np.float32),
             "sequence_lens": np.asarray(np.full(B, T) if lengths is None else lengths, np.int32),
             "initial_h": np.asarray(np.zeros(shape) if h0 is None else h0, np.float32)}
    return session.run(None, feeds)
