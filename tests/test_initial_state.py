"""A stored (learned) initial state: used when a call passes no h0, where streams start, and kept
by save/load, to_onnx (onnxruntime runs it) and from_onnx."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec, spec_layers
from fastgru.testing.reference import reference_gru


@pytest.fixture
def stored(rng):
    """A 2-layer bidirectional model with a stored state, and that state (4, H)."""
    spec = random_spec(rng, 5, 7, 2, "bidirectional")
    state = rng.standard_normal((4, 7))
    return fastgru.GRU(spec, initial_state=state), state


def test_used_for_every_row_when_no_h0(stored, rng):
    model, state = stored
    x = rng.standard_normal((6, 3, 5))
    lengths = [6, 0, 2]
    h0 = np.broadcast_to(state[:, None, :], (4, 3, 7))
    expected = reference_gru(x, spec_layers(model.spec), direction="bidirectional", h0=h0,
                             lengths=lengths)
    for actual, ref in zip(model(x, lengths=lengths), expected, strict=True):
        assert_close(actual, ref, "float32")
    y, h_n = model(x, np.zeros((4, 3, 7)))  # an explicit h0 wins
    assert not np.allclose(h_n, model(x)[1])
    assert model.initial_state.shape == (4, 7) and not model.initial_state.flags.writeable
    assert "initial_state=stored" in repr(model)


def test_kept_by_save_load_and_to_onnx(stored, rng, tmp_path):
    model, state = stored
    model.save(tmp_path / "m.safetensors")
    again = fastgru.load(tmp_path / "m.safetensors")
    assert np.array_equal(again.initial_state, model.initial_state)
    x = rng.standard_normal((5, 2, 5)).astype(np.float32)
    session = ort.InferenceSession(model.to_onnx().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for ours, theirs in zip(model(x), session.run(None, {"X": x}), strict=True):
        assert_close(ours, theirs, "float32", "onnxruntime running to_onnx")
    back = fastgru.GRU.from_onnx(model.to_onnx())
    assert np.array_equal(back.initial_state, model.initial_state)
    assert fastgru.GRU.from_onnx(model.to_onnx(state_inputs=True)).initial_state is None


def test_streams_start_from_it_and_reset_to_it(rng):
    spec = random_spec(rng, 4, 6, 2)
    state = rng.standard_normal((2, 6))
    model = fastgru.GRU(spec, initial_state=state)
    frames = rng.standard_normal((5, 3, 4))
    stream = model.stream(3)
    assert np.allclose(stream.h, np.broadcast_to(state[:, None], (2, 3, 6)).astype(np.float32))
    stepped = np.stack([stream.step(f).copy() for f in frames])
    assert_close(stepped, model(frames)[0], "float32", "stream from the stored state")
    stream.reset()
    assert_close(stream.step(frames[0]), model(frames[:1])[0][0], "float32", "after reset")
    batch = model.stream_batch()
    client = batch.add()
    assert np.array_equal(batch.state(client), model.initial_state)


def test_bad_initial_states_are_refused(rng):
    spec = random_spec(rng, 4, 6, 2)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 6\)"):
        fastgru.GRU(spec, initial_state=np.zeros((1, 6)))
    with pytest.raises(ValueError, match="initial_state must hold finite"):
        fastgru.GRU(spec, initial_state=np.full((2, 6), np.nan))
