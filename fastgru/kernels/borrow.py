"""Borrowed array views: the same data, shape and strides, without a reference count.

Every view Numba makes of an array (a slice, a row) takes a reference on the array's memory and
drops it when done: two atomic instructions. The kernels make dozens of views a step, and at
small H these atomics were most of a step (the profile: bench/RESULTS.md, "Thresholds in the
code", Kernels (borrowed views)). A borrowed view has no memory owner, so the views made from it
count nothing.

    borrowed(a, b, ...) -> (a', b', ...): views of the arrays whose own views take no references
                                         (a named tuple of arrays: each of its arrays)

Only for arrays that outlive every use of the view: a kernel's arguments (the caller holds
them for the whole call) and arrays the kernel itself keeps alive to the end. Never return a
borrowed view or store it where it could outlive its array.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


def _borrowable(t) -> bool:
    """An array, or a named tuple of arrays (int8 weights, a Quantized operand)."""
    return isinstance(t, types.Array) or (isinstance(t, types.BaseNamedTuple)
                                          and all(isinstance(a, types.Array) for a in t.types))


def _borrow(context, builder, array_type, value):
    """LLVM IR: a view of the array `value` with no memory owner."""
    source = context.make_array(array_type)(context, builder, value=value)
    view = context.make_array(array_type)(context, builder)
    context.populate_array(view, data=source.data, shape=source.shape, strides=source.strides,
                           itemsize=source.itemsize, meminfo=None, parent=None)
    return view._getvalue()


@intrinsic
def borrowed(typingctx, *arrays):
    """Borrowed views of arrays, and of each array of named tuples of arrays."""
    if not all(_borrowable(a) for a in arrays):
        return None
    views = types.Tuple(arrays)

    def codegen(context, builder, sig, args):
        [packed] = args
        made = []
        for k, kind in enumerate(arrays):
            value = builder.extract_value(packed, k)
            if isinstance(kind, types.Array):
                made.append(_borrow(context, builder, kind, value))
                continue
            fields = [_borrow(context, builder, t, builder.extract_value(value, i))
                      for i, t in enumerate(kind.types)]
            made.append(context.make_tuple(builder, kind, fields))
        return context.make_tuple(builder, views, made)

    return views(types.StarArgTuple(arrays)), codegen
