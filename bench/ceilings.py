#!/usr/bin/env python
"""This machine's ceilings, for bench/report.py: what no code can beat here, and what NumPy reaches.

    NUMBA_NUM_THREADS=2 python bench/ceilings.py     # one JSON object on stdout

Measured with as many threads as Numba is given (bench/report.py runs this once per thread
count, in its own process):

- fma_gflops: fused multiply-adds on vectors as wide as fastgru's kernels use, SUMS independent
  sums per thread and no memory traffic, on every thread at once. float32 arithmetic that does a
  shape's multiply-adds cannot take less than its FLOPs at this rate.
- int8_gops (CPUs with AVX512_VNNI, else absent): the same with vpdpbusd, four byte products
  added to each int32 lane, counted as two operations per multiply-add: int8 arithmetic cannot
  do a shape's multiply-adds faster.
- read_GBps: {bytes: GB/s} reading a float32 array of that size in order again and again, each
  thread its own part (as the kernels share out weights), for the sizes of S2-S6's recurrent
  weights in float32 and in int8: the rate of the cache level that holds them. Not a strict
  limit: code that keeps part of the array in a nearer cache from one pass to the next reads
  faster.
- sgemm_gflops, matvec_GBps_H256, matvec_GBps_H1024: NumPy's 2048² float32 matrix product and its
  product of 3H x H weights with one vector (DESIGN.md's ceilings): what the BLAS NumPy ships
  reaches here, for reference.
"""

from __future__ import annotations

import json

import numba
import numpy as np
from numba import njit, prange

from fastgru.benchmark import SHAPES, call_times
from fastgru.kernels import int8
from fastgru.kernels.cpu import VNNI, empty_aligned
from fastgru.kernels.simd import fma, lanes, load_pair, splat, store

# Independent sums a thread keeps: more than any x86 core's multiply-add units times their
# latency (2 x 4), and few enough for AVX2's 16 registers
SUMS = 12
# Sums a read keeps, one vector load each
READ_SUMS = 8
LANES = lanes(np.float32)


@njit(parallel=True)
def _multiply_adds(x, repeats, out):
    """SUMS vector sums per row of out (threads, SUMS * lanes), each adding x * 0.5 repeats
    times. x is an argument: a constant 1.0 lets LLVM turn the multiply-adds into adds."""
    L = LANES
    for t in prange(out.shape[0]):
        w = splat(np.float32(0.5))
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = splat(np.float32(t))
        for _ in range(repeats):
            a0, a1, a2, a3 = fma(x, w, a0), fma(x, w, a1), fma(x, w, a2), fma(x, w, a3)
            a4, a5, a6, a7 = fma(x, w, a4), fma(x, w, a5), fma(x, w, a6), fma(x, w, a7)
            a8, a9, a10, a11 = fma(x, w, a8), fma(x, w, a9), fma(x, w, a10), fma(x, w, a11)
        row = out[t]
        for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
            store(row, i * L, a)


@njit(parallel=True)
def _byte_products(word, weights, repeats, out):
    """SUMS int32 vector sums per row of out (threads, SUMS * lanes) float32, each adding,
    repeats times, the four products of `word`'s bytes (unsigned) by each lane's bytes of
    weights (lanes,) int32 (signed): vpdpbusd with no memory traffic; then stored as float32.
    The word is an argument, as x is in _multiply_adds."""
    L = LANES
    ones = np.ones(SUMS * L, np.float32)
    for t in prange(out.shape[0]):
        w = int8.load_words(weights, 0)
        # sums from zero: the start the kernels give a zero point of 0 (-0 times any row)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = int8.start_sums(
            weights, 0, 0)
        for _ in range(repeats):
            a0, a1 = int8.dot_bytes(word, w, a0), int8.dot_bytes(word, w, a1)
            a2, a3 = int8.dot_bytes(word, w, a2), int8.dot_bytes(word, w, a3)
            a4, a5 = int8.dot_bytes(word, w, a4), int8.dot_bytes(word, w, a5)
            a6, a7 = int8.dot_bytes(word, w, a6), int8.dot_bytes(word, w, a7)
            a8, a9 = int8.dot_bytes(word, w, a8), int8.dot_bytes(word, w, a9)
            a10, a11 = int8.dot_bytes(word, w, a10), int8.dot_bytes(word, w, a11)
        row = out[t]
        for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
            int8.store_scaled(row, i * L, a, ones, np.float32(1.0))


@njit(parallel=True)
def _reads(values, repeats, out):
    """Read `values` (float32, its length a multiple of rows(out) * READ_SUMS * lanes) repeats
    times, part t by row t of out (threads, READ_SUMS * lanes), which gets the part's sums. A
    part is read as four streams side by side, its quarters in order: from L3, one stream a
    thread read 10% slower on this project's AMD EPYC (family 26), and fastgru's batch-1
    products read two panels at once."""
    L = LANES
    parts = out.shape[0]
    n = values.shape[0] // parts
    q = n // 4
    for t in prange(parts):
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = splat(np.float32(0.0))
        for _ in range(repeats):
            for i in range(t * n, t * n + q, 2 * L):
                s0, s1 = _add_pair(values, i, s0, s1)
                s2, s3 = _add_pair(values, i + q, s2, s3)
                s4, s5 = _add_pair(values, i + 2 * q, s4, s5)
                s6, s7 = _add_pair(values, i + 3 * q, s6, s7)
        row = out[t]
        for i, s in enumerate((s0, s1, s2, s3, s4, s5, s6, s7)):
            store(row, i * L, s)


@njit(inline="always")
def _add_pair(values, i, a, b):
    """(a + values[i:i + lanes], b + the lanes after them), as Vectors."""
    first, second = load_pair(values, i)
    return fma(np.float32(1.0), first, a), fma(np.float32(1.0), second, b)


def _fastest_seconds(function, rounds: int = 9) -> float:
    """The fastest of `rounds` calls, after one that compiles and warms the caches."""
    function()
    return min(call_times(function, 0.0, rounds))


def fma_gflops(threads: int) -> float:
    """GFLOP/s of SUMS independent vector multiply-adds per thread on `threads` threads."""
    out = np.zeros((threads, SUMS * LANES), np.float32)
    repeats = 2_000_000
    seconds = _fastest_seconds(lambda: _multiply_adds(np.float32(1.0), repeats, out))
    return 2 * out.size * repeats / seconds / 1e9


def int8_gops(threads: int) -> float:
    """GOP/s (two per multiply-add) of SUMS independent vpdpbusd per thread on `threads`
    threads."""
    out = np.zeros((threads, SUMS * LANES), np.float32)
    weights = np.full(LANES, 0x01010101, np.int32)
    repeats = 2_000_000
    seconds = _fastest_seconds(lambda: _byte_products(np.uint32(0x01010101), weights, repeats,
                                                      out))
    return 2 * 4 * out.size * repeats / seconds / 1e9


def read_gbps(nbytes: int, threads: int) -> float:
    """GB/s reading a float32 array of about nbytes, again and again, on `threads` threads."""
    block = threads * READ_SUMS * LANES
    values = empty_aligned((-(-nbytes // 4 // block) * block,), np.float32)  # as the weights are
    values[:] = 1.0
    repeats = max(1, int(1e9 // values.nbytes))  # about 1 GB a measurement
    out = np.zeros((threads, READ_SUMS * LANES), np.float32)
    seconds = _fastest_seconds(lambda: _reads(values, repeats, out), 25)
    return values.nbytes * repeats / seconds / 1e9


def recurrent_weight_bytes(hidden_size: int, itemsize: int = 4) -> int:
    """Bytes of one layer-direction's recurrent weights (3H x H), float32 or of `itemsize`."""
    return 3 * itemsize * hidden_size * hidden_size


def numpy_ceilings() -> dict[str, float]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    found = {"sgemm_gflops": 2 * 2048 ** 3 / _fastest_seconds(lambda: a @ a, 10) / 1e9}
    for H in (256, 1024):
        r = rng.standard_normal((3 * H, H), dtype=np.float32)
        h = rng.standard_normal(H, dtype=np.float32)
        seconds = _fastest_seconds(lambda r=r, h=h: r @ h, 2000 if H == 256 else 200)
        found[f"matvec_GBps_H{H}"] = r.nbytes / seconds / 1e9
    return found


def main() -> None:
    threads = numba.get_num_threads()
    sizes = sorted({recurrent_weight_bytes(c.hidden_size, itemsize) for c in SHAPES.values()
                    for itemsize in (4, 1) if c.name != "S1"})
    found = {"threads": threads, "fma_gflops": fma_gflops(threads),
             "read_GBps": {str(n): read_gbps(n, threads) for n in sizes}, **numpy_ceilings()}
    if VNNI:
        found["int8_gops"] = int8_gops(threads)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
