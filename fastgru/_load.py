"""fastgru.load: one call for any model file."""

from __future__ import annotations

from fastgru._model import GRU
from fastgru.errors import FormatError
from fastgru.loaders import files, native

# Which options each kind of file takes (the rest would be ignored: refused instead).
_OPTIONS = {"onnx": {"node", "batch_first", "dtype"},
            "torch": {"prefix", "batch_first", "dtype"},
            "safetensors": {"prefix", "batch_first", "dtype"},
            "keras": {"layer", "dtype"},
            "native": set()}


def load(path, *, prefix=None, node=None, layer=None, batch_first=None,
         dtype=None) -> GRU:
    """Read a model file, picking the reader from its content (or its suffix).

    .onnx: GRU.from_onnx (node=); .pt/.pth/.bin/.ckpt: GRU.from_torch (prefix=), read with
    torch's safe loader; .safetensors: fastgru's own file (GRU.save, which takes no options),
    or PyTorch-keyed weights (prefix=); .keras/.h5: GRU.from_keras (layer=). batch_first:
    PyTorch state dicts do not record the layout, so a batch_first model needs
    batch_first=True here; ONNX and fastgru's files record it. An option the file's reader
    does not take is refused (TypeError), never ignored.
    """
    path = files.check_file(path)
    kind = files.sniff(path)
    tensors = metadata = None
    if kind == "safetensors":
        tensors, metadata = files.read_safetensors(path)
        if native.is_native(metadata):
            kind = "native"
    given = {name: value for name, value in (("prefix", prefix), ("node", node),
                                              ("layer", layer), ("batch_first", batch_first))
             if value is not None}
    if dtype is not None:
        given["dtype"] = dtype
    refused = sorted(set(given) - _OPTIONS[kind])
    if refused:
        what = {"onnx": "an ONNX file", "torch": "a PyTorch file", "native": "a fastgru file",
                "keras": "a Keras file",
                "safetensors": "a PyTorch-keyed safetensors file"}[kind]
        takes = sorted(_OPTIONS[kind])
        raise TypeError(f"{path!r} is {what}, which takes "
                        f"{', '.join(t + '=' for t in takes) if takes else 'no options'}; "
                        f"got {', '.join(r + '=' for r in refused)}")
    if kind == "onnx":
        return GRU.from_onnx(path, **given)
    if kind == "keras":
        return GRU.from_keras(path, **given)
    if kind == "native":
        spec, batch_first, stored_dtype = native.read(tensors, metadata, repr(path))
        return GRU(spec, batch_first=batch_first, dtype=stored_dtype)
    try:
        return GRU.from_torch(path if tensors is None else tensors, **given)
    except FormatError as error:
        if str(error).startswith(repr(path)):
            raise
        raise FormatError(f"{path!r}: {error}") from None
