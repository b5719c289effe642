"""The GRU kernels: plain loops over contiguous arrays of one dtype, writing into caller buffers.

Gate columns. Gates are ordered (z, r, n) (see fastgru/_weights.py). Every array holding one
value per gate output pads each gate from H to Hp units, Hp being H rounded up to a multiple of
the panel width P (`panel_width`): column g*Hp + u is unit u of gate g, and padding columns
(zero weights) are computed but never read. For one layer:

    r    : (dirs, 3Hp/P, H, P) recurrent weights, packed into panels (`pack_gate_rows`)
    bx   : (dirs, 3Hp)         bias added to the input projection: Wb + Rb for z and r; Wb_n
                               (+ Rb_n when linear_before_reset = 0, where Rb_n sits outside
                               the reset product)
    rbn  : (dirs, H)           Rb_n, used only when linear_before_reset = 1 (inside r * (...))
    xproj: (T, B, dirs*3Hp)    x_t @ W^T for every step, computed before the time loop (`project`)
    h    : (dirs, B, H)        state: the initial state on entry, the final state on return

Nothing here checks its inputs or allocates inside the time loop; the public surface does both.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fastgru.kernels import atomics, cpu
from fastgru.kernels.activations import sigmoid, tanh
from fastgru.kernels.amx import matvec_tiles
from fastgru.kernels.bfloat16 import operand, operand_scratch
from fastgru.kernels.borrow import borrowed
from fastgru.kernels.config import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import (VECTOR_BYTES, fma, full_width_loops, lanes, load_pair, prefetch,
                                  splat, store)

def row_group(hidden_size: int, dtype) -> int:
    """Rows advanced together through one step (gates, then update), sharing one pass over the
    recurrent weights: as many as keep their state, gate sums and r*h (about 5H values a row)
    in half of this CPU's L2, so each weight panel streams from memory once per group and is
    reused from cache by every row. A multiple of 4 (see matvec), 4 to 256.

    Measured on this project's AMD EPYC (1 MiB L2), 1 thread, 8 alternating rounds: S4 (B=64,
    H=512: 48-row groups) 4.4% faster than fixed 8-row groups, S3 (B=16: one group) 2-5%. On
    an Intel Xeon (2 MiB L2) the lent machine's timings moved 17% between identical runs, too
    much to tell.
    """
    per_row = 5 * hidden_size * np.dtype(dtype).itemsize
    return int(min(256, max(4, cpu.L2_BYTES // 2 // per_row // 4 * 4)))


def panel_width(dtype) -> int:
    """P: gate columns per weight panel, four SIMD vectors (64 float32 values with AVX-512)."""
    return 4 * lanes(dtype)


def padded_units(hidden_size: int, dtype) -> int:
    """Hp: H rounded up to a multiple of the panel width."""
    P = panel_width(dtype)
    return -(-hidden_size // P) * P


def pad_gate_columns(a: np.ndarray, hidden_size: int) -> np.ndarray:
    """(..., G*H) gate values -> (..., G*Hp) gate columns, zeros in the padding."""
    H, Hp = hidden_size, padded_units(hidden_size, a.dtype)
    gates = a.reshape(*a.shape[:-1], -1, H)
    padded = np.zeros((*gates.shape[:-1], Hp), a.dtype)
    padded[..., :H] = gates
    return padded.reshape(*a.shape[:-1], -1)


def pack_gate_rows(w: np.ndarray, hidden_size: int) -> np.ndarray:
    """(G*H, K) weights, one row per gate output -> (G*Hp/P, K, P) panels for `matvec`.

    Panel p holds gate columns pP <= j < (p+1)P for every input k, K*P values in a row, so a
    panel streams from memory in order and a tile's weights for one k are P adjacent values.
    """
    P = panel_width(w.dtype)
    columns = pad_gate_columns(np.ascontiguousarray(w.T), hidden_size)  # (K, G*Hp)
    K = columns.shape[0]
    return np.ascontiguousarray(columns.reshape(K, -1, P).transpose(1, 0, 2))


def _clip(v, c):
    """v clipped to [-c, c], NaN unchanged; v itself when c is None (no clip, no code)."""


@overload(_clip, inline="always")
def _clip_for(v, c):
    if isinstance(c, types.NoneType):
        return lambda v, c: v

    def clipped(v, c):  # comparisons, so NaN passes through unchanged
        if v > c:
            return c
        if v < -c:
            return -c
        return v
    return clipped


# Cache lines at the start of the next weight panel fetched ahead (matvec_vectors): 1 KiB with
# 64-byte lines, four inputs' rows of a float32 panel. Chosen, not tuned.
PREFETCH_LINES = 16

# A 4-row tile keeps 16 vector sums, 4 weight vectors and a broadcast in registers: it needs
# AVX-512's 32 vector registers. With AVX2's 16 it spills (measured on this machine compiling
# for Haswell: 38 GFLOP/s against 100 for 2-row tiles), and a 2-row tile's 8 sums are just as
# many as two multiply-add units of 4 cycles' latency keep busy, with no slack: 110-114 GFLOP/s
# at H=256, B=8 and 16, where 12 independent sums reach 134-135. So AVX2 takes 6 rows times half
# a panel (12 sums, 2 weight vectors, a broadcast: 15 registers): 122-129 GFLOP/s, and whole
# calls S3-S5 0.88-0.93 of their time (tools/ab.py, float32 and widened bfloat16). On AVX-512
# the half-panel tiles were slower at B=8 and 16 (231-235 against 239-247 GFLOP/s).
FOUR_ROW_TILES = VECTOR_BYTES == 64


@njit(**JIT_OPTIONS)
def matvec(v, wp, out, b0, b1, p0, p1, backwards):
    """out[b, p*P + c] = sum_k v[b, k] * wp[p, k, c] for rows b0 <= b < b1, panels p0 <= p < p1,
    the panels visited from p1 down to p0 when `backwards`.

    v: (B, K), wp: (panels, K, P), out: (B, >= p1*P); for bfloat16 weights wp is uint16, or
    pairs of inputs with v the operand's pairs (see bfloat16.py): uint32 for the CPU's dot
    products, int32 for its AMX tiles (amx.py). A row's result is the same bit for bit whatever
    batch position, thread or panel order computes it.

    The order is for weights read again and again, step after step: a pass that starts where
    the previous one ended finds its first panels still in cache (see `gates`).
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
    """matvec in vector registers. Register tiles of 4 rows times one panel of four vectors (6 rows
    times half a panel with AVX2, see FOUR_ROW_TILES), then 2 rows or 1 row times a panel: per k, a
    vector load per weight vector and a broadcast per row feed the tile's sums. A lone row (batch 1)
    takes two panels at a time: 8 sums in flight rather than 4, so the fused multiply-adds' latency
    does not hold back the loads. Every sum is one chain of fused multiply-adds over k in order,
    whatever tile computes it.

    While one panel is multiplied, the first PREFETCH_LINES cache lines of the next one to be
    visited are fetched: read backwards, the panels no longer follow each other in memory, and
    the CPU's own prefetcher only found each new one after missing it (AMD EPYC family 26, 1
    thread, tools/ab.py against the alternating order without it: bfloat16 S4 0.978, S6 0.973,
    S3 0.995; float32 S2-S6 0.96-1.00).
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
    `matvec` gives. For the unpadded input weights of narrow models (_packed.FRONT_MIN_PADDING_BYTES).
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

    x: (N, D), wp: (panels, D, P) W packed by `pack_gate_rows`, out: (N, panels*P). Tasks of
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


@njit(inline="always", **JIT_OPTIONS)
def _time_index(s, length, reverse):
    """The time index a row of `length` steps reads at step s: s, or length - 1 - s in reverse."""
    return length - 1 - s if reverse else s


@njit(inline="always", **JIT_OPTIONS)
def _fetch_inputs(xproj, b, b1, s, lengths, reverse, c0, n, gates, Hp):
    """Fetch row b's inputs at step s ahead of the gate loop that reads them: for each of
    `gates` gates from column c0, Hp columns apart, xproj[t, b, c0 + i*Hp:c0 + i*Hp + n] (t from
    _time_index). Nothing for b >= b1 or a row past its length.

    A step reads a few KB of each row's projections, at a stride of the whole batch's, from an
    xproj larger than L2, and the CPU's prefetcher missed the first lines of every row (the
    layer kernel on AMD EPYC family 26, 1 thread, took up to 6% (S4) and 8-15% (S5) longer a
    step over all the steps than over a tenth of them). Fetched one row ahead, whole calls,
    tools/ab.py, new / old: float32 S4 0.973, S5 0.968-0.971; bfloat16 S4 0.942, S5 0.959; S2,
    S3, S6 level (bench/RESULTS.md).
    """
    if b >= b1 or s >= lengths[b]:
        return
    t = _time_index(s, lengths[b], reverse)
    line = cpu.CACHE_LINE_BYTES // xproj.itemsize
    start = (t * xproj.shape[1] + b) * xproj.shape[2] + c0
    for gate in range(gates):
        for c in range(0, n, line):
            prefetch(xproj, start + gate * Hp + c)


# gates, update and step_rows are inlined into every kernel that steps: called as functions, each
# step passed some twenty arrays to each of them, with a reference count taken and dropped for
# every one, about 0.5 us a step (measured, 1 thread, AMD EPYC family 26: H=64, T=200 285 ->
# 208 us a call; S2 -7%, S5 -3%; compile time unchanged).
@njit(inline="always", **JIT_OPTIONS)
def gates(xproj, d, bx, r, rbn, h, acc, hr, b0, b1, j0, j1, s, lengths, reverse, lbr, clip, vb,
          backwards):
    """First half of step s of direction d for rows b0 <= b < b1 and units j0 <= j < j1.

    xproj: (T, B, >= (d+1)*3Hp); bx: (3Hp,), r: (3Hp/P, H, P), rbn: (H,) this direction's;
    h: (B, H) the state before the step; acc: (B, 3Hp), hr: (B, H), vb: operand_scratch(r, B,
    H) scratch. j0 and j1 are multiples of P (j1 <= Hp). Leaves 1 - z in acc[b, j], and
    r * (R_n h + Rb_n) in acc[b, 2Hp + j] with lbr; without lbr, r * h in hr[b, j] for R_n to
    multiply in `update` once every unit of hr is known. Row b reads x[t] with t = s (forward)
    or t = lengths[b] - 1 - s (reverse); rows whose length is at most s are skipped.

    backwards: visit the weight panels in reverse order (see matvec). Callers alternate it from
    one pass over the weights to the next, so each pass starts on the panels the previous one
    read last, still in cache: where the weights are larger than L2, a whole L2 of them is not
    fetched again. Measured on this project's AMD EPYC (family 26, 1 MiB L2), 1 thread,
    tools/ab.py, new / old: S6 (12.6 MB float32) 0.98, bfloat16 dot products 0.94, widened
    0.80. S2 gained too, though its 786 KB (float32, 0.84) and 393 KB (bfloat16, 0.72) should
    fit L2; the batched bfloat16 shapes S3 and S4 lost 1-3%, and are level since matvec_vectors
    fetches the start of the next panel ahead.
    """
    full_width_loops()
    H = h.shape[1]
    Hp = acc.shape[1] // 3
    P = r.shape[2]
    u1 = min(j1, H)
    n = u1 - j0
    g = d * 3 * Hp + j0  # this direction's z columns of xproj, from unit j0
    # the first row's inputs arrive while the products run
    _fetch_inputs(xproj, b0, b1, s, lengths, reverse, g, n, 3, Hp)
    hv = operand(h, r, vb, b0, b1)
    gates_here = 3 if lbr else 2
    if j1 - j0 == Hp:  # all units: the gates' panels are adjacent, one call pairs them up
        matvec(hv, r, acc, b0, b1, 0, gates_here * Hp // P, backwards)
    else:
        for i in range(gates_here):
            gate = gates_here - 1 - i if backwards else i
            matvec(hv, r, acc, b0, b1, (gate * Hp + j0) // P, (gate * Hp + j1) // P, backwards)
    for b in range(b0, b1):
        _fetch_inputs(xproj, b + 1, b1, s, lengths, reverse, g, n, 2, Hp)  # z and r
        if s >= lengths[b]:
            continue
        t = _time_index(s, lengths[b], reverse)
        xp = xproj[t, b]
        # Every array sliced to units j0..u1 and indexed from 0: an index LLVM can prove is not
        # negative skips Numba's wraparound, and only then are the loops vectorized (2 us more
        # per step at H=256 otherwise). One loop for both gates, storing two arrays: LLVM
        # vectorizes a loop only when it can check at run time that the arrays it stores to
        # overlap none it reads, and gives up beyond a few checks. (One loop for the whole
        # step was slower: each value's chain of three exp and divisions is long, and fewer
        # values were in flight.)
        az, ar, an = acc[b, j0:u1], acc[b, Hp + j0:Hp + u1], acc[b, 2 * Hp + j0:2 * Hp + u1]
        xz, bz = xp[g:g + n], bx[j0:u1]
        xr, br = xp[g + Hp:g + Hp + n], bx[Hp + j0:Hp + u1]
        if lbr:
            rb = rbn[j0:u1]
            for j in range(n):  # 1 - z = sigmoid(-v), accurate even where z rounds to 1
                az[j] = sigmoid(-_clip(xz[j] + bz[j] + az[j], clip))
                an[j] = sigmoid(_clip(xr[j] + br[j] + ar[j], clip)) * (an[j] + rb[j])
        else:
            hrb, hb = hr[b, j0:u1], h[b, j0:u1]
            for j in range(n):
                az[j] = sigmoid(-_clip(xz[j] + bz[j] + az[j], clip))
                hrb[j] = sigmoid(_clip(xr[j] + br[j] + ar[j], clip)) * hb[j]


@njit(inline="always", **JIT_OPTIONS)
def update(xproj, d, bx, r, h, h_new, acc, hr, b0, b1, j0, j1, s, lengths, reverse, lbr, clip,
           vb, backwards, y):
    """Second half of step s (see `gates`): n, then h_new[b, j] = h + (1 - z) (n - h).

    The update is written with 1 - z as computed by `gates` (relatively accurate even for slow
    units, whose z would round to a float a relative 1e-4 away from the true 1 - z) so the time
    constant of a slow unit carries no rounding bias step after step.

    h_new may be h itself. y: (T, B, >= (d+1)*H) receives h_new at the row's time index in
    columns d*H + j, and zeros at steps past the row's length (whose state is carried over).
    """
    full_width_loops()
    H = h.shape[1]
    Hp = acc.shape[1] // 3
    P = r.shape[2]
    if not lbr:
        matvec(operand(hr, r, vb, b0, b1), r, acc, b0, b1, (2 * Hp + j0) // P,
               (2 * Hp + j1) // P, backwards)
    u1 = min(j1, H)
    n = u1 - j0
    g = d * 3 * Hp + 2 * Hp + j0  # this direction's n columns of xproj, from unit j0
    yj = d * H + j0
    for b in range(b0, b1):
        _fetch_inputs(xproj, b + 1, b1, s, lengths, reverse, g, n, 1, Hp)  # n
        hb, hn = h[b, j0:u1], h_new[b, j0:u1]
        if s >= lengths[b]:
            ys = y[s, b, yj:yj + n]
            for j in range(n):
                ys[j] = 0.0
                hn[j] = hb[j]
            continue
        t = _time_index(s, lengths[b], reverse)
        # Sliced and indexed from 0 as in `gates`. The new state goes to y, not h_new: h_new
        # may be h, which LLVM's overlap check cannot tell from a true overlap. It is copied
        # to h_new in a loop of its own: a slice assignment (h_new[...] = ...) compiles to
        # Numba's general strided copy, 0.2 ns a value, as long as the arithmetic here.
        az, an = acc[b, j0:u1], acc[b, 2 * Hp + j0:2 * Hp + u1]
        xn, bn = xproj[t, b, g:g + n], bx[2 * Hp + j0:2 * Hp + u1]
        yt = y[t, b, yj:yj + n]
        for j in range(n):
            new = tanh(_clip(xn[j] + bn[j] + an[j], clip))
            yt[j] = hb[j] + az[j] * (new - hb[j])
        for j in range(n):
            hn[j] = yt[j]


@njit(inline="always", **JIT_OPTIONS)
def step_rows(xproj, d, bx, r, rbn, h, acc, hr, b0, b1, s, lengths, reverse, lbr, clip, y,
              group, vb, passes):
    """Advance rows b0 <= b < b1 of direction d by step s, all units, h updated in place, in
    groups of `group` rows (row_group), each group one pass over the weights. passes: how many
    passes over these weights came before (odd ones run backwards, see `gates`); returns that
    count after this step's."""
    Hp = acc.shape[1] // 3
    for g0 in range(b0, b1, group):
        g1 = min(g0 + group, b1)
        backwards = passes % 2 == 1
        gates(xproj, d, bx, r, rbn, h, acc, hr, g0, g1, 0, Hp, s, lengths, reverse, lbr, clip, vb,
              backwards)
        update(xproj, d, bx, r, h, h, acc, hr, g0, g1, 0, Hp, s, lengths, reverse, lbr, clip, vb,
               backwards, y)
        passes += 1
    return passes


@njit(parallel=True, **JIT_OPTIONS)
def gru_layer(xproj, bx, r, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, blocks, group):
    """Run one layer (all directions) over the whole sequence, batch rows shared out.

    xproj: (T, B, dirs*3Hp), bx: (dirs, 3Hp), r: (dirs, 3Hp/P, H, P), rbn: (dirs, H),
    h: (dirs, B, H) initial state in, final state out; acc: (dirs, B, 3Hp), hr: (dirs, B, H)
    scratch; lengths: (B,) int64 in [0, T]; reverse: (dirs,) bool, whether direction d runs
    backwards; y: (T, B, dirs*H) output; blocks: how many blocks of rows to split the batch into
    (1 <= blocks <= max(ceil(B / 4), 1)); group: rows per step group (row_group).

    One parallel region per call: each task owns a block of batch rows of one direction and runs
    the whole time loop for them, so threads never synchronize between steps.
    """
    T = xproj.shape[0]
    B = xproj.shape[1]
    dirs = r.shape[0]
    quads = (B + 3) // 4
    xproj, bx, r, rbn, h, acc, hr, lengths, y = borrowed(xproj, bx, r, rbn, h, acc, hr, lengths, y)
    for task in prange(dirs * blocks):
        d = task // blocks
        blk = task % blocks
        # blocks of whole quads of rows, so the 4-row tiles of `matvec` stay full
        b0 = min(B, 4 * (blk * quads // blocks))
        b1 = min(B, 4 * ((blk + 1) * quads // blocks))
        vb = operand_scratch(r, B, h.shape[2])
        passes = 0
        for s in range(T):
            passes = step_rows(xproj, d, bx[d], r[d], rbn[d], h[d], acc[d], hr[d],
                               b0, b1, s, lengths, reverse[d], lbr, clip, y, group, vb, passes)


@njit(**JIT_OPTIONS)
def gru_layer_serial(xproj, bx, r, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, blocks,
                     group):
    """gru_layer on the calling thread: with one task there is nothing to share out, and this
    skips the thread pool's fork-join (a few microseconds, much of a small call)."""
    B = xproj.shape[1]
    vb = operand_scratch(r, B, h.shape[2])
    xproj, bx, r, rbn, h, acc, hr, lengths, y = borrowed(xproj, bx, r, rbn, h, acc, hr, lengths, y)
    for d in range(r.shape[0]):
        passes = 0
        for s in range(xproj.shape[0]):
            passes = step_rows(xproj, d, bx[d], r[d], rbn[d], h[d], acc[d], hr[d],
                               0, B, s, lengths, reverse[d], lbr, clip, y, group, vb, passes)


@njit(inline="always", **JIT_OPTIONS)
def _unit_slice(c, chunks, Hp, P):
    """Units [j0, j1) of slice c of `chunks`, cut at multiples of the panel width P."""
    panels = Hp // P
    return P * (c * panels // chunks), P * ((c + 1) * panels // chunks)


# Polls of a step's done count before a waiting task starts giving its core away: a few
# microseconds, longer than a step's imbalance when every thread has a core to itself.
SPINS_BEFORE_YIELD = 2000


def progress_size(steps: int, slices: int, linear_before_reset: bool) -> int:
    """Length of gru_layer_columns' `progress` array."""
    return steps * (1 if linear_before_reset else 2) * (slices + 1)


@njit(parallel=True, **JIT_OPTIONS)
def gru_layer_columns(xproj, bx, r, rbn, h, h_spare, acc, hr, lengths, reverse, lbr, clip, y,
                      chunks, progress):
    """Run one layer over the whole sequence, hidden units shared out: for batches too small to
    give every thread its own rows.

    Arguments as gru_layer, plus h_spare: (dirs, B, H) scratch; chunks: how many slices of the
    hidden units each direction is cut into (one task per slice); progress: zeros, int64,
    (T * phases * (dirs*chunks + 1),) with phases = 1 when linear_before_reset else 2.

    Every step is one phase (two without linear_before_reset: n's product needs all of r * h).
    In each phase a task first claims its own slice, then any slice no one has claimed, and
    waits until every slice is done before the next phase. So each core keeps reading the same
    slice of the recurrent weights from its own cache, with no fork-join per step, and a task
    that starts late (its thread busy elsewhere) holds nobody up: the others take its slices.
    The state is double-buffered because every slice reads all of it.
    """
    T = xproj.shape[0]
    B = xproj.shape[1]
    dirs = r.shape[0]
    Hp = acc.shape[2] // 3
    P = r.shape[3]
    phases = 1 if lbr else 2
    slices = dirs * chunks
    xproj, bx, r, rbn, h, h_spare, acc, hr, lengths, y, progress = borrowed(
        xproj, bx, r, rbn, h, h_spare, acc, hr, lengths, y, progress)
    for task in prange(slices):
        vb = operand_scratch(r, B, h.shape[2])
        for q in range(T * phases):
            s = q // phases
            current, spare = (h, h_spare) if s % 2 == 0 else (h_spare, h)
            status = progress[q * (slices + 1):(q + 1) * (slices + 1)]  # claims, then done count
            for i in range(slices):
                c = (task + i) % slices
                if not atomics.claim(status, c):
                    continue
                d = c // chunks
                j0, j1 = _unit_slice(c % chunks, chunks, Hp, P)
                backwards = s % 2 == 1  # a slice's weights, read by the same core each step
                if q % phases == 0:
                    gates(xproj, d, bx[d], r[d], rbn[d], current[d], acc[d], hr[d], 0, B, j0, j1,
                          s, lengths, reverse[d], lbr, clip, vb, backwards)
                if lbr or q % phases == 1:
                    update(xproj, d, bx[d], r[d], current[d], spare[d], acc[d], hr[d], 0, B,
                           j0, j1, s, lengths, reverse[d], lbr, clip, vb, backwards, y)
                atomics.add(status, slices, 1)
            waited = 0
            while atomics.load(status, slices) < slices:
                waited += 1
                if waited > SPINS_BEFORE_YIELD:
                    atomics.yield_cpu()
    if T % 2:
        h[...] = h_spare


@njit(**JIT_OPTIONS)
def gru_stream_step(x, h, w0, wrest, bx, r, rbn, xproj, acc, hr, ones, lbr, clip, ys, group,
                    passes, out):
    """One step of a unidirectional stack, all layers, in one call.

    x: (B, D), h: (L, B, H) state, updated in place; w0: (3Hp/P, D, P) first layer's W, wrest:
    (L-1, 3Hp/P, H, P) the other layers'; bx: (L, 1, 3Hp), r: (L, 1, 3Hp/P, H, P), rbn:
    (L, 1, H); xproj: (1, B, 3Hp), acc: (B, 3Hp), hr: (B, H) scratch; ones: (B,) int64 of 1;
    ys: (L, 1, B, H) per-layer outputs; group: rows per group (row_group); passes: the count
    this returned at the stream's previous step (0 at the first), which sets the order the
    weights are read in (see `gates`); out: (B, H) receives the top layer's output.
    """
    L = h.shape[0]
    B = x.shape[0]
    x, h, w0, wrest, bx, r, rbn, xproj, acc, hr, ones, ys, out = borrowed(
        x, h, w0, wrest, bx, r, rbn, xproj, acc, hr, ones, ys, out)
    vb = operand_scratch(w0, B, max(x.shape[1], h.shape[2]))
    after = passes
    for k in range(L):
        inp = x if k == 0 else ys[k - 1, 0]
        w = w0 if k == 0 else wrest[k - 1]
        matvec(operand(inp, w, vb, 0, B), w, xproj[0], 0, B, 0, w.shape[0], passes % 2 == 1)
        after = step_rows(xproj, 0, bx[k, 0], r[k, 0], rbn[k, 0], h[k], acc, hr,
                          0, B, 0, ones, False, lbr, clip, ys[k], group, vb, passes)
    out[:, :] = ys[L - 1, 0]
    return after


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
