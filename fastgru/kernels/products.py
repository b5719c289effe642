"""The matrix products: packed weights times a batch of rows, one kernel for every operand type.

`matvec` multiplies rows by weight panels (layout.pack_gate_rows) of any operand type the
kernels hold: float32 or float64, bfloat16 widened as read (uint16), bfloat16 pairs for the
CPU's dot products (uint32) or for its AMX tiles (int32, amx.py). The weights' type picks the
code at compile time; a row's result is the same bit for bit whatever batch position, thread or
panel order computes it. `project` shares one product over many rows among Numba's threads;
`dot_rows` multiplies unpadded weights with the same per-row guarantee.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fastgru.kernels import cpu
from fastgru.kernels.amx import matvec_tiles
from fastgru.kernels.borrow import borrowed
from fastgru.kernels.cpu import FOUR_ROW_TILES
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import fma, load_pair, prefetch, splat, store

# Cache lines at the start of the next weight panel fetched ahead (matvec_vectors): 1 KiB with
# 64-byte lines, four inputs' rows of a float32 panel. Chosen, not tuned.
PREFETCH_LINES = 16


@njit(**JIT_OPTIONS)
def matvec(v, wp, out, b0, b1, p0, p1, backwards):
    """out[b, p*P + c] = sum_k v[b, k] * wp[p, k, c] for rows b0 <= b < b1, panels p0 <= p < p1,
    the panels visited from p1 down to p0 when `backwards`.

    v: (B, K), wp: (panels, K, P), out: (B, >= p1*P); for bfloat16 weights wp is uint16, or
    pairs of inputs with v the operand's pairs (see bfloat16.py): uint32 for the CPU's dot
    products, int32 for its AMX tiles (amx.py). A row's result is the same bit for bit whatever
    batch position, thread or panel order computes it.

    The order is for weights read again and again, step after step: a pass that starts where
    the previous one ended finds its first panels still in cache (see gru.gates).
    """
    _product(v, wp, out, b0, b1, p0, p1, backwards)


def _product(v, wp, out, b0, b1, p0, p1, backwards):
    """matvec by the path of wp's type: the AMX tiles or the vector registers."""


@overload(_product)
def _product_for(v, wp, out, b0, b1, p0, p1, backwards):
    if wp.dtype == types.int32:
        return lambda v, wp, out, b0, b1, p0, p1, backwards: matvec_tiles(
            v, wp, out, b0, b1, p0, p1, backwards)
    return lambda v, wp, out, b0, b1, p0, p1, backwards: matvec_vectors(
        v, wp, out, b0, b1, p0, p1, backwards)


@njit(**JIT_OPTIONS)
def matvec_vectors(v, wp, out, b0, b1, p0, p1, backwards):
    """matvec in vector registers. Register tiles of 4 rows times one panel of four vectors (6
    rows times half a panel with AVX2, see cpu.FOUR_ROW_TILES), then 2 rows or 1 row times a
    panel: per k, a vector load per weight vector and a broadcast per row feed the tile's sums.
    A lone row (batch 1) takes two panels at a time: 8 sums in flight rather than 4, so the
    fused multiply-adds' latency does not hold back the loads. Every sum is one chain of fused
    multiply-adds over k in order, whatever tile computes it.

    While one panel is multiplied, the first PREFETCH_LINES cache lines of the next one to be
    visited are fetched: read backwards, the panels no longer follow each other in memory, and
    the CPU's own prefetcher only found each new one after missing it (bench/RESULTS.md,
    "Thresholds in the code", Kernels (the next panel fetched ahead)).
    """
    L = wp.shape[2] // 4
    panel_size = wp.shape[1] * wp.shape[2]
    line = cpu.CACHE_LINE_BYTES // wp.itemsize
    lines = min(PREFETCH_LINES, -(-panel_size // line))
    # The work in forward order: `twos` pairs of panels from p0 (a lone row), then single
    # panels; task t starts at panel p0 + t + min(t, twos)
    twos = (p1 - p0) // 2 if b1 - b0 == 1 else 0
    count = p1 - p0 - twos
    for i in range(count):
        task = count - 1 - i if backwards else i
        if i + 1 < count:
            following = task - 1 if backwards else task + 1
            q = p0 + following + min(following, twos)
            for m in range(lines):
                prefetch(wp, q * panel_size + m * line)
        p = p0 + task + min(task, twos)
        if task < twos:
            _tile1x2(v, wp[p], wp[p + 1], out, b0, p * 4 * L, L)
            continue
        panel = wp[p]
        j = p * 4 * L
        b = b0
        if FOUR_ROW_TILES:
            while b + 4 <= b1:
                _tile4(v, panel, out, b, j, L)
                b += 4
        else:
            while b + 6 <= b1:
                _tile6_half(v, panel, out, b, j, L, 0)
                _tile6_half(v, panel, out, b, j, L, 2 * L)
                b += 6
        while b + 2 <= b1:
            _tile2(v, panel, out, b, j, L)
            b += 2
        if b < b1:
            _tile1(v, panel, out, b, j, L)


@njit(inline="always", **JIT_OPTIONS)
def _tile4(v, panel, out, b, j, L):
    v0, v1, v2, v3 = v[b], v[b + 1], v[b + 2], v[b + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = splat(out.dtype.type(0.0))
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = a00
    for k in range(v.shape[1]):
        w0, w1, w2, w3 = _load4(panel[k], L)
        a00, a01, a02, a03 = _fma4(v0[k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _fma4(v1[k], w0, w1, w2, w3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _fma4(v2[k], w0, w1, w2, w3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _fma4(v3[k], w0, w1, w2, w3, a30, a31, a32, a33)
    _store4(out[b], j, L, a00, a01, a02, a03)
    _store4(out[b + 1], j, L, a10, a11, a12, a13)
    _store4(out[b + 2], j, L, a20, a21, a22, a23)
    _store4(out[b + 3], j, L, a30, a31, a32, a33)


@njit(inline="always", **JIT_OPTIONS)
def _tile6_half(v, panel, out, b, j, L, c):
    """Rows b..b+5 times half a panel: its two vectors from column c (0 or 2L)."""
    v0, v1, v2, v3, v4, v5 = v[b], v[b + 1], v[b + 2], v[b + 3], v[b + 4], v[b + 5]
    a00 = a01 = a10 = a11 = a20 = a21 = splat(out.dtype.type(0.0))
    a30 = a31 = a40 = a41 = a50 = a51 = a00
    for k in range(v.shape[1]):
        w0, w1 = load_pair(panel[k], c)
        a00, a01 = fma(v0[k], w0, a00), fma(v0[k], w1, a01)
        a10, a11 = fma(v1[k], w0, a10), fma(v1[k], w1, a11)
        a20, a21 = fma(v2[k], w0, a20), fma(v2[k], w1, a21)
        a30, a31 = fma(v3[k], w0, a30), fma(v3[k], w1, a31)
        a40, a41 = fma(v4[k], w0, a40), fma(v4[k], w1, a41)
        a50, a51 = fma(v5[k], w0, a50), fma(v5[k], w1, a51)
    _store2(out[b], j + c, L, a00, a01)
    _store2(out[b + 1], j + c, L, a10, a11)
    _store2(out[b + 2], j + c, L, a20, a21)
    _store2(out[b + 3], j + c, L, a30, a31)
    _store2(out[b + 4], j + c, L, a40, a41)
    _store2(out[b + 5], j + c, L, a50, a51)


@njit(inline="always", **JIT_OPTIONS)
def _tile2(v, panel, out, b, j, L):
    v0, v1 = v[b], v[b + 1]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = splat(out.dtype.type(0.0))
    for k in range(v.shape[1]):
        w0, w1, w2, w3 = _load4(panel[k], L)
        a00, a01, a02, a03 = _fma4(v0[k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _fma4(v1[k], w0, w1, w2, w3, a10, a11, a12, a13)
    _store4(out[b], j, L, a00, a01, a02, a03)
    _store4(out[b + 1], j, L, a10, a11, a12, a13)


@njit(inline="always", **JIT_OPTIONS)
def _tile1(v, panel, out, b, j, L):
    vb = v[b]
    a0 = a1 = a2 = a3 = splat(out.dtype.type(0.0))
    for k in range(v.shape[1]):
        w0, w1, w2, w3 = _load4(panel[k], L)
        a0, a1, a2, a3 = _fma4(vb[k], w0, w1, w2, w3, a0, a1, a2, a3)
    _store4(out[b], j, L, a0, a1, a2, a3)


@njit(inline="always", **JIT_OPTIONS)
def _tile1x2(v, panel, next_panel, out, b, j, L):
    vb = v[b]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = splat(out.dtype.type(0.0))
    for k in range(v.shape[1]):
        w0, w1, w2, w3 = _load4(panel[k], L)
        a0, a1, a2, a3 = _fma4(vb[k], w0, w1, w2, w3, a0, a1, a2, a3)
        w0, w1, w2, w3 = _load4(next_panel[k], L)
        a4, a5, a6, a7 = _fma4(vb[k], w0, w1, w2, w3, a4, a5, a6, a7)
    _store4(out[b], j, L, a0, a1, a2, a3)
    _store4(out[b], j + 4 * L, L, a4, a5, a6, a7)


@njit(inline="always", **JIT_OPTIONS)
def _load4(row, L):
    """The four weight Vectors of one input's panel row (P = 4L values; see simd.load_pair)."""
    w0, w1 = load_pair(row, 0)
    w2, w3 = load_pair(row, 2 * L)
    return w0, w1, w2, w3


@njit(inline="always", **JIT_OPTIONS)
def _fma4(x, w0, w1, w2, w3, a0, a1, a2, a3):
    return fma(x, w0, a0), fma(x, w1, a1), fma(x, w2, a2), fma(x, w3, a3)


@njit(inline="always", **JIT_OPTIONS)
def _store2(row, j, L, a0, a1):
    store(row, j, a0)
    store(row, j + L, a1)


@njit(inline="always", **JIT_OPTIONS)
def _store4(row, j, L, a0, a1, a2, a3):
    store(row, j, a0)
    store(row, j + L, a1)
    store(row, j + 2 * L, a2)
    store(row, j + 3 * L, a3)


# Partial sums of each dot_rows sum: one SIMD vector of float32
DOT_LANES = 16


@njit(**JIT_OPTIONS)
def dot_rows(x, w, out):
    """out[b, j] = sum_k x[b, k] * w[j, k]: x (N, K), w (J, K), out (N, J), one dtype.

    Each sum is DOT_LANES partial sums (k mod DOT_LANES) added in order at the end, then the
    inputs past the last whole block: the same bits for a row whatever the other rows, as
    `matvec` gives. For the unpadded input weights of narrow models (fastgru/_packed.py,
    FRONT_MIN_PADDING_BYTES).
    """
    K = x.shape[1]
    whole = K // DOT_LANES * DOT_LANES
    part = np.zeros(DOT_LANES, out.dtype)
    for b in range(x.shape[0]):
        xb = x[b]
        for j in range(w.shape[0]):
            wj = w[j]
            part[:] = 0
            for k0 in range(0, whole, DOT_LANES):
                for i in range(DOT_LANES):
                    part[i] += xb[k0 + i] * wj[k0 + i]
            total = part[0]
            for i in range(1, DOT_LANES):
                total += part[i]
            for k in range(whole, K):
                total += xb[k] * wj[k]
            out[b, j] = total


# A task of `project`: PROJECT_ROWS rows of x (in L1/L2) times PROJECT_PANELS weight panels. Both
# are split so a short sequence (S6: 50 rows, 48 panels) still gives every thread work.
PROJECT_ROWS = 64
PROJECT_PANELS = 4


@njit(parallel=True, **JIT_OPTIONS)
def project(x, wp, out):
    """out = x @ W^T: the input projection of every step, before the time loop.

    x: (N, D), wp: (panels, D, P) W packed by layout.pack_gate_rows, out: (N, panels*P). Tasks of
    PROJECT_ROWS rows times PROJECT_PANELS panels are shared among Numba's threads. Done here
    rather than by NumPy's BLAS so that one thread pool runs all the work: BLAS threads spinning
    beside Numba's stole the cores and made two threads slower than one.
    """
    N = x.shape[0]
    panels = wp.shape[0]
    x, wp, out = borrowed(x, wp, out)
    row_blocks = (N + PROJECT_ROWS - 1) // PROJECT_ROWS
    panel_blocks = (panels + PROJECT_PANELS - 1) // PROJECT_PANELS
    for task in prange(row_blocks * panel_blocks):
        b0 = task // panel_blocks * PROJECT_ROWS
        p0 = task % panel_blocks * PROJECT_PANELS
        matvec(x, wp, out, b0, min(N, b0 + PROJECT_ROWS), p0, min(panels, p0 + PROJECT_PANELS),
               False)


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
