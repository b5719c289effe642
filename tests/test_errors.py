"""Every bad input to the public surface gets a clear ValueError or TypeError."""

from __future__ import annotations

import numpy as np
import pytest

import fastgru
from fastgru.testing.models import random_spec
from fastgru import GRUSpec, LayerWeights


@pytest.fixture
def model(rng):
    return fastgru.GRU(random_spec(rng, 3, 4, 2, "bidirectional"))


def test_x_shape_and_type(model):
    with pytest.raises(ValueError, match=r"x must be 3-D \(T, B, D\) or 2-D \(T, D\) unbatched, "
                                         r"got shape \(3,\)"):
        model(np.zeros(3))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 3\)"):
        model(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"x must have 3 features \(input_size\) in its last axis, "
                                         r"got shape \(5, 2, 4\)"):
        model(np.zeros((5, 2, 4)))
    with pytest.raises(TypeError, match="x must hold real numbers, got an array of dtype complex128"):
        model(np.zeros((5, 2, 3), complex))
    with pytest.raises(TypeError, match="x must hold real numbers, got an array of dtype <U1"):
        model([["a", "b", "c"]])
    batch_first = fastgru.GRU(model.spec, batch_first=True)
    with pytest.raises(ValueError, match=r"x must be 3-D \(B, T, D\)"):
        batch_first(np.zeros(3))


def test_h0_shape(model):
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 2, 4\) \(num_layers\*num_directions,"
                                         r" batch, hidden_size\), got \(2, 2, 4\)"):
        model(x, np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 4\) \(num_layers\*num_directions, "
                                         r"hidden_size\), got \(4, 1, 4\)"):
        model(x[:, 0], np.zeros((4, 1, 4)))


def test_lengths(model):
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] .* got values from 1 to 6"):
        model(x, lengths=[1, 6])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] .* got values from -1 to 2"):
        model(x, lengths=[-1, 2])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) \(one length per batch "
                                         r"row\), got \(3,\)"):
        model(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="lengths must be integers, got an array of dtype float64"):
        model(x, lengths=[1.0, 2.0])
    # an unbatched call takes one length
    y, _ = model(x[:, 0], lengths=3)
    assert np.all(y[3:] == 0)


def test_dtype_choice(rng):
    spec = random_spec(rng, 2, 3)
    assert fastgru.GRU(spec, dtype=np.float64).dtype == np.float64
    bf16 = fastgru.GRU(spec, dtype="bfloat16")
    assert bf16.dtype == np.float32 and bf16.precision == "bfloat16"  # arrays stay float32
    int8 = fastgru.GRU(spec, dtype=np.int8)  # a NumPy dtype names it too
    assert int8.dtype == np.float32 and int8.precision == "int8"
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64', "
                                         r"'bfloat16', 'int8'\), got 'float16'"):
        fastgru.GRU(spec, dtype="float16")
    with pytest.raises(ValueError, match=r"dtype must be one of .* got 'banana'"):
        fastgru.GRU(spec, dtype="banana")


def test_inconsistent_spec():
    H = 2
    good = LayerWeights(w=np.zeros((1, 6, 3)), r=np.zeros((1, 6, H)), b=np.zeros((1, 12)))
    with pytest.raises(ValueError, match=r"layer 0: b must have shape \(1, 12\) .* got \(1, 11\)"):
        GRUSpec((LayerWeights(good.w, good.r, np.zeros((1, 11))),))
    with pytest.raises(ValueError, match=r"layer 1: w must have shape \(1, 6, 2\) .* got \(1, 6, 3\)"):
        GRUSpec((good, good))
    with pytest.raises(ValueError, match=r"layer 0: w must have shape \(2, 6, 3\)"):
        GRUSpec((good,), direction="bidirectional")
    with pytest.raises(ValueError, match="direction must be one of"):
        GRUSpec((good,), direction="backward")
    with pytest.raises(ValueError, match="at least one layer"):
        GRUSpec(())
    with pytest.raises(ValueError, match="clip must be a positive number or None, got 0"):
        GRUSpec((good,), clip=0)


def test_weights_with_nan_are_refused(rng):
    spec = random_spec(rng, 2, 3)
    r = spec.layers[0].r.copy()
    r[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="layer 0: r contains NaN or inf"):
        GRUSpec((LayerWeights(spec.layers[0].w, r, spec.layers[0].b),))
