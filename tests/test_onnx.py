"""fastgru against onnxruntime running the same ONNX GRU node, loaded through GRU.from_onnx."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastgru
from fastgru.errors import FormatError
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import onnx_gru_model, random_spec, run_onnxruntime, spec_layers
from fastgru.testing.reference import reference_gru


def torch_layout(Y):
    """ONNX Y (T, dirs, B, H) -> (T, B, dirs*H), the layout fastgru returns."""
    T, dirs, B, H = Y.shape
    return Y.transpose(0, 2, 1, 3).reshape(T, B, dirs * H)


CASES = list(itertools.product(["forward", "reverse", "bidirectional"], [True, False],
                               [True, False], [None, 1.5]))


@pytest.mark.parametrize("direction, lbr, bias, clip", CASES)
def test_matches_onnxruntime(rng, direction, lbr, bias, clip):
    spec = random_spec(rng, 6, 9, 1, direction, lbr, bias, clip=clip)
    model = fastgru.GRU.from_onnx(onnx_gru_model(spec))
    assert (model.direction, model.linear_before_reset, model.clip) == (direction, lbr, clip)
    dirs = spec.num_directions
    x = 2 * rng.standard_normal((8, 5, 6))
    h0 = rng.standard_normal((dirs, 5, 9))
    lengths = np.array([8, 1, 4, 7, 8])
    for kwargs in ({}, {"h0": h0, "lengths": lengths}):
        y, h_n = model(x, kwargs.get("h0"), lengths=kwargs.get("lengths"))
        Y, Y_h = run_onnxruntime(spec, x, kwargs.get("lengths"), kwargs.get("h0"))
        assert_close(y, torch_layout(Y), "float32", f"y {sorted(kwargs)}")
        assert_close(h_n, Y_h, "float32", f"h_n {sorted(kwargs)}")


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 14, 17, 19, 21, 22])
def test_every_opset_loads(rng, opset):
    spec = random_spec(rng, 3, 4, 1, "bidirectional", False)
    proto = onnx_gru_model(spec, opset=opset, dtype=np.float64)
    onnx.checker.check_model(proto)
    x = rng.standard_normal((5, 2, 3))
    y, h_n = fastgru.GRU.from_onnx(proto.SerializeToString(), dtype="float64")(x)
    y_ref, h_ref = reference_gru(x, spec_layers(spec), direction="bidirectional",
                                 linear_before_reset=False)
    assert_close(y, y_ref, "float64", "y")
    assert_close(h_n, h_ref, "float64", "h_n")


def test_layout_1_means_batch_first(rng):
    # onnxruntime rejects layout=1, so this compares with the reference instead.
    spec = random_spec(rng, 3, 4, 1, "forward")
    model = fastgru.GRU.from_onnx(onnx_gru_model(spec, np.float64, layout=1), dtype="float64")
    assert model.batch_first
    x = rng.standard_normal((5, 2, 3))
    y, _ = model(x.transpose(1, 0, 2))
    y_ref, _ = reference_gru(x, spec_layers(spec))
    assert_close(y, y_ref.transpose(1, 0, 2), "float64", "y")
    assert not fastgru.GRU.from_onnx(onnx_gru_model(spec, layout=1), batch_first=False).batch_first


def test_path_and_constant_node_weights(rng, tmp_path):
    spec = random_spec(rng, 3, 4, 1, "forward")
    proto = onnx_gru_model(spec)
    # move W into a Constant node, as some exporters write it
    w = [t for t in proto.graph.initializer if t.name == "W"][0]
    proto.graph.initializer.remove(w)
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=w))
    path = tmp_path / "gru.onnx"
    onnx.save(proto, path)
    x = rng.standard_normal((4, 2, 3))
    y, _ = fastgru.GRU.from_onnx(path)(x)
    Y, _ = run_onnxruntime(spec, x)
    assert_close(y, torch_layout(Y), "float32", "y")


def test_node_picked_by_name(rng):
    spec_a, spec_b = random_spec(rng, 3, 4), random_spec(rng, 3, 5)
    a, b = onnx_gru_model(spec_a), onnx_gru_model(spec_b)
    for proto, suffix in ((a, "a"), (b, "b")):
        for n in proto.graph.node:
            n.name = f"gru_{suffix}"
            n.input[:] = [f"{i}_{suffix}" if i else "" for i in n.input]
            n.output[:] = [f"{o}_{suffix}" for o in n.output]
        for t in list(proto.graph.initializer) + list(proto.graph.input) + list(proto.graph.output):
            t.name = f"{t.name}_{suffix}"
    a.graph.node.extend(b.graph.node)
    a.graph.initializer.extend(b.graph.initializer)
    a.graph.input.extend(b.graph.input)
    a.graph.output.extend(b.graph.output)
    with pytest.raises(ValueError, match=r"2 GRU nodes \['gru_a', 'gru_b'\] that do not form one "
                                         r"stack; fastgru.InferenceSession runs whole graphs, and node= reads one"):
        fastgru.GRU.from_onnx(a)
    assert fastgru.GRU.from_onnx(a, node="gru_b").hidden_size == 5
    with pytest.raises(ValueError, match=r"no GRU node named 'gru_c'"):
        fastgru.GRU.from_onnx(a, node="gru_c")


def _with_attr(proto, **attrs):
    node = proto.graph.node[0]
    for name, value in attrs.items():
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))
    return proto


def test_bad_onnx_models(rng, tmp_path):
    spec = random_spec(rng, 3, 4)
    with pytest.raises(ValueError, match=r"only the default activations .*got \['Relu'\]"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), activations=["Relu", "Tanh"]))
    # the defaults spelled out are fine
    fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), activations=["Sigmoid", "Tanh"]))
    with pytest.raises(ValueError, match=r"hidden_size=5 but R has shape \(1, 12, 4\)"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), hidden_size=5))
    with pytest.raises(ValueError, match="direction must be one of"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), direction="sideways"))
    with pytest.raises(ValueError, match=r"R must have shape \(2, 3\*H, H\)"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), direction="bidirectional"))
    with pytest.raises(ValueError, match="opset 6 is not supported"):
        fastgru.GRU.from_onnx(onnx_gru_model(spec, opset=6))
    with pytest.raises(ValueError, match="layout must be 0 or 1, got 2"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), layout=2))
    with pytest.raises(ValueError, match="clip must be a positive number"):
        fastgru.GRU.from_onnx(_with_attr(onnx_gru_model(spec), clip=-1.0))

    proto = onnx_gru_model(spec)
    proto.graph.initializer.pop()  # B becomes a run-time input
    with pytest.raises(ValueError, match=r"input B \('B'\) must be a constant \(an initializer, a Constant, or "
                                              r"computed from those\), but it is computed or fed"):
        fastgru.GRU.from_onnx(proto)
    proto = onnx_gru_model(spec)
    proto.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.zeros((1, 23), np.float32), "B"))
    with pytest.raises(ValueError, match=r"B must have shape \(1, 24\), got \(1, 23\)"):
        fastgru.GRU.from_onnx(proto)
    proto = onnx_gru_model(spec)
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros((1, 12, 4), np.int32), "R"))
    with pytest.raises(FormatError, match=r"R \('R'\) must be floating point, got INT32"):
        fastgru.GRU.from_onnx(proto)

    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match=r"no GRU node \(its op types: \['Relu'\]\)"):
        fastgru.GRU.from_onnx(helper.make_model(relu))
    with pytest.raises(ValueError, match="not an ONNX model"):
        fastgru.GRU.from_onnx(b"\x00\xffnot a protobuf at all")
    with pytest.raises(FileNotFoundError, match="no ONNX file at"):
        fastgru.GRU.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path, bytes or onnx.ModelProto, got int"):
        fastgru.GRU.from_onnx(42)


@pytest.mark.parametrize("direction, lbr", list(itertools.product(
    ["forward", "reverse", "bidirectional"], [True, False])))
@pytest.mark.parametrize("num_layers", [2, 3])
def test_stacks_match_onnxruntime_layer_by_layer(rng, num_layers, direction, lbr):
    """A stack against onnxruntime running one GRU node per layer, each fed the layer below."""
    spec = random_spec(rng, 5, 6, num_layers, direction, lbr)
    dirs = spec.num_directions
    x = rng.standard_normal((7, 4, 5))
    h0 = rng.standard_normal((num_layers * dirs, 4, 6))
    lengths = np.array([7, 3, 1, 6])
    y, h_n = fastgru.GRU(spec)(x, h0, lengths=lengths)
    layer_in, h_ort = x, []
    for k, layer in enumerate(spec.layers):
        one = fastgru.GRUSpec((layer,), direction, lbr)
        Y, Y_h = run_onnxruntime(one, layer_in, lengths, h0[k * dirs:(k + 1) * dirs])
        layer_in = torch_layout(Y)
        h_ort.append(Y_h)
    assert_close(y, layer_in, "float32", "y")
    assert_close(h_n, np.concatenate(h_ort), "float32", "h_n")
