"""``fastgru score``: a dataset (.npy, .zarr or a Parquet folder) scored on Dask."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from fastgru.commands.common import UsageError, load_model, npy, npy_header


def add_arguments(parser) -> None:
    parser.add_argument("model")
    parser.add_argument("input", help=".npy or .zarr of (N, T, D) sequences, or a Parquet folder "
                                      "(one row per sequence: id, x)")
    parser.add_argument("output_path", metavar="output",
                        help=".npy or .zarr (array input), or a Parquet folder (Parquet input)")
    parser.add_argument("--scheduler", help="a Dask scheduler's address; default: a local "
                                            "cluster")
    parser.add_argument("--workers", type=int,
                        help="local worker processes (default: one per core)")
    parser.add_argument("--output", default="y", choices=["y", "h_n", "last"],
                        help="y (N, T, dirs*H), h_n (N, layers*dirs, H) or last (N, dirs*H)")
    parser.add_argument("--lengths", help=".npy of (N,) valid lengths (array input)")
    parser.add_argument("--chunk", type=int, default=256,
                        help="sequences per task (array input)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output that exists (written aside, then renamed into "
                             "place)")


def npy_rows(path, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a .npy file (a task of fastgru score, run where the file is)."""
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])


def _open_array(path: str, chunk: int):
    """A dask array (N, T, D) from a .npy (memory-mapped) or .zarr input."""
    import dask.array as da

    if path.rstrip("/").endswith(".zarr"):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no Zarr store at {path!r}")
        x = da.from_zarr(path)
    else:  # each task reads its own rows from the file, which the workers must see
        import dask

        shape, dtype = npy_header(path)
        if len(shape) != 3:
            raise _not_sequences(path, shape)
        N, T, D = shape
        x = da.concatenate([
            da.from_delayed(dask.delayed(npy_rows)(path, start, min(N, start + chunk)),
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
    model = load_model(args.model, args)
    parquet = os.path.isdir(source) and not source.rstrip("/").endswith(".zarr")
    if not parquet:
        x = _open_array(source, args.chunk)
        lengths = npy(args.lengths, "lengths") if args.lengths else None
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
