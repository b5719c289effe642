"""int8 weights and activations as the products of int8.py take them: symmetric per-row weight
quantization and packing, and per-row activation quantization.

Weights (load time, NumPy): each output row r of W (rows, K) gets a float32 scale
s_w[r] = max_k |W[r, k]| / 127 and int8 values q[r, k] = round(W[r, k] / s_w[r]) in [-127, 127]
(a zero row: scale 0, values 0). `pack` lays them out for one of two paths (PATHS: those this CPU
runs, the fastest last; `pack(..., path=)` forces one; int8.py's docstring says what each
computes): "vnni" (CPUs with AVX512_VNNI: the activations are quantized too) or "widen" (every
CPU: the weights are widened to float32 as they are read).

Activations (the "vnni" path): per row, asymmetric uint8 with a zero point, as ONNX's
DynamicQuantizeLinear defines it for a whole tensor and onnxruntime's MLAS, FBGEMM (PyTorch's
dynamic quantization) and XNNPACK's per-row "qd8" kernels do: the range [lo, hi] of the row,
widened to include 0, gives s_a = (hi - lo) / 255, z = clamp(round(-lo / s_a), 0, 255) and
a_q[k] = clamp(round(a[k] / s_a) + z, 0, 255), rounding to nearest, ties to even. Why a zero
point per row rather than the fixed 128 of a symmetric int8 quantization (a_q = round(a / s) +
128, s = max|a| / 127):

- vpdpbusd takes one operand unsigned and the other signed. Weights are signed (symmetric), so
  the activations are the unsigned bytes, and any symmetric int8 activation would be shifted by
  128 anyway, with the same compensation term: the two choices cost the same instructions.
- A row's zero point only changes the start of its sums (-z[b] times the packed column sums,
  one integer multiply per 16 outputs), and it uses all 256 levels on the row's actual range:
  for inputs of one sign (after a ReLU, log-mel features, a state near saturation) the step is
  half of the symmetric one. For a symmetric range both are the same.
- 0 stays exact (a_q = z), so zero inputs add exactly nothing.

NaN and inf: a row holding either gets s_a = NaN (and bytes z = 0), so its every output is NaN;
NaN never reaches the float-to-int conversion (whose result LLVM leaves undefined). A row whose
range is zero, or too small for s_a to be a positive float32 (below about 3.6e-43), multiplies
as zeros. s_a is rounded once from the float64 difference hi - lo, so a row spanning more than
float32's range does not overflow it.

Layout (gru.py's panels, with its padding, so the outputs land in the same gate columns as a
float32 model's): output rows are gate columns, padded per gate to a multiple of the panel
width P = 4 * LANES (`pack`'s hidden_size), and grouped in panels of P columns:

- "vnni": words (panels, G, P) int32, G = ceil(K/4): word [p, g, c] holds, in its bytes 0..3,
  q[pP + c, 4g + i] for i = 0..3 (zero bytes past K), so a panel row is four vectors of 16 lanes,
  each lane the 4-byte group vpdpbusd takes. The activations are (B, G) uint32 words of 4 bytes.
- "widen": words (panels, K, P) int8, as gru.py's float32 panels hold float32.

Both paths come with colsum (panels*P,) int32 (sum_k q[r, k]; only "vnni" reads it) and scale
(panels*P,) float32 (s_w; 0 in padding columns).

Nothing here checks its inputs inside njit code; `pack` and the callers do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from fastgru.kernels import cpu
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import full_width_loops, lanes

# vpdpbusd (cpu.py decides, with every other choice made by the CPU)
VNNI = cpu.VNNI
PATHS = cpu.INT8_PATHS

LANES = lanes(np.float32)  # int32 sums or float32 values in one vector
PANEL = 4 * LANES  # P: gate columns per panel, gru.panel_width(np.float32)

# The largest K for the "vnni" path. |S[b, r]| <= K * 255 * 128 (|a_q - z| <= 255, and |q| <= 127
# here, 128 for int8 values imported as they are), which stays below 2**31 for K <= 65793. Every
# intermediate sum may wrap around (vpdpbusd adds modulo 2**32, as do the multiply and the
# additions of the start value); only the final sum must fit, and then it is exact.
MAX_INPUTS = 1 << 16

# quantize_rows divides and rounds exactly as NumPy does (fastmath's "arcp" would let LLVM
# multiply by a reciprocal instead, and tests compare the bytes bit for bit)
_EXACT_OPTIONS = dict(JIT_OPTIONS, fastmath=False)


class Int8Weights(NamedTuple):
    """Packed int8 weights (see the module's docstring): words (panels, G, P) int32 ("vnni") or
    (panels, K, P) int8 ("widen"), colsum and scale (panels*P,) int32 and float32."""
    words: np.ndarray
    colsum: np.ndarray
    scale: np.ndarray


class Quantized(NamedTuple):
    """Activations quantized per row by `quantize_rows`: words (B, G) uint32 (4 bytes each),
    zero (B,) int32 zero points, scale (B,) float32. Empty arrays for the "widen" path."""
    words: np.ndarray
    zero: np.ndarray
    scale: np.ndarray


def quantize_weights(w) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: w (rows, K) finite floats -> (q (rows, K) int8, scale (rows,)
    float32) with w ~ q * scale[:, None], scale = max|row| / 127 rounded to float32, q =
    round(w / scale) (ties to even, from float64) clipped to [-127, 127]. A row whose scale
    rounds to 0 (all zeros, or max|row| below about 1e-43) gets scale 0 and zeros."""
    w = np.asarray(w, np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (rows, inputs), got shape {w.shape}")
    finite = np.isfinite(w).all(axis=1)
    if not finite.all():
        raise ValueError(f"weights must be finite to be quantized; row {int(np.argmin(finite))} "
                         f"holds NaN or inf")
    top = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    scale = (top / 127).astype(np.float32)
    divisor = np.where(scale > 0, scale, 1).astype(np.float64)
    q = np.clip(np.rint(w / divisor[:, None]), -127, 127).astype(np.int8)
    q[scale == 0] = 0
    return q, scale


def _gate_columns(rows: int, hidden_size: int | None) -> tuple[np.ndarray, int]:
    """(packed column of each of `rows` output rows, packed columns in all): gates of
    hidden_size rows each padded to a multiple of PANEL (one gate of `rows` rows when
    hidden_size is None)."""
    H = rows if hidden_size is None else hidden_size
    if H <= 0 or rows % H:
        raise ValueError(f"rows ({rows}) must be a positive multiple of hidden_size ({H})")
    Hp = -(-H // PANEL) * PANEL
    r = np.arange(rows)
    return r // H * Hp + r % H, rows // H * Hp


def pack(q, scale, hidden_size: int | None = None, path: str | None = None) -> Int8Weights:
    """int8 rows (rows, K) and their scales (rows,) -> Int8Weights for `path` (default: the
    fastest of PATHS). hidden_size: rows are gates of this many units, each padded to a multiple
    of PANEL as gru.pack_gate_rows pads them (default: one gate of all rows)."""
    path = PATHS[-1] if path is None else path
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} on this CPU, got {path!r}")
    q = np.asarray(q)
    scale = np.asarray(scale, np.float32)
    if q.dtype != np.int8 or q.ndim != 2 or scale.shape != q.shape[:1]:
        raise ValueError(f"expected int8 rows (rows, K) and float32 scales (rows,), got "
                         f"{q.dtype} {q.shape} and {scale.shape}")
    rows, K = q.shape
    if path == "vnni" and K > MAX_INPUTS:
        raise ValueError(f"the vnni path sums at most {MAX_INPUTS} inputs exactly in int32, "
                         f"got {K}; use the widened path (GRU's kernel_path='widen')")
    columns, width = _gate_columns(rows, hidden_size)
    panels = width // PANEL
    colsum = np.zeros(width, np.int32)
    colsum[columns] = q.sum(axis=1, dtype=np.int64)
    scales = np.zeros(width, np.float32)
    scales[columns] = scale
    if path == "vnni":
        G = -(-K // 4)
        padded = np.zeros((width, 4 * G), np.int8)
        padded[columns, :K] = q
        layout = padded.view(np.int32).reshape(panels, PANEL, G).transpose(0, 2, 1)
    else:
        padded = np.zeros((width, K), np.int8)
        padded[columns] = q
        layout = padded.reshape(panels, PANEL, K).transpose(0, 2, 1)
    words = cpu.empty_aligned(layout.shape, layout.dtype)  # rows of whole cache lines
    words[...] = layout
    return Int8Weights(words, colsum, scales)


# --- activations ------------------------------------------------------------------------------

@intrinsic
def _float_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@njit(inline="always", **_EXACT_OPTIONS)
def _order_key(x):
    """A float32's bits (int32) -> an int32 of the same order among non-NaN floats (-0 just
    below +0); its own inverse."""
    return np.int32(x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@njit(**_EXACT_OPTIONS)
def quantize_rows(v, q, b0, b1):
    """Quantize rows b0 <= b < b1 of v (B, K) float32 into q (a Quantized of at least B rows
    of ceil(K/4) words; see the module's docstring for the rule), bytes past K zero.

    The range is found on the floats' bits mapped to integers of the same order (x ^ ((x >> 31)
    & 0x7FFFFFFF)), whose min and max LLVM vectorizes without fast-math flags; NaN and inf show
    as a magnitude of at least 0x7F800000.
    """
    full_width_loops()
    K = v.shape[1]
    for b in range(b0, b1):
        bits = v[b].view(np.int32)
        low = high = np.int32(0)  # the order key of +0.0: the range includes 0
        lo = hi = np.float32(0.0)
        magnitude = np.int32(0)
        for k in range(K):
            x = bits[k]
            key = _order_key(x)
            low = min(low, key)
            high = max(high, key)
            magnitude = max(magnitude, np.int32(x & np.int32(0x7FFFFFFF)))
        row = q.words[b].view(np.uint8)
        if magnitude >= np.int32(0x7F800000):
            scale = np.float32(np.nan)
        else:
            lo = _float_from_bits(_order_key(low))
            hi = _float_from_bits(_order_key(high))
            scale = np.float32((np.float64(hi) - np.float64(lo)) / 255.0)
        if not scale > 0:  # NaN, inf, or no range: bytes 0, zero point 0
            for k in range(row.shape[0]):
                row[k] = 0
            q.zero[b] = 0
            q.scale[b] = scale
            continue
        zero = min(max(np.rint(-lo / scale), np.float32(0)), np.float32(255))
        vb = v[b]
        for k in range(K):
            t = np.rint(vb[k] / scale) + zero
            row[k] = np.uint8(min(max(t, np.float32(0)), np.float32(255)))
        for k in range(K, row.shape[0]):
            row[k] = 0
        q.zero[b] = np.int32(zero)
        q.scale[b] = scale


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
