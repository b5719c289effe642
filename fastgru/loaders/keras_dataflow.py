"""Which GRU layers a Keras model's dataflow computes: looking through identity layers,
masks upstream, and the one stack of GRU layers that reads the model input (or the layer
named by layer=)."""

from __future__ import annotations

from fastgru.errors import FormatError
from fastgru.loaders.keras_config import INPUT, Layer

IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
            "ActivityRegularization", "Identity"}  # identity at inference


class UnknownLayer(ValueError):
    """layer= names no GRU layer of the model."""


def _holds_gru(value) -> bool:
    if isinstance(value, dict):
        return value.get("class_name") in ("GRU", "GRUCell") or any(
            _holds_gru(v) for v in value.values())
    return isinstance(value, list) and any(_holds_gru(v) for v in value)


def is_gru(layer: Layer) -> bool:
    if layer.kind == "GRU":
        return True
    inner = layer.config.get("layer")
    return layer.kind == "Bidirectional" and isinstance(inner, dict) and \
        inner.get("class_name") == "GRU"


def _source(layers: dict[str, Layer], ref):
    """The layer and tensor index `ref` comes from, looking through identity layers."""
    name, tensor = ref
    seen = set()
    while layers[name].kind in IDENTITY and name not in seen:
        seen.add(name)
        calls = layers[name].calls
        if len(calls) != 1 or len(calls[0][0]) != 1 or calls[0][1] or calls[0][2]:
            break  # not one plain call of one tensor: training=True drops at inference too
        name, tensor = calls[0][0][0]
    return layers[name], tensor


def _mask_origin(layers: dict[str, Layer], start: Layer) -> Layer | None:
    """The Masking or Embedding(mask_zero=True) layer upstream of `start`, or the layer that
    makes a mask `start` is given explicitly; None when `start` reads no mask."""
    for _, named, _ in start.calls:
        if named.get("mask"):
            found = _upstream_mask(layers, named["mask"][0][0])
            return found or layers[named["mask"][0][0]]
    return _upstream_mask(layers, start.name, include=False)


def _upstream_mask(layers, name: str, include: bool = True) -> Layer | None:
    stack, seen = [(name, include)], set()
    while stack:
        name, check = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        layer = layers[name]
        if check and (layer.kind == "Masking" or
                      (layer.kind == "Embedding" and layer.config.get("mask_zero"))):
            return layer
        stack += [(source, True) for inputs, named, _ in layer.calls
                  for source, _ in inputs + [t for ts in named.values() for t in ts]]
    return None


def _check_reads(layers: dict[str, Layer], layer: Layer, alone: bool) -> None:
    """A GRU layer must read one sequence: no mask, no initial state from the graph."""
    masked = _mask_origin(layers, layer)
    if masked is not None:
        raise FormatError(f"Keras GRU {layer.name!r} reads a mask made by {masked.name!r} "
                          f"({masked.kind}); fastgru does not apply Keras masks: save the model "
                          f"without it and call the loaded model with lengths= (trailing padding "
                          f"is lengths)")
    if not alone and len(layer.calls) > 1:
        raise FormatError(f"Keras GRU {layer.name!r} is called {len(layer.calls)} times; pick "
                          f"it with layer=")
    for inputs, named, training in layer.calls:
        if training:
            raise FormatError(f"Keras GRU {layer.name!r} is called with training=True (its "
                              f"dropout applies at inference); fastgru computes inference "
                              f"without dropout: save the model without training=True")
        count = len(inputs) + sum(len(ts) for ts in named.values())
        if count != 1:
            raise FormatError(f"Keras GRU {layer.name!r} reads {count} tensors (an initial state "
                              f"from the graph?); fastgru reads one sequence: load it with "
                              f"layer= and pass h0= when calling it")


def plan_layers(layers: dict[str, Layer], layer: str | None) -> list[Layer]:
    """The GRU layers to read, bottom to top."""
    grus = [g for g in layers.values() if is_gru(g)]
    names = [g.name for g in grus]
    if not grus:
        kinds = sorted({g.kind for g in layers.values()})
        raise FormatError(f"the Keras model has no GRU layer (its layers: {kinds})")
    if layer is not None:
        if layer not in names:
            raise UnknownLayer(f"no GRU layer named {layer!r}; the GRU layers are {names}")
        _check_reads(layers, layers[layer], alone=True)
        return [layers[layer]]
    for other in layers.values():
        if other not in grus and _holds_gru(other.config):
            raise FormatError(f"Keras layer {other.name!r} ({other.kind}) holds a GRU that "
                              f"fastgru does not read; pick a top-level GRU layer with layer=")
    below: dict[str, str | None] = {}  # GRU -> the GRU it reads (None: the model input)
    readers: dict[tuple, str] = {}
    for gru in grus:
        _check_reads(layers, gru, alone=False)
        source, tensor = _source(layers, gru.calls[0][0][0])
        if source.kind != INPUT and not (is_gru(source) and tensor == 0):
            raise FormatError(f"Keras GRU {gru.name!r} reads the output of {source.name!r} "
                              f"({source.kind}), which fastgru does not compute; load the GRU "
                              f"alone with layer={gru.name!r} and feed it that layer's input")
        key = (source.name, tensor)
        if key in readers:
            raise FormatError(f"Keras GRU layers {readers[key]!r} and {gru.name!r} read the same "
                              f"input side by side, not as a stack; pick one with layer=")
        readers[key] = gru.name
        below[gru.name] = None if source.kind == INPUT else source.name
    bottoms = [name for name in names if below[name] is None]
    stack = bottoms[:1]
    above = {low: high for high, low in below.items() if low is not None}
    while stack and stack[-1] in above:
        stack.append(above[stack[-1]])
    if len(bottoms) != 1 or len(stack) != len(grus):
        raise FormatError(f"the Keras model's GRU layers {names} do not form one stack; pick one "
                          f"with layer=")
    return [layers[name] for name in stack]
