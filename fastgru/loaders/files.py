"""Reading model files: which reader a file needs, and the safe readers for PyTorch files.

PyTorch files are read with ``torch.load(weights_only=True)`` only, which refuses pickled code;
there is no fallback to an unsafe load. safetensors files are read without torch.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping

from fastgru.errors import FormatError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SUFFIXES = (".onnx", *TORCH_SUFFIXES, ".safetensors", *KERAS_SUFFIXES)
_HDF5 = b"\x89HDF\r\n\x1a\n"
# Keys under which training code commonly nests the state dict in a checkpoint.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


def check_file(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path!r}")
    return path


def _is_safetensors(head: bytes, path: str, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length N, then N bytes of a JSON
    object that parses, within the file."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = struct.unpack("<Q", head[:8])[0]
    if length + 8 > size or length > 100_000_000:
        return False
    with open(path, "rb") as f:
        f.seek(8)
        header = f.read(length)
    try:
        return isinstance(json.loads(header), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def sniff(path: str) -> str:
    """'onnx', 'torch', 'safetensors' or 'keras', from the file's signature, else its suffix.

    Signatures in full: a zip archive (torch.save; a Keras 3 .keras file when it holds
    config.json), an HDF5 file (Keras 2 / legacy .h5), a safetensors header that parses, a
    pickle protocol 2-5 header (legacy torch.save). A safetensors header length may itself
    begin with the byte 0x80, so pickles are recognized by their protocol byte too, and after
    safetensors.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if head[:4] == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                return "keras" if "config.json" in archive.namelist() else "torch"
        except Exception:  # BadZipFile, NotImplementedError for odd versions, ...
            return "torch"  # torch's loader says what is wrong with it
    if head[:8] == _HDF5:
        return "keras"
    if _is_safetensors(head, path, size):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in KERAS_SUFFIXES:
        return "keras"
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
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours its messages
        if "Weights only load failed" in text:
            raise FormatError(f"{path!r} holds pickled Python objects, not just tensors (a "
                              f"whole module saved with torch.save(model)?), and fastgru never "
                              f"unpickles code: save model.state_dict() instead, or pass the "
                              f"module itself to fastgru.GRU.from_torch") from None
        first = text.splitlines()[0] if text.strip() else type(error).__name__
        raise FormatError(f"{path!r} was refused by torch's safe loader (weights_only=True): "
                          f"{first}") from None
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
