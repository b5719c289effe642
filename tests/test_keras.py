"""Keras GRU models read from .keras / .h5 files (with h5py, no TensorFlow), against Keras 3 itself
running the same file on the PyTorch backend."""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: CPU torch is here

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")  # a test dependency (pyproject's test extra)

import fastgru  # noqa: E402
from fastgru.testing.asserts import assert_close  # noqa: E402
from fastgru.errors import FormatError  # noqa: E402
from fastgru.testing.fuzz_keras import keras2_form  # noqa: E402

# Keras' own variables trip NumPy 2's copy= deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

LOG = []  # (case, max |fastgru - Keras|)


@pytest.fixture(scope="module", autouse=True)
def print_agreement():
    """The largest differences measured here, printed after the module (pytest -s shows them)."""
    yield
    for name, diff in LOG:
        print(f"\nKeras agreement: {name}: max |fastgru - Keras| = {diff:.1e}")


def keras_outputs(model, layer_name, x):
    """The named layer's output when `model` runs x, computed by Keras."""
    probe = keras.Model(model.inputs[0], model.get_layer(layer_name).output)
    return np.asarray(keras.ops.convert_to_numpy(probe(x)))


def build(layers, features):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, features)), *layers])
    # weights that look trained: larger than the initializers' and with biases
    for layer in model.layers:
        layer.set_weights([w + np.random.default_rng(1).normal(0, 0.3, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    return model


def check(model, top, x, path, name, **options):
    """Save to `path`, load with fastgru, compare the top GRU's sequence with Keras'."""
    model.save(path)
    ours = fastgru.load(path, **options)
    expected = keras_outputs(model, top, x)
    y, h_n = ours(x)
    if expected.ndim == 2:  # return_sequences=False: the last output, h_n's top forward state
        y = y[:, -1]
    assert_close(y, expected, "float32", name)
    LOG.append((name, float(np.abs(y - expected).max())))
    return ours


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_stacked_sequential(tmp_path, rng, suffix, reset_after):
    model = build([keras.layers.GRU(16, return_sequences=True, reset_after=reset_after, name="g1"),
                   keras.layers.Dropout(0.3),
                   keras.layers.GRU(16, return_sequences=True, reset_after=reset_after, name="g2"),
                   keras.layers.Dense(3, name="head")], 6)
    x = rng.standard_normal((3, 40, 6)).astype(np.float32)
    ours = check(model, "g2", x, tmp_path / f"m{suffix}", f"2 stacked GRU, reset_after="
                 f"{reset_after}, {suffix}")
    assert (ours.num_layers, ours.batch_first, ours.linear_before_reset) == (2, True, reset_after)


@pytest.mark.slow
def test_long_sequence(tmp_path, rng):
    model = build([keras.layers.GRU(24, return_sequences=True, name="g")], 4)
    x = rng.standard_normal((2, 5000, 4)).astype(np.float32)
    check(model, "g", x, tmp_path / "long.keras", "1 GRU, T=5000, .keras")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_bidirectional_and_no_bias(tmp_path, rng, suffix):
    model = build([keras.layers.Bidirectional(keras.layers.GRU(10, return_sequences=True),
                                              name="bi"),
                   keras.layers.Bidirectional(keras.layers.GRU(10, return_sequences=True,
                                                               use_bias=False), name="bi2")], 5)
    with pytest.raises(FormatError, match=r"do not form one stack; pick one with layer="):
        model.save(tmp_path / f"m{suffix}")
        fastgru.load(tmp_path / f"m{suffix}")  # use_bias differs: weights count differs
    x = rng.standard_normal((2, 30, 5)).astype(np.float32)
    check(model, "bi", x, tmp_path / f"m{suffix}", f"Bidirectional(GRU), {suffix}", layer="bi")
    ours = fastgru.load(tmp_path / f"m{suffix}", layer="bi2")
    assert ours.bidirectional and not ours.spec.layers[0].b.any()


def test_go_backwards_and_a_model_object(tmp_path, rng):
    model = build([keras.layers.GRU(9, return_sequences=True, go_backwards=True, name="back")],
                  4)
    x = rng.standard_normal((2, 25, 4)).astype(np.float32)
    ours = fastgru.GRU.from_keras(model)  # the object itself, no file
    assert ours.direction == "reverse"
    y, h_n = ours(x)
    expected = keras_outputs(model, "back", x)  # Keras: outputs in reverse time order
    assert_close(y[:, ::-1], expected, "float32", "go_backwards")
    assert_close(h_n[0], expected[:, -1], "float32", "go_backwards final state")
    LOG.append(("go_backwards, Keras model object", float(np.abs(y[:, ::-1] - expected).max())))


def test_what_is_refused(tmp_path):
    hard = build([keras.layers.GRU(4, recurrent_activation="hard_sigmoid", name="hard")], 3)
    hard.save(tmp_path / "hard.keras")
    with pytest.raises(FormatError, match=r"recurrent_activation='hard_sigmoid'; fastgru computes "
                                          r"the default"):
        fastgru.load(tmp_path / "hard.keras")
    apart = build([keras.layers.GRU(4, return_sequences=True, name="a"),
                   keras.layers.Dense(4, name="mid"),
                   keras.layers.GRU(4, name="b")], 3)
    apart.save(tmp_path / "apart.keras")
    with pytest.raises(FormatError, match=r"GRU 'b' reads the output of 'mid' \(Dense\)"):
        fastgru.load(tmp_path / "apart.keras")
    assert fastgru.load(tmp_path / "apart.keras", layer="b").hidden_size == 4
    with pytest.raises(ValueError, match=r"no GRU layer named 'c'; the GRU layers are \['a', 'b'\]"):
        fastgru.load(tmp_path / "apart.keras", layer="c")
    summed = build([keras.layers.Bidirectional(keras.layers.GRU(4), merge_mode="sum")], 3)
    summed.save(tmp_path / "sum.keras")
    with pytest.raises(FormatError, match="merge_mode 'sum'"):
        fastgru.load(tmp_path / "sum.keras")
    sizes = build([keras.layers.GRU(4, return_sequences=True, name="a"),
                   keras.layers.GRU(5, name="b")], 3)
    sizes.save(tmp_path / "sizes.keras")
    with pytest.raises(FormatError, match=r"do not form one stack; .* \('b' has .*'units': 5"):
        fastgru.load(tmp_path / "sizes.keras")
    dense = build([keras.layers.Dense(2)], 3)
    dense.save(tmp_path / "dense.keras")
    with pytest.raises(FormatError, match="no GRU layer"):
        fastgru.load(tmp_path / "dense.keras")
    with pytest.raises(TypeError, match=r"a Keras file, which takes dtype=, layer=; got prefix="):
        fastgru.load(tmp_path / "apart.keras", prefix="a")


# ---- structure from the dataflow (issue 28) ----------------------------------------------------

def functional(inputs, outputs):
    """A Functional model with weights that look trained (as build() gives a Sequential)."""
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("form", [".keras", ".h5", "keras2.h5"])
def test_side_by_side_is_not_a_stack(tmp_path, rng, form):
    x = keras.Input((None, 4), name="x")  # input size = hidden size: the shapes allow a stack
    a = keras.layers.GRU(4, return_sequences=True, name="a")(x)
    b = keras.layers.GRU(4, return_sequences=True, name="b")(x)
    model = functional(x, keras.layers.Concatenate(name="cat")([a, b]))
    path = tmp_path / f"m{form.split('keras2')[-1]}"
    model.save(path)
    if form.startswith("keras2"):
        keras2_form(path)
    with pytest.raises(FormatError, match=r"'a' and 'b' read the same input side by side.*"
                                          r"layer="):
        fastgru.load(path)
    xs = rng.standard_normal((2, 7, 4)).astype(np.float32)
    ours = fastgru.load(path, layer="b")
    assert_close(ours(xs)[0], keras_outputs(model, "b", xs), "float32", "layer='b'")


@pytest.mark.parametrize("form", [".keras", "keras2.h5"])
def test_functional_chain_is_a_stack(tmp_path, rng, form):
    x = keras.Input((None, 3), name="x")
    a = keras.layers.GRU(5, return_sequences=True, name="a")(x)
    b = keras.layers.GRU(5, return_sequences=True, name="b")(keras.layers.Dropout(0.2)(a))
    model = functional(x, keras.layers.Dense(2, name="head")(b))
    path = tmp_path / f"m{form.split('keras2')[-1]}"
    model.save(path)
    if form.startswith("keras2"):
        keras2_form(path)
    xs = rng.standard_normal((2, 7, 3)).astype(np.float32)
    ours = fastgru.load(path)
    assert ours.num_layers == 2 and fastgru.GRU.from_keras(model).num_layers == 2
    assert_close(ours(xs)[0], keras_outputs(model, "b", xs), "float32", "functional stack")


def test_a_stack_reads_the_model_input(tmp_path):
    """Without layer=, the loaded model maps the Keras model's input to the top GRU's output:
    a layer in front of the GRUs is not computed, so the model is refused."""
    model = build([keras.layers.Dense(3, name="front"), keras.layers.GRU(4, name="g")], 3)
    model.save(tmp_path / "m.keras")
    with pytest.raises(FormatError, match=r"GRU 'g' reads the output of 'front' \(Dense\).*"
                                          r"layer='g'"):
        fastgru.load(tmp_path / "m.keras")
    assert fastgru.load(tmp_path / "m.keras", layer="g").input_size == 3


def test_an_initial_state_from_the_graph_is_refused(tmp_path):
    x = keras.Input((None, 3), name="x")
    _, h = keras.layers.GRU(4, return_state=True, name="enc")(x)
    y = keras.layers.GRU(4, name="dec")(x, initial_state=h)
    functional(x, y).save(tmp_path / "m.keras")
    with pytest.raises(FormatError, match=r"GRU 'dec' reads 2 tensors.*initial state"):
        fastgru.load(tmp_path / "m.keras", layer="dec")


def test_backward_layer_is_read(tmp_path, rng):
    def bidirectional(**backward):
        options = dict(return_sequences=True, go_backwards=True) | backward
        return build([keras.layers.Bidirectional(
            keras.layers.GRU(4, return_sequences=True),
            backward_layer=keras.layers.GRU(4, **options), name="bi")], 3)

    bidirectional(activation="relu").save(tmp_path / "relu.keras")
    with pytest.raises(FormatError, match=r"'bi'.*backward.*activation='relu'"):
        fastgru.load(tmp_path / "relu.keras")
    bidirectional(reset_after=False).save(tmp_path / "reset.h5")
    with pytest.raises(FormatError, match=r"'bi'.*backward layer.*reset_after"):
        fastgru.load(tmp_path / "reset.h5")
    same = bidirectional()  # a backward layer of its own, with the forward layer's options
    xs = rng.standard_normal((2, 6, 3)).astype(np.float32)
    check(same, "bi", xs, tmp_path / "same.keras", "Bidirectional with backward_layer=")


@pytest.mark.parametrize("front", ["Masking", "Embedding"])
def test_masks_are_refused(tmp_path, front):
    if front == "Masking":
        model = build([keras.layers.Masking(name="pad"), keras.layers.GRU(4, name="g")], 3)
    else:
        model = keras.Sequential([keras.Input((None,), dtype="int32"),
                                  keras.layers.Embedding(10, 3, mask_zero=True, name="pad"),
                                  keras.layers.GRU(4, name="g")])
    model.save(tmp_path / "m.keras")
    for layer in (None, "g"):
        with pytest.raises(FormatError, match=rf"'g' reads a mask made by 'pad' \({front}\).*"
                                              r"lengths="):
            fastgru.load(tmp_path / "m.keras", layer=layer)


def rewrite_config(path, edit, out):
    """Copy the .keras archive at `path` to `out` with edit(config) -> config applied."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            dst.writestr(item, data)
    return out


def _set(keys, value):
    def edit(config):
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return config
    return edit


MALFORMED = {  # config.json edits: each gives a file fastgru must refuse with a message
    "layers is a string": _set(["config", "layers"], "gru"),
    "a layer is a string": _set(["config", "layers", 1], "gru"),
    "layer config is a list": _set(["config", "layers", 1, "config"], [1]),
    "units is a list": _set(["config", "layers", 1, "config", "units"], [4]),
    "units is a string": _set(["config", "layers", 1, "config", "units"], "four"),
    "name is a dict": _set(["config", "layers", 1, "config", "name"], {"a": 1}),
    "reset_after is a string": _set(["config", "layers", 1, "config", "reset_after"], "no"),
    "class_name missing": lambda c: (c["config"]["layers"][1].pop("class_name"), c)[1],
    "inbound_nodes a string": _set(["config", "layers", 1, "inbound_nodes"], "x"),
    "inbound_nodes of ints": _set(["config", "layers", 1, "inbound_nodes"], [[1, 2]]),
    "keras_history short": _set(["config", "layers", 1, "inbound_nodes"],
                                [{"args": [{"class_name": "__keras_tensor__",
                                            "config": {"keras_history": ["x"]}}]}]),
    "config is a list": lambda c: [c],
    "Bidirectional layer a string": lambda c: (c["config"]["layers"].append(
        {"class_name": "Bidirectional", "config": {"name": "bi", "layer": "GRU"}}), c)[1],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_is_a_format_error(tmp_path, capsys, case):
    from fastgru.cli import main

    x = keras.Input((None, 3), name="x")
    functional(x, keras.layers.GRU(4, name="g")(x)).save(tmp_path / "m.keras")
    bad = rewrite_config(tmp_path / "m.keras", MALFORMED[case], tmp_path / "bad.keras")
    with pytest.raises(FormatError, match=r"\S"):
        fastgru.load(bad)
    with pytest.raises(FormatError, match=r"\S"):
        fastgru.load(bad, layer="g")
    assert main(["info", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


PEAK = """
import resource, sys
import fastgru, h5py, numpy
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    fastgru.load(sys.argv[1], **({"layer": sys.argv[2]} if len(sys.argv) > 2 else {}))
    print("loaded", end=" ")
except fastgru.FormatError as error:
    print("refused:", error, end=" ")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def peak_mib(path, *layer):
    """(what fastgru.load said, MiB its peak memory grew by while loading), in a fresh process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PEAK, str(path), *layer], capture_output=True,
                          text=True, check=True, timeout=120)
    said, mib = done.stdout.rsplit(" ", 1)
    return said, int(mib)


def test_a_config_bomb_is_refused_before_it_inflates(tmp_path):
    import zipfile

    x = keras.Input((None, 3), name="x")
    functional(x, keras.layers.GRU(4, name="g")(x)).save(tmp_path / "m.keras")
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(tmp_path / "m.keras") as src, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = data + b" " * (256 << 20)  # valid JSON, 256 MiB
            dst.writestr(item.filename, data)
    assert bomb.stat().st_size < (1 << 20)
    said, mib = peak_mib(bomb)
    assert said.startswith("refused:") and "config.json" in said
    assert mib < 32, f"loading a {bomb.stat().st_size} byte file took {mib} MiB"


@pytest.mark.parametrize("where", ["head", "g"])
def test_an_unwritten_dataset_is_not_read(tmp_path, where):
    """A 2 GiB dataset declared in a small .h5 file but never written: a layer that fastgru does
    not need is not read; a GRU's weight is refused against the file's size."""
    import h5py

    build([keras.layers.GRU(4, return_sequences=True, name="g"),
           keras.layers.Dense(2, name="head")], 3).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        group = f["model_weights"][where]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group.create_dataset(name, shape=(1 << 28, 2), dtype="f4")
    assert (tmp_path / "m.h5").stat().st_size < (64 << 10)
    said, mib = peak_mib(tmp_path / "m.h5")
    assert said.startswith("refused:" if where == "g" else "loaded"), said
    assert mib < 32, f"loading a small file took {mib} MiB"


def test_training_mode_is_not_identity(tmp_path):
    """Dropout called with training=True drops at inference too: not an identity."""
    x = keras.Input((None, 3), name="x")
    h = keras.layers.Dropout(0.5, name="drop")(x, training=True)
    functional(x, keras.layers.GRU(4, name="g")(h)).save(tmp_path / "drop.keras")
    with pytest.raises(FormatError, match=r"GRU 'g' reads the output of 'drop' \(Dropout\)"):
        fastgru.load(tmp_path / "drop.keras")
    y = keras.layers.GRU(4, dropout=0.5, name="g")(x, training=True)
    functional(x, y).save(tmp_path / "gru.keras")
    with pytest.raises(FormatError, match=r"GRU 'g' is called with training=True"):
        fastgru.load(tmp_path / "gru.keras", layer="g")


@pytest.mark.parametrize("link", ["external", "soft"])
def test_links_out_of_the_file_are_not_followed(tmp_path, link):
    """A GRU weight that is a link to another file (or a soft link, which may name one) is
    refused: loading reads only what the file itself holds."""
    import h5py

    build([keras.layers.GRU(4, name="g")], 3).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["kernel"] = np.ones((3, 12), np.float32)
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        group = f["model_weights/g"]
        kernel, _, bias = (n.decode() if isinstance(n, bytes) else n
                           for n in group.attrs["weight_names"])
        del group[kernel]
        group[kernel] = (h5py.ExternalLink(str(tmp_path / "other.h5"), "/kernel")
                         if link == "external" else h5py.SoftLink(f"{group.name}/{bias}"))
    with pytest.raises(FormatError, match=rf"gru_cell/kernel is a {link.title()}Link"):
        fastgru.load(tmp_path / "m.h5")
