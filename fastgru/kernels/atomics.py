"""Atomic operations on int64 array elements, for threads that hand work to each other inside
one parallel region (see kernels.gru.gru_layer_columns).

    claim(flags, i)       -> True for exactly one caller: the one that set flags[i] from 0 to 1
    add(counts, i, n)        counts[i] += n, atomically, visible to other threads' `load`
    load(counts, i)       -> counts[i], seeing every write made before the `add` that stored it
    yield_cpu()              let the OS run another thread (sched_yield) while waiting

All are sequentially consistent (or acquire, for `load`): memory written before an `add` is
visible to a thread whose `load` returns the added value. Arrays must be 1-D, C-contiguous
int64, and indices in bounds: nothing is checked.
"""

from __future__ import annotations

import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _is_int64_row(array) -> bool:
    return (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype == types.int64)


def _element_pointer(context, builder, array_type, array, index):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


@intrinsic
def claim(typingctx, flags, index):
    """Set flags[index] from 0 to 1; True when this call did it."""
    if not (_is_int64_row(flags) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], *args)
        i64 = ir.IntType(64)
        result = builder.cmpxchg(pointer, ir.Constant(i64, 0), ir.Constant(i64, 1),
                                 "seq_cst", "seq_cst")
        return builder.extract_value(result, 1)

    return types.boolean(flags, index), codegen


@intrinsic
def add(typingctx, counts, index, value):
    """counts[index] += value, atomically."""
    if not (_is_int64_row(counts) and isinstance(index, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        amount = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.atomic_rmw("add", pointer, amount, "seq_cst")
        return context.get_dummy_value()

    return types.none(counts, index, value), codegen


@intrinsic
def load(typingctx, counts, index):
    """counts[index], read atomically with acquire ordering."""
    if not (_is_int64_row(counts) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], *args)
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(counts, index), codegen


@intrinsic
def yield_cpu(typingctx):
    """sched_yield(): a thread waiting on another gives up its core, so that on a busy machine
    the thread it waits for gets to run. A no-op on Windows."""

    def codegen(context, builder, sig, args):
        if sys.platform != "win32":
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(function, [])
        return context.get_dummy_value()

    return types.none(), codegen
