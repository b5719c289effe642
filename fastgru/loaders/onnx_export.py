"""A GRU stack to an ONNX graph that onnxruntime runs with fastgru's results.

One GRU node per layer (layout 0, as onnxruntime requires) with Transpose(0, 2, 1, 3) + Reshape
between layers, the shape torch.onnx.export writes, so fastgru reads its own export back.
"""

from __future__ import annotations

import numpy as np

from fastgru._weights import GRUSpec

OPSET = 14
# The IR version opset 14 needs, not the onnx package's newest: an older onnxruntime refuses a
# model whose IR version is newer than it knows (onnxruntime 1.30 reads up to 13; onnx 1.23
# writes 14 by default), whatever the model uses.
IR_VERSION = 7


def spec_to_onnx(spec: GRUSpec, *, batch_first: bool, dtype: np.dtype, state_inputs: bool):
    """ModelProto with input X and outputs Y (torch layout) and Y_h (layers*dirs, B, H).

    With state_inputs, the graph also takes initial_h (layers*dirs, B, H) and sequence_lens (B,).
    Without, a stored initial state becomes each layer's initial_h: a constant (dirs, 1, H)
    expanded to the batch of X (onnxruntime wants initial_h's batch to match X's).
    """
    from onnx import TensorProto, helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dirs, H, L = spec.num_directions, spec.hidden_size, len(spec.layers)
    T, B = ("B", "T") if batch_first else ("T", "B")
    nodes = []
    inits = [numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merge_directions")]
    inputs = [helper.make_tensor_value_info("X", elem, [T, B, spec.input_size])]
    if state_inputs:
        inputs += [helper.make_tensor_value_info("initial_h", elem, [L * dirs, "B", H]),
                   helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"])]
    current = "X"
    stored = spec.initial_state is not None and not state_inputs
    if stored:  # the shape (dirs, B, H) each layer's stored state is expanded to
        batch_axis = 0 if batch_first else 1
        inits += [numpy_helper.from_array(np.array([batch_axis], np.int64), "batch_axis"),
                  numpy_helper.from_array(np.array([dirs], np.int64), "dirs"),
                  numpy_helper.from_array(np.array([H], np.int64), "hidden")]
        nodes += [helper.make_node("Shape", ["X"], ["X_shape"]),
                  helper.make_node("Gather", ["X_shape", "batch_axis"], ["batch"]),
                  helper.make_node("Concat", ["dirs", "batch", "hidden"], ["state_shape"],
                                   axis=0)]
    if batch_first:
        nodes.append(helper.make_node("Transpose", ["X"], ["X_time_major"], perm=[1, 0, 2]))
        current = "X_time_major"
    attrs = dict(hidden_size=H, direction=spec.direction,
                 linear_before_reset=int(spec.linear_before_reset))
    if spec.clip is not None:
        attrs["clip"] = float(spec.clip)
    for k, layer in enumerate(spec.layers):
        for name, value in (("W", layer.w), ("R", layer.r), ("B", layer.b)):
            inits.append(numpy_helper.from_array(value.astype(dtype), f"{name}{k}"))
        h0, lengths = "", ""
        if state_inputs:
            for name, value in ((f"h0_start{k}", k * dirs), (f"h0_end{k}", (k + 1) * dirs)):
                inits.append(numpy_helper.from_array(np.array([value], np.int64), name))
            inits.append(numpy_helper.from_array(np.array([0], np.int64), f"h0_axis{k}"))
            nodes.append(helper.make_node("Slice", ["initial_h", f"h0_start{k}", f"h0_end{k}",
                                                    f"h0_axis{k}"], [f"h0_{k}"]))
            h0, lengths = f"h0_{k}", "sequence_lens"
        elif stored:
            state = spec.initial_state[k * dirs:(k + 1) * dirs, None, :].astype(dtype)
            inits.append(numpy_helper.from_array(state, f"stored_h{k}"))
            nodes.append(helper.make_node("Expand", [f"stored_h{k}", "state_shape"], [f"h0_{k}"]))
            h0 = f"h0_{k}"
        nodes.append(helper.make_node("GRU", [current, f"W{k}", f"R{k}", f"B{k}", lengths, h0],
                                      [f"Y{k}", f"Y_h{k}"], name=f"gru_layer{k}", **attrs))
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"Y{k}_tbdh"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Y{k}_tbdh", "merge_directions"],
                                      [f"layer{k}"]))
        current = f"layer{k}"
    nodes.append(helper.make_node("Transpose", [current], ["Y"], perm=[1, 0, 2]) if batch_first
                 else helper.make_node("Identity", [current], ["Y"]))
    nodes.append(helper.make_node("Concat", [f"Y_h{k}" for k in range(L)], ["Y_h"], axis=0))
    graph = helper.make_graph(
        nodes, "fastgru", inputs,
        [helper.make_tensor_value_info("Y", elem, [T, B, dirs * H]),
         helper.make_tensor_value_info("Y_h", elem, [L * dirs, "B", H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastgru", ir_version=IR_VERSION)
    return model
