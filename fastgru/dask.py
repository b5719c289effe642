"""Batch scoring on Dask: a fastgru model over dask arrays and Parquet datasets, on one machine or
a cluster (install ``fastgru[dask]``).

    y = fastgru.dask.predict(model, x)                  # x: dask.array (N, T, D), lazy result
    fastgru.dask.score_parquet(model, "in/", "out/")    # one row per sequence: id, x

The model travels to each worker once, as one task of the graph that every block depends on
(models pickle as their weights and options); workers load the kernels from Numba's on-disk
cache. Each worker computes its blocks with its own Numba threads: give a worker process its
share of the cores with NUMBA_NUM_THREADS in its environment (``fastgru score`` does for the
workers it starts); each task applies it (see `_use_worker_threads`).
Results are those of one in-process call on the same data, bit for bit (a row's result does not
depend on the other rows of its batch).
"""

from __future__ import annotations

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
    valid output of each row (n, dirs*H), zeros for a row of length 0."""
    if output == "y":
        return y
    if output == "h_n":
        return np.ascontiguousarray(h_n.transpose(1, 0, 2))
    n, T = y.shape[:2]
    steps = np.full(n, T) if lengths is None else np.asarray(lengths).reshape(-1)
    last = y[np.arange(n), np.maximum(steps - 1, 0)]
    last[steps == 0] = 0
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
    dirs = 2 if model.bidirectional else 1
    H = model.hidden_size
    index, new_axes = {"y": ("ntk", {"k": dirs * H}),
                       "h_n": ("nlh", {"l": model.num_layers * dirs, "h": H}),
                       "last": ("nk", {"k": dirs * H})}[output]
    return da.blockwise(_score_block, index, *args, kind=output, new_axes=new_axes,
                        concatenate=True, dtype=model.dtype,
                        meta=np.empty((0,) * len(index), model.dtype))


def _score_frame(frame, model: GRU, id_column: str, frames_column: str, output: str,
                 batch_frames: int):
    """One partition: rows (id, frames) -> rows (id, output), sequences batched by length."""
    import pandas as pd

    _use_worker_threads()
    xs = [np.asarray(np.stack(list(v)) if len(v) else np.zeros((0, model.input_size)),
                     model.dtype) for v in frame[frames_column]]
    for x in xs:
        if x.ndim != 2 or x.shape[1] != model.input_size:
            raise ValueError(f"a sequence in {frames_column!r} has shape {x.shape}; expected "
                             f"(T, {model.input_size}) frames")
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
    return pd.DataFrame({id_column: frame[id_column].to_numpy(), output: results})


def score_parquet(model: GRU, src: str, dst: str, *, id_column: str = "id",
                  frames_column: str = "x", output: str = "y", batch_frames: int = 65_536):
    """Score a Parquet dataset of sequences and write the outputs, with their ids, as Parquet.

    The layout read: one row per sequence, an id column and a column holding the sequence as a
    list of frames (each a list of input_size numbers), as pandas writes a column of (T, D)
    arrays. Written: one row per sequence, the id and `output` ("y": its T x dirs*H outputs,
    "h_n": num_layers*dirs x H, "last": dirs*H numbers). Each partition's sequences are sorted
    by length and batched within `batch_frames` padded frames. Returns the number of sequences.
    """
    dask, _ = _dask()
    import dask.dataframe as dd

    _check(model, output)
    frame = dd.read_parquet(src)
    missing = [c for c in (id_column, frames_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"{src!r} has no column {missing[0]!r}; its columns are "
                         f"{list(frame.columns)} (choose them with id_column= / frames_column=)")
    meta = {id_column: frame[id_column].dtype, output: object}
    scored = frame.map_partitions(_score_frame, _model_task(dask, model), id_column,
                                  frames_column, output, batch_frames, meta=meta)
    import pyarrow as pa

    value = pa.float64() if model.dtype == np.float64 else pa.float32()
    column = pa.list_(value) if output == "last" else pa.list_(pa.list_(value))
    ids = pa.Schema.from_pandas(frame._meta[[id_column]], preserve_index=False)
    scored.to_parquet(dst, write_index=False,
                      schema=pa.schema([ids.field(id_column), pa.field(output, column)]))
    return int(len(dd.read_parquet(dst)))
