"""The ``fastgru`` command: info, convert, run, check and bench on model files.

Errors about the user's files or arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

# |fastgru - reference| <= ATOL + RTOL * |reference| for `fastgru check` (float32 models).
ATOL, RTOL = 1e-5, 1e-4


class UsageError(Exception):
    """A problem with the command line or the user's files: one line, exit status 2."""


def _load(path, **options):
    import fastgru

    return fastgru.load(path, **options)


def cmd_info(args) -> int:
    model = _load(args.model)
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
    print(f"dtype:               {model.dtype.name}")
    print(f"parameters:          {params}")
    print(f"FLOPs per step:      {flops} per batch row (multiply-add = 2)")
    return 0


def cmd_convert(args) -> int:
    model = _load(args.src)
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


def _npy(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} file at {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise UsageError(f"{path!r} is not a NumPy .npy file: {error}") from None


def cmd_run(args) -> int:
    model = _load(args.model)
    x = _npy(args.input, "input")
    h0 = _npy(args.h0, "h0") if args.h0 else None
    lengths = _npy(args.lengths, "lengths") if args.lengths else None
    y, h_n = model(x, h0, lengths=lengths)
    np.save(args.output, y)
    if args.output_state:
        np.save(args.output_state, h_n)
    print(f"wrote {args.output} {y.shape}" + (f" and {args.output_state} {h_n.shape}"
                                              if args.output_state else ""))
    return 0


def _onnxruntime_outputs(model, path, x):
    """Y in fastgru's layout from onnxruntime, running the user's own ONNX file when it is one."""
    import onnx
    import onnxruntime as ort

    if path.lower().endswith(".onnx"):
        proto = onnx.load(path)
    else:  # onnxruntime's GRU is float32 only: a float64 model is checked through its twin
        from fastgru import GRU

        proto = GRU(model.spec, batch_first=model.batch_first).to_onnx(state_inputs=True)
    try:
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot load {path!r}: {error}") from None
    B = x.shape[0 if model.batch_first else 1]
    T = x.shape[1 if model.batch_first else 0]
    dirs = 2 if model.bidirectional else 1
    feeds = {}
    for i, graph_input in enumerate(session.get_inputs()):
        if i == 0:
            feeds[graph_input.name] = x
        elif "int" in graph_input.type:
            feeds[graph_input.name] = np.full(B, T, np.int32)
        elif len(graph_input.shape) == 3:
            feeds[graph_input.name] = np.zeros((model.num_layers * dirs, B, model.hidden_size),
                                               np.float32)
        else:
            raise UsageError(f"cannot feed input {graph_input.name!r} {graph_input.shape} of "
                             f"{path!r}")
    try:
        y = session.run(None, feeds)[0]
    except Exception as error:
        raise UsageError(f"onnxruntime cannot run {path!r}: {error}") from None
    if y.ndim == 4:  # a bare GRU node: (T, dirs, B, H), or (B, T, dirs, H) with layout=1
        y = y.reshape(*y.shape[:2], -1) if model.batch_first else \
            y.transpose(0, 2, 1, 3).reshape(T, B, -1)
    return y


def _torch_outputs(model, path, x):
    """Y from PyTorch for PyTorch files, or None when the file is not one."""
    import torch

    from fastgru.loaders import files, native
    from fastgru.loaders.torch import module_from_spec

    kind = files.sniff(path)
    if kind == "onnx" or (kind == "safetensors" and
                          native.is_native(files.read_safetensors(path)[1])):
        return None
    # The round trip through spec_to_state_dict undoes the loader's gate reordering, so this
    # module computes the file's own weights: a misread would show as a difference.
    module = module_from_spec(model.spec, batch_first=model.batch_first)
    with torch.inference_mode():
        return module(torch.from_numpy(x))[0].numpy()


def cmd_check(args) -> int:
    model = _load(args.model)
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.seq) if model.batch_first else (args.seq, args.batch)
    x = rng.standard_normal((*shape, model.input_size)).astype(np.float32)
    y = model(x)[0]
    worst = 0.0
    references = {"onnxruntime": _onnxruntime_outputs(model, args.model, x)}
    if importlib.util.find_spec("torch") is not None and model.linear_before_reset \
            and model.clip is None and model.direction != "reverse":
        references["torch"] = _torch_outputs(model, args.model, x)
    for name, ref in references.items():
        if ref is None:
            continue
        err = np.abs(y.astype(np.float64) - ref)
        excess = float((err - (ATOL + RTOL * np.abs(ref))).max())
        worst = max(worst, excess)
        print(f"{name:12s} max abs diff {err.max():.2e}  "
              f"({'ok' if excess <= 0 else 'ABOVE'} tolerance {ATOL} + {RTOL}*|ref|)")
    return 0 if worst <= 0 else 1


def cmd_bench(args) -> int:
    from fastgru.benchmark import bench

    return bench(args)


def build_parser() -> argparse.ArgumentParser:
    from fastgru.benchmark import add_arguments

    parser = argparse.ArgumentParser(prog="fastgru",
                                     description="Run trained GRUs fast on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("convert", help="convert between PyTorch, ONNX and fastgru files")
    p.add_argument("src")
    p.add_argument("dst", help="its suffix picks the format: .onnx, .safetensors, .pt/.pth")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("run", help="inference on NumPy files")
    p.add_argument("model")
    p.add_argument("--input", required=True, help=".npy, (T, B, D) or (B, T, D) if batch_first")
    p.add_argument("--output", required=True, help=".npy receiving y")
    p.add_argument("--output-state", help=".npy receiving h_n")
    p.add_argument("--lengths", help=".npy of (B,) integers")
    p.add_argument("--h0", help=".npy of (num_layers*dirs, B, H)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="compare fastgru with onnxruntime and PyTorch on random input")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("bench", help="time fastgru against onnxruntime (and PyTorch)")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    from fastgru.errors import FormatError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FormatError, FileNotFoundError, ValueError, TypeError,
            ImportError) as error:
        print(f"fastgru {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
