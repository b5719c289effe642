"""The ``fastgru`` command: info, convert, run, check, bench, score and warmup.

ONNX files that are more than a GRU stack (a network with GRUs inside) run whole through
fastgru.InferenceSession in info, run, check and bench. check, bench and score live in
fastgru/commands/; this module builds the parser and runs the smaller commands.

Errors about the user's files or arguments print one line and exit with status 2: so do
onnxruntime's own errors while running a whole graph, and sizes or thread counts beyond what
this machine can run (checked before any work starts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from fastgru.commands import bench, check, score
from fastgru.commands.common import (UsageError, is_gru, is_onnxruntime_error, load_model, npy,
                                     open_model)


def _info_whole_graph(path, session) -> int:
    print(f"model:   {path} (an ONNX graph with more than GRUs: fastgru.InferenceSession)")
    for arg in session.get_inputs():
        print(f"input:   {arg.name} {arg.type} {arg.shape}")
    for arg in session.get_outputs():
        print(f"output:  {arg.name} {arg.type} {arg.shape}")
    lines = session.describe()
    stages = [line for line in lines if line.startswith(("fastgru:", "onnxruntime:"))]
    for k, line in enumerate(stages):
        print(f"stage {k}: {line}")
    for line in lines[len(stages):]:  # notes and the plan, after the stages
        print(line)
    return 0


def cmd_info(args) -> int:
    model = open_model(args.model, args)
    if not is_gru(model):
        return _info_whole_graph(args.model, model)
    spec = model.spec
    params = sum(layer.w.size + layer.r.size + layer.b.size for layer in spec.layers)
    dirs = spec.num_directions
    flops = sum(dirs * 6 * model.hidden_size * (layer.w.shape[-1] + model.hidden_size)
                for layer in spec.layers)
    print(f"model:               {args.model}")
    print(f"layers:              {model.num_layers}")
    print(f"direction:           {model.direction}")
    print(f"input_size:          {model.input_size}")
    print(f"hidden_size:         {model.hidden_size}")
    print(f"linear_before_reset: {int(model.linear_before_reset)}")
    print(f"clip:                {model.clip}")
    print(f"batch_first:         {model.batch_first}")
    print(f"dtype:               {model.precision}")
    print(f"parameters:          {params}")
    print(f"FLOPs per step:      {flops} per batch row (multiply-add = 2)")
    return 0


def cmd_convert(args) -> int:
    model = load_model(args.src, args)
    suffix = os.path.splitext(args.dst)[1].lower()
    if suffix == ".onnx":
        model.to_onnx(args.dst)
    elif suffix == ".safetensors":
        model.save(args.dst)
    elif suffix in (".pt", ".pth"):
        import torch

        from fastgru.loaders.torch import spec_to_state_dict

        state = {k: torch.from_numpy(v.astype(model.dtype)) for k, v in
                 spec_to_state_dict(model.spec).items()}
        torch.save(state, args.dst)
    else:
        raise UsageError(f"cannot write {args.dst!r}: the destination must end in .onnx, "
                         f".safetensors (fastgru's format), .pt or .pth")
    print(f"wrote {args.dst}")
    return 0


def _named_files(values, what) -> dict[str, str]:
    """{name: path} from NAME=FILE arguments; a bare FILE gets the name ""."""
    named = {}
    for value in values:
        name, sep, path = value.rpartition("=")
        named[name if sep else ""] = path
    if "" in named and len(named) > 1:
        raise UsageError(f"give every {what} as NAME=FILE.npy when there are several")
    return named


def cmd_run(args) -> int:
    inputs = _named_files(args.input, "--input")
    outputs = _named_files(args.output, "--output")
    model = open_model(args.model, args)
    if not is_gru(model):
        return _run_whole_graph(model, inputs, outputs, args)
    if set(inputs) != {""} or set(outputs) != {""}:
        raise UsageError("a GRU model takes one --input FILE.npy and one --output FILE.npy")
    x = npy(inputs[""], "input")
    h0 = npy(args.h0, "h0") if args.h0 else None
    lengths = npy(args.lengths, "lengths") if args.lengths else None
    y, h_n = model(x, h0, lengths=lengths)
    np.save(outputs[""], y)
    if args.output_state:
        np.save(args.output_state, h_n)
    print(f"wrote {outputs['']} {y.shape}" + (f" and {args.output_state} {h_n.shape}"
                                              if args.output_state else ""))
    return 0


def _run_whole_graph(session, inputs, outputs, args) -> int:
    if args.h0 or args.lengths or args.output_state:
        raise UsageError("--h0, --lengths and --output-state are for GRU models; a whole graph "
                         "takes its inputs as --input NAME=FILE.npy")
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if "" in inputs:
        if len(graph_inputs) != 1:
            raise UsageError(f"the model has inputs {graph_inputs}: give each as "
                             f"--input NAME=FILE.npy")
        inputs = {graph_inputs[0]: inputs[""]}
    if "" in outputs:
        outputs = {graph_outputs[0]: outputs[""]}
    unknown = sorted(set(outputs) - set(graph_outputs))
    if unknown:
        raise UsageError(f"unknown output(s) {unknown}; the model's outputs are {graph_outputs}")
    feeds = {name: npy(path, f"input {name!r}") for name, path in inputs.items()}
    results = session.run(list(outputs), feeds)
    for (name, path), value in zip(outputs.items(), results, strict=True):
        np.save(path, value)
        print(f"wrote {path} ({name}) {value.shape}")
    return 0


def cmd_warmup(args) -> int:
    """fastgru.warmup() with its progress on stderr: the compile notice, then a line per kernel
    group with its seconds."""
    import fastgru

    dtypes = [d for d in args.dtype.split(",") if d]
    if not dtypes:
        raise UsageError("--dtype takes comma-separated dtypes, e.g. float32,bfloat16")
    log = logging.getLogger("fastgru")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        fastgru.warmup(dtypes, clip=args.clip)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fastgru import __version__

    parser = argparse.ArgumentParser(prog="fastgru",
                                     description="Run trained GRUs fast on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastgru {__version__}")
    reading = argparse.ArgumentParser(add_help=False)
    group = reading.add_argument_group("reading the model (fastgru.load's options)")
    group.add_argument("--batch-first", action="store_true",
                       help="the model reads (B, T, D): PyTorch state dicts do not record it")
    group.add_argument("--prefix", help="the GRU's key prefix in a larger PyTorch state dict")
    group.add_argument("--node", help="one GRU node of an ONNX graph, by name")
    group.add_argument("--layer", help="one GRU layer of a Keras file, by name")
    group.add_argument("--dtype",
                       help="float32, float64, bfloat16 or int8 (weights in bfloat16 or int8, "
                            "inputs and outputs float32); default: int8 where every layer is "
                            "stored quantized, else float32 (as fastgru.load)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, **kwargs):
        return sub.add_parser(name, parents=[reading], **kwargs)

    p = add("info", help="describe a model file (for a whole ONNX graph: what runs "
                                    "where)")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)
    p = add("convert", help="convert between PyTorch, ONNX and fastgru files")
    p.add_argument("src")
    p.add_argument("dst", help="its suffix picks the format: .onnx, .safetensors, .pt/.pth")
    p.set_defaults(func=cmd_convert)
    p = add("run", help="inference on NumPy files")
    p.add_argument("model")
    p.add_argument("--input", required=True, action="append",
                   help=".npy, (T, B, D) or (B, T, D) if batch_first; for a whole ONNX graph "
                        "NAME=FILE.npy per graph input")
    p.add_argument("--output", required=True, action="append",
                   help=".npy receiving y; for a whole ONNX graph NAME=FILE.npy per output "
                        "wanted (a bare FILE.npy: the first output)")
    p.add_argument("--output-state", help=".npy receiving h_n")
    p.add_argument("--lengths", help=".npy of (B,) integers")
    p.add_argument("--h0", help=".npy of (num_layers*dirs, B, H)")
    p.set_defaults(func=cmd_run)
    p = add("check", help="compare fastgru with onnxruntime and PyTorch on random input")
    check.add_arguments(p)
    p.set_defaults(func=check.cmd_check)
    p = add("score", help="score a dataset on Dask: .npy, .zarr or a Parquet folder")
    score.add_arguments(p)
    p.set_defaults(func=score.cmd_score)
    p = add("bench", help="time fastgru against onnxruntime (and PyTorch)")
    bench.add_arguments(p)
    p.set_defaults(func=bench.cmd_bench)
    p = sub.add_parser("warmup", help="compile the kernels ahead of time (e.g. in an image "
                                      "build), with progress on stderr")
    p.add_argument("--dtype", default="float32",
                   help="comma-separated: float32 (default), float64, bfloat16, int8")
    p.add_argument("--clip", action="store_true",
                   help="also the kernels of models with an ONNX clip")
    p.set_defaults(func=cmd_warmup)
    return parser


def main(argv=None) -> int:
    from fastgru.errors import FormatError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FormatError, FileNotFoundError, ValueError, TypeError, ImportError,
            MemoryError) as error:
        print(f"fastgru {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not is_onnxruntime_error(error):
            raise
        message = " ".join(str(error).split())  # one line
        print(f"fastgru {args.command}: error: onnxruntime failed: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
