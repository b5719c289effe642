"""pytest-benchmark suite: S1-S6 of DESIGN.md for fastgru (float32 and bfloat16), onnxruntime,
PyTorch and OpenVINO (its default precision).

    .venv/bin/python -m pytest bench/ --benchmark-enable [--benchmark-only]

Every runtime runs in this one process here; for the side-by-side figures that count (each runtime
in its own process, alternated) use bench/report.py. Thread counts: "1" and "all" (the machine's
cores), set for Numba, OpenBLAS (threadpoolctl), onnxruntime and PyTorch alike. The first call
(compilation, session creation) happens in the fixture, before timing; its time is recorded in
extra_info["first_call_s"].
"""

from __future__ import annotations

import os
import time

import numba
import pytest
from threadpoolctl import threadpool_limits

from fastgru.benchmark import SHAPES, make_call

THREADS = {"1": 1, "all": os.cpu_count() or 1}


@pytest.fixture(params=list(THREADS))
def threads(request):
    n = THREADS[request.param]
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(n):
        yield n
    numba.set_num_threads(before)


@pytest.mark.parametrize("runtime", ["fastgru", "fastgru-bf16", "onnxruntime", "torch",
                                     "openvino"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape(benchmark, shape, runtime, threads):
    case = SHAPES[shape]
    start = time.perf_counter()
    call, _ = make_call(runtime, case, threads)
    call()
    benchmark.extra_info["first_call_s"] = time.perf_counter() - start
    benchmark.extra_info["gflop_per_call"] = case.flops / 1e9
    benchmark.group = f"{shape} threads={threads}"
    benchmark(call)
