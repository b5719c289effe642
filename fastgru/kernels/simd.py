"""A few SIMD vector operations for Numba kernels, as LLVM vector values.

LLVM does not turn a tile of scalar sums into vector registers by itself (it spills them), and it
vectorizes loops only after runtime alias checks between arrays. These intrinsics let a kernel
hold its sums in vector registers directly:

    acc = splat(zero)                      # a Vector of `lanes(dtype)` equal values
    acc = fma(x, load(row, j), acc)        # x * row[j:j + lanes] + acc, one rounding per lane
    store(out_row, j, acc)                 # out_row[j:j + lanes] = acc

A vector is as wide as the target CPU's widest registers (64 bytes with AVX-512, else 32), so it
holds 16 or 8 float32 values. Arrays must be 1-D and C-contiguous, and indices in bounds: nothing
is checked inside a kernel. `load_pair(row, j)` gives the two Vectors at j and j + lanes.

bfloat16 values are held in unsigned integer arrays (a bfloat16 is the top half of a float32):

- uint16: one value each, in blocks of 2 x lanes values interleaved (`interleave_halves`): value
  i of the block's first half, then value i of its second. `load_pair` reads a block as lanes
  32-bit words and widens both halves to float32 Vectors with a shift and a mask (exact; no
  shuffles, which Intel's cores run on one port), so a kernel written for float32 weights runs
  unchanged on them, reading half the bytes.
- uint32: a pair each, the low half first. `load` gives a Vector of pairs, and `fma(x, w, acc)`
  with x a uint32 pair, w such a Vector and acc a float32 Vector is the AVX512_BF16 dot product
  (vdpbf16ps): acc[i] + x.lo * w[i].lo + x.hi * w[i].hi, twice the multiply-adds of a float32
  fma per instruction. Only where BF16_DOT_PRODUCTS.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from fastgru.kernels.cpu import BF16_DOT_PRODUCTS, MASK_IN_ASSEMBLY, VECTOR_BYTES


def lanes(dtype) -> int:
    """Values of `dtype` in one vector."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


class Vector(types.Type):
    """A SIMD vector of `lanes(dtype)` values of a float dtype (or of uint32 bfloat16 pairs)."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        self.lanes = lanes(str(dtype))
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.lanes))


def _is_row(arr, dtypes=(types.uint32,)) -> bool:
    """Whether arr is a contiguous 1-D array of floats or of one of `dtypes`."""
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and (isinstance(arr.dtype, types.Float) or arr.dtype in dtypes))


def interleave_halves(values: np.ndarray) -> np.ndarray:
    """(..., n) uint16 bfloat16 values, n a multiple of 2 x lanes(float32) -> the same values in
    the block order `load_pair` reads: within each block of 2 x lanes, value i of the first half
    then value i of the second."""
    L = lanes(np.float32)
    blocks = values.reshape(*values.shape[:-1], -1, 2, L)
    return np.ascontiguousarray(blocks.swapaxes(-1, -2)).reshape(values.shape)


def _vector_pointer(context, builder, array_type, array, index, vector_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


def _load_vector(context, builder, array_type, array, index, vector_type):
    """The vector_type at array[index] (unaligned: the element's own alignment)."""
    pointer = _vector_pointer(context, builder, array_type, array, index, vector_type)
    return builder.load(pointer, align=array_type.dtype.bitwidth // 8)


def broadcast(builder, vector_type, value):
    """LLVM IR: vector_type with every lane `value`."""
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), None)
    return builder.shuffle_vector(first, undef, zeros)


@intrinsic
def load(typingctx, array, index):
    """array[index:index + lanes] as a Vector (unaligned load); a uint32 row gives a Vector of
    bfloat16 pairs."""
    if not (_is_row(array) and isinstance(index, types.Integer)):
        return None
    vector = Vector(array.dtype)

    def codegen(context, builder, sig, args):
        return _load_vector(context, builder, sig.args[0], args[0], args[1],
                            context.get_value_type(vector))

    return vector(array, index), codegen


# Numba does not set up LLVM's assembler, which inline assembly needs: here and in amx.py,
# which imports this module (idempotent)
llvm_binding.initialize_native_asmparser()


def _upper_halves(builder, words):
    """Each 32-bit word of `words` with its low 16 bits cleared, as float32: the second value of
    each bfloat16 pair, widened.

    The AND is an instruction LLVM cannot rewrite, a floating-point vandps with the mask in one
    register, for two reasons:

    - AVX2: LLVM wrote the AND as a blend with a zero register, and with only 16 registers a
      1x2 tile of `matvec` (8 sums) spilled a sum to the stack, a store and a reload on its
      chain of multiply-adds at every k. Reordering the tile removed the spill from the
      separately compiled kernel but not from the copy compiled into each caller, which is
      what a kernel loaded from Numba's cache runs; with the spill the widened path ran no
      faster than float32.
    - AVX-512: LLVM's integer vpandq kept a batch-1 product at the time of all eight vector
      operations per panel row (two loads' shifts, ANDs and four multiply-adds) on two pipes.

    The measurements: bench/RESULTS.md, "Thresholds in the code", Kernels (the widening mask).
    """
    floats = ir.VectorType(ir.FloatType(), words.type.count)
    mask = ir.Constant(words.type, [0xFFFF0000] * words.type.count)
    if not MASK_IN_ASSEMBLY:
        return builder.bitcast(builder.and_(words, mask), floats)
    vandps = ir.InlineAsm(ir.FunctionType(floats, [floats, floats]), "vandps $2, $1, $0", "=v,v,v")
    return builder.call(vandps, [builder.bitcast(words, floats), builder.bitcast(mask, floats)])


@intrinsic
def load_pair(typingctx, array, index):
    """(load(array, index), load(array, index + lanes)); for a uint16 row of bfloat16 blocks
    (`interleave_halves`; index at a block's start) the two float32 Vectors of that block."""
    if not (_is_row(array, (types.uint16, types.uint32)) and isinstance(index, types.Integer)):
        return None
    vector = Vector(types.float32) if array.dtype == types.uint16 else Vector(array.dtype)
    pair = types.UniTuple(vector, 2)

    def codegen(context, builder, sig, args):
        vector_type = context.get_value_type(vector)
        if array.dtype != types.uint16:
            second = builder.add(args[1], ir.Constant(args[1].type, vector.lanes))
            halves = [_load_vector(context, builder, sig.args[0], args[0], i, vector_type)
                      for i in (args[1], second)]
        else:
            words_type = ir.VectorType(ir.IntType(32), vector.lanes)
            pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], words_type)
            words = builder.load(pointer, align=2)
            first = builder.shl(words, ir.Constant(words_type, [16] * vector.lanes))
            halves = [builder.bitcast(first, vector_type), _upper_halves(builder, words)]
        return context.make_tuple(builder, pair, halves)

    return pair(array, index), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """array[index:index + lanes] = vector (unaligned store)."""
    if not (_is_row(array) and isinstance(index, types.Integer) and vector == Vector(array.dtype)):
        return None

    def codegen(context, builder, sig, args):
        vector_type = context.get_value_type(vector)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], vector_type)
        builder.store(args[2], pointer, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


@intrinsic
def splat(typingctx, value):
    """A Vector with every lane equal to the float `value`."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return broadcast(builder, context.get_value_type(sig.return_type), args[0])

    return Vector(value)(value), codegen


class _BFloat16(ir.types.Type):
    """LLVM's bfloat type, which llvmlite's IR builder lacks (the dot product's operands)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat16)

    def __hash__(self):
        return hash("bfloat")


@intrinsic
def store_bfloat16(typingctx, array, index, vector):
    """array[index:index + lanes/2] = the float32 Vector's values rounded to bfloat16 (nearest,
    ties to even), two to a uint32 word, lane 2i in the low half of word i: LLVM's fptrunc to
    bfloat, one vcvtneps2bf16 with AVX512_BF16 (which every CPU with a paired path has; LLVM
    would expand it elsewhere). That instruction takes subnormal values as zero."""
    if not (_is_row(array) and array.dtype == types.uint32 and isinstance(index, types.Integer)
            and vector == Vector(types.float32)):
        return None

    def codegen(context, builder, sig, args):
        count = vector.lanes
        rounded = builder.fptrunc(args[2], ir.VectorType(_BFloat16(), count))
        words_type = ir.VectorType(ir.IntType(32), count // 2)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], words_type)
        builder.store(builder.bitcast(rounded, words_type), pointer, align=4)
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c lane by lane with one rounding (llvm.fma); a may be a scalar, broadcast.

    With a a uint32 pair of bfloat16, b a Vector of such pairs and c a float32 Vector: c plus
    the dot product of a with each lane of b (vdpbf16ps; see the module's docstring).
    """
    dot = (a == types.uint32 and b == Vector(types.uint32) and c == Vector(types.float32)
           and BF16_DOT_PRODUCTS)
    if not (isinstance(c, Vector) and (dot or (b == c and (a == c or a == c.dtype)))):
        return None

    def codegen(context, builder, sig, args):
        x, y, z = args
        vector_type = context.get_value_type(c)
        if dot:
            pairs = ir.VectorType(_BFloat16(), 2 * c.lanes)
            x = broadcast(builder, context.get_value_type(b), x)
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector_type, [vector_type, pairs, pairs]),
                "llvm.x86.avx512bf16.dpbf16ps.512")
            return builder.call(function, [z, builder.bitcast(y, pairs), builder.bitcast(x, pairs)])
        if not isinstance(sig.args[0], Vector):
            x = broadcast(builder, vector_type, x)
        name = f"llvm.fma.v{c.lanes}f{c.dtype.bitwidth}"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3), name)
        return builder.call(function, [x, y, z])

    return c(a, b, c), codegen


@intrinsic
def full_width_loops(typingctx):
    """Let LLVM vectorize the loops of the function this is called in (or inlined into) at the
    full VECTOR_BYTES, emitting nothing itself.

    LLVM's tuning for Intel's AVX-512 server CPUs (Skylake-SP to Emerald Rapids) makes its loop
    vectorizer prefer 256-bit vectors, so the gate loops, which it vectorizes, ran at half the
    width of the products (which use Vector). The function attribute "prefer-vector-width"
    overrides that tuning for one function; llvmlite knows no such attribute, hence set.add.
    It took time off every step on an Intel Xeon (bench/RESULTS.md, "Thresholds in the code",
    Kernels (full-width loops)); AMD's Zen 4 and 5 had full-width loops already.
    """

    def codegen(context, builder, sig, args):
        attributes = builder.function.attributes
        if isinstance(attributes, set):  # else a newer llvmlite: LLVM's width, and a test fails
            set.add(attributes, f'"prefer-vector-width"="{8 * VECTOR_BYTES}"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """A hint that element `index` of C-contiguous `array` (its data counted as one flat row)
    will be read soon: its cache line is fetched without waiting for it. Never faults."""
    if not (isinstance(array, types.Array) and array.layout == "C"
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        bytes_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [bytes_pointer, i32, i32, i32]))
        address = builder.bitcast(builder.gep(data, [args[1]]), bytes_pointer)
        # a read, kept in every cache level, of data
        builder.call(hint, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen
