"""int8 weights: symmetric per-row quantization, and the products that multiply them.

Weights (load time, NumPy): each output row r of W (rows, K) gets a float32 scale
s_w[r] = max_k |W[r, k]| / 127 and int8 values q[r, k] = round(W[r, k] / s_w[r]) in [-127, 127]
(a zero row: scale 0, values 0). `pack` lays them out for one of two paths (PATHS: those this CPU
runs, the fastest last; `pack(..., path=)` forces one):

- "vnni" (CPUs with AVX512_VNNI): the activations are quantized too, per batch row and call
  (`quantize_rows`), and vpdpbusd multiplies four unsigned activation bytes by four signed weight
  bytes and adds the four products to an int32 lane, 64 multiply-adds an instruction:

      y[b, r] = float32(S[b, r]) * (s_w[r] * s_a[b]),  S[b, r] = sum_k (a_q[b, k] - z[b]) q[r, k]

  with S exact in int32 (see MAX_INPUTS). The kernel starts each sum at -z[b] * sum_k q[r, k]
  (the column sums, packed with the weights) and adds sum_k a_q[b, k] q[r, k].
- "widen" (every CPU; the fallback without VNNI): the int8 values are widened to float32 as they
  are read (sign extension and conversion, both exact) and multiplied by the float32
  activations, which are not quantized: y[b, r] = float32(sum_k a[b, k] q[r, k]) * s_w[r], one
  chain of fused multiply-adds over k in order per sum, as gru.matvec's.

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

Nothing here checks its inputs inside njit code; `pack`, `product` and the callers do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastgru.kernels import cpu
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import (VECTOR_BYTES, Vector, fma, full_width_loops, lanes, prefetch,
                                  splat)

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

# As gru.FOUR_ROW_TILES: 4-row tiles (16 sums) need AVX-512's 32 vector registers; with AVX2's 16
# the widened path takes 2-row tiles (8 sums, 4 weight vectors, a broadcast).
FOUR_ROW_TILES = VECTOR_BYTES == 64

# Cache lines at the start of the next weight panel fetched ahead, as gru.PREFETCH_LINES
PREFETCH_LINES = 16

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
                         f"got {K}; use path='widen'")
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


def operand_scratch(w: Int8Weights, rows: int) -> Quantized:
    """What `matvec` quantizes rows of activations into for weights w: (rows, G) words and a
    zero point and scale per row for the "vnni" path, empty arrays for "widen". Callable from
    njit code too (outside time loops: it allocates)."""
    n = w.words.shape[1] if w.words.dtype == np.int32 else 0
    rows = rows if n else 0
    return Quantized(np.zeros((rows, n), np.uint32), np.zeros(rows, np.int32),
                     np.zeros(rows, np.float32))


@overload(operand_scratch)
def _operand_scratch(w, rows):
    vnni = w.types[0].dtype == types.int32

    def make(w, rows):
        n = w.words.shape[1] if vnni else 0
        r = rows if vnni else 0
        return Quantized(np.zeros((r, n), np.uint32), np.zeros(r, np.int32),
                         np.zeros(r, np.float32))
    return make


def product(v, w: Int8Weights, out=None, scratch: Quantized | None = None) -> np.ndarray:
    """y = v @ W^T for every row of v (B, K) float32 and every packed column of w: (B, panels*P)
    float32, gate columns as `pack` placed them. For tests, tools and the model's boundary: it
    checks and allocates, then calls `matvec`."""
    v = np.ascontiguousarray(v, np.float32)
    K = w.words.shape[1] * 4 if w.words.dtype == np.int32 else w.words.shape[1]
    if v.ndim != 2 or not (v.shape[1] <= K < v.shape[1] + 4 if w.words.dtype == np.int32
                           else v.shape[1] == K):
        raise ValueError(f"activations must be (B, {K}) float32 for these weights, got "
                         f"shape {v.shape}")
    B = v.shape[0]
    if out is None:
        out = np.empty((B, w.words.shape[0] * PANEL), np.float32)
    if scratch is None:
        scratch = operand_scratch(w, B)
    matvec(v, w, scratch, out, 0, B, 0, w.words.shape[0], False)
    return out


# --- LLVM pieces --------------------------------------------------------------------------------

_WORDS = Vector(types.int32)  # LANES int32 sums, or LANES 4-byte groups
_FLOATS = Vector(types.float32)


def _is_row(array, dtype) -> bool:
    return (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype == dtype)


def _pointer(context, builder, array_type, array, index, element_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), element_type.as_pointer())


def _splat(builder, vector_type, value):
    """vector_type with every lane `value` (copied from simd's private _broadcast)."""
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), None)
    return builder.shuffle_vector(first, undef, zeros)


@intrinsic
def load_words(typingctx, row, index):
    """row[index:index + LANES] of an int32 row as a Vector (unaligned)."""
    if not (_is_row(row, types.int32) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(_WORDS)
        return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], vector),
                            align=4)

    return _WORDS(row, index), codegen


@intrinsic
def load_widened(typingctx, row, index):
    """row[index:index + LANES] of an int8 row, widened to a float32 Vector (exact)."""
    if not (_is_row(row, types.int8) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        raw = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1],
                                    ir.VectorType(ir.IntType(8), LANES)), align=1)
        ints = builder.sext(raw, ir.VectorType(ir.IntType(32), LANES))
        return builder.sitofp(ints, context.get_value_type(_FLOATS))

    return _FLOATS(row, index), codegen


@intrinsic
def dot_bytes(typingctx, word, weights, sums):
    """sums + in each lane i, sum_j byte j of `word` (unsigned) times byte j of weights[i]
    (signed): vpdpbusd with the 4 activation bytes broadcast. Adds modulo 2**32, no saturation.

    LLVM 21 and later declare the intrinsic on <64 x i8> operands and upgrade calls written, as
    here, with LLVM 20's <16 x i32> ones, so this form compiles with either."""
    if not (VNNI and word == types.uint32 and weights == _WORDS and sums == _WORDS):
        return None

    def codegen(context, builder, sig, args):
        x, w, z = args
        vector = context.get_value_type(_WORDS)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(function, [z, _splat(builder, vector, x), w])

    return _WORDS(word, weights, sums), codegen


@intrinsic
def start_sums(typingctx, colsum, index, zero):
    """-zero * colsum[index:index + LANES] as int32 Vector (modulo 2**32): the start of the sums
    that makes vpdpbusd's sum over a_q that over a_q - zero."""
    if not (_is_row(colsum, types.int32) and isinstance(index, types.Integer)
            and isinstance(zero, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vector = context.get_value_type(_WORDS)
        sums = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], vector),
                            align=4)
        z = context.cast(builder, args[2], sig.args[2], types.int32)
        return builder.mul(sums, _splat(builder, vector, builder.neg(z)))

    return _WORDS(colsum, index, zero), codegen


@intrinsic
def store_scaled(typingctx, out, index, sums, scales, factor):
    """out[index:index + LANES] = float32(sums) * (scales[index:index + LANES] * factor), each
    product rounded once, in this order (no fast-math flags): sums an int32 or float32 Vector,
    out and scales float32 rows, factor a float32."""
    if not (_is_row(out, types.float32) and _is_row(scales, types.float32)
            and isinstance(index, types.Integer) and sums in (_WORDS, _FLOATS)
            and factor == types.float32):
        return None

    def codegen(context, builder, sig, args):
        floats = context.get_value_type(_FLOATS)
        column = builder.load(_pointer(context, builder, sig.args[3], args[3], args[1], floats),
                              align=4)
        combined = builder.fmul(column, _splat(builder, floats, args[4]))
        values = args[2] if sums == _FLOATS else builder.sitofp(args[2], floats)
        pointer = _pointer(context, builder, sig.args[0], args[0], args[1], floats)
        builder.store(builder.fmul(values, combined), pointer, align=4)
        return context.get_dummy_value()

    return types.none(out, index, sums, scales, factor), codegen


@intrinsic
def _float_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


# --- activations --------------------------------------------------------------------------------

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


# --- the product: one set of register tiles over both paths' primitives ---------------------------

def _operand(a, w, q):
    """What the tiles multiply the weights by: q's words (vnni) or the floats a (widen)."""


@overload(_operand, inline="always")
def _operand_for(a, w, q):
    if w.types[0].dtype == types.int32:
        return lambda a, w, q: q.words
    return lambda a, w, q: a


def _first(w, q, b, j):
    """Starting sums of row b at columns j..j+LANES."""


@overload(_first, inline="always")
def _first_for(w, q, b, j):
    if w.types[0].dtype == types.int32:
        return lambda w, q, b, j: start_sums(w.colsum, j, q.zero[b])
    return lambda w, q, b, j: splat(np.float32(0.0))


def _load(row, c):
    """The weights of panel row `row` from column c, as the path multiplies them."""


@overload(_load, inline="always")
def _load_for(row, c):
    if row.dtype == types.int32:
        return lambda row, c: load_words(row, c)
    return lambda row, c: load_widened(row, c)


def _madd(x, weights, sums):
    """sums + x times weights: vpdpbusd or a fused multiply-add."""


@overload(_madd, inline="always")
def _madd_for(x, weights, sums):
    if sums == _WORDS:
        return lambda x, weights, sums: dot_bytes(x, weights, sums)
    return lambda x, weights, sums: fma(x, weights, sums)


def _finish(out, j, sums, w, q, b):
    """out[b, j:j+LANES] from row b's sums."""


@overload(_finish, inline="always")
def _finish_for(out, j, sums, w, q, b):
    if sums == _WORDS:
        return lambda out, j, sums, w, q, b: store_scaled(out[b], j, sums, w.scale, q.scale[b])
    return lambda out, j, sums, w, q, b: store_scaled(out[b], j, sums, w.scale, np.float32(1.0))


@njit(inline="always", **JIT_OPTIONS)
def _store4(out, j, L, w, q, b, s0, s1, s2, s3):
    _finish(out, j, s0, w, q, b)
    _finish(out, j + L, s1, w, q, b)
    _finish(out, j + 2 * L, s2, w, q, b)
    _finish(out, j + 3 * L, s3, w, q, b)


@njit(inline="always", **JIT_OPTIONS)
def _first4(w, q, b, j, L):
    return _first(w, q, b, j), _first(w, q, b, j + L), _first(w, q, b, j + 2 * L), \
        _first(w, q, b, j + 3 * L)


@njit(inline="always", **JIT_OPTIONS)
def _load4(panel, k):
    """Panel row k's four weight vectors; panel flat (G*P or K*P values). The row length is the
    constant PANEL, so the addresses are one pointer plus constant offsets (with a length read
    from the array, LLVM's unrolled loop kept 32 offsets on the stack and reloaded them)."""
    i = k * PANEL
    return (_load(panel, i), _load(panel, i + LANES), _load(panel, i + 2 * LANES),
            _load(panel, i + 3 * LANES))


@njit(inline="always", **JIT_OPTIONS)
def _madd4(x, w0, w1, w2, w3, s0, s1, s2, s3):
    return _madd(x, w0, s0), _madd(x, w1, s1), _madd(x, w2, s2), _madd(x, w3, s3)


@njit(inline="always", **JIT_OPTIONS)
def _tile4(a, w, q, panel, out, b, j, L):
    r0, r1, r2, r3 = a[b], a[b + 1], a[b + 2], a[b + 3]
    s00, s01, s02, s03 = _first4(w, q, b, j, L)
    s10, s11, s12, s13 = _first4(w, q, b + 1, j, L)
    s20, s21, s22, s23 = _first4(w, q, b + 2, j, L)
    s30, s31, s32, s33 = _first4(w, q, b + 3, j, L)
    for k in range(panel.shape[0] // PANEL):
        w0, w1, w2, w3 = _load4(panel, k)
        s00, s01, s02, s03 = _madd4(r0[k], w0, w1, w2, w3, s00, s01, s02, s03)
        s10, s11, s12, s13 = _madd4(r1[k], w0, w1, w2, w3, s10, s11, s12, s13)
        s20, s21, s22, s23 = _madd4(r2[k], w0, w1, w2, w3, s20, s21, s22, s23)
        s30, s31, s32, s33 = _madd4(r3[k], w0, w1, w2, w3, s30, s31, s32, s33)
    _store4(out, j, L, w, q, b, s00, s01, s02, s03)
    _store4(out, j, L, w, q, b + 1, s10, s11, s12, s13)
    _store4(out, j, L, w, q, b + 2, s20, s21, s22, s23)
    _store4(out, j, L, w, q, b + 3, s30, s31, s32, s33)


@njit(inline="always", **JIT_OPTIONS)
def _tile2(a, w, q, panel, out, b, j, L):
    r0, r1 = a[b], a[b + 1]
    s00, s01, s02, s03 = _first4(w, q, b, j, L)
    s10, s11, s12, s13 = _first4(w, q, b + 1, j, L)
    for k in range(panel.shape[0] // PANEL):
        w0, w1, w2, w3 = _load4(panel, k)
        s00, s01, s02, s03 = _madd4(r0[k], w0, w1, w2, w3, s00, s01, s02, s03)
        s10, s11, s12, s13 = _madd4(r1[k], w0, w1, w2, w3, s10, s11, s12, s13)
    _store4(out, j, L, w, q, b, s00, s01, s02, s03)
    _store4(out, j, L, w, q, b + 1, s10, s11, s12, s13)


@njit(inline="always", **JIT_OPTIONS)
def _tile1(a, w, q, panel, out, b, j, L):
    r0 = a[b]
    s0, s1, s2, s3 = _first4(w, q, b, j, L)
    for k in range(panel.shape[0] // PANEL):
        w0, w1, w2, w3 = _load4(panel, k)
        s0, s1, s2, s3 = _madd4(r0[k], w0, w1, w2, w3, s0, s1, s2, s3)
    _store4(out, j, L, w, q, b, s0, s1, s2, s3)


@njit(inline="always", **JIT_OPTIONS)
def _tile1x2(a, w, q, panel, next_panel, out, b, j, L):
    """One row times two panels: 8 sums in flight, for batch 1."""
    r0 = a[b]
    s0, s1, s2, s3 = _first4(w, q, b, j, L)
    s4, s5, s6, s7 = _first4(w, q, b, j + 4 * L, L)
    for k in range(panel.shape[0] // PANEL):
        x = r0[k]
        w0, w1, w2, w3 = _load4(panel, k)
        s0, s1, s2, s3 = _madd4(x, w0, w1, w2, w3, s0, s1, s2, s3)
        w0, w1, w2, w3 = _load4(next_panel, k)
        s4, s5, s6, s7 = _madd4(x, w0, w1, w2, w3, s4, s5, s6, s7)
    _store4(out, j, L, w, q, b, s0, s1, s2, s3)
    _store4(out, j + 4 * L, L, w, q, b, s4, s5, s6, s7)


@njit(**JIT_OPTIONS)
def matvec_quantized(a, w, q, out, b0, b1, p0, p1, backwards):
    """out[b, pP + c] for rows b0 <= b < b1 and panels p0 <= p < p1 (from p1 down when
    `backwards`), the activations already in q ("vnni": a unused) or in a (B, K) float32
    ("widen": q unused). The schedule is gru.matvec_vectors': 4-row tiles (2-row with AVX2),
    then 2 and 1; a lone row takes two panels at a time; the start of the next panel is fetched
    ahead. Every sum is exact in int32 ("vnni") or one chain of fused multiply-adds over k in
    order ("widen"), so a row's result does not depend on its tile, the other rows or the order.
    """
    a = _operand(a, w, q)
    words = w.words
    L = LANES
    panel_size = words.shape[1] * words.shape[2]
    flat = words.reshape(words.shape[0], panel_size)
    line = cpu.CACHE_LINE_BYTES // words.itemsize
    lines = min(PREFETCH_LINES, -(-panel_size // line))
    twos = (p1 - p0) // 2 if b1 - b0 == 1 else 0
    count = p1 - p0 - twos
    for i in range(count):
        task = count - 1 - i if backwards else i
        if i + 1 < count:
            following = task - 1 if backwards else task + 1
            f = p0 + following + min(following, twos)
            for m in range(lines):
                prefetch(words, f * panel_size + m * line)
        p = p0 + task + min(task, twos)
        j = p * 4 * L
        if task < twos:
            _tile1x2(a, w, q, flat[p], flat[p + 1], out, b0, j, L)
            continue
        panel = flat[p]
        b = b0
        if FOUR_ROW_TILES:
            while b + 4 <= b1:
                _tile4(a, w, q, panel, out, b, j, L)
                b += 4
        while b + 2 <= b1:
            _tile2(a, w, q, panel, out, b, j, L)
            b += 2
        if b < b1:
            _tile1(a, w, q, panel, out, b, j, L)


def _quantize(v, w, q, b0, b1):
    """quantize_rows for "vnni" weights, nothing for "widen"."""


@overload(_quantize, inline="always")
def _quantize_for(v, w, q, b0, b1):
    if w.types[0].dtype == types.int32:
        return lambda v, w, q, b0, b1: quantize_rows(v, q, b0, b1)
    return lambda v, w, q, b0, b1: None


@njit(**JIT_OPTIONS)
def matvec(v, w, q, out, b0, b1, p0, p1, backwards):
    """out[b, pP + c] = y[b, pP + c] (see the module's docstring) for rows b0 <= b < b1 and
    panels p0 <= p < p1: v (B, K) float32, w Int8Weights, q operand_scratch(w, >= B), out
    (B, >= p1*P) float32. "vnni" weights quantize rows b0..b1 of v into q first."""
    _quantize(v, w, q, b0, b1)
    matvec_quantized(v, w, q, out, b0, b1, p0, p1, backwards)


recover_caches(globals())  # a damaged or read-only cache costs a compilation, not an error
