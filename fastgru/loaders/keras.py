"""Keras GRU layers to the canonical layout, read with h5py, without TensorFlow or Keras.

Keras stores a GRU cell as kernel (D, 3H), recurrent_kernel (H, 3H) and bias, gates in the
canonical order (z, r, h): W = kernelᵀ, R = recurrent_kernelᵀ. With reset_after=True (Keras'
default, PyTorch's variant: linear_before_reset=1) bias is (2, 3H), input and recurrent biases;
with reset_after=False (linear_before_reset=0) it is (3H,), the input bias only.

Files: Keras 3 ``.keras`` (a zip of config.json and model.weights.h5, whose groups carry each
layer's name in the attribute ``name`` of their ``vars``), and Keras 2 / tf.keras / Keras 3
legacy ``.h5`` (the config in the attribute ``model_config``; each layer's weights listed in order
by the attribute ``weight_names`` of ``model_weights/<layer>``). A Keras model object is read
through its own get_config() and get_weights(). Only the chosen GRU layers' weights are read, and
no member or dataset is read whose declared size exceeds what the file can hold.

What the loaded model computes is decided from the model's dataflow (which layer reads which
tensor: the Functional config's ``inbound_nodes``, Keras 3 or Keras 2 form; a Sequential model is
a chain), never from the order of the layers:

- ``from_keras(src)``: the fastgru model maps the Keras model's input to the output of its top
  GRU layer (the sequence; with return_sequences=False Keras' output is its last step, h_n).
  Every GRU layer of the model must be in one stack that reads a model input.
- ``from_keras(src, layer=name)``: the fastgru model maps that layer's input to its output.

Accepted patterns (anything else is a FormatError that names the layer and what to use instead):

| pattern | accepted as |
|---|---|
| ``GRU`` | one layer, direction "forward" |
| ``GRU(go_backwards=True)`` alone | direction "reverse", outputs aligned with the input steps |
| ``Bidirectional(GRU, merge_mode="concat")`` | direction "bidirectional" |
| ``Bidirectional(..., backward_layer=GRU(go_backwards=True))`` | the same, when the backward layer's options equal the forward one's (its own weights) |
| GRU layers in a chain, each reading the one below (``return_sequences=True``) | a stack: same units, direction and options, no go_backwards |
| identity layers at inference between the input and the stack, or inside it: ``Dropout``, ``SpatialDropout1D``, ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``, ``ActivityRegularization``, ``Identity`` | skipped |
| any layers after the top GRU (``Dense`` heads, ...), or reading its outputs | not computed: the model returns the top GRU's output |
| ``return_state=True`` | accepted (the state is h_n) |
| Sequential or Functional model, ``.keras``, ``.h5`` (Keras 3 or Keras 2 config), model object | all read the same way |

Refused: two GRU layers reading one input side by side (pick one with ``layer=``); a layer other
than the identities above between the model input and the stack, or between stacked layers (pick
one with ``layer=``: it is computed from its own input); a GRU that reads a mask (``Masking``,
``Embedding(mask_zero=True)`` upstream: call fastgru with ``lengths=`` instead for trailing
padding) or an initial state from the graph (pass ``h0=``); a layer called with
``training=True`` (its dropout applies at inference); merge modes other than "concat";
activations other than tanh/sigmoid; a float16/bfloat16 dtype policy; a layer called more than
once; GRUs nested in other models or wrappers; HDF5 external links, external or virtual datasets.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError

IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
            "ActivityRegularization", "Identity"}  # identity at inference
_MAX_INFLATION = 16  # a zip member may inflate to 1 MiB + this many times the archive's size
_INPUT = "InputLayer"


class _UnknownLayer(ValueError):
    """layer= names no GRU layer of the model."""


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install 'fastgru[keras]'") from None
    return h5py


def _expect(value, kind, what: str):
    """`value` if it is a `kind` (a type or tuple of types), else FormatError naming `what`."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise FormatError(f"the Keras config's {what} must be a {names}, got "
                          f"{type(value).__name__} {value!r:.60}")
    return value


# ---- the graph -----------------------------------------------------------------------------------

@dataclass
class _Layer:
    """One top-level layer: its calls, each the tensors (layer, tensor index) it reads."""
    name: str
    kind: str
    config: dict
    calls: list  # per call: (inputs [(layer, tensor)], {kwarg: [(layer, tensor)]}, training)


def _ref(value, what: str):
    """(layer name, tensor index) of a Keras 3 keras_history or a Keras 2 [name, node, tensor]."""
    ok = (isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str)
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3]))
    if not ok:
        raise FormatError(f"the Keras config's {what} refers to a tensor as {value!r:.60}; "
                          f"expected [layer name, node index, tensor index]")
    return value[0], value[2]


def _tensors(value, what: str, keras2: bool) -> list:
    """Every tensor reference inside a call argument, in order."""
    if keras2 and isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return [_ref(value, what)]
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            config = _expect(value.get("config"), dict, what)
            return [_ref(config.get("keras_history"), what)]
        return [t for v in value.values() for t in _tensors(v, what, keras2)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, what, keras2)]
    return []


def _call(node, what: str):
    """(inputs, {kwarg: tensors}, training=True) of one inbound node, Keras 3 ({args, kwargs}) or Keras 2
    ([[name, node, tensor, kwargs], ...])."""
    if isinstance(node, dict):
        kwargs = _expect(node.get("kwargs", {}), dict, what + " kwargs")
        named = {key: _tensors(value, what, False) for key, value in kwargs.items()}
        return (_tensors(node.get("args", []), what, False), {k: v for k, v in named.items() if v},
                kwargs.get("training") is True)
    inputs, named, training = [], {}, False
    for entry in _expect(node, list, what):
        entry = _expect(entry, list, what)
        inputs.append(_ref(entry, what))
        if len(entry) > 3:
            kwargs = _expect(entry[3], dict, what + " kwargs")
            training = training or kwargs.get("training") is True
            for key, value in kwargs.items():
                found = _tensors(value, what, True)
                if found:
                    named[key] = named.get(key, []) + found
    return inputs, named, training


def _graph(config) -> dict[str, _Layer]:
    """{name: layer} of a Sequential or Functional model config, in the config's order."""
    config = _expect(config, dict, "model")
    inner = _expect(config.get("config", config), dict, "model's config")
    items = inner.get("layers")
    if not isinstance(items, list):
        raise FormatError(f"a Keras {config.get('class_name', 'model')!r:.40} config without a "
                          f"layer list; fastgru reads Sequential and Functional models")
    sequential = config.get("class_name") == "Sequential"
    layers: dict[str, _Layer] = {}
    before = None
    for k, item in enumerate(items):
        item = _expect(item, dict, f"layer {k}")
        kind = _expect(item.get("class_name"), str, f"layer {k}'s class_name")
        cfg = _expect(item.get("config"), dict, f"layer {k}'s config")
        name = _expect(cfg.get("name", item.get("name")), str, f"layer {k}'s name")
        if name in layers:
            raise FormatError(f"the Keras config has two layers named {name!r}")
        if "layer" in cfg:  # a wrapper (Bidirectional, TimeDistributed): what it wraps
            _expect(cfg["layer"], dict, f"layer {name!r}'s wrapped layer")
        if sequential:  # a chain: each layer reads the one before it
            if before is None and kind != _INPUT:
                layers["(input)"] = _Layer("(input)", _INPUT, {}, [])
                before = "(input)"
            calls = [] if kind == _INPUT else [([(before, 0)], {}, False)]
        else:
            nodes = _expect(item.get("inbound_nodes", []), list, f"layer {name!r}'s inbound_nodes")
            calls = [_call(node, f"layer {name!r}'s inbound node") for node in nodes]
        layers[name] = _Layer(name, kind, cfg, calls)
        before = name
    for layer in layers.values():
        for inputs, named, _ in layer.calls:
            for source, _ in inputs + [t for ts in named.values() for t in ts]:
                if source not in layers:
                    raise FormatError(f"Keras layer {layer.name!r} reads layer {source!r}, which "
                                      f"the model does not have")
    return layers


def _holds_gru(value) -> bool:
    if isinstance(value, dict):
        return value.get("class_name") in ("GRU", "GRUCell") or any(
            _holds_gru(v) for v in value.values())
    return isinstance(value, list) and any(_holds_gru(v) for v in value)


def _is_gru(layer: _Layer) -> bool:
    if layer.kind == "GRU":
        return True
    inner = layer.config.get("layer")
    return layer.kind == "Bidirectional" and isinstance(inner, dict) and \
        inner.get("class_name") == "GRU"


def _source(layers: dict[str, _Layer], ref):
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


def _mask_origin(layers: dict[str, _Layer], start: _Layer) -> _Layer | None:
    """The Masking or Embedding(mask_zero=True) layer upstream of `start`, or the layer that
    makes a mask `start` is given explicitly; None when `start` reads no mask."""
    for _, named, _ in start.calls:
        if named.get("mask"):
            found = _upstream_mask(layers, named["mask"][0][0])
            return found or layers[named["mask"][0][0]]
    return _upstream_mask(layers, start.name, include=False)


def _upstream_mask(layers, name: str, include: bool = True) -> _Layer | None:
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


# ---- one GRU layer's options ---------------------------------------------------------------------

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
        found[key] = _expect(config.get(key, default), kind, f"{name!r} {key}")
    if found["units"] < 1:
        raise FormatError(f"{label}: units={found['units']}")
    for key, computed in _COMPUTED.items():
        if found[key] != computed:
            raise FormatError(f"{label}: {key}={found[key]!r}; fastgru computes "
                              f"the default {key}={computed!r} only")
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = _expect(dtype.get("config", {}), dict, f"{name!r} dtype").get("name")
    if dtype not in (None, "float32", "float64"):
        raise FormatError(f"{label} computes in dtype {dtype!r:.40}; fastgru "
                          f"reads float32 and float64 layers: save the model in float32")
    return found


def _layer_options(layer: _Layer) -> dict:
    """The options of a GRU or Bidirectional(GRU) layer, with 'bidirectional'."""
    if layer.kind == "GRU":
        return _options(layer.name, layer.config) | {"bidirectional": False}
    merge = layer.config.get("merge_mode", "concat")
    if merge != "concat":
        raise FormatError(f"Keras layer {layer.name!r}: Bidirectional merge_mode {merge!r:.40}; "
                          f"fastgru reads 'concat' (both directions side by side)")
    inner = _expect(layer.config["layer"].get("config"), dict, f"{layer.name!r} layer config")
    forward = _options(layer.name, inner, "Bidirectional")
    if forward["go_backwards"]:
        raise FormatError(f"Keras layer {layer.name!r}: Bidirectional over a go_backwards GRU "
                          f"puts the reverse direction first; fastgru reads a forward GRU there")
    backward_layer = layer.config.get("backward_layer")
    if backward_layer is not None:
        backward_layer = _expect(backward_layer, dict, f"{layer.name!r} backward_layer")
        if backward_layer.get("class_name") != "GRU":
            raise FormatError(f"Keras layer {layer.name!r}: backward layer "
                              f"{backward_layer.get('class_name')!r:.40} is not a GRU")
        config = _expect(backward_layer.get("config"), dict, f"{layer.name!r} backward config")
        backward = _options(layer.name, config, "Bidirectional", ", its backward layer")
        differ = sorted(k for k in forward if k != "go_backwards" and forward[k] != backward[k])
        if differ or not backward["go_backwards"]:
            raise FormatError(f"Keras layer {layer.name!r}: its backward layer differs from its "
                              f"forward layer in {differ or ['go_backwards']}; fastgru runs both "
                              f"directions with one set of options")
    return forward | {"bidirectional": True}


# ---- which layers, in which order ----------------------------------------------------------------

def _check_reads(layers: dict[str, _Layer], layer: _Layer, alone: bool) -> None:
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


def _plan(layers: dict[str, _Layer], layer: str | None) -> list[_Layer]:
    """The GRU layers to read, bottom to top."""
    grus = [g for g in layers.values() if _is_gru(g)]
    names = [g.name for g in grus]
    if not grus:
        kinds = sorted({g.kind for g in layers.values()})
        raise FormatError(f"the Keras model has no GRU layer (its layers: {kinds})")
    if layer is not None:
        if layer not in names:
            raise _UnknownLayer(f"no GRU layer named {layer!r}; the GRU layers are {names}")
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
        if source.kind != _INPUT and not (_is_gru(source) and tensor == 0):
            raise FormatError(f"Keras GRU {gru.name!r} reads the output of {source.name!r} "
                              f"({source.kind}), which fastgru does not compute; load the GRU "
                              f"alone with layer={gru.name!r} and feed it that layer's input")
        key = (source.name, tensor)
        if key in readers:
            raise FormatError(f"Keras GRU layers {readers[key]!r} and {gru.name!r} read the same "
                              f"input side by side, not as a stack; pick one with layer=")
        readers[key] = gru.name
        below[gru.name] = None if source.kind == _INPUT else source.name
    bottoms = [name for name in names if below[name] is None]
    stack = bottoms[:1]
    above = {low: high for high, low in below.items() if low is not None}
    while stack and stack[-1] in above:
        stack.append(above[stack[-1]])
    if len(bottoms) != 1 or len(stack) != len(grus):
        raise FormatError(f"the Keras model's GRU layers {names} do not form one stack; pick one "
                          f"with layer=")
    return [layers[name] for name in stack]


# ---- weights -------------------------------------------------------------------------------------

def _child(group, key: str, where: str):
    """group[key] through hard links only (an external or soft link could reach another file)."""
    h5py = _h5py()
    link = group.get(key, getlink=True)
    if link is None:
        raise FormatError(f"{where} has no {group.name}/{key}")
    if not isinstance(link, h5py.HardLink):
        raise FormatError(f"{where}: {group.name}/{key} is a {type(link).__name__}; fastgru "
                          f"reads only what the file itself holds")
    return group[key]


def _has(group, key: str) -> bool:
    """Whether group holds a link named key (not following it, unlike ``key in group``)."""
    return group.get(key, getlink=True) is not None


def _path(group, path: str, where: str):
    for key in path.split("/"):
        group = _child(group, key, where)
    return group


def _array(dataset, limit: int, where: str) -> np.ndarray:
    """A float dataset's values, refused when it declares more bytes than the file holds."""
    h5py = _h5py()
    if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f":
        raise FormatError(f"{where}: {dataset.name} is not a float dataset")
    if dataset.external or dataset.is_virtual:
        raise FormatError(f"{where}: {dataset.name} keeps its data in other files; fastgru "
                          f"reads only what the file itself holds")
    size = int(np.prod(dataset.shape, dtype=np.float64) * dataset.dtype.itemsize)
    if size > limit:
        raise FormatError(f"{where}: {dataset.name} declares {size} bytes in a file of {limit}")
    return np.asarray(dataset[()], np.float64)


def _weights_keras3(f, names: list[str], limit: int, where: str) -> dict[str, list]:
    """{layer name: [arrays]} of the named layers from a .keras archive's model.weights.h5."""
    found: dict[str, list] = {}
    layers = _child(f, "layers", where)
    for key in layers:
        group = _child(layers, key, where)
        if not isinstance(group, _h5py().Group) or not _has(group, "vars"):
            continue
        name = _child(group, "vars", where).attrs.get("name")
        name = name.decode() if isinstance(name, bytes) else name
        if name not in names:
            continue
        parts = [p for p in ("forward_layer", "backward_layer") if _has(group, p)] or [""]
        arrays = []
        for part in parts:
            variables = _path(group, f"{part}/cell/vars".lstrip("/"), where)
            arrays += [_array(_child(variables, str(i), where), limit, where)
                       for i in range(len(variables))]
        found[name] = arrays
    return found


def _weights_h5(f, names: list[str], limit: int, where: str) -> dict[str, list]:
    """{layer name: [arrays in weight_names order]} of the named layers of a legacy HDF5 file."""
    root = _child(f, "model_weights", where) if _has(f, "model_weights") else f
    found = {}
    for name in names:
        if not _has(root, name):
            continue
        group = _child(root, name, where)
        listed = [n.decode() if isinstance(n, bytes) else str(n)
                  for n in group.attrs.get("weight_names", [])]
        found[name] = [_array(_path(group, n, where), limit, where) for n in listed]
    return found


def _read_member(archive: zipfile.ZipFile, member: str, size: int, where: str) -> bytes:
    """One archive member, refused when it would inflate past a bound set by `size`."""
    limit = (1 << 20) + _MAX_INFLATION * size
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise FormatError(f"{where} is not a Keras archive: it has no {member}") from None
    if info.file_size > limit:
        raise FormatError(f"{where}: {member} would inflate to {info.file_size} bytes from an "
                          f"archive of {size}; fastgru reads at most {limit}")
    with archive.open(info) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{where}: {member} inflates past {limit} bytes")
    return data


def _read_file(path: str, layer: str | None):
    """(the chosen GRU layers bottom to top, {layer name: [arrays]})."""
    where, size = repr(path), os.path.getsize(path)
    h5py = _h5py()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                config = json.loads(_read_member(archive, "config.json", size, where))
            except ValueError as error:
                if isinstance(error, FormatError):
                    raise
                raise FormatError(f"{where}: config.json is not JSON: {error}") from None
            plan = _plan(_graph(config), layer)
            data = _read_member(archive, "model.weights.h5", size, where)
        with h5py.File(io.BytesIO(data), "r") as f:
            return plan, _weights_keras3(f, [g.name for g in plan], len(data), where)
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise FormatError(f"{where} is not an HDF5 file: {error}") from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise FormatError(f"{where} holds weights without a model config (saved with "
                              f"save_weights?); fastgru needs the model's config: save the "
                              f"whole model (model.save)")
        if not isinstance(raw, (str, bytes)):
            raise FormatError(f"{where}: model_config is {type(raw).__name__}, not JSON text")
        plan = _plan(_graph(json.loads(raw)), layer)
        return plan, _weights_h5(f, [g.name for g in plan], size, where)


def _read_model(model, layer: str | None):
    """(the chosen GRU layers, {layer name: [arrays]}) of an in-memory Keras model."""
    plan = _plan(_graph({"class_name": type(model).__name__, "config": model.get_config()}),
                 layer)
    return plan, {g.name: [np.asarray(w, np.float64) for w in model.get_layer(g.name).get_weights()]
                  for g in plan}


def _layer_weights(name: str, options: dict, arrays: list) -> LayerWeights:
    H, use_bias, reset_after = options["units"], options["use_bias"], options["reset_after"]
    per_direction = 3 if use_bias else 2
    dirs = 2 if options["bidirectional"] else 1
    if len(arrays) != per_direction * dirs:
        raise FormatError(f"Keras GRU {name!r}: expected {per_direction * dirs} weight arrays "
                          f"(kernel, recurrent_kernel{', bias' if use_bias else ''} per "
                          f"direction), got {len(arrays)}")
    ws, rs, bs = [], [], []
    for d in range(dirs):
        kernel, recurrent = arrays[d * per_direction:d * per_direction + 2]
        if kernel.ndim != 2 or kernel.shape[1] != 3 * H or recurrent.shape != (H, 3 * H):
            raise FormatError(f"Keras GRU {name!r}: kernel must be (input, {3 * H}) and "
                              f"recurrent_kernel ({H}, {3 * H}), got {kernel.shape} and "
                              f"{recurrent.shape}")
        bias = np.zeros(6 * H)
        if use_bias:
            b = arrays[d * per_direction + 2]
            expected = (2, 3 * H) if reset_after else (3 * H,)
            if b.shape != expected:
                raise FormatError(f"Keras GRU {name!r}: bias must be {expected} with "
                                  f"reset_after={reset_after}, got {b.shape}")
            bias[:b.size] = b.reshape(-1)
        ws.append(kernel.T)
        rs.append(recurrent.T)
        bs.append(bias)
    return LayerWeights(w=np.stack(ws), r=np.stack(rs), b=np.stack(bs))


def spec_from_keras(src, layer: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of the GRU layers of a Keras file (.keras, .h5) or model object."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no Keras file at {path!r}")
        try:
            plan, weights = _read_file(path, layer)
        except (FormatError, ImportError, _UnknownLayer):
            raise
        except Exception as error:  # zipfile, h5py: a damaged or foreign file
            raise FormatError(f"{path!r} is not a readable Keras file: "
                              f"{type(error).__name__}: {error}") from None
    elif hasattr(src, "get_config") and hasattr(src, "layers"):
        plan, weights = _read_model(src, layer)
    else:
        raise TypeError(f"from_keras takes a path to a .keras or .h5 file or a Keras model, got "
                        f"{type(src).__name__}")
    names = [g.name for g in plan]
    options = None
    stacked = []
    for gru in plan:
        these = _layer_options(gru)
        if these["go_backwards"] and len(plan) > 1:
            raise FormatError(f"Keras GRU {gru.name!r}: go_backwards inside a stack of "
                              f"{len(plan)} GRU layers; pick one with layer=")
        if options is not None:
            if not options["return_sequences"]:
                raise FormatError(f"Keras GRU layers {names} do not form one stack: the layer "
                                  f"below {gru.name!r} returns its last step only; pick one with "
                                  f"layer=")
            differ = {k: these[k] for k in these if k != "return_sequences"
                      and these[k] != options[k]}
            if differ:
                raise FormatError(f"the Keras model's GRU layers {names} do not form one stack; "
                                  f"pick one with layer= ({gru.name!r} has {differ}, the layer "
                                  f"below {({k: options[k] for k in differ})})")
        options = these
        if gru.name not in weights:
            raise FormatError(f"the Keras file has no weights for GRU layer {gru.name!r}")
        stacked.append(_layer_weights(gru.name, these, weights[gru.name]))
    direction = "bidirectional" if options["bidirectional"] else (
        "reverse" if options["go_backwards"] else "forward")
    try:
        spec = GRUSpec(tuple(stacked), direction=direction,
                       linear_before_reset=options["reset_after"])
    except ValueError as error:
        raise FormatError(f"the Keras GRU layers {names} are inconsistent: {error}") from None
    return spec, not options["time_major"]
