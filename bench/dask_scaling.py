#!/usr/bin/env python
"""Scoring throughput on Dask: sequences/s of fastgru in one process, of fastgru.dask with 1 and
2 local worker processes, and of the same Dask pipeline with onnxruntime doing the GRU.

    .venv/bin/python bench/dask_scaling.py [--sequences 20000] [--chunk 256]

Sequences T=100, D=64, H=256 (the built-in S2 model's weights), batch-major, in blocks of
`--chunk` sequences. Workers: 1 with 1 thread, 1 with every core, and 2 sharing the cores
(NUMBA_NUM_THREADS, and onnxruntime's intra-op threads alike). Each figure is the best of 2 runs
after a warm-up run. For the Dask pipelines, one more run under Dask's task stream gives the
median compute time of a block's task and the share of the workers' time spent outside any
task (scheduling, transfers, idle: the per-task overhead).
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


def task_profile(client, run, workers: int, blocks: int) -> tuple[float, float]:
    """(median seconds of a block's task, share of the workers' time outside tasks) over one
    run of `run`, from Dask's task stream."""
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        wall = _seconds(run)
    computes = sorted((s["stop"] - s["start"] for record in stream.data
                       for s in record["startstops"] if s["action"] == "compute"), reverse=True)
    return float(np.median(computes[:blocks])), 1 - sum(computes) / (wall * workers)


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
            ours = fastgru_dask.predict(model, blocks).sum().compute
            theirs = blocks.map_blocks(_onnxruntime_block, dask.delayed(proto), share,
                                       chunks=(blocks.chunks[0], (100,), (256,)),
                                       dtype=np.float32,
                                       meta=np.empty((0, 0, 0), np.float32)).sum().compute
            for name, run in (("fastgru.dask", ours), ("Dask + onnxruntime", theirs)):
                rate = best_rate(run, len(x))
                rows.append((f"{name}, {workers} worker(s) x {share} thread(s)", rate,
                             *task_profile(client, run, workers, len(starts))))
    print(f"{args.sequences} sequences, T=100, D=64, H=256, blocks of {args.chunk}, "
          f"{cores} cores\n")
    print("| pipeline | sequences/s | a block's task, median ms | workers' time outside tasks |"
          "\n|---|---|---|---|")
    for name, rate, *profile in rows:
        cells = [f"{profile[0] * 1e3:.1f}", f"{profile[1]:.0%}"] if profile else ["-", "-"]
        print(f"| {name} | {rate:.0f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
