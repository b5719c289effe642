"""Reading a Keras file or model object: the config and the chosen GRU layers' weights
from a .keras zip or a legacy .h5, through hard links only, no member or dataset read whose
declared size exceeds what the file can hold."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from fastgru.errors import FormatError
from fastgru.loaders.keras_config import config_graph
from fastgru.loaders.keras_dataflow import plan_layers

_MAX_INFLATION = 16  # a zip member may inflate to 1 MiB + this many times the archive's size


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install 'fastgru[keras]'") from None
    return h5py


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


def read_file(path: str, layer: str | None):
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
            plan = plan_layers(config_graph(config), layer)
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
        plan = plan_layers(config_graph(json.loads(raw)), layer)
        return plan, _weights_h5(f, [g.name for g in plan], size, where)


def read_model(model, layer: str | None):
    """(the chosen GRU layers, {layer name: [arrays]}) of an in-memory Keras model."""
    config = {"class_name": type(model).__name__, "config": model.get_config()}
    plan = plan_layers(config_graph(config), layer)
    return plan, {g.name: [np.asarray(w, np.float64) for w in model.get_layer(g.name).get_weights()]
                  for g in plan}
