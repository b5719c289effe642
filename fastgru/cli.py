"""The ``fastgru`` command: info, convert, run, check and bench on model files.

ONNX files that are more than a GRU stack (a network with GRUs inside) run whole through
fastgru.InferenceSession in info, run, check and bench.

Errors about the user's files or arguments print one line and exit with status 2: so do
onnxruntime's own errors while running a whole graph, and sizes or thread counts beyond what
this machine can run (checked before any work starts).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

from fastgru._model import GRU

# |fastgru - reference| <= ATOL + RTOL * |reference| for `fastgru check` (float32 models).
ATOL, RTOL = 1e-5, 1e-4
# --batch and --seq of check and bench: at most this each, and within the memory available.
MAX_BATCH = MAX_SEQ = 1 << 20


class UsageError(Exception):
    """A problem with the command line or the user's files: one line, exit status 2."""


def _load_options(args) -> dict:
    """fastgru.load's options from --prefix, --node, --layer, --batch-first and --dtype."""
    options = {name: getattr(args, name) for name in ("prefix", "node", "layer")
               if getattr(args, name) is not None}
    if args.batch_first:
        options["batch_first"] = True
    if args.dtype != "float32":
        options["dtype"] = args.dtype
    return options


def _load(path, args):
    import fastgru

    return fastgru.load(path, **_load_options(args))


def _open(path, args):
    """The model file read once: a fastgru.GRU, or, for an ONNX file that is more than a GRU
    stack, a fastgru.InferenceSession over the whole graph."""
    import fastgru
    from fastgru.loaders import files

    try:
        return _load(path, args)
    except fastgru.FormatError as error:
        if files.sniff(files.check_file(path)) != "onnx":
            raise
        try:
            session = fastgru.InferenceSession(path)
        except fastgru.FormatError:
            raise error from None
    _refuse_load_options_on_whole_graph(path, args)
    _quiet_onnxruntime()
    return session


def _refuse_load_options_on_whole_graph(path, args) -> None:
    """--dtype and --batch-first change a GRU model; fastgru.InferenceSession takes neither, so
    a whole graph refuses them rather than run without them."""
    for given, option in ((args.dtype != "float32", "--dtype"),
                          (args.batch_first, "--batch-first")):
        if given:
            raise UsageError(f"{option} applies to GRU models; {path!r} is a whole ONNX graph, "
                             f"run as the file says by fastgru.InferenceSession, which takes "
                             f"no {option}")


def _quiet_onnxruntime() -> None:
    """onnxruntime logs a failing node on stderr before raising; the error line says it once."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def _is_onnxruntime_error(error: BaseException) -> bool:
    """onnxruntime's exceptions derive from Exception only: known by their module."""
    return type(error).__module__.startswith("onnxruntime")


def _available_memory() -> int:
    """Bytes this machine can still give: MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_sizes(batch: int, seq: int, values_per_step) -> None:
    """--batch and --seq within bounds, and the arrays of one run (about 16 bytes per value of
    `values_per_step` per batch row and step: float32 in and out, float64 for the comparison,
    the peer's copy) within the memory available, before any is made."""
    if batch < 1 or seq < 1:
        raise UsageError(f"--batch and --seq must be positive, got {batch}, {seq}")
    for value, most, option in ((batch, MAX_BATCH, "--batch"), (seq, MAX_SEQ, "--seq")):
        if value > most:
            raise UsageError(f"{option} {value} is too large: at most {most}")
    needed = 16 * batch * seq * values_per_step
    available = _available_memory()
    if needed > available // 2:
        raise UsageError(f"--batch {batch} x --seq {seq} needs about {needed / 2**30:.1f} GiB; "
                         f"this machine has {available / 2**30:.1f} GiB available: use less")


def _values_per_step(model) -> int:
    """Values per batch row and step a run holds: inputs, and for a GRU model its outputs and
    gate projections; for a whole graph its inputs (fixed dims as given), eight times over for
    the outputs unseen."""
    if isinstance(model, GRU):
        dirs = 2 if model.bidirectional else 1
        return model.input_size + 4 * model.num_layers * dirs * model.hidden_size
    per_step = 0
    for arg in model.get_inputs():
        dims = [d for d in (arg.shape or [])[2:] if isinstance(d, int) and d > 0]
        per_step += int(np.prod(dims, dtype=np.int64))
    return 8 * max(per_step, 1)


def _info_whole_graph(path, session) -> int:
    print(f"model:   {path} (an ONNX graph with more than GRUs: fastgru.InferenceSession)")
    for arg in session.get_inputs():
        print(f"input:   {arg.name} {arg.type} {arg.shape}")
    for arg in session.get_outputs():
        print(f"output:  {arg.name} {arg.type} {arg.shape}")
    for k, line in enumerate(session.describe()):
        print(f"stage {k}: {line}")
    return 0


def cmd_info(args) -> int:
    model = _open(args.model, args)
    if not isinstance(model, GRU):
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
    model = _load(args.src, args)
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


def _npy_header(path, what="input"):
    """(shape, dtype) of a .npy file, its header checked against the file's size."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} file at {path!r}")
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + needed > os.path.getsize(path):
            raise ValueError(f"its header claims {shape} {dtype} ({needed} bytes), the file "
                             f"holds {os.path.getsize(path) - offset}")
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"{path!r} is not a readable NumPy .npy file: {error}") from None
    return shape, dtype


def _npy(path, what):
    """A .npy file's array, its header checked against the file's size before reading."""
    _npy_header(path, what)
    return np.load(path, allow_pickle=False)


def _npy_rows(path, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a .npy file (a task of fastgru score, run where the file is)."""
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])


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
    model = _open(args.model, args)
    if not isinstance(model, GRU):
        return _run_whole_graph(model, inputs, outputs, args)
    if set(inputs) != {""} or set(outputs) != {""}:
        raise UsageError("a GRU model takes one --input FILE.npy and one --output FILE.npy")
    x = _npy(inputs[""], "input")
    h0 = _npy(args.h0, "h0") if args.h0 else None
    lengths = _npy(args.lengths, "lengths") if args.lengths else None
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
    feeds = {name: _npy(path, f"input {name!r}") for name, path in inputs.items()}
    results = session.run(list(outputs), feeds)
    for (name, path), value in zip(outputs.items(), results, strict=True):
        np.save(path, value)
        print(f"wrote {path} ({name}) {value.shape}")
    return 0


def _onnxruntime_outputs(model, path, x):
    """Y in fastgru's layout from onnxruntime, running the user's own ONNX file when it is one."""
    import onnx
    import onnxruntime as ort

    if path.lower().endswith(".onnx"):
        proto = onnx.load(path)
    else:  # onnxruntime's GRU is float32 only: a float64 model is checked through its twin
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


def _check_whole_graph(args, session) -> int:
    import onnxruntime as ort

    from fastgru.benchmark import random_feeds

    feeds = random_feeds(session.get_inputs(), args.batch, args.seq, args.seed)
    try:
        peer = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        expected = peer.run(None, feeds)
    except Exception as error:  # onnxruntime raises its own exception types
        raise UsageError(f"onnxruntime cannot run {args.model!r}: {error}") from None
    worst = 0.0
    for arg, ours, ref in zip(session.get_outputs(), session.run(None, feeds), expected,
                              strict=True):
        ref = np.asarray(ref, np.float64)
        err = np.abs(np.asarray(ours, np.float64) - ref)
        excess = float((err - (ATOL + RTOL * np.abs(ref))).max()) if err.size else 0.0
        worst = max(worst, excess)
        print(f"onnxruntime  {arg.name}: max abs diff {err.max() if err.size else 0:.2e}  "
              f"({'ok' if excess <= 0 else 'ABOVE'} tolerance {ATOL} + {RTOL}*|ref|)")
    return 0 if worst <= 0 else 1


def cmd_check(args) -> int:
    if args.batch < 1 or args.seq < 1:
        raise UsageError(f"--batch and --seq must be positive, got {args.batch}, {args.seq}")
    model = _open(args.model, args)
    _check_sizes(args.batch, args.seq, _values_per_step(model))
    if not isinstance(model, GRU):
        return _check_whole_graph(args, model)
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


def _open_array(path: str, chunk: int):
    """A dask array (N, T, D) from a .npy (memory-mapped) or .zarr input."""
    import dask.array as da

    if path.rstrip("/").endswith(".zarr"):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no Zarr store at {path!r}")
        x = da.from_zarr(path)
    else:  # each task reads its own rows from the file, which the workers must see
        import dask

        shape, dtype = _npy_header(path)
        if len(shape) != 3:
            raise _not_sequences(path, shape)
        N, T, D = shape
        x = da.concatenate([
            da.from_delayed(dask.delayed(_npy_rows)(path, start, min(N, start + chunk)),
                            shape=(min(N, start + chunk) - start, T, D), dtype=dtype)
            for start in range(0, N, chunk)]) if N else da.zeros((0, T, D), dtype)
    if x.ndim != 3:
        raise _not_sequences(path, x.shape)
    return x.rechunk((chunk, -1, -1))


def _not_sequences(path: str, shape) -> UsageError:
    return UsageError(f"{path!r} holds shape {shape}; fastgru score reads (N, T, D) sequences, "
                      f"batch-major")


def _cluster(args):
    """A client of the scheduler at --scheduler, else of a local cluster sized to this machine
    (--workers processes, one Dask thread each, Numba threads sharing the cores out)."""
    from distributed import Client, LocalCluster

    if args.scheduler:
        return Client(args.scheduler), None
    workers = args.workers or max(1, os.cpu_count() or 1)
    share = str(max(1, (os.cpu_count() or 1) // workers))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", env={"NUMBA_NUM_THREADS": share})
    return Client(cluster), cluster


def cmd_score(args) -> int:
    import contextlib
    import time

    try:
        import fastgru.dask as fastgru_dask
        from distributed import progress
    except ImportError:
        raise ImportError("fastgru score needs dask: pip install 'fastgru[dask]'") from None
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    if args.chunk < 1:
        raise UsageError(f"--chunk must be positive, got {args.chunk}")
    # the workers read and write the files: paths as this folder sees them, whatever theirs is
    source, target = os.path.abspath(args.input), os.path.abspath(args.output_path)
    fastgru_dask.check_output(source, target, overwrite=args.overwrite, option="--overwrite")
    model = _load(args.model, args)
    parquet = os.path.isdir(source) and not source.rstrip("/").endswith(".zarr")
    if not parquet:
        x = _open_array(source, args.chunk)
        lengths = _npy(args.lengths, "lengths") if args.lengths else None
        result = fastgru_dask.predict(model, x, lengths=lengths, output=args.output)
    client, cluster = _cluster(args)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar goes to stderr
            if parquet:
                count = fastgru_dask.score_parquet(model, source, target, output=args.output,
                                                   overwrite=args.overwrite)
            else:
                count = x.shape[0]
                with fastgru_dask.write_aside(target) as aside:
                    to_zarr = target.rstrip("/").endswith(".zarr")
                    future = client.compute(result.to_zarr(aside, compute=False) if to_zarr
                                            else result)
                    progress(future, scheduler=client.scheduler.address, multi=False)
                    computed = future.result()
                    if not to_zarr:
                        with open(aside, "wb") as f:
                            np.save(f, computed)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    seconds = time.perf_counter() - start
    print(f"scored {count} sequences into {args.output_path} in {seconds:.1f} s: "
          f"{count / seconds:.0f} sequences/s")
    return 0


def cmd_bench(args) -> int:
    from fastgru.benchmark import bench

    _check_threads(args.threads)
    if args.model:
        _check_sizes(args.batch, args.seq, _values_per_step(_open(args.model, args)))
    return bench(args)


def _check_threads(threads: str) -> None:
    """Thread counts beyond Numba's pool for this machine are refused up front (a count of
    100000 ran on for minutes); the rest of --threads is checked by fastgru.benchmark."""
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        return
    if counts and max(counts) > most:
        raise UsageError(f"--threads: at most {most} on this machine "
                         f"(numba.config.NUMBA_NUM_THREADS), got {max(counts)}")


def build_parser() -> argparse.ArgumentParser:
    from fastgru.benchmark import add_arguments

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
    group.add_argument("--dtype", default="float32",
                       help="float32 (default), float64, or bfloat16 (weights in bfloat16, "
                            "inputs and outputs float32)")
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
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_check)
    p = add("score", help="score a dataset on Dask: .npy, .zarr or a Parquet folder")
    p.add_argument("model")
    p.add_argument("input", help=".npy or .zarr of (N, T, D) sequences, or a Parquet folder "
                                 "(one row per sequence: id, x)")
    p.add_argument("output_path", metavar="output",
                   help=".npy or .zarr (array input), or a Parquet folder (Parquet input)")
    p.add_argument("--scheduler", help="a Dask scheduler's address; default: a local cluster")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--output", default="y", choices=["y", "h_n", "last"],
                   help="y (N, T, dirs*H), h_n (N, layers*dirs, H) or last (N, dirs*H)")
    p.add_argument("--lengths", help=".npy of (N,) valid lengths (array input)")
    p.add_argument("--chunk", type=int, default=256, help="sequences per task (array input)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output that exists (written aside, then renamed into place)")
    p.set_defaults(func=cmd_score)
    p = add("bench", help="time fastgru against onnxruntime (and PyTorch)")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)
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
        if not _is_onnxruntime_error(error):
            raise
        message = " ".join(str(error).split())  # one line
        print(f"fastgru {args.command}: error: onnxruntime failed: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
