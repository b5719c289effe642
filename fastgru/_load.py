"""fastgru.load: one call for any model file."""

from __future__ import annotations

from fastgru._model import GRU
from fastgru.errors import FormatError
from fastgru.loaders import files, native


def load(path, **options) -> GRU:
    """Read a model file, picking the reader from its content (or its suffix).

    .onnx: GRU.from_onnx; .pt/.pth/.bin/.ckpt: GRU.from_torch (torch's safe loader);
    .safetensors: fastgru's own file (GRU.save), or PyTorch-keyed weights. options (prefix, node,
    batch_first, dtype) go to the reader that takes them.
    """
    path = files.check_file(path)
    kind = files.sniff(path)
    if kind == "onnx":
        return GRU.from_onnx(path, **options)
    source = path
    if kind == "safetensors":
        tensors, metadata = files.read_safetensors(path)
        if native.is_native(metadata):
            if options:
                raise TypeError(f"a fastgru file takes no options, got {sorted(options)}")
            spec, batch_first, dtype = native.read(tensors, metadata, repr(path))
            return GRU(spec, batch_first=batch_first, dtype=dtype)
        source = tensors  # PyTorch-keyed weights, already read
    try:
        return GRU.from_torch(source, **options)
    except FormatError as error:
        raise FormatError(f"{path!r}: {error}") from None
