"""The bfloat16 paths: weights widened as read, or packed in pairs of inputs with operands to match.

A bfloat16 model takes one of three paths (PATHS: those this CPU runs, the fastest last, as
cpu.py picks them; a model packed with kernel_path= takes the one it names):

- "widen" (every CPU): (panels, K, P) uint16 panels, each row's values interleaved in blocks
  (simd.interleave_halves) and widened to float32 as they are read (simd.load_pair). Only the
  weights are rounded.
- "dot" (CPUs with vdpbf16ps, cpu.BF16_DOT_PRODUCTS): each panel packed as (panels,
  ceil(K/2), P) uint32, word [m, c] holding the weights of inputs 2m (low half) and 2m+1 (high
  half) for gate column c. `matvec` multiplies them by an operand of the same pairs, (B, pairs)
  uint32, made from the float32 operand by rounding it to bfloat16 (`operand`), and each
  instruction does two multiply-adds per lane.
- "tiles" (CPUs with AMX, cpu.AMX): the same pairs as int32, padded with zero pairs to a
  multiple of amx.TILE_PAIRS, multiplied on the tile units (amx.py).

On the paired paths inputs and states are rounded to bfloat16 where they are multiplied (as
OpenVINO's and oneDNN's bf16 modes do); the state itself, the gates and the outputs stay float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload
from numba.np import numpy_support

from fastgru.kernels.amx import TILE_PAIRS
from fastgru.kernels.borrow import borrowed
from fastgru.kernels.cpu import BF16_PATHS
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import full_width_loops, interleave_halves, lanes, load, store_bfloat16

PATHS = BF16_PATHS

# The dtypes of paired weights, each with the multiple its pairs are padded to
PAIR_MULTIPLE = {np.dtype(np.uint32): 1, np.dtype(np.int32): TILE_PAIRS}


def pack(panels: np.ndarray, path: str) -> np.ndarray:
    """(panels, K, P) uint16 bfloat16 panels -> the weights `path` multiplies (see above)."""
    if path == "widen":
        return interleave_halves(panels)
    if path == "dot":
        return pair_inputs(panels)
    return pair_inputs(panels, TILE_PAIRS).view(np.int32)


def pair_inputs(panels: np.ndarray, multiple: int = 1) -> np.ndarray:
    """(panels, K, P) uint16 bfloat16 panels -> (panels, pairs, P) uint32 pairs of inputs, pairs
    being ceil(K/2) rounded up to a multiple of `multiple` (zero inputs in the padding)."""
    n, K, P = panels.shape
    padded = np.zeros((n, 2 * _pairs(K, multiple), P), np.uint16)
    padded[:, :K] = panels
    pairs = padded.reshape(n, -1, 2, P).transpose(0, 1, 3, 2)  # (panels, pairs, P, 2)
    return np.ascontiguousarray(pairs).view(np.uint32).reshape(n, -1, P)


@njit(inline="always", **JIT_OPTIONS)
def _pairs(inputs, multiple):
    """ceil(inputs/2) rounded up to a multiple of `multiple`."""
    return -(-((inputs + 1) // 2) // multiple) * multiple


@njit(inline="always", **JIT_OPTIONS)
def _round(bits):
    """The bfloat16 nearest a float32 given by its bits (uint32), ties to even, in the low half;
    a subnormal value gives a zero of its sign and a NaN the quiet NaN of its sign and top half,
    as simd.store_bfloat16 does (rounding a NaN's bits would carry them to a zero or an inf)."""
    if bits & np.uint32(0x7FFFFFFF) > np.uint32(0x7F800000):
        return (bits >> np.uint32(16)) | np.uint32(0x40)
    if bits & np.uint32(0x7F800000) == 0:
        return (bits >> np.uint32(16)) & np.uint32(0x8000)
    return (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


_LANES = lanes(np.float32)


@njit(**JIT_OPTIONS)
def round_to_pairs(v, pairs, b0, b1):
    """pairs[b, m] = bf16(v[b, 2m]) | bf16(v[b, 2m+1]) << 16 for rows b0 <= b < b1.

    v: (B, K) float32, pairs: (B, >= ceil(K/2)) uint32; an odd K's last pair has a zero high
    half, and pairs past ceil(K/2) (a tile's padding) are zeros. Rounded to nearest, ties to
    even, subnormal values (below 2^-126) to zero, NaNs to quiet NaNs of their sign: a vector of
    values at a time by the CPU's conversion (simd.store_bfloat16; the integer arithmetic that
    LLVM made of `_round` took as long as half a gate's sigmoid: bench/RESULTS.md, "Thresholds
    in the code", Kernels (rounding to bfloat16)), the rest one at a time.
    """
    full_width_loops()
    K = v.shape[1]
    whole = K // _LANES * _LANES  # values converted _LANES at a time
    for b in range(b0, b1):
        vb, row = v[b], pairs[b]
        for k in range(0, whole, _LANES):
            store_bfloat16(row, k // 2, load(vb, k))
        bits = vb.view(np.uint32)
        for m in range(whole // 2, K // 2):
            row[m] = _round(bits[2 * m]) | (_round(bits[2 * m + 1]) << np.uint32(16))
        if K % 2:
            row[K // 2] = _round(bits[K - 1])
        for m in range((K + 1) // 2, row.shape[0]):
            row[m] = 0


def operand(v, w, scratch, b0, b1):
    """What `matvec` multiplies weights w by: v (B, K) itself, or for paired weights (uint32 or
    int32) rows b0..b1 of v rounded to (B, pairs) uint32 pairs, as many pairs as w has, held in
    scratch (operand_scratch, at least as large). For njit code."""


def _pair_multiple(w) -> int | None:
    """PAIR_MULTIPLE of Numba array type w's dtype, None for weights that are not paired."""
    return PAIR_MULTIPLE.get(numpy_support.as_dtype(w.dtype))


@overload(operand)
def _operand(v, w, scratch, b0, b1):
    if _pair_multiple(w) is not None:
        def paired(v, w, scratch, b0, b1):
            n = w.shape[1]
            # borrowed: the kernel holds scratch across its time loop, where this is called
            (whole,) = borrowed(scratch)
            pairs = whole.reshape(-1)[:v.shape[0] * n].reshape(v.shape[0], n)
            round_to_pairs(v, pairs, b0, b1)
            return pairs
        return paired
    return lambda v, w, scratch, b0, b1: v


def operand_scratch(w, rows, inputs):
    """The scratch `operand` needs for weights w and up to `inputs` inputs: (rows, pairs)
    uint32 for paired weights, an empty array otherwise. For njit code, outside time loops (it
    allocates)."""


# What operand_scratch gives for weights that need none: a global, so a constant of the compiled
# code with no memory owner, whose passing from function to function counts no references
_NO_SCRATCH = np.empty((0, 0), np.uint32)


@overload(operand_scratch)
def _operand_scratch(w, rows, inputs):
    multiple = _pair_multiple(w)
    if multiple is not None:
        return lambda w, rows, inputs: np.empty((rows, _pairs(inputs, multiple)), np.uint32)
    return lambda w, rows, inputs: _NO_SCRATCH


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
