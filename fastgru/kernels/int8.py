"""The int8 products: y = v @ W^T for float32 activations v and int8 weights W, quantized and
packed by int8_pack.py (whose docstring gives the rules for the weights' scales s_w, the
activations' bytes a_q, zero points z and scales s_a, and the layout), on one of two paths
(PATHS: those this CPU runs, the fastest last):

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

Nothing here checks its inputs inside njit code; `product` and the callers do.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastgru.kernels import cpu
from fastgru.kernels.int8_pack import (LANES, MAX_INPUTS, PANEL, PATHS, VNNI, Int8Weights,
                                       Quantized, operand_scratch, pack, quantize_rows,
                                       quantize_weights)
from fastgru.kernels.runtime import JIT_OPTIONS, recover_caches
from fastgru.kernels.simd import VECTOR_BYTES, Vector, broadcast, fma, prefetch, splat

# The weights' and activations' side (int8_pack.py), named here too: callers import them from
# this module
__all__ = ["FOUR_ROW_TILES", "LANES", "MAX_INPUTS", "PANEL", "PATHS", "PREFETCH_LINES",
           "VECTOR_BYTES", "VNNI", "Int8Weights", "Quantized", "matvec", "matvec_quantized",
           "operand_scratch", "pack", "product", "quantize_rows", "quantize_weights"]

# As gru.FOUR_ROW_TILES: 4-row tiles (16 sums) need AVX-512's 32 vector registers; with AVX2's 16
# the widened path takes 2-row tiles (8 sums, 4 weight vectors, a broadcast).
FOUR_ROW_TILES = VECTOR_BYTES == 64

# Cache lines at the start of the next weight panel fetched ahead, as gru.PREFETCH_LINES
PREFETCH_LINES = 16


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
        return builder.call(function, [z, broadcast(builder, vector, x), w])

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
        return builder.mul(sums, broadcast(builder, vector, builder.neg(z)))

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
        combined = builder.fmul(column, broadcast(builder, floats, args[4]))
        values = args[2] if sums == _FLOATS else builder.sitofp(args[2], floats)
        pointer = _pointer(context, builder, sig.args[0], args[0], args[1], floats)
        builder.store(builder.fmul(values, combined), pointer, align=4)
        return context.get_dummy_value()

    return types.none(out, index, sums, scales, factor), codegen


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
