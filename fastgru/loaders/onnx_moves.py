"""What each data-movement op does to symbolic tensors (onnx_symbols): the moves onnx_dataflow
follows. Accepted ops (anything else is unknown, and what depends on it is refused):

| op | on data derived from a source | on shape tensors |
|---|---|---|
| Identity | as is | as is |
| Cast | to the same element type only | to int32 / int64 |
| Transpose | any permutation | - |
| Squeeze | axes whose size is provably 1 | a 1-element list to a scalar |
| Unsqueeze | inserts size-1 axes | a scalar to a 1-element list |
| Reshape | regroups runs of axes (0, -1, numbers, computed targets) | to 1-D |
| Slice | step 1, on one axis (a state's layers) | constant starts/ends/steps |
| Gather | a constant index on a state's layer axis | constant indices |
| Concat | contiguous slices of one axis, in order (h_n from the layers' Y_h) | lists joined |
| Shape | - | sizes of a traced tensor, start/end |
| Mul | - | elementwise products |
| Constant, initializers | - | integer constants |
"""

from __future__ import annotations

import numpy as np

from fastgru.loaders.onnx_fold import slice_bounds
from fastgru.loaders.onnx_symbols import ONE, Atom, Shape, Size, Tensor

MOVES = {"Identity", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Slice", "Gather",
         "Concat", "Shape", "Mul"}  # the ops of the table above
INT_TYPES = (6, 7)  # ONNX INT32, INT64
TO_THE_END = 2**31 - 1  # a Slice end at least this large keeps the rest of any real axis


def _axes(values, rank: int) -> list[int] | None:
    try:
        axes = [int(a) for a in np.asarray(values).reshape(-1)]
    except (TypeError, ValueError):
        return None
    normal = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in normal) or len(set(normal)) != len(normal):
        return None
    return normal



def evaluate(flow, node, value):
    """What `node`'s first output is, its inputs given by value(name); None when unknown."""
    op, inputs = node.op_type, list(node.input)
    attrs = flow.attributes(node)
    data = value(inputs[0]) if inputs and inputs[0] else None
    if data is None:
        return None
    if op == "Identity":
        return data
    if op == "Cast":
        to = attrs.get("to")
        if isinstance(data, Tensor):
            return data if to == data.elem else None
        return data if to in INT_TYPES else None
    if op == "Transpose" and isinstance(data, Tensor):
        rank = len(data.dims)
        perm = attrs.get("perm", list(range(rank))[::-1])
        if not isinstance(perm, list) or sorted(perm) != list(range(rank)):
            return None
        return Tensor(tuple(data.dims[p] for p in perm), data.elem, data.taken)
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes") if flow.opset < 13 else \
            (flow.ints(inputs[1]) if len(inputs) > 1 and inputs[1] else None)
        if len(inputs) > 1 and inputs[1] and axes is None:
            return None  # axes computed at run time
        return (_squeeze if op == "Squeeze" else _unsqueeze)(data, axes)
    if op == "Reshape":
        target = value(inputs[1]) if len(inputs) > 1 and inputs[1] else None
        if not isinstance(target, Shape) or target.scalar:
            return None
        return _reshape(data, list(target.values), bool(attrs.get("allowzero", 0)))
    if op == "Shape" and isinstance(data, Tensor):
        sizes = data.sizes()
        start, end = attrs.get("start", 0), attrs.get("end", len(sizes))
        return Shape(tuple(sizes[slice(start, end)]))
    if op == "Gather":
        indices = flow.constant(inputs[1]) if len(inputs) > 1 else None
        if indices is None or indices.dtype.kind not in "iu" or indices.ndim > 1:
            return None
        return _gather(data, [int(i) for i in indices.reshape(-1)], indices.ndim == 0,
                       attrs.get("axis", 0))
    if op == "Slice":
        if flow.opset < 10:
            starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), \
                attrs.get("axes"), None
        else:
            params = [flow.ints(inputs[k]) if len(inputs) > k and inputs[k] else None
                      for k in range(1, 5)]
            if any(len(inputs) > k and inputs[k] and params[k - 1] is None for k in range(1, 5)):
                return None
            starts, ends, axes, steps = params
        if starts is None or ends is None:
            return None
        return _slice(data, starts, ends, axes, steps)
    if op == "Concat":
        parts = [value(i) for i in inputs]
        return _concat(parts, attrs.get("axis"))
    if op == "Mul" and isinstance(data, Shape):
        other = value(inputs[1]) if len(inputs) > 1 else None
        if not isinstance(other, Shape):
            return None
        a, b = data.values, other.values
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        n = 0 if 0 in (len(a), len(b)) else max(len(a), len(b))  # NumPy's broadcasting
        return Shape(tuple((a[k % len(a)] * b[k % len(b)]) for k in range(n)),
                     data.scalar and other.scalar)
    return None


def _squeeze(data, axes):
    if isinstance(data, Shape):
        if data.scalar or len(data.values) != 1 or axes not in (None, [], [0], [-1]):
            return None
        return Shape(data.values, scalar=True)
    sizes = data.sizes()
    if not axes:  # absent or empty: every axis of size 1, as onnxruntime does
        if any(s.symbols for s in sizes):
            return None  # which axes are 1 depends on the sizes fed at run time
        axes = [k for k, s in enumerate(sizes) if s == ONE]
    axes = _axes(axes, len(sizes))
    if axes is None or any(sizes[a] != ONE for a in axes):
        return None
    taken = {atom for a in axes for atom in data.dims[a] if atom.start is not None}
    dims = tuple(d for k, d in enumerate(data.dims) if k not in axes)
    return Tensor(dims, data.elem, data.taken | frozenset(taken))


def _unsqueeze(data, axes):
    if axes is None:
        return None
    if isinstance(data, Shape):
        return Shape(data.values) if data.scalar and _axes(axes, 1) == [0] else None
    rank = len(data.dims) + len(axes)
    axes = _axes(axes, rank)
    if axes is None:
        return None
    dims, rest = [], iter(data.dims)
    for k in range(rank):
        dims.append(() if k in axes else next(rest))
    return Tensor(tuple(dims), data.elem, data.taken)


def _reshape(data, target: list[Size], allowzero: bool):
    if isinstance(data, Shape):
        if len(target) == 1 and target[0].fixed in (-1, len(data.values)):
            return Shape(data.values)
        return None
    sizes = data.sizes()
    total = ONE
    for s in sizes:
        total = total * s
    target = list(target)
    for k, t in enumerate(target):
        if t.fixed == 0 and not allowzero:
            if k >= len(sizes):
                return None
            target[k] = sizes[k]
    unknown = [k for k, t in enumerate(target) if t.fixed == -1]
    if len(unknown) > 1 or any(t.coef <= 0 for k, t in enumerate(target) if k not in unknown):
        return None
    if unknown:
        known = ONE
        for k, t in enumerate(target):
            if k != unknown[0]:
                known = known * t
        inferred = total.divide(known)
        if inferred is None:
            return None
        target[unknown[0]] = inferred
    atoms = [a for dim in data.dims for a in dim]
    dims, k = [], 0
    for t in target:
        group, size = [], ONE
        while size != t:
            if k == len(atoms):
                return None
            size = size * atoms[k].size
            group.append(atoms[k])
            k += 1
            if t.divide(size) is None:
                return None  # past the target: the target splits an axis
        dims.append(group)
    leftover = atoms[k:]
    if any(a.size != ONE for a in leftover):
        return None
    if leftover:
        if not dims:
            return None
        dims[-1].extend(leftover)
    return Tensor(tuple(tuple(d) for d in dims), data.elem, data.taken)


def _gather(data, indices: list[int], scalar: bool, axis):
    if isinstance(data, Shape):
        if data.scalar or axis not in (0, -1):
            return None
        n = len(data.values)
        if any(not -n <= i < n for i in indices):
            return None
        return Shape(tuple(data.values[i] for i in indices), scalar)
    rank = len(data.dims)
    axes = _axes([axis], rank)
    if axes is None or len(indices) != 1:
        return None
    sliced = _slice(data, [indices[0]], [indices[0] + 1], axes, None)
    return _squeeze(sliced, axes) if scalar and sliced is not None else sliced


def _slice(data, starts, ends, axes, steps):
    if isinstance(data, Shape):
        if data.scalar or len(starts) != 1 or (axes not in (None, [0], [-1])):
            return None
        bounds = slice_bounds(len(data.values), starts[0], ends[0], steps[0] if steps else 1)
        return Shape(tuple(data.values[bounds]))
    rank = len(data.dims)
    axes = _axes(list(range(len(starts))) if axes is None else axes, rank)
    if axes is None or len(starts) != len(axes) or len(ends) != len(axes) or \
            (steps and any(s != 1 for s in steps)):
        return None
    dims = list(data.dims)
    for axis, start, end in zip(axes, starts, ends, strict=True):
        if len(dims[axis]) != 1 or start < 0 or end <= start:
            return None  # a slice of a merged or open-ended axis: not proved
        atom = dims[axis][0]
        if start == 0 and end >= TO_THE_END:
            continue  # exporters' "to the end": the whole axis, whatever its size
        length = atom.size.fixed
        if length is not None:
            end = min(end, length)
            if end <= start:
                return None
            if start == 0 and end == length:
                continue
        offset = atom.start or 0
        dims[axis] = (Atom(atom.axis, Size(end - start), offset + start),)
    return Tensor(tuple(dims), data.elem, data.taken)


def _concat(parts, axis):
    if any(p is None for p in parts) or not parts:
        return None
    if all(isinstance(p, Shape) for p in parts):
        if any(p.scalar for p in parts):
            return None
        return Shape(tuple(v for p in parts for v in p.values))
    if not all(isinstance(p, Tensor) for p in parts) or axis is None:
        return None
    rank = len(parts[0].dims)
    axes = _axes([axis], rank)
    if axes is None or any(len(p.dims) != rank or p.elem != parts[0].elem or p.taken
                           for p in parts):
        return None
    a = axes[0]
    if any(p.dims[:a] != parts[0].dims[:a] or p.dims[a + 1:] != parts[0].dims[a + 1:]
           for p in parts):
        return None
    pieces = [p.dims[a] for p in parts]
    if any(len(piece) != 1 for piece in pieces):
        return None
    first = pieces[0][0]
    if first.start is None:
        return None
    position, total = first.start, 0
    for (atom,) in pieces:  # contiguous slices of one axis, in order
        if atom.axis != first.axis or atom.start != position or atom.size.fixed is None:
            return None
        position += atom.size.fixed
        total += atom.size.fixed
    merged = Atom(first.axis, Size(total), first.start)
    return Tensor(parts[0].dims[:a] + ((merged,),) + parts[0].dims[a + 1:], parts[0].elem)
