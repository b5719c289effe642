"""Reading model files: which reader a file needs, and the safe readers for PyTorch files.

PyTorch files are read with ``torch.load(weights_only=True)`` only, which refuses pickled code;
there is no fallback to an unsafe load. safetensors files are read without torch.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

from fastgru.errors import FormatError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (".onnx", *TORCH_SUFFIXES, ".safetensors")
# Keys under which training code commonly nests the state dict in a checkpoint.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


def check_file(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path!r}")
    return path


def sniff(path: str) -> str:
    """'onnx', 'torch' or 'safetensors', from the file's first bytes, else from its suffix."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip, or a legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= size:
        return "safetensors"
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == ".safetensors":
        return "safetensors"
    raise FormatError(f"cannot tell what kind of model {path!r} holds: expected one of "
                      f"{', '.join(SUFFIXES)} (or their contents)")


def read_torch(path: str) -> Mapping:
    """The state dict in a PyTorch file, unwrapped from a training checkpoint if needed."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading the PyTorch file {path!r} needs torch: "
                          f"pip install 'fastgru[torch]'") from None
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # UnpicklingError for code, RuntimeError for broken archives
        raise FormatError(f"{path!r} was refused by torch's safe loader (weights_only=True): "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                          ) from None
    return unwrap_checkpoint(obj, path)


def unwrap_checkpoint(obj, where: str) -> Mapping:
    """A mapping holding tensors: obj itself, or obj[key] for a common checkpoint key."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(hasattr(v, "shape") for v in obj.values()):
            return obj
        nested = [k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        obj = obj[nested[0]]
    raise FormatError(f"{where!r} holds no state dict: expected a mapping of names to tensors, "
                      f"or one nested under one of {list(CHECKPOINT_KEYS)}")


def read_safetensors(path: str):
    """(tensors as NumPy arrays, metadata) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # SafetensorError, or a dtype NumPy lacks (bfloat16)
        raise FormatError(f"{path!r} is not a readable safetensors file: {error}") from None
    return tensors, metadata
