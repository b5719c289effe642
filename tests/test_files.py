"""Model files: PyTorch checkpoints, safetensors, exported ONNX graphs, fastgru's own format,
export to ONNX, the ONNX package's GRU conformance cases, and safe loading of hostile files."""

from __future__ import annotations

import itertools
import os
import pickle
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec
from fastgru.errors import FormatError
from fastgru.testing.torch_models import run_torch, torch_gru

STACKS = list(itertools.product([1, 2, 3], [False, True], [False, True]))


def save_torch(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("num_layers, bidirectional, batch_first", STACKS)
def test_pt_and_safetensors_files_match_torch(rng, tmp_path, num_layers, bidirectional,
                                              batch_first):
    from safetensors.torch import save_file

    module = torch_gru(4, 6, num_layers, bidirectional, batch_first=batch_first)
    state = module.state_dict()
    dirs = 2 if bidirectional else 1
    x = rng.standard_normal((2, 5, 4) if batch_first else (5, 2, 4))
    h0 = rng.standard_normal((num_layers * dirs, 2, 6))
    lengths = [5, 3]
    y_t, h_t = run_torch(module, x, h0, lengths)
    files = [save_torch(state, tmp_path / "plain.pt"),
             save_torch({"epoch": 3, "state_dict": {f"module.rnn.{k}": v for k, v in state.items()}},
                        tmp_path / "checkpoint.pth"),
             save_torch({"model": {f"encoder.gru.{k}": v for k, v in state.items()},
                         "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.bin")]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    files.append(tmp_path / "weights.safetensors")
    for path in files:
        model = fastgru.load(path, batch_first=batch_first)
        y, h_n = model(x, h0, lengths=lengths)
        assert_close(y, y_t, "float32", f"{path.name} y")
        assert_close(h_n, h_t, "float32", f"{path.name} h_n")
    assert fastgru.GRU.from_torch(tmp_path / "plain.pt").num_layers == num_layers


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first", STACKS)
def test_torch_onnx_export_matches_torch(rng, tmp_path, num_layers, bidirectional, batch_first,
                                         dynamo):
    module = torch_gru(4, 6, num_layers, bidirectional, batch_first=batch_first)
    dirs = 2 if bidirectional else 1
    x = rng.standard_normal((2, 5, 4) if batch_first else (5, 2, 4))
    h0 = rng.standard_normal((num_layers * dirs, 2, 6))
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and progress notes
        torch.onnx.export(module, (torch.as_tensor(x, dtype=torch.float32),
                                   torch.as_tensor(h0, dtype=torch.float32)),
                          str(path), input_names=["x", "h0"], output_names=["y", "h_n"],
                          dynamo=dynamo, opset_version=18 if dynamo else 14,
                          **({"verbose": False} if dynamo else {}))
    model = fastgru.load(path)
    assert (model.num_layers, model.bidirectional, model.batch_first) == \
        (num_layers, bidirectional, batch_first)
    y, h_n = model(x, h0)
    y_t, h_t = run_torch(module, x, h0)
    assert_close(y, y_t, "float32", "y")
    assert_close(h_n, h_t, "float32", "h_n")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("direction, lbr, clip", [("forward", True, None),
                                                  ("reverse", False, 2.5),
                                                  ("bidirectional", True, 0.75)])
def test_save_and_load_are_bit_exact(rng, tmp_path, direction, lbr, clip, dtype):
    model = fastgru.GRU(random_spec(rng, 3, 5, 2, direction, lbr, clip=clip), batch_first=True,
                        dtype=dtype)
    model.save(tmp_path / "model.safetensors")
    again = fastgru.load(tmp_path / "model.safetensors")
    for attr in ("input_size", "hidden_size", "num_layers", "direction", "batch_first",
                 "linear_before_reset", "clip", "dtype"):
        assert getattr(again, attr) == getattr(model, attr), attr
    x = rng.standard_normal((4, 6, 3))
    for a, b in zip(model(x, lengths=[6, 2, 0, 5]), again(x, lengths=[6, 2, 0, 5]),
                    strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(TypeError, match=r"is a fastgru file, which takes no options; got dtype="):
        fastgru.load(tmp_path / "model.safetensors", dtype="float64")
    with pytest.raises(FormatError, match="is a fastgru file, not PyTorch weights"):
        fastgru.GRU.from_torch(tmp_path / "model.safetensors")


@pytest.mark.parametrize("key, value, message", [
    ("dtype", "float16", r"dtype 'float16'; expected one of \('float32', 'float64', 'bfloat16', 'int8'\)"),
    ("dtype", "", r"dtype ''; expected one of"),
    ("batch_first", "yes", r"batch_first 'yes'; expected one of \('0', '1'\)"),
    ("linear_before_reset", "true", r"linear_before_reset 'true'; expected one of \('0', '1'\)"),
])
def test_native_metadata_that_fastgru_never_writes(rng, tmp_path, key, value, message):
    """A fastgru file whose metadata says float16 (or another value fastgru never writes) once
    gave GRU's own ValueError; it is a FormatError that names the field."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    fastgru.GRU(random_spec(rng, 3, 5), dtype="float32").save(path)
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**metadata, key: value})
    with pytest.raises(FormatError, match=r"is an inconsistent fastgru file: .*" + message):
        fastgru.load(path)


@pytest.mark.parametrize("num_layers, direction, batch_first", list(itertools.product(
    [1, 2, 3], ["forward", "reverse", "bidirectional"], [False, True])))
def test_to_onnx_runs_in_onnxruntime_with_the_same_results(rng, tmp_path, num_layers, direction,
                                                           batch_first):
    import onnxruntime as ort

    spec = random_spec(rng, 4, 5, num_layers, direction, linear_before_reset=num_layers != 2,
                       clip=3.0 if num_layers == 3 else None)
    model = fastgru.GRU(spec, batch_first=batch_first)
    dirs = spec.num_directions
    x = rng.standard_normal((3, 6, 4) if batch_first else (6, 3, 4)).astype(np.float32)
    h0 = rng.standard_normal((num_layers * dirs, 3, 5)).astype(np.float32)
    lengths = np.array([6, 1, 4], np.int32)  # onnxruntime zeroes Y_h of empty rows: no 0 here
    path = tmp_path / "exported.onnx"
    proto = model.to_onnx(path, state_inputs=True)
    onnx.checker.check_model(proto)
    assert proto.ir_version == 7  # older onnxruntimes refuse newer IR versions (1.30: <= 13)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    Y, Y_h = session.run(None, {"X": x, "initial_h": h0, "sequence_lens": lengths})
    y, h_n = model(x, h0, lengths=lengths)
    assert_close(Y, y, "float32", "Y")
    assert_close(Y_h, h_n, "float32", "Y_h")
    # the plain export takes X alone
    plain = ort.InferenceSession(model.to_onnx().SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    assert_close(plain.run(None, {"X": x})[0], model(x)[0], "float32", "plain Y")
    # and fastgru reads its own export back to the same model
    back = fastgru.load(path)
    assert (back.num_layers, back.direction, back.batch_first, back.clip) == \
        (num_layers, direction, batch_first, model.clip)
    assert np.array_equal(back(x, h0, lengths=lengths)[0], y)


def _conformance_cases():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generating the other ops' cases warns about overflows
        return [c for c in load_model_tests(kind="node") if c.name.startswith("test_gru")]


CONFORMANCE = _conformance_cases()


def test_conformance_cases_were_found():
    assert len(CONFORMANCE) >= 4, [c.name for c in CONFORMANCE]


@pytest.mark.parametrize("case", CONFORMANCE, ids=[c.name for c in CONFORMANCE])
def test_onnx_conformance_case(case):
    """The ONNX package's own GRU cases: weights fed as inputs become initializers here."""
    for inputs, outputs in case.data_sets:
        model = onnx.ModelProto()
        model.CopyFrom(case.model)
        feeds = dict(zip([i.name for i in model.graph.input], inputs, strict=True))
        node = model.graph.node[0]
        weight_names = set(list(node.input)[1:4])
        model.graph.initializer.extend(numpy_helper.from_array(feeds[n], n)
                                       for n in weight_names if n)
        gru = fastgru.GRU.from_onnx(model)
        slot = dict(zip(["X", "W", "R", "B", "sequence_lens", "initial_h"], node.input,
                        strict=False))  # trailing optional inputs may be absent
        x = feeds[slot["X"]]
        h0 = feeds.get(slot.get("initial_h", ""))
        lengths = feeds.get(slot.get("sequence_lens", ""))
        dirs = 2 if gru.bidirectional else 1
        if gru.batch_first and h0 is not None:  # layout=1 initial_h is (B, dirs, H)
            h0 = h0.transpose(1, 0, 2)
        y, h_n = gru(x, h0, lengths=lengths)
        expected = dict(zip([o.name for o in model.graph.output], outputs, strict=True))
        for name, value in expected.items():
            role = list(node.output).index(name)
            if role == 0:  # Y: (T, dirs, B, H), layout=1: (B, T, dirs, H)
                got = y.reshape(*y.shape[:2], dirs, -1)
                got = got if gru.batch_first else got.transpose(0, 2, 1, 3)
            else:  # Y_h: (dirs, B, H), layout=1: (B, dirs, H)
                got = h_n.transpose(1, 0, 2) if gru.batch_first else h_n
            assert_close(got, value, "float32", f"{case.name} {name}")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    zip_file = tmp_path / "evil.pt"
    torch.save({"weight_hh_l0": _Payload(marker)}, zip_file)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps({"weight_hh_l0": _Payload(marker)}, protocol=2))
    for path in (zip_file, legacy):
        with pytest.raises(FormatError, match="fastgru never unpickles code"):
            fastgru.load(path)
        with pytest.raises(FormatError, match="fastgru never unpickles code"):
            fastgru.GRU.from_torch(path)
    assert not marker.exists()


def _external_model(rng, folder):
    spec = random_spec(rng, 3, 4)
    model = fastgru.GRU(spec).to_onnx()
    path = folder / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return spec, path


def _set_location(path, location):
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


def test_external_data_inside_the_folder_loads(rng, tmp_path):
    spec, path = _external_model(rng, tmp_path)
    x = rng.standard_normal((5, 2, 3))
    assert_close(fastgru.load(path)(x)[0], fastgru.GRU(spec)(x)[0], "float32", "y")


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "short", "missing"])
def test_external_data_outside_the_folder_is_refused(rng, tmp_path, where):
    folder = tmp_path / "model"
    folder.mkdir()
    _, path = _external_model(rng, folder)
    outside = tmp_path / "secret.bin"
    outside.write_bytes((folder / "weights.bin").read_bytes())
    if where == "parent":
        _set_location(path, "../secret.bin")
        match = "points outside the model's folder"
    elif where == "absolute":
        _set_location(path, str(outside))
        match = "points outside the model's folder"
    elif where == "symlink":
        (folder / "link.bin").symlink_to(outside)
        _set_location(path, "link.bin")
        match = "leads outside the model's folder"
    elif where == "short":
        (folder / "weights.bin").write_bytes(b"\0" * 10)
        match = "external data needs .* bytes"
    else:
        (folder / "weights.bin").unlink()
        match = "does not exist"
    with pytest.raises(FormatError, match=match):
        fastgru.load(path)


def test_external_data_needs_a_folder(rng, tmp_path):
    _, path = _external_model(rng, tmp_path)
    with pytest.raises(FormatError, match="can only be read when the model is loaded from a path"):
        fastgru.GRU.from_onnx(path.read_bytes())


def test_shapes_are_checked_against_stored_sizes(rng):
    proto = fastgru.GRU(random_spec(rng, 3, 4)).to_onnx()
    r = [t for t in proto.graph.initializer if t.name == "R0"][0]
    r.dims[1] = 3_000_000_000  # claims 12 GB; holds 192 bytes
    with pytest.raises(FormatError, match=r"R \('R0'\) has shape \[1, 3000000000, 4\] .* but "
                                          r"stores 48"):
        fastgru.GRU.from_onnx(proto)


def test_graph_that_is_not_a_gru_stack_names_the_node(rng):
    from onnx import helper

    proto = fastgru.GRU(random_spec(rng, 3, 4, 2)).to_onnx()
    for node in proto.graph.node:
        if node.op_type == "Reshape":
            node.op_type, node.name = "Relu", "the_relu"
            del node.input[1:]
            break
    with pytest.raises(FormatError, match=r"GRU node 'gru_layer1': node 'the_relu' \(Relu\) "
                                          r"stands between it and the previous layer"):
        fastgru.GRU.from_onnx(proto)
    proto = fastgru.GRU(random_spec(rng, 3, 4, 2)).to_onnx()
    for node in proto.graph.node:
        if node.op_type == "Transpose" and node.output[0] == "Y0_tbdh":
            node.attribute[0].CopyFrom(helper.make_attribute("perm", [2, 0, 1, 3]))
    with pytest.raises(FormatError, match=r"GRU node 'gru_layer1': the nodes between it and the "
                                          r"layer below \[Transpose .* \(perm \[2, 0, 1, 3\]\).*\] "
                                          r"do not pass the sequence on"):
        fastgru.GRU.from_onnx(proto)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        fastgru.load(tmp_path / "nothing.onnx")
    odd = tmp_path / "model.txt"
    odd.write_text("hello")
    with pytest.raises(FormatError, match=r"cannot tell what kind of model .* expected one of "
                                          r"\.onnx, \.pt"):
        fastgru.load(odd)
    with pytest.raises(TypeError, match="expected a path"):
        fastgru.load(3)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="has no graph"):
        fastgru.load(empty)


def _valid_files(rng, folder):
    module = torch_gru(3, 4, 2, bidirectional=True)
    fastgru.GRU.from_torch(module).to_onnx(folder / "m.onnx")
    torch.save(module.state_dict(), folder / "m.pt")
    fastgru.GRU.from_torch(module).save(folder / "m.safetensors")
    return [folder / "m.onnx", folder / "m.pt", folder / "m.safetensors"]


@pytest.mark.slow
def test_fuzzed_files_end_in_clear_errors(rng, tmp_path):
    """Random, truncated and mutated bytes: a model or a ValueError/TypeError, never a crash."""
    outcomes = {"loaded": 0, "refused": 0}
    for source in _valid_files(rng, tmp_path):
        data = source.read_bytes()
        variants = [rng.bytes(int(rng.integers(0, 600))) for _ in range(30)]
        variants += [data[:int(n)] for n in rng.integers(0, len(data), 40)]
        for _ in range(80):
            mutated = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
                mutated[position] = int(rng.integers(0, 256))
            variants.append(bytes(mutated))
        target = tmp_path / f"fuzz{source.suffix}"
        for blob in variants:
            target.write_bytes(blob)
            try:
                model = fastgru.load(target)
            except (ValueError, TypeError):
                outcomes["refused"] += 1
                continue
            outcomes["loaded"] += 1
            x = rng.standard_normal((3, 2, model.input_size))
            model(x)  # a mutated weight is still a model: it must run
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 450, outcomes


def test_native_files_always_load_back(rng, tmp_path):
    """fastgru's own file for every size: the safetensors header length may begin with the byte
    0x80 (a pickle's first byte), which once sent these files to torch's loader."""
    for hidden, layers, direction in itertools.product(range(20, 97, 3), (1, 2),
                                                       ("forward", "bidirectional")):
        model = fastgru.GRU(random_spec(rng, 3, hidden, layers, direction))
        path = tmp_path / f"m{hidden}_{layers}_{direction}.safetensors"
        model.save(path)
        again = fastgru.load(path)
        assert again.hidden_size == hidden and again.num_layers == layers
        for a, b in zip(again.spec.layers, model.spec.layers, strict=True):
            assert np.array_equal(a.r, b.r) and np.array_equal(a.w, b.w)


class WholeNet(torch.nn.Module):
    """Saved whole with torch.save(net), as users sometimes do."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(3, 4)


def test_messages_that_help(tmp_path, rng):
    """What users hit with real checkpoints: one clear sentence each, a FormatError."""
    net = WholeNet()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(FormatError) as info:
        fastgru.load(tmp_path / "whole.pt")
    message = str(info.value)
    assert "\x1b" not in message and message.count("whole.pt") == 1
    assert "save model.state_dict() instead, or pass the module" in message

    state = net.state_dict()
    trainable = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    assert fastgru.GRU.from_torch(trainable).hidden_size == 4
    assert fastgru.GRU.from_torch(state, prefix="gru").hidden_size == 4  # the dot is implied
    with pytest.raises(FormatError, match=r"no GRU keys under prefix 'rnn.'; the state dict has "
                                          r"GRU keys under \['gru.'\]"):
        fastgru.GRU.from_torch(state, prefix="rnn.")
    with pytest.raises(FormatError, match=r"keys are parameter names \(str\), got int 1"):
        fastgru.GRU.from_torch({1: np.zeros(3), **state})
    poisoned = {k: v.clone() for k, v in state.items()}
    poisoned["gru.weight_hh_l0"][0, 0] = float("nan")
    with pytest.raises(FormatError, match="r contains NaN or inf"):
        fastgru.GRU.from_torch(poisoned)
    with pytest.raises(FormatError, match=r"must have shape \(3\*H, H\) for a GRU, got \(0, 0\)"):
        fastgru.GRU.from_torch({"weight_ih_l0": np.zeros((0, 3)), "weight_hh_l0": np.zeros((0, 0))})
    overlapping = np.lib.stride_tricks.as_strided(np.zeros(2), (3 * 10**6, 10**6), (8, 8))
    huge = {"weight_ih_l0": np.zeros((3, 3)),  # 16 bytes claiming 24 TB
            "weight_hh_l0": overlapping}
    with pytest.raises(FormatError, match=r"claim 3000000000009 values .* more than this "
                                          r"machine's memory"):
        fastgru.GRU.from_torch(huge)
