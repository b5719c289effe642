"""fastgru.InferenceSession on whole networks exported by torch.onnx.export (both exporters),
against onnxruntime running the same file; and GRU.from_onnx refusing graphs that are more than
a GRU stack."""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import onnx_gru_model, random_spec, spec_layers
from fastgru.testing.reference import reference_gru
from fastgru.testing.torch_models import (BidirectionalBatchFirst, EncoderDecoder, MaskNet,
                                          StreamingNet, export)
from fastgru.errors import FormatError


class LastStateOnly(torch.nn.Module):
    """Only Y_h is used: a classifier on the final state."""

    def __init__(self, features=5, hidden=14):
        super().__init__()
        self.gru = torch.nn.GRU(features, hidden)
        self.out = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return torch.softmax(self.out(self.gru(x)[1][0]), -1)


def compare(path, feeds, threads=1):
    """Every output of fastgru's session against onnxruntime's on the same file."""
    ours = fastgru.InferenceSession(path, threads=threads)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in ours.get_inputs()] == \
        [(i.name, i.type) for i in theirs.get_inputs()]
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    for a, b, meta in zip(ours.run(None, feeds), theirs.run(None, feeds), theirs.get_outputs(),
                          strict=True):
        assert_close(a, b, "float32", meta.name)
    assert any(stage[0] == "gru" for stage in ours._stages)
    return ours


@pytest.fixture(params=[False, True], ids=["legacy-exporter", "dynamo-exporter"])
def dynamo(request):
    return request.param


def test_mask_network(rng, tmp_path, dynamo):
    torch.manual_seed(1)
    x = rng.standard_normal((2, 30, 16)).astype(np.float32)
    path = export(MaskNet(), (torch.as_tensor(x),), tmp_path / "mask.onnx",
                  (["x"], ["mask"]), dynamo)
    session = compare(path, {"x": x})
    (step,) = [stage[1] for stage in session._stages if stage[0] == "gru"]
    assert step.model.num_layers == 2  # the two layers run as one fastgru stack


def test_encoder_decoder(rng, tmp_path, dynamo):
    torch.manual_seed(2)
    source = rng.standard_normal((12, 3, 8)).astype(np.float32)
    target = rng.standard_normal((7, 3, 8)).astype(np.float32)
    path = export(EncoderDecoder(), (torch.as_tensor(source), torch.as_tensor(target)),
                  tmp_path / "seq2seq.onnx", (["source", "target"], ["logits"]), dynamo)
    compare(path, {"source": source, "target": target})


def test_streaming_states_through_500_frames(rng, tmp_path):
    torch.manual_seed(3)
    frame = np.zeros((1, 2, 10), np.float32)
    state = np.zeros((2, 2, 20), np.float32)
    path = export(StreamingNet(), (torch.as_tensor(frame), torch.as_tensor(state)),
                  tmp_path / "stream.onnx", (["frame", "state_in"], ["out", "state_out"]),
                  False)
    ours = fastgru.InferenceSession(path, threads=1)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    mine = peer = state
    for _ in range(500):
        frame = rng.standard_normal((1, 2, 10)).astype(np.float32)
        out, mine = ours.run(None, {"frame": frame, "state_in": mine})
        expected, peer = theirs.run(None, {"frame": frame, "state_in": peer})
        assert_close(out, expected, "float32", "out")
    assert_close(mine, peer, "float32", "state after 500 frames")


def test_bidirectional_batch_first(rng, tmp_path, dynamo):
    torch.manual_seed(4)
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    path = export(BidirectionalBatchFirst(), (torch.as_tensor(x),), tmp_path / "bi.onnx",
                  (["x"], ["y", "h"]), dynamo)
    compare(path, {"x": x}, threads=2)


def test_only_the_final_state_is_used(rng, tmp_path, dynamo):
    torch.manual_seed(5)
    x = rng.standard_normal((11, 4, 5)).astype(np.float32)
    path = export(LastStateOnly(), (torch.as_tensor(x),), tmp_path / "last.onnx",
                  (["x"], ["p"]), dynamo)
    compare(path, {"x": x})


def _one_gru_graph(rng, extra_nodes, x_name="X", inputs=None, outputs=("Y", "Y_h"),
                   gru_inputs=None, initializers=()):
    """A graph around one GRU node (D=3, H=4) built by hand."""
    spec = random_spec(rng, 3, 4, linear_before_reset=False)
    base = onnx_gru_model(spec)
    layer = spec.layers[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W", layer.w), ("R", layer.r), ("B", layer.b))]
    gru = helper.make_node("GRU", gru_inputs or [x_name, "W", "R", "B"], ["Y", "Y_h"],
                           name="gru", hidden_size=4)
    graph = helper.make_graph(
        [*extra_nodes, gru], "g",
        inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits + list(initializers))
    return helper.make_model(graph, opset_imports=base.opset_import), spec


def test_identity_cast_plumbing_and_constant_state(rng):
    """X reaches the GRU through Identity and Cast; initial_h and sequence_lens are constants,
    which the session must honour."""
    h0 = numpy_helper.from_array(rng.standard_normal((1, 2, 4)).astype(np.float32), "h0")
    lengths = numpy_helper.from_array(np.array([5, 2], np.int32), "lengths")
    model, spec = _one_gru_graph(
        rng, [helper.make_node("Identity", ["X"], ["x1"]),
              helper.make_node("Cast", ["x1"], ["x2"], to=TensorProto.FLOAT)],
        gru_inputs=["x2", "W", "R", "B", "lengths", "h0"], initializers=[h0, lengths])
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    path = model.SerializeToString()
    ours = fastgru.InferenceSession(path).run(None, {"X": x})
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b, "float32")
    # the constant state matters: the same GRU without it gives other results
    plain = fastgru.GRU(spec)(x)[1]
    assert np.abs(plain - ours[1]).max() > 1e-3


def test_bad_graphs_get_format_errors(rng):
    cycle, _ = _one_gru_graph(rng, [helper.make_node("Identity", ["b"], ["a"]),
                                    helper.make_node("Identity", ["a"], ["b"])], x_name="a")
    with pytest.raises(FormatError, match="cycle"):
        fastgru.InferenceSession(cycle)
    with pytest.raises(FormatError, match="cycle"):
        fastgru.GRU.from_onnx(cycle)
    missing, _ = _one_gru_graph(rng, [], x_name="nowhere")
    with pytest.raises(FormatError, match="nowhere"):
        fastgru.InferenceSession(missing)
    weights_from_input, _ = _one_gru_graph(
        rng, [helper.make_node("Identity", ["X"], ["R_live"])],
        gru_inputs=["X", "W", "R_live", "B"])
    with pytest.raises(FormatError, match=r"input R \('R_live'\) must be a constant"):
        fastgru.GRU.from_onnx(weights_from_input)
    # the session leaves such a node to onnxruntime and says why (it never refuses a graph
    # onnxruntime runs: tests/test_onnx_structure.py runs one)
    assert any("'gru' runs in onnxruntime, not fastgru: GRU node 'gru': input R ('R_live') must "
               "be a constant" in line
               for line in fastgru.InferenceSession(weights_from_input).describe())
    session = fastgru.InferenceSession(_one_gru_graph(rng, [])[0])
    with pytest.raises(ValueError, match=r"the inputs are \['X'\]; missing \['X'\], unknown \['x'\]"):
        session.run(None, {"x": np.zeros((2, 1, 3), np.float32)})
    with pytest.raises(ValueError, match=r"unknown output names \['Z'\]"):
        session.run(["Z"], {"X": np.zeros((2, 1, 3), np.float32)})


def test_from_onnx_refuses_more_than_a_stack(rng):
    """Operators around the GRU are never dropped silently: refused by name, pointing to
    InferenceSession and node=."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    scaled, _ = _one_gru_graph(rng, [], outputs=("Y2", "Y_h"), initializers=[two])
    scaled.graph.node.append(helper.make_node("Mul", ["Y", "two"], ["Y2"], name="scale"))
    with pytest.raises(FormatError, match=r"node 'scale' \(Mul\) computes something .*"
                                          r"fastgru.InferenceSession runs whole graphs, and node="):
        fastgru.GRU.from_onnx(scaled)
    assert fastgru.GRU.from_onnx(scaled, node="gru").hidden_size == 4  # node= still reads it

    # a Reshape in front of the GRU that provably keeps (T, B, 3) for every T and B is read;
    # one whose fixed target holds for one length only is refused
    same = numpy_helper.from_array(np.array([0, 0, 3], np.int64), "shape")
    kept, spec = _one_gru_graph(rng, [helper.make_node("Reshape", ["X", "shape"], ["x1"],
                                                       name="front")],
                                x_name="x1", initializers=[same], outputs=("Y",))
    x = rng.standard_normal((5, 2, 3))
    y, _ = fastgru.GRU.from_onnx(kept)(x)
    y_ref, _ = reference_gru(x, spec_layers(spec), linear_before_reset=False)
    assert_close(y, y_ref, "float32", "y")  # the file stores the weights in float32
    fixed = numpy_helper.from_array(np.array([5, 2, 3], np.int64), "shape")
    reshaped, _ = _one_gru_graph(rng, [helper.make_node("Reshape", ["X", "shape"], ["x1"],
                                                        name="front")],
                                 x_name="x1", initializers=[fixed])
    with pytest.raises(FormatError, match=r"that do not form one stack; fastgru.InferenceSession"):
        fastgru.GRU.from_onnx(reshaped)

    h0 = numpy_helper.from_array(np.ones((1, 2, 4), np.float32), "h0")
    per_row_state, _ = _one_gru_graph(rng, [], gru_inputs=["X", "W", "R", "B", "", "h0"],
                                      initializers=[h0])
    with pytest.raises(FormatError, match=r"its initial_h is a constant of shape \[1, 2, 4\]; a "
                                          r"stored initial state must be \(1, 1, 4\)"):
        fastgru.GRU.from_onnx(per_row_state)
    lengths = numpy_helper.from_array(np.array([3], np.int32), "lengths")
    constant_lengths, _ = _one_gru_graph(rng, [], gru_inputs=["X", "W", "R", "B", "lengths"],
                                         initializers=[lengths])
    with pytest.raises(FormatError, match="its sequence_lens is a constant"):
        fastgru.GRU.from_onnx(constant_lengths)


@pytest.mark.slow
@pytest.mark.parametrize("hidden_size", [256, 512])
def test_default_exporter_at_realistic_sizes(rng, tmp_path, hidden_size):
    """torch.onnx.export's default (dynamo) exporter writes the weights of H >= 64 as
    Slice/Concat of the stored ones: folded at load, by from_onnx and by the session."""
    torch.manual_seed(6)
    module = torch.nn.GRU(32, hidden_size, 2, batch_first=True).eval()
    x = rng.standard_normal((2, 20, 32)).astype(np.float32)
    path = export(module, (torch.as_tensor(x),), tmp_path / "gru.onnx", (["x"], ["y", "h"]),
                  True)
    assert "Slice" in {n.op_type for n in onnx.load(path, load_external_data=False).graph.node}
    model = fastgru.load(path)
    with torch.no_grad():
        y_t, h_t = module(torch.as_tensor(x))
    y, h_n = model(x)
    assert_close(y, y_t.numpy(), "float32", "y")
    assert_close(h_n, h_t.numpy(), "float32", "h_n")
    compare(path, {"x": x})


def test_plumbing_that_is_not_a_stack_is_never_fused(rng):
    """Between two GRUs, a Reshape that reinterprets (T, 1, B, H) as (B, T, H) looks like the
    exporters' plumbing; running it as one stack would be silently wrong. from_onnx refuses
    it, and the session runs the layers apart, matching onnxruntime."""
    first, second = random_spec(rng, 3, 4), random_spec(rng, 4, 4)
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), f"{n}{k}")
             for k, spec in enumerate((first, second)) for n, a in
             (("W", spec.layers[0].w), ("R", spec.layers[0].r), ("B", spec.layers[0].b))]
    inits.append(numpy_helper.from_array(np.array([2, 4, 4], np.int64), "shape"))
    graph = helper.make_graph(
        [helper.make_node("GRU", ["X", "W0", "R0", "B0"], ["Y0"], hidden_size=4,
                          linear_before_reset=1),
         helper.make_node("Reshape", ["Y0", "shape"], ["swapped"]),
         helper.make_node("GRU", ["swapped", "W1", "R1", "B1"], ["Y1"], hidden_size=4,
                          linear_before_reset=1)],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 2, 3])],
        [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(FormatError, match="do not pass the sequence on as a stacked GRU reads it"):
        fastgru.GRU.from_onnx(model)
    session = fastgru.InferenceSession(model)
    assert sum(stage[0] == "gru" for stage in session._stages) == 2  # not fused
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert_close(session.run(None, {"X": x})[0], expected, "float32", "Y1")
