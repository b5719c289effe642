"""fastgru's own file: safetensors holding the canonical weights, with the options as metadata.

Tensors ``layers.{k}.w`` (dirs, 3H, D_in), ``layers.{k}.r`` (dirs, 3H, H), ``layers.{k}.b``
(dirs, 6H) in the model's dtype (float32 for a bfloat16 model, whose weights are then exact
bfloat16 values), and ``initial_state`` (layers*dirs, H) when the model stores one; metadata
``format=fastgru``, ``version``, ``direction``, ``linear_before_reset``, ``clip``,
``batch_first``, ``dtype``, ``num_layers``. Loading gives back the same kernel arrays, so outputs
are bit-exact.
"""

from __future__ import annotations

import numpy as np

from fastgru._boundary import DTYPES
from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError

FORMAT = "fastgru"
VERSION = "1"
FLAGS = ("0", "1")  # how write() stores booleans


def write(path, spec: GRUSpec, *, batch_first: bool, dtype: str) -> None:
    from safetensors.numpy import save_file

    stored = np.float32 if dtype == "bfloat16" else dtype  # bfloat16 values are exact in float32
    tensors = {}
    for k, layer in enumerate(spec.layers):
        for name in ("w", "r", "b"):
            tensors[f"layers.{k}.{name}"] = np.ascontiguousarray(getattr(layer, name), dtype=stored)
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
        if tensor.dtype.kind != "f":
            raise FormatError(f"{where}: tensor {name!r} must be floating point, "
                              f"got {tensor.dtype}")
    try:
        for key, allowed in (("dtype", DTYPES), ("batch_first", FLAGS),
                             ("linear_before_reset", FLAGS)):
            if metadata[key] not in allowed:  # GRU would refuse it with its own ValueError
                raise ValueError(f"{key} {metadata[key]!r}; expected one of {allowed}")
        num_layers = int(metadata["num_layers"])
        # as stored (GRU converts them once, to the model's dtype; GRUSpec refuses NaN)
        layers = tuple(LayerWeights(*(tensors[f"layers.{k}.{n}"] for n in ("w", "r", "b")))
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
