"""Borrowed array views: the same data, shape and strides, without a reference count.

Every view Numba makes of an array (a slice, a row) takes a reference on the array's memory and
drops it when done: two atomic instructions. The kernels make dozens of views a step, and at
small H these atomics were most of a step (the profile: bench/RESULTS.md, "Thresholds in the
code", Kernels (borrowed views)). A borrowed view has no memory owner, so the views made from it
count nothing.

    borrowed(a, b, ...) -> (a', b', ...): views of the arrays whose own views take no references

Only for arrays that outlive every use of the view: a kernel's arguments (the caller holds
them for the whole call) and arrays the kernel itself keeps alive to the end. Never return a
borrowed view or store it where it could outlive its array.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, *arrays):
    if not all(isinstance(a, types.Array) for a in arrays):
        return None
    views = types.Tuple(arrays)

    def codegen(context, builder, sig, args):
        [packed] = args
        made = []
        for k, array_type in enumerate(arrays):
            source = context.make_array(array_type)(context, builder,
                                                    value=builder.extract_value(packed, k))
            view = context.make_array(array_type)(context, builder)
            context.populate_array(view, data=source.data, shape=source.shape,
                                   strides=source.strides, itemsize=source.itemsize,
                                   meminfo=None, parent=None)
            made.append(view._getvalue())
        return context.make_tuple(builder, views, made)

    return views(types.StarArgTuple(arrays)), codegen
