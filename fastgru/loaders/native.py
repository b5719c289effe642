"""fastgru's own file: safetensors holding the canonical weights, with the options as metadata.

Tensors ``layers.{k}.w`` (dirs, 3H, D_in), ``layers.{k}.r`` (dirs, 3H, H), ``layers.{k}.b``
(dirs, 6H) in the model's dtype (float32 for a bfloat16 model, whose weights are then exact
bfloat16 values), and ``initial_state`` (layers*dirs, H) when the model stores one. An int8
model stores its weights as int8 values and float32 scales instead of w and r:
``layers.{k}.w_int8`` (dirs, 3H, D_in), ``layers.{k}.w_scales`` (dirs, 3H), and the same for r
(b and initial_state in float32). Metadata
``format=fastgru``, ``version``, ``direction``, ``linear_before_reset``, ``clip``,
``batch_first``, ``dtype``, ``num_layers``. Loading gives back the same kernel arrays, so outputs
are bit-exact.
"""

from __future__ import annotations

import numpy as np

from fastgru._boundary import DTYPES
from fastgru._weights import GRUSpec, Int8Layer, LayerWeights
from fastgru.errors import FormatError

FORMAT = "fastgru"
VERSION = "1"
FLAGS = ("0", "1")  # how write() stores booleans


def write(path, spec: GRUSpec, *, batch_first: bool, dtype: str) -> None:
    from safetensors.numpy import save_file

    stored = dtype if dtype in ("float32", "float64") else np.float32  # bfloat16's are exact
    tensors = {}
    for k, layer in enumerate(spec.layers):
        names = ("w", "r", "b") if dtype != "int8" else ("b",)
        for name in names:
            tensors[f"layers.{k}.{name}"] = np.ascontiguousarray(getattr(layer, name), dtype=stored)
        if dtype == "int8":  # the values and scales the kernels multiply, nothing re-rounded
            for name in ("w", "r"):
                tensors[f"layers.{k}.{name}_int8"] = np.ascontiguousarray(
                    getattr(layer.int8, f"{name}_values"))
                tensors[f"layers.{k}.{name}_scales"] = np.ascontiguousarray(
                    getattr(layer.int8, f"{name}_scales"), np.float32)
    if spec.initial_state is not None:
        tensors["initial_state"] = np.ascontiguousarray(spec.initial_state, dtype=stored)
    metadata = {"format": FORMAT, "version": VERSION, "direction": spec.direction,
                "linear_before_reset": str(int(spec.linear_before_reset)),
                "clip": "" if spec.clip is None else repr(float(spec.clip)),
                "batch_first": str(int(batch_first)), "dtype": dtype,
                "num_layers": str(len(spec.layers))}
    save_file(tensors, str(path), metadata=metadata)


def is_native(metadata) -> bool:
    return bool(metadata) and metadata.get("format") == FORMAT


def read(tensors: dict, metadata: dict, where: str):
    """(spec, batch_first, dtype) from a native file's tensors and metadata."""
    if metadata.get("version") != VERSION:
        raise FormatError(f"{where} is a fastgru file of version {metadata.get('version')!r}; "
                          f"this fastgru reads version {VERSION}")
    for name, tensor in tensors.items():
        int8 = name.endswith("_int8")
        if (tensor.dtype != np.int8) if int8 else (tensor.dtype.kind != "f"):
            raise FormatError(f"{where}: tensor {name!r} must be "
                              f"{'int8' if int8 else 'floating point'}, got {tensor.dtype}")
    try:
        for key, allowed in (("dtype", DTYPES), ("batch_first", FLAGS),
                             ("linear_before_reset", FLAGS)):
            if metadata[key] not in allowed:  # GRU would refuse it with its own ValueError
                raise ValueError(f"{key} {metadata[key]!r}; expected one of {allowed}")
        num_layers = int(metadata["num_layers"])
        # as stored (GRU converts them once, to the model's dtype; GRUSpec refuses NaN)
        layers = tuple(_layer(tensors, k, metadata["dtype"] == "int8")
                       for k in range(num_layers))
        clip = float(metadata["clip"]) if metadata["clip"] else None
        state = tensors.get("initial_state")
        spec = GRUSpec(layers, direction=metadata["direction"],
                       linear_before_reset=metadata["linear_before_reset"] == "1", clip=clip,
                       initial_state=state)
        return spec, metadata["batch_first"] == "1", metadata["dtype"]
    except KeyError as missing:
        raise FormatError(f"{where} is an incomplete fastgru file: {missing} is missing") from None
    except ValueError as error:
        raise FormatError(f"{where} is an inconsistent fastgru file: {error}") from None


def _layer(tensors: dict, k: int, int8: bool) -> LayerWeights:
    """Layer k's weights as stored: w, r and b, or b and the int8 values and scales of w and r
    (w and r then dequantized from them; GRUSpec checks their shapes and types)."""
    if not int8:
        return LayerWeights(*(tensors[f"layers.{k}.{n}"] for n in ("w", "r", "b")))
    quantized = Int8Layer(*(tensors[f"layers.{k}.{n}"] for n in
                            ("w_int8", "w_scales", "r_int8", "r_scales")))
    try:
        w, r = quantized.dequantized()
    except ValueError as error:  # scales that do not broadcast over the values' rows
        raise ValueError(f"layer {k}: int8 values and scales do not match ({error})") from None
    return LayerWeights(w, r, tensors[f"layers.{k}.b"], quantized)
