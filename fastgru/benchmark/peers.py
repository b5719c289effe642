"""How each runtime runs a case: one call to time, and a function returning its last result.

onnxruntime runs the graph ``GRU.to_onnx`` writes (one GRU node per layer, as torch.onnx.export
writes it); PyTorch runs an nn.GRU (an nn.GRUCell for the stream step) holding the same weights.
``fastgru-bf16`` and ``fastgru-int8`` are fastgru with dtype="bfloat16" and "int8";
``torch-int8`` is PyTorch's dynamic quantized GRU (GRUCell for the stream step; qint8 weights
per tensor, torch.ao.quantization.quantize_dynamic) on the same weights. ``openvino`` runs the
same ONNX graph as onnxruntime in OpenVINO's default precision (bfloat16 on CPUs with bf16
instructions),
``openvino-f32`` with INFERENCE_PRECISION_HINT=f32. OpenVINO is optional (``pip install
openvino``), never a dependency. For S1 the peers carry the state too: onnxruntime feeds
initial_h and reads Y_h each call.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np

from fastgru import checks
from fastgru._onnxruntime import cpu_session
from fastgru.benchmark.cases import Case, builtin_model

RUNTIMES = ("fastgru", "fastgru-bf16", "fastgru-int8", "onnxruntime", "torch", "torch-int8",
            "openvino", "openvino-f32")


def package(runtime: str) -> str:
    """The package a runtime needs: "openvino-f32" -> "openvino"."""
    return runtime.split("-")[0]


def available(runtime: str) -> bool:
    return importlib.util.find_spec(package(runtime)) is not None


def onnxruntime_session(model, threads: int):
    """onnxruntime's CPU session on `model` (a path or serialized bytes) with `threads` threads
    for each operator and one for the graph, its idle workers spinning as onnxruntime's default
    has them: a peer timed alone in its own process, at its fastest."""
    return cpu_session(model, threads=threads, spinning=True)


def _whole_graph_call(runtime: str, case: Case, threads: int):
    """(call, output) for a whole ONNX graph: fastgru.InferenceSession or onnxruntime."""
    if runtime == "fastgru":
        import fastgru

        session = fastgru.InferenceSession(case.model_path, threads=threads)
    elif runtime == "onnxruntime":
        session = onnxruntime_session(case.model_path, threads)
    else:
        raise ValueError(f"{runtime} cannot run a whole ONNX graph; compare with onnxruntime")
    feeds = checks.random_feeds(session.get_inputs(), case.batch, case.steps)
    result = {}
    return (lambda: result.__setitem__("y", session.run(None, feeds)[0])), \
        (lambda: result["y"])


def _openvino_call(model, case: Case, x: np.ndarray, threads: int, f32: bool):
    """(call, output) for OpenVINO on the graph onnxruntime runs, in its default precision or
    float32."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        model.to_onnx(path, state_inputs=case.stream)
        compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    first_output = compiled.outputs[0]
    result = {}
    if case.stream:
        h = np.zeros((1, case.batch, case.hidden_size), np.float32)
        one_step = np.ones(case.batch, np.int32)

        def step():
            nonlocal h
            outputs = request.infer({"X": x[:1], "initial_h": h, "sequence_lens": one_step})
            h = outputs[compiled.outputs[1]].copy()
        return step, (lambda: h[0].copy())
    return (lambda: result.__setitem__("y", request.infer({"X": x})[first_output].copy())), \
        (lambda: result["y"])


def _fastgru_call(model, case: Case, x: np.ndarray, dtype: str):
    from fastgru import GRU

    if dtype != "float32":
        model = GRU(model.spec, batch_first=model.batch_first, dtype=dtype)
    if case.stream:
        stream = model.stream(case.batch)
        out = np.empty((case.batch, case.hidden_size), np.float32)
        return (lambda: stream.step(x[0], out=out)), (lambda: out.copy())
    result = {}
    return (lambda: result.__setitem__("y", model(x)[0])), (lambda: result["y"])


def _onnxruntime_call(model, case: Case, x: np.ndarray, threads: int):
    session = onnxruntime_session(checks.onnx_twin(model, state_inputs=case.stream), threads)
    if case.stream:
        h = np.zeros((1, case.batch, case.hidden_size), np.float32)
        one_step = np.ones(case.batch, np.int32)

        def step():
            nonlocal h
            _, h = session.run(None, {"X": x[:1], "initial_h": h, "sequence_lens": one_step})
        return step, (lambda: h[0].copy())
    result = {}
    return (lambda: result.__setitem__("y", session.run(None, {"X": x})[0])), \
        (lambda: result["y"])


def torch_int8(module):
    """torch's dynamic int8 quantization of an nn.GRU or nn.GRUCell (its default qconfig: qint8
    weights, one scale per tensor)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's announced deprecation
        return torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(module), {type(module)}, dtype=torch.qint8)[0]


def _torch_call(model, case: Case, x: np.ndarray, threads: int, int8: bool):
    import torch

    from fastgru.loaders.torch import spec_to_state_dict

    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    if case.stream:
        cell = torch.nn.GRUCell(case.input_size, case.hidden_size).eval()
        cell.load_state_dict({k.replace("_l0", ""): torch.from_numpy(v.astype(np.float32))
                              for k, v in spec_to_state_dict(model.spec).items()})
        cell = torch_int8(cell) if int8 else cell
        h = torch.zeros(case.batch, case.hidden_size)

        def step():
            nonlocal h
            with torch.inference_mode():
                h = cell(xt[0], h)
        return step, (lambda: h.numpy().copy())
    module = checks.torch_module(model)
    module = torch_int8(module) if int8 else module
    result = {}

    def run():
        with torch.inference_mode():
            result["y"] = module(xt)[0]
    return run, (lambda: result["y"].numpy())


def make_call(runtime: str, case: Case, threads: int):
    """(call, output): one benchmark call, and a function returning the last call's result."""
    if case.whole_graph:
        return _whole_graph_call(runtime, case, threads)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")
    model = builtin_model(case)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.steps, case.batch, case.input_size)).astype(np.float32)
    if model.batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    if runtime.startswith("fastgru"):
        dtype = {"fastgru": "float32", "fastgru-bf16": "bfloat16", "fastgru-int8": "int8"}
        return _fastgru_call(model, case, x, dtype[runtime])
    if runtime.startswith("openvino"):
        return _openvino_call(model, case, x, threads, f32=runtime == "openvino-f32")
    if runtime == "onnxruntime":
        return _onnxruntime_call(model, case, x, threads)
    return _torch_call(model, case, x, threads, int8=runtime == "torch-int8")
