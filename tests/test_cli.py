"""The fastgru command, in-process through fastgru.cli.main, plus the installed script once."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastgru
from fastgru import GRUSpec, LayerWeights
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec
from fastgru.cli import main
from fastgru.testing.torch_models import torch_gru


@pytest.fixture
def pt_file(tmp_path):
    path = tmp_path / "gru.pt"
    torch.save({"model": torch_gru(5, 7, 2, bidirectional=True).state_dict()}, path)
    return path


def test_info(pt_file, capsys):
    assert main(["info", str(pt_file)]) == 0
    out = capsys.readouterr().out
    assert "layers:              2" in out and "direction:           bidirectional" in out
    # weights: layer 0 2*(21*5 + 21*7 + 42) ; layer 1 2*(21*14 + 21*7 + 42)
    assert f"parameters:          {2 * (105 + 147 + 42) + 2 * (294 + 147 + 42)}" in out
    assert f"FLOPs per step:      {2 * 6 * 7 * (5 + 7) + 2 * 6 * 7 * (14 + 7)}" in out


@pytest.mark.parametrize("suffix", [".onnx", ".safetensors", ".pt"])
def test_convert_keeps_the_outputs(pt_file, tmp_path, rng, suffix, capsys):
    dst = tmp_path / f"converted{suffix}"
    assert main(["convert", str(pt_file), str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    x = rng.standard_normal((6, 2, 5))
    assert_close(fastgru.load(dst)(x)[0], fastgru.load(pt_file)(x)[0], "float32", suffix)


def test_run_writes_outputs(pt_file, tmp_path, rng):
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 7)).astype(np.float32)
    for name, value in (("x", x), ("h0", h0), ("lengths", np.array([6, 2, 4]))):
        np.save(tmp_path / f"{name}.npy", value)
    argv = ["run", str(pt_file), "--input", str(tmp_path / "x.npy"), "--output",
            str(tmp_path / "y.npy"), "--output-state", str(tmp_path / "h.npy"),
            "--h0", str(tmp_path / "h0.npy"), "--lengths", str(tmp_path / "lengths.npy")]
    assert main(argv) == 0
    y, h_n = fastgru.load(pt_file)(x, h0, lengths=[6, 2, 4])
    assert np.array_equal(np.load(tmp_path / "y.npy"), y)
    assert np.array_equal(np.load(tmp_path / "h.npy"), h_n)


def test_check_passes_for_good_files(pt_file, tmp_path, capsys):
    assert main(["check", str(pt_file)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime  max abs diff" in out and "torch        max abs diff" in out
    assert "ABOVE" not in out
    onnx_file = tmp_path / "m.onnx"
    assert main(["convert", str(pt_file), str(onnx_file)]) == 0
    assert main(["check", str(onnx_file)]) == 0


def test_check_fails_when_the_file_disagrees(rng, tmp_path, capsys, monkeypatch):
    spec = random_spec(rng, 3, 4)
    path = tmp_path / "m.onnx"
    fastgru.GRU(spec).to_onnx(path)
    # fastgru computes a model whose R differs from the file's: the check must catch it
    layer = spec.layers[0]
    other = fastgru.GRU(GRUSpec((LayerWeights(layer.w, 1.5 * layer.r, layer.b),)))
    monkeypatch.setattr(fastgru, "load", lambda path, **options: other)
    assert main(["check", str(path)]) == 1
    assert "ABOVE tolerance" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.pt"], "no file at 'missing.pt'"),
    (["convert", "{pt}", "out.txt"], "the destination must end in .onnx"),
    (["run", "{pt}", "--input", "missing.npy", "--output", "y.npy"], "no input file at"),
    (["run", "{pt}", "--input", "{bad_npy}", "--output", "y.npy"], "is not a readable NumPy .npy"),
    (["run", "{pt}", "--input", "{huge_npy}", "--output", "y.npy"],
     r"its header claims \(30000, 1000000\) float32 \(120000000000 bytes\)"),
    (["bench", "--threads", "0"], "--threads takes comma-separated positive integers, got '0'"),
    (["bench", "--threads", "two"], "--threads takes comma-separated positive integers"),
    (["bench", "--rounds", "0"], "--rounds must be positive, got 0"),
    (["check", "{pt}", "--batch", "0"], "--batch and --seq must be positive, got 0, 20"),
    (["check", "{pt}", "--seq", "0"], "--batch and --seq must be positive, got 3, 0"),
    (["info", "{pt}", "--node", "gru"], r"is a PyTorch file, which takes batch_first=, dtype=, "
                                        r"prefix=; got node="),
    (["run", "{pt}", "--input", "{wrong_x}", "--output", "y.npy"], "x must have 5 features"),
    (["info", "{bad_npy}"], "cannot tell what kind of model"),
    (["bench", "--shapes", "S9"], r"unknown shape\(s\) \['S9'\]"),
    (["bench", "--vs", "tensorflow"], r"unknown peer\(s\) \['tensorflow'\]"),
])
def test_bad_input_is_one_line_and_status_2(pt_file, tmp_path, capsys, argv, message):
    (tmp_path / "bad.txt").write_text("not numpy")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 2, 3), np.float32))
    with open(tmp_path / "huge.npy", "wb") as f:  # a header claiming 112 GiB, and no data
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (30000, 1000000)})
    names = {"pt": str(pt_file), "bad_npy": str(tmp_path / "bad.txt"),
             "wrong_x": str(tmp_path / "wrong.npy"), "huge_npy": str(tmp_path / "huge.npy")}
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_installed_script_and_bench_table(pt_file):
    """The console script end to end: a short bench of the user's file against both peers."""
    script = [sys.executable, "-m", "fastgru.cli"]
    out = subprocess.run([*script, "bench", str(pt_file), "--batch", "2", "--seq", "5",
                          "--seconds", "0.05", "--vs", "onnxruntime,torch"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| gru.pt")]
    assert [r.split("|")[3].strip() for r in rows] == ["fastgru", "onnxruntime", "torch"]
    for row in rows:
        diff = float(row.split("|")[8])
        assert diff < 1e-5
    assert "[3/3]" in out.stderr  # the progress display
    none = subprocess.run([*script], capture_output=True, text=True)
    assert none.returncode == 2 and "usage" in none.stderr


def test_bench_bfloat16_and_openvino_peers():
    """fastgru-bf16 and OpenVINO (default precision and float32) as peers: OpenVINO in float32
    agrees with fastgru's float32, and the bfloat16 runtimes differ by bfloat16 rounding."""
    out = subprocess.run([sys.executable, "-m", "fastgru.cli", "bench", "--shapes", "S1,S2",
                          "--seconds", "0.05", "--vs", "fastgru-bf16,openvino,openvino-f32"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| S")]
    diffs = {(r[1].split()[0], r[3].strip()): float(r[8]) for r in rows}  # vs fastgru float32
    assert len(diffs) == 8
    for shape in ("S1", "S2"):
        assert diffs[(shape, "openvino-f32")] < 1e-5
        assert 1e-5 < diffs[(shape, "fastgru-bf16")] < 1e-2


def test_default_bench_stream_shape_in_rounds():
    """The stream shape against the default peer, in two rounds: four worker processes, taking
    turns, and still one row per runtime."""
    out = subprocess.run([sys.executable, "-m", "fastgru.cli", "bench", "--shapes", "S1",
                          "--seconds", "0.05", "--rounds", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| S1")]
    assert len(rows) == 2 and float(rows[1].split("|")[8]) == 0.0
    progress = [line.split("] ")[1] for line in out.stderr.splitlines() if line.startswith("[")]
    assert progress == ["S1 fastgru, 1 thread(s)", "S1 onnxruntime, 1 thread(s)"] * 2


def test_check_a_float64_model(rng, tmp_path, capsys):
    path = tmp_path / "m64.safetensors"
    fastgru.GRU(random_spec(rng, 3, 4, 2), dtype="float64").save(path)
    assert main(["check", str(path)]) == 0
    assert "onnxruntime  max abs diff" in capsys.readouterr().out


@pytest.fixture
def whole_graph(tmp_path):
    """A network with a GRU stack inside (conv front-end, GRU, head), exported by torch."""
    from fastgru.testing.torch_models import MaskNet, export

    torch.manual_seed(7)
    return export(MaskNet(), (torch.zeros(2, 30, 16),), tmp_path / "mask.onnx",
                  (["x"], ["mask"]), False)


def test_whole_graph_info_run_check_bench(whole_graph, tmp_path, rng, capsys):
    import onnxruntime as ort

    assert main(["info", whole_graph]) == 0
    out = capsys.readouterr().out
    assert "input:   x tensor(float)" in out
    assert re.search(r"stage 1: fastgru: GRU node\(s\) .*num_layers=2", out)
    assert "stage 2: onnxruntime" in out

    x = rng.standard_normal((2, 30, 16)).astype(np.float32)  # the shape exported, fixed
    np.save(tmp_path / "x.npy", x)
    assert main(["run", whole_graph, "--input", f"x={tmp_path / 'x.npy'}",
                 "--output", f"mask={tmp_path / 'mask.npy'}"]) == 0
    expected = ort.InferenceSession(whole_graph).run(None, {"x": x})[0]
    assert_close(np.load(tmp_path / "mask.npy"), expected, "float32", "run")

    assert main(["check", whole_graph, "--batch", "2", "--seq", "30"]) == 0
    assert re.search(r"onnxruntime  mask: max abs diff \S+  \(ok tolerance", capsys.readouterr().out)

    assert main(["bench", whole_graph, "--seconds", "0.05", "--batch", "2", "--seq", "30"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "(whole graph)" in line]
    assert [row.split(" | ")[2] for row in rows] == ["fastgru", "onnxruntime"]

    assert main(["run", whole_graph, "--input", f"y={tmp_path / 'x.npy'}",
                 "--output", str(tmp_path / "o.npy")]) == 2
    assert "missing ['x'], unknown ['y']" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", x[:, :20])
    assert main(["run", whole_graph, "--input", f"x={tmp_path / 'short.npy'}",
                 "--output", str(tmp_path / "o.npy")]) == 2
    assert "input 'x' must have shape [2, 30, 16], got (2, 20, 16)" in capsys.readouterr().err


def test_layout_and_load_options_on_the_command_line(tmp_path, rng, capsys):
    """A state dict does not record batch_first: --batch-first says it, on every subcommand."""
    module = torch_gru(5, 7, batch_first=True)
    path = tmp_path / "bf.pt"
    torch.save({"encoder.gru." + k: v for k, v in module.state_dict().items()}, path)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)  # (B, T, D)
    np.save(tmp_path / "x.npy", x)
    argv = ["run", str(path), "--input", str(tmp_path / "x.npy"), "--output",
            str(tmp_path / "y.npy"), "--batch-first", "--prefix", "encoder.gru."]
    assert main(argv) == 0
    with torch.no_grad():
        expected = module(torch.as_tensor(x))[0].numpy()
    assert_close(np.load(tmp_path / "y.npy"), expected, "float32", "--batch-first")
    assert main(["info", str(path), "--batch-first", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "batch_first:         True" in out and "dtype:               float64" in out
    assert main(["check", str(path), "--batch-first"]) == 0
    assert "torch        max abs diff" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == \
        f"fastgru {fastgru.__version__}"
    model = fastgru.load(path, batch_first=True, prefix="encoder.gru.")
    assert model.batch_first and model.hidden_size == 7


@pytest.fixture
def graph_with_an_add(tmp_path, rng):
    """A GRU whose Y a graph input is added to: onnxruntime fails at run time when that input's
    length does not broadcast against H (a whole graph: fastgru.InferenceSession)."""
    from onnx import TensorProto, helper

    from fastgru.testing.models import onnx_gru_model

    proto = onnx_gru_model(random_spec(rng, 3, 4))
    graph = proto.graph
    graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["K"]))
    graph.node.append(helper.make_node("Add", ["Y", "bias"], ["out"], name="add"))
    graph.output.insert(0, helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    path = tmp_path / "add.onnx"
    path.write_bytes(proto.SerializeToString())
    return str(path)


def test_a_whole_graph_failing_in_onnxruntime_is_one_line(graph_with_an_add, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((5, 2, 3), np.float32))
    np.save(tmp_path / "bias.npy", np.zeros(3, np.float32))  # H is 4: no broadcast
    np.save(tmp_path / "lens.npy", np.full(2, 5, np.int32))
    np.save(tmp_path / "h0.npy", np.zeros((1, 2, 4), np.float32))
    argv = ["run", graph_with_an_add, "--output", f"out={tmp_path / 'out.npy'}"]
    for name in ("X", "bias", "sequence_lens", "initial_h"):
        file = {"X": "x", "bias": "bias", "sequence_lens": "lens", "initial_h": "h0"}[name]
        argv += ["--input", f"{name}={tmp_path / file}.npy"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(r"fastgru run: error: onnxruntime failed", err), err
    np.save(tmp_path / "bias.npy", np.zeros(4, np.float32))  # the same files, broadcastable
    assert main(argv) == 0


@pytest.mark.parametrize("option", [["--dtype", "float32"], ["--dtype", "float64"],
                                    ["--dtype", "bfloat16"], ["--batch-first"]])
@pytest.mark.parametrize("command", ["info", "check", "bench"])
def test_load_options_are_refused_on_whole_graphs(graph_with_an_add, capsys, command, option):
    assert main([command, graph_with_an_add, *option]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{option[0]} applies to GRU models" in err and "InferenceSession" in err, err


def test_sizes_and_threads_are_checked_against_the_machine(pt_file, capsys):
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    cases = [
        (["bench", "--threads", "100000"], rf"--threads: at most {most} on this machine "
                                           rf"\(numba.config.NUMBA_NUM_THREADS\), got 100000"),
        (["bench", "--threads", f"1,{most + 1}"], rf"at most {most} on this machine"),
        (["bench", str(pt_file), "--batch", "100000000"], r"--batch .* at most"),
        (["bench", str(pt_file), "--seq", "100000000"], r"--seq .* at most"),
        (["check", str(pt_file), "--batch", "100000000"], r"--batch .* at most"),
        (["check", str(pt_file), "--batch", "50000", "--seq", "50000"],
         r"--batch 50000 x --seq 50000 needs .* GiB; this machine has"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert re.search(message, err), (argv, err)


def test_check_judges_bfloat16_by_its_own_tolerance(pt_file, rng, tmp_path, capsys, monkeypatch):
    """bfloat16 weights make a slightly different network: judged by float32's tolerance, a
    right file was always 'ABOVE tolerance' (issue 30). A wrong one still fails."""
    assert main(["check", str(pt_file), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out.splitlines()[0]
    assert "onnxruntime  max abs diff" in out and "torch        max abs diff" in out
    assert out.count("(ok tolerance 0.02 + 0.02*|ref|, bfloat16's)") == 2, out

    spec = random_spec(rng, 3, 4)
    path = tmp_path / "m.onnx"
    fastgru.GRU(spec).to_onnx(path)
    layer = spec.layers[0]
    other = fastgru.GRU(GRUSpec((LayerWeights(layer.w, 1.5 * layer.r, layer.b),)),
                        dtype="bfloat16")
    monkeypatch.setattr(fastgru, "load", lambda path, **options: other)
    assert main(["check", str(path), "--dtype", "bfloat16"]) == 1
    assert "ABOVE tolerance 0.02 + 0.02*|ref|" in capsys.readouterr().out


def _fix_sizes(proto, first: int, second: int):
    """The graph's first input with its first two dims fixed."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (first, second), strict=False):
        dim.Clear()
        dim.dim_value = value
    return proto


@pytest.mark.parametrize("batch_first", [False, True])
def test_check_runs_the_sizes_an_onnx_file_fixes(rng, tmp_path, capsys, batch_first):
    """An ONNX file whose input has fixed dims: check ran its own defaults (3, 20), which
    onnxruntime refused. It runs the file's sizes now, says so, and refuses other ones."""
    path = tmp_path / "fixed.onnx"
    model = fastgru.GRU(random_spec(rng, 3, 4), batch_first=batch_first)
    proto = _fix_sizes(model.to_onnx(), *((2, 7) if batch_first else (7, 2)))
    path.write_bytes(proto.SerializeToString())
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "batch 2 (the file's), seq 7 (the file's)" in out, out
    assert "ABOVE" not in out
    assert main(["check", str(path), "--seq", "7"]) == 0
    assert "seq 7 (--seq)" in capsys.readouterr().out
    assert main(["check", str(path), "--batch", "4"]) == 2
    err = capsys.readouterr().err
    assert "--batch 4: the file fixes the batch at 2" in err and len(err.splitlines()) == 1
    other = tmp_path / "free.onnx"  # no fixed dims: the defaults, said as such
    model.to_onnx(other)
    assert main(["check", str(other), "--batch", "5"]) == 0
    assert "batch 5 (--batch), seq 20 (default)" in capsys.readouterr().out
