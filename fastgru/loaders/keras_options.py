"""One Keras GRU or Bidirectional(GRU) layer's options, checked against what fastgru
computes."""

from __future__ import annotations

from fastgru.errors import FormatError
from fastgru.loaders.keras_config import Layer, expect

_OPTIONS = {"units": (int, None), "activation": (str, "tanh"),
            "recurrent_activation": (str, "sigmoid"), "use_bias": (bool, True),
            "reset_after": (bool, True), "go_backwards": (bool, False),
            "return_sequences": (bool, False), "time_major": (bool, False)}
_COMPUTED = {"activation": "tanh", "recurrent_activation": "sigmoid"}


def _options(name: str, config: dict, what: str = "GRU", part: str = "") -> dict:
    """The options fastgru reads from one GRU config, checked: {option: value}."""
    label = f"Keras {what} {name!r}{part}"
    found = {}
    for key, (kind, default) in _OPTIONS.items():
        if key not in config and default is None:
            raise FormatError(f"{label} has no {key!r} in its config")
        found[key] = expect(config.get(key, default), kind, f"{name!r} {key}")
    if found["units"] < 1:
        raise FormatError(f"{label}: units={found['units']}")
    for key, computed in _COMPUTED.items():
        if found[key] != computed:
            raise FormatError(f"{label}: {key}={found[key]!r}; fastgru computes "
                              f"the default {key}={computed!r} only")
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = expect(dtype.get("config", {}), dict, f"{name!r} dtype").get("name")
    if dtype not in (None, "float32", "float64"):
        raise FormatError(f"{label} computes in dtype {dtype!r:.40}; fastgru "
                          f"reads float32 and float64 layers: save the model in float32")
    return found


def layer_options(layer: Layer) -> dict:
    """The options of a GRU or Bidirectional(GRU) layer, with 'bidirectional'."""
    if layer.kind == "GRU":
        return _options(layer.name, layer.config) | {"bidirectional": False}
    merge = layer.config.get("merge_mode", "concat")
    if merge != "concat":
        raise FormatError(f"Keras layer {layer.name!r}: Bidirectional merge_mode {merge!r:.40}; "
                          f"fastgru reads 'concat' (both directions side by side)")
    inner = expect(layer.config["layer"].get("config"), dict, f"{layer.name!r} layer config")
    forward = _options(layer.name, inner, "Bidirectional")
    if forward["go_backwards"]:
        raise FormatError(f"Keras layer {layer.name!r}: Bidirectional over a go_backwards GRU "
                          f"puts the reverse direction first; fastgru reads a forward GRU there")
    backward_layer = layer.config.get("backward_layer")
    if backward_layer is not None:
        backward_layer = expect(backward_layer, dict, f"{layer.name!r} backward_layer")
        if backward_layer.get("class_name") != "GRU":
            raise FormatError(f"Keras layer {layer.name!r}: backward layer "
                              f"{backward_layer.get('class_name')!r:.40} is not a GRU")
        config = expect(backward_layer.get("config"), dict, f"{layer.name!r} backward config")
        backward = _options(layer.name, config, "Bidirectional", ", its backward layer")
        differ = sorted(k for k in forward if k != "go_backwards" and forward[k] != backward[k])
        if differ or not backward["go_backwards"]:
            raise FormatError(f"Keras layer {layer.name!r}: its backward layer differs from its "
                              f"forward layer in {differ or ['go_backwards']}; fastgru runs both "
                              f"directions with one set of options")
    return forward | {"bidirectional": True}
