"""Keras GRU models read from .keras / .h5 files (with h5py, no TensorFlow), against Keras 3 itself
running the same file on the PyTorch backend."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: CPU torch is here

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")  # a test dependency (pyproject's test extra)

import fastgru  # noqa: E402
from conftest import assert_close  # noqa: E402
from fastgru.errors import FormatError  # noqa: E402

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
    with pytest.raises(FormatError, match=r"GRU layers \['a', 'b'\] do not form one stack"):
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
