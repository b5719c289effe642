"""The matrix products: packed weights times a batch of rows, one kernel for every operand type.

`matvec` multiplies rows by weight panels (layout.pack_gate_rows) of any operand type the
kernels hold: float32 or float64, bfloat16 widened as read (uint16), bfloat16 pairs for the
CPU's dot products (uint32) or for its AMX tiles (int32, amx.py), int8 weights (Int8Weights,
int8_pack.py). The weights' type picks the code at compile time (operands.py); a row's result
is the same bit for bit whatever batch position, thread or panel order computes it. `project`
shares one product over many rows among Numba's threads; `dot_rows` multiplies unpadded
weights with the same per-row guarantee.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fastgru.kernels import cpu
from fastgru.kernels.amx import matvec_tiles
from fastgru.kernels.borrow import borrowed
from fastgru.kernels.cpu import FOUR_ROW_TILES
from fastgru.kernels.int8_pack import Int8Weights
from fastgru.kernels.operands import (finish, length, load_weights, madd, operand, operand_rows,
                                      operand_scratch, panel_inputs, panel_rows, panel_size,
                                      row_source, start, vector_lanes)
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import prefetch

# Cache lines at the start of the next weight panel fetched ahead (matvec_vectors): 1 KiB with
# 64-byte lines, four inputs' rows of a float32 panel. Chosen, not tuned.
PREFETCH_LINES = 16


@njit(**JIT_OPTIONS)
def matvec(v, wp, out, b0, b1, p0, p1, backwards):
    """out[b, p*P + c] = sum_k v[b, k] * wp[p, k, c] for rows b0 <= b < b1, panels p0 <= p < p1,
    the panels visited from p1 down to p0 when `backwards`.

    v: (B, K) as `operand` made it for wp; wp: (panels, K, P) floats, bfloat16 widened as read
    (uint16), bfloat16 pairs for the CPU's dot products (uint32, v the operand's pairs) or its
    AMX tiles (int32, amx.py), or int8 weights (an Int8Weights, v their Quantized operand or
    float32 rows; int8_pack.py says what they compute). out: (B, >= p1*P). A row's result is
    the same bit for bit whatever batch position, thread or panel order computes it.

    The order is for weights read again and again, step after step: a pass that starts where
    the previous one ended finds its first panels still in cache (see gru.gates).
    """
    _product(v, wp, out, b0, b1, p0, p1, backwards)


def _product(v, wp, out, b0, b1, p0, p1, backwards):
    """matvec by the path of wp's type: the AMX tiles or the vector registers."""


@overload(_product)
def _product_for(v, wp, out, b0, b1, p0, p1, backwards):
    if isinstance(wp, types.Array) and wp.dtype == types.int32:
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
    multiply-adds' latency does not hold back the loads. Every sum is one chain of fused
    multiply-adds over k in order (int8: an exact sum in int32), whatever tile computes it.

    While one panel is multiplied, the first PREFETCH_LINES cache lines of the next one to be
    visited are fetched: read backwards, the panels no longer follow each other in memory, and
    the CPU's own prefetcher only found each new one after missing it (bench/RESULTS.md,
    "Thresholds in the code", Kernels (the next panel fetched ahead)).
    """
    L = vector_lanes(wp)
    flat = panel_rows(wp)
    size = panel_size(flat)
    line = cpu.CACHE_LINE_BYTES // flat.itemsize
    lines = min(PREFETCH_LINES, -(-size // line))
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
                prefetch(flat, q * size + m * line)
        p = p0 + task + min(task, twos)
        if task < twos:
            _tile1x2(v, wp, flat[p], flat[p + 1], out, b0, p * 4 * L, L)
            continue
        panel = flat[p]
        j = p * 4 * L
        b = b0
        if FOUR_ROW_TILES:
            while b + 4 <= b1:
                _tile4(v, wp, panel, out, b, j, L)
                b += 4
        else:
            while b + 6 <= b1:
                _tile6_half(v, wp, panel, out, b, j, L, 0)
                _tile6_half(v, wp, panel, out, b, j, L, 2 * L)
                b += 6
        while b + 2 <= b1:
            _tile2(v, wp, panel, out, b, j, L)
            b += 2
        if b < b1:
            _tile1(v, wp, panel, out, b, j, L)


@njit(inline="always", **JIT_OPTIONS)
def _start4(v, wp, out, b, j, L):
    return (start(v, wp, out, b, j), start(v, wp, out, b, j + L),
            start(v, wp, out, b, j + 2 * L), start(v, wp, out, b, j + 3 * L))


@njit(inline="always", **JIT_OPTIONS)
def _load4(panel, k, L):
    """The four weight vectors of panel row k (P = 4L values)."""
    w0, w1 = load_weights(panel, k, 0)
    w2, w3 = load_weights(panel, k, 2 * L)
    return w0, w1, w2, w3


@njit(inline="always", **JIT_OPTIONS)
def _madd4(x, w0, w1, w2, w3, a0, a1, a2, a3):
    return madd(x, w0, a0), madd(x, w1, a1), madd(x, w2, a2), madd(x, w3, a3)


@njit(inline="always", **JIT_OPTIONS)
def _finish2(v, wp, out, b, j, L, a0, a1):
    row = out[b]  # one view of the row for all its stores
    finish(v, wp, row, b, j, a0)
    finish(v, wp, row, b, j + L, a1)


@njit(inline="always", **JIT_OPTIONS)
def _finish4(v, wp, out, b, j, L, a0, a1, a2, a3):
    row = out[b]
    finish(v, wp, row, b, j, a0)
    finish(v, wp, row, b, j + L, a1)
    finish(v, wp, row, b, j + 2 * L, a2)
    finish(v, wp, row, b, j + 3 * L, a3)


@njit(inline="always", **JIT_OPTIONS)
def _tile4(v, wp, panel, out, b, j, L):
    rows = row_source(v)
    v0, v1, v2, v3 = rows[b], rows[b + 1], rows[b + 2], rows[b + 3]
    a00, a01, a02, a03 = _start4(v, wp, out, b, j, L)
    a10, a11, a12, a13 = _start4(v, wp, out, b + 1, j, L)
    a20, a21, a22, a23 = _start4(v, wp, out, b + 2, j, L)
    a30, a31, a32, a33 = _start4(v, wp, out, b + 3, j, L)
    for k in range(panel_inputs(panel)):
        w0, w1, w2, w3 = _load4(panel, k, L)
        a00, a01, a02, a03 = _madd4(v0[k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _madd4(v1[k], w0, w1, w2, w3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _madd4(v2[k], w0, w1, w2, w3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _madd4(v3[k], w0, w1, w2, w3, a30, a31, a32, a33)
    _finish4(v, wp, out, b, j, L, a00, a01, a02, a03)
    _finish4(v, wp, out, b + 1, j, L, a10, a11, a12, a13)
    _finish4(v, wp, out, b + 2, j, L, a20, a21, a22, a23)
    _finish4(v, wp, out, b + 3, j, L, a30, a31, a32, a33)


@njit(inline="always", **JIT_OPTIONS)
def _tile6_half(v, wp, panel, out, b, j, L, c):
    """Rows b..b+5 times half a panel: its two vectors from column c (0 or 2L)."""
    rows = row_source(v)
    v0, v1, v2, v3, v4, v5 = rows[b], rows[b + 1], rows[b + 2], rows[b + 3], rows[b + 4], \
        rows[b + 5]
    a00, a01 = start(v, wp, out, b, j + c), start(v, wp, out, b, j + c + L)
    a10, a11 = start(v, wp, out, b + 1, j + c), start(v, wp, out, b + 1, j + c + L)
    a20, a21 = start(v, wp, out, b + 2, j + c), start(v, wp, out, b + 2, j + c + L)
    a30, a31 = start(v, wp, out, b + 3, j + c), start(v, wp, out, b + 3, j + c + L)
    a40, a41 = start(v, wp, out, b + 4, j + c), start(v, wp, out, b + 4, j + c + L)
    a50, a51 = start(v, wp, out, b + 5, j + c), start(v, wp, out, b + 5, j + c + L)
    for k in range(panel_inputs(panel)):
        w0, w1 = load_weights(panel, k, c)
        a00, a01 = madd(v0[k], w0, a00), madd(v0[k], w1, a01)
        a10, a11 = madd(v1[k], w0, a10), madd(v1[k], w1, a11)
        a20, a21 = madd(v2[k], w0, a20), madd(v2[k], w1, a21)
        a30, a31 = madd(v3[k], w0, a30), madd(v3[k], w1, a31)
        a40, a41 = madd(v4[k], w0, a40), madd(v4[k], w1, a41)
        a50, a51 = madd(v5[k], w0, a50), madd(v5[k], w1, a51)
    _finish2(v, wp, out, b, j + c, L, a00, a01)
    _finish2(v, wp, out, b + 1, j + c, L, a10, a11)
    _finish2(v, wp, out, b + 2, j + c, L, a20, a21)
    _finish2(v, wp, out, b + 3, j + c, L, a30, a31)
    _finish2(v, wp, out, b + 4, j + c, L, a40, a41)
    _finish2(v, wp, out, b + 5, j + c, L, a50, a51)


@njit(inline="always", **JIT_OPTIONS)
def _tile2(v, wp, panel, out, b, j, L):
    rows = row_source(v)
    v0, v1 = rows[b], rows[b + 1]
    a00, a01, a02, a03 = _start4(v, wp, out, b, j, L)
    a10, a11, a12, a13 = _start4(v, wp, out, b + 1, j, L)
    for k in range(panel_inputs(panel)):
        w0, w1, w2, w3 = _load4(panel, k, L)
        a00, a01, a02, a03 = _madd4(v0[k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _madd4(v1[k], w0, w1, w2, w3, a10, a11, a12, a13)
    _finish4(v, wp, out, b, j, L, a00, a01, a02, a03)
    _finish4(v, wp, out, b + 1, j, L, a10, a11, a12, a13)


@njit(inline="always", **JIT_OPTIONS)
def _tile1(v, wp, panel, out, b, j, L):
    vb = row_source(v)[b]
    a0, a1, a2, a3 = _start4(v, wp, out, b, j, L)
    for k in range(panel_inputs(panel)):
        w0, w1, w2, w3 = _load4(panel, k, L)
        a0, a1, a2, a3 = _madd4(vb[k], w0, w1, w2, w3, a0, a1, a2, a3)
    _finish4(v, wp, out, b, j, L, a0, a1, a2, a3)


@njit(inline="always", **JIT_OPTIONS)
def _tile1x2(v, wp, panel, next_panel, out, b, j, L):
    vb = row_source(v)[b]
    a0, a1, a2, a3 = _start4(v, wp, out, b, j, L)
    a4, a5, a6, a7 = _start4(v, wp, out, b, j + 4 * L, L)
    for k in range(panel_inputs(panel)):
        w0, w1, w2, w3 = _load4(panel, k, L)
        a0, a1, a2, a3 = _madd4(vb[k], w0, w1, w2, w3, a0, a1, a2, a3)
        w0, w1, w2, w3 = _load4(next_panel, k, L)
        a4, a5, a6, a7 = _madd4(vb[k], w0, w1, w2, w3, a4, a5, a6, a7)
    _finish4(v, wp, out, b, j, L, a0, a1, a2, a3)
    _finish4(v, wp, out, b, j + 4 * L, L, a4, a5, a6, a7)


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

    x: (N, D) as `operand` made it for wp, wp: W packed (panels, D, P) by layout.pack_gate_rows
    or an Int8Weights, out: (N, panels*P). Tasks of PROJECT_ROWS rows times PROJECT_PANELS
    panels are shared among Numba's threads. Done here rather than by NumPy's BLAS so that one
    thread pool runs all the work: BLAS threads spinning beside Numba's stole the cores and
    made two threads slower than one.
    """
    N = operand_rows(x)
    panels = length(wp)
    (out,) = borrowed(out)
    row_blocks = (N + PROJECT_ROWS - 1) // PROJECT_ROWS
    panel_blocks = (panels + PROJECT_PANELS - 1) // PROJECT_PANELS
    for task in prange(row_blocks * panel_blocks):
        # borrowed in the loop: Numba's parallel loops take a named tuple (int8 weights and
        # operands) only as a function argument, not as a value made before the loop
        xb, wb = borrowed(x, wp)
        b0 = task // panel_blocks * PROJECT_ROWS
        p0 = task % panel_blocks * PROJECT_PANELS
        matvec(xb, wb, out, b0, min(N, b0 + PROJECT_ROWS), p0, min(panels, p0 + PROJECT_PANELS),
               False)


@njit(**JIT_OPTIONS)
def _product_rows(v, w, out):
    scratch = operand_scratch(w, v.shape[0], v.shape[1])
    matvec(operand(v, w, scratch, 0, v.shape[0]), w, out, 0, v.shape[0], 0, length(w), False)


def product(v: np.ndarray, w, out: np.ndarray | None = None) -> np.ndarray:
    """v @ W^T for every row of v (B, K) and every packed column of w, float weights (B,
    panels*P) or int8 ones, gate columns as packed: for tests and tools. Checks the shapes and
    allocates, then runs `operand` and `matvec` as the kernels do."""
    int8_weights = isinstance(w, Int8Weights)
    panels = w.words if int8_weights else w
    dtype = panels.dtype if panels.dtype.kind == "f" else np.dtype(np.float32)
    v = np.ascontiguousarray(v, dtype)
    groups = 4 if int8_weights and panels.dtype == np.int32 else 1  # inputs a word holds
    if v.ndim != 2 or -(-v.shape[1] // groups) != panels.shape[1]:
        raise ValueError(f"activations must be (B, {panels.shape[1] * groups}) {dtype} for "
                         f"these weights, got shape {v.shape}")
    if out is None:
        out = np.empty((v.shape[0], panels.shape[0] * panels.shape[2]), dtype)
    _product_rows(v, w, out)
    return out


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
