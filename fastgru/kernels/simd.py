"""A few SIMD vector operations for Numba kernels, as LLVM vector values.

LLVM does not turn a tile of scalar sums into vector registers by itself (it spills them), and it
vectorizes loops only after runtime alias checks between arrays. These intrinsics let a kernel
hold its sums in vector registers directly:

    acc = splat(zero)                      # a Vector of `lanes(dtype)` equal values
    acc = fma(x, load(row, j), acc)        # x * row[j:j + lanes] + acc, one rounding per lane
    store(out_row, j, acc)                 # out_row[j:j + lanes] = acc

A vector is as wide as the target CPU's widest registers (64 bytes with AVX-512, else 32), so it
holds 16 or 8 float32 values. Arrays must be 1-D and C-contiguous, and indices in bounds: nothing
is checked inside a kernel.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model


def _vector_bytes() -> int:
    """64 when the CPU Numba compiles for has AVX-512, else 32 (AVX2; older CPUs split them)."""
    if config.CPU_NAME and config.CPU_NAME != "host":  # NUMBA_CPU_NAME: compiling for another CPU
        return 64 if "+avx512f" in (config.CPU_FEATURES or "") else 32
    try:
        features = llvm_binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read this host's features
        return 32
    return 64 if features.get("avx512f") else 32


VECTOR_BYTES = _vector_bytes()


def lanes(dtype) -> int:
    """Values of `dtype` in one vector."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


class Vector(types.Type):
    """A SIMD vector of `lanes(dtype)` values of a float dtype."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        self.lanes = lanes(str(dtype))
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.lanes))


def _is_float_row(arr) -> bool:
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(arr.dtype, types.Float))


def _vector_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    vector_type = context.get_value_type(Vector(array_type.dtype))
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


def _broadcast(builder, vector_type, value):
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), None)
    return builder.shuffle_vector(first, undef, zeros)


@intrinsic
def load(typingctx, array, index):
    """array[index:index + lanes] as a Vector (unaligned load)."""
    if not (_is_float_row(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(pointer, align=array.dtype.bitwidth // 8)

    return Vector(array.dtype)(array, index), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """array[index:index + lanes] = vector (unaligned store)."""
    if not (_is_float_row(array) and isinstance(index, types.Integer)
            and vector == Vector(array.dtype)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


@intrinsic
def splat(typingctx, value):
    """A Vector with every lane equal to the float `value`."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return _broadcast(builder, context.get_value_type(sig.return_type), args[0])

    return Vector(value)(value), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c lane by lane with one rounding (llvm.fma); a may be a scalar, broadcast."""
    if not (isinstance(c, Vector) and b == c and (a == c or a == c.dtype)):
        return None

    def codegen(context, builder, sig, args):
        x, y, z = args
        vector_type = context.get_value_type(c)
        if not isinstance(sig.args[0], Vector):
            x = _broadcast(builder, vector_type, x)
        name = f"llvm.fma.v{c.lanes}f{c.dtype.bitwidth}"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3), name)
        return builder.call(function, [x, y, z])

    return c(a, b, c), codegen
