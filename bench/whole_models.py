#!/usr/bin/env python
"""Whole ONNX networks: fastgru.InferenceSession against onnxruntime on the same file.

    .venv/bin/python bench/whole_models.py [--threads 1,2] [--seconds 1] [--rounds 3]
                                           [--exporters legacy,dynamo] [--models DIR]

The networks of tests/test_session.py (fastgru/testing/torch_models.py) at realistic sizes (H=256,
T=100), exported by both of torch.onnx.export's exporters (dynamo=True, torch's default, and the
legacy TorchScript one) with a dynamic batch axis (torch specializes the GRU's time axis): a conv
front-end -> 2-layer GRU -> Linear -> Sigmoid mask (B=1), an encoder-decoder with two 2-layer GRU
stacks (B=1), a 2-layer bidirectional batch_first stack (B=8), and a streaming step whose GRU states
are graph inputs and outputs (B=1, one frame). The session runs with its default plan="auto" (the
staged plan or onnxruntime alone, whichever its first calls time faster). Each runtime runs in its
own process at the same thread count, medians after warm-up (the runner of `fastgru bench`); each
round gives a ratio, onnxruntime's time / the session's. Then, in this process: the plan auto keeps
per network, and the cost of one boundary between fastgru and onnxruntime (the staged plan on a GRU
node alone against the same node followed by one Identity run by onnxruntime).

The dynamo exporter takes minutes on these networks: --models DIR keeps the files and reuses
them on the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

import fastgru
from fastgru.benchmark import Case, median_seconds, run
from fastgru.testing.torch_models import (BidirectionalBatchFirst, EncoderDecoder, MaskNet,
                                          StreamingNet)

H, T = 256, 100


def networks():
    """(name, module, example inputs, input names, output names, batch axis of each input,
    batch). The examples have batch 2: the dynamo exporter specializes an axis of size 1."""
    torch.manual_seed(0)
    return [
        ("mask", MaskNet(64, H), (torch.zeros(2, T, 64),), ["x"], ["mask"], [0], 1),
        ("encoder-decoder", EncoderDecoder(64, H), (torch.zeros(T, 2, 64), torch.zeros(T, 2, 64)),
         ["source", "target"], ["logits"], [1, 1], 1),
        ("bidirectional", BidirectionalBatchFirst(64, H), (torch.zeros(2, T, 64),), ["x"],
         ["y", "h"], [0], 8),
        ("streaming step", StreamingNet(64, H), (torch.zeros(1, 2, 64), torch.zeros(2, 2, H)),
         ["frame", "state_in"], ["out", "state_out"], [1, 1], 1),
    ]


def export(module, example, names, axes, path: str, dynamo: bool) -> str:
    """torch.onnx.export with a dynamic batch axis; an existing file is reused."""
    if os.path.exists(path):
        return path
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(module.eval(), example, path, input_names=names[0],
                              output_names=names[1], dynamo=True, opset_version=18,
                              dynamic_shapes=tuple({axis: batch} for axis in axes))
        else:
            torch.onnx.export(module.eval(), example, path, input_names=names[0],
                              output_names=names[1], dynamo=False, opset_version=14,
                              dynamic_axes={n: {axis: "batch"} for n, axis in
                                            zip(names[0], axes, strict=True)})
    return path


def chosen_plan(path: str, batch: int, threads: int) -> str:
    """The plan an auto session keeps for the benchmark's feeds (timed here, in this process)."""
    from fastgru.benchmark import random_feeds

    session = fastgru.InferenceSession(path, threads=threads)
    feeds = random_feeds(session.get_inputs(), batch, batch)
    for _ in range(200):
        session.run(None, feeds)
        (plan,) = session.plans.values()
        if plan is not None:
            return plan
    return "still timing after 200 calls"


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
        session = fastgru.InferenceSession(proto, threads=threads, plan="staged")
        session.run(None, x)
        medians.append(median_seconds(lambda s=session: s.run(None, x), seconds, 20) * 1e6)
    return medians[0], medians[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exporters", default="legacy,dynamo")
    parser.add_argument("--models", help="a folder that keeps the exported files between runs")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    exporters = args.exporters.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or scratch
        os.makedirs(folder, exist_ok=True)
        cases, labels = [], {}
        for exporter in exporters:
            for name, module, example, inputs, outputs, axes, batch in networks():
                print(f"exporting {name} ({exporter})", file=sys.stderr, flush=True)
                path = export(module, example, (inputs, outputs), axes, os.path.join(
                    folder, f"{name.replace(' ', '_')}-{exporter}.onnx"), exporter == "dynamo")
                # every file fixes T, so each of its free axes is the batch: random_feeds puts
                # `batch` in a first axis and `steps` in any other
                case = Case(f"{name}-{exporter}", batch, batch, 64, H, model_path=path,
                            whole_graph=True)
                cases.append(case)
                labels[case.name] = (name, exporter, batch)
        ratios: dict = {}
        for _ in range(args.rounds):  # a round at a time: the goal holds in every round
            for r in run(cases, ["fastgru", "onnxruntime"], threads, args.seconds, 1):
                ratios.setdefault((r["case"], r["threads"]), {})[r["runtime"]] = \
                    ratios.get((r["case"], r["threads"]), {}).get(r["runtime"], []) + \
                    [r["median_s"]]
        print("| network | exporter | B | threads | onnxruntime µs | session µs "
              "| onnxruntime / session, each round | plan kept |")
        print("|---|---|---|---|---|---|---|---|")
        for case in cases:
            name, exporter, batch = labels[case.name]
            for n in threads:
                times = ratios[(case.name, n)]
                each = [o / f for o, f in zip(times["onnxruntime"], times["fastgru"],
                                              strict=True)]
                print(f"| {name} | {exporter} | {batch} | {n} "
                      f"| {np.median(times['onnxruntime']) * 1e6:.1f} "
                      f"| {np.median(times['fastgru']) * 1e6:.1f} "
                      f"| {' / '.join(f'{x:.2f}' for x in each)} "
                      f"| {chosen_plan(case.model_path, batch, n)} |")
        print("\n| threads | GRU node alone µs | + one onnxruntime boundary µs | boundary µs |")
        print("|---|---|---|---|")
        for n in threads:
            alone, plus = boundary_cost(folder, n, args.seconds)
            print(f"| {n} | {alone:.1f} | {plus:.1f} | {plus - alone:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
