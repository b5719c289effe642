"""Differential fuzzing of fastgru's Keras reader, with Keras itself (KERAS_BACKEND=torch) as the
oracle.

``run_case(seed)`` builds one random Keras model (``generate``), saves it as .keras (and, for some
seeds, .h5, half of those with the config rewritten as Keras 2 wrote it) and checks each entry
point:

- ``from_keras(path)`` and ``load(path)``: either FormatError, or the generator built one stack of
  GRU layers reading the model's input (through Dropout only), the model has that many layers,
  and, fed the model's input, it gives the top GRU layer's outputs as Keras computes them inside
  the whole model (the sequence or last step, and the states with return_state).
- ``from_keras(path, layer=name)`` for every GRU and Bidirectional(GRU) layer: either
  FormatError, or, fed that layer's input as Keras computes it, it gives that layer's outputs as
  Keras computes them inside the whole model (masks included).

Each check runs at two sizes, T=1 and T in 2..6, B in 1..3, with trailing padding (zeros, id 0)
in some rows so that a mask changes the result. Tolerance: float32, |diff| <= 1e-5 +
1e-4 * |ref|. ``run_case`` returns {entry point: "refused" | "matched"}, or raises
``FuzzFailure`` (an AssertionError) with the seed and the model's config on a mismatch, another
exception, or a case running past ``CASE_SECONDS``.

Generated: Sequential and Functional models; a chain of 1-3 recurrent layers (Dropout between
some, and some of those called with training=True), two side by side on one input
(concatenated), or an encoder whose state starts a decoder; GRU and Bidirectional(GRU) with
every merge mode and sometimes a backward_layer of its own (equal or differing options);
reset_after, use_bias, activation, recurrent_activation, go_backwards,
return_sequences, return_state drawn at random; in front nothing, Masking, Embedding (with and
without mask_zero) or Dense; a Dense head or none.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from dataclasses import dataclass

import numpy as np

from fastgru.testing.limits import CaseTimeout, time_limit

os.environ.setdefault("KERAS_BACKEND", "torch")  # read by keras at its import

ATOL, RTOL = 1e-5, 1e-4  # float32 (fastgru.testing.asserts.TOLERANCE)
CASE_SECONDS = 60.0  # a case takes about a second; past this it is a hang
MERGE_MODES = ("concat", "concat", "sum", "mul", "ave", None)


class FuzzFailure(AssertionError):
    """A case whose entry point crashed, hung or disagreed with Keras."""


@dataclass
class Case:
    """One generated model and what the generator knows of it.

    recurrent : {layer name: (bidirectional, return_sequences, return_state, go_backwards)}
    stack : the recurrent layers bottom to top when they are one chain reading the model input
        through Dropout only, else None
    """
    seed: int
    model: object
    ids: bool  # the input is token ids (Embedding in front)
    features: int
    recurrent: dict
    stack: list | None


def _gru_options(rng, same: dict | None = None) -> dict:
    if same is not None and rng.random() < 0.7:
        return dict(same)
    return {"units": int(same["units"] if same and rng.random() < 0.8 else rng.integers(1, 9)),
            "reset_after": bool(rng.random() < 0.6), "use_bias": bool(rng.random() < 0.8),
            "activation": "tanh" if rng.random() < 0.9 else "relu",
            "recurrent_activation": "sigmoid" if rng.random() < 0.9 else "hard_sigmoid"}


def _recurrent(keras, rng, name: str, options: dict, sequences: bool, functional: bool):
    """(layer, (bidirectional, return_sequences, return_state, go_backwards)); None for the
    last three when Keras' outputs are not those of a fastgru model (merge modes but concat)."""
    state = bool(functional and rng.random() < 0.3)
    flags = dict(return_sequences=sequences, return_state=state)
    if rng.random() < 0.5:
        backwards = bool(rng.random() < 0.15)
        return (keras.layers.GRU(**options, **flags, go_backwards=backwards, name=name),
                (False, sequences, state, backwards))
    merge = MERGE_MODES[rng.integers(len(MERGE_MODES))] if functional else "concat"
    flipped = bool(rng.random() < 0.05)  # forward layer going backwards: swaps the halves
    forward = keras.layers.GRU(**options, **flags, go_backwards=flipped)
    backward = None
    if flipped or rng.random() < 0.4:  # Keras' own backward layer always goes backwards
        changed = dict(options)
        if rng.random() < 0.4:
            key = ("activation", "reset_after", "use_bias")[rng.integers(3)]
            changed[key] = "relu" if key == "activation" else not changed[key]
        backward = keras.layers.GRU(**changed, **flags, go_backwards=not flipped)
    layer = keras.layers.Bidirectional(forward, backward_layer=backward, merge_mode=merge,
                                       name=name)
    return layer, (True, sequences, state, False) if merge == "concat" else (True, None, None, None)


def generate(seed: int) -> Case:
    """One random Keras model from the seed, with weights that look trained."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    functional = bool(rng.random() < 0.6)
    shape = ("chain", "chain", "side by side", "encoder-decoder")[rng.integers(4)]
    shape = shape if functional else "chain"
    front = ("none", "none", "none", "Masking", "Embedding", "Embedding(mask_zero)",
             "Dense")[rng.integers(7)]
    D = int(rng.integers(1, 9))
    ids = front.startswith("Embedding")
    x = keras.Input((None,) if ids else (None, D), dtype="int32" if ids else "float32", name="x")
    items = {"none": [], "Masking": [keras.layers.Masking(name="masking")],
             "Embedding": [keras.layers.Embedding(10, D, name="embedding")],
             "Embedding(mask_zero)": [keras.layers.Embedding(10, D, mask_zero=True,
                                                             name="embedding")],
             "Dense": [keras.layers.Dense(D, name="front")]}[front]
    recurrent, order, training = {}, [], {}
    options = _gru_options(rng)
    if shape == "chain":
        count = int(rng.integers(1, 4))
        for k in range(count):
            if k and rng.random() < 0.5:
                items.append(keras.layers.Dropout(0.3, name=f"drop{k}"))
                if functional and rng.random() < 0.2:  # drops at inference too
                    training[f"drop{k}"] = True
            top = k == count - 1
            layer, recurrent[f"r{k}"] = _recurrent(keras, rng, f"r{k}", _gru_options(
                rng, options), bool(not top or rng.random() < 0.6), functional)
            items.append(layer)
            order.append(f"r{k}")
    h = x
    for layer in items if functional else []:  # a Sequential model calls them itself
        h = layer(h, training=True) if training.get(layer.name) else layer(h)
        h = h[0] if isinstance(h, (list, tuple)) else h
    if shape == "side by side":
        sequences = bool(rng.random() < 0.6)
        outs = []
        for k in range(2):
            layer, recurrent[f"r{k}"] = _recurrent(keras, rng, f"r{k}", _gru_options(
                rng, options), sequences, True)
            out = layer(h)
            outs.append(out[0] if isinstance(out, (list, tuple)) else out)
        h = keras.layers.Concatenate(name="cat")(outs)
    elif shape == "encoder-decoder":
        _, state = keras.layers.GRU(**options, return_state=True, name="r0")(h)
        recurrent["r0"] = (False, False, True, False)
        h = keras.layers.GRU(**options, return_sequences=True, name="r1")(h, initial_state=state)
        recurrent["r1"] = (False, True, False, False)
    head = [keras.layers.Dense(3, name="head")] if rng.random() < 0.5 else []
    if functional:
        for layer in head:
            h = layer(h)
        model = keras.Model(x, h)
    else:
        model = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype), *items, *head])
    for layer in model.layers:
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                           if w.dtype.kind == "f" else w for w in layer.get_weights()])
    plain = shape == "chain" and front in ("none", "Masking") and not training
    stack = order if plain else None
    return Case(seed, model, ids, D, recurrent, stack)


def keras2_form(path) -> None:
    """Rewrite a Keras 3 .h5 file's Functional config as Keras 2 wrote it: inbound_nodes as
    [[[layer, node, tensor, kwargs], ...]] per call, tensors in kwargs as [layer, node, tensor]
    (Keras 2 records no mask: it follows from the layers upstream)."""
    import h5py

    def ref(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return list(value["config"]["keras_history"])
        if isinstance(value, (list, tuple)):
            found = [ref(v) for v in value]
            return [f for f in found if f is not None] or None
        return None

    def node(call):
        inputs = [r for r in (ref(a) for a in call["args"]) if r is not None]
        inputs = [t for r in inputs for t in (r if isinstance(r[0], list) else [r])]
        kwargs = {k: ref(v) if ref(v) is not None else v for k, v in call["kwargs"].items()
                  if k != "mask"}
        return [[*t, kwargs if k == 0 else {}] for k, t in enumerate(inputs)]

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        if config["class_name"] != "Sequential":
            for layer in config["config"]["layers"]:
                layer["inbound_nodes"] = [node(call) for call in layer["inbound_nodes"]]
            f.attrs["model_config"] = json.dumps(config)


# ---- the check -----------------------------------------------------------------------------------

def _flat(value) -> list:
    """Keras outputs (a tensor, or a list/tuple of them) as float64 arrays."""
    import keras

    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat(v)]
    return [np.asarray(keras.ops.convert_to_numpy(value), np.float64)]


def _ours(model, x, info) -> list | None:
    """What a fastgru model gives in the place of a Keras layer's outputs, None where Keras'
    outputs are not a fastgru model's (merge modes other than concat)."""
    bidirectional, sequences, state, backwards = info
    if sequences is None:
        return None
    y, h_n = model(x)
    top = list(h_n[len(h_n) - model.spec.num_directions:])
    out = (y[:, ::-1] if backwards else y) if sequences else np.concatenate(top, -1)
    return [np.asarray(a, np.float64) for a in ([out, *top] if state else [out])]


def _compare(ours: list | None, expected: list) -> str | None:
    """None when they agree within the float32 tolerance, else what differs."""
    if ours is None:
        return "accepted a layer whose outputs no fastgru model gives"
    if len(ours) != len(expected):
        return f"{len(ours)} outputs where Keras gives {len(expected)}"
    for k, (a, e) in enumerate(zip(ours, expected, strict=True)):
        if a.shape != e.shape:
            return f"output {k}: shape {a.shape} where Keras gives {e.shape}"
        err = np.abs(a - e)
        if not np.all(err <= ATOL + RTOL * np.abs(e)):
            return f"output {k}: max |diff| {err.max():.3g} beyond {ATOL} + {RTOL}*|ref|"
    return None


def _inputs(case: Case, rng) -> list:
    """Model inputs at two sizes, T=1 among them, with trailing padding in some rows."""
    xs = []
    for T in (1, int(rng.integers(2, 7))):
        B = int(rng.integers(1, 4))
        x = (rng.integers(1, 10, (B, T)).astype(np.int32) if case.ids else
             rng.standard_normal((B, T, case.features)).astype(np.float32))
        for b in range(B):
            if rng.random() < 0.5:
                x[b, int(rng.integers(0, T + 1)):] = 0
        xs.append(x)
    return xs


def _probe(case: Case, name: str, with_input: bool):
    """A Keras model from the model's input to [the layer's input,] the layer's outputs."""
    import keras

    layer = case.model.get_layer(name)
    outputs = list(layer.output) if isinstance(layer.output, (list, tuple)) else [layer.output]
    if with_input:
        source = layer.input
        outputs = [source[0] if isinstance(source, (list, tuple)) else source, *outputs]
    return keras.Model(case.model.inputs[0], outputs)


def _check_entry(case: Case, load, layer: str | None, xs: list) -> str:
    """'refused' or 'matched'; FuzzFailure's message text (raised as AssertionError) else."""
    from fastgru.errors import FormatError

    try:
        ours = load()
    except FormatError as error:
        if "is not a readable Keras file" in str(error):  # Keras wrote it: a crash inside
            raise AssertionError(f"refused a file Keras wrote: {error}") from None
        return "refused"
    if layer is None:
        if case.stack is None:
            raise AssertionError("accepted a model whose GRU layers are not one stack reading "
                                 "the model input")
        if ours.num_layers != len(case.stack):
            raise AssertionError(f"{ours.num_layers} layers for the stack {case.stack}")
    top = layer or case.stack[-1]
    probe = _probe(case, top, with_input=layer is not None)
    for x in xs:
        expected = _flat(probe(x))
        feed = expected.pop(0).astype(np.float32) if layer is not None else x
        problem = _compare(_ours(ours, feed, case.recurrent[top]), expected)
        if problem:
            raise AssertionError(f"{problem} (x shape {x.shape})")
    return "matched"


def check(case: Case, seconds: float = CASE_SECONDS) -> dict[str, str]:
    """{entry point: 'refused' | 'matched'} for every entry point; FuzzFailure otherwise."""
    import fastgru

    results, failures = {}, []
    xs = _inputs(case, np.random.default_rng(case.seed + 1))
    with tempfile.TemporaryDirectory() as folder:
        try:
            with time_limit(seconds):
                for suffix in (".keras", ".h5") if case.seed % 3 == 0 else (".keras",):
                    path = os.path.join(folder, "model" + suffix)
                    case.model.save(path)
                    if suffix == ".h5" and case.seed % 2:
                        keras2_form(path)
                    entries = {f"load {suffix}": (lambda p=path: fastgru.load(p), None),
                               f"from_keras {suffix}": (
                                   lambda p=path: fastgru.GRU.from_keras(p), None)}
                    for name in case.recurrent:
                        entries[f"from_keras(layer={name!r}) {suffix}"] = (
                            lambda p=path, n=name: fastgru.GRU.from_keras(p, layer=n), name)
                    for entry, (load, layer) in entries.items():
                        try:
                            results[entry] = _check_entry(case, load, layer, xs)
                        except AssertionError as error:
                            failures.append(f"{entry}: {error}")
                        except Exception:
                            failures.append(f"{entry}: {traceback.format_exc()}")
        except CaseTimeout as error:
            failures.append(f"hang: {error}")
    if failures:
        raise FuzzFailure(describe(case, failures))
    return results


def describe(case: Case, failures: list) -> str:
    config = json.dumps(json.loads(case.model.to_json()), indent=None)
    return (f"Keras fuzz case seed={case.seed}: {len(failures)} failure(s)\n" +
            "\n".join(failures) + f"\nmodel config: {config}")


def run_case(seed: int) -> dict[str, str]:
    """Generate the model of `seed` and check every entry point: {entry point: outcome}."""
    return check(generate(seed))
