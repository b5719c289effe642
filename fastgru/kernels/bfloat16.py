"""The bfloat16 dot-product path: weights packed in pairs of inputs, operands rounded to match.

Where the CPU has vdpbf16ps (simd.BF16_DOT_PRODUCTS), a bfloat16 model packs each weight panel
(panels, K, P) as (panels, ceil(K/2), P) uint32: word [m, c] holds the weights of inputs 2m (low
half) and 2m+1 (high half) for gate column c. `matvec` then multiplies by an operand of the same
pairs, (B, ceil(K/2)) uint32, made from the float32 operand by rounding it to bfloat16 (`operand`),
and each instruction does two multiply-adds per lane. The price: inputs and states are rounded
to bfloat16 where they are multiplied (as OpenVINO's and oneDNN's bf16 modes do); the state
itself, the gates and the outputs stay float32.

Elsewhere a bfloat16 model keeps (panels, K, P) uint16 panels, widened to float32 as they are
read (see simd.py): only the weights are rounded.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from fastgru.kernels.borrow import borrowed
from fastgru.kernels.config import JIT_OPTIONS, recover_caches


def pair_inputs(panels: np.ndarray) -> np.ndarray:
    """(panels, K, P) uint16 bfloat16 panels -> (panels, ceil(K/2), P) uint32 pairs (an odd K
    padded with a zero input)."""
    n, K, P = panels.shape
    padded = np.zeros((n, K + K % 2, P), np.uint16)
    padded[:, :K] = panels
    pairs = padded.reshape(n, -1, 2, P).transpose(0, 1, 3, 2)  # (panels, K/2, P, 2)
    return np.ascontiguousarray(pairs).view(np.uint32).reshape(n, -1, P)


@njit(inline="always", **JIT_OPTIONS)
def _round(bits):
    """The bfloat16 nearest a float32 given by its bits (uint32), ties to even, in the low half."""
    return (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit(**JIT_OPTIONS)
def round_to_pairs(v, pairs, b0, b1):
    """pairs[b, m] = bf16(v[b, 2m]) | bf16(v[b, 2m+1]) << 16 for rows b0 <= b < b1.

    v: (B, K) float32, pairs: (B, ceil(K/2)) uint32; an odd K's last pair has a zero high half.
    """
    K = v.shape[1]
    for b in range(b0, b1):
        bits = v[b].view(np.uint32)
        row = pairs[b]
        for m in range(K // 2):
            row[m] = _round(bits[2 * m]) | (_round(bits[2 * m + 1]) << np.uint32(16))
        if K % 2:
            row[K // 2] = _round(bits[K - 1])


def operand(v, w, scratch, b0, b1):
    """What `matvec` multiplies weights w by: v (B, K) itself, or for paired weights (uint32)
    rows b0..b1 of v rounded to (B, ceil(K/2)) uint32 pairs held in scratch (operand_scratch,
    at least as large). For njit code."""


@overload(operand)
def _operand(v, w, scratch, b0, b1):
    if w.dtype == types.uint32:
        def paired(v, w, scratch, b0, b1):
            n = (v.shape[1] + 1) // 2
            # borrowed: the kernel holds scratch across its time loop, where this is called
            (whole,) = borrowed(scratch)
            pairs = whole.reshape(-1)[:v.shape[0] * n].reshape(v.shape[0], n)
            round_to_pairs(v, pairs, b0, b1)
            return pairs
        return paired
    return lambda v, w, scratch, b0, b1: v


def operand_scratch(w, rows, inputs):
    """The scratch `operand` needs for weights w and up to `inputs` inputs: (rows,
    ceil(inputs/2)) uint32 for paired weights, an empty array otherwise. For njit code, outside
    time loops (it allocates)."""


# What operand_scratch gives for weights that need none: a global, so a constant of the compiled
# code with no memory owner, whose passing from function to function counts no references
_NO_SCRATCH = np.empty((0, 0), np.uint32)


@overload(operand_scratch)
def _operand_scratch(w, rows, inputs):
    if w.dtype == types.uint32:
        return lambda w, rows, inputs: np.empty((rows, (inputs + 1) // 2), np.uint32)
    return lambda w, rows, inputs: _NO_SCRATCH


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
