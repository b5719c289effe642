"""The operand types of the one product kernel (products.matvec), and what each does.

The product's tiles are written once over these primitives, each an overload that picks its code
by the Numba types of the weights and the activations, at compile time:

- float weights (float32, float64; bfloat16 as uint16 widened as read, or uint32 pairs for the
  CPU's dot products): rows of the activations, sums from zero, fused multiply-adds (simd.fma,
  which also takes the bfloat16 forms), stored as they are;
- int8 weights (an Int8Weights, kernels/int8_pack.py): with a Quantized operand ("vnni"), rows
  of its bytes, sums from the zero points' start, vpdpbusd, stored scaled by both scales; with
  float32 rows ("widen"), the int8 values widened as read, fused multiply-adds, stored scaled.

Also what the GRU kernels need of weights of any type (`length`, `panel_width`, `select`) and
of their operands (`operand`, `operand_scratch`).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from fastgru.kernels import bfloat16, int8
from fastgru.kernels.int8_pack import LANES, PANEL, Int8Weights, Quantized, quantize_rows
from fastgru.kernels.simd import Vector, fma, load_pair, splat, store


def _is_int8(w) -> bool:
    return isinstance(w, types.BaseNamedTuple) and w.instance_class is Int8Weights


def _is_quantized(v) -> bool:
    return isinstance(v, types.BaseNamedTuple) and v.instance_class is Quantized


def vector_lanes(wp):
    """L: the lanes of one of the four vectors of a panel row (P = 4L)."""


@overload(vector_lanes, inline="always")
def _lanes_for(wp):
    if _is_int8(wp):
        return lambda wp: LANES
    return lambda wp: wp.shape[2] // 4


def panel_rows(wp):
    """wp's panels as an array indexed by panel: wp itself, or an int8 weights' words flattened
    to (panels, G*P): each panel one row, whose length the loads treat as the constant P (see
    `load_weights`)."""


@overload(panel_rows, inline="always")
def _panel_rows_for(wp):
    if _is_int8(wp):
        return lambda wp: wp.words.reshape(wp.words.shape[0], wp.words.shape[1] * PANEL)
    return lambda wp: wp


def panel_size(flat):
    """Elements of one panel of _panel_rows' array."""


@overload(panel_size, inline="always")
def _panel_size_for(flat):
    if flat.ndim == 2:
        return lambda flat: flat.shape[1]
    return lambda flat: flat.shape[1] * flat.shape[2]


def row_source(v):
    """The rows the tiles read an input from: v, or a Quantized operand's words."""


@overload(row_source, inline="always")
def _rows_for(v):
    if _is_quantized(v):
        return lambda v: v.words
    return lambda v: v


def operand_rows(v) -> int:
    """How many rows an operand of `matvec` has."""


@overload(operand_rows, inline="always")
def _operand_rows_for(v):
    return lambda v: row_source(v).shape[0]


def panel_inputs(panel):
    """Rows of one panel: K (or G groups of four int8 inputs)."""


@overload(panel_inputs, inline="always")
def _inputs_for(panel):
    if panel.ndim == 1:
        return lambda panel: panel.shape[0] // PANEL
    return lambda panel: panel.shape[0]


def load_weights(panel, k, c):
    """The two weight vectors of panel row k at columns c and c + L."""


@overload(load_weights, inline="always")
def _load_pair_for(panel, k, c):
    if panel.ndim == 2:
        return lambda panel, k, c: load_pair(panel[k], c)
    # a flat int8 panel: with the row length the constant PANEL, the addresses are one pointer
    # plus constant offsets (with a length read from the array, LLVM kept 32 offsets of its
    # unrolled loop on the stack and reloaded them)
    load = int8.load_words if panel.dtype == types.int32 else int8.load_widened
    return lambda panel, k, c: (load(panel, k * PANEL + c), load(panel, k * PANEL + c + LANES))


def start(v, wp, out, b, j):
    """Row b's sums for columns j..j + L before any product."""


@overload(start, inline="always")
def _start_for(v, wp, out, b, j):
    if _is_int8(wp) and _is_quantized(v):
        return lambda v, wp, out, b, j: int8.start_sums(wp.colsum, j, v.zero[b])
    return lambda v, wp, out, b, j: splat(out.dtype.type(0.0))


def madd(x, w, sums):
    """sums + x times the weights w: vpdpbusd on int32 sums, else a fused multiply-add."""


@overload(madd, inline="always")
def _madd_for(x, w, sums):
    if sums == Vector(types.int32):
        return lambda x, w, sums: int8.dot_bytes(x, w, sums)
    return lambda x, w, sums: fma(x, w, sums)


def finish(v, wp, row, b, j, sums):
    """row[j:j + L] (row b of the output) from row b's sums: as they are, or scaled for int8
    weights."""


@overload(finish, inline="always")
def _finish_for(v, wp, row, b, j, sums):
    if _is_int8(wp) and _is_quantized(v):
        return lambda v, wp, row, b, j, sums: int8.store_scaled(row, j, sums, wp.scale,
                                                                v.scale[b])
    if _is_int8(wp):
        return lambda v, wp, row, b, j, sums: int8.store_scaled(row, j, sums, wp.scale,
                                                                np.float32(1.0))
    return lambda v, wp, row, b, j, sums: store(row, j, sums)


def length(w) -> int:
    """The length of weights' first axis: the panels of one direction's weights, or the
    directions (layers) of stacked ones. (len() of int8 weights would count their arrays.)"""


@overload(length, inline="always")
def _length_for(w):
    if _is_int8(w):
        return lambda w: w.words.shape[0]
    return lambda w: w.shape[0]


def panel_width(w) -> int:
    """P: the gate columns of one panel of weights w (one direction's, or stacked)."""


@overload(panel_width, inline="always")
def _panel_width_for(w):
    if _is_int8(w):
        return lambda w: PANEL
    return lambda w: w.shape[-1]


def select(w, i):
    """Entry i of stacked weights: w[i], for int8 weights that of each of their arrays."""


@overload(select, inline="always")
def _select_for(w, i):
    if _is_int8(w):
        return lambda w, i: Int8Weights(w.words[i], w.colsum[i], w.scale[i])
    return lambda w, i: w[i]


def operand(v, w, scratch, b0, b1):
    """What `matvec` multiplies weights w by for rows b0..b1 of v (B, K): v itself; for paired
    bfloat16 weights the rows rounded to pairs (bfloat16.operand); for "vnni" int8 weights the
    rows quantized into scratch (an operand_scratch, int8_pack.quantize_rows), which is
    returned. For njit code."""


@overload(operand, inline="always")
def _operand_for(v, w, scratch, b0, b1):
    if _is_int8(w) and w.types[0].dtype == types.int32:
        def quantized(v, w, scratch, b0, b1):
            quantize_rows(v, scratch, b0, b1)
            return scratch
        return quantized
    if _is_int8(w):
        return lambda v, w, scratch, b0, b1: v
    return lambda v, w, scratch, b0, b1: bfloat16.operand(v, w, scratch, b0, b1)


def operand_scratch(w, rows, inputs):
    """The scratch `operand` needs for weights like w (one direction's, or stacked) and up to
    `inputs` inputs a row: a Quantized of (rows, ceil(inputs/4)) words for "vnni" int8 weights,
    else bfloat16.operand_scratch's. For njit code, outside time loops (it allocates)."""


@overload(operand_scratch)
def _operand_scratch_for(w, rows, inputs):
    if _is_int8(w) and w.types[0].dtype == types.int32:
        return lambda w, rows, inputs: Quantized(
            np.zeros((rows, (inputs + 3) // 4), np.uint32), np.zeros(rows, np.int32),
            np.zeros(rows, np.float32))
    if _is_int8(w):
        return lambda w, rows, inputs: _NO_ROWS
    return lambda w, rows, inputs: bfloat16.operand_scratch(w, rows, inputs)


# The widened int8 path's scratch: none (a global, as bfloat16's _NO_SCRATCH)
_NO_ROWS = np.empty((0, 0), np.uint32)
