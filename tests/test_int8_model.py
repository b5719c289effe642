"""int8 models (dtype="int8"): every entry point, against the slow float64 reference written from
the equations (fastgru/testing/reference.py) on the dequantized weights, and against
torch's own dynamic quantized GRU for the modules it quantized.

The widened path multiplies float32 activations by the int8 weights widened exactly, so it
matches the reference on the dequantized weights to float32 rounding. The vnni path also
quantizes every vector a weight matrix multiplies (x_t, h, r * h), per row and step, by
int8_pack.py's rule; the reference applies the same rule (`quantized`, written from the rule,
not from the kernel) one step at a time from the model's own float32 state, so that both
quantize the same float32 values.
"""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest
from llvmlite import binding as llvm_binding

import fastgru
from fastgru._weights import Int8Layer, LayerWeights
from fastgru.errors import FormatError
from fastgru.kernels.cpu import INT8_PATHS
from fastgru.testing.models import random_spec, spec_layers
from fastgru.testing.reference import reference_gru
from test_reference import HASWELL_FEATURES, compiled_for


@pytest.fixture(params=INT8_PATHS)
def path(request):
    return request.param


def quantized(v):
    """v's values as the vnni path multiplies them: the float32 row quantized to uint8 with a
    zero point by the rule in int8_pack.py's docstring, then dequantized exactly (float64)."""
    v = np.asarray(v, np.float32)
    if not np.isfinite(v).all():
        return np.full(v.shape, np.nan)
    lo, hi = min(np.float32(0), v.min()), max(np.float32(0), v.max())
    s = np.float32((np.float64(hi) - np.float64(lo)) / 255)
    if not s > 0:
        return np.zeros(v.shape)
    z = np.clip(np.rint(np.float32(-lo) / s), 0, 255)
    codes = np.clip(np.rint(v / s) + np.float32(z), 0, 255)
    return (codes.astype(np.float64) - z) * np.float64(s)


CONFIGS = [dict(num_layers=2), dict(direction="bidirectional"), dict(direction="reverse"),
           dict(linear_before_reset=False), dict(clip=0.7, num_layers=2, direction="bidirectional")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_widened_path_is_the_reference_on_dequantized_weights(rng, config):
    spec = random_spec(rng, 21, 37, **config)
    model = fastgru.GRU(spec, dtype="int8", kernel_path="widen")
    assert model.precision == "int8" and model.dtype == np.float32
    T, B = 9, 5
    x = rng.standard_normal((T, B, 21)).astype(np.float32)
    h0 = rng.standard_normal((model.num_layers * (2 if model.bidirectional else 1), B, 37))
    lengths = np.array([9, 0, 4, 9, 1])
    y, h = model(x, h0.astype(np.float32), lengths=lengths)
    ref_y, ref_h = reference_gru(x, spec_layers(model.spec), direction=spec.direction,
                                 linear_before_reset=spec.linear_before_reset, clip=spec.clip,
                                 h0=h0.astype(np.float32), lengths=lengths)
    np.testing.assert_allclose(y, ref_y, atol=2e-5)
    np.testing.assert_allclose(h, ref_h, atol=2e-5)


@pytest.mark.skipif("vnni" not in INT8_PATHS, reason="the vnni path needs AVX512_VNNI")
@pytest.mark.parametrize("lbr", [True, False])
def test_vnni_steps_are_the_reference_on_quantized_operands(rng, lbr):
    """Each step of a 2-layer stream equals the reference's step from the same float32 state
    with every operand quantized by the documented rule."""
    spec = random_spec(rng, 19, 40, num_layers=2, linear_before_reset=lbr)
    model = fastgru.GRU(spec, dtype="int8", kernel_path="vnni")
    stream = model.stream(3)
    layers = spec_layers(model.spec)
    for t in range(12):
        x = rng.standard_normal((1, 3, 19)).astype(np.float32)
        before = stream.h.copy()
        y = stream.step(x[0])
        ref_y, ref_h = reference_gru(x, layers, linear_before_reset=lbr, h0=before,
                                     operand=quantized)
        np.testing.assert_allclose(y, ref_y[0], atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(stream.h, ref_h, atol=1e-5, err_msg=f"step {t}")


def test_one_row_the_same_bits_anywhere(rng, path):
    """A row's output does not depend on the batch, its position, the thread count or the way
    it is called (whole sequence or stream steps): bit for bit, on each path."""
    import numba

    model = fastgru.GRU(random_spec(rng, 24, 70, num_layers=2), dtype="int8", kernel_path=path)
    x = rng.standard_normal((15, 9, 24)).astype(np.float32)
    y, h = model(x)
    for b in (0, 4, 8):
        np.testing.assert_array_equal(model(x[:, b:b + 1])[0][:, 0], y[:, b])
    stream = model.stream(9)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(15)]), y)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(model(x)[0], y)
    finally:
        numba.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(not all(llvm_binding.get_host_cpu_features().get(f) for f in ("avx2", "fma")),
                    reason="runs code compiled for an AVX2 CPU, so needs one")
def test_avx2_build_runs_int8_models_widened(tmp_path):
    """Compiled for Haswell (no AVX-512, no VNNI) in a fresh process: an int8 model takes the
    widened path and matches the float64 reference on its dequantized weights, a bidirectional
    2-layer model with lengths and without linear_before_reset included."""
    code = """if True:
        import numpy as np, fastgru
        from fastgru.kernels.cpu import INT8_PATHS
        from fastgru.testing.models import random_spec, spec_layers
        from fastgru.testing.reference import reference_gru
        assert INT8_PATHS == ("widen",)
        rng = np.random.default_rng(2)
        for config in (dict(num_layers=2, direction="bidirectional"),
                       dict(linear_before_reset=False)):
            spec = random_spec(rng, 13, 45, **config)
            model = fastgru.GRU(spec, dtype="int8")
            x = rng.standard_normal((9, 6, 13)).astype(np.float32)
            lengths = np.array([9, 3, 0, 9, 1, 5])
            y, h = model(x, lengths=lengths)
            ref_y, ref_h = reference_gru(x, spec_layers(model.spec), direction=spec.direction,
                                         linear_before_reset=spec.linear_before_reset,
                                         lengths=lengths)
            assert np.abs(y - ref_y).max() < 2e-5 and np.abs(h - ref_h).max() < 2e-5
        print("checked")
    """
    assert compiled_for("haswell", HASWELL_FEATURES, code, tmp_path).strip() == "checked"


def test_nan_stays_in_its_row(rng, path):
    model = fastgru.GRU(random_spec(rng, 8, 64), dtype="int8", kernel_path=path)
    x = rng.standard_normal((6, 3, 8)).astype(np.float32)
    x[2, 1, 5] = np.nan
    y = model(x)[0]
    assert np.isnan(y[2:, 1]).all() and np.isfinite(y[:2, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()


def test_saved_pickled_and_loaded_as_they_run(rng, tmp_path):
    model = fastgru.GRU(random_spec(rng, 12, 33, direction="bidirectional"), dtype="int8")
    x = rng.standard_normal((7, 2, 12)).astype(np.float32)
    y = model(x)[0]
    model.save(tmp_path / "m.safetensors")
    for again in (fastgru.load(tmp_path / "m.safetensors"), pickle.loads(pickle.dumps(model))):
        assert again.precision == "int8"
        np.testing.assert_array_equal(again(x)[0], y)
        for a, b in zip(again.spec.layers, model.spec.layers, strict=True):
            np.testing.assert_array_equal(a.int8.w_values, b.int8.w_values)
            np.testing.assert_array_equal(a.int8.r_scales, b.int8.r_scales)


def test_a_damaged_int8_file_is_refused(rng, tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    fastgru.GRU(random_spec(rng, 4, 6), dtype="int8").save(path)
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors["layers.0.w_int8"] = tensors["layers.0.w_int8"].astype(np.int16)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(FormatError, match="must be int8, got int16"):
        fastgru.load(path)
    tensors["layers.0.w_int8"] = tensors["layers.0.w_int8"].astype(np.int8)
    tensors["layers.0.r_scales"] = tensors["layers.0.r_scales"][:, :5]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(FormatError, match="inconsistent fastgru file"):
        fastgru.load(path)


def test_quantization_rule_and_kept_values(rng):
    """dtype="int8" quantizes each output row symmetrically (max|row| / 127); int8 values that
    came with the weights are kept as they are, -128 included, and a float dtype uses their
    dequantized values."""
    spec = random_spec(rng, 5, 4)
    model = fastgru.GRU(spec, dtype="int8")
    w = spec.layers[0].w[0]  # (3H, D)
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    int8 = model.spec.layers[0].int8
    np.testing.assert_array_equal(int8.w_scales[0], scale)
    np.testing.assert_array_equal(int8.w_values[0], np.rint(w / scale[:, None].astype(np.float64)))
    np.testing.assert_array_equal(model.spec.layers[0].w, int8.w_values * int8.w_scales[..., None])

    values = rng.integers(-128, 128, (1, 12, 5)).astype(np.int8)
    values[0, 0, 0] = -128
    kept = Int8Layer(values, np.full((1, 12), 0.01, np.float32),
                     rng.integers(-128, 128, (1, 12, 4)).astype(np.int8),
                     np.full((1, 12), 0.02, np.float32))
    w, r = kept.dequantized()
    layer = LayerWeights(w, r, spec.layers[0].b, kept)
    imported = fastgru.GRU(type(spec)((layer,)))  # int8 by default: the weights came quantized
    assert imported.precision == "int8"
    second = random_spec(rng, 5, 4, num_layers=2).layers[1]  # float weights beside int8 ones
    assert fastgru.GRU(type(spec)((layer, second))).precision == "float32"
    np.testing.assert_array_equal(imported.spec.layers[0].int8.w_values, values)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    floats = fastgru.GRU(type(spec)((layer,)), dtype="float32")
    assert floats.spec.layers[0].int8 is None
    ref = reference_gru(x, spec_layers(floats.spec))[0]
    np.testing.assert_allclose(fastgru.GRU(type(spec)((layer,)), dtype="int8",
                                           kernel_path="widen")(x)[0], ref, atol=2e-5)
    np.testing.assert_allclose(floats(x)[0], ref, atol=2e-5)


def test_int8_layer_shapes_and_scales_are_checked(rng):
    spec = random_spec(rng, 5, 4)
    layer = spec.layers[0]
    good = dict(w_values=np.zeros((1, 12, 5), np.int8), w_scales=np.ones((1, 12), np.float32),
                r_values=np.zeros((1, 12, 4), np.int8), r_scales=np.ones((1, 12), np.float32))
    for change, message in ((dict(w_values=np.zeros((1, 12, 5), np.int16)), "must be int8"),
                            (dict(r_values=np.zeros((1, 12, 3), np.int8)), "must be int8 of shape"),
                            (dict(w_scales=-np.ones((1, 12), np.float32)), "non-negative"),
                            (dict(r_scales=np.full((1, 12), np.nan, np.float32)), "finite")):
        with pytest.raises(ValueError, match=message):
            type(spec)((LayerWeights(layer.w, layer.r, layer.b, Int8Layer(**{**good, **change})),))


def test_the_callers_int8_arrays_stay_theirs(rng):
    """A model copies the int8 values and scales it is given: the caller's arrays stay
    writeable, and writing to them changes neither what the model runs nor what it saves."""
    spec = random_spec(rng, 3, 4)
    given = fastgru.GRU(spec, dtype="int8").spec.layers[0].int8
    mine = Int8Layer(*(np.array(a) for a in (given.w_values, given.w_scales, given.r_values,
                                             given.r_scales)))
    layer = spec.layers[0]
    model = fastgru.GRU(type(spec)((LayerWeights(layer.w, layer.r, layer.b, mine),)))
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    before = model(x)[0]
    assert mine.w_values.flags.writeable and mine.r_scales.flags.writeable
    mine.w_values[...] = 0
    mine.r_scales[...] = 0
    np.testing.assert_array_equal(model(x)[0], before)
    np.testing.assert_array_equal(model.spec.layers[0].int8.w_values, given.w_values)


def test_more_inputs_than_vnni_sums_exactly_take_the_widened_path(rng):
    """vnni sums at most int8_pack.MAX_INPUTS inputs exactly in int32: a wider model runs the
    widened path on every CPU by default, and asking for vnni says which path to take."""
    from fastgru.kernels.int8_pack import MAX_INPUTS

    spec = random_spec(rng, MAX_INPUTS + 1, 2, scale=0.01)
    model = fastgru.GRU(spec, dtype="int8")
    assert model.precision == "int8" and model._packed.kernel_path == "widen"
    x = rng.standard_normal((2, 1, MAX_INPUTS + 1)).astype(np.float32)
    y_ref, _ = reference_gru(x, spec_layers(model.spec))  # its dequantized weights
    np.testing.assert_allclose(model(x)[0], y_ref, atol=1e-4)
    if "vnni" in INT8_PATHS:
        with pytest.raises(ValueError, match="kernel_path='widen'"):
            fastgru.GRU(spec, dtype="int8", kernel_path="vnni")


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("per_row", [False, True])
def test_torch_quantize_dynamic_keeps_its_int8_values(per_row):
    """A GRU quantized by torch's quantize_dynamic loads with its own int8 values and scales;
    its outputs are as close to the float network as torch's int8 outputs are, or closer."""
    torch.manual_seed(3)
    module = torch.nn.GRU(40, 64, num_layers=2, bidirectional=True)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig if per_row else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation of torch.ao.quantization
        quantized_module = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(module), {torch.nn.GRU: qconfig} if per_row else {torch.nn.GRU},
            dtype=torch.qint8)[0]
        weights = quantized_module.get_weight()
    model = fastgru.GRU.from_torch(quantized_module)
    assert model.precision == "int8"
    H = 64
    torch_w = weights["weight_hh_l1_reverse"]
    values = torch_w.int_repr().numpy()
    values = np.concatenate([values[H:2 * H], values[:H], values[2 * H:]])  # (r, z, n) -> (z, r, n)
    np.testing.assert_array_equal(model.spec.layers[1].int8.r_values[1], values)
    dequantized = torch_w.dequantize().numpy()
    np.testing.assert_array_equal(model.spec.layers[1].r[1],
                                  np.concatenate([dequantized[H:2 * H], dequantized[:H],
                                                  dequantized[2 * H:]]))
    assert fastgru.GRU.from_torch(quantized_module, dtype="float32").precision == "float32"

    x = np.random.default_rng(4).standard_normal((60, 2, 40)).astype(np.float32)
    with torch.no_grad():
        torch_int8 = quantized_module(torch.from_numpy(x))[0].numpy()
    exact = reference_gru(x, spec_layers(fastgru.GRU.from_torch(module).spec),
                          direction="bidirectional")[0]
    ours = np.abs(model(x)[0] - exact).max()
    theirs = np.abs(torch_int8 - exact).max()
    assert ours <= theirs, (ours, theirs)
    assert ours < 0.05


def test_torch_float16_dynamic_quantization_loads_as_float(rng):
    """quantize_dynamic with dtype=torch.float16 stores float16 weights, no int8: the module
    loads as float32 weights (its float16 values) and runs as torch runs it. A quantized
    GRUCell is refused by name."""
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation of torch.ao.quantization
        quantized_module = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(torch.nn.GRU(6, 8, num_layers=2)), {torch.nn.GRU},
            dtype=torch.float16)[0]
    model = fastgru.GRU.from_torch(quantized_module)
    assert model.precision == "float32"
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    with torch.no_grad():
        expected = quantized_module(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(model(x)[0], expected, atol=1e-5)
    # int8 asked for: quantized by fastgru's rule, as any float model
    assert fastgru.GRU.from_torch(quantized_module, dtype="int8").precision == "int8"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(torch.nn.GRUCell(6, 8)), {torch.nn.GRUCell}, dtype=torch.qint8)[0]
    with pytest.raises(TypeError, match="not its GRUCell"):
        fastgru.GRU.from_torch(cell)


def test_every_entry_point_takes_int8(rng, tmp_path):
    """GRU, from_torch, from_onnx, fastgru.load, streams and the command line take dtype
    int8 (pickling, save and load: test_saved_pickled_and_loaded_as_they_run)."""
    from fastgru.cli import main

    module = torch.nn.GRU(6, 8)
    model = fastgru.GRU.from_torch(module, dtype="int8")
    model.to_onnx(tmp_path / "m.onnx")
    torch.save(module.state_dict(), tmp_path / "m.pt")
    for loaded in (fastgru.GRU.from_onnx(tmp_path / "m.onnx", dtype="int8"),
                   fastgru.load(tmp_path / "m.onnx", dtype="int8"),
                   fastgru.load(tmp_path / "m.pt", dtype=np.int8)):
        assert loaded.precision == "int8"
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)
    y = model(x)[0]
    clients = model.stream_batch(4)
    ids = [clients.add(), clients.add()]
    np.testing.assert_array_equal(np.stack([clients.step(ids, x[t]) for t in range(5)]), y)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
                 "--dtype", "int8", "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  fastgru.load(tmp_path / "m.onnx", dtype="int8")(x)[0])


def qdq_gru(rng, zero_point=0, H=24, D=10):
    """An ONNX GRU whose W and R come from DequantizeLinear of int8 initializers: W with a scale
    per row (axis 1), R with one scale and an explicit zero point."""
    from onnx import TensorProto, helper, numpy_helper

    w = rng.integers(-128, 128, (1, 3 * H, D)).astype(np.int8)
    r = rng.integers(-127, 128, (1, 3 * H, H)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "W_q"),
             numpy_helper.from_array((rng.random(3 * H) * 0.02 + 0.001).astype(np.float32),
                                     "W_scale"),
             numpy_helper.from_array(r, "R_q"), numpy_helper.from_array(np.float32(0.01), "R_s"),
             numpy_helper.from_array(np.int8(zero_point), "R_zero"),
             numpy_helper.from_array(rng.standard_normal((1, 6 * H)).astype(np.float32), "B")]
    nodes = [helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W"], axis=1),
             helper.make_node("DequantizeLinear", ["R_q", "R_s", "R_zero"], ["R"]),
             helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                              linear_before_reset=1)]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", D])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), w, r


def test_dequantize_to_another_type_is_refused(rng):
    """opset 23's output_dtype: W dequantized to float16 for a float GRU is not a model fastgru
    reads (nor a valid graph); it is refused, never read as float32 or int8. float32 (1) is the
    scale's own type and reads as without it."""
    from onnx import helper

    proto, w, _ = qdq_gru(rng)
    proto.opset_import[0].version = 23
    for output_dtype, read in ((10, None), (1, w)):
        dequantize = proto.graph.node[0]
        del dequantize.attribute[:]
        dequantize.attribute.extend([helper.make_attribute("axis", 1),
                                     helper.make_attribute("output_dtype", output_dtype)])
        if read is None:
            with pytest.raises(FormatError, match="DequantizeLinear to type 10"):
                fastgru.GRU.from_onnx(proto)
        else:
            np.testing.assert_array_equal(
                fastgru.GRU.from_onnx(proto).spec.layers[0].int8.w_values, read)


def test_onnx_dequantized_weights_keep_their_int8_values(rng, tmp_path, capsys):
    """W and R made by DequantizeLinear of int8 initializers load as an int8 model of those very
    values; onnxruntime (dequantizing, then a float GRU) is the oracle. With a zero point other
    than 0 the weights are not symmetric: they load as the floats they dequantize to."""
    import onnx
    import onnxruntime as ort

    from fastgru.cli import main

    proto, w, r = qdq_gru(rng)
    path = tmp_path / "qdq.onnx"
    onnx.save(proto, path)
    x = rng.standard_normal((8, 3, 10)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    model = fastgru.load(path)
    assert model.precision == "int8"
    np.testing.assert_array_equal(model.spec.layers[0].int8.w_values, w)
    np.testing.assert_array_equal(model.spec.layers[0].int8.r_values, r)
    np.testing.assert_array_equal(model.spec.layers[0].int8.r_scales, np.float32(0.01))
    widened = fastgru.GRU(model.spec, dtype="int8", kernel_path="widen")
    np.testing.assert_allclose(widened(x)[0], expected[0][:, 0], atol=1e-5)
    np.testing.assert_allclose(model(x)[0], expected[0][:, 0], atol=0.05)

    session = fastgru.InferenceSession(path)  # the graph's own float precision by default
    np.testing.assert_allclose(session.run(None, {"X": x})[0], expected[0], atol=1e-5)
    int8_session = fastgru.InferenceSession(path, dtype="int8")
    described = int8_session.describe()
    assert "plan: staged (pinned)" in described and "dtype=int8" in described[0]
    np.testing.assert_allclose(int8_session.run(None, {"X": x})[0], expected[0], atol=0.05)
    with pytest.raises(ValueError, match="plan='onnxruntime' runs none"):
        fastgru.InferenceSession(path, dtype="int8", plan="onnxruntime")
    with pytest.raises(FormatError, match=r"computes in float32: dtype='float64' is not one of "
                                          r"\['float32', 'bfloat16', 'int8'\]"):
        fastgru.InferenceSession(path, dtype="float64")  # its outputs would not be float32
    for option, precision in (([], "int8"), (["--dtype", "float32"], "float32")):
        capsys.readouterr()  # the command line: the file's own precision unless --dtype says
        assert main(["info", str(path), *option]) == 0
        assert re.search(rf"^dtype: +{precision}$", capsys.readouterr().out, re.M), option

    proto, _, _ = qdq_gru(rng, zero_point=3)
    onnx.save(proto, path)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    model = fastgru.load(path)
    assert model.precision == "float32" and model.spec.layers[0].int8 is None
    np.testing.assert_allclose(model(x)[0], expected[0][:, 0], atol=1e-5)
