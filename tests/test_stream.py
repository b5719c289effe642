"""Streams: stepping equals one full call, state access, no allocation with out=."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_stepping_equals_one_call(rng, num_layers, lbr, dtype):
    model = fastgru.GRU(random_spec(rng, 5, 6, num_layers, "forward", lbr, clip=2.0), dtype=dtype)
    x = rng.standard_normal((9, 3, 5))
    h0 = rng.standard_normal((num_layers, 3, 6))
    y, h_n = model(x, h0)
    stream = model.stream(batch_size=3)
    stream.h = h0
    out = np.empty((3, 6), dtype=dtype)
    for t in range(9):
        assert stream.step(x[t], out=out) is out
        assert_close(out, y[t], dtype, f"step {t}")
    assert_close(stream.h, h_n, dtype, "final state")


def test_state_read_write_reset(rng):
    model = fastgru.GRU(random_spec(rng, 2, 3, 2))
    stream = model.stream(2)
    assert stream.batch_size == 2
    assert np.array_equal(stream.h, np.zeros((2, 2, 3)))
    x = rng.standard_normal((2, 2))
    first = stream.step(x)
    snapshot = stream.h
    snapshot[...] = 7  # a copy: the stream is untouched
    second = stream.step(x)
    assert not np.allclose(first, second)
    stream.reset()
    assert np.array_equal(stream.step(x), first)
    with pytest.raises(ValueError, match=r"h must have shape \(2, 2, 3\)"):
        stream.h = np.zeros((2, 3))


def test_step_with_out_allocates_nothing(rng):
    model = fastgru.GRU(random_spec(rng, 16, 32, 2))
    stream = model.stream(4)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    out = np.empty((4, 32), np.float32)
    stream.step(x, out=out)  # compile and warm up outside the measurement
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(2000):
        stream.step(x, out=out)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096, f"2000 steps allocated {grown} bytes"


def test_stream_errors(rng):
    model = fastgru.GRU(random_spec(rng, 2, 3))
    with pytest.raises(ValueError, match="streams need a forward .* this one is bidirectional"):
        fastgru.GRU(random_spec(rng, 2, 3, direction="bidirectional")).stream()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.stream(0)
    stream = model.stream(2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(2, 2\).*got \(3, 2\)"):
        stream.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"out must be a writable, aligned, C-contiguous float32 array "
                                         r"of shape \(2, 3\), got shape \(2, 3\), dtype float64"):
        stream.step(np.zeros((2, 2)), out=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not C-contiguous"):
        stream.step(np.zeros((2, 2)), out=np.zeros((3, 2), np.float32).T)
    with pytest.raises(TypeError, match="x_t must hold real numbers"):
        stream.step(np.array([["a", "b"], ["c", "d"]]))
    unaligned = np.frombuffer(bytearray(25), np.float32, 6, offset=1).reshape(2, 3)  # writable
    with pytest.raises(ValueError, match="got shape \\(2, 3\\), dtype float32, C-contiguous, "
                                         "not aligned"):
        stream.step(np.zeros((2, 2)), out=unaligned)


def test_step_takes_any_layout_of_x(rng):
    """A step calls its compiled kernel directly, with no typing of the arguments: inputs of
    other types, layouts and flags are converted first, never read as something else."""
    model = fastgru.GRU(random_spec(rng, 3, 4, 2))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    expected = model.stream(2).step(x)
    buffer = bytearray(x.nbytes + 1)
    unaligned = np.frombuffer(buffer, np.float32, x.size, offset=1).reshape(2, 3)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    read_only = x.copy()
    read_only.flags.writeable = False
    for variant in (unaligned, read_only, x.astype(np.float64), np.asfortranarray(x),
                    x.tolist(), np.repeat(x, 2, axis=1)[:, ::2]):
        assert np.array_equal(model.stream(2).step(variant), expected)


def test_stream_batch_keeps_each_client_apart(rng):
    """Clients join and leave between steps; each one's outputs equal its own Stream's."""
    model = fastgru.GRU(random_spec(rng, 3, 5, 2))
    batch = model.stream_batch(capacity=2)  # grows as clients join
    own: dict[int, fastgru.Stream] = {}
    for step in range(12):
        if step % 3 == 0:  # a client joins, one from a saved state
            h = rng.standard_normal((2, 5)) if step == 6 else None
            client = batch.add(h)
            own[client] = model.stream(1)
            if h is not None:
                own[client].h = h[:, None, :]
        if step == 7:  # a client leaves
            gone = sorted(own)[0]
            batch.remove(gone)
            del own[gone]
            assert gone not in batch
        # some clients skip a frame: their state must not move
        active = [c for c in sorted(own) if (c + step) % 4 != 0]
        x = rng.standard_normal((len(active), 3))
        out = batch.step(active, x)
        for row, client in enumerate(active):
            assert_close(out[row], own[client].step(x[row:row + 1])[0], "float32", f"{client}")
        for client in own:
            assert_close(batch.state(client), own[client].h[:, 0], "float32", "state")
    assert len(batch) == len(own) == 3


def test_stream_batch_errors(rng):
    model = fastgru.GRU(random_spec(rng, 3, 5))
    batch = model.stream_batch()
    a = batch.add()
    with pytest.raises(KeyError, match="no client 99 in this StreamBatch"):
        batch.step([a, 99], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="a client may appear only once per step"):
        batch.step([a, a], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(1, 3\) \(one row per client"):
        batch.step([a], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"h must have shape \(1, 5\)"):
        batch.set_state(a, np.zeros(5))
    with pytest.raises(KeyError, match="no client 7"):
        batch.remove(7)
    assert batch.step([], np.zeros((0, 3))).shape == (0, 5)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        model.stream_batch(0)
