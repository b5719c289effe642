"""Graphs that are legal but not what they look like: fastgru.load must refuse or compute exactly
what onnxruntime computes, and InferenceSession must run them as onnxruntime does (issue 28)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.graphs import constant as const, graph_bytes as model
from fastgru.testing.graphs import gru_node as gru, onnxruntime_run, same_as_onnxruntime
from fastgru.testing.graphs import value as out
from fastgru.testing.models import random_spec
from fastgru.errors import FormatError

F = TensorProto.FLOAT


def encoder_decoder(rng):
    """The decoder reads the encoder's Y (through a Squeeze) and starts from its Y_h."""
    enc, enc_w = gru(rng, "enc", "X", 3, 4)
    dec, dec_w = gru(rng, "dec", "seq", 4, 4, state="enc_Yh")
    squeeze = helper.make_node("Squeeze", ["enc_Y", "one"], ["seq"])
    return model([enc, squeeze, dec], [out("X", ["T", "B", 3])], [out("dec_Y")],
                 enc_w + dec_w + [const("one", [1])])


def test_encoder_decoder_is_refused_by_load_and_run_by_the_session(rng):
    proto = encoder_decoder(rng)
    with pytest.raises(FormatError, match=r"'dec'.*initial_h is computed by the graph.*"
                                          r"fastgru.InferenceSession"):
        fastgru.GRU.from_onnx(proto)
    for T, B in ((5, 2), (1, 3)):
        same_as_onnxruntime(proto, {"X": rng.standard_normal((T, B, 3)).astype(np.float32)})


def fixed_reshape_between_layers(rng, x_shape):
    """Layer 1 reads layer 0's Y through a Reshape to the fixed shape (3, 2, 4): at T=3, B=2
    (the sizes a trial run would pick) it passes the sequence on, at other sizes it does not."""
    first, w0 = gru(rng, "g0", "X", 3, 4)
    second, w1 = gru(rng, "g1", "seq", 4, 4)
    reshape = helper.make_node("Reshape", ["g0_Y", "target"], ["seq"])
    return model([first, reshape, second], [out("X", x_shape)], [out("g1_Y")],
                 w0 + w1 + [const("target", [3, 2, 4])])


def test_fixed_reshape_is_a_stack_only_where_the_graph_fixes_the_sizes(rng):
    with pytest.raises(FormatError, match="do not pass the sequence on"):
        fastgru.GRU.from_onnx(fixed_reshape_between_layers(rng, ["T", "B", 3]))
    fixed = fixed_reshape_between_layers(rng, [3, 2, 3])
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    m = fastgru.GRU.from_onnx(fixed)
    assert m.num_layers == 2
    (Y,) = onnxruntime_run(fixed, {"X": x})
    assert_close(m(x)[0], Y[:, 0], "float32")
    same_as_onnxruntime(fixed, {"X": x})


def test_fixed_reshape_between_layers_runs_at_other_lengths_as_onnxruntime(rng):
    """The graph is valid at other lengths too ((T, 1, B, 4) -> (3, 2, 4) whenever T*B = 6):
    the session must not take the Reshape for stack plumbing."""
    proto = fixed_reshape_between_layers(rng, ["T", "B", 3])
    same_as_onnxruntime(proto, {"X": rng.standard_normal((6, 1, 3)).astype(np.float32)})
    same_as_onnxruntime(proto, {"X": rng.standard_normal((3, 2, 3)).astype(np.float32)})


def test_chained_layers_of_other_hidden_sizes(rng):
    first, w0 = gru(rng, "g0", "X", 3, 4)
    second, w1 = gru(rng, "g1", "seq", 4, 6)
    squeeze = helper.make_node("Squeeze", ["g0_Y", "one"], ["seq"])
    proto = model([first, squeeze, second], [out("X", ["T", "B", 3])], [out("g1_Y")],
                  w0 + w1 + [const("one", [1])])
    with pytest.raises(FormatError, match=r"hidden size 6 against 4"):
        fastgru.GRU.from_onnx(proto)
    same_as_onnxruntime(proto, {"X": rng.standard_normal((4, 2, 3)).astype(np.float32)})


def test_x_and_an_output_that_are_initializers(rng):
    node, inits = gru(rng, "g", "X0", 3, 4)
    x0 = numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "X0")
    scale = const("scale", [2.0], np.float32)
    proto = model([node, helper.make_node("Mul", ["g_Y", "scale"], ["Y2"])],
                  [out("unused", [1])], [out("Y2"), out("scale")], inits + [x0, scale])
    same_as_onnxruntime(proto, {"unused": np.zeros(1, np.float32)})


def state_input_graph(rng):
    node, inits = gru(rng, "g", "X", 3, 4, state="h0")
    return model([node], [out("X", ["T", "B", 3]), out("h0", [1, "b", 4])], [out("g_Y")],
                 inits)


def test_initial_h_of_another_batch_is_refused_as_onnxruntime_does(rng):
    proto = state_input_graph(rng)
    session = fastgru.InferenceSession(proto)
    x = rng.standard_normal((3, 4, 3)).astype(np.float32)
    for batch in (1, 3):
        h0 = rng.standard_normal((1, batch, 4)).astype(np.float32)
        with pytest.raises(Exception, match="initial_h|dimension|shape"):  # onnxruntime too
            onnxruntime_run(proto, {"X": x, "h0": h0})
        with pytest.raises(ValueError, match=r"GRU node 'g': initial_h 'h0' must have shape "
                                             r"\(1, 4, 4\) for X of shape \(3, 4, 3\), got"):
            session.run(None, {"X": x, "h0": h0})


def test_value_info_on_an_intermediate_is_not_a_feed_constraint(rng):
    """A fixed value_info on the GRU's Y (written at export for one size) must not make the
    session refuse other valid sizes."""
    node, inits = gru(rng, "g", "X", 3, 4)
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["g_Y"], ["act"]),
         helper.make_node("Sigmoid", ["act"], ["out"])], "g",
        [out("X", ["T", "B", 3])], [out("out")], inits,
        value_info=[out("g_Y", [5, 1, 2, 4]), out("act", [5, 1, 2, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                              ir_version=8).SerializeToString()
    same_as_onnxruntime(proto, {"X": rng.standard_normal((3, 4, 3)).astype(np.float32)})


def test_node_keeps_its_constant_initial_state(rng):
    node, inits = gru(rng, "g", "X", 3, 4, state="h0")
    h0 = rng.standard_normal((1, 1, 4)).astype(np.float32)
    proto = model([node], [out("X", ["T", 1, 3])], [out("g_Y")],
                  inits + [numpy_helper.from_array(h0, "h0")])
    x = rng.standard_normal((5, 1, 3)).astype(np.float32)
    (Y,) = onnxruntime_run(proto, {"X": x})
    for m in (fastgru.GRU.from_onnx(proto, node="g"), fastgru.GRU.from_onnx(proto)):
        np.testing.assert_array_equal(m.initial_state, h0[:, 0])
        assert_close(m(x)[0], Y[:, 0], "float32")


def test_lengths_on_one_layer_only_is_not_a_stack(rng):
    first, w0 = gru(rng, "g0", "X", 3, 4, lengths="lengths")
    second, w1 = gru(rng, "g1", "seq", 4, 4)
    squeeze = helper.make_node("Squeeze", ["g0_Y", "one"], ["seq"])
    proto = model([first, squeeze, second],
                  [out("X", ["T", "B", 3]), out("lengths", ["B"], TensorProto.INT32)],
                  [out("g1_Y")], w0 + w1 + [const("one", [1])])
    with pytest.raises(FormatError, match="do not all read the same graph input as "
                                          "sequence_lens"):
        fastgru.GRU.from_onnx(proto)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    same_as_onnxruntime(proto, {"X": x, "lengths": np.array([4, 2], np.int32)})


def test_a_transpose_perm_of_the_wrong_type_is_a_format_error(rng):
    node, inits = gru(rng, "g", "xt", 3, 4)
    transpose = helper.make_node("Transpose", ["X"], ["xt"])
    transpose.attribute.append(helper.make_attribute("perm", [1.0, 0.0, 2.0]))
    proto = model([transpose, node], [out("X", ["B", "T", 3])], [out("g_Y")], inits)
    with pytest.raises(FormatError):
        fastgru.GRU.from_onnx(proto)


def test_external_data_whose_dims_overflow_is_a_format_error(rng, tmp_path):
    node, inits = gru(rng, "g", "X", 3, 4)
    big = inits[0]
    big.ClearField("raw_data")
    big.data_location = TensorProto.EXTERNAL
    del big.dims[:]
    big.dims.extend([2**40, 2**40, 2**40])
    entry = big.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    path = tmp_path / "m.onnx"
    path.write_bytes(model([node], [out("X", ["T", "B", 3])], [out("g_Y")], inits))
    with pytest.raises(FormatError, match="g_W"):
        fastgru.load(path)


@pytest.mark.parametrize("dynamo, layers, bidirectional, batch_first", [
    (True, 2, False, True),
    (False, 2, True, True),
    pytest.param(True, 3, True, False, marks=pytest.mark.slow),
    pytest.param(True, 1, True, True, marks=pytest.mark.slow),
    pytest.param(False, 3, False, False, marks=pytest.mark.slow)])
def test_exporters_with_dynamic_shapes(rng, tmp_path, dynamo, layers, bidirectional,
                                       batch_first):
    """torch.onnx.export with a dynamic batch (and time, which the default exporter specializes
    for a GRU): the default exporter computes its Reshape targets from Shape at run time. Read
    as a stack, and joined into one fastgru stage, from both exporters (issue 30)."""
    import contextlib
    import io
    import warnings

    import torch

    torch.manual_seed(3)
    module = torch.nn.GRU(5, 8, layers, batch_first=batch_first,
                          bidirectional=bidirectional).eval()
    x = torch.randn((2, 7, 5) if batch_first else (7, 2, 5))
    path = str(tmp_path / "gru.onnx")
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    axes = {0: batch, 1: time} if batch_first else {0: time, 1: batch}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), path, dynamo=True, dynamic_shapes=(axes,),
                              input_names=["x"], output_names=["y", "h"])
        else:
            names = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
            torch.onnx.export(module, (x,), path, dynamo=False, dynamic_axes={"x": names},
                              input_names=["x"], output_names=["y", "h"], opset_version=14)
    m = fastgru.load(path)
    assert (m.num_layers, m.bidirectional, m.batch_first) == (layers, bidirectional, batch_first)
    session = fastgru.InferenceSession(path)
    (step,) = [stage[1] for stage in session._stages if stage[0] == "gru"]
    assert step.model.num_layers == layers
    for batch, steps in ((3, 7), (1, 7)) if dynamo else ((3, 7), (1, 1), (2, 4)):
        # torch.export specializes the GRU's time axis to the example's 7
        x = rng.standard_normal((batch, steps, 5) if batch_first else (steps, batch, 5))
        x = x.astype(np.float32)
        with torch.no_grad():
            y_t, h_t = module(torch.as_tensor(x))
        y, h_n = m(x)
        assert_close(y, y_t.numpy(), "float32", "y")
        assert_close(h_n, h_t.numpy(), "float32", "h_n")
        same_as_onnxruntime(path, {"x": x})


def weights_computed_by(rng, nodes, stored, opset=14):
    """A one-GRU graph (D=3, H=4) whose W is the value `W` computed by `nodes` from `stored`."""
    spec = random_spec(rng, 3, 4)
    layer = spec.layers[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("R", layer.r), ("B", layer.b))] + stored
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=4,
                            linear_before_reset=1)
    return model([*nodes, node], [out("X", ["T", "B", 3])], [out("Y")], inits, opset)


def test_weights_folded_as_onnxruntime_computes_them(rng):
    """Slice with negative steps and ends, Gather with negative indices, Split, Flatten and
    Squeeze between the stored tensor and W: folded at load as onnxruntime computes them."""
    big = rng.standard_normal((2, 14, 3)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["big", "s0", "e0", "a0", "st0"], ["rev"]),
             helper.make_node("Split", ["rev", "sizes"], ["w_a", "w_b"], axis=1),
             helper.make_node("Gather", ["w_a", "last"], ["w_g"], axis=0),
             helper.make_node("Flatten", ["w_g"], ["w_f"], axis=1),
             helper.make_node("Reshape", ["w_f", "shape"], ["W"])]
    stored = [numpy_helper.from_array(big, "big"), const("s0", [-1]),
              const("e0", [-2**62]), const("a0", [1]), const("st0", [-1]),
              const("sizes", [12, 2]), const("last", [-1]), const("shape", [1, 12, 3])]
    proto = weights_computed_by(rng, nodes, stored)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    (Y,) = onnxruntime_run(proto, {"X": x})
    assert_close(fastgru.GRU.from_onnx(proto)(x)[0], Y[:, 0], "float32")


def test_folding_cannot_blow_a_small_file_up(rng):
    """W as a Concat of one stored tensor with itself 2,000 times: refused before the copies are
    made (the file holds 48 kB; the result would be 96 MB)."""
    piece = numpy_helper.from_array(rng.standard_normal((1, 12, 1000)).astype(np.float32), "p")
    nodes = [helper.make_node("Concat", ["p"] * 2000, ["W"], axis=0)]
    proto = weights_computed_by(rng, nodes, [piece])
    with pytest.raises(FormatError, match="would make"):
        fastgru.GRU.from_onnx(proto)


def test_an_input_that_is_also_an_output_keeps_the_inputs_declaration(rng):
    """onnxruntime checks feeds against the input's declaration, not the output's (fuzz
    finding onnx-03)."""
    node, inits = gru(rng, "g", "x1", 3, 2)
    proto = model([helper.make_node("Relu", ["X"], ["x1"]), node],
                  [out("X", ["T", "B", 3])], [out("g_Yh"), out("X", [4, 2, 3])], inits)
    same_as_onnxruntime(proto, {"X": rng.standard_normal((3, 3, 3)).astype(np.float32)})


def test_an_output_declaration_fixes_no_size_for_the_stack_proof(rng):
    """A graph output named like the input and declared (4, 3, 3) must not make the session take
    a Reshape to the fixed (4, 3, 4) for stack plumbing at other sizes (fuzz finding onnx-04)."""
    first, w0 = gru(rng, "g0", "xr", 3, 2, direction="bidirectional")
    second, w1 = gru(rng, "g1", "x1", 4, 2, direction="bidirectional")
    nodes = [helper.make_node("Relu", ["X"], ["xr"]), first,
             helper.make_node("Transpose", ["g0_Y"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "target"], ["x1"]), second]
    proto = model(nodes, [out("X", ["T", "B", 3])], [out("g1_Y"), out("X", [4, 3, 3])],
                  w0 + w1 + [const("target", [4, 3, 4])])
    for shape in ((4, 3, 3), (6, 2, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        theirs = onnxruntime_run(proto, {"X": x})
        ours = fastgru.InferenceSession(proto, plan="staged").run(None, {"X": x})
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b, "float32")


def test_an_initializer_the_caller_may_override(rng):
    """An initializer named like a graph input is a default: onnxruntime takes a feed for it
    (fuzz finding onnx-01), and its value must never be folded into the GRU."""
    node, inits = gru(rng, "g", "X", 3, 2, state="h0")
    h0 = numpy_helper.from_array(np.zeros((1, 2, 2), np.float32), "h0")
    proto = model([node], [out("X", ["T", 2, 3]), out("h0", [1, 2, 2])], [out("g_Yh")],
                  inits + [h0])
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    assert [i.name for i in fastgru.InferenceSession(proto).get_inputs()] == ["X"]
    same_as_onnxruntime(proto, {"X": x})
    same_as_onnxruntime(proto, {"X": x, "h0": rng.standard_normal((1, 2, 2)).astype(np.float32)})


def test_a_constant_zero_state_of_another_batch_is_refused_as_onnxruntime_does(rng):
    """fuzz finding onnx-02: the zeros were dropped before their shape was checked."""
    node, inits = gru(rng, "g", "X", 3, 2, state="h0")
    h0 = numpy_helper.from_array(np.zeros((1, 3, 2), np.float32), "h0")
    proto = model([node], [out("X", ["T", "B", 3])], [out("g_Yh")], inits + [h0])
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    with pytest.raises(Exception, match="initial_h|shape"):
        onnxruntime_run(proto, {"X": x})
    with pytest.raises(ValueError, match="initial_h 'h0' must have shape"):
        fastgru.InferenceSession(proto, plan="staged").run(None, {"X": x})
    same_as_onnxruntime(proto, {"X": rng.standard_normal((2, 3, 3)).astype(np.float32)})


def test_the_session_runs_what_onnxruntime_runs_even_where_fastgru_cannot(rng):
    """GRU nodes fastgru cannot run (weights fed at run time, other activations) are left to
    onnxruntime, never refused (issue 28: the session never refuses a graph onnxruntime runs)."""
    live, inits = gru(rng, "g", "X", 3, 2)
    live.input[2] = "R_fed"
    relu, relu_inits = gru(rng, "h", "X", 3, 2)
    relu.attribute.append(helper.make_attribute("activations", ["Relu", "Tanh"]))
    proto = model([live, relu], [out("X", ["T", "B", 3]), out("R_fed", [1, 6, 2])],
                  [out("g_Y"), out("h_Y")], inits + relu_inits)
    feeds = {"X": rng.standard_normal((4, 2, 3)).astype(np.float32),
             "R_fed": rng.standard_normal((1, 6, 2)).astype(np.float32)}
    session = fastgru.InferenceSession(proto, plan="staged")
    assert sum("runs in onnxruntime, not fastgru" in line for line in session.describe()) == 2
    same_as_onnxruntime(proto, feeds)
