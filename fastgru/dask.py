"""Batch scoring on Dask: a fastgru model over dask arrays and Parquet datasets, on one machine or
a cluster (install ``fastgru[dask]``).

    y = fastgru.dask.predict(model, x)                  # x: dask.array (N, T, D), lazy result
    fastgru.dask.score_parquet(model, "in/", "out/")    # one row per sequence: id, x

An output is written aside (a hidden sibling folder) and renamed into place once whole, so a
failed run leaves no partial output; one that exists is refused unless told to overwrite, and an
output over the input (the same folder, inside it, or around it) is refused always
(`check_output`, `write_aside`).

The model travels to each worker once, as one task of the graph that every block depends on
(models pickle as their weights and options); workers load the kernels from Numba's on-disk
cache. Each worker computes its blocks with its own Numba threads: give a worker process its
share of the cores with NUMBA_NUM_THREADS in its environment (``fastgru score`` does for the
workers it starts); each task applies it (see `_use_worker_threads`).
Results are those of one in-process call on the same data, bit for bit (a row's result does not
depend on the other rows of its batch).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import numpy as np

from fastgru._model import GRU
from fastgru.batching import by_length, pad

OUTPUTS = ("y", "h_n", "last")


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ImportError("fastgru.dask needs dask: pip install 'fastgru[dask]'") from None
    return dask, da


def _check(model, output: str) -> None:
    if not isinstance(model, GRU):
        raise TypeError(f"model must be a fastgru.GRU, got {type(model).__name__}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def _outputs(model: GRU, y, h_n, lengths, output: str) -> np.ndarray:
    """What `output` asks for, batch-major: y (n, T, dirs*H), h_n (n, L*dirs, H), or the last
    valid output of each row (n, dirs*H).

    The "last" of a row of length 0 is its top layer's initial state, the directions side by
    side (zeros without a stored initial state): what h_n keeps for such a row, so that for a
    forward model "last" is h_n's top layer at every length."""
    if output == "y":
        return y
    if output == "h_n":
        return np.ascontiguousarray(h_n.transpose(1, 0, 2))
    n, T = y.shape[:2]
    dirs = model.spec.num_directions
    start = np.concatenate(list(h_n[-dirs:]), axis=-1)  # (n, dirs*H); used where length is 0
    steps = np.full(n, T) if lengths is None else np.asarray(lengths).reshape(-1)
    if T == 0:
        return start
    last = y[np.arange(n), np.maximum(steps - 1, 0)]
    empty = steps == 0
    last[empty] = start[empty]
    return last


def _model_task(dask, model: GRU):
    """The model, reading (B, T, D) blocks as the tasks hand them over, as one task of the
    graph that every block depends on: sent to each worker once."""
    return dask.delayed(GRU(model.spec, batch_first=True, dtype=model.precision), pure=True)


def _use_worker_threads() -> None:
    """Give this task's thread the worker's share of Numba threads: NUMBA_NUM_THREADS as the
    worker's environment says now. Numba reads it only once, at import, and a worker process
    that multiprocessing spawns imports the parent's __main__ module (and with it fastgru and
    Numba) before the nanny sets the worker's environment: two "1-thread" workers on 2 cores
    then ran 2 threads each, and scored 1.26x what one did."""
    import os

    import numba

    try:
        share = int(os.environ.get("NUMBA_NUM_THREADS", ""))
    except ValueError:
        return
    numba.set_num_threads(max(1, min(share, numba.config.NUMBA_NUM_THREADS)))


def _score_block(x, *rest, kind: str):
    """One block of rows: x (n, T, D), then lengths (n,) if given, then the model."""
    _use_worker_threads()
    *lengths, model = rest
    lengths = lengths[0] if lengths else None
    y, h_n = model(x, lengths=lengths)
    return _outputs(model, y, h_n, lengths, kind)


def predict(model: GRU, x, *, lengths=None, output: str = "y"):
    """Run `model` over a dask array of sequences; returns a lazy dask array.

    Parameters
    ----------
    model : fastgru.GRU
    x : dask.array, shape (N, T, D), chunked along N
        Any chunking along T or D is merged into one chunk (once, here): a block holds whole
        sequences.
    lengths : dask or NumPy array of int, shape (N,), optional
        Row b reads x[b, :lengths[b]], as with GRU.__call__.
    output : "y", "h_n" or "last"

    Returns
    -------
    dask.array: y (N, T, dirs*H), h_n (N, num_layers*dirs, H), or the last valid output of
    each sequence (N, dirs*H); chunked along N as x.
    """
    dask, da = _dask()
    _check(model, output)
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array (N, T, D), got {type(x).__name__}; "
                        f"wrap a NumPy array with dask.array.from_array")
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"x must have shape (N, T, {model.input_size}) (input_size features "
                         f"last), got {x.shape}")
    if any(np.isnan(c) for c in x.chunks[0]):
        raise ValueError("x has chunks of unknown size along N: call x.compute_chunk_sizes()")
    if len(x.chunks[1]) > 1 or len(x.chunks[2]) > 1:
        x = x.rechunk({1: -1, 2: -1})
    N, T = x.shape[:2]
    args = [x, "ntd"]
    if lengths is not None:
        lengths = lengths if isinstance(lengths, da.Array) else da.from_array(np.asarray(lengths))
        if lengths.shape != (N,):
            raise ValueError(f"lengths must have shape ({N},), one per sequence, got "
                             f"{lengths.shape}")
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got {lengths.dtype}")
        args += [lengths.rechunk((x.chunks[0],)), "n"]
    args += [_model_task(dask, model), None]
    dirs = model.spec.num_directions
    H = model.hidden_size
    index, new_axes = {"y": ("ntk", {"k": dirs * H}),
                       "h_n": ("nlh", {"l": model.num_layers * dirs, "h": H}),
                       "last": ("nk", {"k": dirs * H})}[output]
    return da.blockwise(_score_block, index, *args, kind=output, new_axes=new_axes,
                        concatenate=True, dtype=model.dtype,
                        meta=np.empty((0,) * len(index), model.dtype))


def _is_list(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or \
        pa.types.is_fixed_size_list(arrow_type)


def _sequences(column, ids, input_size: int, dtype, name: str) -> list[np.ndarray]:
    """A partition's column of sequences (Arrow lists of frames, each a list of input_size
    numbers) as (T, D) arrays; a null sequence, frame or number, or a frame of another size,
    is a ValueError naming the row's id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def refuse(row: int, what: str) -> ValueError:
        seq_id = pa.array(ids).slice(int(row), 1).to_pylist()[0]
        return ValueError(f"the row with id {seq_id!r}: {what}")

    def first(mask) -> int:
        return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])

    column = pa.array(column)
    expected = f"a list of frames per row, each a list of {input_size} numbers"
    if not _is_list(column.type):
        raise ValueError(f"{name!r} must hold {expected}; it holds {column.type}")
    if column.null_count:
        raise refuse(first(column.is_null()), f"its sequence in {name!r} is null")
    steps = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(steps)])
    frames = pc.list_flatten(column)

    def frame_at(k: int) -> tuple[int, int]:
        row = int(np.searchsorted(starts, k, side="right") - 1)
        return row, k - int(starts[row])

    if not _is_list(frames.type):
        raise ValueError(f"{name!r} must hold {expected}; it holds {column.type}")
    if frames.null_count:
        row, k = frame_at(first(frames.is_null()))
        raise refuse(row, f"frame {k} of its sequence in {name!r} is null")
    widths = pc.list_value_length(frames).to_numpy(zero_copy_only=False)
    if len(widths) and (widths != input_size).any():
        bad = int(np.flatnonzero(widths != input_size)[0])
        row, k = frame_at(bad)
        raise refuse(row, f"frame {k} of its sequence in {name!r} has {widths[bad]} numbers; "
                          f"expected {input_size}")
    values = pc.list_flatten(frames)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise ValueError(f"{name!r} must hold {expected}; it holds {column.type}")
    if values.null_count:
        row, k = frame_at(first(values.is_null()) // input_size)
        raise refuse(row, f"its sequence in {name!r} holds a null number (frame {k})")
    flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    flat = flat.reshape(-1, input_size)
    return [flat[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _score_frame(frame, model: GRU, id_column: str, frames_column: str, output: str,
                 batch_frames: int):
    """One partition: rows (id, frames) -> rows (id, output), sequences batched by length."""
    import pandas as pd

    _use_worker_threads()
    ids = frame[id_column]
    xs = _sequences(frame[frames_column], ids, model.input_size, model.dtype, frames_column)
    results = [None] * len(xs)
    steps = [len(x) for x in xs]
    for members in by_length(steps, batch_frames):
        batch = pad([xs[i] for i in members], model.input_size, model.dtype, batch_first=True)
        lengths = [steps[i] for i in members]
        y, h_n = model(batch, lengths=lengths)
        out = _outputs(model, y, h_n, lengths, output)
        for row, i in enumerate(members):
            value = out[row][:steps[i]] if output == "y" else out[row]
            results[i] = list(value) if value.ndim == 2 else value  # rows: nested lists
    return pd.DataFrame({id_column: ids.array, output: results})


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output(src: str, dst: str, *, overwrite: bool = False,
                 option: str = "overwrite=True") -> None:
    """Refuse to write `dst`: always when it is `src`, inside it or around it (symbolic links
    followed); when it exists (a file, or a folder that is not empty) unless `overwrite`.
    `option` is how the caller's user says overwrite, for the message."""
    source, target = os.path.realpath(src), os.path.realpath(dst)
    if _within(target, source) or _within(source, target):
        raise ValueError(f"the output would be written over the input: {dst!r} is "
                         f"{'the input ' if target == source else ''}{src!r}"
                         f"{'' if target == source else ' or holds it or lies inside it'}; "
                         f"choose an output outside the input")
    if os.path.lexists(dst) and not overwrite:
        if os.path.isdir(dst) and not os.path.islink(dst):
            if os.listdir(dst):
                raise ValueError(f"{dst!r} is not empty: pass {option} to replace it whole")
        else:
            raise ValueError(f"{dst!r} exists: pass {option} to replace it")


@contextlib.contextmanager
def write_aside(dst: str):
    """A path to write `dst`'s new content to (a file or a folder), in a hidden temporary folder
    beside it: when the block ends without error it replaces `dst` whole (renamed into place,
    the old content then deleted); on error nothing of it stays."""
    dst = os.path.abspath(dst)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    aside = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", suffix=".fastgru", dir=parent)
    try:
        path = os.path.join(aside, os.path.basename(dst))
        yield path
        if os.path.lexists(dst):
            old = os.path.join(aside, "old")
            os.rename(dst, old)
        os.rename(path, dst)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def score_parquet(model: GRU, src: str, dst: str, *, id_column: str = "id",
                  frames_column: str = "x", output: str = "y", batch_frames: int = 65_536,
                  overwrite: bool = False) -> int:
    """Score a Parquet dataset of sequences and write the outputs, with their ids, as Parquet.

    The layout read: one row per sequence, an id column (any type Parquet holds, nulls allowed:
    written back exactly) and a column holding the sequence as a list of frames, each a list of
    input_size numbers. Written: one row per sequence, the id and `output` ("y": its
    T x dirs*H outputs, "h_n": num_layers*dirs x H, "last": dirs*H numbers; the "last" of an
    empty sequence is the top layer's initial state, as h_n keeps it). Each partition's
    sequences are sorted by length and batched within `batch_frames` padded frames.

    `dst` must not exist, or be an empty folder, unless `overwrite`; it must not be `src`, nor
    inside or around it. The output is written aside and then renamed into place, replacing
    `dst` whole. Returns the number of sequences.

    Examples
    --------
    The input, as pandas writes it: each row's sequence as a list of frames (pandas cannot
    write a column of (T, D) arrays themselves: pyarrow's ArrowInvalid). Here `model` is a
    fastgru.GRU of input_size 4 and `folder` a folder to write in:

    >>> import os
    >>> import numpy as np, pandas as pd
    >>> import fastgru.dask
    >>> xs = [np.ones((3, 4), np.float32), np.zeros((5, 4), np.float32)]
    >>> os.makedirs(f"{folder}/in")
    >>> pd.DataFrame({"id": [10, 11], "x": [list(x) for x in xs]}).to_parquet(
    ...     f"{folder}/in/part0.parquet")
    >>> fastgru.dask.score_parquet(model, f"{folder}/in", f"{folder}/out", output="last")
    2
    >>> out = pd.read_parquet(f"{folder}/out")
    >>> out["id"].tolist()
    [10, 11]
    >>> np.array_equal(np.stack(out["last"]), [model(x)[0][-1] for x in xs])
    True
    """
    dask, _ = _dask()
    import dask.dataframe as dd
    import pyarrow as pa
    import pyarrow.dataset as ds

    _check(model, output)
    src, dst = os.path.abspath(src), os.path.abspath(dst)  # as the workers see them
    check_output(src, dst, overwrite=overwrite)
    schema = ds.dataset(src, format="parquet").schema
    missing = [c for c in (id_column, frames_column) if c not in schema.names]
    if missing:
        raise ValueError(f"{src!r} has no column {missing[0]!r}; its columns are "
                         f"{schema.names} (choose them with id_column= / frames_column=)")
    # Arrow types in the partitions: NumPy's would turn int64 ids with a null into float64
    frame = dd.read_parquet(src, columns=[id_column, frames_column], dtype_backend="pyarrow")
    meta = {id_column: frame[id_column].dtype, output: object}
    scored = frame.map_partitions(_score_frame, _model_task(dask, model), id_column,
                                  frames_column, output, batch_frames, meta=meta)
    value = pa.float64() if model.dtype == np.float64 else pa.float32()
    column = pa.list_(value) if output == "last" else pa.list_(pa.list_(value))
    with write_aside(dst) as aside:
        scored.to_parquet(aside, write_index=False,
                          schema=pa.schema([schema.field(id_column), pa.field(output, column)]))
        return ds.dataset(aside, format="parquet").count_rows()
