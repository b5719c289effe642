"""``fastgru check``: fastgru against onnxruntime and PyTorch on random input, judged at the
tolerance of the model's precision (fastgru.checks), on the sizes the file fixes unless
--batch/--seq say others; the output says which sizes ran and which tolerance applied."""

from __future__ import annotations

import importlib.util

import numpy as np

from fastgru import checks
from fastgru._onnxruntime import cpu_session
from fastgru.commands.common import (UsageError, check_sizes, is_gru, open_model,
                                     values_per_step)

DEFAULT_BATCH, DEFAULT_SEQ = 3, 20


def add_arguments(parser) -> None:
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size (default: the file's when it fixes one, else "
                             f"{DEFAULT_BATCH})")
    parser.add_argument("--seq", type=int, default=None,
                        help=f"steps (default: the file's when it fixes them, else "
                             f"{DEFAULT_SEQ})")
    parser.add_argument("--seed", type=int, default=0)


def _size(given, fixed, default: int, option: str, name: str) -> tuple[int, str]:
    """(size, where it came from): --option, else the file's fixed size, else the default."""
    if given is None:
        return (fixed, "the file's") if fixed else (default, "default")
    if fixed and given != fixed:
        raise UsageError(f"{option} {given}: the file fixes the {name} at {fixed} and "
                         f"onnxruntime runs the file as it is; leave {option} out")
    return given, option


def _reference_session(model, path: str):
    """onnxruntime on the user's own ONNX file, or on the graph fastgru writes for the weights
    it read (other formats, and the precisions onnxruntime's GRU lacks)."""
    from fastgru.loaders import files

    own_file = files.sniff(path) == "onnx"
    try:
        return cpu_session(path if own_file else checks.onnx_twin(model, state_inputs=True),
                           quiet=True), own_file
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot load {path!r}: {error}") from None


def _is_pytorch_file(path: str) -> bool:
    from fastgru.loaders import files, native

    kind = files.sniff(path)
    return not (kind == "onnx" or (kind == "safetensors" and
                                   native.is_native(files.read_safetensors(path)[1])))


def _report(name: str, agreement: checks.Agreement, precision: str) -> None:
    print(f"{name:12s} max abs diff {agreement.max_abs_diff:.2e}  "
          f"({'ok' if agreement.ok else 'ABOVE'} tolerance {checks.describe_tolerance(precision)})")


def _check_whole_graph(args, session) -> int:
    batch, seq = args.batch or DEFAULT_BATCH, args.seq or DEFAULT_SEQ
    check_sizes(batch, seq, values_per_step(session))
    feeds = checks.random_feeds(session.get_inputs(), batch, seq, args.seed)
    try:
        expected = cpu_session(args.model).run(None, feeds)
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot run {args.model!r}: {error}") from None
    print("ran:         " + ", ".join(f"{name} {value.shape}" for name, value in feeds.items())
          + f" (dims the file does not fix: batch {batch}, seq {seq})")
    ok = True
    for arg, ours, ref in zip(session.get_outputs(), session.run(None, feeds), expected,
                              strict=True):
        agreement = checks.compare(ours, ref, "float32")
        ok = ok and agreement.ok
        _report(f"onnxruntime  {arg.name}:", agreement, "float32")
    return 0 if ok else 1


def cmd_check(args) -> int:
    shown = (DEFAULT_BATCH if args.batch is None else args.batch,
             DEFAULT_SEQ if args.seq is None else args.seq)
    if min(shown) < 1:
        raise UsageError(f"--batch and --seq must be positive, got {shown[0]}, {shown[1]}")
    model = open_model(args.model, args)
    if not is_gru(model):
        return _check_whole_graph(args, model)
    precision = model.precision
    checks.tolerance(precision)  # a precision without one is refused before any work
    session, own_file = _reference_session(model, args.model)
    fixed_batch, fixed_seq = checks.fixed_sizes(session, model.batch_first) if own_file else \
        (None, None)
    batch, batch_from = _size(args.batch, fixed_batch, DEFAULT_BATCH, "--batch", "batch")
    seq, seq_from = _size(args.seq, fixed_seq, DEFAULT_SEQ, "--seq", "sequence length")
    check_sizes(batch, seq, values_per_step(model))
    rng = np.random.default_rng(args.seed)
    shape = (batch, seq) if model.batch_first else (seq, batch)
    x = rng.standard_normal((*shape, model.input_size)).astype(np.float32)
    print(f"ran:         batch {batch} ({batch_from}), seq {seq} ({seq_from}), x {x.shape}, "
          f"{precision}")
    y = model(x)[0]
    try:
        references = {"onnxruntime": checks.onnxruntime_output(session, model, x)}
    except ValueError as error:
        raise UsageError(f"{error} of {args.model!r}") from None
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot run {args.model!r}: {error}") from None
    if importlib.util.find_spec("torch") is not None and checks.torch_comparable(model) \
            and _is_pytorch_file(args.model):
        references["torch"] = checks.torch_output(model, x)
    ok = True
    for name, ref in references.items():
        agreement = checks.compare(y, ref, precision)
        ok = ok and agreement.ok
        _report(name, agreement, precision)
    return 0 if ok else 1
