#!/usr/bin/env python
"""Whole ONNX networks: fastgru.InferenceSession against onnxruntime on the same file.

    .venv/bin/python bench/whole_models.py [--threads 1,2] [--seconds 1] [--rounds 3]

The networks of tests/test_session.py at realistic sizes (H=256, T=100), exported by
torch.onnx.export: a conv front-end -> 2-layer GRU -> Linear -> Sigmoid mask (B=1), an
encoder-decoder with two 2-layer GRU stacks (B=1), a 2-layer bidirectional batch_first stack
(B=8), and a streaming step whose GRU states are graph inputs and outputs (B=1, one frame).
Each runtime runs in its own process at the same thread count, medians after warm-up (the
runner of `fastgru bench`). Then the cost of one boundary between fastgru and onnxruntime: a
GRU node alone against the same node followed by one Identity run by onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import fastgru  # noqa: E402
from fastgru.benchmark import Case, median_seconds, run, table  # noqa: E402
from test_session import (BidirectionalBatchFirst, EncoderDecoder, MaskNet,  # noqa: E402
                          StreamingNet, export)

H, T = 256, 100


def networks():
    """(name, module, example inputs, input names, output names, batch, steps)."""
    torch.manual_seed(0)
    return [
        ("mask", MaskNet(64, H), (torch.zeros(1, T, 64),), ["x"], ["mask"], 1, T),
        ("encoder-decoder", EncoderDecoder(64, H), (torch.zeros(T, 1, 64), torch.zeros(T, 1, 64)),
         ["source", "target"], ["logits"], 1, T),
        ("bidirectional", BidirectionalBatchFirst(64, H), (torch.zeros(8, T, 64),), ["x"],
         ["y", "h"], 8, T),
        ("streaming step", StreamingNet(64, H), (torch.zeros(1, 1, 64), torch.zeros(2, 1, H)),
         ["frame", "state_in"], ["out", "state_out"], 1, 1),
    ]


def boundary_cost(folder: str, threads: int, seconds: float) -> tuple[float, float]:
    """Median µs of a GRU node alone and of the same node plus one Identity, both run by
    fastgru.InferenceSession in this process (B=1, T=100, D=64, H=256)."""
    import onnx
    from onnx import helper

    model = fastgru.GRU.from_torch(torch.nn.GRU(64, H)).to_onnx()
    plus = onnx.ModelProto()
    plus.CopyFrom(model)
    plus.graph.output[0].name = "Y_after"
    plus.graph.node.append(helper.make_node("Identity", ["Y"], ["Y_after"]))
    x = {"X": np.random.default_rng(0).standard_normal((T, 1, 64)).astype(np.float32)}
    medians = []
    for proto in (model, plus):
        session = fastgru.InferenceSession(proto, threads=threads)
        session.run(None, x)
        medians.append(median_seconds(lambda s=session: s.run(None, x), seconds, 20) * 1e6)
    return medians[0], medians[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        for name, module, example, inputs, outputs, batch, steps in networks():
            path = export(module, example, os.path.join(folder, f"{name.replace(' ', '_')}.onnx"),
                          (inputs, outputs), dynamo=False)
            cases.append(Case(name, batch, steps, 64, H, model_path=path, whole_graph=True))
        records = run(cases, ["fastgru", "onnxruntime"], threads, args.seconds, args.rounds)
        print(table(records, cases))
        print("\n| threads | GRU node alone µs | + one onnxruntime boundary µs | boundary µs |")
        print("|---|---|---|---|")
        for n in threads:
            alone, plus = boundary_cost(folder, n, args.seconds)
            print(f"| {n} | {alone:.1f} | {plus:.1f} | {plus - alone:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
