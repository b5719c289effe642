"""Constant folding of the data-movement ops exporters put between stored weights and a GRU
node, in NumPy, with a bound on what they may produce.

torch.onnx.export's default exporter writes W, R and B as Slice/Concat/Transpose... of the stored
tensors. Folding them needs none of ONNX's machinery, and must not let a small file expand into
gigabytes (a Concat of one initializer with itself a thousand times, a Gather of a million
indices): each result's size is checked before it is made.
"""

from __future__ import annotations

import math

import numpy as np

from fastgru.errors import FormatError
from fastgru.loaders import onnx_proto

# ONNX element types a Cast may produce here
CAST_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
              7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
              13: np.uint64}
FOLDABLE = {"Identity", "Cast", "Slice", "Concat", "Transpose", "Unsqueeze", "Squeeze",
            "Reshape", "Split", "Gather", "Flatten", "Constant", "DequantizeLinear"}


def limit_for(stored_values: int) -> int:
    """The most values folding may produce in all, for a graph that stores `stored_values`:
    exporters' moves produce about as many values as they read."""
    return 4 * stored_values + 2**20


def evaluate(nodes, values: dict, opset: int, attributes, constant_value,
             limit: int) -> dict:
    """Run `nodes` (topological order) on `values` ({name: ndarray}, updated and returned).

    attributes(node) -> {name: value}; constant_value(node) -> the ndarray a Constant node
    holds. FormatError names the node when an op cannot be folded or would exceed `limit`
    values in all.
    """
    made = 0
    for node in nodes:
        where = f"node {node.name or node.op_type!r} ({node.op_type})"
        inputs = [values[i] if i else None for i in node.input]
        try:
            if node.op_type == "Constant":
                results = [np.asarray(constant_value(node))]
            else:
                results = _run(node.op_type, inputs, attributes(node), opset, node,
                               limit - made, len(node.output))
            if len(results) != len(node.output):
                raise ValueError(f"{len(results)} results for {len(node.output)} outputs")
        except FormatError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as error:
            raise FormatError(f"cannot fold {where} feeding the GRU nodes' constant inputs: "
                              f"{type(error).__name__}: {error}") from None
        made += sum(r.size for r in results)
        if made > limit:
            raise FormatError(f"{where}: folding the GRU nodes' constant inputs would make "
                              f"{made} values, more than {limit} from what the file stores")
        values.update(zip(node.output, results, strict=True))
    return values


def _axes_input(node, inputs, attrs, opset, since):
    """axes as an attribute (before opset `since`) or as the second input (from it on)."""
    if opset < since:
        return attrs.get("axes")
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].reshape(-1)]
    return None


def _run(op, inputs, attrs, opset, node, room, outputs):
    x = inputs[0]
    if op == "Identity":
        return [x]
    if op == "Cast":
        to = attrs.get("to")
        if to not in CAST_TYPES:
            raise ValueError(f"Cast to element type {to} is not folded")
        return [x.astype(CAST_TYPES[to])]
    if op == "Transpose":
        perm = attrs.get("perm")
        return [np.transpose(x, None if perm is None else [int(p) for p in perm])]
    if op == "Unsqueeze":
        axes = _axes_input(node, inputs, attrs, opset, 13)
        rank = x.ndim + len(axes)
        normal = sorted(a + rank if a < 0 else a for a in axes)
        for a in normal:
            x = np.expand_dims(x, a)
        return [x]
    if op == "Squeeze":
        axes = _axes_input(node, inputs, attrs, opset, 13)
        if not axes:  # absent or empty: every axis of size 1, as onnxruntime does
            return [np.squeeze(x)]
        if any(x.shape[a] != 1 for a in axes):
            raise ValueError(f"Squeeze of axes {axes} of shape {x.shape}")
        return [np.squeeze(x, tuple(axes))]
    if op == "Reshape":
        target = [int(t) for t in inputs[1].reshape(-1)]
        if not attrs.get("allowzero", 0):
            target = [x.shape[k] if t == 0 else t for k, t in enumerate(target)]
        return [np.reshape(x, target)]
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return [x.reshape(math.prod(x.shape[:axis]), -1)]
    if op == "Concat":
        parts = [p for p in inputs if p is not None]
        _check_room(sum(p.size for p in parts), room)
        return [np.concatenate(parts, axis=attrs["axis"])]
    if op == "Gather":
        indices = inputs[1]
        axis = attrs.get("axis", 0)
        rest = x.size // max(x.shape[axis], 1) if x.ndim else 1
        _check_room(indices.size * rest, room)
        return [np.take(x, indices.astype(np.int64), axis=axis)]
    if op == "Slice":
        return [_slice(x, inputs, attrs, opset)]
    if op == "Split":
        return _split(x, inputs, attrs, opset, outputs)
    if op == "DequantizeLinear":
        zero = inputs[2] if len(inputs) > 2 else None
        return [dequantize_linear(x, inputs[1], zero, attrs)]
    raise ValueError(f"{op} is not folded")


def scale_shape(x: np.ndarray, scale: np.ndarray, attrs: dict) -> tuple:
    """The shape DequantizeLinear broadcasts its scale (and zero point) to against x: () for
    one scale, or a 1-D scale along the `axis` attribute (default 1). Blocked quantization
    (block_size) is not read."""
    if attrs.get("block_size", 0):
        raise ValueError("DequantizeLinear with block_size is not folded")
    if scale.size == 1 and scale.ndim <= 1:
        return ()
    axis = attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    if scale.ndim != 1 or not 0 <= axis < x.ndim or scale.size != x.shape[axis]:
        raise ValueError(f"DequantizeLinear scale of shape {scale.shape} for axis {axis} of "
                         f"a tensor of shape {x.shape}")
    return tuple(-1 if k == axis else 1 for k in range(x.ndim))


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None,
                      attrs: dict) -> np.ndarray:
    """ONNX DequantizeLinear: (x - zero) * scale in the scale's float type, each product rounded
    once, per tensor or per axis (scale_shape); x of 8- or 16-bit integers or int32."""
    if x.dtype not in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        raise ValueError(f"DequantizeLinear of {x.dtype} values is not folded")
    if scale.dtype.kind != "f":
        raise ValueError(f"DequantizeLinear scale must be floating point, got {scale.dtype}")
    if dequantized_dtype(scale, attrs) != scale.dtype:
        raise ValueError(f"DequantizeLinear to type {attrs['output_dtype']} from a "
                         f"{scale.dtype} scale is not folded")
    shape = scale_shape(x, scale, attrs)
    shifted = x.astype(np.int64)
    if zero is not None:
        if zero.dtype != x.dtype or zero.shape != scale.shape:
            raise ValueError(f"DequantizeLinear zero point {zero.dtype} {zero.shape} for "
                             f"{x.dtype} values and scale of shape {scale.shape}")
        shifted = shifted - zero.astype(np.int64).reshape(shape)
    return shifted.astype(scale.dtype) * scale.reshape(shape)


def dequantized_dtype(scale: np.ndarray, attrs: dict) -> np.dtype | None:
    """The type DequantizeLinear makes: its scale's, or opset 23's output_dtype where set
    (None for a type fastgru does not decode)."""
    output = attrs.get("output_dtype", 0)
    return scale.dtype if output == 0 else onnx_proto.dtype_of(output)


def _check_room(count: int, room: int) -> None:
    if count > room:
        raise FormatError(f"folding the GRU nodes' constant inputs would make {count} values "
                          f"at once, more than the file stores allow")


INT_MAXES = (2**31 - 1, 2**63 - 1)  # ends onnxruntime reads as "past the last" in either way


def slice_bounds(dim: int, start: int, end: int, step: int) -> slice:
    """ONNX Slice's clamping on an axis of `dim` values, as onnxruntime applies it (an end of
    INT32_MAX or INT64_MAX with a negative step runs to the first value)."""
    if step == 0:
        raise ValueError("Slice step 0")
    if step < 0 and end in INT_MAXES:
        end = -dim - 1
    start, end = (start + dim if start < 0 else start), (end + dim if end < 0 else end)
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


def _slice(x, inputs, attrs, opset):
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        params = [None if len(inputs) <= k or inputs[k] is None else
                  [int(v) for v in inputs[k].reshape(-1)] for k in range(1, 5)]
        starts, ends, axes, steps = params
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = slice_bounds(x.shape[axis], start, end, step)
    return x[tuple(index)]


def _split(x, inputs, attrs, opset, outputs):
    axis = attrs.get("axis", 0)
    dim = x.shape[axis]
    if opset < 13:
        sizes = attrs.get("split")
    else:
        sizes = None if len(inputs) < 2 or inputs[1] is None else \
            [int(s) for s in inputs[1].reshape(-1)]
    if sizes is None:
        parts = attrs.get("num_outputs", outputs)
        chunk = -(-dim // parts)
        sizes = [min(chunk, dim - k * chunk) for k in range(parts)]
    if sum(sizes) != dim or any(s < 0 for s in sizes):
        raise ValueError(f"Split sizes {sizes} of an axis of {dim}")
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
