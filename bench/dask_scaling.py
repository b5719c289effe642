#!/usr/bin/env python
"""Scoring throughput on Dask: sequences/s of fastgru in one process, of fastgru.dask with 1 and
2 local worker processes, and of the same Dask pipeline with onnxruntime doing the GRU.

    .venv/bin/python bench/dask_scaling.py [--sequences 20000] [--chunk 256]

Sequences T=100, D=64, H=256 (the built-in S2 model's weights), batch-major, in blocks of
`--chunk` sequences. Workers: 1 with 1 thread, 1 with every core, and 2 sharing the cores
(NUMBA_NUM_THREADS, and onnxruntime's intra-op threads alike). Each figure is the best of 2 runs
after a warm-up run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import fastgru
import fastgru.dask as fastgru_dask
from fastgru.benchmark import SHAPES, onnxruntime_session, builtin_model

_SESSIONS: dict = {}


def _onnxruntime_block(x, proto: bytes, threads: int):
    """The GRU of one block by onnxruntime (one session per worker process)."""
    session = _SESSIONS.get(proto)
    if session is None:
        session = _SESSIONS[proto] = onnxruntime_session(proto, threads)
    return session.run(None, {"X": np.ascontiguousarray(x)})[0]


def best_rate(run, count: int) -> float:
    run()  # warm-up: kernels loaded, model and sessions on the workers
    return max(count / _seconds(run) for _ in range(2))


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> int:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sequences", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()
    model = builtin_model(SHAPES["S2"])
    x = np.random.default_rng(0).standard_normal((args.sequences, 100, 64), dtype=np.float32)
    cores = os.cpu_count() or 1
    rows = [("fastgru, one process, no Dask", best_rate(
        lambda: fastgru.GRU(model.spec, batch_first=True)(x), len(x)))]
    batch_first = fastgru.GRU(model.spec, batch_first=True)
    proto = batch_first.to_onnx().SerializeToString()
    for workers, share in ((1, 1), (1, cores), (2, max(1, cores // 2))):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", env={"NUMBA_NUM_THREADS": str(share)}) as c, \
                Client(c) as client:
            # one future per block, spread evenly over the workers (a broadcast array rechunked
            # on the workers left them 18 and 14 blocks of 32: an imbalance, not a cost of ours)
            starts = range(0, len(x), args.chunk)
            parts = client.scatter([x[i:i + args.chunk] for i in starts])
            blocks = da.concatenate([da.from_delayed(part, (min(args.chunk, len(x) - i),
                                                            *x.shape[1:]), x.dtype)
                                     for part, i in zip(parts, starts, strict=True)])
            ours = fastgru_dask.predict(model, blocks)
            rows.append((f"fastgru.dask, {workers} worker(s) x {share} thread(s)",
                         best_rate(ours.sum().compute, len(x))))
            theirs = blocks.map_blocks(_onnxruntime_block, dask.delayed(proto), share,
                                       chunks=(blocks.chunks[0], (100,), (256,)),
                                       dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
            rows.append((f"Dask + onnxruntime, {workers} worker(s) x {share} thread(s)",
                         best_rate(theirs.sum().compute, len(x))))
    print(f"{args.sequences} sequences, T=100, D=64, H=256, blocks of {args.chunk}, "
          f"{cores} cores\n")
    print("| pipeline | sequences/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
