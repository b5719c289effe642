"""Memory while loading: small files that claim or unpack to huge arrays, and narrow models whose
kernel copy once took a hundred times their weights. Peaks are measured in a fresh process
(resource.getrusage's ru_maxrss, after the imports) so that nothing else of the test run counts."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastgru
from conftest import assert_close, random_spec, spec_layers
from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError
from fastgru.loaders import native
from reference import reference_gru

MB = 1 << 20


def peak_while(code: str, path) -> tuple[int, str]:
    """(bytes the process's peak resident memory grew by while running `code`, its output):
    `code` runs in a fresh process after fastgru, numpy and torch are imported and warmed, with
    `path` as PATH, the second of two runs."""
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np, torch, fastgru, safetensors.numpy
        from fastgru.errors import FormatError
        PATH = {str(path)!r}
        fastgru.GRU(fastgru.GRUSpec((fastgru.LayerWeights(np.zeros((1, 3, 2)),
            np.zeros((1, 3, 1)), np.zeros((1, 6))),)))(np.zeros((2, 1, 2)))  # kernels loaded
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except Exception as error:
            print(type(error).__name__, error)
        print("peak", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    for _ in range(2):  # the first run fills Numba's cache: compiling is no part of the peak
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=600, cwd=os.path.dirname(__file__))
        assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    return int(lines[-1].split()[1]), "\n".join(lines[:-1])


def narrow_spec(rng, inputs: int, hidden: int = 1) -> GRUSpec:
    return GRUSpec((LayerWeights(w=0.01 * rng.standard_normal((1, 3 * hidden, inputs)),
                                 r=rng.standard_normal((1, 3 * hidden, hidden)),
                                 b=rng.standard_normal((1, 6 * hidden))),))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_narrow_model_loads_in_a_small_multiple_of_its_weights(rng, tmp_path, dtype):
    """An 11 MB file of an H=1 model of 900,000 inputs took 1.5 GB to load: the kernels' copy
    padded each gate to 64 units. Loading and calling it stays within a few times the file."""
    path = tmp_path / "narrow.safetensors"
    native.write(path, narrow_spec(rng, 900_000), batch_first=False, dtype=dtype)
    size = os.path.getsize(path)
    assert 10 * MB < size < 12 * MB
    peak, said = peak_while("""
        m = fastgru.load(PATH)
        y, h = m(np.ones((2, 1, 900_000), np.float32))  # 7 MB
        assert np.isfinite(y).all() and y.shape == (2, 1, 1), y
        m.stream(1).step(np.ones((1, 900_000), np.float32))
    """, path)
    assert said == "" and peak < 5 * size, (said, peak / MB)


@pytest.mark.parametrize("direction, dtype", [("forward", "float32"), ("bidirectional", "float64"),
                                              ("forward", "bfloat16")])
def test_narrow_model_matches_the_reference(rng, direction, dtype):
    """Narrow models (their first layer's input product done before the kernels): the reference,
    rows independent, a stream equal to the call."""
    spec = random_spec(rng, 100_000, 2, 2, direction, scale=0.02)
    model = fastgru.GRU(spec, dtype=dtype)
    # not padded to 64 units a gate
    assert model._packed.w0.nbytes < 4 * model.spec.layers[0].w.nbytes
    x = rng.standard_normal((5, 3, 100_000)).astype(np.float32)
    x[2, 1, 7] = np.nan
    y, h_n = model(x)
    layers = spec_layers(model.spec)  # the weights the model holds (bfloat16: rounded)
    ry, rh = reference_gru(x[:, [0, 2]], layers, direction=direction)
    if dtype == "bfloat16":  # inputs rounded to bfloat16 where multiplied, on paired paths
        assert np.abs(y[:, [0, 2]] - ry).max() < 2e-2
    else:
        assert_close(y[:, [0, 2]], ry, "float32", "y")
        assert_close(h_n[:, [0, 2]], rh, "float32", "h_n")
    assert np.isnan(y[2:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    if direction == "forward":
        stream = model.stream(3)
        steps = np.stack([stream.step(x[t]) for t in range(5)])
        assert np.array_equal(steps, y, equal_nan=True)
        assert np.array_equal(model(x[:1])[0], y[:1], equal_nan=True)
