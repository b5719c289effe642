"""How the kernels lay out a model's arrays: gate columns, weight panels, row groups.

Gate columns. Gates are ordered (z, r, n) (see fastgru/_weights.py). Every array holding one
value per gate output pads each gate from H to Hp units, Hp being H rounded up to a multiple of
the panel width P (`panel_width`): column g*Hp + u is unit u of gate g, and padding columns
(zero weights) are computed but never read. For one layer:

    r    : (dirs, 3Hp/P, H, P) recurrent weights, packed into panels (`pack_gate_rows`)
    bx   : (dirs, 3Hp)         bias added to the input projection: Wb + Rb for z and r; Wb_n
                               (+ Rb_n when linear_before_reset = 0, where Rb_n sits outside
                               the reset product)
    rbn  : (dirs, H)           Rb_n, used only when linear_before_reset = 1 (inside r * (...))
    xproj: (T, B, dirs*3Hp)    x_t @ W^T for every step, computed before the time loop
                               (products.project)
    h    : (dirs, B, H)        state: the initial state on entry, the final state on return

NumPy code, run when a model is packed; the kernels (products.py, gru.py) read what it makes.
"""

from __future__ import annotations

import numpy as np

from fastgru.kernels import cpu
from fastgru.kernels.simd import lanes


def row_group(hidden_size: int, dtype) -> int:
    """Rows advanced together through one step (gates, then update), sharing one pass over the
    recurrent weights: as many as keep their state, gate sums and r*h (about 5H values a row)
    in half of this CPU's L2, so each weight panel streams from memory once per group and is
    reused from cache by every row. A multiple of 4 (see products.matvec), 4 to 256. Faster
    than fixed 8-row groups at batches that make several groups (bench/RESULTS.md, "Thresholds
    in the code", Kernels (row groups)).
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
    """(G*H, K) weights, one row per gate output -> (G*Hp/P, K, P) panels for products.matvec.

    Panel p holds gate columns pP <= j < (p+1)P for every input k, K*P values in a row, so a
    panel streams from memory in order and a tile's weights for one k are P adjacent values.
    """
    P = panel_width(w.dtype)
    columns = pad_gate_columns(np.ascontiguousarray(w.T), hidden_size)  # (K, G*Hp)
    K = columns.shape[0]
    return np.ascontiguousarray(columns.reshape(K, -1, P).transpose(1, 0, 2))
