"""The GRU kernels: plain loops over contiguous arrays of one dtype, writing into caller buffers.

Layout (canonical, see fastgru/_weights.py): gates are ordered (z, r, n). For one layer:

    rt   : (dirs, H, 3H)   recurrent weights, transposed so the inner loop runs over 3H outputs
    bx   : (dirs, 3H)      bias added to the input projection: Wb + Rb for z and r; Wb_n (+ Rb_n
                           when linear_before_reset = 0, where Rb_n sits outside the reset product)
    rbn  : (dirs, H)       Rb_n, used only when linear_before_reset = 1 (inside r * (...))
    xproj: (T, B, dirs*3H) x_t @ W^T for every step, computed before the time loop (BLAS)
    h    : (dirs, B, H)    state: the initial state on entry, the final state on return

Nothing here checks its inputs or allocates inside the time loop; the public surface does both.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastgru.kernels.config import JIT_OPTIONS

# Rows of one batch block that share each pass over the recurrent weights. Their accumulators
# (ROW_GROUP * 3H values) stay in L1/L2 while a weight row is reused ROW_GROUP times.
ROW_GROUP = 8


@njit(inline="always", **JIT_OPTIONS)
def _clip(v, c):
    # Written with comparisons so NaN passes through unchanged.
    if v > c:
        return c
    if v < -c:
        return -c
    return v


@njit(inline="always", **JIT_OPTIONS)
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(**JIT_OPTIONS)
def _accumulate(h, rt, acc, b0, b1, col0, col1):
    """acc[b, col0:col1] += h[b, :] @ rt[:, col0:col1] for rows b0 <= b < b1.

    h: (B, H), rt: (H, 3H), acc: (B, 3H).
    """
    H = h.shape[1]
    for k in range(H):
        w = rt[k]
        for b in range(b0, b1):
            hk = h[b, k]
            a = acc[b]
            for j in range(col0, col1):
                a[j] += hk * w[j]


@njit(**JIT_OPTIONS)
def step_rows(xproj, col, bx, rt, rbn, h, acc, hr, b0, b1, s, lengths, reverse, lbr, clip, y):
    """Advance rows b0 <= b < b1 of one direction by step s (0-based count of steps taken).

    xproj: (T, B, >= col + 3H), this direction's projection starts at column col.
    bx: (3H,), rt: (H, 3H), rbn: (H,), h: (B, H) updated in place, acc: (B, 3H) and
    hr: (B, H) scratch, lengths: (B,) steps of each row, y: (T, B, >= col/3 + H) receives h_t
    at the row's time index, and zeros at steps past the row's length.
    Row b reads x[t] with t = s (forward) or t = lengths[b] - 1 - s (reverse).
    """
    H = h.shape[1]
    ycol = col // 3
    nrec = 3 * H if lbr else 2 * H  # with lbr = 0, R_n multiplies r * h: a second product below
    for g0 in range(b0, b1, ROW_GROUP):
        g1 = min(g0 + ROW_GROUP, b1)
        acc[g0:g1, :nrec] = 0.0
        _accumulate(h, rt, acc, g0, g1, 0, nrec)
        for b in range(g0, g1):
            if s >= lengths[b]:
                y[s, b, ycol:ycol + H] = 0.0
                continue
            t = lengths[b] - 1 - s if reverse else s
            xp = xproj[t, b]
            a = acc[b]
            hb = h[b]
            for j in range(H):
                z = _sigmoid(_clip(xp[col + j] + bx[j] + a[j], clip))
                r = _sigmoid(_clip(xp[col + H + j] + bx[H + j] + a[H + j], clip))
                a[j] = z
                if lbr:
                    a[2 * H + j] = r * (a[2 * H + j] + rbn[j])
                else:
                    hr[b, j] = r * hb[j]
        if not lbr:
            acc[g0:g1, 2 * H:] = 0.0
            _accumulate(hr, rt, acc, g0, g1, 2 * H, 3 * H)
        for b in range(g0, g1):
            if s >= lengths[b]:
                continue
            t = lengths[b] - 1 - s if reverse else s
            xp = xproj[t, b]
            a = acc[b]
            hb = h[b]
            yb = y[t, b]
            for j in range(H):
                n = np.tanh(_clip(xp[col + 2 * H + j] + bx[2 * H + j] + a[2 * H + j], clip))
                z = a[j]
                hj = (1.0 - z) * n + z * hb[j]
                hb[j] = hj
                yb[ycol + j] = hj


@njit(parallel=True, **JIT_OPTIONS)
def gru_layer(xproj, bx, rt, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, blocks):
    """Run one layer (all directions) over the whole sequence.

    xproj: (T, B, dirs*3H), bx: (dirs, 3H), rt: (dirs, H, 3H), rbn: (dirs, H),
    h: (dirs, B, H) initial state in, final state out; acc: (dirs, B, 3H), hr: (dirs, B, H)
    scratch; lengths: (B,) int64 in [0, T]; reverse: (dirs,) bool, whether direction d runs
    backwards; y: (T, B, dirs*H) output; blocks: how many blocks of rows to split the batch into
    (1 <= blocks <= max(B, 1)).

    One parallel region per call: each task owns a block of batch rows of one direction and runs
    the whole time loop for them, so threads never synchronize between steps. Every row is
    computed with the same operations in the same order whatever the blocking, so results do not
    depend on the thread count or on the other rows.
    """
    T = xproj.shape[0]
    B = xproj.shape[1]
    dirs = rt.shape[0]
    H = rt.shape[1]
    for task in prange(dirs * blocks):
        d = task // blocks
        blk = task % blocks
        b0 = blk * B // blocks
        b1 = (blk + 1) * B // blocks
        for s in range(T):
            step_rows(xproj, d * 3 * H, bx[d], rt[d], rbn[d], h[d], acc[d], hr[d],
                      b0, b1, s, lengths, reverse[d], lbr, clip, y)


@njit(**JIT_OPTIONS)
def gru_stream_step(x, w0t, wrest, bx, rt, rbn, h, xproj, acc, hr, ones, lbr, clip, ys, out):
    """One step of a unidirectional stack, all layers, in one call.

    x: (B, D), w0t: (D, 3H) first layer's W^T, wrest: (L-1, H, 3H) the other layers' W^T,
    bx: (L, 1, 3H), rt: (L, 1, H, 3H), rbn: (L, 1, H), h: (L, B, H) state, updated in place;
    xproj: (1, B, 3H), acc: (B, 3H), hr: (B, H) scratch; ones: (B,) int64 of 1;
    ys: (L, 1, B, H) per-layer outputs; out: (B, H) receives the top layer's output.
    """
    L = h.shape[0]
    B = x.shape[0]
    for l in range(L):
        inp = x if l == 0 else ys[l - 1, 0]
        wt = w0t if l == 0 else wrest[l - 1]
        xp = xproj[0]
        xp[:, :] = 0.0
        for b in range(B):
            for k in range(inp.shape[1]):
                v = inp[b, k]
                w = wt[k]
                xb = xp[b]
                for j in range(xb.shape[0]):
                    xb[j] += v * w[j]
        step_rows(xproj, 0, bx[l, 0], rt[l, 0], rbn[l, 0], h[l], acc, hr,
                  0, B, 0, ones, False, lbr, clip, ys[l])
    out[:, :] = ys[L - 1, 0]
