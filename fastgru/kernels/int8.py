"""The int8 instructions of the products (products.matvec multiplies int8 weights with them):
y = v @ W^T for float32 activations v and int8 weights W, quantized and packed by int8_pack.py
(whose docstring gives the rules for the weights' scales s_w, the activations' bytes a_q, zero
points z and scales s_a, and the layout), on one of two paths (PATHS: those this CPU runs, the
fastest last):

- "vnni" (CPUs with AVX512_VNNI): the activations are quantized too, per batch row and call
  (int8_pack.quantize_rows, through products.operand), and vpdpbusd (`dot_bytes`) multiplies
  four unsigned activation bytes by four signed weight bytes and adds the four products to an
  int32 lane, 64 multiply-adds an instruction:

      y[b, r] = float32(S[b, r]) * (s_w[r] * s_a[b]),  S[b, r] = sum_k (a_q[b, k] - z[b]) q[r, k]

  with S exact in int32 (see int8_pack.MAX_INPUTS). Each sum starts at -z[b] * sum_k q[r, k]
  (`start_sums`, from the column sums packed with the weights) and adds sum_k a_q[b, k] q[r, k].
- "widen" (every CPU; the fallback without VNNI): the int8 values are widened to float32 as they
  are read (`load_widened`: sign extension and conversion, both exact) and multiplied by the
  float32 activations, which are not quantized: y[b, r] = float32(sum_k a[b, k] q[r, k]) *
  s_w[r], one chain of fused multiply-adds over k in order per sum, as float32 weights'.

Both paths end in `store_scaled`. Nothing here checks its inputs.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastgru.kernels.int8_pack import LANES, VNNI
from fastgru.kernels.simd import Vector, broadcast

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
