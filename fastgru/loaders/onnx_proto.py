"""ONNX's protobuf messages without importing the onnx package.

`import onnx` costs most of a second (ml_dtypes, the reference evaluator, the C++ checker...),
more than the rest of a cold start to a first result (bench/RESULTS.md, "Cold start from an ONNX
file"). Reading a model needs only onnx's generated protobuf module, onnx_ml_pb2, which depends
on protobuf alone: it is loaded here under its own name, so that a later `import onnx` finds and
shares it (one set of message classes, one descriptor pool). Tensors and attributes are decoded
here with NumPy; types NumPy lacks go to onnx's numpy_helper.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

_MODULE = "onnx.onnx_ml_pb2"
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# TensorProto.DataType -> (NumPy dtype, the repeated field that holds it without raw_data)
_TYPES = {1: (np.float32, "float_data"), 2: (np.uint8, "int32_data"),
          3: (np.int8, "int32_data"), 4: (np.uint16, "int32_data"),
          5: (np.int16, "int32_data"), 6: (np.int32, "int32_data"),
          7: (np.int64, "int64_data"), 9: (np.bool_, "int32_data"),
          10: (np.float16, "int32_data"), 11: (np.float64, "double_data"),
          12: (np.uint32, "uint64_data"), 13: (np.uint64, "uint64_data")}


def messages():
    """The module of ONNX's message classes (ModelProto, TensorProto...)."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        return module
    spec = importlib.util.find_spec("onnx")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("reading ONNX files needs the onnx package: pip install onnx")
    path = os.path.join(list(spec.submodule_search_locations)[0], "onnx_ml_pb2.py")
    module_spec = importlib.util.spec_from_file_location(_MODULE, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[_MODULE] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module


def is_model(value) -> bool:
    """Whether `value` is an onnx.ModelProto (of the onnx package, if the caller imported it)."""
    return type(value).__name__ == "ModelProto" and hasattr(value, "graph") and \
        hasattr(value, "SerializeToString")


def dtype_of(data_type: int) -> np.dtype | None:
    """The NumPy dtype of a TensorProto data type fastgru decodes itself, else None."""
    entry = _TYPES.get(data_type)
    return None if entry is None else np.dtype(entry[0])


def itemsize(data_type: int) -> int | None:
    """Bytes per value of a data type (NumPy's, or onnx's for the others), None if unknown."""
    dtype = dtype_of(data_type)
    if dtype is not None:
        return dtype.itemsize
    try:
        from onnx import helper
        return helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:
        return None


def stored_count(tensor) -> int:
    """How many values a TensorProto stores (raw_data counted by the type's width)."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return max(len(tensor.float_data), len(tensor.double_data), len(tensor.int32_data),
               len(tensor.int64_data), len(tensor.uint64_data), len(tensor.string_data))


def values(tensor, dims: list[int], raw: bytes | None = None) -> np.ndarray:
    """A TensorProto's values as an ndarray of shape `dims`; `raw`: its bytes when stored
    outside it. Sizes must have been checked."""
    entry = _TYPES.get(tensor.data_type)
    if entry is None:  # strings, bfloat16, 8-bit floats...: onnx's own decoder
        from onnx import numpy_helper
        if raw is not None:
            copy = type(tensor)()
            copy.CopyFrom(tensor)
            del copy.external_data[:]
            copy.data_location = 0
            copy.raw_data = raw
            tensor = copy
        return numpy_helper.to_array(tensor)
    dtype, field = np.dtype(entry[0]), entry[1]
    if raw is None and tensor.HasField("raw_data"):
        raw = tensor.raw_data
    if raw is not None:
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    stored = getattr(tensor, field)
    if tensor.data_type == 10:  # float16 travels as its bits in int32_data
        return np.asarray(stored, np.uint16).view(np.float16).reshape(dims)
    return np.asarray(stored, dtype).reshape(dims)


# AttributeProto.AttributeType -> the field that holds its value
_ATTRIBUTES = {1: "f", 2: "i", 3: "s", 4: "t", 5: "g", 11: "sparse_tensor", 13: "tp",
               6: "floats", 7: "ints", 8: "strings", 9: "tensors", 10: "graphs",
               12: "sparse_tensors", 14: "type_protos"}


def attribute_value(attribute):
    """An AttributeProto's value (lists for the repeated kinds), as onnx.helper gives it."""
    if attribute.ref_attr_name:
        raise ValueError(f"attribute {attribute.name!r} refers to a function's attribute")
    field = _ATTRIBUTES.get(attribute.type)
    if field is None:
        raise ValueError(f"attribute {attribute.name!r} has no valid type ({attribute.type})")
    value = getattr(attribute, field)
    return list(value) if attribute.type >= 6 and attribute.type not in (11, 13) else value
