#!/usr/bin/env python
"""Largest |fastgru - reference| per configuration family, as a Markdown table.

    .venv/bin/python tools/accuracy.py

References: PyTorch (nn.GRU, nn.GRUCell, and model files as PyTorch and its two ONNX exporters
write them), onnxruntime (one GRU node, and fastgru's own ONNX export), and the float64
reference in fastgru/testing/reference.py. D=16, H=32, T=20, B=4, seeded. It builds its models
with fastgru.testing, as the test suite does.
Then the drift suite's long sequences through trained-like models (tests/test_drift.py): each
float32 runtime's largest difference from the same network in float64.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
import tempfile
import warnings

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

import fastgru
from fastgru.testing.models import onnx_gru_model, random_spec, run_onnxruntime, spec_layers
from fastgru.testing.reference import reference_gru
from fastgru.testing.torch_models import run_torch, torch_gru
from fastgru.testing.trained import (CASES, RECIPES, long_input, long_sequence_errors, max_error,
                                     trained)

D, H, T, B = 16, 32, 20, 4
LENGTHS = [T, 3, 11, 1]


class Worst:
    """The largest absolute difference seen per family, in the order families first appear."""

    def __init__(self) -> None:
        self.rows: dict[str, float] = {}

    def add(self, family: str, *pairs) -> None:
        for a, b in pairs:
            diff = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
            self.rows[family] = max(self.rows.get(family, 0.0), diff)


def torch_families(worst: Worst, rng) -> None:
    for dtype in ("float32", "float64"):
        family = (f"torch.nn.GRU, 1-3 layers, uni/bi, bias or not, batch_first, h0, lengths "
                  f"({dtype} model against torch {dtype})")
        for L, bi, bias, bf in itertools.product([1, 2, 3], [False, True], [True, False],
                                                 [False, True]):
            module = torch_gru(D, H, L, bi, bias, bf, getattr(torch, dtype))
            model = fastgru.GRU.from_torch(module, dtype=dtype)
            x = rng.standard_normal((B, T, D) if bf else (T, B, D))
            h0 = rng.standard_normal((L * (2 if bi else 1), B, H))
            for lengths in (None, LENGTHS):
                worst.add(family, *zip(model(x, h0, lengths=lengths),
                                       run_torch(module, x, h0, lengths), strict=True))
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(D, H).eval()
    stream = fastgru.GRU.from_torch(cell).stream(B)
    h = torch.zeros(B, H)
    for _ in range(50):
        x = rng.standard_normal((B, D))
        with torch.no_grad():
            h = cell(torch.as_tensor(x, dtype=torch.float32), h)
        worst.add("nn.GRUCell through a stream, 50 steps", (stream.step(x), h.numpy()))


def onnxruntime_families(worst: Worst, rng) -> None:
    for direction, lbr in itertools.product(["forward", "reverse", "bidirectional"], [1, 0]):
        family = (f"onnxruntime GRU node, {direction}, linear_before_reset={lbr}, "
                  f"clip none/1.5, h0, lengths")
        for clip in (None, 1.5):
            spec = random_spec(rng, D, H, 1, direction, bool(lbr), clip=clip)
            model = fastgru.GRU.from_onnx(onnx_gru_model(spec))
            x = 2 * rng.standard_normal((T, B, D))
            h0 = rng.standard_normal((spec.num_directions, B, H))
            for lengths in (None, LENGTHS):
                y, h_n = model(x, h0, lengths=lengths)
                Y, Y_h = run_onnxruntime(spec, x, lengths, h0)
                Y = Y.transpose(0, 2, 1, 3).reshape(T, B, -1)
                worst.add(family, (y, Y), (h_n, Y_h))


def reference_families(worst: Worst, rng) -> None:
    lengths = [T, 0, 11, 1]
    for dtype in ("float32", "float64"):
        family = (f"float64 reference (fastgru/testing/reference.py), all directions, "
                  f"both variants, 1 and 3 layers, a length-0 row ({dtype} model)")
        for direction, lbr, L in itertools.product(["forward", "reverse", "bidirectional"],
                                                   [True, False], [1, 3]):
            model = fastgru.GRU(random_spec(rng, D, H, L, direction, lbr), dtype=dtype)
            x = rng.standard_normal((T, B, D))
            h0 = rng.standard_normal((L * model.spec.num_directions, B, H))
            expected = reference_gru(x, spec_layers(model.spec), direction=direction,
                                     linear_before_reset=lbr, h0=h0, lengths=lengths)
            worst.add(family, *zip(model(x, h0, lengths=lengths), expected, strict=True))


def file_families(worst: Worst, rng, folder: str) -> None:
    for L, bi, bf in itertools.product([1, 2, 3], [False, True], [False, True]):
        module = torch_gru(D, H, L, bi, batch_first=bf)
        x = rng.standard_normal((B, T, D) if bf else (T, B, D))
        h0 = rng.standard_normal((L * (2 if bi else 1), B, H))
        expected = run_torch(module, x, h0)
        torch.save({"state_dict": module.state_dict()}, f"{folder}/m.pt")
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  f"{folder}/m.safetensors")
        for name, family in (("m.pt", "torch.save checkpoint (nested state_dict)"),
                             ("m.safetensors", "safetensors.torch.save_file")):
            model = fastgru.load(f"{folder}/{name}", batch_first=bf)
            worst.add(f"{family}, against PyTorch",
                      *zip(model(x, h0), expected, strict=True))
        for dynamo in (False, True):
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (torch.as_tensor(x, dtype=torch.float32),
                                           torch.as_tensor(h0, dtype=torch.float32)),
                                  f"{folder}/m.onnx", input_names=["x", "h0"], dynamo=dynamo,
                                  opset_version=18 if dynamo else 14)
            worst.add(f"torch.onnx.export(dynamo={dynamo}), against PyTorch",
                      *zip(fastgru.load(f"{folder}/m.onnx")(x, h0), expected, strict=True))
        model = fastgru.load(f"{folder}/m.pt", batch_first=bf)
        session = ort.InferenceSession(model.to_onnx(state_inputs=True).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        lengths = np.array(LENGTHS, np.int32)
        ours = model(x, h0, lengths=lengths)
        theirs = session.run(None, {"X": x.astype(np.float32), "initial_h": h0.astype(np.float32),
                                    "sequence_lens": lengths})
        worst.add("fastgru to_onnx run by onnxruntime (h0, lengths), against fastgru",
                  *zip(theirs, ours, strict=True))


def main() -> int:
    rng = np.random.default_rng(0)
    worst = Worst()
    torch_families(worst, rng)
    onnxruntime_families(worst, rng)
    reference_families(worst, rng)
    with tempfile.TemporaryDirectory() as folder:
        file_families(worst, rng, folder)
    print("| reference | max abs diff |\n|---|---|")
    for family, diff in worst.rows.items():
        print(f"| {family} | {diff:.1e} |")
    print()
    long_sequences()
    print()
    bfloat16_long_sequences()
    print()
    int8_long_sequences()
    return 0


def bfloat16_long_sequences() -> None:
    """bfloat16 runtimes on the trained-like models: each of fastgru's kernel paths this CPU runs
    (weights widened to float32; dot products, operands rounded too, where the CPU has
    AVX512_BF16; AMX tiles where it has AMX), the float64 run of the rounded weights (the floor
    for any bfloat16 runtime of these weights), PyTorch's bfloat16 GRU and, where installed,
    OpenVINO's default precision; max abs diff from the float64 network."""
    import copy
    import importlib.util

    from fastgru.kernels.cpu import BF16_PATHS as PATHS

    paths = [f"fastgru-bf16 {path}" for path in PATHS]
    peers = [*paths, "rounded weights in float64", "PyTorch bfloat16", "OpenVINO default"]
    print("bfloat16 over long sequences, max abs diff from the float64 network:\n")
    print("| model | T | " + " | ".join(peers) + " |\n|---|---|" + "---|" * len(peers))
    for name, steps in (("slow-units", 3_000), ("stack-256", 1_000), ("bidirectional", 1_000)):
        module = copy.deepcopy(trained(name))
        x = long_input(np.random.default_rng(5), steps, 2, module.input_size)
        truth = run_torch(module.double(), x.astype(np.float64))
        module.float()
        errors = {}
        for kernel_path, label in zip(PATHS, paths, strict=True):
            model = fastgru.GRU(fastgru.GRU.from_torch(module).spec, dtype="bfloat16",
                                kernel_path=kernel_path)
            errors[label] = max_error(model(x), truth)
        rounded = fastgru.GRU(model.spec, dtype="float64")
        errors[peers[-3]] = max_error(rounded(x.astype(np.float64)), truth)
        with torch.no_grad():
            errors[peers[-2]] = max_error([a.float().numpy() for a in copy.deepcopy(module)
                                          .bfloat16()(torch.from_numpy(x).bfloat16())], truth)
        if importlib.util.find_spec("openvino") is not None:
            import openvino

            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "model.onnx")
                fastgru.GRU.from_torch(module).to_onnx(path)
                core = openvino.Core()
                compiled = core.compile_model(core.read_model(path), "CPU")
            outputs = compiled.create_infer_request().infer({"X": x})
            errors[peers[-1]] = max_error([outputs[o] for o in compiled.outputs], truth)
        cells = [f"{errors[p]:.1e}" if p in errors else "-" for p in peers]
        print(f"| {name} | {steps} | {' | '.join(cells)} |")


def int8_long_sequences() -> None:
    """int8 runtimes on the trained-like models and random S2-S6-like ones: each of fastgru's
    int8 kernel paths this CPU runs (weights widened; vnni: operands quantized per row too) and
    PyTorch's dynamic int8 GRU (quantize_dynamic, qint8 per tensor), each from the float
    weights; max abs diff from the float64 network of those float weights, N(0,1) inputs for the
    random ones."""
    import copy

    from fastgru.benchmark.peers import torch_int8
    from fastgru.kernels.cpu import INT8_PATHS as PATHS

    paths = [f"fastgru-int8 {path}" for path in PATHS]
    peers = [*paths, "PyTorch int8"]
    print("int8, max abs diff from the float64 network:\n")
    print("| model | T | " + " | ".join(peers) + " |\n|---|---|" + "---|" * len(peers))
    torch.manual_seed(0)
    random = {f"random D={d} H={h}": torch.nn.GRU(d, h) for d, h in ((64, 256), (256, 512),
                                                                    (256, 1024))}
    cases = [("slow-units", 3_000), ("stack-256", 1_000), ("bidirectional", 1_000),
             *((name, 1_000) for name in random)]
    for name, steps in cases:
        module = copy.deepcopy(random[name] if name in random else trained(name)).float()
        rng = np.random.default_rng(5)
        x = (rng.standard_normal((steps, 1, module.input_size)).astype(np.float32)
             if name in random else long_input(rng, steps, 2, module.input_size))
        truth = run_torch(copy.deepcopy(module).double(), x.astype(np.float64))
        errors = {label: max_error(fastgru.GRU(fastgru.GRU.from_torch(module).spec, dtype="int8",
                                               kernel_path=path)(x), truth)
                  for path, label in zip(PATHS, paths, strict=True)}
        with torch.no_grad():
            errors[peers[-1]] = max_error([a.numpy() for a in torch_int8(module)(
                torch.from_numpy(x))], truth)
        print(f"| {name} | {steps} | {' | '.join(f'{errors[p]:.1e}' for p in peers)} |")


def long_sequences() -> None:
    """The drift suite's cases (tests/test_drift.py): trained-like models over long inputs,
    each float32 runtime's largest difference from the same network in float64."""
    print("Long sequences, trained-like models (fastgru/testing/trained.py), max abs diff from "
          "float64:\n")
    print("| model | T | lengths | linear_before_reset | fastgru | onnxruntime | PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for name, steps, lengths, lbr in CASES:
        recipe = RECIPES[name]
        errors, _, _ = long_sequence_errors(name, steps, lengths, lbr)
        shape = (f"{name}: {recipe.num_layers} layer(s), D={recipe.input_size}, "
                 f"H={recipe.hidden_size}{', bidirectional' if recipe.bidirectional else ''}")
        cells = [f"{errors[k]:.1e}" if k in errors else "-"
                 for k in ("fastgru", "onnxruntime", "PyTorch")]
        print(f"| {shape} | {steps} | {lengths or 'full'} | {int(lbr)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(main())
