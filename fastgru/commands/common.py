"""What the subcommands share: reading the model with fastgru.load's options, .npy files, and
the checks of sizes and thread counts made before any work starts.

Errors about the user's files or arguments are UsageError (or FormatError, FileNotFoundError,
ValueError...): fastgru.cli.main prints them as one line and exits with status 2.
"""

from __future__ import annotations

import os

import numpy as np

# --batch and --seq of check and bench: at most this each, and within the memory available.
MAX_BATCH = MAX_SEQ = 1 << 20


class UsageError(Exception):
    """A problem with the command line or the user's files: one line, exit status 2."""


def load_options(args) -> dict:
    """fastgru.load's options from --prefix, --node, --layer, --batch-first and --dtype."""
    options = {name: getattr(args, name) for name in ("prefix", "node", "layer")
               if getattr(args, name) is not None}
    if args.batch_first:
        options["batch_first"] = True
    if args.dtype is not None:
        options["dtype"] = args.dtype
    return options


def load_model(path, args):
    import fastgru

    return fastgru.load(path, **load_options(args))


def open_model(path, args):
    """The model file read once: a fastgru.GRU, or, for an ONNX file that is more than a GRU
    stack, a fastgru.InferenceSession over the whole graph."""
    import fastgru
    from fastgru.loaders import files

    try:
        return load_model(path, args)
    except fastgru.FormatError as error:
        if files.sniff(files.check_file(path)) != "onnx":
            raise
        try:
            session = fastgru.InferenceSession(path)
        except fastgru.FormatError:
            raise error from None
    _refuse_load_options_on_whole_graph(path, args)
    quiet_onnxruntime()
    return session


def is_gru(model) -> bool:
    """Whether open_model gave a GRU model (else a whole-graph session)."""
    from fastgru._model import GRU

    return isinstance(model, GRU)


def _refuse_load_options_on_whole_graph(path, args) -> None:
    """--dtype and --batch-first change a GRU model; the commands run a whole graph as the file
    says (check's tolerance and bench's workers take no precision for it), so they refuse them
    rather than run without them."""
    for given, option, instead in (
            (args.dtype is not None, "--dtype",
             "; in Python, InferenceSession(path, dtype=...) sets its GRUs' precision"),
            (args.batch_first, "--batch-first", "")):
        if given:
            raise UsageError(f"{option} applies to GRU models; {path!r} is a whole ONNX graph, "
                             f"run by fastgru.InferenceSession as the file says{instead}")


def quiet_onnxruntime() -> None:
    """onnxruntime logs a failing node on stderr before raising; the error line says it once."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def is_onnxruntime_error(error: BaseException) -> bool:
    """onnxruntime's exceptions derive from Exception only: known by their module."""
    return type(error).__module__.startswith("onnxruntime")


def available_memory() -> int:
    """Bytes this machine can still give: MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_sizes(batch: int, seq: int, values_per_step) -> None:
    """--batch and --seq within bounds, and the arrays of one run (about 16 bytes per value of
    `values_per_step` per batch row and step: float32 in and out, float64 for the comparison,
    the peer's copy) within the memory available, before any is made."""
    if batch < 1 or seq < 1:
        raise UsageError(f"--batch and --seq must be positive, got {batch}, {seq}")
    for value, most, option in ((batch, MAX_BATCH, "--batch"), (seq, MAX_SEQ, "--seq")):
        if value > most:
            raise UsageError(f"{option} {value} is too large: at most {most}")
    needed = 16 * batch * seq * values_per_step
    available = available_memory()
    if needed > available // 2:
        raise UsageError(f"--batch {batch} x --seq {seq} needs about {needed / 2**30:.1f} GiB; "
                         f"this machine has {available / 2**30:.1f} GiB available: use less")


def values_per_step(model) -> int:
    """Values per batch row and step a run holds: inputs, and for a GRU model its outputs and
    gate projections; for a whole graph its inputs (fixed dims as given), eight times over for
    the outputs unseen."""
    if is_gru(model):
        dirs = model.spec.num_directions
        return model.input_size + 4 * model.num_layers * dirs * model.hidden_size
    per_step = 0
    for arg in model.get_inputs():
        dims = [d for d in (arg.shape or [])[2:] if isinstance(d, int) and d > 0]
        per_step += int(np.prod(dims, dtype=np.int64))
    return 8 * max(per_step, 1)


def check_threads(threads: str) -> None:
    """Thread counts beyond Numba's pool for this machine are refused up front (a count of
    100000 ran on for minutes); the rest of --threads is checked by the bench command."""
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        return
    if counts and max(counts) > most:
        raise UsageError(f"--threads: at most {most} on this machine "
                         f"(numba.config.NUMBA_NUM_THREADS), got {max(counts)}")


def npy_header(path, what="input"):
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


def npy(path, what):
    """A .npy file's array, its header checked against the file's size before reading."""
    npy_header(path, what)
    return np.load(path, allow_pickle=False)
