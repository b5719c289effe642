"""Reading model files: which reader a file needs, and the safe readers for PyTorch files.

PyTorch files are read with ``torch.load(weights_only=True)`` only, which refuses pickled code;
there is no fallback to an unsafe load. safetensors files are read without torch.

Memory while reading stays within a small multiple of the file's size plus the weights the model
keeps (issue 28): a torch zip archive's members are checked against the file before torch reads
them (torch.save never compresses, so a compressed member is refused rather than inflated), and
when every storage data.pkl declares matches its member, the storages are memory-mapped so that
only the tensors the GRU uses are read; safetensors tensors are read when asked for.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
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
    mmap = check_torch_archive(path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
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


# Bytes per element of the storage types torch.save names in data.pkl (others: not mapped).
_STORAGE_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2,
                     "BFloat16Storage": 2, "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2,
                     "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                     "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1}


def check_torch_archive(path: str) -> bool:
    """Whether a torch file can be memory-mapped; a FormatError for a zip archive whose members
    are compressed or declare more bytes than the file has, or whose data.pkl declares storages
    of other sizes than their members. False (torch reads it, with its own checks) for a legacy
    file, or an archive or data.pkl this check does not understand."""
    size = os.path.getsize(path)
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # not a zip (legacy torch.save), or one torch will say more about
        return False
    with archive:
        infos = archive.infolist()
        total = 0
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise FormatError(f"{path!r}: archive member {info.filename!r} is compressed "
                                  f"({info.compress_size} bytes unpacking to {info.file_size}); "
                                  f"torch.save never compresses, and fastgru does not inflate "
                                  f"archives: save the weights again with torch.save")
            total += info.file_size
            if info.header_offset + info.file_size > size or total > size:
                raise FormatError(f"{path!r}: archive member {info.filename!r} declares "
                                  f"{info.file_size} bytes at offset {info.header_offset} "
                                  f"({total} bytes in all so far), more than the file's {size}")
        pickles = [i for i in infos if i.filename.endswith("/data.pkl")
                   and i.filename.count("/") == 1]
        if len(pickles) != 1:
            return False
        folder = pickles[0].filename[:-len("data.pkl")]
        try:
            pickled = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as error:  # a bad CRC, a cut member
            raise FormatError(f"{path!r}: archive member {pickles[0].filename!r} is damaged: "
                              f"{error}") from None
        declared = _declared_storages(pickled)
    if declared is None:
        return False
    members = {i.filename: i.file_size for i in infos}
    for key, nbytes in declared.items():
        stored = members.get(f"{folder}data/{key}")
        if stored is None:
            return False  # torch names what is missing
        if stored != nbytes:
            raise FormatError(f"{path!r}: data.pkl declares storage {key!r} of {nbytes} bytes, "
                              f"but its archive member holds {stored}")
    return True


class _Stub:
    """Whatever a pickle builds, without importing or running anything."""

    def __init__(self, *args, **kwargs):
        pass

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _declared_storages(data: bytes) -> dict[str, int] | None:
    """{storage key: bytes} that a torch data.pkl declares, read by an unpickler that imports
    nothing (every global is a stub); None when it holds anything unexpected."""
    import io

    storages: dict[str, int] = {}

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            return type(name, (_Stub,), {})

        def persistent_load(self, pid):
            kind, storage_type, key, _, numel = pid
            itemsize = _STORAGE_ITEMSIZE[storage_type.__name__]
            if kind != "storage" or not isinstance(numel, int) or numel < 0:
                raise ValueError(pid)
            if storages.setdefault(str(key), numel * itemsize) != numel * itemsize:
                raise ValueError(pid)
            return _Stub()

    try:
        Reader(io.BytesIO(data)).load()
    except Exception:  # torch's own loader will say what is wrong, or read what this cannot
        return None
    return storages


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


class SafetensorsTensors(Mapping):
    """The tensors of a safetensors file as NumPy arrays, each read when first asked for (a
    GRU's among many other tensors costs only the GRU's), then kept."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._path = path
        try:
            with safe_open(path, framework="numpy") as f:
                self.metadata = f.metadata() or {}
                self._keys = list(f.keys())
        except Exception as error:  # SafetensorError: offsets, shapes, header length
            raise FormatError(f"{path!r} is not a readable safetensors file: {error}") from None
        self._read: dict = {}

    def __getitem__(self, key):
        if key not in self._read:
            if key not in self._keys:
                raise KeyError(key)
            from safetensors import safe_open

            try:  # opened for each tensor: a file kept mapped would count its pages as well
                with safe_open(self._path, framework="numpy") as f:
                    self._read[key] = f.get_tensor(key)
            except Exception as error:  # a dtype NumPy lacks (bfloat16)
                raise FormatError(f"{self._path!r} is not a readable safetensors file: "
                                  f"tensor {key!r}: {error}") from None
        return self._read[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def read_safetensors(path: str):
    """(tensors as a mapping of NumPy arrays read on access, metadata) of a safetensors file."""
    tensors = SafetensorsTensors(path)
    return tensors, tensors.metadata
