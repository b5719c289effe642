"""The GRU kernels: plain loops over contiguous arrays of one dtype, writing into caller buffers.

Layout (canonical, see fastgru/_weights.py): gates are ordered (z, r, n). For one layer:

    r    : (dirs, 3H, H)   recurrent weights, rows = outputs, as ONNX stores them
    bx   : (dirs, 3H)      bias added to the input projection: Wb + Rb for z and r; Wb_n (+ Rb_n
                           when linear_before_reset = 0, where Rb_n sits outside the reset product)
    rbn  : (dirs, H)       Rb_n, used only when linear_before_reset = 1 (inside r * (...))
    xproj: (T, B, dirs*3H) x_t @ W^T for every step, computed before the time loop (`project`)
    h    : (dirs, B, H)    state: the initial state on entry, the final state on return

Nothing here checks its inputs or allocates inside the time loop; the public surface does both.
"""

from __future__ import annotations

from numba import njit, prange

from fastgru.kernels.activations import sigmoid, tanh
from fastgru.kernels.config import FASTMATH, JIT_OPTIONS

# Rows of one batch block that share each pass over the recurrent weights: a weight row loaded
# once from L2/L3 serves ROW_GROUP dot products from L1. A multiple of 4 (see matvec_rows).
ROW_GROUP = 8


@njit(inline="always", **JIT_OPTIONS)
def _clip(v, c):
    # Written with comparisons so NaN passes through unchanged.
    if v > c:
        return c
    if v < -c:
        return -c
    return v


# reassoc lets LLVM split each dot product into SIMD partial sums. The order of those sums is
# fixed by the code, not by the data or the thread count, so results stay reproducible.
_MATVEC_OPTIONS = {**JIT_OPTIONS, "fastmath": FASTMATH | {"reassoc"}}


@njit(**_MATVEC_OPTIONS)
def matvec_rows(v, m, out, b0, b1, j0, j1, o0):
    """out[b, o0 + j - j0] = m[j, :] . v[b, :] for rows b0 <= b < b1 and j0 <= j < j1.

    v: (B, K), m: (J, K), out: (B, >= o0 + j1 - j0).
    Register tiles: rows of v in fours (starting at b0) times four rows of m, 16 sums per pass
    over k; rows left over (fewer than four, at b1) one at a time times eight rows of m. Eight
    or more independent sums share each load and hide the latency of the final horizontal adds.
    """
    K = v.shape[1]
    zero = v.dtype.type(0.0)
    bq = b0 + (b1 - b0) // 4 * 4
    j = j0
    while j + 4 <= j1 and bq > b0:
        m0, m1, m2, m3 = m[j], m[j + 1], m[j + 2], m[j + 3]
        o = o0 + j - j0
        for b in range(b0, bq, 4):
            v0, v1, v2, v3 = v[b], v[b + 1], v[b + 2], v[b + 3]
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
            for k in range(K):
                w0, w1, w2, w3 = m0[k], m1[k], m2[k], m3[k]
                x0, x1, x2, x3 = v0[k], v1[k], v2[k], v3[k]
                a00 += w0 * x0
                a01 += w1 * x0
                a02 += w2 * x0
                a03 += w3 * x0
                a10 += w0 * x1
                a11 += w1 * x1
                a12 += w2 * x1
                a13 += w3 * x1
                a20 += w0 * x2
                a21 += w1 * x2
                a22 += w2 * x2
                a23 += w3 * x2
                a30 += w0 * x3
                a31 += w1 * x3
                a32 += w2 * x3
                a33 += w3 * x3
            ob = out[b]
            ob[o], ob[o + 1], ob[o + 2], ob[o + 3] = a00, a01, a02, a03
            ob = out[b + 1]
            ob[o], ob[o + 1], ob[o + 2], ob[o + 3] = a10, a11, a12, a13
            ob = out[b + 2]
            ob[o], ob[o + 1], ob[o + 2], ob[o + 3] = a20, a21, a22, a23
            ob = out[b + 3]
            ob[o], ob[o + 1], ob[o + 2], ob[o + 3] = a30, a31, a32, a33
        j += 4
    jq = j  # the quads are done for j0 <= j < jq
    j = j0
    while j + 8 <= j1 and bq < b1:
        m0, m1, m2, m3 = m[j], m[j + 1], m[j + 2], m[j + 3]
        m4, m5, m6, m7 = m[j + 4], m[j + 5], m[j + 6], m[j + 7]
        o = o0 + j - j0
        for b in range(bq, b1):
            vb = v[b]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
            for k in range(K):
                x = vb[k]
                a0 += m0[k] * x
                a1 += m1[k] * x
                a2 += m2[k] * x
                a3 += m3[k] * x
                a4 += m4[k] * x
                a5 += m5[k] * x
                a6 += m6[k] * x
                a7 += m7[k] * x
            ob = out[b]
            ob[o], ob[o + 1], ob[o + 2], ob[o + 3] = a0, a1, a2, a3
            ob[o + 4], ob[o + 5], ob[o + 6], ob[o + 7] = a4, a5, a6, a7
        j += 8
    # whatever the tiles left: single dot products
    for b in range(b0, b1):
        vb = v[b]
        for jj in range(jq if b < bq else j, j1):
            mj = m[jj]
            acc = zero
            for k in range(K):
                acc += mj[k] * vb[k]
            out[b, o0 + jj - j0] = acc


# Rows of x per task of `project`: the block stays in L1/L2 while all of W streams past it.
PROJECT_ROWS = 64


@njit(parallel=True, **JIT_OPTIONS)
def project(x, w, out):
    """out = x @ w.T: the input projection of every step, before the time loop.

    x: (N, D), w: (J, D), out: (N, J). Blocks of PROJECT_ROWS rows are shared among Numba's
    threads (a multiple of 4, so each row meets the same register tiles whatever the thread
    count). Done here rather than by NumPy's BLAS so that one thread pool runs all the work: BLAS
    threads spinning beside Numba's stole the cores and made two threads slower than one.
    """
    N = x.shape[0]
    for block in prange((N + PROJECT_ROWS - 1) // PROJECT_ROWS):
        b0 = block * PROJECT_ROWS
        matvec_rows(x, w, out, b0, min(N, b0 + PROJECT_ROWS), 0, w.shape[0], 0)


@njit(**JIT_OPTIONS)
def gates(xproj, col, bx, r, rbn, h, acc, hr, b0, b1, j0, j1, s, lengths, reverse, lbr, clip):
    """First half of step s for rows b0 <= b < b1 and hidden units j0 <= j < j1.

    xproj: (T, B, >= col + 3H), this direction's projection starting at column col; bx: (3H,),
    r: (3H, H), rbn: (H,), h: (B, H) the state before the step; acc: (B, 3H), hr: (B, H) scratch.
    Leaves z in acc[b, j], and r * (R_n h + Rb_n) in acc[b, 2H + j] with lbr; without lbr, r * h
    in hr[b, j] for R_n to multiply in `update` once every unit of hr is known.
    Row b reads x[t] with t = s (forward) or t = lengths[b] - 1 - s (reverse); rows whose length
    is at most s are skipped.
    """
    H = h.shape[1]
    matvec_rows(h, r, acc, b0, b1, j0, j1, j0)
    matvec_rows(h, r, acc, b0, b1, H + j0, H + j1, H + j0)
    if lbr:
        matvec_rows(h, r, acc, b0, b1, 2 * H + j0, 2 * H + j1, 2 * H + j0)
    for b in range(b0, b1):
        if s >= lengths[b]:
            continue
        t = lengths[b] - 1 - s if reverse else s
        xp = xproj[t, b]
        az = acc[b, :H]
        ar = acc[b, H:2 * H]
        hb = h[b]
        hrb = hr[b]
        # Loops over few arrays each, so that LLVM vectorizes them (see `update`).
        xz = xp[col:col + H]
        xr = xp[col + H:col + 2 * H]
        br = bx[H:2 * H]
        for j in range(j0, j1):
            az[j] = sigmoid(_clip(xz[j] + bx[j] + az[j], clip))
        for j in range(j0, j1):
            hrb[j] = sigmoid(_clip(xr[j] + br[j] + ar[j], clip))
        if lbr:
            an = acc[b, 2 * H:]
            for j in range(j0, j1):
                an[j] = hrb[j] * (an[j] + rbn[j])
        else:
            for j in range(j0, j1):
                hrb[j] *= hb[j]


@njit(**JIT_OPTIONS)
def update(xproj, col, bx, r, h, h_new, acc, hr, b0, b1, j0, j1, s, lengths, reverse, lbr, clip,
           y):
    """Second half of step s (see `gates`): n, then h_new[b, j] = (1 - z) n + z h[b, j].

    h_new may be h itself. y: (T, B, >= col/3 + H) receives h_new at the row's time index, and
    zeros at steps past the row's length (whose state is carried over unchanged).
    """
    H = h.shape[1]
    one = h.dtype.type(1.0)
    ycol = col // 3
    if not lbr:
        matvec_rows(hr, r, acc, b0, b1, 2 * H + j0, 2 * H + j1, 2 * H + j0)
    for b in range(b0, b1):
        if s >= lengths[b]:
            y[s, b, ycol + j0:ycol + j1] = 0.0
            h_new[b, j0:j1] = h[b, j0:j1]
            continue
        t = lengths[b] - 1 - s if reverse else s
        xp = xproj[t, b]
        az = acc[b, :H]
        an = acc[b, 2 * H:]
        hb = h[b]
        # Loops over few arrays each: LLVM vectorizes a loop only when it can check at run time
        # that the arrays it stores to overlap none it reads, and gives up beyond a few checks.
        xn = xp[col + 2 * H:col + 3 * H]
        bn = bx[2 * H:]
        for j in range(j0, j1):
            an[j] = tanh(_clip(xn[j] + bn[j] + an[j], clip))
        for j in range(j0, j1):  # into az, not h_new: h_new may be h, which an overlap check
            z = az[j]            # cannot tell from a true overlap
            az[j] = (one - z) * an[j] + z * hb[j]
        h_new[b, j0:j1] = az[j0:j1]
        y[t, b, ycol + j0:ycol + j1] = az[j0:j1]


@njit(**JIT_OPTIONS)
def step_rows(xproj, col, bx, r, rbn, h, acc, hr, b0, b1, s, lengths, reverse, lbr, clip, y):
    """Advance rows b0 <= b < b1 of one direction by step s, all units, h updated in place."""
    H = h.shape[1]
    for g0 in range(b0, b1, ROW_GROUP):
        g1 = min(g0 + ROW_GROUP, b1)
        gates(xproj, col, bx, r, rbn, h, acc, hr, g0, g1, 0, H, s, lengths, reverse, lbr, clip)
        update(xproj, col, bx, r, h, h, acc, hr, g0, g1, 0, H, s, lengths, reverse, lbr, clip, y)


@njit(parallel=True, **JIT_OPTIONS)
def gru_layer(xproj, bx, r, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, blocks):
    """Run one layer (all directions) over the whole sequence, batch rows shared out.

    xproj: (T, B, dirs*3H), bx: (dirs, 3H), r: (dirs, 3H, H), rbn: (dirs, H),
    h: (dirs, B, H) initial state in, final state out; acc: (dirs, B, 3H), hr: (dirs, B, H)
    scratch; lengths: (B,) int64 in [0, T]; reverse: (dirs,) bool, whether direction d runs
    backwards; y: (T, B, dirs*H) output; blocks: how many blocks of rows to split the batch into
    (1 <= blocks <= max(ceil(B / 4), 1)).

    One parallel region per call: each task owns a block of batch rows of one direction and runs
    the whole time loop for them, so threads never synchronize between steps.
    """
    T = xproj.shape[0]
    B = xproj.shape[1]
    dirs = r.shape[0]
    H = r.shape[2]
    quads = (B + 3) // 4
    for task in prange(dirs * blocks):
        d = task // blocks
        blk = task % blocks
        # blocks start at multiples of 4 rows, so every row meets the same register tiles in
        # matvec_rows (and gets bit-identical results) whatever the thread count
        b0 = min(B, 4 * (blk * quads // blocks))
        b1 = min(B, 4 * ((blk + 1) * quads // blocks))
        for s in range(T):
            step_rows(xproj, d * 3 * H, bx[d], r[d], rbn[d], h[d], acc[d], hr[d],
                      b0, b1, s, lengths, reverse[d], lbr, clip, y)


@njit(**JIT_OPTIONS)
def gru_layer_serial(xproj, bx, r, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, blocks):
    """gru_layer on the calling thread: with one task there is nothing to share out, and this
    skips the thread pool's fork-join (a few microseconds, much of a small call)."""
    B = xproj.shape[1]
    H = r.shape[2]
    for d in range(r.shape[0]):
        for s in range(xproj.shape[0]):
            step_rows(xproj, d * 3 * H, bx[d], r[d], rbn[d], h[d], acc[d], hr[d],
                      0, B, s, lengths, reverse[d], lbr, clip, y)


@njit(inline="always", **JIT_OPTIONS)
def _unit_slice(c, chunks, H):
    """Hidden units [j0, j1) of slice c of `chunks`, cut at multiples of 8 (see matvec_rows)."""
    octs = (H + 7) // 8
    return min(H, 8 * (c * octs // chunks)), min(H, 8 * ((c + 1) * octs // chunks))


@njit(parallel=True, **JIT_OPTIONS)
def gru_layer_columns(xproj, bx, r, rbn, h, h_spare, acc, hr, lengths, reverse, lbr, clip, y,
                      chunks):
    """Run one layer over the whole sequence, hidden units shared out: for batches too small to
    give every thread its own rows.

    Arguments as gru_layer, plus h_spare: (dirs, B, H) scratch, and chunks: how many slices of
    the hidden units each direction is cut into. Each task computes the gate rows of its slice,
    so each core reads only its slice of the recurrent weights (which can then stay in its own
    cache); the state is double-buffered because every slice reads all of it. One fork-join per
    step (two when linear_before_reset = 0). Slices start at multiples of 8 units, so rows meet
    the same register tiles as in gru_layer and results are bit-identical to it.
    """
    T = xproj.shape[0]
    B = xproj.shape[1]
    dirs = r.shape[0]
    H = r.shape[2]
    current, spare = h, h_spare
    for s in range(T):
        for task in prange(dirs * chunks):
            d = task // chunks
            j0, j1 = _unit_slice(task % chunks, chunks, H)
            gates(xproj, d * 3 * H, bx[d], r[d], rbn[d], current[d], acc[d], hr[d], 0, B, j0, j1,
                  s, lengths, reverse[d], lbr, clip)
            if lbr:
                update(xproj, d * 3 * H, bx[d], r[d], current[d], spare[d], acc[d], hr[d], 0, B,
                       j0, j1, s, lengths, reverse[d], lbr, clip, y)
        if not lbr:
            for task in prange(dirs * chunks):
                d = task // chunks
                j0, j1 = _unit_slice(task % chunks, chunks, H)
                update(xproj, d * 3 * H, bx[d], r[d], current[d], spare[d], acc[d], hr[d], 0, B,
                       j0, j1, s, lengths, reverse[d], lbr, clip, y)
        current, spare = spare, current
    if T % 2:
        h[...] = current


@njit(**JIT_OPTIONS)
def gru_stream_step(x, w0, wrest, bx, r, rbn, h, xproj, acc, hr, ones, lbr, clip, ys, out):
    """One step of a unidirectional stack, all layers, in one call.

    x: (B, D), w0: (3H, D) first layer's W, wrest: (L-1, 3H, H) the other layers' W,
    bx: (L, 1, 3H), r: (L, 1, 3H, H), rbn: (L, 1, H), h: (L, B, H) state, updated in place;
    xproj: (1, B, 3H), acc: (B, 3H), hr: (B, H) scratch; ones: (B,) int64 of 1;
    ys: (L, 1, B, H) per-layer outputs; out: (B, H) receives the top layer's output.
    """
    L = h.shape[0]
    B = x.shape[0]
    for k in range(L):
        inp = x if k == 0 else ys[k - 1, 0]
        w = w0 if k == 0 else wrest[k - 1]
        matvec_rows(inp, w, xproj[0], 0, B, 0, w.shape[0], 0)
        step_rows(xproj, 0, bx[k, 0], r[k, 0], rbn[k, 0], h[k], acc, hr,
                  0, B, 0, ones, False, lbr, clip, ys[k])
    out[:, :] = ys[L - 1, 0]
