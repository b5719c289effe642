"""A Keras model config read as a graph, checked as it is read: each layer's class, config
and calls, each call the tensors it reads (``inbound_nodes``, Keras 3 or Keras 2 form; a
Sequential model is a chain)."""

from __future__ import annotations

from dataclasses import dataclass

from fastgru.errors import FormatError

INPUT = "InputLayer"


def expect(value, kind, what: str):
    """`value` if it is a `kind` (a type or tuple of types), else FormatError naming `what`."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise FormatError(f"the Keras config's {what} must be a {names}, got "
                          f"{type(value).__name__} {value!r:.60}")
    return value


@dataclass
class Layer:
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
            config = expect(value.get("config"), dict, what)
            return [_ref(config.get("keras_history"), what)]
        return [t for v in value.values() for t in _tensors(v, what, keras2)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, what, keras2)]
    return []


def _call(node, what: str):
    """(inputs, {kwarg: tensors}, training=True) of one inbound node, Keras 3 ({args, kwargs})
    or Keras 2 ([[name, node, tensor, kwargs], ...])."""
    if isinstance(node, dict):
        kwargs = expect(node.get("kwargs", {}), dict, what + " kwargs")
        named = {key: _tensors(value, what, False) for key, value in kwargs.items()}
        return (_tensors(node.get("args", []), what, False), {k: v for k, v in named.items() if v},
                kwargs.get("training") is True)
    inputs, named, training = [], {}, False
    for entry in expect(node, list, what):
        entry = expect(entry, list, what)
        inputs.append(_ref(entry, what))
        if len(entry) > 3:
            kwargs = expect(entry[3], dict, what + " kwargs")
            training = training or kwargs.get("training") is True
            for key, value in kwargs.items():
                found = _tensors(value, what, True)
                if found:
                    named[key] = named.get(key, []) + found
    return inputs, named, training


def config_graph(config) -> dict[str, Layer]:
    """{name: layer} of a Sequential or Functional model config, in the config's order."""
    config = expect(config, dict, "model")
    inner = expect(config.get("config", config), dict, "model's config")
    items = inner.get("layers")
    if not isinstance(items, list):
        raise FormatError(f"a Keras {config.get('class_name', 'model')!r:.40} config without a "
                          f"layer list; fastgru reads Sequential and Functional models")
    sequential = config.get("class_name") == "Sequential"
    layers: dict[str, Layer] = {}
    before = None
    for k, item in enumerate(items):
        item = expect(item, dict, f"layer {k}")
        kind = expect(item.get("class_name"), str, f"layer {k}'s class_name")
        cfg = expect(item.get("config"), dict, f"layer {k}'s config")
        name = expect(cfg.get("name", item.get("name")), str, f"layer {k}'s name")
        if name in layers:
            raise FormatError(f"the Keras config has two layers named {name!r}")
        if "layer" in cfg:  # a wrapper (Bidirectional, TimeDistributed): what it wraps
            expect(cfg["layer"], dict, f"layer {name!r}'s wrapped layer")
        if sequential:  # a chain: each layer reads the one before it
            if before is None and kind != INPUT:
                layers["(input)"] = Layer("(input)", INPUT, {}, [])
                before = "(input)"
            calls = [] if kind == INPUT else [([(before, 0)], {}, False)]
        else:
            nodes = expect(item.get("inbound_nodes", []), list, f"layer {name!r}'s inbound_nodes")
            calls = [_call(node, f"layer {name!r}'s inbound node") for node in nodes]
        layers[name] = Layer(name, kind, cfg, calls)
        before = name
    for layer in layers.values():
        for inputs, named, _ in layer.calls:
            for source, _ in inputs + [t for ts in named.values() for t in ts]:
                if source not in layers:
                    raise FormatError(f"Keras layer {layer.name!r} reads layer {source!r}, which "
                                      f"the model does not have")
    return layers
