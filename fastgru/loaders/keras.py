"""Keras GRU layers to the canonical layout, read with h5py, without TensorFlow or Keras.

Keras stores a GRU cell as kernel (D, 3H), recurrent_kernel (H, 3H) and bias, gates in the
canonical order (z, r, h): W = kernelᵀ, R = recurrent_kernelᵀ. With reset_after=True (Keras'
default, PyTorch's variant: linear_before_reset=1) bias is (2, 3H), input and recurrent biases;
with reset_after=False (linear_before_reset=0) it is (3H,), the input bias only.

Files: Keras 3 ``.keras`` (a zip of config.json and model.weights.h5, whose groups carry each
layer's name in the attribute ``name`` of their ``vars``), and Keras 2 / tf.keras / Keras 3
legacy ``.h5`` (the config in the attribute ``model_config``; each layer's weights listed in order
by the attribute ``weight_names`` of ``model_weights/<layer>``). A Keras model object is read
through its own get_config() and get_weights().

A model's GRU layers (GRU, or Bidirectional(GRU) with merge_mode "concat") become one fastgru
model: one layer alone, or several stacked one after the other (return_sequences=True between
them, nothing but Dropout in between, the same kind, units and options, as fastgru stacks layers
of one hidden size). `layer=` picks one by name.
Keras models are batch-major: the model is batch_first (unless a Keras 2 layer says time_major).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError

_BETWEEN = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
            "ActivityRegularization"}  # identity at inference: may stand between stacked GRUs


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install 'fastgru[keras]'") from None
    return h5py


def _layers(config: dict) -> list[dict]:
    """The top-level layer configs of a Sequential or Functional model config."""
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        raise FormatError(f"a Keras {config.get('class_name', 'model')} config without a layer "
                          f"list; fastgru reads Sequential and Functional models")
    return layers


def _gru_config(layer: dict) -> tuple[dict, bool] | None:
    """(the GRU's config, bidirectional) for a GRU or Bidirectional(GRU) layer, else None."""
    kind, config = layer.get("class_name"), layer.get("config", {})
    if kind == "GRU":
        return config, False
    if kind == "Bidirectional" and config.get("layer", {}).get("class_name") == "GRU":
        merge = config.get("merge_mode", "concat")
        if merge != "concat":
            raise FormatError(f"Keras layer {config.get('name')!r}: Bidirectional merge_mode "
                              f"{merge!r}; fastgru reads 'concat' (both directions side by side)")
        return config["layer"]["config"], True
    return None


def _check_options(name: str, config: dict) -> None:
    for key, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        value = config.get(key, expected)
        if value != expected:
            raise FormatError(f"Keras GRU {name!r}: {key}={value!r}; fastgru computes the "
                              f"default {key}={expected!r} only")


def _weights_keras3(archive: zipfile.ZipFile, where: str) -> dict[str, list]:
    """{layer name: [arrays]} from a .keras archive's model.weights.h5."""
    h5py = _h5py()
    import io

    try:
        data = archive.read("model.weights.h5")
    except KeyError:
        raise FormatError(f"{where} has no model.weights.h5") from None
    found: dict[str, list] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        for group in f.get("layers", {}).values():
            name = group["vars"].attrs.get("name") if "vars" in group else None
            if name is None:
                continue
            parts = [group[p]["cell"]["vars"] for p in ("forward_layer", "backward_layer")
                     if p in group] or ([group["cell"]["vars"]] if "cell" in group else [])
            found[str(name)] = [np.asarray(v[str(i)]) for v in parts for i in range(len(v))]
    return found


def _weights_h5(f, where: str) -> dict[str, list]:
    """{layer name: [arrays in weight_names order]} of a legacy HDF5 file."""
    root = f["model_weights"] if "model_weights" in f else f
    found = {}
    for name in root.attrs.get("layer_names", []):
        name = name.decode() if isinstance(name, bytes) else str(name)
        group = root[name]
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in group.attrs.get("weight_names", [])]
        try:
            found[name] = [np.asarray(group[n]) for n in names]
        except KeyError as missing:
            raise FormatError(f"{where}: layer {name!r} lists weight {missing} it lacks") from None
    return found


def _read_file(path: str):
    """(model config, {layer name: [arrays]})."""
    where = repr(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                config = json.loads(archive.read("config.json"))
            except (KeyError, ValueError) as error:
                raise FormatError(f"{where} is not a Keras archive: {error}") from None
            return config, _weights_keras3(archive, where)
    h5py = _h5py()
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
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return config, _weights_h5(f, where)


def _read_model(model):
    """(config, {layer name: [arrays]}) of an in-memory Keras model."""
    config = {"class_name": type(model).__name__, "config": model.get_config()}
    return config, {layer.name: [np.asarray(w) for w in layer.get_weights()]
                    for layer in model.layers}


def _layer_weights(name: str, config: dict, bidirectional: bool, arrays: list) -> LayerWeights:
    H = int(config["units"])
    use_bias = config.get("use_bias", True)
    reset_after = config.get("reset_after", True)
    per_direction = 3 if use_bias else 2
    dirs = 2 if bidirectional else 1
    if len(arrays) != per_direction * dirs:
        raise FormatError(f"Keras GRU {name!r}: expected {per_direction * dirs} weight arrays "
                          f"(kernel, recurrent_kernel{', bias' if use_bias else ''} per "
                          f"direction), got {len(arrays)}")
    ws, rs, bs = [], [], []
    for d in range(dirs):
        kernel, recurrent = (np.asarray(a, np.float64)
                             for a in arrays[d * per_direction:d * per_direction + 2])
        if kernel.ndim != 2 or kernel.shape[1] != 3 * H or recurrent.shape != (H, 3 * H):
            raise FormatError(f"Keras GRU {name!r}: kernel must be (input, {3 * H}) and "
                              f"recurrent_kernel ({H}, {3 * H}), got {kernel.shape} and "
                              f"{recurrent.shape}")
        bias = np.zeros(6 * H)
        if use_bias:
            b = np.asarray(arrays[d * per_direction + 2], np.float64)
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
            config, weights = _read_file(path)
        except (FormatError, ImportError):
            raise
        except Exception as error:  # zipfile, json, h5py: a damaged or foreign file
            raise FormatError(f"{path!r} is not a readable Keras file: "
                              f"{type(error).__name__}: {error}") from None
    elif hasattr(src, "get_config") and hasattr(src, "layers"):
        config, weights = _read_model(src)
    else:
        raise TypeError(f"from_keras takes a path to a .keras or .h5 file or a Keras model, got "
                        f"{type(src).__name__}")
    layers = _layers(config)
    grus = [(k, cfg.get("config", {}).get("name"), _gru_config(cfg))
            for k, cfg in enumerate(layers)]
    grus = [(k, name, found) for k, name, found in grus if found is not None]
    names = [name for _, name, _ in grus]
    if not grus:
        kinds = sorted({cfg.get("class_name") for cfg in layers})
        raise FormatError(f"the Keras model has no GRU layer (its layers: {kinds})")
    if layer is not None:
        grus = [g for g in grus if g[1] == layer]
        if not grus:
            raise ValueError(f"no GRU layer named {layer!r}; the GRU layers are {names}")
    stack_error = (f"the Keras model's GRU layers {names} do not form one stack; pick one "
                   f"with layer=")
    for (k0, _, (cfg0, bi0)), (k1, _, (_, bi1)) in zip(grus, grus[1:], strict=False):
        between = {layers[k].get("class_name") for k in range(k0 + 1, k1)}
        if between - _BETWEEN or bi0 != bi1 or not cfg0.get("return_sequences"):
            raise FormatError(stack_error)
    options = None
    stacked = []
    for _, name, (cfg, bidirectional) in grus:
        _check_options(name, cfg)
        if cfg.get("go_backwards") and (bidirectional or len(grus) > 1):
            raise FormatError(f"Keras GRU {name!r}: go_backwards inside a stack of "
                              f"{len(grus)} GRU layers; pick one with layer=")
        these = {"direction": "bidirectional" if bidirectional else
                 ("reverse" if cfg.get("go_backwards") else "forward"),
                 "linear_before_reset": bool(cfg.get("reset_after", True)),
                 "time_major": bool(cfg.get("time_major", False)),
                 "units": int(cfg.get("units", 0)), "use_bias": bool(cfg.get("use_bias", True))}
        if options is not None and these != options:
            raise FormatError(stack_error + f" ({name!r} has {these}, the layer below {options})")
        options = these
        if name not in weights:
            raise FormatError(f"the Keras file has no weights for GRU layer {name!r}")
        stacked.append(_layer_weights(name, cfg, bidirectional, weights[name]))
    time_major = options.pop("time_major")
    del options["units"], options["use_bias"]  # compared between layers; the weights hold them
    try:
        spec = GRUSpec(tuple(stacked), **options)
    except ValueError as error:
        raise FormatError(f"the Keras GRU layers {names} are inconsistent: {error}") from None
    return spec, not time_major
